//! Per-head RMSNorm over V (optional weight) fused with the output gate silu(g).

use crate::retention::Strided;
use crate::{Bound, BufferList, Dim, Dispatch, Features, Kernel, OverrideConstant};

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

param_block! {
    /// The WGSL parameter block of both variants.
    pub(crate) struct HeadNormGateBlock = "HeadNormGateParams" {
        tokens: u32,
        heads: u32,
        head_dim: u32,
        eps: f32,
        input_offset: u32,
        input_stride: u32,
        gate_offset: u32,
        gate_stride: u32,
        out_offset: u32,
        out_stride: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

buffers! {
    /// Buffers of [`head_norm_gate`] (with the norm's weight).
    pub struct HeadNormGateBuffers, bindings WEIGHTED_BINDINGS {
        /// Retention output.
        1 input: ReadOnly,
        /// The gate's pre-activation g.
        2 gate: ReadOnly,
        /// `[head_dim]`.
        3 norm_weight: ReadOnly,
        4 output: ReadWrite,
    }
}

buffers! {
    /// Buffers of [`head_norm_gate_unweighted`].
    pub struct HeadGateBuffers, bindings UNWEIGHTED_BINDINGS {
        1 input: ReadOnly,
        2 gate: ReadOnly,
        4 output: ReadWrite,
    }
}

/// With a weight `[V]` (fla).
pub static WEIGHTED: Kernel = Kernel {
    name: "head_norm_gate/weighted",
    source: shader!("activation.wgsl", "head_norm_gate.wgsl"),
    entry_point: "head_norm_gate",
    workgroup_size: [
        Dim::Constant("WORKGROUP_SIZE"),
        Dim::Fixed(1),
        Dim::Fixed(1),
    ],
    constants: CONSTANTS,
    bindings: WEIGHTED_BINDINGS,
    params: HeadNormGateBlock::STRUCT,
    requires: Features::NONE,
};

/// Without a weight (torchscale).
pub static UNWEIGHTED: Kernel = Kernel {
    name: "head_norm_gate/unweighted",
    source: shader!("activation.wgsl", "head_norm_gate.wgsl"),
    entry_point: "head_norm_gate_unweighted",
    workgroup_size: [
        Dim::Constant("WORKGROUP_SIZE"),
        Dim::Fixed(1),
        Dim::Fixed(1),
    ],
    constants: CONSTANTS,
    bindings: UNWEIGHTED_BINDINGS,
    params: HeadNormGateBlock::STRUCT,
    requires: Features::NONE,
};

/// All variants.
pub static KERNELS: &[&Kernel] = &[&WEIGHTED, &UNWEIGHTED];

/// Per-head RMSNorm of `input` (times `norm_weight`), times silu(`gate`), into `output`.
pub fn head_norm_gate<'b, B>(
    params: HeadNormGateParams,
    buffers: HeadNormGateBuffers<'b, B>,
) -> Bound<'b, B> {
    launch(&WEIGHTED, params, buffers.in_order())
}

/// Per-head RMSNorm of `input` (no weight), times silu(`gate`), into `output`.
pub fn head_norm_gate_unweighted<'b, B>(
    params: HeadNormGateParams,
    buffers: HeadGateBuffers<'b, B>,
) -> Bound<'b, B> {
    launch(&UNWEIGHTED, params, buffers.in_order())
}

fn launch<'b, B>(
    kernel: &'static Kernel,
    params: HeadNormGateParams,
    buffers: BufferList<'b, B>,
) -> Bound<'b, B> {
    let block = HeadNormGateBlock {
        tokens: params.tokens,
        heads: params.heads,
        head_dim: params.head_dim,
        eps: params.eps,
        input_offset: params.input.offset,
        input_stride: params.input.stride,
        gate_offset: params.gate.offset,
        gate_stride: params.gate.stride,
        out_offset: params.out.offset,
        out_stride: params.out.stride,
        ..Default::default()
    };
    Bound {
        dispatch: Dispatch {
            kernel,
            constants: kernel.default_constants(),
            params: block.words(),
            workgroups: [params.heads, params.tokens, 1],
        },
        buffers,
    }
}
