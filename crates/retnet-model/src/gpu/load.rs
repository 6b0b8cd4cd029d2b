//! Weights from their source to the GPU, tensor by tensor: each tensor is decoded in pieces of
//! [`READ_CHUNK`] values straight into its place in its GPU buffer (its rows inside the fused
//! q|k|v|g and act|lin matrices), in the precision it has there. The host holds one piece and a
//! few MiB of converted bytes at a time; every [`WAIT_EVERY`] bytes the loader waits (without
//! blocking) for the GPU to take what was queued, so the queue's staging copies stay bounded
//! too. A memory-mapped checkpoint releases each tensor's pages once it is read: host memory
//! during a load is O(one tensor), not O(the model).

use std::sync::Arc;

use retnet_runtime::kernels::gemm_coop::CoopTile;
use retnet_runtime::kernels::linear::Reduction;
use retnet_runtime::kernels::{attention, retention, WeightFormat};
use retnet_runtime::{Device, GpuBuffer, WeightWriter, Weights};

use super::{GpuAttention, GpuLayer, GpuOptions, Parts, WeightPrecision, MAX_GPU_CHUNK};
use crate::config::{LayerKind, ModelConfig};
use crate::error::{ModelError, Result};
use crate::weights::{LayerTensor, TensorRole, WeightReader, WeightSource, READ_CHUNK};

/// Bytes queued to the GPU between two waits for it.
pub(crate) const WAIT_EVERY: u64 = 64 << 20;

/// How the loader lets the GPU catch up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pacing {
    /// Await the GPU every [`WAIT_EVERY`] bytes (bounded staging memory).
    Wait,
    /// Submit without waiting (the synchronous constructors, whose source already holds the
    /// whole model in host memory): the load then completes in a single poll.
    Submit,
}

/// Progress of a load: bytes of GPU weights written so far, and in all.
pub(crate) type LoadProgress<'a> = &'a mut dyn FnMut(u64, u64);

struct Uploader<'a> {
    device: &'a Device,
    config: &'a ModelConfig,
    reader: WeightReader<'a>,
    /// The layers' matrices' format (the embeddings' and the head's is given where they are
    /// loaded: f16 when the layers are quantized).
    format: WeightFormat,
    chunk: Vec<f32>,
    pacing: Pacing,
    since_wait: u64,
    done: u64,
    total: u64,
    progress: LoadProgress<'a>,
}

impl Uploader<'_> {
    fn len(&self, role: TensorRole) -> Result<usize> {
        self.reader
            .source()
            .len(role)
            .ok_or_else(|| ModelError::invalid(format!("the model has no tensor {role:?}")))
    }

    /// One weight matrix of rows `row_len` values long made of the rows of `roles`, in order,
    /// in the layers' format ([`Uploader::matrix_as`]).
    async fn matrix(
        &mut self,
        label: &str,
        roles: &[TensorRole],
        row_len: usize,
    ) -> Result<Weights> {
        self.matrix_as(label, roles, row_len, self.format).await
    }

    /// One weight matrix of rows `row_len` values long made of the rows of `roles`, in order,
    /// stored in `format`. A matrix larger than one binding is held in row blocks
    /// ([`Device::create_weights`]); the writer carries each tensor's values across their
    /// boundaries, and for the block formats a partial quantization block from one piece to
    /// the next (a block never spans two rows, so neither two tensors nor two row blocks).
    async fn matrix_as(
        &mut self,
        label: &str,
        roles: &[TensorRole],
        row_len: usize,
        format: WeightFormat,
    ) -> Result<Weights> {
        let mut values = 0;
        for &role in roles {
            values = self
                .len(role)?
                .checked_add(values)
                .ok_or_else(|| ModelError::invalid(format!("the weights of {label} overflow")))?;
        }
        if row_len == 0 || values % row_len != 0 {
            return Err(ModelError::invalid(format!(
                "the weights of {label} ({values} values) are not rows of {row_len}"
            )));
        }
        let weights = self
            .device
            .create_weights(label, values / row_len, row_len, format)?;
        let mut writer = WeightWriter::new(self.device, &[(&weights, values)])?;
        for &role in roles {
            let mut pieces = self.reader.piece(role)?;
            loop {
                let source = self.reader.source();
                let start = pieces.done();
                let Some(piece) = pieces.next(source, &mut self.chunk)? else {
                    break;
                };
                if holds_halves(format) {
                    check_half_range(&source.name(role), start, piece)?;
                }
                writer.push(piece)?;
                let n = piece.len() as f64;
                self.since_wait += writer.take_queued();
                self.advance((n * format.bytes_per_value()) as u64);
                if self.since_wait >= WAIT_EVERY {
                    self.wait().await?;
                }
            }
            self.reader.finish(pieces);
        }
        writer.finish()?;
        Ok(weights)
    }

    /// A small f32 vector (norm weights, decays, angles).
    fn vector(&mut self, label: &str, role: TensorRole) -> Result<GpuBuffer> {
        let values = self.reader.read(role)?;
        self.advance(values.len() as u64 * 4);
        Ok(self.device.upload_f32(label, &values)?)
    }

    /// Small f32 vectors concatenated in one buffer, or `None` when the model has none of
    /// them (q|k|v biases, q and k norms).
    fn optional_vectors(&mut self, label: &str, roles: &[TensorRole]) -> Result<Option<GpuBuffer>> {
        if roles.iter().all(|&r| self.reader.source().len(r).is_none()) {
            return Ok(None);
        }
        let mut values = Vec::new();
        for &role in roles {
            values.extend(self.reader.read(role)?);
        }
        self.advance(values.len() as u64 * 4);
        Ok(Some(self.device.upload_f32(label, &values)?))
    }

    fn optional_vector(&mut self, label: &str, role: TensorRole) -> Result<Option<GpuBuffer>> {
        match self.reader.source().len(role) {
            Some(_) => self.vector(label, role).map(Some),
            None => Ok(None),
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        (self.progress)(self.done, self.total);
    }

    async fn wait(&mut self) -> Result<()> {
        self.since_wait = 0;
        match self.pacing {
            Pacing::Wait => self.device.uploads_done().await?,
            Pacing::Submit => {
                self.device.wgpu_queue().submit([]);
            }
        }
        Ok(())
    }
}

/// Refuses a weight that f16 cannot hold (it would become infinite on the GPU), naming the
/// tensor; f32 weights hold it.
fn check_half_range(name: &str, start: usize, values: &[f32]) -> Result<()> {
    const F16_MAX: f32 = 65504.0;
    match values.iter().position(|v| v.abs() > F16_MAX) {
        None => Ok(()),
        Some(i) => Err(ModelError::NonFinite(format!(
            "tensor `{name}` holds {} at element {}, beyond f16's range (±65504): load it with \
             f32 weights",
            values.get(i).copied().unwrap_or(f32::NAN),
            start + i
        ))),
    }
}

/// Whether a matrix in `format` holds f16 values (f16 itself, or q4's block parameters).
fn holds_halves(format: WeightFormat) -> bool {
    matches!(
        format,
        WeightFormat::F16 | WeightFormat::F16Packed | WeightFormat::Q4
    )
}

/// Bytes the model's weights take on the GPU: the layers' matrices in `format`, the embeddings
/// and the head in `outer`, the vectors in f32 (as counted by [`Uploader::advance`]).
fn total_bytes(
    config: &ModelConfig,
    source: &dyn WeightSource,
    format: WeightFormat,
    outer: WeightFormat,
) -> u64 {
    TensorRole::all(config.num_layers)
        .filter_map(|role| {
            let len = source.len(role)? as f64;
            Some(match role {
                TensorRole::Embed | TensorRole::Head => (len * outer.bytes_per_value()) as u64,
                _ if is_matrix(role) => (len * format.bytes_per_value()) as u64,
                _ => len as u64 * 4,
            })
        })
        .sum()
}

fn is_matrix(role: TensorRole) -> bool {
    match role {
        TensorRole::Embed | TensorRole::Head => true,
        TensorRole::Layer(_, t) => !matches!(
            t,
            LayerTensor::RetentionNorm
                | LayerTensor::HeadNorm
                | LayerTensor::FfnNorm
                | LayerTensor::AttnQBias
                | LayerTensor::AttnKBias
                | LayerTensor::AttnVBias
                | LayerTensor::AttnQNorm
                | LayerTensor::AttnKNorm
        ),
        _ => false,
    }
}

/// The storage formats for `options` on `device`: the layers' matrices', and the embeddings'
/// and head's (f16 under int8 and q4, see [`crate::quant`]).
fn matrix_formats(device: &Device, options: GpuOptions) -> Result<(WeightFormat, WeightFormat)> {
    if options.weights != WeightPrecision::F32 && !device.supports_half_weights() {
        return Err(retnet_runtime::RuntimeError::NoHalfPrecision.into());
    }
    let half = WeightFormat::half_for(device.features());
    Ok(match options.weights {
        WeightPrecision::F32 => (WeightFormat::F32, WeightFormat::F32),
        WeightPrecision::F16 => (half, half),
        WeightPrecision::Int8 => (WeightFormat::Int8, half),
        WeightPrecision::Q4 => (WeightFormat::Q4, half),
    })
}

/// Streams every tensor of `source` to `device` and assembles the model.
pub(crate) async fn upload(
    device: Arc<Device>,
    config: ModelConfig,
    source: &dyn WeightSource,
    options: GpuOptions,
    pacing: Pacing,
    progress: LoadProgress<'_>,
) -> Result<Parts> {
    config.check()?;
    for a in &config.attention {
        // The prefill kernel keeps a query's accumulators in registers.
        if a.head_dim as u32 > attention::PREFILL_MAX_HEAD_DIM || a.head_dim % 2 != 0 {
            return Err(ModelError::unsupported(
                "attn",
                format!(
                    "attention head dim {} on the GPU (it runs even head dims up to {}): use \
                     the CPU backend",
                    a.head_dim,
                    attention::PREFILL_MAX_HEAD_DIM
                ),
            ));
        }
    }
    // The kernels take sizes as u32.
    let c = &config;
    for (what, n) in [
        ("vocab size", c.vocab_size),
        ("model width", c.d_model),
        ("FFN width", c.ffn_dim),
        ("query width (heads × key dim)", c.query_width()),
        ("value width (heads × value dim)", c.value_width()),
    ] {
        if u32::try_from(n).is_err() {
            return Err(ModelError::invalid(format!(
                "{what} {n} is over the GPU kernels' u32 sizes"
            )));
        }
    }
    let (format, outer_format) = matrix_formats(&device, options)?;
    let total = total_bytes(&config, source, format, outer_format);
    let mut up = Uploader {
        device: &device,
        config: &config,
        reader: WeightReader::new(source),
        format,
        chunk: vec![0.0; READ_CHUNK],
        pacing,
        since_wait: 0,
        done: 0,
        total,
        progress,
    };
    let d = config.d_model;
    let embed = up
        .matrix_as("embed_tokens", &[TensorRole::Embed], d, outer_format)
        .await?;
    let embed_norm = up.optional_vector("embed_norm", TensorRole::EmbedNorm)?;
    let mut layers = Vec::with_capacity(config.num_layers);
    for i in 0..up.config.num_layers {
        let role = |t| TensorRole::Layer(i, t);
        use LayerTensor as T;
        let kind = up.config.layer_kind(i);
        let retention_norm = up.vector("retention_norm", role(T::RetentionNorm))?;
        let (qkvg, out_proj, head_norm, attention) = match kind {
            LayerKind::Retention => (
                up.matrix(
                    "q|k|v|g",
                    &[role(T::Q), role(T::K), role(T::V), role(T::G)],
                    d,
                )
                .await?,
                up.matrix("out_proj", &[role(T::Out)], config.value_width())
                    .await?,
                up.optional_vector("head_norm", role(T::HeadNorm))?,
                None,
            ),
            LayerKind::Attention(a) => {
                let qkv = up
                    .matrix("attn q|k|v", &[role(T::Q), role(T::K), role(T::V)], d)
                    .await?;
                let o_proj = up
                    .matrix("attn o_proj", &[role(T::Out)], a.query_width())
                    .await?;
                let bias = up.optional_vectors(
                    "attn q|k|v bias",
                    &[role(T::AttnQBias), role(T::AttnKBias), role(T::AttnVBias)],
                )?;
                let qk_norm = up
                    .optional_vectors("attn q|k norm", &[role(T::AttnQNorm), role(T::AttnKNorm)])?;
                let theta = crate::weights::attention_rotary(a.rope_theta, a.head_dim);
                let workgroup_memory = device.limits().max_compute_workgroup_storage_size;
                let tensor_cores = device.coop_shape().filter(|&s| {
                    s.tile == CoopTile::Eight
                        && attention::prefill_coop_workgroup_bytes(s, a.head_dim as u32)
                            <= workgroup_memory
                });
                let attention = GpuAttention {
                    config: a.clone(),
                    bias,
                    qk_norm,
                    rotary_theta: device.upload_f32("attn rotary_theta", &theta)?,
                    tensor_cores,
                };
                (qkv, o_proj, None, Some(attention))
            }
        };
        layers.push(GpuLayer {
            retention_norm,
            qkvg,
            out_proj,
            head_norm,
            ffn_norm: up.vector("ffn_norm", role(T::FfnNorm))?,
            ffn_in: up
                .matrix("ffn act|lin", &[role(T::FfnAct), role(T::FfnLin)], d)
                .await?,
            ffn_down: up
                .matrix("ffn_down", &[role(T::FfnDown)], config.ffn_dim)
                .await?,
            attention,
        });
    }
    let final_norm = up.optional_vector("final_norm", TensorRole::FinalNorm)?;
    let head = match source.len(TensorRole::Head) {
        Some(_) => Some(
            up.matrix_as("head", &[TensorRole::Head], d, outer_format)
                .await?,
        ),
        None => None,
    };
    let log_decay = up.vector("log_decay", TensorRole::LogDecay)?;
    let rotary_theta = up.vector("rotary_theta", TensorRole::RotaryTheta)?;
    up.wait().await?;
    let fingerprint = up.reader.fingerprint();

    // The largest chunk up to `max` whose workgroup memory fits the adapter (WebGPU
    // guarantees only 16 KiB: 39-token chunks for the chunkwise kernel).
    let workgroup_memory = device.limits().max_compute_workgroup_storage_size;
    let largest_chunk = |max: u32, bytes: fn(u32) -> u32| {
        (1..=max)
            .rev()
            .find(|&c| bytes(c) <= workgroup_memory)
            .unwrap_or(1) as usize
    };
    let max_chunk = largest_chunk(MAX_GPU_CHUNK, retention::chunkwise_workgroup_bytes);
    let max_parallel_chunk = largest_chunk(
        retention::CHUNK_OUTPUTS_MAX_CHUNK,
        retention::chunk_outputs_workgroup_bytes,
    );
    // Chunk-parallel retention on 8×8 tensor cores, in chunks of 32 where the portable kernels
    // would take up to 64. The 16×16 variants are exact on the H200 but 9× slower than the
    // portable kernels there (chunk-outputs 350 against 38 ms per 2048-row span,
    // docs/perf-notes.md, stop 26), so they stay off.
    let coop_chunk = retention::CHUNK_OUTPUTS_COOP_MAX_CHUNK;
    let retention_tensor_cores = device.coop_shape().filter(|&s| {
        s.tile == CoopTile::Eight
            && retention::chunk_outputs_coop_workgroup_bytes(s, coop_chunk) <= workgroup_memory
            && retention::chunk_updates_coop_workgroup_bytes(s, coop_chunk) <= workgroup_memory
    });
    let max_parallel_chunk = match retention_tensor_cores {
        Some(_) => max_parallel_chunk.min(coop_chunk as usize),
        None => max_parallel_chunk,
    };
    Ok(Parts {
        embed,
        embed_norm,
        layers,
        final_norm,
        head,
        log_decay,
        rotary_theta,
        reduction: Reduction::for_features(device.features()),
        // Projections of many rows on the tensor cores with either tile: the direct GEMM
        // (operands from storage, `CoopOperands::Direct`) is exact on NVIDIA's 16×16 tiles,
        // where the staged one is not (docs/perf-notes.md). f16 matrices are read as they are,
        // int8 and q4 ones through an f16 copy made before each product; f32 weights stay off
        // the tensor cores (they would lose their precision).
        retention_tensor_cores,
        tensor_cores: device.coop_shape().filter(|_| {
            matches!(
                format,
                WeightFormat::F16 | WeightFormat::Int8 | WeightFormat::Q4
            )
        }),
        max_chunk,
        max_parallel_chunk,
        loop_limited: device.adapter_info().device_type == wgpu::DeviceType::Cpu,
        fingerprint,
        config,
        device,
    })
}
