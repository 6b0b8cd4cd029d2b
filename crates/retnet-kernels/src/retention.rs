//! Retention in its three forms — [`parallel`], [`chunkwise`], [`recurrent`] (and
//! [`recurrent_batched`] for batched decode) — over rotated and scaled q, k. See
//! `shaders/retention_common.wgsl` for the formulas and buffer layout.

use crate::gemm_coop::{CoopShape, CoopTile};
use crate::rotary::RotaryStyle;
use crate::{
    ceil_div, Bound, BufferList, ConstantValues, Dim, Dispatch, Features, Kernel, OverrideConstant,
    ParamWords,
};

/// Where one of q, k, v or the output lives: element `c` of head `h` of token `t` is at
/// `offset + t·stride + h·dim + c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strided {
    /// Element index of head 0 of token 0.
    pub offset: u32,
    /// Elements between consecutive tokens.
    pub stride: u32,
}

impl Strided {
    /// A dense `[tokens, width]` tensor at the start of its buffer.
    pub fn dense(width: u32) -> Self {
        Strided {
            offset: 0,
            stride: width,
        }
    }
}

/// Parameters shared by the three forms.
#[derive(Clone, Copy, Debug)]
pub struct RetentionParams {
    /// Tokens in this call.
    pub tokens: u32,
    /// H: query heads (one state per query head).
    pub query_heads: u32,
    /// H_kv: key/value heads; must divide `query_heads`.
    pub kv_heads: u32,
    /// K.
    pub key_dim: u32,
    /// V.
    pub value_dim: u32,
    /// Absolute position of the first token (only the c_n scale depends on it).
    pub start_pos: u32,
    /// Layout of q (`[tokens, H, K]`).
    pub q: Strided,
    /// Layout of k (`[tokens, H_kv, K]`).
    pub k: Strided,
    /// Layout of v (`[tokens, H_kv, V]`).
    pub v: Strided,
    /// Layout of the output (`[tokens, H, V]`).
    pub out: Strided,
    /// Divide P_n by sqrt(c_n), c_n = Σ_{i≤n} γ^i (torchscale).
    pub scale_by_decay_sum: bool,
}

impl RetentionParams {
    fn words(&self) -> ParamWords {
        self.block().words()
    }

    fn block(&self) -> RetentionBlock {
        RetentionBlock {
            tokens: self.tokens,
            query_heads: self.query_heads,
            kv_heads: self.kv_heads,
            key_dim: self.key_dim,
            value_dim: self.value_dim,
            start_pos: self.start_pos,
            q_offset: self.q.offset,
            q_stride: self.q.stride,
            k_offset: self.k.offset,
            k_stride: self.k.stride,
            v_offset: self.v.offset,
            v_stride: self.v.stride,
            out_offset: self.out.offset,
            out_stride: self.out.stride,
            scale_by_decay_sum: u32::from(self.scale_by_decay_sum),
            q_scale: 0.0,
        }
    }
}

param_block! {
    /// The WGSL parameter block of every retention kernel.
    pub(crate) struct RetentionBlock = "RetentionParams" {
        tokens: u32,
        query_heads: u32,
        kv_heads: u32,
        key_dim: u32,
        value_dim: u32,
        start_pos: u32,
        q_offset: u32,
        q_stride: u32,
        k_offset: u32,
        k_stride: u32,
        v_offset: u32,
        v_stride: u32,
        out_offset: u32,
        out_stride: u32,
        scale_by_decay_sum: u32,
        q_scale: f32,
    }
}

buffers! {
    /// Buffers of [`parallel`]. q, k and v may be one buffer (the fused projection).
    pub struct ParallelBuffers, bindings PARALLEL_BINDINGS {
        1 q: ReadOnly,
        2 k: ReadOnly,
        3 v: ReadOnly,
        /// `[H]` f32.
        4 log_decay: ReadOnly,
        6 output: ReadWrite,
    }
}

buffers! {
    /// Buffers of [`chunkwise`] and [`recurrent`].
    pub struct RetentionBuffers, bindings STATEFUL_BINDINGS {
        1 q: ReadOnly,
        2 k: ReadOnly,
        3 v: ReadOnly,
        4 log_decay: ReadOnly,
        /// `[H, K, V]` f32, read and updated.
        5 state: ReadWrite,
        6 output: ReadWrite,
    }
}

buffers! {
    /// Buffers of [`recurrent_batched`].
    pub struct RecurrentBatchedBuffers, bindings BATCHED_BINDINGS {
        1 q: ReadOnly,
        2 k: ReadOnly,
        3 v: ReadOnly,
        4 log_decay: ReadOnly,
        /// `[rows]` u32.
        5 positions: ReadOnly,
        /// `[rows]` u32.
        6 slots: ReadOnly,
        /// The pool, `[slots, H, K, V]` f32.
        7 state: ReadWrite,
        8 output: ReadWrite,
    }
}

buffers! {
    /// Buffers of [`recurrent_rotary`].
    pub struct RecurrentRotaryBuffers, bindings ROTARY_BINDINGS {
        4 log_decay: ReadOnly,
        5 state: ReadWrite,
        6 output: ReadWrite,
        /// The q|k|v(|g) projection, raw: q and k are rotated (and q scaled) as they are read.
        9 qkv: ReadOnly,
        /// The rotary angle of each pair, `[K / 2]` f32 (as the rotary kernel reads it).
        10 theta: ReadOnly,
    }
}

buffers! {
    /// Buffers of [`recurrent_batched_rotary`].
    pub struct RecurrentBatchedRotaryBuffers, bindings BATCHED_ROTARY_BINDINGS {
        4 log_decay: ReadOnly,
        5 positions: ReadOnly,
        6 slots: ReadOnly,
        7 state: ReadWrite,
        8 output: ReadWrite,
        9 qkv: ReadOnly,
        10 theta: ReadOnly,
    }
}

buffers! {
    /// Buffers of [`chunk_updates`].
    pub struct ChunkUpdatesBuffers, bindings CHUNK_UPDATES_BINDINGS {
        2 k: ReadOnly,
        3 v: ReadOnly,
        4 log_decay: ReadOnly,
        /// [`chunk_states_len`] f32.
        6 chunk_states: ReadWrite,
    }
}

buffers! {
    /// Buffers of [`chunk_scan`].
    pub struct ChunkScanBuffers, bindings CHUNK_SCAN_BINDINGS {
        4 log_decay: ReadOnly,
        /// `[H, K, V]` f32: the state before the span, then after it.
        5 state: ReadWrite,
        6 chunk_states: ReadWrite,
    }
}

buffers! {
    /// Buffers of [`chunk_outputs`].
    pub struct ChunkOutputsBuffers, bindings CHUNK_OUTPUTS_BINDINGS {
        1 q: ReadOnly,
        2 k: ReadOnly,
        3 v: ReadOnly,
        4 log_decay: ReadOnly,
        5 chunk_states: ReadOnly,
        6 output: ReadWrite,
    }
}

/// Parallel form.
pub static PARALLEL: Kernel = Kernel {
    name: "retention/parallel",
    source: shader!("retention_common.wgsl", "retention_parallel.wgsl"),
    entry_point: "retention_parallel",
    workgroup_size: [
        Dim::Constant("BLOCK"),
        Dim::Constant("BLOCK"),
        Dim::Fixed(1),
    ],
    constants: &[OverrideConstant {
        name: "BLOCK",
        default: 16,
    }],
    bindings: PARALLEL_BINDINGS,
    params: RetentionBlock::STRUCT,
    requires: Features::NONE,
};
/// Value columns per invocation in retention_parallel.wgsl (`COLUMNS_PER_INVOCATION`).
pub const PARALLEL_COLUMNS_PER_INVOCATION: u32 = 4;

/// Chunkwise form.
pub static CHUNKWISE: Kernel = Kernel {
    name: "retention/chunkwise",
    source: shader!("retention_common.wgsl", "retention_chunkwise.wgsl"),
    entry_point: "retention_chunkwise",
    workgroup_size: [
        Dim::Constant("WORKGROUP_SIZE"),
        Dim::Fixed(1),
        Dim::Fixed(1),
    ],
    constants: &[
        OverrideConstant {
            name: "CHUNK_SIZE",
            default: 32,
        },
        OverrideConstant {
            name: "COLUMNS",
            default: 64,
        },
        OverrideConstant {
            name: "WORKGROUP_SIZE",
            default: 256,
        },
    ],
    bindings: STATEFUL_BINDINGS,
    params: RetentionBlock::STRUCT,
    requires: Features::NONE,
};

/// The recurrent kernels' workgroup shape (with or without rotary): 8 columns × 32 slices, 4× the
/// workgroups of 32 × 8 and a quarter of the dependent chain per invocation (docs/perf-notes.md,
/// "Recurrent retention": 553 → 369 µs per decode step of retnet_xl on the H200). The rows of S
/// go in rounds of COLUMNS × SLICES (256: one round at K = 256), the round's (q̂, k̂) staged in
/// workgroup memory (retention_recurrent_rows.wgsl, also for the batched shape).
const RECURRENT_SHAPE: [OverrideConstant; 2] = [
    OverrideConstant {
        name: "COLUMNS",
        default: 8,
    },
    OverrideConstant {
        name: "SLICES",
        default: 32,
    },
];

/// The batched recurrent kernels' workgroup shape: 32 columns × 8 slices, as a batch already
/// fills the GPU (one grid layer per sequence) and whole 128-byte rows per warp read the pool
/// fastest (8 × 32: 880 → 1,276 µs per batch-8 step on the H200, docs/perf-notes.md).
const RECURRENT_BATCHED_SHAPE: [OverrideConstant; 2] = [
    OverrideConstant {
        name: "COLUMNS",
        default: 32,
    },
    OverrideConstant {
        name: "SLICES",
        default: 8,
    },
];

/// Recurrent form (decode step).
pub static RECURRENT: Kernel = Kernel {
    name: "retention/recurrent",
    source: shader!(
        "retention_common.wgsl",
        "retention_qk.wgsl",
        "retention_recurrent.wgsl",
        "retention_recurrent_rows.wgsl"
    ),
    entry_point: "retention_recurrent",
    workgroup_size: [
        Dim::Constant("COLUMNS"),
        Dim::Constant("SLICES"),
        Dim::Fixed(1),
    ],
    constants: &RECURRENT_SHAPE,
    bindings: STATEFUL_BINDINGS,
    params: RetentionBlock::STRUCT,
    requires: Features::NONE,
};

/// Recurrent form, batched: one token for each of `rows` sequences, each with its own position
/// and state slot (batched decode).
pub static RECURRENT_BATCHED: Kernel = Kernel {
    name: "retention/recurrent-batched",
    source: shader!(
        "retention_common.wgsl",
        "retention_qk.wgsl",
        "retention_recurrent_batched.wgsl",
        "retention_recurrent_rows.wgsl"
    ),
    entry_point: "retention_recurrent_batched",
    workgroup_size: [
        Dim::Constant("COLUMNS"),
        Dim::Constant("SLICES"),
        Dim::Fixed(1),
    ],
    constants: &RECURRENT_BATCHED_SHAPE,
    bindings: BATCHED_BINDINGS,
    params: RetentionBlock::STRUCT,
    requires: Features::NONE,
};

/// The override constant of the kernels that rotate q and k themselves (0: pairs, 1: halves).
const ROTARY_HALVES: OverrideConstant = OverrideConstant {
    name: "ROTARY_HALVES",
    default: 0,
};

/// Recurrent form with rotary (and q's scale) applied to the raw q and k as they are read: the
/// decode step without the two rotary dispatches.
pub static RECURRENT_ROTARY: Kernel = Kernel {
    name: "retention/recurrent-rotary",
    source: shader!(
        "retention_common.wgsl",
        "rotary_angle.wgsl",
        "retention_qk_rotary.wgsl",
        "retention_recurrent.wgsl",
        "retention_recurrent_rows.wgsl"
    ),
    entry_point: "retention_recurrent",
    workgroup_size: [
        Dim::Constant("COLUMNS"),
        Dim::Constant("SLICES"),
        Dim::Fixed(1),
    ],
    constants: &[RECURRENT_SHAPE[0], RECURRENT_SHAPE[1], ROTARY_HALVES],
    bindings: ROTARY_BINDINGS,
    params: RetentionBlock::STRUCT,
    requires: Features::NONE,
};

/// Batched recurrent form with rotary applied as q and k are read (batched decode).
pub static RECURRENT_BATCHED_ROTARY: Kernel = Kernel {
    name: "retention/recurrent-batched-rotary",
    source: shader!(
        "retention_common.wgsl",
        "rotary_angle.wgsl",
        "retention_qk_rotary.wgsl",
        "retention_recurrent_batched.wgsl",
        "retention_recurrent_rows.wgsl"
    ),
    entry_point: "retention_recurrent_batched",
    workgroup_size: [
        Dim::Constant("COLUMNS"),
        Dim::Constant("SLICES"),
        Dim::Fixed(1),
    ],
    constants: &[
        RECURRENT_BATCHED_SHAPE[0],
        RECURRENT_BATCHED_SHAPE[1],
        ROTARY_HALVES,
    ],
    bindings: BATCHED_ROTARY_BINDINGS,
    params: RetentionBlock::STRUCT,
    requires: Features::NONE,
};

/// Chunk-parallel form, pass 1a: each chunk's own update of the state, all chunks at once.
pub static CHUNK_UPDATES: Kernel = Kernel {
    name: "retention/chunk-updates",
    source: shader!("retention_common.wgsl", "retention_chunk_updates.wgsl"),
    entry_point: "retention_chunk_updates",
    workgroup_size: [Dim::Fixed(256), Dim::Fixed(1), Dim::Fixed(1)],
    constants: &[OverrideConstant {
        name: "CHUNK_SIZE",
        default: 64,
    }],
    bindings: CHUNK_UPDATES_BINDINGS,
    params: RetentionBlock::STRUCT,
    requires: Features::NONE,
};

/// Chunk-parallel form, pass 1b: the chunk updates turned into the state before each chunk.
pub static CHUNK_SCAN: Kernel = Kernel {
    name: "retention/chunk-scan",
    source: shader!("retention_common.wgsl", "retention_chunk_scan.wgsl"),
    entry_point: "retention_chunk_scan",
    workgroup_size: [Dim::Fixed(64), Dim::Fixed(1), Dim::Fixed(1)],
    constants: &[OverrideConstant {
        name: "CHUNK_SIZE",
        default: 64,
    }],
    bindings: CHUNK_SCAN_BINDINGS,
    params: RetentionBlock::STRUCT,
    requires: Features::NONE,
};

/// Chunk-parallel form, pass 2: every chunk's outputs from the state before it.
pub static CHUNK_OUTPUTS: Kernel = Kernel {
    name: "retention/chunk-outputs",
    source: shader!("retention_common.wgsl", "retention_chunk_outputs.wgsl"),
    entry_point: "retention_chunk_outputs",
    workgroup_size: [Dim::Fixed(256), Dim::Fixed(1), Dim::Fixed(1)],
    constants: &[OverrideConstant {
        name: "CHUNK_SIZE",
        default: 64,
    }],
    bindings: CHUNK_OUTPUTS_BINDINGS,
    params: RetentionBlock::STRUCT,
    requires: Features::NONE,
};

const fn chunk_outputs_coop_variant(name: &'static str, source: &'static str) -> Kernel {
    Kernel {
        name,
        source,
        entry_point: "retention_chunk_outputs_coop",
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
                name: "CHUNK_SIZE",
                default: 32,
            },
            OverrideConstant {
                name: "CHUNK_PAD",
                default: 32,
            },
        ],
        bindings: CHUNK_OUTPUTS_BINDINGS,
        params: RetentionBlock::STRUCT,
        // No subgroup builtins: the workgroup is one subgroup by its size alone.
        requires: Features::new(true, false, true),
    }
}

/// Chunk-parallel form, pass 2, on 8×8×8 cooperative matrices.
pub static CHUNK_OUTPUTS_COOP_8: Kernel = chunk_outputs_coop_variant(
    "retention/chunk-outputs-coop/8x8",
    concat!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n",
        shader!(
            "gemm_coop_tile8.wgsl",
            "coop_split.wgsl",
            "retention_common.wgsl",
            "retention_chunk_outputs_coop.wgsl"
        )
    ),
);
/// Chunk-parallel form, pass 2, on 16×16×16 cooperative matrices.
pub static CHUNK_OUTPUTS_COOP_16: Kernel = chunk_outputs_coop_variant(
    "retention/chunk-outputs-coop/16x16",
    concat!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n",
        shader!(
            "gemm_coop_tile16.wgsl",
            "coop_split.wgsl",
            "retention_common.wgsl",
            "retention_chunk_outputs_coop.wgsl"
        )
    ),
);

const fn chunk_updates_coop_variant(name: &'static str, source: &'static str) -> Kernel {
    Kernel {
        bindings: CHUNK_UPDATES_BINDINGS,
        entry_point: "retention_chunk_updates_coop",
        ..chunk_outputs_coop_variant(name, source)
    }
}

/// Chunk-parallel form, pass 1a, on 8×8×8 cooperative matrices.
pub static CHUNK_UPDATES_COOP_8: Kernel = chunk_updates_coop_variant(
    "retention/chunk-updates-coop/8x8",
    concat!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n",
        shader!(
            "gemm_coop_tile8.wgsl",
            "coop_split.wgsl",
            "retention_common.wgsl",
            "retention_chunk_updates_coop.wgsl"
        )
    ),
);
/// Chunk-parallel form, pass 1a, on 16×16×16 cooperative matrices.
pub static CHUNK_UPDATES_COOP_16: Kernel = chunk_updates_coop_variant(
    "retention/chunk-updates-coop/16x16",
    concat!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n",
        shader!(
            "gemm_coop_tile16.wgsl",
            "coop_split.wgsl",
            "retention_common.wgsl",
            "retention_chunk_updates_coop.wgsl"
        )
    ),
);

/// All variants.
pub static KERNELS: &[&Kernel] = &[
    &CHUNK_UPDATES_COOP_8,
    &CHUNK_UPDATES_COOP_16,
    &PARALLEL,
    &CHUNKWISE,
    &CHUNK_UPDATES,
    &CHUNK_SCAN,
    &CHUNK_OUTPUTS,
    &CHUNK_OUTPUTS_COOP_8,
    &CHUNK_OUTPUTS_COOP_16,
    &RECURRENT,
    &RECURRENT_BATCHED,
    &RECURRENT_ROTARY,
    &RECURRENT_BATCHED_ROTARY,
];

/// Parallel retention from a zero state (the state is neither read nor written).
/// Buffers: q, k, v, `log_decay [H]`, output.
pub fn parallel<'b, B>(params: RetentionParams, buffers: ParallelBuffers<'b, B>) -> Bound<'b, B> {
    let kernel = &PARALLEL;
    let constants = kernel.default_constants();
    let [block, _, _] = kernel.workgroup_size(&constants);
    Bound {
        dispatch: Dispatch {
            kernel,
            constants,
            params: params.words(),
            workgroups: [
                ceil_div(params.tokens, block),
                params.query_heads,
                ceil_div(params.value_dim, block * PARALLEL_COLUMNS_PER_INVOCATION),
            ],
        },
        buffers: buffers.in_order(),
    }
}

/// Chunkwise retention with chunks of `chunk_size` tokens, continuing from and updating the state.
/// Buffers: q, k, v, `log_decay [H]`, `state [H, K, V]`, output.
pub fn chunkwise<'b, B>(
    params: RetentionParams,
    chunk_size: u32,
    buffers: RetentionBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = &CHUNKWISE;
    let constants = with_chunk(kernel, chunk_size.max(1));
    let columns = constants.0[1];
    Bound {
        dispatch: Dispatch {
            kernel,
            constants,
            params: params.words(),
            workgroups: [ceil_div(params.value_dim, columns), params.query_heads, 1],
        },
        buffers: buffers.in_order(),
    }
}

/// Bytes of workgroup memory [`chunkwise`] declares for chunks of `chunk_size` tokens, read
/// from naga's IR of the shader ([`crate::workgroup_bytes`]). The runtime picks the largest chunk
/// whose memory fits the adapter (WebGPU guarantees only 16 KiB). A shader naga could not read
/// (the crate's tests rule that out) counts as too large.
pub fn chunkwise_workgroup_bytes(chunk_size: u32) -> u32 {
    crate::workgroup_bytes(&CHUNKWISE, &with_chunk(&CHUNKWISE, chunk_size.max(1)))
        .unwrap_or(u32::MAX)
}

/// The kernel's default constants with `CHUNK_SIZE` set.
fn with_chunk(kernel: &'static Kernel, chunk_size: u32) -> ConstantValues {
    kernel
        .default_constants()
        .with(kernel, "CHUNK_SIZE", chunk_size)
}

/// The chunk the three chunk-parallel passes use for a requested `chunk_size`: 1 to
/// [`CHUNK_OUTPUTS_MAX_CHUNK`]. All three (and the buffer between them) must agree on it.
fn parallel_chunk(chunk_size: u32) -> u32 {
    chunk_size.clamp(1, CHUNK_OUTPUTS_MAX_CHUNK)
}

/// f32 elements of the chunk-state buffer of [`chunk_updates`], [`chunk_scan`] and
/// [`chunk_outputs`]: one `[H, K, V]` state per chunk.
pub fn chunk_states_len(params: &RetentionParams, chunk_size: u32) -> u64 {
    let chunks = u64::from(params.tokens.div_ceil(parallel_chunk(chunk_size)));
    chunks * u64::from(params.query_heads) * u64::from(params.key_dim) * u64::from(params.value_dim)
}

/// Chunk-parallel retention, pass 1a (chunks of at most [`CHUNK_OUTPUTS_MAX_CHUNK`] tokens, like
/// the other two passes): writes each chunk's own update of the state into
/// `chunk_states` ([`chunk_states_len`] f32). Buffers: k, v, `log_decay [H]`, `chunk_states`.
/// Follow with [`chunk_scan`].
pub fn chunk_updates<'b, B>(
    params: RetentionParams,
    chunk_size: u32,
    buffers: ChunkUpdatesBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = &CHUNK_UPDATES;
    let chunk_size = parallel_chunk(chunk_size);
    Bound {
        dispatch: Dispatch {
            kernel,
            constants: with_chunk(kernel, chunk_size),
            params: params.words(),
            workgroups: [
                ceil_div(params.key_dim, 64) * ceil_div(params.value_dim, 64),
                params.tokens.div_ceil(chunk_size),
                params.query_heads,
            ],
        },
        buffers: buffers.in_order(),
    }
}

/// Chunk-parallel retention, pass 1b: turns the updates from [`chunk_updates`] into the state
/// before each chunk, in place, and leaves the final state in `state`. Buffers: `log_decay [H]`,
/// `state [H, K, V]`, `chunk_states`.
pub fn chunk_scan<'b, B>(
    params: RetentionParams,
    chunk_size: u32,
    buffers: ChunkScanBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = &CHUNK_SCAN;
    Bound {
        dispatch: Dispatch {
            kernel,
            constants: with_chunk(kernel, parallel_chunk(chunk_size)),
            params: params.words(),
            workgroups: [
                ceil_div(params.value_dim, 64),
                params.key_dim,
                params.query_heads,
            ],
        },
        buffers: buffers.in_order(),
    }
}

/// Largest chunk [`chunk_outputs`] takes.
pub const CHUNK_OUTPUTS_MAX_CHUNK: u32 = 64;

/// Workgroup memory [`chunk_outputs`] declares for a chunk size, read from naga's IR (as
/// [`chunkwise_workgroup_bytes`]).
pub fn chunk_outputs_workgroup_bytes(chunk_size: u32) -> u32 {
    let chunk = parallel_chunk(chunk_size);
    crate::workgroup_bytes(&CHUNK_OUTPUTS, &with_chunk(&CHUNK_OUTPUTS, chunk)).unwrap_or(u32::MAX)
}

/// Chunk-parallel retention, pass 2: the outputs of every chunk (same `chunk_size` as pass 1,
/// at most [`CHUNK_OUTPUTS_MAX_CHUNK`]). Buffers: q, k, v, `log_decay [H]`, `chunk_states`
/// (from [`chunk_scan`]), output.
pub fn chunk_outputs<'b, B>(
    params: RetentionParams,
    chunk_size: u32,
    buffers: ChunkOutputsBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = &CHUNK_OUTPUTS;
    let chunk_size = parallel_chunk(chunk_size);
    Bound {
        dispatch: Dispatch {
            kernel,
            constants: with_chunk(kernel, chunk_size),
            params: params.words(),
            workgroups: [
                ceil_div(params.value_dim, 64),
                params.tokens.div_ceil(chunk_size),
                params.query_heads,
            ],
        },
        buffers: buffers.in_order(),
    }
}

/// Largest chunk [`chunk_outputs_coop`] takes (its scores share a `[chunk, 32]` buffer).
pub const CHUNK_OUTPUTS_COOP_MAX_CHUNK: u32 = 32;

/// The tensor-core chunk-updates variant for `tile`.
pub fn chunk_updates_coop_kernel(tile: CoopTile) -> &'static Kernel {
    match tile {
        CoopTile::Eight => &CHUNK_UPDATES_COOP_8,
        CoopTile::Sixteen => &CHUNK_UPDATES_COOP_16,
    }
}

/// Workgroup memory [`chunk_updates_coop`] declares for a chunk size, read from naga's IR.
pub fn chunk_updates_coop_workgroup_bytes(shape: CoopShape, chunk_size: u32) -> u32 {
    let kernel = chunk_updates_coop_kernel(shape.tile);
    let constants = coop_chunk_constants(kernel, shape, chunk_size);
    crate::workgroup_bytes(kernel, &constants).unwrap_or(u32::MAX)
}

/// [`chunk_updates`] on cooperative matrices in the device's `shape` (the conditions of
/// [`chunk_outputs_coop`]): the same buffers and results, to f32 accuracy.
pub fn chunk_updates_coop<'b, B>(
    shape: CoopShape,
    params: RetentionParams,
    chunk_size: u32,
    buffers: ChunkUpdatesBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = chunk_updates_coop_kernel(shape.tile);
    let chunk = chunk_size.clamp(1, CHUNK_OUTPUTS_COOP_MAX_CHUNK);
    Bound {
        dispatch: Dispatch {
            kernel,
            constants: coop_chunk_constants(kernel, shape, chunk),
            params: params.words(),
            workgroups: [
                ceil_div(params.key_dim, 32) * ceil_div(params.value_dim, 32),
                params.tokens.div_ceil(chunk),
                params.query_heads,
            ],
        },
        buffers: buffers.in_order(),
    }
}

/// The tensor-core chunk-outputs variant for `tile`.
pub fn chunk_outputs_coop_kernel(tile: CoopTile) -> &'static Kernel {
    match tile {
        CoopTile::Eight => &CHUNK_OUTPUTS_COOP_8,
        CoopTile::Sixteen => &CHUNK_OUTPUTS_COOP_16,
    }
}

fn chunk_outputs_coop_constants(shape: CoopShape, chunk_size: u32) -> ConstantValues {
    coop_chunk_constants(chunk_outputs_coop_kernel(shape.tile), shape, chunk_size)
}

/// The constants of a tensor-core chunk kernel: one subgroup, the chunk and its padding.
fn coop_chunk_constants(
    kernel: &'static Kernel,
    shape: CoopShape,
    chunk_size: u32,
) -> ConstantValues {
    let chunk = chunk_size.clamp(1, CHUNK_OUTPUTS_COOP_MAX_CHUNK);
    let side = shape.tile.side();
    kernel
        .default_constants()
        .with(kernel, "WORKGROUP_SIZE", shape.subgroup_size)
        .with(kernel, "CHUNK_SIZE", chunk)
        .with(kernel, "CHUNK_PAD", ceil_div(chunk, side) * side)
}

/// Workgroup memory [`chunk_outputs_coop`] declares for a chunk size, read from naga's IR.
pub fn chunk_outputs_coop_workgroup_bytes(shape: CoopShape, chunk_size: u32) -> u32 {
    let kernel = chunk_outputs_coop_kernel(shape.tile);
    crate::workgroup_bytes(kernel, &chunk_outputs_coop_constants(shape, chunk_size))
        .unwrap_or(u32::MAX)
}

/// [`chunk_outputs`] on cooperative matrices in the device's `shape` (needs
/// [`Features::cooperative_matrix`], a `chunk_size` of at most
/// [`CHUNK_OUTPUTS_COOP_MAX_CHUNK`] — the same for the passes before it — and its workgroup
/// memory within the device's): the same buffers and results, to f32 accuracy (hi/lo split
/// f16 operands).
pub fn chunk_outputs_coop<'b, B>(
    shape: CoopShape,
    params: RetentionParams,
    chunk_size: u32,
    buffers: ChunkOutputsBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = chunk_outputs_coop_kernel(shape.tile);
    let chunk = chunk_size.clamp(1, CHUNK_OUTPUTS_COOP_MAX_CHUNK);
    Bound {
        dispatch: Dispatch {
            kernel,
            constants: chunk_outputs_coop_constants(shape, chunk),
            params: params.words(),
            workgroups: [
                ceil_div(params.value_dim, 32),
                params.tokens.div_ceil(chunk),
                params.query_heads,
            ],
        },
        buffers: buffers.in_order(),
    }
}

/// Recurrent retention, one token after another, continuing from and updating the state.
/// Buffers: q, k, v, `log_decay [H]`, `state [H, K, V]`, output.
pub fn recurrent<'b, B>(params: RetentionParams, buffers: RetentionBuffers<'b, B>) -> Bound<'b, B> {
    let kernel = &RECURRENT;
    let constants = kernel.default_constants();
    let [columns, _, _] = kernel.workgroup_size(&constants);
    Bound {
        dispatch: Dispatch {
            kernel,
            constants,
            params: params.words(),
            workgroups: [ceil_div(params.value_dim, columns), params.query_heads, 1],
        },
        buffers: buffers.in_order(),
    }
}

/// The rotary that [`recurrent_rotary`] and [`recurrent_batched_rotary`] apply to q and k as
/// they read them (what the rotary kernel does before the plain recurrent kernels).
#[derive(Clone, Copy, Debug)]
pub struct QkRotary {
    /// Which elements of a head form a pair.
    pub style: RotaryStyle,
    /// Applied to q after its rotation (K^-½).
    pub q_scale: f32,
}

fn rotary_constants(kernel: &'static Kernel, rotary: QkRotary) -> ConstantValues {
    let halves = u32::from(rotary.style == RotaryStyle::Halves);
    kernel
        .default_constants()
        .with(kernel, ROTARY_HALVES.name, halves)
}

/// [`recurrent`] on the raw q|k|v projection: q and k are rotated at their positions
/// (`start_pos + t`) with the angles `theta` and q scaled by `rotary.q_scale` as they are read.
/// q, k and v are column ranges of the one buffer `qkv` (`params.q`, `k`, `v` index it).
/// Requires an even K.
pub fn recurrent_rotary<'b, B>(
    params: RetentionParams,
    rotary: QkRotary,
    buffers: RecurrentRotaryBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = &RECURRENT_ROTARY;
    let constants = rotary_constants(kernel, rotary);
    let [columns, _, _] = kernel.workgroup_size(&constants);
    let mut block = params.block();
    block.q_scale = rotary.q_scale;
    Bound {
        dispatch: Dispatch {
            kernel,
            constants,
            params: block.words(),
            workgroups: [ceil_div(params.value_dim, columns), params.query_heads, 1],
        },
        buffers: buffers.in_order(),
    }
}

/// Parameters of [`recurrent_batched`]: row b of q, k, v and the output is one token of sequence
/// b (its own position and state slot come from buffers).
#[derive(Clone, Copy, Debug)]
pub struct RetentionBatchedParams {
    /// B: rows, one token of one sequence each.
    pub rows: u32,
    /// H: query heads (one state per query head).
    pub query_heads: u32,
    /// H_kv: key/value heads; must divide `query_heads`.
    pub kv_heads: u32,
    /// K.
    pub key_dim: u32,
    /// V.
    pub value_dim: u32,
    /// Layout of q (`[rows, H, K]`).
    pub q: Strided,
    /// Layout of k (`[rows, H_kv, K]`).
    pub k: Strided,
    /// Layout of v (`[rows, H_kv, V]`).
    pub v: Strided,
    /// Layout of the output (`[rows, H, V]`).
    pub out: Strided,
    /// Divide P_n by sqrt(c_n), c_n = Σ_{i≤n} γ^i, n = `positions[b]` (torchscale).
    pub scale_by_decay_sum: bool,
}

/// Batched recurrent step (decode of many sequences in one dispatch): row b advances the state in
/// slot `slots[b]` of the pool by its token at absolute position `positions[b]`. Distinct rows must
/// use distinct slots. Buffers: q, k, v, `log_decay [H]`, `positions [rows]` u32,
/// `slots [rows]` u32, `state [slots, H, K, V]` f32 (the pool), output.
pub fn recurrent_batched<'b, B>(
    params: RetentionBatchedParams,
    buffers: RecurrentBatchedBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = &RECURRENT_BATCHED;
    batched_launch(
        kernel,
        kernel.default_constants(),
        &params,
        params.block().words(),
        buffers.in_order(),
    )
}

/// [`recurrent_batched`] on the raw q|k|v projection, rotary applied as q and k are read
/// (each row at its `positions[b]`), as [`recurrent_rotary`]. Requires an even K.
pub fn recurrent_batched_rotary<'b, B>(
    params: RetentionBatchedParams,
    rotary: QkRotary,
    buffers: RecurrentBatchedRotaryBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = &RECURRENT_BATCHED_ROTARY;
    let mut block = params.block();
    block.q_scale = rotary.q_scale;
    batched_launch(
        kernel,
        rotary_constants(kernel, rotary),
        &params,
        block.words(),
        buffers.in_order(),
    )
}

fn batched_launch<'b, B>(
    kernel: &'static Kernel,
    constants: ConstantValues,
    params: &RetentionBatchedParams,
    words: ParamWords,
    buffers: BufferList<'b, B>,
) -> Bound<'b, B> {
    let [columns, _, _] = kernel.workgroup_size(&constants);
    Bound {
        dispatch: Dispatch {
            kernel,
            constants,
            params: words,
            workgroups: [
                ceil_div(params.value_dim, columns),
                params.query_heads,
                params.rows,
            ],
        },
        buffers,
    }
}

impl RetentionBatchedParams {
    fn block(&self) -> RetentionBlock {
        RetentionParams {
            tokens: self.rows,
            query_heads: self.query_heads,
            kv_heads: self.kv_heads,
            key_dim: self.key_dim,
            value_dim: self.value_dim,
            start_pos: 0,
            q: self.q,
            k: self.k,
            v: self.v,
            out: self.out,
            scale_by_decay_sum: self.scale_by_decay_sum,
        }
        .block()
    }
}
