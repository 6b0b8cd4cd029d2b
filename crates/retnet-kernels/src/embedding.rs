//! Embedding gather: `output[t, :] = table[token_ids[t], :] · scale`.

use crate::{
    ceil_div, Bound, ConstantValues, Dim, Dispatch, Features, Kernel, OverrideConstant,
    WeightFormat, FORMATS,
};

/// Parameters of [`gather`].
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingParams {
    /// Number of token ids (rows of the output).
    pub tokens: u32,
    /// Embedding width (columns of the table).
    pub dim: u32,
    /// Factor applied to every value (sqrt(d) for torchscale without `no_scale_embedding`).
    pub scale: f32,
}

buffers! {
    /// Buffers of [`gather`].
    pub struct GatherBuffers, bindings BINDINGS {
        /// The table `[vocab, dim]` in the kernel's weight format.
        1 weight: ReadOnly,
        /// `[tokens]` u32.
        2 token_ids: ReadOnly,
        /// `[tokens, dim]` f32.
        3 output: ReadWrite,
    }
}

param_block! {
    /// The WGSL parameter block of [`gather`].
    pub(crate) struct EmbeddingBlock = "EmbeddingParams" {
        tokens: u32,
        dim: u32,
        scale: f32,
        first_row: u32,
        rows: u32,
        weight_stride: u32,
        _pad2: u32,
        _pad3: u32,
    }
}

const CONSTANTS: &[OverrideConstant] = &[OverrideConstant {
    name: "WORKGROUP_SIZE",
    default: 256,
}];

const fn variant(name: &'static str, source: &'static str, shader_f16: bool) -> Kernel {
    Kernel {
        name,
        source,
        entry_point: "embedding_gather",
        workgroup_size: [
            Dim::Constant("WORKGROUP_SIZE"),
            Dim::Fixed(1),
            Dim::Fixed(1),
        ],
        constants: CONSTANTS,
        bindings: BINDINGS,
        params: EmbeddingBlock::STRUCT,
        requires: Features::new(shader_f16, false, false),
    }
}

/// The gather, by weight format ([`WeightFormat::ALL`]'s order).
pub static GATHER: [Kernel; FORMATS] =
    format_variants!("embedding_gather", "", variant, ["embedding.wgsl"]);

pub static KERNELS: &[&Kernel] = &all_formats!(GATHER);

/// Gathers rows of a table stored in `format`.
/// Buffers: `table [vocab, dim]`, `token_ids [tokens] u32`, `output [tokens, dim] f32`.
pub fn gather<'b, B>(
    format: WeightFormat,
    params: EmbeddingParams,
    buffers: GatherBuffers<'b, B>,
) -> Bound<'b, B> {
    gather_rows(format, params, 0, u32::MAX, buffers)
}

/// [`gather`] from one part of a table split by rows: the `weight` buffer holds rows
/// `[first_row, first_row + rows)`; the output rows of tokens outside them are not written (the
/// dispatches of the other parts write them).
pub fn gather_rows<'b, B>(
    format: WeightFormat,
    params: EmbeddingParams,
    first_row: u32,
    rows: u32,
    buffers: GatherBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = format.pick(&GATHER);
    let constants: ConstantValues = kernel.default_constants();
    let [x, _, _] = kernel.workgroup_size(&constants);
    let block = EmbeddingBlock {
        tokens: params.tokens,
        dim: params.dim,
        scale: params.scale,
        first_row,
        rows,
        weight_stride: format.row_stride(params.dim),
        ..Default::default()
    };
    Bound {
        dispatch: Dispatch {
            kernel,
            constants,
            params: block.words(),
            workgroups: [ceil_div(params.dim, x), params.tokens, 1],
        },
        buffers: buffers.in_order(),
    }
}
