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
//! norms after the residual sums.

mod load;

use std::path::Path;
use std::sync::Arc;

use retnet_runtime::kernels::embedding::{gather, EmbeddingParams};
use retnet_runtime::kernels::gated_activation::{self, gated_activation, GatedActivationParams};
use retnet_runtime::kernels::gemm_coop::{gemm_coop, gemm_coop_supports, CoopShape};
use retnet_runtime::kernels::head_norm_gate::{head_norm_gate, HeadNormGateParams};
use retnet_runtime::kernels::linear::{
    self, linear, LinearParams, Reduction, MATVEC_BATCH_MAX_ROWS,
};
use retnet_runtime::kernels::retention::{self, RetentionBatchedParams, RetentionParams, Strided};
use retnet_runtime::kernels::rms_norm::{rms_norm, RmsNormParams};
use retnet_runtime::kernels::rotary::{
    self, rotary, rotary_batched, RotaryBatchedParams, RotaryParams,
};
use retnet_runtime::kernels::sampling;
use retnet_runtime::kernels::WeightFormat;
use retnet_runtime::{Device, GpuBuffer, Sequence, Weights};

use crate::config::{Activation, ModelConfig, NormPlacement, OutputScale, RotaryStyle};
use crate::error::{ModelError, Result};
use crate::reference::{check_tokens, CpuModel, RetentionForm};
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
}

/// Options of [`GpuModel::load`] and [`GpuModel::new`].
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuOptions {
    /// Precision of the weight matrices.
    pub weights: WeightPrecision,
}

/// Largest chunk the chunkwise kernel is given: its workgroup memory grows as C² + 65·C floats
/// (`retention::chunkwise_workgroup_bytes`).
const MAX_GPU_CHUNK: u32 = 64;
/// Tokens per recorded span in prefill: bounds activation memory and per-dispatch grid sizes.
const MAX_SPAN: usize = 2048;
/// The span on a software adapter (llvmpipe), which silently stops any loop after 65535
/// iterations of one invocation (found by `cargo xtask verify`): keeps each chunkwise dispatch
/// short enough.
const MAX_SPAN_LOOP_LIMITED: usize = 512;

struct GpuLayer {
    retention_norm: GpuBuffer,
    qkvg: Weights,
    out_proj: Weights,
    head_norm: Option<GpuBuffer>,
    ffn_norm: GpuBuffer,
    ffn_in: Weights,
    ffn_down: Weights,
}

/// A model whose weights live on a GPU.
pub struct GpuModel {
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
    /// Projections of many rows run on the tensor cores ([`gemm_coop`]) in this shape: the
    /// adapter has cooperative matrices and the weights are native f16.
    tensor_cores: Option<CoopShape>,
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
        load::upload(device, config, &source, options, Pacing::Wait, progress).await
    }

    /// Uploads the weights of a CPU model to `device` (for checking one against the other;
    /// to run a checkpoint on the GPU, [`GpuModel::load`] it).
    pub fn new(device: Arc<Device>, model: &CpuModel, options: GpuOptions) -> Result<Self> {
        let mut gpu = Self::from_weights(device, model.config().clone(), model.weights(), options)?;
        gpu.fingerprint = model.fingerprint().clone();
        Ok(gpu)
    }

    /// Uploads weights held in host f32 to `device`.
    pub fn from_weights(
        device: Arc<Device>,
        config: ModelConfig,
        weights: &ModelWeights,
        options: GpuOptions,
    ) -> Result<Self> {
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

    /// The fingerprint of the weights (state files carry it: a state is only resumed by the
    /// checkpoint that made it).
    pub fn fingerprint(&self) -> &WeightsFingerprint {
        &self.fingerprint
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// A fresh session (zero state at position 0).
    pub fn session(&self) -> Result<GpuSession<'_>> {
        GpuSession::new(self)
    }

    /// Logits `[T, vocab]` of a whole sequence from a fresh state, in any form.
    pub async fn logits(&self, tokens: &[u32], form: RetentionForm) -> Result<Vec<f32>> {
        let mut session = self.session()?;
        session.forward(tokens, form, LogitRows::All).await
    }

    /// Bytes of GPU memory the model's own buffers hold (weights, norms, decays, angles), as
    /// allocated (sizes are rounded up to the runtime's granule).
    pub fn buffer_bytes(&self) -> u64 {
        let optional = |b: &Option<GpuBuffer>| b.as_ref().map_or(0, GpuBuffer::size);
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                l.retention_norm.size()
                    + l.qkvg.buffer.size()
                    + l.out_proj.buffer.size()
                    + optional(&l.head_norm)
                    + l.ffn_norm.size()
                    + l.ffn_in.buffer.size()
                    + l.ffn_down.buffer.size()
            })
            .sum();
        layers
            + self.embed.buffer.size()
            + optional(&self.embed_norm)
            + optional(&self.final_norm)
            + self.head.as_ref().map_or(0, |h| h.buffer.size())
            + self.log_decay.size()
            + self.rotary_theta.size()
    }

    fn head(&self) -> &Weights {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    /// Whether projections of many rows run on the tensor cores.
    pub fn uses_tensor_cores(&self) -> bool {
        self.tensor_cores.is_some()
    }

    /// Tokens per recorded prefill span on this adapter.
    fn max_span(&self) -> usize {
        if self.loop_limited {
            MAX_SPAN_LOOP_LIMITED
        } else {
            MAX_SPAN
        }
    }

    fn qkvg_layout(&self) -> QkvgLayout {
        let c = &self.config;
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

/// Which rows of logits a forward pass computes and returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Every position: `[T, vocab]`.
    All,
    /// The last position only: `[vocab]` (prefill before generation).
    Last,
}

/// Activation buffers sized for up to `tokens` tokens per span.
struct Scratch {
    tokens: usize,
    /// Rows allocated (`tokens`).
    rows: usize,
    /// Rows of logits allocated: 1, or `rows` once every row was asked for.
    logit_rows: usize,
    token_ids: GpuBuffer,
    x: GpuBuffer,
    h: GpuBuffer,
    qkvg: GpuBuffer,
    retained: GpuBuffer,
    gated: GpuBuffer,
    ffn_in: GpuBuffer,
    ffn_mid: GpuBuffer,
    logits: GpuBuffer,
    /// The state before each chunk, for chunk-parallel retention: made by the first chunkwise
    /// span ([`Scratch::prepare_chunk_states`]); `None` until then, for decode-only scratch, or
    /// where it would not fit one binding.
    chunk_states: Option<GpuBuffer>,
    /// Chunks `chunk_states` holds.
    chunk_capacity: usize,
}

impl Scratch {
    /// Makes the chunk-state buffer of chunk-parallel retention for spans of up to `tokens`
    /// tokens, once: for a span of 2048 tokens in chunks of 64, 32 states (113 MB for
    /// retnet_xl). Where that exceeds a binding, the sequential chunkwise kernel (no extra
    /// memory) is used instead.
    fn prepare_chunk_states(&mut self, model: &GpuModel) -> Result<()> {
        if self.chunk_states.is_some() || self.tokens <= 1 {
            return Ok(());
        }
        let c = &model.config;
        let state_len = c.num_heads * c.head_k_dim * c.head_v_dim;
        let chunks = self.tokens.div_ceil(model.max_parallel_chunk);
        let bytes = (chunks * state_len * 4) as u64;
        let limits = model.device.limits();
        if bytes <= limits.max_storage_buffer_binding_size && bytes <= limits.max_buffer_size {
            self.chunk_states = Some(model.device.create_storage("chunk states", bytes)?);
            self.chunk_capacity = chunks;
        }
        Ok(())
    }

    fn bytes(&self) -> u64 {
        [
            &self.token_ids,
            &self.x,
            &self.h,
            &self.qkvg,
            &self.retained,
            &self.gated,
            &self.ffn_in,
            &self.ffn_mid,
            &self.logits,
        ]
        .iter()
        .map(|b| b.size())
        .sum::<u64>()
            + self.chunk_states.as_ref().map_or(0, GpuBuffer::size)
    }

    fn new(model: &GpuModel, tokens: usize, all_logits: bool) -> Result<Self> {
        let c = &model.config;
        let dev = &model.device;
        let rows = tokens;
        let logit_rows = if all_logits { rows } else { 1 };
        let f32s = |label: &str, width: usize| dev.create_storage_f32(label, rows * width);
        Ok(Self {
            tokens,
            rows,
            logit_rows,
            chunk_states: None,
            chunk_capacity: 0,
            token_ids: dev.create_storage("token_ids", (tokens * 4) as u64)?,
            x: f32s("x", c.d_model)?,
            h: f32s("h", c.d_model)?,
            qkvg: f32s("q|k|v|g", model.qkvg_layout().width as usize)?,
            retained: f32s("retained", c.value_width())?,
            gated: f32s("gated", c.value_width())?,
            ffn_in: f32s("ffn act|lin", 2 * c.ffn_dim)?,
            ffn_mid: f32s("ffn mid", c.ffn_dim)?,
            logits: dev.create_storage_f32("logits", logit_rows * c.vocab_size)?,
        })
    }
}

/// A sequence on the GPU: its recurrent state (one `[H, K, V]` f32 buffer per layer), its
/// position, and activation buffers reused from call to call.
pub struct GpuSession<'m> {
    model: &'m GpuModel,
    states: Vec<GpuBuffer>,
    position: usize,
    scratch: Scratch,
    sampler: Option<SamplerBuffers>,
}

impl<'m> GpuSession<'m> {
    fn new(model: &'m GpuModel) -> Result<Self> {
        let c = &model.config;
        let states = (0..c.num_layers)
            .map(|_| {
                model
                    .device
                    .create_storage_f32("state", c.num_heads * c.head_k_dim * c.head_v_dim)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self {
            model,
            states,
            position: 0,
            scratch: Scratch::new(model, 1, false)?,
            sampler: None,
        })
    }

    /// Tokens consumed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Bytes of GPU memory this session holds (states, activations, sampler buffers).
    pub fn buffer_bytes(&self) -> u64 {
        let states: u64 = self.states.iter().map(GpuBuffer::size).sum();
        let sampler = self.sampler.as_ref().map_or(0, |s| {
            s.state.size() + s.next_token.size() + s.generated.size()
        });
        states + self.scratch.bytes() + sampler
    }

    /// The per-layer state buffers (`[H, K, V]` f32 each).
    pub fn states(&self) -> &[GpuBuffer] {
        &self.states
    }

    /// Feeds `tokens` chunkwise; returns the logits of the last one.
    pub async fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let chunk_size = self.model.config.default_chunk_size;
        self.forward(
            tokens,
            RetentionForm::Chunkwise { chunk_size },
            LogitRows::Last,
        )
        .await
    }

    /// Feeds one token with the recurrent form; returns its logits.
    pub async fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        self.forward(&[token], RetentionForm::Recurrent, LogitRows::Last)
            .await
    }

    /// Feeds `tokens` in `form` and returns the requested logits. The parallel form starts
    /// from a zero state and leaves no state behind, so it is only accepted for a whole
    /// sequence at position 0; use it through [`GpuModel::logits`].
    pub async fn forward(
        &mut self,
        tokens: &[u32],
        form: RetentionForm,
        rows: LogitRows,
    ) -> Result<Vec<f32>> {
        let c = &self.model.config;
        check_tokens(tokens, c.vocab_size)?;
        let span = match form {
            RetentionForm::Chunkwise { chunk_size: 0 } => return Err(ModelError::ZeroChunkSize),
            RetentionForm::Parallel if self.position != 0 => {
                return Err(ModelError::invalid(
                    "the parallel form runs a whole sequence from position 0",
                ))
            }
            // One span: the parallel kernel neither reads nor writes the state. Except on a
            // CPU adapter (llvmpipe), whose loop limit would silently cut a long parallel
            // dispatch short: there, beyond one span, the sequence continues chunkwise.
            RetentionForm::Parallel
                if !self.model.loop_limited || tokens.len() <= MAX_SPAN_LOOP_LIMITED =>
            {
                tokens.len()
            }
            _ => self.model.max_span(),
        };
        let form = match form {
            RetentionForm::Parallel if span < tokens.len() => RetentionForm::Chunkwise {
                chunk_size: self.model.max_chunk,
            },
            other => other,
        };
        crate::reference::check_advance(self.position, tokens.len())?;
        let vocab = c.vocab_size;
        let mut out = Vec::with_capacity(match rows {
            LogitRows::All => crate::reference::logits_len(tokens.len(), vocab)?,
            LogitRows::Last => vocab,
        });
        // Counted rather than collected: a decode step should allocate nothing it can avoid.
        let span_count = tokens.len().div_ceil(span);
        for (i, span_tokens) in tokens.chunks(span).enumerate() {
            let last = i + 1 == span_count;
            let span_rows = match rows {
                LogitRows::All => Some(false),
                LogitRows::Last if last => Some(true),
                LogitRows::Last => None,
            };
            self.record_and_submit(span_tokens, form, span_rows)?;
            if let Some(only_last) = span_rows {
                let n = if only_last {
                    vocab
                } else {
                    span_tokens.len() * vocab
                };
                out.extend(
                    self.model
                        .device
                        .read_f32(&self.scratch.logits, 0, n)
                        .await?,
                );
            }
        }
        let rows_out = out.len() / vocab.max(1);
        crate::reference::check_finite_logits(&out, vocab, self.position - rows_out)?;
        Ok(out)
    }

    /// Records one span's dispatches and submits them. `logits`: `None` computes no logits,
    /// `Some(true)` the last row only, `Some(false)` every row.
    fn record_and_submit(
        &mut self,
        tokens: &[u32],
        form: RetentionForm,
        logits: Option<bool>,
    ) -> Result<()> {
        let model = self.model;
        let all_logits = logits == Some(false);
        if tokens.len() > self.scratch.tokens
            || (all_logits && self.scratch.logit_rows < self.scratch.rows)
        {
            let tokens = tokens.len().next_power_of_two().max(self.scratch.tokens);
            self.scratch = Scratch::new(model, tokens, all_logits)?;
        }
        if matches!(form, RetentionForm::Chunkwise { .. }) {
            self.scratch.prepare_chunk_states(model)?;
        }
        let rows = Rows::Sequence {
            position: self.position as u32,
            states: &self.states,
            form,
        };
        let s = &self.scratch;
        model.device.write_u32(&s.token_ids, 0, tokens);
        let mut seq = model.device.sequence("retnet forward");
        record_forward(model, s, &mut seq, &s.token_ids, tokens.len(), rows, logits)?;
        seq.submit()?;
        self.position += tokens.len();
        Ok(())
    }

    /// Generates `count` tokens with the sampler on the GPU, from the logits left by the last
    /// call (which must have computed the last row: [`GpuSession::prefill`] or
    /// [`GpuSession::step`]). Each step is one submission — sample, then feed the sampled id
    /// (which never leaves the GPU) through the model — and ids are read back every
    /// `flush_every` steps and handed to `on_tokens`. The last sampled token is *not* fed: it
    /// is returned pending, as [`crate::Generator`] keeps it. `draws` and `history` are the
    /// sampler's position and the recent tokens (prompt included).
    pub async fn sample_loop(
        &mut self,
        params: &crate::SamplingParams,
        draws: u64,
        history: &[u32],
        count: usize,
        flush_every: usize,
        on_tokens: &mut dyn FnMut(&[u32]) -> bool,
    ) -> Result<Vec<u32>> {
        let model = self.model;
        let c = &model.config;
        let dev = &model.device;
        let capacity = flush_every.clamp(1, 256);
        let window = sampling::DEFAULT_HISTORY_WINDOW;
        let recent = history
            .get(history.len().saturating_sub(window as usize)..)
            .unwrap_or_default();
        let draws32 = u32::try_from(draws)
            .map_err(|_| ModelError::invalid("more than 2^32 draws in one session"))?;
        let sampler = self.sampler(window, capacity)?;
        dev.write_u32(
            &sampler.state,
            0,
            &sampling::initial_state(window, draws32, recent),
        );
        let sample_params = sampling::SampleParams {
            vocab: c.vocab_size as u32,
            logits_offset: 0,
            temperature: params.temperature,
            top_k: params.top_k.min(u32::MAX as usize) as u32,
            top_p: params.top_p,
            repeat_penalty: params.repeat_penalty,
            seed: params.seed,
            history_window: window,
            capacity: capacity as u32,
        };
        // `count` comes from the user (`--max-tokens`): ids are collected as they come.
        let mut out = Vec::new();
        let mut unread = 0;
        for i in 0..count {
            // Each token but the last is fed, so the position must stay representable.
            crate::reference::check_advance(self.position, 1)?;
            let s = &self.scratch;
            let mut seq = dev.sequence("retnet decode step");
            seq.dispatch(
                sampling::sample(sample_params),
                &[
                    &s.logits,
                    &sampler.state,
                    &sampler.next_token,
                    &sampler.generated,
                ],
            )?;
            let last = i + 1 == count;
            if !last {
                let rows = Rows::Sequence {
                    position: self.position as u32,
                    states: &self.states,
                    form: RetentionForm::Recurrent,
                };
                record_forward(model, s, &mut seq, &sampler.next_token, 1, rows, Some(true))?;
            }
            seq.submit()?;
            if !last {
                self.position += 1;
            }
            unread += 1;
            if unread == capacity || last {
                // Draw n is stored at n % capacity, and this loop's draws start at `draws`.
                let start = (draws as usize + i + 1 - unread) % capacity;
                let ids = dev.read_u32(&sampler.generated, 0, capacity).await?;
                let fresh = (0..unread)
                    .map(|k| {
                        let id = ids.get((start + k) % capacity).copied();
                        id.ok_or_else(|| ModelError::invalid("sampled ids read back short"))
                    })
                    .collect::<Result<Vec<u32>>>()?;
                // The sampler's input never leaves the GPU; the newest row (what the next draw
                // reads) is checked before the tokens are handed on. A non-finite step leaves a
                // non-finite state, so every later row is non-finite too and this sees it.
                let newest = dev.read_f32(&s.logits, 0, c.vocab_size).await?;
                crate::reference::check_finite_logits(&newest, c.vocab_size, self.position)?;
                if let Some(&bad) = fresh.iter().find(|&&t| t as usize >= c.vocab_size) {
                    return Err(ModelError::NonFinite(format!(
                        "the GPU sampler drew token {bad}, outside the vocabulary"
                    )));
                }
                unread = 0;
                out.extend_from_slice(&fresh);
                if !on_tokens(&fresh) {
                    break;
                }
            }
        }
        self.sampler = Some(sampler);
        Ok(out)
    }

    /// The sampler's buffers, created on first use and kept for the session.
    fn sampler(&mut self, window: u32, capacity: usize) -> Result<SamplerBuffers> {
        if let Some(b) = self.sampler.take() {
            if b.capacity == capacity {
                return Ok(b);
            }
        }
        let dev = &self.model.device;
        Ok(SamplerBuffers {
            state: dev.create_storage("sampler state", (sampling::state_len(window) * 4) as u64)?,
            next_token: dev.create_storage("next token", 4)?,
            generated: dev.create_storage("generated", (capacity * 4) as u64)?,
            capacity,
        })
    }
}

/// GPU buffers of the sampler: its state (draw counter, history), the chosen id, recent ids.
struct SamplerBuffers {
    state: GpuBuffer,
    next_token: GpuBuffer,
    generated: GpuBuffer,
    capacity: usize,
}

/// Where the rows of one recorded forward pass come from.
enum Rows<'a> {
    /// Consecutive tokens of one sequence from `position`, with its per-layer states.
    Sequence {
        position: u32,
        states: &'a [GpuBuffer],
        form: RetentionForm,
    },
    /// One token of each of several sequences: row b is at `positions[b]` and owns state slot
    /// `slots[b]` of each layer's pool (batched decode).
    Batch {
        positions: &'a GpuBuffer,
        slots: &'a GpuBuffer,
        pools: &'a [GpuBuffer],
    },
}

/// Records the whole model over `t` tokens whose ids are in `token_ids` (on the GPU) into `seq`.
fn record_forward(
    model: &GpuModel,
    s: &Scratch,
    seq: &mut Sequence<'_>,
    token_ids: &GpuBuffer,
    t: usize,
    rows: Rows<'_>,
    logits: Option<bool>,
) -> Result<()> {
    let c = &model.config;
    let t32 = t as u32;
    let d = c.d_model as u32;
    let layout = model.qkvg_layout();

    // Embeddings (scaled), then the optional embedding norm.
    let embed = |seq: &mut Sequence<'_>, out: &GpuBuffer| {
        let params = EmbeddingParams {
            tokens: t32,
            dim: d,
            scale: c.embed_scale,
        };
        seq.dispatch(
            gather(model.embed.format, params),
            &[&model.embed.buffer, token_ids, out],
        )
    };
    let norm = |rows: u32| RmsNormParams {
        rows,
        dim: d,
        eps: c.norm_eps,
    };
    match &model.embed_norm {
        Some(w) => {
            embed(seq, &s.h)?;
            seq.dispatch(rms_norm(true, norm(t32)), &[&s.h, w, &s.x])?;
        }
        None => embed(seq, &s.x)?,
    }

    let alpha = c.residual_alpha;
    let proj = |seq: &mut Sequence<'_>,
                w: &Weights,
                input: &GpuBuffer,
                out: &GpuBuffer,
                in_dim: usize,
                out_dim: usize,
                accumulate: Option<f32>| {
        let mut params = LinearParams::new(t32, in_dim as u32, out_dim as u32);
        params.accumulate = accumulate;
        project(model, seq, w, input, out, params)
    };
    // One decode row with subgroups: a pre-norm's RMSNorm is fused into the projection after it.
    let fuse_norms = t == 1 && model.reduction == Reduction::Subgroup && c.d_model % 4 == 0;
    // `output = rms_norm(x; g) · Wᵀ` for one row of x: fused, or the norm into h, then `w`.
    let normed_proj = |seq: &mut Sequence<'_>,
                       g: &GpuBuffer,
                       w: &Weights,
                       out: &GpuBuffer,
                       mut params: LinearParams|
     -> Result<()> {
        if fuse_norms {
            params.norm_eps = c.norm_eps;
            seq.dispatch(
                linear::matvec_norm(w.format, params),
                &[&w.buffer, &s.x, out, g],
            )?;
            Ok(())
        } else {
            seq.dispatch(rms_norm(true, norm(t32)), &[&s.x, g, &s.h])?;
            project(model, seq, w, &s.h, out, params)
        }
    };
    for (index, layer) in model.layers.iter().enumerate() {
        // Retention sub-layer: its input is norm(x) (pre-norm) or x (post-norm).
        let width = layout.width as usize;
        let ret_out = match c.norm_placement {
            NormPlacement::PreNorm => {
                let params = LinearParams::new(t32, d, width as u32);
                normed_proj(seq, &layer.retention_norm, &layer.qkvg, &s.qkvg, params)?;
                &s.x
            }
            NormPlacement::PostNorm => {
                proj(seq, &layer.qkvg, &s.x, &s.qkvg, c.d_model, width, None)?;
                &s.x
            }
        };
        record_retention(model, s, seq, layer, index, &rows, layout, t)?;
        let vw = c.value_width();
        proj(
            seq,
            &layer.out_proj,
            &s.gated,
            ret_out,
            vw,
            c.d_model,
            Some(alpha),
        )?;

        // FFN sub-layer.
        let f = c.ffn_dim as u32;
        let ffn_out = match c.norm_placement {
            NormPlacement::PreNorm => {
                let params = LinearParams::new(t32, d, 2 * f);
                normed_proj(seq, &layer.ffn_norm, &layer.ffn_in, &s.ffn_in, params)?;
                &s.x
            }
            NormPlacement::PostNorm => {
                // x ← norm(α·x + MSR(x)), held in h while the FFN runs on it.
                seq.dispatch(
                    rms_norm(true, norm(t32)),
                    &[&s.x, &layer.retention_norm, &s.h],
                )?;
                proj(
                    seq,
                    &layer.ffn_in,
                    &s.h,
                    &s.ffn_in,
                    c.d_model,
                    2 * c.ffn_dim,
                    None,
                )?;
                &s.h
            }
        };
        let act = match c.ffn_activation {
            Activation::Swish => gated_activation::Activation::Silu,
            Activation::Gelu => gated_activation::Activation::Gelu,
        };
        let params = GatedActivationParams {
            tokens: t32,
            width: f,
            act: Strided {
                offset: 0,
                stride: 2 * f,
            },
            linear: Strided {
                offset: f,
                stride: 2 * f,
            },
            out: Strided::dense(f),
        };
        seq.dispatch(
            gated_activation(act, params),
            &[&s.ffn_in, &s.ffn_in, &s.ffn_mid],
        )?;
        proj(
            seq,
            &layer.ffn_down,
            &s.ffn_mid,
            ffn_out,
            c.ffn_dim,
            c.d_model,
            Some(alpha),
        )?;
        if c.norm_placement == NormPlacement::PostNorm {
            seq.dispatch(rms_norm(true, norm(t32)), &[&s.h, &layer.ffn_norm, &s.x])?;
        }
    }

    if let Some(only_last) = logits {
        let (rows, start) = if only_last { (1, t32 - 1) } else { (t32, 0) };
        let mut params = LinearParams::new(rows, d, c.vocab_size as u32);
        params.x_row_start = start;
        match &model.final_norm {
            Some(g) if fuse_norms => normed_proj(seq, g, model.head(), &s.logits, params)?,
            Some(g) => {
                seq.dispatch(rms_norm(true, norm(t32)), &[&s.x, g, &s.h])?;
                project(model, seq, model.head(), &s.h, &s.logits, params)?;
            }
            None => project(model, seq, model.head(), &s.x, &s.logits, params)?,
        }
    }
    Ok(())
}

/// Records `output = input · Wᵀ` (`params` says the shape and whether it accumulates): on the
/// tensor cores where the model uses them and there are more rows than the batched matvec takes,
/// else with the portable kernel [`linear`] picks.
fn project(
    model: &GpuModel,
    seq: &mut Sequence<'_>,
    w: &Weights,
    input: &GpuBuffer,
    output: &GpuBuffer,
    params: LinearParams,
) -> Result<()> {
    let dispatch = match model.tensor_cores {
        Some(shape)
            if w.format == WeightFormat::F16
                && params.rows > MATVEC_BATCH_MAX_ROWS
                && gemm_coop_supports(shape.tile, &params) =>
        {
            gemm_coop(shape, params)
        }
        _ => linear(w.format, model.reduction, params),
    };
    seq.dispatch(dispatch, &[&w.buffer, input, output])?;
    Ok(())
}

/// Rotary on q and k, retention, then the per-head norm times the output gate, for layer
/// `index`.
#[allow(clippy::too_many_arguments)]
fn record_retention(
    model: &GpuModel,
    s: &Scratch,
    seq: &mut Sequence<'_>,
    layer: &GpuLayer,
    index: usize,
    rows: &Rows<'_>,
    layout: QkvgLayout,
    t: usize,
) -> Result<()> {
    let c = &model.config;
    let (t32, kd, vd) = (t as u32, c.head_k_dim as u32, c.head_v_dim as u32);
    let style = match c.rotary {
        RotaryStyle::InterleavedPairs => rotary::RotaryStyle::Interleaved,
        RotaryStyle::SplitHalves => rotary::RotaryStyle::Halves,
    };
    for (heads, col_offset, scale) in [
        (c.num_heads, 0, (c.head_k_dim as f64).powf(-0.5) as f32),
        (c.num_kv_heads, layout.k, 1.0),
    ] {
        match rows {
            Rows::Sequence { position, .. } => {
                let params = RotaryParams {
                    tokens: t32,
                    heads: heads as u32,
                    head_dim: kd,
                    start_pos: *position,
                    row_stride: layout.width,
                    col_offset,
                    scale,
                };
                seq.dispatch(rotary(style, params), &[&model.rotary_theta, &s.qkvg])?;
            }
            Rows::Batch { positions, .. } => {
                let params = RotaryBatchedParams {
                    rows: t32,
                    heads: heads as u32,
                    head_dim: kd,
                    row_stride: layout.width,
                    col_offset,
                    scale,
                };
                seq.dispatch(
                    rotary_batched(style, params),
                    &[&model.rotary_theta, &s.qkvg, positions],
                )?;
            }
        }
    }
    let strided = |offset| Strided {
        offset,
        stride: layout.width,
    };
    let out = Strided::dense(c.value_width() as u32);
    let scale_by_decay_sum = c.output_scale == OutputScale::InvSqrtDecaySum;
    let qkv = &s.qkvg;
    match rows {
        Rows::Sequence {
            position,
            states,
            form,
        } => {
            let params = RetentionParams {
                tokens: t32,
                query_heads: c.num_heads as u32,
                kv_heads: c.num_kv_heads as u32,
                key_dim: kd,
                value_dim: vd,
                start_pos: *position,
                q: strided(0),
                k: strided(layout.k),
                v: strided(layout.v),
                out,
                scale_by_decay_sum,
            };
            let state = states
                .get(index)
                .ok_or_else(|| ModelError::invalid("a state per layer"))?;
            match form {
                RetentionForm::Parallel => seq.dispatch(
                    retention::parallel(params),
                    &[qkv, qkv, qkv, &model.log_decay, &s.retained],
                )?,
                RetentionForm::Recurrent => seq.dispatch(
                    retention::recurrent(params),
                    &[qkv, qkv, qkv, &model.log_decay, state, &s.retained],
                )?,
                RetentionForm::Chunkwise { chunk_size } => {
                    let chunk = (*chunk_size).min(model.max_chunk);
                    let parallel_chunk = (*chunk_size).min(model.max_parallel_chunk);
                    match &s.chunk_states {
                        // Chunk-parallel: each chunk's update of the state, the state before
                        // each chunk, then every chunk's outputs at once.
                        Some(states) if t.div_ceil(parallel_chunk) <= s.chunk_capacity => {
                            let chunk = parallel_chunk as u32;
                            seq.dispatch(
                                retention::chunk_updates(params, chunk),
                                &[qkv, qkv, &model.log_decay, states],
                            )?;
                            seq.dispatch(
                                retention::chunk_scan(params, chunk),
                                &[&model.log_decay, state, states],
                            )?;
                            seq.dispatch(
                                retention::chunk_outputs(params, chunk),
                                &[qkv, qkv, qkv, &model.log_decay, states, &s.retained],
                            )?;
                        }
                        // One workgroup per head and column slice walks the chunks in order.
                        _ => seq.dispatch(
                            retention::chunkwise(params, chunk as u32),
                            &[qkv, qkv, qkv, &model.log_decay, state, &s.retained],
                        )?,
                    }
                }
            }
        }
        Rows::Batch {
            positions,
            slots,
            pools,
        } => {
            let params = RetentionBatchedParams {
                rows: t32,
                query_heads: c.num_heads as u32,
                kv_heads: c.num_kv_heads as u32,
                key_dim: kd,
                value_dim: vd,
                q: strided(0),
                k: strided(layout.k),
                v: strided(layout.v),
                out,
                scale_by_decay_sum,
            };
            let pool = pools
                .get(index)
                .ok_or_else(|| ModelError::invalid("a state pool per layer"))?;
            seq.dispatch(
                retention::recurrent_batched(params),
                &[
                    qkv,
                    qkv,
                    qkv,
                    &model.log_decay,
                    positions,
                    slots,
                    pool,
                    &s.retained,
                ],
            )?;
        }
    }
    let params = HeadNormGateParams {
        tokens: t32,
        heads: c.num_heads as u32,
        head_dim: vd,
        eps: c.head_norm_eps,
        input: Strided::dense(c.value_width() as u32),
        gate: strided(layout.g),
        out: Strided::dense(c.value_width() as u32),
    };
    match &layer.head_norm {
        Some(w) => seq.dispatch(
            head_norm_gate(true, params),
            &[&s.retained, qkv, w, &s.gated],
        )?,
        None => seq.dispatch(head_norm_gate(false, params), &[&s.retained, qkv, &s.gated])?,
    }
    Ok(())
}

/// Several sequences decoded together: one token of each per step, in one dispatch per kernel.
///
/// Each sequence owns a slot of a per-layer state pool (`[slots, H, K, V]` f32). Sequences are
/// prefilled alone in a [`GpuSession`], then [`GpuBatch::insert`]ed (their state copied on the
/// GPU); they may be at different positions, and any subset may step together.
pub struct GpuBatch<'m> {
    model: &'m GpuModel,
    pools: Vec<GpuBuffer>,
    /// Position of the sequence in each slot; `None` for a free slot.
    slots: Vec<Option<usize>>,
    positions_buffer: GpuBuffer,
    slots_buffer: GpuBuffer,
    scratch: Scratch,
    /// Reused per step: no allocation in the decode loop.
    row_positions: Vec<u32>,
    row_slots: Vec<u32>,
    row_tokens: Vec<u32>,
}

impl<'m> GpuBatch<'m> {
    /// A batch of up to `capacity` sequences.
    pub fn new(model: &'m GpuModel, capacity: usize) -> Result<Self> {
        let c = &model.config;
        let capacity = capacity.max(1);
        let state_len = c.num_heads * c.head_k_dim * c.head_v_dim;
        let dev = &model.device;
        let pools = (0..c.num_layers)
            .map(|_| dev.create_storage_f32("state pool", capacity * state_len))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self {
            model,
            pools,
            slots: vec![None; capacity],
            positions_buffer: dev.create_storage("batch positions", (capacity * 4) as u64)?,
            slots_buffer: dev.create_storage("batch slots", (capacity * 4) as u64)?,
            scratch: Scratch::new(model, capacity, true)?,
            row_positions: Vec::with_capacity(capacity),
            row_slots: Vec::with_capacity(capacity),
            row_tokens: Vec::with_capacity(capacity),
        })
    }

    /// Bytes of GPU memory this batch holds (state pools, slot tables, activations).
    pub fn buffer_bytes(&self) -> u64 {
        let pools: u64 = self.pools.iter().map(GpuBuffer::size).sum();
        pools + self.positions_buffer.size() + self.slots_buffer.size() + self.scratch.bytes()
    }

    fn state_bytes(&self) -> u64 {
        let c = &self.model.config;
        (c.num_heads * c.head_k_dim * c.head_v_dim * 4) as u64
    }

    /// Copies a session's state into a free slot; returns the slot.
    pub fn insert(&mut self, session: &GpuSession<'_>) -> Result<usize> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| ModelError::invalid("the batch is full"))?;
        let bytes = self.state_bytes();
        for (state, pool) in session.states.iter().zip(&self.pools) {
            self.model
                .device
                .copy_region(state, 0, pool, slot as u64 * bytes, bytes);
        }
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Some(session.position);
        }
        Ok(slot)
    }

    /// Frees a slot.
    pub fn remove(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = None;
        }
    }

    /// The position of the sequence in `slot`, if any.
    pub fn position(&self, slot: usize) -> Option<usize> {
        self.slots.get(slot).copied().flatten()
    }

    /// A session holding a copy of the sequence in `slot` (to save it, or continue alone).
    pub fn extract(&self, slot: usize) -> Result<GpuSession<'m>> {
        let position = self
            .position(slot)
            .ok_or_else(|| ModelError::invalid(format!("batch slot {slot} is empty")))?;
        let mut session = GpuSession::new(self.model)?;
        let bytes = self.state_bytes();
        for (state, pool) in session.states.iter().zip(&self.pools) {
            self.model
                .device
                .copy_region(pool, slot as u64 * bytes, state, 0, bytes);
        }
        session.position = position;
        Ok(session)
    }

    /// Advances each listed sequence by one token: `inputs[i] = (slot, token)`. Returns the
    /// logits `[inputs.len(), vocab]`, row i for `inputs[i]`.
    pub async fn step(&mut self, inputs: &[(usize, u32)]) -> Result<Vec<f32>> {
        let c = &self.model.config;
        self.row_positions.clear();
        self.row_slots.clear();
        self.row_tokens.clear();
        for (i, &(slot, token)) in inputs.iter().enumerate() {
            let position = self
                .position(slot)
                .ok_or_else(|| ModelError::invalid(format!("batch slot {slot} is empty")))?;
            if inputs.iter().take(i).any(|&(other, _)| other == slot) {
                return Err(ModelError::invalid(format!(
                    "slot {slot} listed twice in one step"
                )));
            }
            self.row_positions.push(position as u32);
            self.row_slots.push(slot as u32);
            self.row_tokens.push(token);
        }
        check_tokens(&self.row_tokens, c.vocab_size)?;
        let dev = &self.model.device;
        dev.write_u32(&self.positions_buffer, 0, &self.row_positions);
        dev.write_u32(&self.slots_buffer, 0, &self.row_slots);
        let rows = Rows::Batch {
            positions: &self.positions_buffer,
            slots: &self.slots_buffer,
            pools: &self.pools,
        };
        let s = &self.scratch;
        dev.write_u32(&s.token_ids, 0, &self.row_tokens);
        let mut seq = dev.sequence("retnet batched step");
        record_forward(
            self.model,
            s,
            &mut seq,
            &s.token_ids,
            inputs.len(),
            rows,
            Some(false),
        )?;
        seq.submit()?;
        for &(slot, _) in inputs {
            if let Some(Some(p)) = self.slots.get_mut(slot) {
                *p += 1;
            }
        }
        Ok(dev
            .read_f32(&self.scratch.logits, 0, inputs.len() * c.vocab_size)
            .await?)
    }
}

impl crate::session::Engine for GpuSession<'_> {
    fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    fn fingerprint(&self) -> &WeightsFingerprint {
        &self.model.fingerprint
    }

    fn position(&self) -> usize {
        self.position
    }

    async fn feed(&mut self, tokens: &[u32], all_rows: bool) -> Result<Vec<f32>> {
        let form = if tokens.len() == 1 {
            RetentionForm::Recurrent
        } else {
            RetentionForm::Chunkwise {
                chunk_size: self.model.config.default_chunk_size,
            }
        };
        let rows = if all_rows {
            LogitRows::All
        } else {
            LogitRows::Last
        };
        self.forward(tokens, form, rows).await
    }

    async fn export_state(&self) -> Result<Vec<Vec<f32>>> {
        let c = &self.model.config;
        let len = c.num_heads * c.head_k_dim * c.head_v_dim;
        let mut layers = Vec::with_capacity(self.states.len());
        for state in &self.states {
            layers.push(self.model.device.read_f32(state, 0, len).await?);
        }
        Ok(layers)
    }

    fn import_state(&mut self, position: usize, layers: &[Vec<f32>]) -> Result<()> {
        crate::reference::check_state_shape(&self.model.config, position, layers)?;
        if layers.len() != self.states.len() {
            return Err(ModelError::invalid("a state of another shape"));
        }
        for (buffer, values) in self.states.iter().zip(layers) {
            self.model.device.write_f32(buffer, 0, values);
        }
        self.position = position;
        Ok(())
    }

    fn restore_logits(&mut self, logits: &[f32]) -> Result<()> {
        if logits.len() != self.model.config.vocab_size {
            return Err(ModelError::invalid("logits of another vocabulary"));
        }
        // The sampler reads the last row's logits from the start of the logits buffer.
        self.model.device.write_f32(&self.scratch.logits, 0, logits);
        Ok(())
    }

    async fn sample_on_device(
        &mut self,
        params: &crate::SamplingParams,
        draws: u64,
        history: &[u32],
        count: usize,
        on_tokens: &mut dyn FnMut(&[u32]) -> bool,
    ) -> Result<Option<Vec<u32>>> {
        const FLUSH_EVERY: usize = 16;
        self.sample_loop(params, draws, history, count, FLUSH_EVERY, on_tokens)
            .await
            .map(Some)
    }

    fn fork(&self) -> Result<Self> {
        let mut copy = GpuSession::new(self.model)?;
        for (src, dst) in self.states.iter().zip(&copy.states) {
            self.model.device.copy(src, dst);
        }
        copy.position = self.position;
        Ok(copy)
    }
}
