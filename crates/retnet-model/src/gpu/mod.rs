//! The whole model on the GPU: weights uploaded once, every layer a short list of kernel
//! dispatches recorded into one compute pass per call.
//!
//! One code path serves both checkpoint families: the [`ModelConfig`] knobs pick kernel variants
//! and parameters, exactly as they pick branches in the CPU reference ([`crate::CpuModel`]),
//! which stays the oracle these results are checked against.
//!
//! Per layer (pre-norm): `rms_norm → q|k|v|g projection (one fused matrix) → rotary (q, k) →
//! retention → per-head norm × silu(g) → out_proj (+ α·x fused) → rms_norm → act|lin projection
//! (fused) → gated activation → down_proj (+ α·x fused)`. Post-norm (deepnorm) layers move the
//! norms after the residual sums. The attention layers of hybrid checkpoints (fla's `attn`)
//! run `q|k|v projection → biases and q/k norms → rotary → key/value cache append → softmax
//! attention (tiled prefill, or split decode) → o_proj` in place of the retention steps, with
//! each sequence's caches in `kv_cache`.
//!
//! The module's parts: [`load`] (weights from their source to the GPU), `forward` (the
//! recorder: one method per stage of the model), `session` (one sequence: [`GpuSession`]),
//! `batch` (several sequences decoded together: [`GpuBatch`]), `sampler` (sampling on the GPU)
//! `state` (the per-layer recurrent states) and `kv_cache` (the attention layers' key/value
//! caches). A [`GpuModel`] is a shared handle: sessions and
//! batches hold a clone of it (not a borrow), so they can live as long as their owner needs.

mod batch;
mod forward;
mod kv_cache;
mod load;
mod sampler;
mod session;
mod state;

pub use batch::GpuBatch;
pub use session::{GpuSession, LogitRows};

use std::path::Path;
use std::sync::Arc;

use retnet_runtime::kernels::gemm_coop::CoopShape;
use retnet_runtime::kernels::linear::Reduction;
use retnet_runtime::{Device, GpuBuffer, Weights};

use crate::config::{AttentionConfig, ModelConfig};
use crate::error::{ModelError, Result};
use crate::reference::{CpuModel, RetentionForm};
use crate::safetensors_store::TensorStore;
use crate::weights::{CheckpointWeights, ModelWeights, WeightsFingerprint};
use load::Pacing;

/// Precision of the weight matrices on the GPU (norm weights, decays and angles stay f32;
/// activations, accumulators and the recurrent state are always f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightPrecision {
    /// Full precision.
    #[default]
    F32,
    /// Half precision: native `f16` where the adapter has `shader-f16`, packed in u32 otherwise.
    F16,
    /// The layers' matrices in int8 blocks (one f32 scale per 32 values along a row); the
    /// embeddings and the head in f16 ([`crate::quant`], `docs/weight-formats.md`).
    Int8,
    /// The layers' matrices in 4-bit blocks (an f16 step and minimum per 32 values along a
    /// row); the embeddings and the head in f16.
    Q4,
}

/// Options of [`GpuModel::load`] and [`GpuModel::new`].
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuOptions {
    /// Precision of the weight matrices.
    pub weights: WeightPrecision,
}

/// Largest chunk the chunkwise kernel is given: its workgroup memory grows with C²
/// (`retention::chunkwise_workgroup_bytes`, read from the shader).
const MAX_GPU_CHUNK: u32 = 64;
/// Tokens per recorded span in prefill: bounds activation memory and per-dispatch grid sizes.
const MAX_SPAN: usize = 2048;
/// The span on a software adapter (llvmpipe), which silently stops any loop after 65535
/// iterations of one invocation (found by `cargo xtask verify`): keeps each chunkwise dispatch
/// short enough.
const MAX_SPAN_LOOP_LIMITED: usize = 512;

struct GpuLayer {
    retention_norm: GpuBuffer,
    /// q|k|v|g; q|k|v in an attention layer.
    qkvg: Weights,
    out_proj: Weights,
    head_norm: Option<GpuBuffer>,
    ffn_norm: GpuBuffer,
    ffn_in: Weights,
    ffn_down: Weights,
    /// `Some` for a softmax-attention layer of a hybrid checkpoint.
    attention: Option<GpuAttention>,
}

/// What an attention layer holds beyond its projections (`qkvg` holds q|k|v, `out_proj` the
/// o_proj, and there is no head norm).
struct GpuAttention {
    config: AttentionConfig,
    /// The q|k|v biases, concatenated (`qkv_bias`).
    bias: Option<GpuBuffer>,
    /// The query heads' RMSNorm weight, then the key heads' (`qk_norm`, where the checkpoint
    /// holds them).
    qk_norm: Option<GpuBuffer>,
    /// Rotary angle per dimension pair, from the layer's `rope_theta`.
    rotary_theta: GpuBuffer,
    /// The prefill runs on the tensor cores in this shape (`attention::prefill_coop`, as
    /// accurate as the f32 kernel whatever the weights' precision): the device has 8×8
    /// cooperative matrices (16×16 ones stay off, as for the GEMM) and the head dim's
    /// workgroup memory fits.
    tensor_cores: Option<CoopShape>,
}

/// A model whose weights live on a GPU: a cheap, shared handle (cloning it shares the
/// weights). Sessions and batches hold a clone, so none of them borrows the model.
#[derive(Clone)]
pub struct GpuModel {
    parts: Arc<Parts>,
}

/// Everything a loaded model holds on the GPU, and what the recorder needs to know of the
/// adapter.
pub(crate) struct Parts {
    device: Arc<Device>,
    config: ModelConfig,
    embed: Weights,
    embed_norm: Option<GpuBuffer>,
    layers: Vec<GpuLayer>,
    final_norm: Option<GpuBuffer>,
    /// `None` when tied to the embeddings.
    head: Option<Weights>,
    log_decay: GpuBuffer,
    rotary_theta: GpuBuffer,
    reduction: Reduction,
    max_chunk: usize,
    /// Largest chunk of chunk-parallel retention on this adapter (its workgroup memory).
    max_parallel_chunk: usize,
    /// A software adapter (llvmpipe) that stops long shader loops after 65535 iterations.
    loop_limited: bool,
    /// Projections of many rows run on the tensor cores in this shape (the GEMM
    /// `CoopOperands::for_tile` names, `gemm_coop_direct` after `to_f16`): the adapter has
    /// cooperative matrices and the weights are native f16.
    tensor_cores: Option<CoopShape>,
    /// Chunk-parallel retention's updates and outputs run on the tensor cores in this shape
    /// (`retention::chunk_updates_coop`, `chunk_outputs_coop`: as accurate as the f32 kernels
    /// whatever the weights' precision), in chunks of at most 32.
    retention_tensor_cores: Option<CoopShape>,
    fingerprint: WeightsFingerprint,
}

/// Polls a future once: its output if it completes without waiting.
fn now_or_never<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// Column layout of the fused q|k|v|g projection output.
#[derive(Clone, Copy)]
struct QkvgLayout {
    width: u32,
    k: u32,
    v: u32,
    g: u32,
}

impl GpuModel {
    /// Loads a model directory (`config.json` and safetensors weights) straight to `device`,
    /// tensor by tensor: no host copy of the model is made ([`load`]).
    pub async fn load(device: Arc<Device>, dir: &Path, options: GpuOptions) -> Result<Self> {
        Self::load_with_progress(device, dir, options, &mut |_, _| {}).await
    }

    /// [`GpuModel::load`], calling `progress(bytes_done, bytes_total)` as weights reach the GPU.
    pub async fn load_with_progress(
        device: Arc<Device>,
        dir: &Path,
        options: GpuOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let store = TensorStore::open(dir)?;
        Self::from_store(device, config, &store, options, progress).await
    }

    /// Loads the weights of opened safetensors files straight to `device`.
    pub async fn from_store(
        device: Arc<Device>,
        config: ModelConfig,
        store: &TensorStore,
        options: GpuOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        let source = CheckpointWeights::new(&config, store)?;
        let config = config.clone();
        let parts = load::upload(device, config, &source, options, Pacing::Wait, progress).await?;
        Ok(Self::from_parts(parts))
    }

    /// Uploads the weights of a CPU model to `device` (for checking one against the other;
    /// to run a checkpoint on the GPU, [`GpuModel::load`] it).
    pub fn new(device: Arc<Device>, model: &CpuModel, options: GpuOptions) -> Result<Self> {
        let mut parts =
            Self::upload_from_host(device, model.config().clone(), model.weights(), options)?;
        parts.fingerprint = model.fingerprint().clone();
        Ok(Self::from_parts(parts))
    }

    /// Uploads weights held in host f32 to `device`.
    pub fn from_weights(
        device: Arc<Device>,
        config: ModelConfig,
        weights: &ModelWeights,
        options: GpuOptions,
    ) -> Result<Self> {
        Self::upload_from_host(device, config, weights, options).map(Self::from_parts)
    }

    fn upload_from_host(
        device: Arc<Device>,
        config: ModelConfig,
        weights: &ModelWeights,
        options: GpuOptions,
    ) -> Result<Parts> {
        // The source is in memory, so nothing in the upload awaits: one poll completes it.
        let mut no_progress = |_, _| {};
        let upload = load::upload(
            device,
            config,
            weights,
            options,
            Pacing::Submit,
            &mut no_progress,
        );
        now_or_never(upload).unwrap_or_else(|| {
            Err(ModelError::invalid(
                "an upload from host memory did not complete at once",
            ))
        })
    }

    // In the browser wgpu's objects are single-threaded, and so is the page: an `Arc` of a
    // value that is not `Send` there is still the right way to share it.
    #[allow(clippy::arc_with_non_send_sync)]
    fn from_parts(parts: Parts) -> Self {
        Self {
            parts: Arc::new(parts),
        }
    }

    /// What the recorder reads.
    pub(crate) fn parts(&self) -> &Parts {
        &self.parts
    }

    /// The fingerprint of the weights (state files carry it: a state is only resumed by the
    /// checkpoint that made it).
    pub fn fingerprint(&self) -> &WeightsFingerprint {
        &self.parts.fingerprint
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.parts.config
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Arc<Device> {
        &self.parts.device
    }

    /// A fresh session (zero state at position 0). It holds a clone of this handle.
    pub fn session(&self) -> Result<GpuSession> {
        GpuSession::new(self.clone())
    }

    /// Logits `[T, vocab]` of a whole sequence from a fresh state, in any form.
    pub async fn logits(&self, tokens: &[u32], form: RetentionForm) -> Result<Vec<f32>> {
        let mut session = self.session()?;
        session.forward(tokens, form, LogitRows::All).await
    }

    /// Bytes of GPU memory the model's own buffers hold (weights, norms, decays, angles), as
    /// allocated (sizes are rounded up to the runtime's granule).
    pub fn buffer_bytes(&self) -> u64 {
        let p = &self.parts;
        let optional = |b: &Option<GpuBuffer>| b.as_ref().map_or(0, GpuBuffer::size);
        let layers: u64 = p
            .layers
            .iter()
            .map(|l| {
                l.retention_norm.size()
                    + l.qkvg.size()
                    + l.out_proj.size()
                    + optional(&l.head_norm)
                    + l.ffn_norm.size()
                    + l.ffn_in.size()
                    + l.ffn_down.size()
                    + l.attention.as_ref().map_or(0, |a| {
                        optional(&a.bias) + optional(&a.qk_norm) + a.rotary_theta.size()
                    })
            })
            .sum();
        layers
            + p.embed.size()
            + optional(&p.embed_norm)
            + optional(&p.final_norm)
            + p.head.as_ref().map_or(0, Weights::size)
            + p.log_decay.size()
            + p.rotary_theta.size()
    }

    /// Whether two handles share one loaded model (a state pool only takes its own model's
    /// sessions).
    pub fn same(a: &GpuModel, b: &GpuModel) -> bool {
        Arc::ptr_eq(&a.parts, &b.parts)
    }

    /// Whether projections of many rows run on the tensor cores.
    pub fn uses_tensor_cores(&self) -> bool {
        self.parts.tensor_cores.is_some()
    }

    /// Whether chunk-parallel retention (prefill) runs on the tensor cores.
    pub fn retention_uses_tensor_cores(&self) -> bool {
        self.parts.retention_tensor_cores.is_some()
    }

    /// Whether the prefill of every attention layer (hybrid checkpoints) runs on the tensor
    /// cores; `false` for a model without attention layers.
    pub fn attention_uses_tensor_cores(&self) -> bool {
        let mut attention = self
            .parts
            .layers
            .iter()
            .filter_map(|l| l.attention.as_ref());
        let mut any = false;
        let all = attention.all(|a| {
            any = true;
            a.tensor_cores.is_some()
        });
        any && all
    }
}

impl Parts {
    fn head(&self) -> &Weights {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    /// Tokens per recorded prefill span on this adapter.
    fn max_span(&self) -> usize {
        if self.loop_limited {
            MAX_SPAN_LOOP_LIMITED
        } else {
            MAX_SPAN
        }
    }

    /// The column layout of layer `layer`'s fused projection output.
    fn layout(&self, layer: &GpuLayer) -> QkvgLayout {
        let c = &self.config;
        match &layer.attention {
            Some(a) => {
                let (q, kv) = (a.config.query_width() as u32, a.config.kv_width() as u32);
                QkvgLayout {
                    width: q + 2 * kv,
                    k: q,
                    v: q + kv,
                    g: q + 2 * kv,
                }
            }
            None => {
                let k = c.query_width() as u32;
                let v = k + c.key_width() as u32;
                let g = v + c.kv_value_width() as u32;
                QkvgLayout {
                    width: g + c.value_width() as u32,
                    k,
                    v,
                    g,
                }
            }
        }
    }

    /// The widest fused projection output of any layer (the scratch's row width).
    fn widest_layout(&self) -> u32 {
        self.layers
            .iter()
            .map(|l| self.layout(l).width)
            .max()
            .unwrap_or(0)
    }

    /// The widest input of any layer's out_proj: retention's heads × V, or an attention
    /// layer's heads × head dim.
    fn widest_mixer_output(&self) -> usize {
        self.config
            .attention
            .iter()
            .map(AttentionConfig::query_width)
            .fold(self.config.value_width(), usize::max)
    }
}
