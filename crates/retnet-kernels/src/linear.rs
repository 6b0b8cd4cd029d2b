//! Linear layers `Y = X · Wᵀ` with `W` stored `[out, in]` (PyTorch's layout), optionally fused
//! with a residual update `Y = α·Y + X · Wᵀ`: [`matmul`] (tiled, many tokens, any shape) and
//! [`matvec`] (decode, vectorized, needs `in_dim % 4 == 0`). Also the logits head.

use crate::{
    ceil_div, f, Access, Binding, Dim, Dispatch, Features, Kernel, OverrideConstant, ParamWords,
    WeightFormat, PARAMS,
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

    pub(crate) fn words(&self) -> ParamWords {
        let (accumulate, alpha) = match self.accumulate {
            Some(alpha) => (1, alpha),
            None => (0, 0.0),
        };
        ParamWords::new(&[
            self.rows,
            self.in_dim,
            self.out_dim,
            self.x_row_start,
            accumulate,
            f(alpha),
            f(self.norm_eps),
            self.y_col_start,
            self.y_stride(),
        ])
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

const WEIGHT: Binding = Binding {
    index: 1,
    name: "weight",
    access: Access::ReadOnly,
};
const INPUT: Binding = Binding {
    index: 2,
    name: "input",
    access: Access::ReadOnly,
};
const OUTPUT: Binding = Binding {
    index: 3,
    name: "output",
    access: Access::ReadWrite,
};
const BINDINGS: &[Binding] = &[PARAMS, WEIGHT, INPUT, OUTPUT];
pub(crate) const PARAMS_STRUCT: (&str, &[&str]) = (
    "LinearParams",
    &[
        "rows",
        "in_dim",
        "out_dim",
        "x_row_start",
        "accumulate",
        "alpha",
        "norm_eps",
        "y_col_start",
        "y_stride",
        "_pad1",
        "_pad2",
        "_pad3",
    ],
);

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

const fn matmul_variant(name: &'static str, source: &'static str, requires: Features) -> Kernel {
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
        params: PARAMS_STRUCT,
        requires,
    }
}

/// Tiled matmul, f32 weights.
pub static MATMUL_F32: Kernel = matmul_variant(
    "matmul/f32",
    shader!("weights_f32.wgsl", "linear_common.wgsl", "matmul.wgsl"),
    Features::NONE,
);
/// Tiled matmul, native f16 weights.
pub static MATMUL_F16: Kernel = matmul_variant(
    "matmul/f16",
    concat!(
        "enable f16;\n",
        shader!("weights_f16.wgsl", "linear_common.wgsl", "matmul.wgsl")
    ),
    Features::new(true, false, false),
);
/// Tiled matmul, packed f16 weights.
pub static MATMUL_F16_PACKED: Kernel = matmul_variant(
    "matmul/f16-packed",
    shader!(
        "weights_f16_packed.wgsl",
        "linear_common.wgsl",
        "matmul.wgsl"
    ),
    Features::NONE,
);

const MATVEC_CONSTANTS: &[OverrideConstant] = &[OverrideConstant {
    name: "WORKGROUP_SIZE",
    default: 128,
}];
/// Outputs per workgroup in matvec_common.wgsl (`OUTPUTS_PER_WORKGROUP`).
pub const MATVEC_OUTPUTS_PER_WORKGROUP: u32 = 4;

const fn matvec_variant(
    name: &'static str,
    source: &'static str,
    reduction: Reduction,
    shader_f16: bool,
) -> Kernel {
    let subgroups = matches!(reduction, Reduction::Subgroup);
    Kernel {
        name,
        source,
        entry_point: if subgroups {
            "matvec_subgroup"
        } else {
            "matvec"
        },
        workgroup_size: [
            Dim::Constant("WORKGROUP_SIZE"),
            Dim::Fixed(1),
            Dim::Fixed(1),
        ],
        constants: MATVEC_CONSTANTS,
        bindings: BINDINGS,
        params: PARAMS_STRUCT,
        requires: Features::new(shader_f16, subgroups, false),
    }
}

/// Matvec, f32 weights, workgroup reduction.
pub static MATVEC_F32: Kernel = matvec_variant(
    "matvec/f32/workgroup",
    shader!(
        "weights_f32.wgsl",
        "linear_common.wgsl",
        "matvec_common.wgsl",
        "matvec_workgroup.wgsl"
    ),
    Reduction::Workgroup,
    false,
);
/// Matvec, native f16 weights, workgroup reduction.
pub static MATVEC_F16: Kernel = matvec_variant(
    "matvec/f16/workgroup",
    concat!(
        "enable f16;\n",
        shader!(
            "weights_f16.wgsl",
            "linear_common.wgsl",
            "matvec_common.wgsl",
            "matvec_workgroup.wgsl"
        )
    ),
    Reduction::Workgroup,
    true,
);
/// Matvec, packed f16 weights, workgroup reduction.
pub static MATVEC_F16_PACKED: Kernel = matvec_variant(
    "matvec/f16-packed/workgroup",
    shader!(
        "weights_f16_packed.wgsl",
        "linear_common.wgsl",
        "matvec_common.wgsl",
        "matvec_workgroup.wgsl"
    ),
    Reduction::Workgroup,
    false,
);
/// Matvec, f32 weights, subgroup reduction.
pub static MATVEC_F32_SUBGROUP: Kernel = matvec_variant(
    "matvec/f32/subgroup",
    shader!(
        "weights_f32.wgsl",
        "linear_common.wgsl",
        "matvec_common.wgsl",
        "matvec_subgroup.wgsl"
    ),
    Reduction::Subgroup,
    false,
);
/// Matvec, native f16 weights, subgroup reduction.
pub static MATVEC_F16_SUBGROUP: Kernel = matvec_variant(
    "matvec/f16/subgroup",
    concat!(
        "enable f16;\n",
        shader!(
            "weights_f16.wgsl",
            "linear_common.wgsl",
            "matvec_common.wgsl",
            "matvec_subgroup.wgsl"
        )
    ),
    Reduction::Subgroup,
    true,
);
/// Matvec, packed f16 weights, subgroup reduction.
pub static MATVEC_F16_PACKED_SUBGROUP: Kernel = matvec_variant(
    "matvec/f16-packed/subgroup",
    shader!(
        "weights_f16_packed.wgsl",
        "linear_common.wgsl",
        "matvec_common.wgsl",
        "matvec_subgroup.wgsl"
    ),
    Reduction::Subgroup,
    false,
);

const fn matvec_batch_variant(
    name: &'static str,
    source: &'static str,
    reduction: Reduction,
    shader_f16: bool,
) -> Kernel {
    let subgroups = matches!(reduction, Reduction::Subgroup);
    Kernel {
        entry_point: if subgroups {
            "matvec_batch_subgroup"
        } else {
            "matvec_batch"
        },
        ..matvec_variant(name, source, reduction, shader_f16)
    }
}

/// Batched matvec, f32 weights, workgroup reduction.
pub static MATVEC_BATCH_F32: Kernel = matvec_batch_variant(
    "matvec-batch/f32/workgroup",
    shader!(
        "weights_f32.wgsl",
        "linear_common.wgsl",
        "matvec_batch_common.wgsl",
        "matvec_batch_workgroup.wgsl"
    ),
    Reduction::Workgroup,
    false,
);
/// Batched matvec, native f16 weights, workgroup reduction.
pub static MATVEC_BATCH_F16: Kernel = matvec_batch_variant(
    "matvec-batch/f16/workgroup",
    concat!(
        "enable f16;\n",
        shader!(
            "weights_f16.wgsl",
            "linear_common.wgsl",
            "matvec_batch_common.wgsl",
            "matvec_batch_workgroup.wgsl"
        )
    ),
    Reduction::Workgroup,
    true,
);
/// Batched matvec, packed f16 weights, workgroup reduction.
pub static MATVEC_BATCH_F16_PACKED: Kernel = matvec_batch_variant(
    "matvec-batch/f16-packed/workgroup",
    shader!(
        "weights_f16_packed.wgsl",
        "linear_common.wgsl",
        "matvec_batch_common.wgsl",
        "matvec_batch_workgroup.wgsl"
    ),
    Reduction::Workgroup,
    false,
);
/// Batched matvec, f32 weights, subgroup reduction.
pub static MATVEC_BATCH_F32_SUBGROUP: Kernel = matvec_batch_variant(
    "matvec-batch/f32/subgroup",
    shader!(
        "weights_f32.wgsl",
        "linear_common.wgsl",
        "matvec_batch_common.wgsl",
        "matvec_batch_subgroup.wgsl"
    ),
    Reduction::Subgroup,
    false,
);
/// Batched matvec, native f16 weights, subgroup reduction.
pub static MATVEC_BATCH_F16_SUBGROUP: Kernel = matvec_batch_variant(
    "matvec-batch/f16/subgroup",
    concat!(
        "enable f16;\n",
        shader!(
            "weights_f16.wgsl",
            "linear_common.wgsl",
            "matvec_batch_common.wgsl",
            "matvec_batch_subgroup.wgsl"
        )
    ),
    Reduction::Subgroup,
    true,
);
/// Batched matvec, packed f16 weights, subgroup reduction.
pub static MATVEC_BATCH_F16_PACKED_SUBGROUP: Kernel = matvec_batch_variant(
    "matvec-batch/f16-packed/subgroup",
    shader!(
        "weights_f16_packed.wgsl",
        "linear_common.wgsl",
        "matvec_batch_common.wgsl",
        "matvec_batch_subgroup.wgsl"
    ),
    Reduction::Subgroup,
    false,
);
const fn matvec_norm_variant(name: &'static str, source: &'static str, shader_f16: bool) -> Kernel {
    Kernel {
        entry_point: "matvec_norm_subgroup",
        bindings: &[
            PARAMS,
            WEIGHT,
            INPUT,
            OUTPUT,
            Binding {
                index: 4,
                name: "norm_weight",
                access: Access::ReadOnly,
            },
        ],
        ..matvec_variant(name, source, Reduction::Subgroup, shader_f16)
    }
}

/// RMSNorm + matvec, f32 weights (subgroups).
pub static MATVEC_NORM_F32: Kernel = matvec_norm_variant(
    "matvec-norm/f32/subgroup",
    shader!(
        "weights_f32.wgsl",
        "linear_common.wgsl",
        "matvec_common.wgsl",
        "matvec_norm_subgroup.wgsl"
    ),
    false,
);
/// RMSNorm + matvec, native f16 weights (subgroups).
pub static MATVEC_NORM_F16: Kernel = matvec_norm_variant(
    "matvec-norm/f16/subgroup",
    concat!(
        "enable f16;\n",
        shader!(
            "weights_f16.wgsl",
            "linear_common.wgsl",
            "matvec_common.wgsl",
            "matvec_norm_subgroup.wgsl"
        )
    ),
    true,
);
/// RMSNorm + matvec, packed f16 weights (subgroups).
pub static MATVEC_NORM_F16_PACKED: Kernel = matvec_norm_variant(
    "matvec-norm/f16-packed/subgroup",
    shader!(
        "weights_f16_packed.wgsl",
        "linear_common.wgsl",
        "matvec_common.wgsl",
        "matvec_norm_subgroup.wgsl"
    ),
    false,
);

/// Rows per workgroup of the batched matvec (`BATCH_ROWS` in matvec_batch_common.wgsl).
pub const MATVEC_BATCH_ROWS: u32 = 8;

/// All variants.
pub static KERNELS: &[&Kernel] = &[
    &MATVEC_BATCH_F32,
    &MATVEC_BATCH_F16,
    &MATVEC_BATCH_F16_PACKED,
    &MATVEC_BATCH_F32_SUBGROUP,
    &MATVEC_BATCH_F16_SUBGROUP,
    &MATVEC_BATCH_F16_PACKED_SUBGROUP,
    &MATVEC_NORM_F32,
    &MATVEC_NORM_F16,
    &MATVEC_NORM_F16_PACKED,
    &MATMUL_F32,
    &MATMUL_F16,
    &MATMUL_F16_PACKED,
    &MATVEC_F32,
    &MATVEC_F16,
    &MATVEC_F16_PACKED,
    &MATVEC_F32_SUBGROUP,
    &MATVEC_F16_SUBGROUP,
    &MATVEC_F16_PACKED_SUBGROUP,
];

/// Tiled matmul. Buffers: `weight [out_dim, in_dim]` in `format`, `input [.., in_dim]` f32,
/// `output [rows, out_dim]` f32.
pub fn matmul(format: WeightFormat, params: LinearParams) -> Dispatch {
    let kernel = match format {
        WeightFormat::F32 => &MATMUL_F32,
        WeightFormat::F16 => &MATMUL_F16,
        WeightFormat::F16Packed => &MATMUL_F16_PACKED,
    };
    let constants = kernel.default_constants();
    let [threads_n, threads_m, _] = kernel.workgroup_size(&constants);
    Dispatch {
        kernel,
        constants,
        params: params.words(),
        workgroups: [
            ceil_div(params.out_dim, threads_n * MATMUL_MICRO_TILE),
            ceil_div(params.rows, threads_m * MATMUL_MICRO_TILE),
            1,
        ],
    }
}

/// Whether [`matvec`] can compute this shape (vec4 loads need `in_dim % 4 == 0`).
pub fn matvec_supports(params: &LinearParams) -> bool {
    params.in_dim % 4 == 0 && params.in_dim > 0 && params.out_dim > 0
}

/// Matrix-vector product per row (decode). Same buffers as [`matmul`]; requires
/// [`matvec_supports`]. At most 65535 rows.
pub fn matvec(format: WeightFormat, reduction: Reduction, params: LinearParams) -> Dispatch {
    let kernel = match (format, reduction) {
        (WeightFormat::F32, Reduction::Workgroup) => &MATVEC_F32,
        (WeightFormat::F16, Reduction::Workgroup) => &MATVEC_F16,
        (WeightFormat::F16Packed, Reduction::Workgroup) => &MATVEC_F16_PACKED,
        (WeightFormat::F32, Reduction::Subgroup) => &MATVEC_F32_SUBGROUP,
        (WeightFormat::F16, Reduction::Subgroup) => &MATVEC_F16_SUBGROUP,
        (WeightFormat::F16Packed, Reduction::Subgroup) => &MATVEC_F16_PACKED_SUBGROUP,
    };
    Dispatch {
        kernel,
        constants: kernel.default_constants(),
        params: params.words(),
        workgroups: [
            ceil_div(params.out_dim, MATVEC_OUTPUTS_PER_WORKGROUP),
            params.rows,
            1,
        ],
    }
}

/// Batched matrix-vector product: [`MATVEC_BATCH_ROWS`] rows per workgroup, each weight read once
/// for all of them. Same buffers and requirements as [`matvec`].
pub fn matvec_batch(format: WeightFormat, reduction: Reduction, params: LinearParams) -> Dispatch {
    let kernel = match (format, reduction) {
        (WeightFormat::F32, Reduction::Workgroup) => &MATVEC_BATCH_F32,
        (WeightFormat::F16, Reduction::Workgroup) => &MATVEC_BATCH_F16,
        (WeightFormat::F16Packed, Reduction::Workgroup) => &MATVEC_BATCH_F16_PACKED,
        (WeightFormat::F32, Reduction::Subgroup) => &MATVEC_BATCH_F32_SUBGROUP,
        (WeightFormat::F16, Reduction::Subgroup) => &MATVEC_BATCH_F16_SUBGROUP,
        (WeightFormat::F16Packed, Reduction::Subgroup) => &MATVEC_BATCH_F16_PACKED_SUBGROUP,
    };
    Dispatch {
        kernel,
        constants: kernel.default_constants(),
        params: params.words(),
        workgroups: [
            ceil_div(params.out_dim, MATVEC_OUTPUTS_PER_WORKGROUP),
            ceil_div(params.rows, MATVEC_BATCH_ROWS),
            1,
        ],
    }
}

/// `Y = rms_norm(X) · Wᵀ` for decode, the norm (weights `g`, epsilon `params.norm_eps`) fused
/// into [`matvec`]: buffers `weight`, `input`, `output` as for [`matvec`], then `g [in_dim]` f32.
/// Needs subgroups and [`matvec_supports`].
pub fn matvec_norm(format: WeightFormat, params: LinearParams) -> Dispatch {
    let kernel = match format {
        WeightFormat::F32 => &MATVEC_NORM_F32,
        WeightFormat::F16 => &MATVEC_NORM_F16,
        WeightFormat::F16Packed => &MATVEC_NORM_F16_PACKED,
    };
    Dispatch {
        kernel,
        constants: kernel.default_constants(),
        params: params.words(),
        workgroups: [
            ceil_div(params.out_dim, MATVEC_OUTPUTS_PER_WORKGROUP),
            params.rows,
            1,
        ],
    }
}

/// Largest row count [`linear`] gives the batched matvec; more rows go to the tiled matmul.
pub const MATVEC_BATCH_MAX_ROWS: u32 = 32;

/// `Y = X · Wᵀ` with whichever portable kernel suits the shape: [`matvec`] for one row,
/// [`matvec_batch`] for up to [`MATVEC_BATCH_MAX_ROWS`] (both need `in_dim % 4 == 0`), else the
/// tiled [`matmul`]. (The tensor-core [`crate::gemm_coop::gemm_coop`] depends on the device's
/// tile, so the caller chooses it.)
pub fn linear(format: WeightFormat, reduction: Reduction, params: LinearParams) -> Dispatch {
    if !matvec_supports(&params) || params.rows > MATVEC_BATCH_MAX_ROWS {
        matmul(format, params)
    } else if params.rows <= 1 {
        matvec(format, reduction, params)
    } else {
        matvec_batch(format, reduction, params)
    }
}
