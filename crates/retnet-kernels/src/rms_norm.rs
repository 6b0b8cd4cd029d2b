//! RMSNorm over rows: `y = x / sqrt(mean(x²) + eps) ⊙ w`, with or without the weight `w`.

use crate::{
    f, Access, Binding, Dim, Dispatch, Features, Kernel, OverrideConstant, ParamWords, PARAMS,
};

/// Parameters of [`rms_norm`].
#[derive(Clone, Copy, Debug)]
pub struct RmsNormParams {
    /// Number of rows (each normalized on its own; at most 65535).
    pub rows: u32,
    /// Row width.
    pub dim: u32,
    /// Added to the mean square.
    pub eps: f32,
}

const CONSTANTS: &[OverrideConstant] = &[OverrideConstant {
    name: "WORKGROUP_SIZE",
    default: 256,
}];
const PARAMS_STRUCT: (&str, &[&str]) = ("RmsNormParams", &["rows", "dim", "eps", "_pad"]);
const SOURCE: &str = shader!("rms_norm.wgsl");

/// With a weight `[dim]`.
pub static WEIGHTED: Kernel = Kernel {
    name: "rms_norm/weighted",
    source: SOURCE,
    entry_point: "rms_norm",
    workgroup_size: [
        Dim::Constant("WORKGROUP_SIZE"),
        Dim::Fixed(1),
        Dim::Fixed(1),
    ],
    constants: CONSTANTS,
    bindings: &[
        PARAMS,
        Binding {
            index: 1,
            name: "input",
            access: Access::ReadOnly,
        },
        Binding {
            index: 2,
            name: "norm_weight",
            access: Access::ReadOnly,
        },
        Binding {
            index: 3,
            name: "output",
            access: Access::ReadWrite,
        },
    ],
    params: PARAMS_STRUCT,
    requires: Features::NONE,
};

/// Without a weight.
pub static UNWEIGHTED: Kernel = Kernel {
    name: "rms_norm/unweighted",
    source: SOURCE,
    entry_point: "rms_norm_unweighted",
    workgroup_size: [
        Dim::Constant("WORKGROUP_SIZE"),
        Dim::Fixed(1),
        Dim::Fixed(1),
    ],
    constants: CONSTANTS,
    bindings: &[
        PARAMS,
        Binding {
            index: 1,
            name: "input",
            access: Access::ReadOnly,
        },
        Binding {
            index: 3,
            name: "output",
            access: Access::ReadWrite,
        },
    ],
    params: PARAMS_STRUCT,
    requires: Features::NONE,
};

/// All variants.
pub static KERNELS: &[&Kernel] = &[&WEIGHTED, &UNWEIGHTED];

/// RMSNorm of each row. Buffers: `input [rows, dim]`, then `norm_weight [dim]` if `weighted`,
/// then `output [rows, dim]` (must not be `input`).
pub fn rms_norm(weighted: bool, params: RmsNormParams) -> Dispatch {
    let kernel = if weighted { &WEIGHTED } else { &UNWEIGHTED };
    Dispatch {
        kernel,
        constants: kernel.default_constants(),
        params: ParamWords::new(&[params.rows, params.dim, f(params.eps)]),
        workgroups: [params.rows, 1, 1],
    }
}
