//! Per-head RMSNorm over V (optional weight) fused with the output gate silu(g).

use crate::retention::Strided;
use crate::{
    f, Access, Binding, Dim, Dispatch, Features, Kernel, OverrideConstant, ParamWords, PARAMS,
};

/// Parameters of [`head_norm_gate`].
#[derive(Clone, Copy, Debug)]
pub struct HeadNormGateParams {
    /// Tokens (at most 65535).
    pub tokens: u32,
    /// Heads.
    pub heads: u32,
    /// V: the width each head is normalized over.
    pub head_dim: u32,
    /// Added to the mean square.
    pub eps: f32,
    /// Layout of the retention output `[tokens, heads·V]`.
    pub input: Strided,
    /// Layout of the gate g `[tokens, heads·V]`.
    pub gate: Strided,
    /// Layout of the result `[tokens, heads·V]`.
    pub out: Strided,
}

const CONSTANTS: &[OverrideConstant] = &[OverrideConstant {
    name: "WORKGROUP_SIZE",
    default: 128,
}];
const PARAMS_STRUCT: (&str, &[&str]) = (
    "HeadNormGateParams",
    &[
        "tokens",
        "heads",
        "head_dim",
        "eps",
        "input_offset",
        "input_stride",
        "gate_offset",
        "gate_stride",
        "out_offset",
        "out_stride",
        "_pad0",
        "_pad1",
    ],
);
const INPUT: Binding = Binding {
    index: 1,
    name: "input",
    access: Access::ReadOnly,
};
const GATE: Binding = Binding {
    index: 2,
    name: "gate",
    access: Access::ReadOnly,
};
const OUTPUT: Binding = Binding {
    index: 4,
    name: "output",
    access: Access::ReadWrite,
};

/// With a weight `[V]` (fla).
pub static WEIGHTED: Kernel = Kernel {
    name: "head_norm_gate/weighted",
    source: shader!("head_norm_gate.wgsl"),
    entry_point: "head_norm_gate",
    workgroup_size: [
        Dim::Constant("WORKGROUP_SIZE"),
        Dim::Fixed(1),
        Dim::Fixed(1),
    ],
    constants: CONSTANTS,
    bindings: &[
        PARAMS,
        INPUT,
        GATE,
        Binding {
            index: 3,
            name: "norm_weight",
            access: Access::ReadOnly,
        },
        OUTPUT,
    ],
    params: PARAMS_STRUCT,
    requires: Features::NONE,
};

/// Without a weight (torchscale).
pub static UNWEIGHTED: Kernel = Kernel {
    name: "head_norm_gate/unweighted",
    source: shader!("head_norm_gate.wgsl"),
    entry_point: "head_norm_gate_unweighted",
    workgroup_size: [
        Dim::Constant("WORKGROUP_SIZE"),
        Dim::Fixed(1),
        Dim::Fixed(1),
    ],
    constants: CONSTANTS,
    bindings: &[PARAMS, INPUT, GATE, OUTPUT],
    params: PARAMS_STRUCT,
    requires: Features::NONE,
};

/// All variants.
pub static KERNELS: &[&Kernel] = &[&WEIGHTED, &UNWEIGHTED];

/// Buffers: input, gate, then `norm_weight [V]` if `weighted`, then output.
pub fn head_norm_gate(weighted: bool, params: HeadNormGateParams) -> Dispatch {
    let kernel = if weighted { &WEIGHTED } else { &UNWEIGHTED };
    Dispatch {
        kernel,
        constants: kernel.default_constants(),
        params: ParamWords::new(&[
            params.tokens,
            params.heads,
            params.head_dim,
            f(params.eps),
            params.input.offset,
            params.input.stride,
            params.gate.offset,
            params.gate.stride,
            params.out.offset,
            params.out.stride,
        ]),
        workgroups: [params.heads, params.tokens, 1],
    }
}
