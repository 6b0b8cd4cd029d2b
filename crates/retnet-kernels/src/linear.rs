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
        }
    }

    fn words(&self) -> ParamWords {
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

const BINDINGS: &[Binding] = &[
    PARAMS,
    Binding {
        index: 1,
        name: "weight",
        access: Access::ReadOnly,
    },
    Binding {
        index: 2,
        name: "input",
        access: Access::ReadOnly,
    },
    Binding {
        index: 3,
        name: "output",
        access: Access::ReadWrite,
    },
];
const PARAMS_STRUCT: (&str, &[&str]) = (
    "LinearParams",
    &[
        "rows",
        "in_dim",
        "out_dim",
        "x_row_start",
        "accumulate",
        "alpha",
        "_pad0",
        "_pad1",
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
    Features {
        shader_f16: true,
        subgroups: false,
    },
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
        requires: Features {
            shader_f16,
            subgroups,
        },
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

/// All variants.
pub static KERNELS: &[&Kernel] = &[
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

/// `Y = X · Wᵀ` with whichever of [`matvec`] and [`matmul`] suits the shape: matvec for up to 4
/// rows when `in_dim % 4 == 0` (weights are read once per row), else the tiled matmul.
pub fn linear(format: WeightFormat, reduction: Reduction, params: LinearParams) -> Dispatch {
    const MATVEC_MAX_ROWS: u32 = 4;
    if params.rows <= MATVEC_MAX_ROWS && matvec_supports(&params) {
        matvec(format, reduction, params)
    } else {
        matmul(format, params)
    }
}
