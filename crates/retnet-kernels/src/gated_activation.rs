//! FFN gating `out = act(a) ⊙ l`, act = silu or exact (erf) gelu.

use crate::retention::Strided;
use crate::{
    ceil_div, Access, Binding, Dim, Dispatch, Features, Kernel, OverrideConstant, ParamWords,
    PARAMS,
};

/// The activation applied to `a`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// x·sigmoid(x) (`swish`).
    Silu,
    /// 0.5·x·(1 + erf(x/√2)), erf by a fit with relative error < 1.2e-7.
    Gelu,
}

/// Parameters of [`gated_activation`].
#[derive(Clone, Copy, Debug)]
pub struct GatedActivationParams {
    /// Tokens (at most 65535).
    pub tokens: u32,
    /// Elements per token.
    pub width: u32,
    /// Layout of `a`, the activated input.
    pub act: Strided,
    /// Layout of `l`, the linear input.
    pub linear: Strided,
    /// Layout of the result.
    pub out: Strided,
}

const CONSTANTS: &[OverrideConstant] = &[OverrideConstant {
    name: "WORKGROUP_SIZE",
    default: 256,
}];
const BINDINGS: &[Binding] = &[
    PARAMS,
    Binding {
        index: 1,
        name: "act_input",
        access: Access::ReadOnly,
    },
    Binding {
        index: 2,
        name: "linear_input",
        access: Access::ReadOnly,
    },
    Binding {
        index: 3,
        name: "output",
        access: Access::ReadWrite,
    },
];
const PARAMS_STRUCT: (&str, &[&str]) = (
    "GatedActivationParams",
    &[
        "tokens",
        "width",
        "act_offset",
        "act_stride",
        "linear_offset",
        "linear_stride",
        "out_offset",
        "out_stride",
    ],
);

const fn variant(name: &'static str, entry_point: &'static str) -> Kernel {
    Kernel {
        name,
        source: shader!("gated_activation.wgsl"),
        entry_point,
        workgroup_size: [
            Dim::Constant("WORKGROUP_SIZE"),
            Dim::Fixed(1),
            Dim::Fixed(1),
        ],
        constants: CONSTANTS,
        bindings: BINDINGS,
        params: PARAMS_STRUCT,
        requires: Features::NONE,
    }
}

/// silu(a) ⊙ l.
pub static SILU: Kernel = variant("gated_activation/silu", "silu_gate");
/// gelu(a) ⊙ l.
pub static GELU: Kernel = variant("gated_activation/gelu", "gelu_gate");

/// All variants.
pub static KERNELS: &[&Kernel] = &[&SILU, &GELU];

/// Buffers: `a`, `l` (may be the same buffer), output.
pub fn gated_activation(activation: Activation, params: GatedActivationParams) -> Dispatch {
    let kernel = match activation {
        Activation::Silu => &SILU,
        Activation::Gelu => &GELU,
    };
    let constants = kernel.default_constants();
    let [x, _, _] = kernel.workgroup_size(&constants);
    Dispatch {
        kernel,
        constants,
        params: ParamWords::new(&[
            params.tokens,
            params.width,
            params.act.offset,
            params.act.stride,
            params.linear.offset,
            params.linear.stride,
            params.out.offset,
            params.out.stride,
        ]),
        workgroups: [ceil_div(params.width, x), params.tokens, 1],
    }
}
