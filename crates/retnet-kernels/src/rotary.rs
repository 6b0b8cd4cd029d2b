//! Rotary position embedding in place, both pairings, then a scale.

use crate::{
    ceil_div, Binding, Bound, BufferList, Dim, Dispatch, Features, Kernel, OverrideConstant,
};

/// Which elements of a head form a rotated pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RotaryStyle {
    /// torchscale: pairs (2i, 2i+1).
    Interleaved,
    /// fla / GPT-NeoX: pairs (i, i + K/2).
    Halves,
}

/// Parameters of [`rotary`]. Element j of head h of token t is at
/// `col_offset + t·row_stride + h·head_dim + j`.
#[derive(Clone, Copy, Debug)]
pub struct RotaryParams {
    /// Tokens (rows).
    pub tokens: u32,
    /// Heads to rotate in each row.
    pub heads: u32,
    /// K, even.
    pub head_dim: u32,
    /// Absolute position of token 0.
    pub start_pos: u32,
    /// Elements between consecutive tokens.
    pub row_stride: u32,
    /// Element index of head 0 of token 0.
    pub col_offset: u32,
    /// Applied after the rotation (K^-½ on q for fla, on k for torchscale; else 1).
    pub scale: f32,
}

const CONSTANTS: &[OverrideConstant] = &[OverrideConstant {
    name: "WORKGROUP_SIZE",
    default: 64,
}];
buffers! {
    /// Buffers of [`rotary`].
    pub struct RotaryBuffers, bindings BINDINGS {
        /// Angles `[head_dim / 2]`.
        1 theta: ReadOnly,
        /// The rows rotated in place (e.g. the q|k|v|g projection).
        2 x: ReadWrite,
    }
}

buffers! {
    /// Buffers of [`rotary_batched`].
    pub struct RotaryBatchedBuffers, bindings BATCHED_BINDINGS {
        1 theta: ReadOnly,
        2 x: ReadWrite,
        /// Position of each row, u32.
        3 positions: ReadOnly,
    }
}

param_block! {
    /// The WGSL parameter block of every variant.
    pub(crate) struct RotaryBlock = "RotaryParams" {
        tokens: u32,
        heads: u32,
        head_dim: u32,
        start_pos: u32,
        row_stride: u32,
        col_offset: u32,
        scale: f32,
        _pad: u32,
    }
}

const fn variant(
    name: &'static str,
    entry_point: &'static str,
    bindings: &'static [Binding],
) -> Kernel {
    Kernel {
        name,
        source: shader!("rotary_angle.wgsl", "rotary.wgsl"),
        entry_point,
        workgroup_size: [
            Dim::Constant("WORKGROUP_SIZE"),
            Dim::Fixed(1),
            Dim::Fixed(1),
        ],
        constants: CONSTANTS,
        bindings,
        params: RotaryBlock::STRUCT,
        requires: Features::NONE,
    }
}

/// Pairs (2i, 2i+1).
pub static INTERLEAVED: Kernel = variant("rotary/interleaved", "rotary_interleaved", BINDINGS);
/// Pairs (i, i+K/2).
pub static HALVES: Kernel = variant("rotary/halves", "rotary_halves", BINDINGS);
/// Pairs (2i, 2i+1), row b at position `positions[b]` (batched decode).
pub static INTERLEAVED_BATCHED: Kernel = variant(
    "rotary/interleaved-batched",
    "rotary_interleaved_batched",
    BATCHED_BINDINGS,
);
/// Pairs (i, i+K/2), row b at position `positions[b]` (batched decode).
pub static HALVES_BATCHED: Kernel = variant(
    "rotary/halves-batched",
    "rotary_halves_batched",
    BATCHED_BINDINGS,
);

/// All variants.
pub static KERNELS: &[&Kernel] = &[&INTERLEAVED, &HALVES, &INTERLEAVED_BATCHED, &HALVES_BATCHED];

/// Rotates in place. Buffers: `theta [head_dim / 2]` f32 (angle per pair and position),
/// `x` f32 (read and written).
pub fn rotary<'b, B>(
    style: RotaryStyle,
    params: RotaryParams,
    buffers: RotaryBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = match style {
        RotaryStyle::Interleaved => &INTERLEAVED,
        RotaryStyle::Halves => &HALVES,
    };
    let block = RotaryBlock {
        tokens: params.tokens,
        heads: params.heads,
        head_dim: params.head_dim,
        start_pos: params.start_pos,
        row_stride: params.row_stride,
        col_offset: params.col_offset,
        scale: params.scale,
        _pad: 0,
    };
    launch(kernel, block, buffers.in_order())
}

/// The dispatch of either variant: one invocation per rotated pair, one grid row per token.
fn launch<'b, B>(
    kernel: &'static Kernel,
    block: RotaryBlock,
    buffers: BufferList<'b, B>,
) -> Bound<'b, B> {
    let constants = kernel.default_constants();
    let [x, _, _] = kernel.workgroup_size(&constants);
    Bound {
        dispatch: Dispatch {
            kernel,
            constants,
            params: block.words(),
            workgroups: [
                ceil_div(block.heads * (block.head_dim / 2), x),
                block.tokens,
                1,
            ],
        },
        buffers,
    }
}

/// Parameters of [`rotary_batched`]: one row per sequence, each at its own position. Element j of
/// head h of row b is at `col_offset + b·row_stride + h·head_dim + j`.
#[derive(Clone, Copy, Debug)]
pub struct RotaryBatchedParams {
    /// B: rows, one token of one sequence each.
    pub rows: u32,
    /// Heads to rotate in each row.
    pub heads: u32,
    /// K, even.
    pub head_dim: u32,
    /// Elements between consecutive rows.
    pub row_stride: u32,
    /// Element index of head 0 of row 0.
    pub col_offset: u32,
    /// Applied after the rotation (as [`RotaryParams::scale`]).
    pub scale: f32,
}

/// Rotates in place, row b at absolute position `positions[b]` (batched decode). Buffers:
/// `theta [head_dim / 2]` f32, `x` f32 (read and written), `positions [rows]` u32.
pub fn rotary_batched<'b, B>(
    style: RotaryStyle,
    params: RotaryBatchedParams,
    buffers: RotaryBatchedBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = match style {
        RotaryStyle::Interleaved => &INTERLEAVED_BATCHED,
        RotaryStyle::Halves => &HALVES_BATCHED,
    };
    let block = RotaryBlock {
        tokens: params.rows,
        heads: params.heads,
        head_dim: params.head_dim,
        // Unused: positions come from the buffer.
        start_pos: 0,
        row_stride: params.row_stride,
        col_offset: params.col_offset,
        scale: params.scale,
        _pad: 0,
    };
    launch(kernel, block, buffers.in_order())
}
