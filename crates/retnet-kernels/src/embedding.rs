//! Embedding gather: `output[t, :] = table[token_ids[t], :] · scale`.

use crate::{
    ceil_div, f, Access, Binding, ConstantValues, Dim, Dispatch, Features, Kernel,
    OverrideConstant, ParamWords, WeightFormat, PARAMS,
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

const BINDINGS: &[Binding] = &[
    PARAMS,
    Binding {
        index: 1,
        name: "weight",
        access: Access::ReadOnly,
    },
    Binding {
        index: 2,
        name: "token_ids",
        access: Access::ReadOnly,
    },
    Binding {
        index: 3,
        name: "output",
        access: Access::ReadWrite,
    },
];
const CONSTANTS: &[OverrideConstant] = &[OverrideConstant {
    name: "WORKGROUP_SIZE",
    default: 256,
}];
const PARAMS_STRUCT: (&str, &[&str]) = (
    "EmbeddingParams",
    &[
        "tokens",
        "dim",
        "scale",
        "first_row",
        "rows",
        "_pad1",
        "_pad2",
        "_pad3",
    ],
);

const fn variant(name: &'static str, source: &'static str, requires: Features) -> Kernel {
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
        params: PARAMS_STRUCT,
        requires,
    }
}

/// Table in f32.
pub static GATHER_F32: Kernel = variant(
    "embedding_gather/f32",
    shader!("weights_f32.wgsl", "embedding.wgsl"),
    Features::NONE,
);
/// Table in f16, native.
pub static GATHER_F16: Kernel = variant(
    "embedding_gather/f16",
    concat!(
        "enable f16;\n",
        shader!("weights_f16.wgsl", "embedding.wgsl")
    ),
    Features::new(true, false, false),
);
/// Table in f16, packed in u32.
pub static GATHER_F16_PACKED: Kernel = variant(
    "embedding_gather/f16-packed",
    shader!("weights_f16_packed.wgsl", "embedding.wgsl"),
    Features::NONE,
);

/// All variants.
pub static KERNELS: &[&Kernel] = &[&GATHER_F32, &GATHER_F16, &GATHER_F16_PACKED];

/// Gathers rows of a table stored in `format`.
/// Buffers: `table [vocab, dim]`, `token_ids [tokens] u32`, `output [tokens, dim] f32`.
pub fn gather(format: WeightFormat, params: EmbeddingParams) -> Dispatch {
    gather_rows(format, params, 0, u32::MAX)
}

/// [`gather`] from one part of a table split by rows: the table buffer holds rows
/// `[first_row, first_row + rows)`; the output rows of tokens outside them are not written (the
/// dispatches of the other parts write them).
pub fn gather_rows(
    format: WeightFormat,
    params: EmbeddingParams,
    first_row: u32,
    rows: u32,
) -> Dispatch {
    let kernel = match format {
        WeightFormat::F32 => &GATHER_F32,
        WeightFormat::F16 => &GATHER_F16,
        WeightFormat::F16Packed => &GATHER_F16_PACKED,
    };
    let constants: ConstantValues = kernel.default_constants();
    let [x, _, _] = kernel.workgroup_size(&constants);
    Dispatch {
        kernel,
        constants,
        params: ParamWords::new(&[params.tokens, params.dim, f(params.scale), first_row, rows]),
        workgroups: [ceil_div(params.dim, x), params.tokens, 1],
    }
}
