//! RMSNorm over rows: `y = x / sqrt(mean(x²) + eps) ⊙ w`.

use crate::{Bound, Dim, Dispatch, Features, Kernel, OverrideConstant};

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

param_block! {
    /// The WGSL parameter block of [`rms_norm`].
    pub(crate) struct RmsNormBlock = "RmsNormParams" { rows: u32, dim: u32, eps: f32, _pad: u32 }
}

buffers! {
    /// Buffers of [`rms_norm`].
    pub struct RmsNormBuffers, bindings BINDINGS {
        /// `[rows, dim]`.
        1 input: ReadOnly,
        /// `[dim]`.
        2 norm_weight: ReadOnly,
        /// `[rows, dim]` (not `input`).
        3 output: ReadWrite,
    }
}

/// With a weight `[dim]` (every RetNet norm has one; the unweighted variant was never used).
pub static WEIGHTED: Kernel = Kernel {
    name: "rms_norm/weighted",
    source: shader!("rms_norm.wgsl"),
    entry_point: "rms_norm",
    workgroup_size: [
        Dim::Constant("WORKGROUP_SIZE"),
        Dim::Fixed(1),
        Dim::Fixed(1),
    ],
    constants: &[OverrideConstant {
        name: "WORKGROUP_SIZE",
        default: 256,
    }],
    bindings: BINDINGS,
    params: RmsNormBlock::STRUCT,
    requires: Features::NONE,
};

/// All variants.
pub static KERNELS: &[&Kernel] = &[&WEIGHTED];

/// RMSNorm of each row of `input` into `output`, times `norm_weight`.
pub fn rms_norm<'b, B>(params: RmsNormParams, buffers: RmsNormBuffers<'b, B>) -> Bound<'b, B> {
    let kernel = &WEIGHTED;
    let block = RmsNormBlock {
        rows: params.rows,
        dim: params.dim,
        eps: params.eps,
        _pad: 0,
    };
    Bound {
        dispatch: Dispatch {
            kernel,
            constants: kernel.default_constants(),
            params: block.words(),
            workgroups: [params.rows, 1, 1],
        },
        buffers: buffers.in_order(),
    }
}
