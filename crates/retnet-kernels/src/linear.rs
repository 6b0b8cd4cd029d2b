//! Linear layers `Y = X · Wᵀ` with `W` stored `[out, in]` (PyTorch's layout), optionally fused
//! with a residual update `Y = α·Y + X · Wᵀ`: [`matmul`] (tiled, many tokens, any shape) and
//! [`matvec`] (decode, vectorized, needs `in_dim % 4 == 0`). Also the logits head.

use crate::gated_activation::Activation;
use crate::{
    ceil_div, Binding, Bound, Dim, Dispatch, Features, Kernel, OverrideConstant, ParamWords,
    WeightFormat, FORMATS,
};

/// Parameters of [`matmul`] and [`matvec`].
#[derive(Clone, Copy, Debug)]
pub struct LinearParams {
    /// Rows of Y (tokens).
    pub rows: u32,
    /// Columns of X and W.
    pub in_dim: u32,
    /// Columns of Y, rows of W.
    pub out_dim: u32,
    /// First row of X to read: row r of Y comes from row `x_row_start + r` of X.
    pub x_row_start: u32,
    /// `Some(α)`: `Y = α·Y + X·Wᵀ` (residual add fused); `None`: `Y = X·Wᵀ`.
    pub accumulate: Option<f32>,
    /// RMSNorm epsilon of [`matvec_norm`] (ignored by the other kernels).
    pub norm_eps: f32,
    /// First column of Y written: output `o` of this product is column `y_col_start + o` of Y
    /// (a matrix split by rows computes its columns part by part, [`LinearParams::row_block`]).
    pub y_col_start: u32,
    /// Elements per row of Y; 0 means `out_dim` (Y holds exactly this product's columns).
    pub y_row_stride: u32,
}

impl LinearParams {
    /// `Y[rows, out_dim] = X[rows, in_dim] · Wᵀ`.
    pub fn new(rows: u32, in_dim: u32, out_dim: u32) -> Self {
        LinearParams {
            rows,
            in_dim,
            out_dim,
            x_row_start: 0,
            accumulate: None,
            norm_eps: 0.0,
            y_col_start: 0,
            y_row_stride: 0,
        }
    }

    /// Elements per row of Y.
    pub fn y_stride(&self) -> u32 {
        if self.y_row_stride == 0 {
            self.out_dim
        } else {
            self.y_row_stride
        }
    }

    /// The part of this product computed by rows `[first_row, first_row + rows)` of W, held as
    /// a matrix of their own: `rows` outputs, written to columns `first_row ..` of the same Y.
    /// Each output is the same dot product as in the whole product, so parts give the whole's
    /// values bit for bit.
    pub fn row_block(&self, first_row: u32, rows: u32) -> LinearParams {
        LinearParams {
            out_dim: rows,
            y_col_start: self.y_col_start + first_row,
            y_row_stride: self.y_stride(),
            ..*self
        }
    }

    /// The parameter block for weights stored in `format` (which sets the weight row stride).
    pub(crate) fn words(&self, format: WeightFormat) -> ParamWords {
        self.block(format).words()
    }

    fn block(&self, format: WeightFormat) -> LinearBlock {
        let (accumulate, alpha) = match self.accumulate {
            Some(alpha) => (1, alpha),
            None => (0, 0.0),
        };
        LinearBlock {
            rows: self.rows,
            in_dim: self.in_dim,
            out_dim: self.out_dim,
            x_row_start: self.x_row_start,
            accumulate,
            alpha,
            norm_eps: self.norm_eps,
            y_col_start: self.y_col_start,
            y_stride: self.y_stride(),
            weight_stride: format.row_stride(self.in_dim),
            ..Default::default()
        }
    }
}

param_block! {
    /// The WGSL parameter block of every linear kernel (and [`crate::gemm_coop`]'s).
    pub(crate) struct LinearBlock = "LinearParams" {
        rows: u32,
        in_dim: u32,
        out_dim: u32,
        x_row_start: u32,
        accumulate: u32,
        alpha: f32,
        norm_eps: f32,
        y_col_start: u32,
        y_stride: u32,
        weight_stride: u32,
        head_dim: u32,
        gate_offset: u32,
        gate_stride: u32,
        prologue: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

/// How a matvec reduces partial sums across its workgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// Tree in workgroup memory: runs everywhere.
    Workgroup,
    /// `subgroupAdd`, then one value per subgroup in workgroup memory (needs SUBGROUP).
    Subgroup,
}

impl Reduction {
    /// The best reduction on a device with `features`.
    pub fn for_features(features: Features) -> Reduction {
        if features.subgroups {
            Reduction::Subgroup
        } else {
            Reduction::Workgroup
        }
    }
}

buffers! {
    /// Buffers of [`matmul`], [`matvec`], [`matvec_batch`], [`linear`] and
    /// [`crate::gemm_coop::gemm_coop`].
    pub struct LinearBuffers, bindings BINDINGS {
        /// `W [out_dim, in_dim]` in the kernel's weight format.
        1 weight: ReadOnly,
        /// `X [.., in_dim]` f32 (rows from `x_row_start`).
        2 input: ReadOnly,
        /// `Y [rows, out_dim]` f32 (read too when accumulating).
        3 output: ReadWrite,
    }
}

buffers! {
    /// Buffers of [`matvec_norm`].
    pub struct LinearNormBuffers, bindings NORM_BINDINGS {
        1 weight: ReadOnly,
        2 input: ReadOnly,
        3 output: ReadWrite,
        /// The RMSNorm's weight `[in_dim]` f32.
        4 norm_weight: ReadOnly,
    }
}

buffers! {
    /// Buffers of [`matvec_head_gate`].
    pub struct LinearHeadGateBuffers, bindings HEAD_GATE_BINDINGS {
        1 weight: ReadOnly,
        /// The retention output `[heads·V]` f32, normalized and gated as it is read.
        2 input: ReadOnly,
        3 output: ReadWrite,
        /// The per-head norm's weight `[V]` f32 (not read when [`HeadGate::weighted`] is false:
        /// any buffer binds in its place).
        4 norm_weight: ReadOnly,
        /// The buffer holding the gate's pre-activation g (the q|k|v|g projection).
        5 gate: ReadOnly,
    }
}

const MATMUL_CONSTANTS: &[OverrideConstant] = &[
    OverrideConstant {
        name: "THREADS_N",
        default: 16,
    },
    OverrideConstant {
        name: "THREADS_M",
        default: 16,
    },
    OverrideConstant {
        name: "TILE_K",
        default: 16,
    },
];
/// Outputs per invocation along each axis in matmul.wgsl (`MICRO`).
pub const MATMUL_MICRO_TILE: u32 = 4;

const fn matmul_variant(name: &'static str, source: &'static str, shader_f16: bool) -> Kernel {
    Kernel {
        name,
        source,
        entry_point: "matmul",
        workgroup_size: [
            Dim::Constant("THREADS_N"),
            Dim::Constant("THREADS_M"),
            Dim::Fixed(1),
        ],
        constants: MATMUL_CONSTANTS,
        bindings: BINDINGS,
        params: LinearBlock::STRUCT,
        requires: Features::new(shader_f16, false, false),
    }
}

/// Tiled matmul, by weight format.
pub static MATMUL: [Kernel; FORMATS] = format_variants!(
    "matmul",
    "",
    matmul_variant,
    ["linear_common.wgsl", "matmul.wgsl"]
);

const MATVEC_CONSTANTS: &[OverrideConstant] = &[OverrideConstant {
    name: "WORKGROUP_SIZE",
    default: 128,
}];
/// Outputs per workgroup in matvec_common.wgsl (`OUTPUTS_PER_WORKGROUP`).
pub const MATVEC_OUTPUTS_PER_WORKGROUP: u32 = 4;

const fn matvec_kernel(
    name: &'static str,
    source: &'static str,
    shader_f16: bool,
    entry_point: &'static str,
    subgroups: bool,
    bindings: &'static [Binding],
) -> Kernel {
    Kernel {
        name,
        source,
        entry_point,
        workgroup_size: [
            Dim::Constant("WORKGROUP_SIZE"),
            Dim::Fixed(1),
            Dim::Fixed(1),
        ],
        constants: MATVEC_CONSTANTS,
        bindings,
        params: LinearBlock::STRUCT,
        requires: Features::new(shader_f16, subgroups, false),
    }
}

const fn matvec_workgroup(name: &'static str, source: &'static str, f16: bool) -> Kernel {
    matvec_kernel(name, source, f16, "matvec", false, BINDINGS)
}
const fn matvec_subgroup(name: &'static str, source: &'static str, f16: bool) -> Kernel {
    matvec_kernel(name, source, f16, "matvec_subgroup", true, BINDINGS)
}
const fn matvec_batch_workgroup(name: &'static str, source: &'static str, f16: bool) -> Kernel {
    matvec_kernel(name, source, f16, "matvec_batch", false, BINDINGS)
}
const fn matvec_batch_subgroup(name: &'static str, source: &'static str, f16: bool) -> Kernel {
    matvec_kernel(name, source, f16, "matvec_batch_subgroup", true, BINDINGS)
}
const fn matvec_norm_subgroup(name: &'static str, source: &'static str, f16: bool) -> Kernel {
    matvec_kernel(
        name,
        source,
        f16,
        "matvec_norm_subgroup",
        true,
        NORM_BINDINGS,
    )
}

const fn matvec_batch_norm_subgroup(name: &'static str, source: &'static str, f16: bool) -> Kernel {
    matvec_kernel(
        name,
        source,
        f16,
        "matvec_batch_norm_subgroup",
        true,
        NORM_BINDINGS,
    )
}

const fn matvec_batch_norm_gated_subgroup(
    name: &'static str,
    source: &'static str,
    f16: bool,
) -> Kernel {
    matvec_kernel(
        name,
        source,
        f16,
        "matvec_batch_norm_gated_subgroup",
        true,
        NORM_BINDINGS,
    )
}

const fn matvec_act_lin_workgroup(name: &'static str, source: &'static str, f16: bool) -> Kernel {
    matvec_kernel(name, source, f16, "matvec", false, BINDINGS)
}
const fn matvec_act_lin_subgroup(name: &'static str, source: &'static str, f16: bool) -> Kernel {
    matvec_kernel(name, source, f16, "matvec_subgroup", true, BINDINGS)
}
const fn matvec_batch_act_lin_workgroup(
    name: &'static str,
    source: &'static str,
    f16: bool,
) -> Kernel {
    matvec_kernel(name, source, f16, "matvec_batch", false, BINDINGS)
}
const fn matvec_batch_act_lin_subgroup(
    name: &'static str,
    source: &'static str,
    f16: bool,
) -> Kernel {
    matvec_kernel(name, source, f16, "matvec_batch_subgroup", true, BINDINGS)
}
const fn matvec_head_gate_workgroup(name: &'static str, source: &'static str, f16: bool) -> Kernel {
    matvec_kernel(name, source, f16, "matvec", false, HEAD_GATE_BINDINGS)
}
const fn matvec_head_gate_subgroup(name: &'static str, source: &'static str, f16: bool) -> Kernel {
    matvec_kernel(
        name,
        source,
        f16,
        "matvec_subgroup",
        true,
        HEAD_GATE_BINDINGS,
    )
}

/// Matvec, by reduction ([`Reduction`] order) and weight format.
pub static MATVEC: [[Kernel; FORMATS]; 2] = [
    format_variants!(
        "matvec",
        "/workgroup",
        matvec_workgroup,
        [
            "linear_common.wgsl",
            "matvec_input.wgsl",
            "matvec_common.wgsl",
            "matvec_workgroup.wgsl"
        ]
    ),
    format_variants!(
        "matvec",
        "/subgroup",
        matvec_subgroup,
        [
            "linear_common.wgsl",
            "matvec_input.wgsl",
            "matvec_common.wgsl",
            "matvec_subgroup.wgsl"
        ]
    ),
];

/// Batched matvec, by reduction and weight format.
pub static MATVEC_BATCH: [[Kernel; FORMATS]; 2] = [
    format_variants!(
        "matvec-batch",
        "/workgroup",
        matvec_batch_workgroup,
        [
            "linear_common.wgsl",
            "matvec_input.wgsl",
            "matvec_batch_common.wgsl",
            "matvec_batch_workgroup.wgsl"
        ]
    ),
    format_variants!(
        "matvec-batch",
        "/subgroup",
        matvec_batch_subgroup,
        [
            "linear_common.wgsl",
            "matvec_input.wgsl",
            "matvec_batch_common.wgsl",
            "matvec_batch_subgroup.wgsl"
        ]
    ),
];

/// RMSNorm + matvec (subgroups), by weight format.
pub static MATVEC_NORM: [Kernel; FORMATS] = format_variants!(
    "matvec-norm",
    "/subgroup",
    matvec_norm_subgroup,
    [
        "linear_common.wgsl",
        "matvec_input.wgsl",
        "matvec_common.wgsl",
        "matvec_norm_subgroup.wgsl"
    ]
);

/// RMSNorm + batched matvec (subgroups), by weight format.
pub static MATVEC_BATCH_NORM: [Kernel; FORMATS] = format_variants!(
    "matvec-batch-norm",
    "/subgroup",
    matvec_batch_norm_subgroup,
    [
        "linear_common.wgsl",
        "matvec_input_norm.wgsl",
        "matvec_batch_common.wgsl",
        "matvec_batch_subgroup.wgsl",
        "matvec_batch_norm_subgroup.wgsl"
    ]
);

/// RMSNorm + the FFN's act|lin projection + act(a)·b, batched (subgroups), by weight format.
pub static MATVEC_BATCH_NORM_GATED: [Kernel; FORMATS] = format_variants!(
    "matvec-batch-norm-gated",
    "/subgroup",
    matvec_batch_norm_gated_subgroup,
    [
        "linear_common.wgsl",
        "activation.wgsl",
        "matvec_input_norm.wgsl",
        "matvec_batch_common.wgsl",
        "matvec_batch_subgroup.wgsl",
        "matvec_batch_norm_gated_subgroup.wgsl"
    ]
);

/// Matvec whose input is act(a)·b of the FFN's act|lin projection (decode), by reduction and
/// weight format.
pub static MATVEC_ACT_LIN: [[Kernel; FORMATS]; 2] = [
    format_variants!(
        "matvec-act-lin",
        "/workgroup",
        matvec_act_lin_workgroup,
        [
            "linear_common.wgsl",
            "activation.wgsl",
            "matvec_input_act_lin.wgsl",
            "matvec_common.wgsl",
            "matvec_workgroup.wgsl"
        ]
    ),
    format_variants!(
        "matvec-act-lin",
        "/subgroup",
        matvec_act_lin_subgroup,
        [
            "linear_common.wgsl",
            "activation.wgsl",
            "matvec_input_act_lin.wgsl",
            "matvec_common.wgsl",
            "matvec_subgroup.wgsl"
        ]
    ),
];

/// Batched matvec whose input is act(a)·b (batched decode), by reduction and weight format.
pub static MATVEC_BATCH_ACT_LIN: [[Kernel; FORMATS]; 2] = [
    format_variants!(
        "matvec-batch-act-lin",
        "/workgroup",
        matvec_batch_act_lin_workgroup,
        [
            "linear_common.wgsl",
            "activation.wgsl",
            "matvec_input_act_lin.wgsl",
            "matvec_batch_common.wgsl",
            "matvec_batch_workgroup.wgsl"
        ]
    ),
    format_variants!(
        "matvec-batch-act-lin",
        "/subgroup",
        matvec_batch_act_lin_subgroup,
        [
            "linear_common.wgsl",
            "activation.wgsl",
            "matvec_input_act_lin.wgsl",
            "matvec_batch_common.wgsl",
            "matvec_batch_subgroup.wgsl"
        ]
    ),
];

/// Matvec whose input is the retention output's per-head RMSNorm times silu(g) (decode, one
/// row), by reduction and weight format.
pub static MATVEC_HEAD_GATE: [[Kernel; FORMATS]; 2] = [
    format_variants!(
        "matvec-head-gate",
        "/workgroup",
        matvec_head_gate_workgroup,
        [
            "linear_common.wgsl",
            "activation.wgsl",
            "matvec_input_head_gate.wgsl",
            "matvec_common.wgsl",
            "matvec_workgroup.wgsl"
        ]
    ),
    format_variants!(
        "matvec-head-gate",
        "/subgroup",
        matvec_head_gate_subgroup,
        [
            "linear_common.wgsl",
            "activation.wgsl",
            "matvec_input_head_gate.wgsl",
            "matvec_common.wgsl",
            "matvec_subgroup.wgsl"
        ]
    ),
];

/// Most heads [`matvec_head_gate`] normalizes (`MAX_HEADS` in matvec_input_head_gate.wgsl).
pub const MATVEC_HEAD_GATE_MAX_HEADS: u32 = 256;

/// Rows per workgroup of the batched matvec (`BATCH_ROWS` in matvec_batch_common.wgsl).
pub const MATVEC_BATCH_ROWS: u32 = 8;
/// Outputs per workgroup of the batched matvec (`OUTPUTS_PER_WORKGROUP` in
/// matvec_batch_common.wgsl): as many as [`MATVEC_OUTPUTS_PER_WORKGROUP`]; eight (fewer
/// re-reads of X, twice the accumulators) measured slower on the H200.
pub const MATVEC_BATCH_OUTPUTS_PER_WORKGROUP: u32 = 4;

/// All variants.
pub static KERNELS: &[&Kernel] = &all_formats!(
    MATMUL,
    MATVEC[0],
    MATVEC[1],
    MATVEC_BATCH[0],
    MATVEC_BATCH[1],
    MATVEC_NORM,
    MATVEC_BATCH_NORM,
    MATVEC_BATCH_NORM_GATED,
    MATVEC_ACT_LIN[0],
    MATVEC_ACT_LIN[1],
    MATVEC_BATCH_ACT_LIN[0],
    MATVEC_BATCH_ACT_LIN[1],
    MATVEC_HEAD_GATE[0],
    MATVEC_HEAD_GATE[1]
);

/// The variant of `table` for `format`.
fn by_format(table: &'static [Kernel; FORMATS], format: WeightFormat) -> &'static Kernel {
    format.pick(table)
}

fn by_reduction(
    table: &'static [[Kernel; FORMATS]; 2],
    reduction: Reduction,
) -> &'static [Kernel; FORMATS] {
    match reduction {
        Reduction::Workgroup => &table[0],
        Reduction::Subgroup => &table[1],
    }
}

fn bound<'b, B>(
    kernel: &'static Kernel,
    format: WeightFormat,
    params: &LinearParams,
    workgroups: [u32; 3],
    buffers: crate::BufferList<'b, B>,
) -> Bound<'b, B> {
    bound_block(kernel, params.block(format), workgroups, buffers)
}

/// [`bound`] with a parameter block its caller completed (a prologue's fields).
fn bound_block<'b, B>(
    kernel: &'static Kernel,
    block: LinearBlock,
    workgroups: [u32; 3],
    buffers: crate::BufferList<'b, B>,
) -> Bound<'b, B> {
    Bound {
        dispatch: Dispatch {
            kernel,
            constants: kernel.default_constants(),
            params: block.words(),
            workgroups,
        },
        buffers,
    }
}

/// The `prologue` field that selects the FFN activation in the kernels that apply it
/// (activation.wgsl: 0 silu, 1 exact gelu).
fn activation_code(act: Activation) -> u32 {
    match act {
        Activation::Silu => 0,
        Activation::Gelu => 1,
    }
}

/// Tiled matmul: `weight [out_dim, in_dim]` in `format`, `input [.., in_dim]` f32,
/// `output [rows, out_dim]` f32.
pub fn matmul<'b, B>(
    format: WeightFormat,
    params: LinearParams,
    buffers: LinearBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = by_format(&MATMUL, format);
    let [threads_n, threads_m, _] = kernel.workgroup_size(&kernel.default_constants());
    let workgroups = [
        ceil_div(params.out_dim, threads_n * MATMUL_MICRO_TILE),
        ceil_div(params.rows, threads_m * MATMUL_MICRO_TILE),
        1,
    ];
    bound(kernel, format, &params, workgroups, buffers.in_order())
}

/// Whether [`matvec`] can compute this shape (vec4 loads need `in_dim % 4 == 0`).
pub fn matvec_supports(params: &LinearParams) -> bool {
    params.in_dim % 4 == 0 && params.in_dim > 0 && params.out_dim > 0
}

/// Matrix-vector product per row (decode); requires [`matvec_supports`]. At most 65535 rows.
pub fn matvec<'b, B>(
    format: WeightFormat,
    reduction: Reduction,
    params: LinearParams,
    buffers: LinearBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = by_format(by_reduction(&MATVEC, reduction), format);
    let workgroups = [
        ceil_div(params.out_dim, MATVEC_OUTPUTS_PER_WORKGROUP),
        params.rows,
        1,
    ];
    bound(kernel, format, &params, workgroups, buffers.in_order())
}

/// Batched matrix-vector product: [`MATVEC_BATCH_ROWS`] rows per workgroup, each weight read once
/// for all of them. Same requirements as [`matvec`].
pub fn matvec_batch<'b, B>(
    format: WeightFormat,
    reduction: Reduction,
    params: LinearParams,
    buffers: LinearBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = by_format(by_reduction(&MATVEC_BATCH, reduction), format);
    let workgroups = [
        ceil_div(params.out_dim, MATVEC_BATCH_OUTPUTS_PER_WORKGROUP),
        ceil_div(params.rows, MATVEC_BATCH_ROWS),
        1,
    ];
    bound(kernel, format, &params, workgroups, buffers.in_order())
}

/// `Y = rms_norm(X) · Wᵀ` for decode, the norm (weight `norm_weight`, epsilon
/// `params.norm_eps`) fused into [`matvec`] for one row and into [`matvec_batch`] for more (up
/// to [`MATVEC_BATCH_MAX_ROWS`] as the model uses it; any count works). Needs subgroups and
/// [`matvec_supports`].
pub fn matvec_norm<'b, B>(
    format: WeightFormat,
    params: LinearParams,
    buffers: LinearNormBuffers<'b, B>,
) -> Bound<'b, B> {
    let (table, workgroups) = if params.rows <= 1 {
        let grid = [
            ceil_div(params.out_dim, MATVEC_OUTPUTS_PER_WORKGROUP),
            params.rows,
            1,
        ];
        (&MATVEC_NORM, grid)
    } else {
        let grid = [
            ceil_div(params.out_dim, MATVEC_BATCH_OUTPUTS_PER_WORKGROUP),
            ceil_div(params.rows, MATVEC_BATCH_ROWS),
            1,
        ];
        (&MATVEC_BATCH_NORM, grid)
    };
    bound(
        by_format(table, format),
        format,
        &params,
        workgroups,
        buffers.in_order(),
    )
}

/// The FFN's input side for a batch in one dispatch: `Y[r, j] = act(a_j)·b_j` with
/// `a | b = rms_norm(X[r]) · Wᵀ` (the norm's weight `norm_weight`, epsilon `params.norm_eps`),
/// W the act|lin matrix of `params.out_dim = 2F` rows (a from rows `[0, F)`, b from
/// `[F, 2F)`) and Y F wide (`params.y_row_stride`, `y_col_start` and `accumulate` apply to Y).
/// It is [`matvec_norm`] followed by [`crate::gated_activation::gated_activation`], without
/// the act|lin buffer between them. Needs subgroups and
/// [`matvec_batch_norm_gated_supports`].
pub fn matvec_batch_norm_gated<'b, B>(
    format: WeightFormat,
    act: Activation,
    params: LinearParams,
    buffers: LinearNormBuffers<'b, B>,
) -> Bound<'b, B> {
    let half = params.out_dim / 2;
    let kernel = by_format(&MATVEC_BATCH_NORM_GATED, format);
    let mut block = params.block(format);
    if params.y_row_stride == 0 {
        block.y_stride = half;
    }
    block.prologue = activation_code(act);
    let workgroups = [
        ceil_div(half, 2),
        ceil_div(params.rows, MATVEC_BATCH_ROWS),
        1,
    ];
    bound_block(kernel, block, workgroups, buffers.in_order())
}

/// Whether [`matvec_batch_norm_gated`] takes `params`: the matvec's shapes
/// ([`matvec_supports`]), 2 to [`MATVEC_BATCH_MAX_ROWS`] rows, and an even, non-zero `out_dim`
/// (the two halves a | b).
pub fn matvec_batch_norm_gated_supports(params: &LinearParams) -> bool {
    matvec_supports(params)
        && (2..=MATVEC_BATCH_MAX_ROWS).contains(&params.rows)
        && params.out_dim >= 2
        && params.out_dim % 2 == 0
}

/// Largest row count [`linear`] gives the batched matvec; more rows go to the tiled matmul.
pub const MATVEC_BATCH_MAX_ROWS: u32 = 32;

/// `Y = X · Wᵀ` with whichever portable kernel suits the shape: [`matvec`] for one row,
/// [`matvec_batch`] for up to [`MATVEC_BATCH_MAX_ROWS`] (both need `in_dim % 4 == 0`), else the
/// tiled [`matmul`]. (The tensor-core [`crate::gemm_coop::gemm_coop`] depends on the device's
/// tile, so the caller chooses it.)
pub fn linear<'b, B>(
    format: WeightFormat,
    reduction: Reduction,
    params: LinearParams,
    buffers: LinearBuffers<'b, B>,
) -> Bound<'b, B> {
    if !matvec_supports(&params) || params.rows > MATVEC_BATCH_MAX_ROWS {
        matmul(format, params, buffers)
    } else if params.rows <= 1 {
        matvec(format, reduction, params, buffers)
    } else {
        matvec_batch(format, reduction, params, buffers)
    }
}

/// `Y (= α·Y +) act(A)·B · Wᵀ` for decode: `input` holds the FFN's act|lin projection
/// `[rows, 2·in_dim]` (A its first `in_dim` columns, B the rest) and the gating of
/// `gated_activation` is computed as the input is read, so it needs no dispatch of its own.
/// [`matvec`] for one row, [`matvec_batch`] for up to [`MATVEC_BATCH_MAX_ROWS`]; same
/// requirements ([`matvec_supports`]).
pub fn matvec_act_lin<'b, B>(
    format: WeightFormat,
    reduction: Reduction,
    act: Activation,
    params: LinearParams,
    buffers: LinearBuffers<'b, B>,
) -> Bound<'b, B> {
    debug_assert!(params.rows <= MATVEC_BATCH_MAX_ROWS);
    let (table, workgroups) = if params.rows <= 1 {
        let rows = [
            ceil_div(params.out_dim, MATVEC_OUTPUTS_PER_WORKGROUP),
            params.rows,
            1,
        ];
        (&MATVEC_ACT_LIN, rows)
    } else {
        let rows = [
            ceil_div(params.out_dim, MATVEC_BATCH_OUTPUTS_PER_WORKGROUP),
            ceil_div(params.rows, MATVEC_BATCH_ROWS),
            1,
        ];
        (&MATVEC_BATCH_ACT_LIN, rows)
    };
    let kernel = by_format(by_reduction(table, reduction), format);
    let mut block = params.block(format);
    block.prologue = activation_code(act);
    bound_block(kernel, block, workgroups, buffers.in_order())
}

/// The per-head norm and output gate that [`matvec_head_gate`] applies to its input.
#[derive(Clone, Copy, Debug)]
pub struct HeadGate {
    /// V: the width each head is normalized over; `in_dim` is a whole number of heads, at most
    /// [`MATVEC_HEAD_GATE_MAX_HEADS`].
    pub head_dim: u32,
    /// Added to the mean square.
    pub eps: f32,
    /// Element index of g's first column in the gate buffer (g of row r starts at
    /// `gate_offset + r·gate_stride`).
    pub gate_offset: u32,
    /// Elements between rows of the gate buffer.
    pub gate_stride: u32,
    /// Whether the norm has a weight (fla) or not (torchscale).
    pub weighted: bool,
}

/// Whether [`matvec_head_gate`] can compute this product with this norm.
pub fn matvec_head_gate_supports(params: &LinearParams, gate: &HeadGate) -> bool {
    matvec_supports(params)
        && params.rows == 1
        && gate.head_dim > 0
        && params.in_dim % gate.head_dim == 0
        && params.in_dim / gate.head_dim <= MATVEC_HEAD_GATE_MAX_HEADS
}

/// `Y (= α·Y +) (head_norm(X) ⊙ silu(g)) · Wᵀ` for one decode row: X is the retention output
/// `[heads·V]`, normalized per head (RMS over V, the optional weight) and multiplied by silu of
/// the gate as it is read — what `head_norm_gate` computes, without its dispatch. Requires
/// [`matvec_head_gate_supports`].
pub fn matvec_head_gate<'b, B>(
    format: WeightFormat,
    reduction: Reduction,
    gate: HeadGate,
    params: LinearParams,
    buffers: LinearHeadGateBuffers<'b, B>,
) -> Bound<'b, B> {
    debug_assert!(matvec_head_gate_supports(&params, &gate));
    let kernel = by_format(by_reduction(&MATVEC_HEAD_GATE, reduction), format);
    let mut block = params.block(format);
    block.norm_eps = gate.eps;
    block.head_dim = gate.head_dim;
    block.gate_offset = gate.gate_offset;
    block.gate_stride = gate.gate_stride;
    block.prologue = u32::from(gate.weighted);
    let workgroups = [
        ceil_div(params.out_dim, MATVEC_OUTPUTS_PER_WORKGROUP),
        params.rows,
        1,
    ];
    bound_block(kernel, block, workgroups, buffers.in_order())
}
