//! FFN gating `out = act(a) ⊙ l`, act = silu or exact (erf) gelu.

use crate::retention::Strided;
use crate::{ceil_div, Bound, Dim, Dispatch, Features, Kernel, OverrideConstant};

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
buffers! {
    /// Buffers of [`gated_activation`] (`act_input` and `linear_input` may be one buffer).
    pub struct GatedActivationBuffers, bindings BINDINGS {
        1 act_input: ReadOnly,
        2 linear_input: ReadOnly,
        3 output: ReadWrite,
    }
}

param_block! {
    /// The WGSL parameter block of [`gated_activation`].
    pub(crate) struct GatedActivationBlock = "GatedActivationParams" {
        tokens: u32,
        width: u32,
        act_offset: u32,
        act_stride: u32,
        linear_offset: u32,
        linear_stride: u32,
        out_offset: u32,
        out_stride: u32,
    }
}

const fn variant(name: &'static str, entry_point: &'static str) -> Kernel {
    Kernel {
        name,
        source: shader!("activation.wgsl", "gated_activation.wgsl"),
        entry_point,
        workgroup_size: [
            Dim::Constant("WORKGROUP_SIZE"),
            Dim::Fixed(1),
            Dim::Fixed(1),
        ],
        constants: CONSTANTS,
        bindings: BINDINGS,
        params: GatedActivationBlock::STRUCT,
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
pub fn gated_activation<'b, B>(
    activation: Activation,
    params: GatedActivationParams,
    buffers: GatedActivationBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = match activation {
        Activation::Silu => &SILU,
        Activation::Gelu => &GELU,
    };
    let constants = kernel.default_constants();
    let [x, _, _] = kernel.workgroup_size(&constants);
    let block = GatedActivationBlock {
        tokens: params.tokens,
        width: params.width,
        act_offset: params.act.offset,
        act_stride: params.act.stride,
        linear_offset: params.linear.offset,
        linear_stride: params.linear.stride,
        out_offset: params.out.offset,
        out_stride: params.out.stride,
    };
    Bound {
        dispatch: Dispatch {
            kernel,
            constants,
            params: block.words(),
            workgroups: [ceil_div(params.width, x), params.tokens, 1],
        },
        buffers: buffers.in_order(),
    }
}
