//! The recorder: the whole model over a span of tokens as kernel dispatches in one
//! [`Sequence`], one method per stage (embeddings, the retention (or attention) and FFN
//! sub-layers of each layer, the output head).

use retnet_runtime::kernels::attention::{
    self, qkv_prep, AttentionParams, DecodeBuffers, KvAppendBuffers, KvAppendParams,
    PrefillBuffers, QkvPrepBuffers, QkvPrepParams,
};
use retnet_runtime::kernels::embedding::EmbeddingParams;
use retnet_runtime::kernels::gated_activation::{
    self, gated_activation, GatedActivationBuffers, GatedActivationParams,
};
use retnet_runtime::kernels::gemm_coop::{
    dequant_f16, dequant_f16_supports, direct_padded_rows, gemm_coop, gemm_coop_direct,
    gemm_coop_direct_edge_bytes, gemm_coop_direct_supports, gemm_coop_supports, to_f16,
    CoopOperands, DequantBuffers, GemmCoopDirectBuffers, ToF16Buffers,
};
use retnet_runtime::kernels::head_norm_gate::{
    head_norm_gate, head_norm_gate_unweighted, HeadGateBuffers, HeadNormGateBuffers,
    HeadNormGateParams,
};
use retnet_runtime::kernels::linear::{
    self, linear, matvec_batch_norm_gated_supports, matvec_head_gate_supports, matvec_supports,
    HeadGate, LinearBuffers, LinearHeadGateBuffers, LinearNormBuffers, LinearParams, Reduction,
    MATVEC_BATCH_MAX_ROWS,
};
use retnet_runtime::kernels::retention::{
    self, ChunkOutputsBuffers, ChunkScanBuffers, ChunkUpdatesBuffers, ParallelBuffers, QkRotary,
    RecurrentBatchedRotaryBuffers, RecurrentRotaryBuffers, RetentionBatchedParams,
    RetentionBuffers, RetentionParams, Strided,
};
use retnet_runtime::kernels::rms_norm::{rms_norm, RmsNormBuffers, RmsNormParams};
use retnet_runtime::kernels::rotary::{
    self, rotary, rotary_batched, RotaryBatchedBuffers, RotaryBatchedParams, RotaryBuffers,
    RotaryParams,
};
use retnet_runtime::kernels::WeightFormat;
use retnet_runtime::{GpuBuffer, Sequence, Weights};

use super::kv_cache::{keys_per_split, KvCache, KvCaches};
use super::{GpuAttention, GpuLayer, Parts, QkvgLayout};
use crate::config::{Activation, NormPlacement, OutputScale, RotaryStyle};
use crate::error::{ModelError, Result};
use crate::reference::RetentionForm;

/// Which logits a recorded span computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Logits {
    /// None: a prefill span before the last.
    None,
    /// The last row only (prefill before generation, decode).
    Last,
    /// Every row.
    All,
}

/// Activation buffers sized for up to `tokens` tokens per span.
pub(super) struct Scratch {
    pub(super) tokens: usize,
    /// Rows allocated (`tokens`).
    pub(super) rows: usize,
    /// Rows of logits allocated: 1, or `rows` once every row was asked for.
    pub(super) logit_rows: usize,
    pub(super) token_ids: GpuBuffer,
    pub(super) x: GpuBuffer,
    pub(super) h: GpuBuffer,
    pub(super) qkvg: GpuBuffer,
    pub(super) retained: GpuBuffer,
    pub(super) gated: GpuBuffer,
    pub(super) ffn_in: GpuBuffer,
    pub(super) ffn_mid: GpuBuffer,
    pub(super) logits: GpuBuffer,
    /// The state before each chunk, for chunk-parallel retention: made by the first chunkwise
    /// span ([`Scratch::prepare_chunk_states`]); `None` until then, for decode-only scratch, or
    /// where it would not fit one binding.
    pub(super) chunk_states: Option<GpuBuffer>,
    /// Chunks `chunk_states` holds.
    pub(super) chunk_capacity: usize,
    /// The f16 copy of a projection's input that the direct tensor-core GEMM reads
    /// ([`CoopOperands::Direct`]): `[padded rows, widest input]`. `None` where the model does
    /// not use tensor cores, for spans the batched matvec takes, or where it would exceed a
    /// binding (the portable matmul runs then).
    pub(super) x16: Option<GpuBuffer>,
    /// The direct GEMM's scratch for its edge blocks' tiles (`gemm_coop_direct_edge_bytes` of
    /// the widest output); present exactly when `x16` is.
    pub(super) coop_edge: Option<GpuBuffer>,
    /// The f16 copy of one int8 or q4 matrix (one row block) that the direct tensor-core GEMM
    /// reads in its place: `[rows, row_len]` of the largest block whose copy fits a binding.
    /// Present with `x16` when the layers' matrices are in a block format.
    pub(super) w16: Option<GpuBuffer>,
}

impl Scratch {
    /// Makes the chunk-state buffer of chunk-parallel retention for spans of up to `tokens`
    /// tokens, once: for a span of 2048 tokens in chunks of 64, 32 states (113 MB for
    /// retnet_xl). Where that exceeds a binding, the sequential chunkwise kernel (no extra
    /// memory) is used instead.
    pub(super) fn prepare_chunk_states(&mut self, model: &Parts) -> Result<()> {
        if self.chunk_states.is_some() || self.tokens <= 1 {
            return Ok(());
        }
        let c = &model.config;
        let state_len = c.retention_state_len();
        let chunks = self.tokens.div_ceil(model.max_parallel_chunk);
        let bytes = (chunks * state_len * 4) as u64;
        let limits = model.device.limits();
        if bytes <= limits.max_storage_buffer_binding_size && bytes <= limits.max_buffer_size {
            self.chunk_states = Some(model.device.create_storage("chunk states", bytes)?);
            self.chunk_capacity = chunks;
        }
        Ok(())
    }

    pub(super) fn bytes(&self) -> u64 {
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
            + self.x16.as_ref().map_or(0, GpuBuffer::size)
            + self.coop_edge.as_ref().map_or(0, GpuBuffer::size)
            + self.w16.as_ref().map_or(0, GpuBuffer::size)
    }

    pub(super) fn new(model: &Parts, tokens: usize, all_logits: bool) -> Result<Self> {
        let c = &model.config;
        let dev = &model.device;
        let rows = tokens;
        let logit_rows = if all_logits { rows } else { 1 };
        let f32s = |label: &str, width: usize| dev.create_storage_f32(label, rows * width);
        // The largest buffer one binding takes.
        let binding_limit = dev
            .limits()
            .max_storage_buffer_binding_size
            .min(dev.limits().max_buffer_size);
        let (x16, coop_edge) = match model.tensor_cores {
            Some(shape)
                if tokens > MATVEC_BATCH_MAX_ROWS as usize
                    && CoopOperands::for_tile(shape.tile) == CoopOperands::Direct =>
            {
                // The widest input of any projection: d_model (q|k|v|g, FFN in, head), the
                // mixer's output (out_proj) or the FFN width (down).
                let widest = c.d_model.max(model.widest_mixer_output()).max(c.ffn_dim);
                let rows32 = rows.min(u32::MAX as usize) as u32;
                let padded = direct_padded_rows(shape.tile, rows32);
                let bytes = (padded as u64) * (widest as u64) * 2;
                // The widest output: q|k|v|g, the FFN's act|lin, d_model, or the vocabulary.
                let widest_out = (model.widest_layout() as usize)
                    .max(2 * c.ffn_dim)
                    .max(c.d_model)
                    .max(c.vocab_size);
                let out32 = widest_out.min(u32::MAX as usize) as u32;
                let edge_bytes =
                    gemm_coop_direct_edge_bytes(shape.tile, &LinearParams::new(rows32, 1, out32));
                if bytes <= binding_limit && edge_bytes <= binding_limit {
                    (
                        Some(dev.create_storage("x f16", bytes.max(4))?),
                        Some(dev.create_storage("coop edge tiles", edge_bytes.max(4))?),
                    )
                } else {
                    (None, None)
                }
            }
            _ => (None, None),
        };
        // Block-format layers prefill on the tensor cores through an f16 copy of each matrix,
        // made just before its product (the matrices stay in their format in memory).
        // The largest block's copy, or as many whole rows as a binding holds (a block is then
        // converted and multiplied a row range at a time).
        let largest_block_copy = model
            .layers
            .iter()
            .flat_map(|l| [&l.qkvg, &l.out_proj, &l.ffn_in, &l.ffn_down])
            .filter(|w| matches!(w.format, WeightFormat::Int8 | WeightFormat::Q4))
            .flat_map(|w| w.blocks().map(|b| b.rows as u64 * w.row_len() as u64 * 2))
            .max();
        let w16 = match (&x16, largest_block_copy) {
            (Some(_), Some(bytes)) => {
                Some(dev.create_storage("w f16", bytes.min(binding_limit).max(4))?)
            }
            _ => None,
        };
        Ok(Self {
            tokens,
            rows,
            logit_rows,
            chunk_states: None,
            chunk_capacity: 0,
            x16,
            coop_edge,
            w16,
            token_ids: dev.create_storage("token_ids", (tokens * 4) as u64)?,
            x: f32s("x", c.d_model)?,
            h: f32s("h", c.d_model)?,
            qkvg: f32s("q|k|v|g", model.widest_layout() as usize)?,
            retained: f32s("retained", c.value_width())?,
            gated: f32s("gated", model.widest_mixer_output())?,
            ffn_in: f32s("ffn act|lin", 2 * c.ffn_dim)?,
            ffn_mid: f32s("ffn mid", c.ffn_dim)?,
            logits: dev.create_storage_f32("logits", logit_rows * c.vocab_size)?,
        })
    }
}

/// Where the rows of one recorded forward pass come from.
pub(super) enum Rows<'a> {
    /// Consecutive tokens of one sequence from `position`, with its per-layer states and its
    /// attention layers' caches (with room for the span: [`KvCaches::reserve`]).
    Sequence {
        position: u32,
        states: &'a [GpuBuffer],
        caches: &'a KvCaches,
        form: RetentionForm,
    },
    /// One token of each of several sequences: row b is at `positions[b]` and owns state slot
    /// `slots[b]` of each layer's pool (batched decode). The attention layers run row by row
    /// against each sequence's own caches: row b's are `caches[host_slots[b]]`, at
    /// `host_positions[b]`.
    Batch {
        positions: &'a GpuBuffer,
        slots: &'a GpuBuffer,
        pools: &'a [GpuBuffer],
        caches: &'a [Option<KvCaches>],
        host_positions: &'a [u32],
        host_slots: &'a [u32],
    },
}

/// Records the whole model over `t` tokens whose ids are in `token_ids` (on the GPU) into `seq`.
#[allow(clippy::too_many_arguments)]
pub(super) fn record_forward(
    model: &Parts,
    scratch: &Scratch,
    seq: &mut Sequence<'_>,
    token_ids: &GpuBuffer,
    t: usize,
    rows: Rows<'_>,
    logits: Logits,
) -> Result<()> {
    let recorder = Recorder {
        model,
        s: scratch,
        t,
        rows,
        // Decode rows (one, or a batch the matvecs take) with subgroups: a pre-norm's RMSNorm
        // is fused into the projection after it.
        fuse_norms: t <= linear::MATVEC_BATCH_MAX_ROWS as usize
            && model.reduction == Reduction::Subgroup
            && model.config.d_model % 4 == 0,
    };
    recorder.embeddings(seq, token_ids)?;
    for (index, layer) in model.layers.iter().enumerate() {
        recorder.retention_sublayer(seq, layer, index)?;
        recorder.ffn_sublayer(seq, layer)?;
    }
    recorder.head(seq, logits)
}

/// What every stage of one recorded span shares.
struct Recorder<'a> {
    model: &'a Parts,
    s: &'a Scratch,
    /// Rows (tokens) in the span.
    t: usize,
    rows: Rows<'a>,
    /// Whether a pre-norm's RMSNorm runs inside the projection after it.
    fuse_norms: bool,
}

impl Recorder<'_> {
    fn t32(&self) -> u32 {
        self.t as u32
    }

    fn norm(&self) -> RmsNormParams {
        let c = &self.model.config;
        RmsNormParams {
            rows: self.t32(),
            dim: c.d_model as u32,
            eps: c.norm_eps,
        }
    }

    /// `output = rms_norm(input; g)` over the span's rows.
    fn rms_norm(
        &self,
        seq: &mut Sequence<'_>,
        input: &GpuBuffer,
        g: &GpuBuffer,
        output: &GpuBuffer,
    ) -> Result<()> {
        let buffers = RmsNormBuffers {
            input,
            norm_weight: g,
            output,
        };
        seq.dispatch(rms_norm(self.norm(), buffers))?;
        Ok(())
    }

    /// `output (+)= input · Wᵀ` over the span's rows.
    fn proj(
        &self,
        seq: &mut Sequence<'_>,
        w: &Weights,
        input: &GpuBuffer,
        output: &GpuBuffer,
        (in_dim, out_dim): (usize, usize),
        accumulate: Option<f32>,
    ) -> Result<()> {
        let mut params = LinearParams::new(self.t32(), in_dim as u32, out_dim as u32);
        params.accumulate = accumulate;
        project(self.model, self.s, seq, w, input, output, params)
    }

    /// `output = rms_norm(x; g) · Wᵀ`: fused for decode rows, else the norm into h, then `w`.
    fn normed_proj(
        &self,
        seq: &mut Sequence<'_>,
        g: &GpuBuffer,
        w: &Weights,
        output: &GpuBuffer,
        mut params: LinearParams,
    ) -> Result<()> {
        let s = self.s;
        if self.fuse_norms {
            params.norm_eps = self.model.config.norm_eps;
            // One dispatch per row block of W (one unless W is over a binding).
            for (block, part) in w.linear_parts(params) {
                let buffers = LinearNormBuffers {
                    weight: block,
                    input: &s.x,
                    output,
                    norm_weight: g,
                };
                seq.dispatch(linear::matvec_norm(w.format, part, buffers))?;
            }
            Ok(())
        } else {
            self.rms_norm(seq, &s.x, g, &s.h)?;
            project(self.model, s, seq, w, &s.h, output, params)
        }
    }

    /// Embeddings (scaled) into x, through the optional embedding norm.
    fn embeddings(&self, seq: &mut Sequence<'_>, token_ids: &GpuBuffer) -> Result<()> {
        let (m, s) = (self.model, self.s);
        let c = &m.config;
        let params = EmbeddingParams {
            tokens: self.t32(),
            dim: c.d_model as u32,
            scale: c.embed_scale,
        };
        let out = if m.embed_norm.is_some() { &s.h } else { &s.x };
        // One dispatch per row block of the table (one unless it is over a binding).
        for part in m.embed.gather_parts(params, token_ids, out) {
            seq.dispatch(part)?;
        }
        if let Some(g) = &m.embed_norm {
            self.rms_norm(seq, &s.h, g, &s.x)?;
        }
        Ok(())
    }

    /// x ← x·α + out_proj(retention(norm(x))) (pre-norm), or its post-norm order; attention in
    /// place of retention in an attention layer.
    fn retention_sublayer(
        &self,
        seq: &mut Sequence<'_>,
        layer: &GpuLayer,
        index: usize,
    ) -> Result<()> {
        let (m, s) = (self.model, self.s);
        let c = &m.config;
        let layout = m.layout(layer);
        let width = layout.width;
        match c.norm_placement {
            NormPlacement::PreNorm => {
                let params = LinearParams::new(self.t32(), c.d_model as u32, width);
                self.normed_proj(seq, &layer.retention_norm, &layer.qkvg, &s.qkvg, params)?;
            }
            NormPlacement::PostNorm => {
                let dims = (c.d_model, width as usize);
                self.proj(seq, &layer.qkvg, &s.x, &s.qkvg, dims, None)?;
            }
        }
        let mixer_width = match &layer.attention {
            Some(attn) => {
                record_attention(s, seq, attn, index, &self.rows, layout, self.t)?;
                attn.config.query_width()
            }
            None => {
                let mut params =
                    LinearParams::new(self.t32(), c.value_width() as u32, c.d_model as u32);
                params.accumulate = Some(c.residual_alpha);
                let gate = HeadGate {
                    head_dim: c.head_v_dim as u32,
                    eps: c.head_norm_eps,
                    gate_offset: layout.g,
                    gate_stride: layout.width,
                    weighted: layer.head_norm.is_some(),
                };
                // One decode row: the head norm × gate runs inside out_proj, as it reads its
                // input (5 dispatches per layer instead of 6).
                let fuse_gate = matvec_head_gate_supports(&params, &gate);
                record_retention(
                    m, s, seq, layer, index, &self.rows, layout, self.t, !fuse_gate,
                )?;
                if fuse_gate {
                    return self.head_gated_out_proj(seq, layer, gate, params);
                }
                c.value_width()
            }
        };
        let dims = (mixer_width, c.d_model);
        self.proj(
            seq,
            &layer.out_proj,
            &s.gated,
            &s.x,
            dims,
            Some(c.residual_alpha),
        )
    }

    /// x ← α·x + (head_norm(retained) ⊙ silu(g))·W_oᵀ in one matvec per row block of W_o.
    fn head_gated_out_proj(
        &self,
        seq: &mut Sequence<'_>,
        layer: &GpuLayer,
        gate: HeadGate,
        params: LinearParams,
    ) -> Result<()> {
        let (m, s) = (self.model, self.s);
        let w = &layer.out_proj;
        for (block, part) in w.linear_parts(params) {
            let buffers = LinearHeadGateBuffers {
                weight: block,
                input: &s.retained,
                output: &s.x,
                // Not read without a weight: any buffer binds in its place.
                norm_weight: layer.head_norm.as_ref().unwrap_or(&m.log_decay),
                gate: &s.qkvg,
            };
            seq.dispatch(linear::matvec_head_gate(
                w.format,
                m.reduction,
                gate,
                part,
                buffers,
            ))?;
        }
        Ok(())
    }

    /// x ← x·α + down(act(x·W_act) · x·W_lin) on norm(x) (pre-norm), or its post-norm order.
    fn ffn_sublayer(&self, seq: &mut Sequence<'_>, layer: &GpuLayer) -> Result<()> {
        let (m, s) = (self.model, self.s);
        let c = &m.config;
        let f = c.ffn_dim as u32;
        let act = match c.ffn_activation {
            Activation::Swish => gated_activation::Activation::Silu,
            Activation::Gelu => gated_activation::Activation::Gelu,
        };
        // A batch (pre-norm): norm, act|lin and act(a)·b in one dispatch into ffn_mid, then
        // ffn_down (6 dispatches per layer instead of 7).
        let mut gated = LinearParams::new(self.t32(), c.d_model as u32, 2 * f);
        gated.norm_eps = c.norm_eps;
        if c.norm_placement == NormPlacement::PreNorm
            && self.fuse_norms
            && !layer.ffn_in.is_split()
            && matvec_batch_norm_gated_supports(&gated)
        {
            let buffers = LinearNormBuffers {
                weight: layer.ffn_in.buffer(),
                input: &s.x,
                output: &s.ffn_mid,
                norm_weight: &layer.ffn_norm,
            };
            seq.dispatch(linear::matvec_batch_norm_gated(
                layer.ffn_in.format,
                act,
                gated,
                buffers,
            ))?;
            let dims = (c.ffn_dim, c.d_model);
            return self.proj(
                seq,
                &layer.ffn_down,
                &s.ffn_mid,
                &s.x,
                dims,
                Some(c.residual_alpha),
            );
        }
        let ffn_out = match c.norm_placement {
            NormPlacement::PreNorm => {
                let params = LinearParams::new(self.t32(), c.d_model as u32, 2 * f);
                self.normed_proj(seq, &layer.ffn_norm, &layer.ffn_in, &s.ffn_in, params)?;
                &s.x
            }
            NormPlacement::PostNorm => {
                // x ← norm(α·x + MSR(x)), held in h while the FFN runs on it.
                self.rms_norm(seq, &s.x, &layer.retention_norm, &s.h)?;
                let dims = (c.d_model, 2 * c.ffn_dim);
                self.proj(seq, &layer.ffn_in, &s.h, &s.ffn_in, dims, None)?;
                &s.h
            }
        };
        let mut down = LinearParams::new(self.t32(), f, c.d_model as u32);
        down.accumulate = Some(c.residual_alpha);
        // Batch-1 decode: act(a)·b is computed inside ffn_down as it reads act|lin. Not for a
        // batch: every workgroup of the batched matvec would recompute all its rows'
        // activations, which measured slower than the separate kernel on the H200 (8 rows:
        // 1 172 µs against ~915 µs per step, docs/perf-notes.md).
        if self.t32() == 1 && matvec_supports(&down) {
            let w = &layer.ffn_down;
            for (block, part) in w.linear_parts(down) {
                let buffers = LinearBuffers {
                    weight: block,
                    input: &s.ffn_in,
                    output: ffn_out,
                };
                seq.dispatch(linear::matvec_act_lin(
                    w.format,
                    m.reduction,
                    act,
                    part,
                    buffers,
                ))?;
            }
        } else {
            self.gated_ffn_down(seq, layer, act, ffn_out)?;
        }
        if c.norm_placement == NormPlacement::PostNorm {
            self.rms_norm(seq, &s.h, &layer.ffn_norm, &s.x)?;
        }
        Ok(())
    }

    /// `gated_activation` into ffn_mid, then ffn_down (with the residual) into `ffn_out`.
    fn gated_ffn_down(
        &self,
        seq: &mut Sequence<'_>,
        layer: &GpuLayer,
        act: gated_activation::Activation,
        ffn_out: &GpuBuffer,
    ) -> Result<()> {
        let (m, s) = (self.model, self.s);
        let c = &m.config;
        let f = c.ffn_dim as u32;
        let params = GatedActivationParams {
            tokens: self.t32(),
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
        let buffers = GatedActivationBuffers {
            act_input: &s.ffn_in,
            linear_input: &s.ffn_in,
            output: &s.ffn_mid,
        };
        seq.dispatch(gated_activation(act, params, buffers))?;
        let dims = (c.ffn_dim, c.d_model);
        self.proj(
            seq,
            &layer.ffn_down,
            &s.ffn_mid,
            ffn_out,
            dims,
            Some(c.residual_alpha),
        )
    }

    /// The logits `logits` asks for, through the optional final norm.
    fn head(&self, seq: &mut Sequence<'_>, logits: Logits) -> Result<()> {
        let (m, s) = (self.model, self.s);
        let c = &m.config;
        let t32 = self.t32();
        let (rows, start) = match logits {
            Logits::None => return Ok(()),
            Logits::Last => (1, t32 - 1),
            Logits::All => (t32, 0),
        };
        let mut params = LinearParams::new(rows, c.d_model as u32, c.vocab_size as u32);
        params.x_row_start = start;
        match &m.final_norm {
            Some(g) if self.fuse_norms => self.normed_proj(seq, g, m.head(), &s.logits, params),
            Some(g) => {
                self.rms_norm(seq, &s.x, g, &s.h)?;
                project(m, s, seq, m.head(), &s.h, &s.logits, params)
            }
            None => project(m, s, seq, m.head(), &s.x, &s.logits, params),
        }
    }
}

/// Records `output = input · Wᵀ` (`params` says the shape and whether it accumulates): on the
/// tensor cores where the model uses them and there are more rows than the batched matvec takes,
/// else with the portable kernel [`linear`] picks.
fn project(
    model: &Parts,
    s: &Scratch,
    seq: &mut Sequence<'_>,
    w: &Weights,
    input: &GpuBuffer,
    output: &GpuBuffer,
    params: LinearParams,
) -> Result<()> {
    // One product per row block of W (one unless W is over a binding), each writing its
    // columns of the output.
    let quantized = matches!(w.format, WeightFormat::Int8 | WeightFormat::Q4);
    let coop = model.tensor_cores.filter(|_| {
        (w.format == WeightFormat::F16 || (quantized && s.w16.is_some()))
            && params.rows > MATVEC_BATCH_MAX_ROWS
    });
    // A block-format matrix is multiplied through its f16 copy in `w16`, a range of whole
    // tiles of rows at a time (`copy_rows`); every part must convert.
    let side = coop.map_or(1, |shape| shape.tile.side());
    // (At most 65 535 rows per conversion: one dispatch's grid.)
    let copy_rows = match &s.w16 {
        Some(w16) if quantized => {
            let rows = (w16.size() / (params.in_dim.max(1) as u64 * 2)).min(65_535) as u32;
            rows / side * side
        }
        _ => 0,
    };
    let w16_fits = |part: &LinearParams| {
        !quantized || (copy_rows > 0 && dequant_f16_supports(w.format, part.in_dim, part.out_dim))
    };
    let direct = match (coop, &s.x16, &s.coop_edge) {
        (Some(shape), Some(x16), Some(edge))
            if CoopOperands::for_tile(shape.tile) == CoopOperands::Direct
                && w.linear_parts(params).all(|(_, p)| {
                    gemm_coop_direct_supports(shape.tile, &p)
                        && gemm_coop_direct_edge_bytes(shape.tile, &p) <= edge.size()
                        && w16_fits(&p)
                })
                && direct_padded_rows(shape.tile, params.rows) as u64
                    * params.in_dim as u64
                    * 2
                    <= x16.size() =>
        {
            // X to f16 once, read by every part.
            let buffers = ToF16Buffers { input, output: x16 };
            seq.dispatch(to_f16(shape.tile, &params, buffers))?;
            Some((shape, x16, edge))
        }
        _ => None,
    };
    for (block, params) in w.linear_parts(params) {
        let bound = match (direct, coop) {
            (Some((shape, x16, edge)), _) if quantized => {
                let w16 = s
                    .w16
                    .as_ref()
                    .ok_or_else(|| ModelError::invalid("an f16 copy buffer"))?;
                // Rows first .. first + n of this block: converted, then multiplied into their
                // columns of Y (the same dot products as the whole block's).
                let mut first = 0;
                while first < params.out_dim {
                    let n = copy_rows.min(params.out_dim - first);
                    let buffers = DequantBuffers {
                        weight: block,
                        output: w16,
                    };
                    let convert = dequant_f16(w.format, params.in_dim, first, n, buffers)
                        .ok_or_else(|| ModelError::invalid("a block-format matrix"))?;
                    seq.dispatch(convert)?;
                    let buffers = GemmCoopDirectBuffers {
                        weight: w16,
                        input: x16,
                        output,
                        edge,
                    };
                    seq.dispatch(gemm_coop_direct(shape, params.row_block(first, n), buffers))?;
                    first += n;
                }
                continue;
            }
            (Some((shape, x16, edge)), _) => {
                let buffers = GemmCoopDirectBuffers {
                    weight: block,
                    input: x16,
                    output,
                    edge,
                };
                gemm_coop_direct(shape, params, buffers)
            }
            (None, Some(shape))
                if CoopOperands::for_tile(shape.tile) == CoopOperands::Staged
                    && w.format == WeightFormat::F16
                    && gemm_coop_supports(shape.tile, &params) =>
            {
                let buffers = LinearBuffers {
                    weight: block,
                    input,
                    output,
                };
                gemm_coop(shape, params, buffers)
            }
            _ => {
                let buffers = LinearBuffers {
                    weight: block,
                    input,
                    output,
                };
                linear(w.format, model.reduction, params, buffers)
            }
        };
        seq.dispatch(bound)?;
    }
    Ok(())
}

/// Rotary on q and k (inside the recurrent kernels), retention, then the per-head norm times the
/// output gate unless out_proj applies it (`head_norm_gate_dispatch` false), for layer `index`.
#[allow(clippy::too_many_arguments)]
fn record_retention(
    model: &Parts,
    s: &Scratch,
    seq: &mut Sequence<'_>,
    layer: &GpuLayer,
    index: usize,
    rows: &Rows<'_>,
    layout: QkvgLayout,
    t: usize,
    head_norm_gate_dispatch: bool,
) -> Result<()> {
    let c = &model.config;
    let (t32, kd, vd) = (t as u32, c.head_k_dim as u32, c.head_v_dim as u32);
    let style = match c.rotary {
        RotaryStyle::InterleavedPairs => rotary::RotaryStyle::Interleaved,
        RotaryStyle::SplitHalves => rotary::RotaryStyle::Halves,
    };
    let q_scale = (c.head_k_dim as f64).powf(-0.5) as f32;
    // The recurrent kernels (decode, single and batched) rotate q and k as they read them; the
    // other forms read them rotated by the rotary kernel.
    let fused_rotary = match rows {
        Rows::Sequence { form, .. } => *form == RetentionForm::Recurrent,
        Rows::Batch { .. } => true,
    };
    let qk_rotary = QkRotary { style, q_scale };
    if !fused_rotary {
        for (heads, col_offset, scale) in
            [(c.num_heads, 0, q_scale), (c.num_kv_heads, layout.k, 1.0)]
        {
            let heads = RotaryHeads {
                heads: heads as u32,
                head_dim: kd,
                col_offset,
                scale,
            };
            record_rotary(seq, rows, style, &model.rotary_theta, s, layout, t32, heads)?;
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
            ..
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
            let stateful = RetentionBuffers {
                q: qkv,
                k: qkv,
                v: qkv,
                log_decay: &model.log_decay,
                state,
                output: &s.retained,
            };
            match form {
                RetentionForm::Parallel => {
                    let buffers = ParallelBuffers {
                        q: qkv,
                        k: qkv,
                        v: qkv,
                        log_decay: &model.log_decay,
                        output: &s.retained,
                    };
                    seq.dispatch(retention::parallel(params, buffers))?
                }
                RetentionForm::Recurrent => {
                    let buffers = RecurrentRotaryBuffers {
                        log_decay: &model.log_decay,
                        state,
                        output: &s.retained,
                        qkv,
                        theta: &model.rotary_theta,
                    };
                    seq.dispatch(retention::recurrent_rotary(params, qk_rotary, buffers))?
                }
                RetentionForm::Chunkwise { chunk_size } => {
                    let chunk = (*chunk_size).min(model.max_chunk);
                    let parallel_chunk = (*chunk_size).min(model.max_parallel_chunk);
                    match &s.chunk_states {
                        // Chunk-parallel: each chunk's update of the state, the state before
                        // each chunk, then every chunk's outputs at once.
                        Some(states) if t.div_ceil(parallel_chunk) <= s.chunk_capacity => {
                            let chunk = parallel_chunk as u32;
                            let updates = ChunkUpdatesBuffers {
                                k: qkv,
                                v: qkv,
                                log_decay: &model.log_decay,
                                chunk_states: states,
                            };
                            let coop = model.retention_tensor_cores;
                            seq.dispatch(match coop {
                                Some(shape) => {
                                    retention::chunk_updates_coop(shape, params, chunk, updates)
                                }
                                None => retention::chunk_updates(params, chunk, updates),
                            })?;
                            let scan = ChunkScanBuffers {
                                log_decay: &model.log_decay,
                                state,
                                chunk_states: states,
                            };
                            seq.dispatch(retention::chunk_scan(params, chunk, scan))?;
                            let outputs = ChunkOutputsBuffers {
                                q: qkv,
                                k: qkv,
                                v: qkv,
                                log_decay: &model.log_decay,
                                chunk_states: states,
                                output: &s.retained,
                            };
                            seq.dispatch(match coop {
                                Some(shape) => {
                                    retention::chunk_outputs_coop(shape, params, chunk, outputs)
                                }
                                None => retention::chunk_outputs(params, chunk, outputs),
                            })?;
                        }
                        // One workgroup per head and column slice walks the chunks in order.
                        _ => seq.dispatch(retention::chunkwise(params, chunk as u32, stateful))?,
                    }
                }
            }
        }
        Rows::Batch {
            positions,
            slots,
            pools,
            ..
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
            let buffers = RecurrentBatchedRotaryBuffers {
                log_decay: &model.log_decay,
                positions,
                slots,
                state: pool,
                output: &s.retained,
                qkv,
                theta: &model.rotary_theta,
            };
            seq.dispatch(retention::recurrent_batched_rotary(
                params, qk_rotary, buffers,
            ))?;
        }
    }
    if !head_norm_gate_dispatch {
        return Ok(());
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
        Some(w) => {
            let buffers = HeadNormGateBuffers {
                input: &s.retained,
                gate: qkv,
                norm_weight: w,
                output: &s.gated,
            };
            seq.dispatch(head_norm_gate(params, buffers))?
        }
        None => {
            let buffers = HeadGateBuffers {
                input: &s.retained,
                gate: qkv,
                output: &s.gated,
            };
            seq.dispatch(head_norm_gate_unweighted(params, buffers))?
        }
    }
    Ok(())
}

/// An attention layer's mixer (hybrid checkpoints), layer `index`: the q/k/v biases and q/k
/// norms, rotary on q and k, this span's keys and values into the cache, then softmax
/// attention of the span's queries into `gated` (the o_proj's input).
#[allow(clippy::too_many_arguments)]
fn record_attention(
    s: &Scratch,
    seq: &mut Sequence<'_>,
    attn: &GpuAttention,
    index: usize,
    rows: &Rows<'_>,
    layout: QkvgLayout,
    t: usize,
) -> Result<()> {
    let a = &attn.config;
    let (t32, dim) = (t as u32, a.head_dim as u32);
    let (heads, kv_heads) = (a.num_heads as u32, a.num_kv_heads as u32);
    if attn.bias.is_some() || attn.qk_norm.is_some() {
        let params = QkvPrepParams {
            rows: t32,
            row_stride: layout.width,
            heads,
            kv_heads,
            head_dim: dim,
            bias: attn.bias.is_some(),
            norm_eps: attn.qk_norm.as_ref().map(|_| crate::weights::QK_NORM_EPS),
        };
        // An absent bias or norm is not read: any buffer binds in its place.
        let buffers = QkvPrepBuffers {
            x: &s.qkvg,
            bias: attn.bias.as_ref().unwrap_or(&attn.rotary_theta),
            norm: attn.qk_norm.as_ref().unwrap_or(&attn.rotary_theta),
        };
        seq.dispatch(qkv_prep(params, buffers))?;
    }
    // fla's attention rotates the two halves of each head (NeoX style); the score scale is
    // applied by the attention kernel.
    let style = rotary::RotaryStyle::Halves;
    for (heads, col_offset) in [(heads, 0), (kv_heads, layout.k)] {
        let heads = RotaryHeads {
            heads,
            head_dim: dim,
            col_offset,
            scale: 1.0,
        };
        record_rotary(seq, rows, style, &attn.rotary_theta, s, layout, t32, heads)?;
    }
    // Queries of `queries` rows from row `row` at `position`, against `cache`.
    let attend = |seq: &mut Sequence<'_>,
                  cache: &KvCache,
                  row: u32,
                  queries: u32,
                  position: u32|
     -> Result<()> {
        let width = layout.width;
        let shape_error = |e: attention::AttentionShapeError| ModelError::invalid(e.to_string());
        let append = KvAppendParams {
            tokens: queries,
            kv_width: a.kv_width() as u32,
            start_pos: position,
            ring: cache.ring as u32,
            k_stride: width,
            k_offset: row * width + layout.k,
            v_stride: width,
            v_offset: row * width + layout.v,
        };
        let buffers = KvAppendBuffers {
            src: &s.qkvg,
            cache: &cache.cache,
        };
        seq.dispatch(attention::kv_append(append, buffers))?;
        let q_width = a.query_width() as u32;
        let params = AttentionParams {
            queries,
            heads,
            kv_heads,
            head_dim: dim,
            start_pos: position,
            window: a.window.map(|w| w as u32),
            ring: cache.ring as u32,
            scale: (a.head_dim as f64).powf(-0.5) as f32,
            q_stride: width,
            q_offset: row * width,
            out_stride: q_width,
            out_offset: row * q_width,
        };
        if queries == 1 {
            let buffers = DecodeBuffers {
                q: &s.qkvg,
                cache: &cache.cache,
                partial: &cache.partial,
                out: &s.gated,
            };
            // The keys this query sees: all so far, or its window.
            let end = position as usize + 1;
            let visible = a.window.map_or(end, |w| end.min(w));
            let split = keys_per_split(visible);
            let [split, merge] = attention::decode(params, split, buffers).map_err(shape_error)?;
            seq.dispatch(split)?;
            seq.dispatch(merge)?;
        } else {
            let buffers = PrefillBuffers {
                q: &s.qkvg,
                cache: &cache.cache,
                out: &s.gated,
            };
            let bound = match attn.tensor_cores {
                Some(shape) => attention::prefill_coop(shape, params, buffers),
                None => attention::prefill(params, buffers),
            };
            seq.dispatch(bound.map_err(shape_error)?)?;
        }
        Ok(())
    };
    match rows {
        Rows::Sequence {
            position, caches, ..
        } => attend(seq, layer_cache(caches, index)?, 0, t32, *position),
        Rows::Batch {
            caches,
            host_positions,
            host_slots,
            ..
        } => {
            for (row, (&slot, &position)) in
                host_slots.iter().zip(host_positions.iter()).enumerate()
            {
                let caches = caches
                    .get(slot as usize)
                    .and_then(Option::as_ref)
                    .ok_or_else(|| ModelError::invalid(format!("batch slot {slot} is empty")))?;
                attend(seq, layer_cache(caches, index)?, row as u32, 1, position)?;
            }
            Ok(())
        }
    }
}

fn layer_cache(caches: &KvCaches, index: usize) -> Result<&KvCache> {
    caches
        .layers
        .get(index)
        .and_then(Option::as_ref)
        .ok_or_else(|| ModelError::invalid(format!("no key/value cache for layer {index}")))
}

/// The heads of q or k that one rotary dispatch rotates: `heads` of `head_dim` from column
/// `col_offset` of the fused projection's rows, scaled by `scale`.
struct RotaryHeads {
    heads: u32,
    head_dim: u32,
    col_offset: u32,
    scale: f32,
}

/// Rotary on `heads` of the span's q|k|v(|g) rows in `s.qkvg`: at consecutive positions for a
/// sequence, at each row's own position for a batch.
#[allow(clippy::too_many_arguments)]
fn record_rotary(
    seq: &mut Sequence<'_>,
    rows: &Rows<'_>,
    style: rotary::RotaryStyle,
    theta: &GpuBuffer,
    s: &Scratch,
    layout: QkvgLayout,
    t32: u32,
    heads: RotaryHeads,
) -> Result<()> {
    match rows {
        Rows::Sequence { position, .. } => {
            let params = RotaryParams {
                tokens: t32,
                heads: heads.heads,
                head_dim: heads.head_dim,
                start_pos: *position,
                row_stride: layout.width,
                col_offset: heads.col_offset,
                scale: heads.scale,
            };
            let buffers = RotaryBuffers { theta, x: &s.qkvg };
            seq.dispatch(rotary(style, params, buffers))?;
        }
        Rows::Batch { positions, .. } => {
            let params = RotaryBatchedParams {
                rows: t32,
                heads: heads.heads,
                head_dim: heads.head_dim,
                row_stride: layout.width,
                col_offset: heads.col_offset,
                scale: heads.scale,
            };
            let buffers = RotaryBatchedBuffers {
                theta,
                x: &s.qkvg,
                positions,
            };
            seq.dispatch(rotary_batched(style, params, buffers))?;
        }
    }
    Ok(())
}
