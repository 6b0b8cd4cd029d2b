//! Causal softmax attention against a key/value cache, for the attention layers of hybrid
//! checkpoints (fla's `attn`): a tiled prefill with online softmax (no T×T buffer), a split
//! decode for long caches (partial softmax per span of keys, then a merge), and the cache
//! append. Full attention and sliding windows, grouped key/value heads. See
//! `shaders/attention_common.wgsl` for the cache layout and the visible keys of each query.
//!
//! Before them, [`qkv_prep`] adds the q/k/v biases and norms the query and key heads.
//!
//! The prefill also runs on cooperative matrices (tensor cores) where the device has them:
//! [`prefill_coop`], one body for 8×8 and 16×16 tiles, with f16 hi/lo split operands so that it
//! is as accurate as the f32 kernel. The decode and the append are portable only.

use crate::gemm_coop::{CoopShape, CoopTile};
use crate::{
    ceil_div, Binding, Bound, Dim, Dispatch, Features, Kernel, OverrideConstant, ParamWords,
};

/// The largest head dim of [`prefill`] (its per-query accumulators live in registers).
pub const PREFILL_MAX_HEAD_DIM: u32 = 256;
/// The largest head dim of [`decode`] (the query is staged in 8 KiB of workgroup memory).
pub const DECODE_MAX_HEAD_DIM: u32 = 2048;

/// Why a shape cannot be dispatched.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttentionShapeError {
    /// A size is zero, heads do not group over kv heads, or the ring is too small.
    #[error("attention shape: {0}")]
    Invalid(String),
    /// The head dim is above what the kernel's accumulators hold.
    #[error("attention head dim {head_dim} is above this kernel's {max}")]
    HeadDimTooLarge {
        /// The requested head dim.
        head_dim: u32,
        /// The kernel's limit.
        max: u32,
    },
}

/// Parameters of [`prefill`] and [`decode`]. Query n (at absolute position `start_pos + n`),
/// head h, dim d is at `q_offset + n·q_stride + h·head_dim + d`; the output likewise.
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams {
    /// Queries in this call (1 for [`decode`]).
    pub queries: u32,
    /// Query heads.
    pub heads: u32,
    /// Key/value heads (divides `heads`).
    pub kv_heads: u32,
    /// Dim per head.
    pub head_dim: u32,
    /// Absolute position of query 0.
    pub start_pos: u32,
    /// `None`: full causal attention; `Some(w)`: each query sees its w most recent positions.
    pub window: Option<u32>,
    /// Slots of the cache: position m is at slot m % ring. At least `start_pos + queries`
    /// (full) or `w − 1 + queries` (window).
    pub ring: u32,
    /// Score scale (head_dim^-½).
    pub scale: f32,
    /// Elements between consecutive queries.
    pub q_stride: u32,
    /// Element index of head 0 of query 0.
    pub q_offset: u32,
    /// Elements between consecutive output rows.
    pub out_stride: u32,
    /// Element index of head 0 of output row 0.
    pub out_offset: u32,
}

impl AttentionParams {
    fn check(&self, max_head_dim: u32) -> Result<(), AttentionShapeError> {
        let invalid = |m: String| Err(AttentionShapeError::Invalid(m));
        if self.queries == 0 || self.heads == 0 || self.kv_heads == 0 || self.head_dim == 0 {
            return invalid(format!("zero size in {self:?}"));
        }
        if self.heads % self.kv_heads != 0 {
            return invalid(format!(
                "{} heads do not group over {} kv heads",
                self.heads, self.kv_heads
            ));
        }
        if self.head_dim > max_head_dim {
            return Err(AttentionShapeError::HeadDimTooLarge {
                head_dim: self.head_dim,
                max: max_head_dim,
            });
        }
        let end = u64::from(self.start_pos) + u64::from(self.queries);
        let needed = match self.window {
            Some(0) => return invalid("window 0".into()),
            Some(w) => (u64::from(w) - 1 + u64::from(self.queries)).min(end),
            None => end,
        };
        if u64::from(self.ring) < needed {
            return invalid(format!(
                "a ring of {} slots cannot hold the {needed} positions this call reads",
                self.ring
            ));
        }
        Ok(())
    }

    fn words(&self, keys_per_split: u32, splits: u32) -> ParamWords {
        AttentionBlock {
            queries: self.queries,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            start_pos: self.start_pos,
            window: self.window.unwrap_or(0),
            ring: self.ring,
            scale: self.scale,
            q_stride: self.q_stride,
            q_offset: self.q_offset,
            out_stride: self.out_stride,
            out_offset: self.out_offset,
            keys_per_split,
            splits,
            ..Default::default()
        }
        .words()
    }

    /// Keys the last query sees (saturating at u32::MAX).
    fn visible_keys(&self) -> u32 {
        let end = u64::from(self.start_pos) + u64::from(self.queries);
        let keys = match self.window {
            Some(w) => end.min(u64::from(w)),
            None => end,
        };
        u32::try_from(keys).unwrap_or(u32::MAX)
    }
}

param_block! {
    /// The WGSL parameter block of prefill and decode.
    pub(crate) struct AttentionBlock = "AttentionParams" {
        queries: u32,
        heads: u32,
        kv_heads: u32,
        head_dim: u32,
        start_pos: u32,
        window: u32,
        ring: u32,
        scale: f32,
        q_stride: u32,
        q_offset: u32,
        out_stride: u32,
        out_offset: u32,
        keys_per_split: u32,
        splits: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

param_block! {
    /// The WGSL parameter block of [`kv_append`].
    pub(crate) struct KvAppendBlock = "KvAppendParams" {
        tokens: u32,
        kv_width: u32,
        start_pos: u32,
        ring: u32,
        k_stride: u32,
        k_offset: u32,
        v_stride: u32,
        v_offset: u32,
    }
}

buffers! {
    /// Buffers of [`prefill`].
    pub struct PrefillBuffers, bindings PREFILL_BINDINGS {
        /// Queries, f32.
        1 q: ReadOnly,
        /// The key/value cache, f32.
        2 cache: ReadOnly,
        3 out: ReadWrite,
    }
}

buffers! {
    /// Buffers of [`decode`]'s split pass.
    pub struct DecodeSplitBuffers, bindings SPLIT_BINDINGS {
        1 q: ReadOnly,
        2 cache: ReadOnly,
        /// [`decode_scratch_len`] f32.
        4 partial: ReadWrite,
    }
}

buffers! {
    /// Buffers of [`decode`]'s merge pass.
    pub struct DecodeCombineBuffers, bindings COMBINE_BINDINGS {
        3 out: ReadWrite,
        4 partial: ReadWrite,
    }
}

param_block! {
    /// The WGSL parameter block of [`qkv_prep`].
    pub(crate) struct QkvPrepBlock = "QkvPrepParams" {
        rows: u32,
        row_stride: u32,
        heads: u32,
        kv_heads: u32,
        head_dim: u32,
        has_bias: u32,
        has_norm: u32,
        eps: f32,
    }
}

buffers! {
    /// Buffers of [`qkv_prep`]. Where the layer has no bias (or no norm) any buffer may stand
    /// in for it: the kernel does not read it.
    pub struct QkvPrepBuffers, bindings QKV_PREP_BINDINGS {
        /// The projected rows `[rows, row_stride]`: q (heads·head_dim), k, v (kv_heads·head_dim
        /// each) from column 0, f32, updated in place.
        1 x: ReadWrite,
        /// q|k|v biases `[(heads + 2·kv_heads)·head_dim]`, f32.
        2 bias: ReadOnly,
        /// The query heads' norm weight `[head_dim]`, then the key heads', f32.
        3 norm: ReadOnly,
    }
}

buffers! {
    /// Buffers of [`kv_append`].
    pub struct KvAppendBuffers, bindings KV_APPEND_BINDINGS {
        /// Rows holding the new keys and values, f32.
        1 src: ReadOnly,
        2 cache: ReadWrite,
    }
}

/// Buffers of [`decode`].
#[derive(Debug)]
pub struct DecodeBuffers<'b, B> {
    /// The query, f32.
    pub q: &'b B,
    /// The key/value cache, f32.
    pub cache: &'b B,
    /// [`decode_scratch_len`] f32 of scratch.
    pub partial: &'b B,
    /// The output, f32.
    pub out: &'b B,
}

const PREFILL_SOURCE: &str = shader!("attention_common.wgsl", "attention_prefill.wgsl");
const DECODE_SOURCE: &str = shader!("attention_common.wgsl", "attention_decode.wgsl");

const fn variant(
    name: &'static str,
    source: &'static str,
    entry_point: &'static str,
    bindings: &'static [Binding],
) -> Kernel {
    Kernel {
        name,
        source,
        entry_point,
        workgroup_size: [Dim::Fixed(64), Dim::Fixed(1), Dim::Fixed(1)],
        constants: &[],
        bindings,
        params: AttentionBlock::STRUCT,
        requires: Features::NONE,
    }
}

/// Tiled prefill: a workgroup per 64 queries and head.
pub static PREFILL: Kernel = variant(
    "attention/prefill",
    PREFILL_SOURCE,
    "attention_prefill",
    PREFILL_BINDINGS,
);
/// Split decode, pass 1: partial softmax over one span of keys per workgroup.
pub static DECODE_SPLIT: Kernel = variant(
    "attention/decode-split",
    DECODE_SOURCE,
    "attention_decode_split",
    SPLIT_BINDINGS,
);
/// Split decode, pass 2: the merge of the spans.
pub static DECODE_COMBINE: Kernel = variant(
    "attention/decode-combine",
    DECODE_SOURCE,
    "attention_decode_combine",
    COMBINE_BINDINGS,
);
/// The cache append.
pub static KV_APPEND: Kernel = Kernel {
    name: "attention/kv-append",
    source: shader!("attention_kv_append.wgsl"),
    entry_point: "attention_kv_append",
    workgroup_size: [
        Dim::Constant("WORKGROUP_SIZE"),
        Dim::Fixed(1),
        Dim::Fixed(1),
    ],
    constants: &[crate::OverrideConstant {
        name: "WORKGROUP_SIZE",
        default: 64,
    }],
    bindings: KV_APPEND_BINDINGS,
    params: KvAppendBlock::STRUCT,
    requires: Features::NONE,
};

const fn coop_variant(name: &'static str, source: &'static str) -> Kernel {
    Kernel {
        name,
        source,
        entry_point: "attention_prefill_coop",
        workgroup_size: [
            Dim::Constant("WORKGROUP_SIZE"),
            Dim::Fixed(1),
            Dim::Fixed(1),
        ],
        constants: &[
            OverrideConstant {
                name: "WORKGROUP_SIZE",
                default: 32,
            },
            OverrideConstant {
                name: "HEAD_DIM_PAD",
                default: 16,
            },
        ],
        bindings: PREFILL_BINDINGS,
        params: AttentionBlock::STRUCT,
        // No subgroup builtins: the workgroup is one subgroup by its size alone.
        requires: Features::new(true, false, true),
    }
}

/// Tiled prefill on 8×8×8 cooperative matrices.
pub static PREFILL_COOP_8: Kernel = coop_variant(
    "attention/prefill-coop/8x8",
    concat!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n",
        shader!(
            "gemm_coop_tile8.wgsl",
            "coop_split.wgsl",
            "attention_common.wgsl",
            "attention_prefill_coop.wgsl"
        )
    ),
);
/// Tiled prefill on 16×16×16 cooperative matrices.
pub static PREFILL_COOP_16: Kernel = coop_variant(
    "attention/prefill-coop/16x16",
    concat!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n",
        shader!(
            "gemm_coop_tile16.wgsl",
            "coop_split.wgsl",
            "attention_common.wgsl",
            "attention_prefill_coop.wgsl"
        )
    ),
);

/// The q/k/v biases and q/k norms.
pub static QKV_PREP: Kernel = Kernel {
    name: "attention/qkv-prep",
    source: shader!("attention_qkv_prep.wgsl"),
    entry_point: "attention_qkv_prep",
    workgroup_size: [
        Dim::Constant("WORKGROUP_SIZE"),
        Dim::Fixed(1),
        Dim::Fixed(1),
    ],
    constants: &[crate::OverrideConstant {
        name: "WORKGROUP_SIZE",
        default: 64,
    }],
    bindings: QKV_PREP_BINDINGS,
    params: QkvPrepBlock::STRUCT,
    requires: Features::NONE,
};

/// All variants.
pub static KERNELS: &[&Kernel] = &[
    &PREFILL,
    &DECODE_SPLIT,
    &DECODE_COMBINE,
    &KV_APPEND,
    &QKV_PREP,
    &PREFILL_COOP_8,
    &PREFILL_COOP_16,
];

/// Attention of `queries` queries against the cache (whose slots for this call's positions are
/// already written). Buffers: `q` f32, `cache` f32, `out` f32.
pub fn prefill<'b, B>(
    params: AttentionParams,
    buffers: PrefillBuffers<'b, B>,
) -> Result<Bound<'b, B>, AttentionShapeError> {
    params.check(PREFILL_MAX_HEAD_DIM)?;
    Ok(Bound {
        dispatch: Dispatch {
            kernel: &PREFILL,
            constants: PREFILL.default_constants(),
            params: params.words(0, 0),
            workgroups: [ceil_div(params.queries, 64), params.heads, 1],
        },
        buffers: buffers.in_order(),
    })
}

/// The tensor-core prefill variant for `tile`.
pub fn prefill_coop_kernel(tile: CoopTile) -> &'static Kernel {
    match tile {
        CoopTile::Eight => &PREFILL_COOP_8,
        CoopTile::Sixteen => &PREFILL_COOP_16,
    }
}

fn coop_constants(shape: CoopShape, head_dim: u32) -> crate::ConstantValues {
    let kernel = prefill_coop_kernel(shape.tile);
    let side = shape.tile.side();
    let padded = ceil_div(head_dim.max(1), side) * side;
    kernel
        .default_constants()
        .with(kernel, "WORKGROUP_SIZE", shape.subgroup_size)
        .with(kernel, "HEAD_DIM_PAD", padded)
}

/// Bytes of workgroup memory [`prefill_coop`] needs for this head dim (read from naga's IR of
/// the shader under the dispatch's constants; `u32::MAX` if naga could not read it): the
/// caller compares it with the device's limit and falls back to [`prefill`].
pub fn prefill_coop_workgroup_bytes(shape: CoopShape, head_dim: u32) -> u32 {
    let kernel = prefill_coop_kernel(shape.tile);
    crate::workgroup_bytes(kernel, &coop_constants(shape, head_dim)).unwrap_or(u32::MAX)
}

/// [`prefill`] on cooperative matrices in the device's `shape` (needs
/// [`Features::cooperative_matrix`] and [`prefill_coop_workgroup_bytes`] within the device's
/// workgroup memory); the same buffers and results, to f32 accuracy (hi/lo split operands).
pub fn prefill_coop<'b, B>(
    shape: CoopShape,
    params: AttentionParams,
    buffers: PrefillBuffers<'b, B>,
) -> Result<Bound<'b, B>, AttentionShapeError> {
    params.check(PREFILL_MAX_HEAD_DIM)?;
    let block = 2 * shape.tile.side();
    Ok(Bound {
        dispatch: Dispatch {
            kernel: prefill_coop_kernel(shape.tile),
            constants: coop_constants(shape, params.head_dim),
            params: params.words(0, 0),
            workgroups: [ceil_div(params.queries, block), params.heads, 1],
        },
        buffers: buffers.in_order(),
    })
}

/// How many splits [`decode`] makes of the visible keys with `keys_per_split` keys each.
pub fn decode_split_count(params: &AttentionParams, keys_per_split: u32) -> u32 {
    ceil_div(params.visible_keys(), keys_per_split.max(1))
}

/// f32 values of the `partial` scratch buffer that [`decode`] needs.
pub fn decode_scratch_len(params: &AttentionParams, keys_per_split: u32) -> u64 {
    u64::from(params.heads)
        * u64::from(decode_split_count(params, keys_per_split))
        * (u64::from(params.head_dim) + 2)
}

/// One query (`queries` = 1) against the cache, split over the visible keys in spans of
/// `keys_per_split` (see [`decode_split_count`]): the split pass (buffers `q`, `cache`,
/// `partial`) and the merge (buffers `out`, `partial`).
pub fn decode<'b, B>(
    params: AttentionParams,
    keys_per_split: u32,
    buffers: DecodeBuffers<'b, B>,
) -> Result<[Bound<'b, B>; 2], AttentionShapeError> {
    params.check(DECODE_MAX_HEAD_DIM)?;
    if params.queries != 1 {
        return Err(AttentionShapeError::Invalid(format!(
            "decode takes one query, not {}",
            params.queries
        )));
    }
    let keys_per_split = keys_per_split.max(1);
    let splits = decode_split_count(&params, keys_per_split);
    let words = params.words(keys_per_split, splits);
    let split = DecodeSplitBuffers {
        q: buffers.q,
        cache: buffers.cache,
        partial: buffers.partial,
    };
    let combine = DecodeCombineBuffers {
        out: buffers.out,
        partial: buffers.partial,
    };
    Ok([
        Bound {
            dispatch: Dispatch {
                kernel: &DECODE_SPLIT,
                constants: DECODE_SPLIT.default_constants(),
                params: words,
                workgroups: [splits, params.heads, 1],
            },
            buffers: split.in_order(),
        },
        Bound {
            dispatch: Dispatch {
                kernel: &DECODE_COMBINE,
                constants: DECODE_COMBINE.default_constants(),
                params: words,
                workgroups: [params.heads, 1, 1],
            },
            buffers: combine.in_order(),
        },
    ])
}

/// Parameters of [`kv_append`]: token n's keys (all kv heads) at `k_offset + n·k_stride`, its
/// values at `v_offset + n·v_stride`.
#[derive(Clone, Copy, Debug)]
pub struct KvAppendParams {
    /// Tokens to append.
    pub tokens: u32,
    /// kv heads × head dim.
    pub kv_width: u32,
    /// Absolute position of token 0.
    pub start_pos: u32,
    /// Slots of the cache (position m goes to slot m % ring; ≥ 1).
    pub ring: u32,
    /// Elements between consecutive tokens' keys.
    pub k_stride: u32,
    /// Element index of token 0's keys.
    pub k_offset: u32,
    /// Elements between consecutive tokens' values.
    pub v_stride: u32,
    /// Element index of token 0's values.
    pub v_offset: u32,
}

/// Writes keys and values into their cache slots. Buffers: `src` f32, `cache` f32.
pub fn kv_append<'b, B>(params: KvAppendParams, buffers: KvAppendBuffers<'b, B>) -> Bound<'b, B> {
    let constants = KV_APPEND.default_constants();
    let [x, _, _] = KV_APPEND.workgroup_size(&constants);
    let block = KvAppendBlock {
        tokens: params.tokens,
        kv_width: params.kv_width,
        start_pos: params.start_pos,
        ring: params.ring.max(1),
        k_stride: params.k_stride,
        k_offset: params.k_offset,
        v_stride: params.v_stride,
        v_offset: params.v_offset,
    };
    Bound {
        dispatch: Dispatch {
            kernel: &KV_APPEND,
            constants,
            params: block.words(),
            workgroups: [ceil_div(params.kv_width, x), params.tokens, 1],
        },
        buffers: buffers.in_order(),
    }
}

/// Parameters of [`qkv_prep`].
#[derive(Clone, Copy, Debug)]
pub struct QkvPrepParams {
    /// Rows (at most 65535).
    pub rows: u32,
    /// Elements between consecutive rows.
    pub row_stride: u32,
    /// Query heads.
    pub heads: u32,
    /// Key/value heads.
    pub kv_heads: u32,
    /// Dim per head.
    pub head_dim: u32,
    /// Whether to add the biases.
    pub bias: bool,
    /// `Some(ε)`: RMS-norm each query and key head (ε added to the mean square).
    pub norm_eps: Option<f32>,
}

/// Adds an attention layer's q/k/v biases to its projected rows and RMS-norms its query and
/// key heads, in place (the steps between the projection and rotary).
pub fn qkv_prep<'b, B>(params: QkvPrepParams, buffers: QkvPrepBuffers<'b, B>) -> Bound<'b, B> {
    let block = QkvPrepBlock {
        rows: params.rows,
        row_stride: params.row_stride,
        heads: params.heads,
        kv_heads: params.kv_heads,
        head_dim: params.head_dim,
        has_bias: u32::from(params.bias),
        has_norm: u32::from(params.norm_eps.is_some()),
        eps: params.norm_eps.unwrap_or(0.0),
    };
    Bound {
        dispatch: Dispatch {
            kernel: &QKV_PREP,
            constants: QKV_PREP.default_constants(),
            params: block.words(),
            workgroups: [params.heads + 2 * params.kv_heads, params.rows, 1],
        },
        buffers: buffers.in_order(),
    }
}
