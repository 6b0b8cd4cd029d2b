//! The tensor-core GEMM `Y (= α·Y +) X · Wᵀ` on cooperative matrices, one kernel body for every
//! tile size an adapter offers (`shaders/gemm_coop.wgsl`): 8×8 tiles (Mesa's lavapipe, Apple GPUs'
//! simdgroup matrices through Metal, some AMD GPUs) and 16×16 tiles (NVIDIA), f16 inputs and f32
//! accumulators, any subgroup size, any shape. X is read in f32 and converted to f16 as it is
//! staged in workgroup memory; W is native f16.
//!
//! [`gemm_coop_direct`] (`shaders/gemm_coop_direct.wgsl`) is the same product with every operand
//! loaded straight from storage: X first converted to an f16 copy by [`to_f16`], in_dim and
//! out_dim multiples of the tile. It exists because the staged kernel computes wrong products on
//! NVIDIA's 16×16 tiles (docs/perf-notes.md) while tiles read from storage are exact there; the
//! model uses it on every adapter ([`CoopOperands`]), so the path NVIDIA runs is the one CI
//! checks on lavapipe's 8×8 tiles.
//!
//! Which tile a device uses is decided in `retnet-runtime` from the adapter's cooperative-matrix
//! properties, its subgroup size, its workgroup memory and [`CoopTile::expressible_in`], the
//! table this crate's backend tests check by translating each variant.

use crate::linear::{LinearBuffers, LinearParams};
use crate::{ceil_div, Bound, Dim, Dispatch, Features, Kernel, OverrideConstant};

/// Side of a square cooperative-matrix tile (M = N = K), f16 × f16 → f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoopTile {
    /// 8×8×8.
    Eight,
    /// 16×16×16.
    Sixteen,
}

/// A shading language the kernels are translated to (the backends wgpu uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Language {
    /// SPIR-V (Vulkan).
    SpirV,
    /// Metal Shading Language.
    Msl,
    /// HLSL (DX12).
    Hlsl,
}

/// How the tensor-core GEMM runs on a device: its tile, and the subgroup size its workgroups are
/// sized for (the workgroup is [`SUB_BLOCKS`] subgroups of this size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoopShape {
    /// The tile.
    pub tile: CoopTile,
    /// Invocations per subgroup the workgroup size assumes (a driver that runs wider subgroups
    /// still gets the right result, computed in several passes).
    pub subgroup_size: u32,
}

/// Sub-blocks of 4 × 4 tiles per workgroup, one per subgroup (`SUB_BLOCKS` in the shader).
pub const SUB_BLOCKS: u32 = 4;

impl CoopTile {
    /// Every tile, largest first (the order the runtime prefers them in).
    pub const ALL: [CoopTile; 2] = [CoopTile::Sixteen, CoopTile::Eight];

    /// The tile's side.
    pub fn side(self) -> u32 {
        match self {
            CoopTile::Eight => 8,
            CoopTile::Sixteen => 16,
        }
    }

    /// The tile with these M, N, K sizes, if the GEMM has a variant for it.
    pub fn from_sizes(m: u32, n: u32, k: u32) -> Option<CoopTile> {
        CoopTile::ALL
            .into_iter()
            .find(|t| (m, n, k) == (t.side(), t.side(), t.side()))
    }

    /// The GEMM variant for this tile.
    pub fn kernel(self) -> &'static Kernel {
        match self {
            CoopTile::Eight => &GEMM_COOP_8,
            CoopTile::Sixteen => &GEMM_COOP_16,
        }
    }

    /// The direct GEMM variant (operands from storage) for this tile.
    pub fn direct_kernel(self) -> &'static Kernel {
        match self {
            CoopTile::Eight => &GEMM_COOP_DIRECT_8,
            CoopTile::Sixteen => &GEMM_COOP_DIRECT_16,
        }
    }

    /// Rows (and columns) of Y per workgroup: 8 tiles (`BLOCK_M`, `BLOCK_N`).
    pub fn block(self) -> u32 {
        8 * self.side()
    }

    /// Bytes of workgroup memory the variant declares (two staging buffers of X and W rows, one
    /// f32 tile per subgroup, the subgroup count), read from naga's IR of the shader
    /// ([`crate::workgroup_bytes`]); a shader naga could not read counts as too large.
    pub fn workgroup_bytes(self) -> u32 {
        let kernel = self.kernel();
        crate::workgroup_bytes(kernel, &kernel.default_constants()).unwrap_or(u32::MAX)
    }

    /// Whether naga writes this variant in `language` as code that language's compiler takes:
    /// SPIR-V has cooperative matrices of both sizes (`SPV_KHR_cooperative_matrix`); Metal's
    /// simdgroup matrices are 8×8 only (naga writes `simdgroup_half16x16`, a type Metal lacks);
    /// naga's HLSL writer has none. `backends` tests check each claim.
    pub fn expressible_in(self, language: Language) -> bool {
        match language {
            Language::SpirV => true,
            Language::Msl => self == CoopTile::Eight,
            Language::Hlsl => false,
        }
    }
}

const fn variant(name: &'static str, source: &'static str) -> Kernel {
    variant_at(name, source, "gemm_coop", crate::linear::BINDINGS)
}

const fn direct_variant(name: &'static str, source: &'static str) -> Kernel {
    variant_at(name, source, "gemm_coop_direct", DIRECT_BINDINGS)
}

const fn variant_at(
    name: &'static str,
    source: &'static str,
    entry_point: &'static str,
    bindings: &'static [crate::Binding],
) -> Kernel {
    Kernel {
        name,
        source,
        entry_point,
        workgroup_size: [
            Dim::Constant("WORKGROUP_SIZE"),
            Dim::Fixed(1),
            Dim::Fixed(1),
        ],
        constants: &[OverrideConstant {
            name: "WORKGROUP_SIZE",
            default: 128,
        }],
        bindings,
        params: crate::linear::LinearBlock::STRUCT,
        requires: Features::ALL,
    }
}

/// 8×8×8 tiles.
pub static GEMM_COOP_8: Kernel = variant(
    "gemm-coop/8x8",
    concat!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n",
        shader!(
            "gemm_coop_tile8.wgsl",
            "linear_common.wgsl",
            "gemm_coop.wgsl"
        )
    ),
);
/// 16×16×16 tiles.
pub static GEMM_COOP_16: Kernel = variant(
    "gemm-coop/16x16",
    concat!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n",
        shader!(
            "gemm_coop_tile16.wgsl",
            "linear_common.wgsl",
            "gemm_coop.wgsl"
        )
    ),
);

/// 8×8×8 tiles, operands from storage.
pub static GEMM_COOP_DIRECT_8: Kernel = direct_variant(
    "gemm-coop-direct/8x8",
    concat!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n",
        shader!(
            "gemm_coop_tile8.wgsl",
            "linear_common.wgsl",
            "gemm_coop_direct.wgsl"
        )
    ),
);
/// 16×16×16 tiles, operands from storage.
pub static GEMM_COOP_DIRECT_16: Kernel = direct_variant(
    "gemm-coop-direct/16x16",
    concat!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n",
        shader!(
            "gemm_coop_tile16.wgsl",
            "linear_common.wgsl",
            "gemm_coop_direct.wgsl"
        )
    ),
);

param_block! {
    /// The WGSL parameter block of [`to_f16`].
    pub(crate) struct ToF16Block = "ToF16Params" { rows: u32, padded_rows: u32, dim: u32, x_row_start: u32 }
}

buffers! {
    /// Buffers of [`gemm_coop_direct`].
    pub struct GemmCoopDirectBuffers, bindings DIRECT_BINDINGS {
        /// `W [out_dim, in_dim]` f16.
        1 weight: ReadOnly,
        /// X16 `[direct_padded_rows(rows), in_dim]` f16, made by [`to_f16`].
        2 input: ReadOnly,
        /// `Y [rows, out_dim]` f32 (read too when accumulating).
        3 output: ReadWrite,
        /// Scratch for the edge blocks' tiles, at least [`gemm_coop_direct_edge_bytes`] long.
        4 edge: ReadWrite,
    }
}

param_block! {
    /// The WGSL parameter block of [`dequant_f16`].
    pub(crate) struct DequantBlock = "DequantParams" { rows: u32, in_dim: u32, weight_stride: u32, first_row: u32 }
}

buffers! {
    /// Buffers of [`dequant_f16`].
    pub struct DequantBuffers, bindings DEQUANT_BINDINGS {
        /// `W [out_dim, in_dim]` int8 or q4 blocks.
        1 weight: ReadOnly,
        /// W16 `[out_dim, in_dim]` f16.
        2 output: ReadWrite,
    }
}

const fn dequant_variant(name: &'static str, source: &'static str) -> Kernel {
    Kernel {
        name,
        source,
        entry_point: "dequantize_to_half",
        workgroup_size: [Dim::Fixed(64), Dim::Fixed(1), Dim::Fixed(1)],
        constants: &[],
        bindings: DEQUANT_BINDINGS,
        params: DequantBlock::STRUCT,
        requires: Features::new(true, false, false),
    }
}

/// int8 blocks to dense f16 rows, the weight operand of [`gemm_coop_direct`].
pub static DEQUANT_F16_INT8: Kernel = dequant_variant(
    "dequant-f16/int8",
    concat!(
        "enable f16;\n",
        shader!("weights_int8.wgsl", "dequant_f16.wgsl")
    ),
);
/// q4 blocks to dense f16 rows, the weight operand of [`gemm_coop_direct`].
pub static DEQUANT_F16_Q4: Kernel = dequant_variant(
    "dequant-f16/q4",
    concat!(
        "enable f16;\n",
        shader!("weights_q4.wgsl", "dequant_f16.wgsl")
    ),
);

/// Whether [`dequant_f16`] converts a matrix of this format and row length: int8 or q4, in_dim
/// a multiple of 4, grids that fit a dispatch (at most 65 535 rows per call).
pub fn dequant_f16_supports(format: crate::WeightFormat, in_dim: u32, rows: u32) -> bool {
    matches!(format, crate::WeightFormat::Int8 | crate::WeightFormat::Q4)
        && in_dim > 0
        && in_dim % 4 == 0
        && rows > 0
        && ceil_div(in_dim / 4, 64) <= 65535
}

/// Decodes rows `first_row ..+ rows` of the int8 or q4 matrix `weight` (`[.., in_dim]`) into
/// dense f16 rows `[rows, in_dim]`, the `W` the direct tensor-core GEMM reads, with the same f32
/// values the block-format kernels compute, rounded once to f16. Needs [`dequant_f16_supports`]
/// for `rows`; `None` for another format.
pub fn dequant_f16<'b, B>(
    format: crate::WeightFormat,
    in_dim: u32,
    first_row: u32,
    rows: u32,
    buffers: DequantBuffers<'b, B>,
) -> Option<Bound<'b, B>> {
    let kernel = match format {
        crate::WeightFormat::Int8 => &DEQUANT_F16_INT8,
        crate::WeightFormat::Q4 => &DEQUANT_F16_Q4,
        _ => return None,
    };
    let block = DequantBlock {
        rows,
        in_dim,
        weight_stride: format.row_stride(in_dim),
        first_row,
    };
    Some(Bound {
        dispatch: Dispatch {
            kernel,
            constants: kernel.default_constants(),
            params: block.words(),
            workgroups: [ceil_div(in_dim / 4, 64), rows, 1],
        },
        buffers: buffers.in_order(),
    })
}

buffers! {
    /// Buffers of [`to_f16`].
    pub struct ToF16Buffers, bindings TO_F16_BINDINGS {
        /// f32 `[x_row_start + rows, dim]`.
        1 input: ReadOnly,
        /// f16 `[padded_rows, dim]` (not `input`).
        2 output: ReadWrite,
    }
}

/// f32 rows to a zero-padded f16 copy, the input of [`gemm_coop_direct`].
pub static TO_F16: Kernel = Kernel {
    name: "to-f16",
    source: concat!("enable f16;\n", shader!("to_f16.wgsl")),
    entry_point: "convert_to_half",
    workgroup_size: [Dim::Fixed(64), Dim::Fixed(1), Dim::Fixed(1)],
    constants: &[],
    bindings: TO_F16_BINDINGS,
    params: ToF16Block::STRUCT,
    requires: Features::new(true, false, false),
};

/// All variants.
pub static KERNELS: &[&Kernel] = &[
    &GEMM_COOP_8,
    &GEMM_COOP_16,
    &GEMM_COOP_DIRECT_8,
    &GEMM_COOP_DIRECT_16,
    &TO_F16,
    &DEQUANT_F16_INT8,
    &DEQUANT_F16_Q4,
];

/// Which tensor-core GEMM a model runs its projections on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoopOperands {
    /// [`gemm_coop`]: X and W staged in workgroup memory (any shape, no f16 copy of X).
    Staged,
    /// [`to_f16`] then [`gemm_coop_direct`]: every operand from storage.
    Direct,
}

impl CoopOperands {
    /// The GEMM the model uses: [`CoopOperands::Direct`] on every tile. The staged kernel is
    /// wrong on NVIDIA's 16×16 tiles (H200, driver 580; docs/perf-notes.md) and unmeasured on
    /// real 8×8 hardware, so one path everywhere keeps what NVIDIA runs the path CI verifies
    /// (lavapipe 26's 8×8 tiles). The staged kernel stays for `bench --micro` and verify.
    pub fn for_tile(_tile: CoopTile) -> CoopOperands {
        CoopOperands::Direct
    }
}

/// Whether [`gemm_coop`] computes this shape: any non-empty one whose grid fits a dispatch.
pub fn gemm_coop_supports(tile: CoopTile, params: &LinearParams) -> bool {
    params.rows > 0
        && params.in_dim > 0
        && params.out_dim > 0
        && params.rows.div_ceil(tile.block()) <= 65535
        && params.out_dim.div_ceil(tile.block()) <= 65535
}

/// Rows of Y (and of X16) per workgroup of [`gemm_coop_direct`]: [`to_f16`] pads X16 to a
/// multiple of this.
pub fn direct_padded_rows(tile: CoopTile, rows: u32) -> u32 {
    rows.div_ceil(tile.block()) * tile.block()
}

/// Whether [`gemm_coop_direct`] computes this shape: in_dim and out_dim multiples of the tile
/// (every B tile inside W and 16-byte aligned), in_dim a multiple of 4 (for [`to_f16`]), grids
/// that fit a dispatch.
pub fn gemm_coop_direct_supports(tile: CoopTile, params: &LinearParams) -> bool {
    let side = tile.side();
    params.rows > 0
        && params.in_dim > 0
        && params.out_dim > 0
        && params.in_dim % side == 0
        && params.out_dim % side == 0
        && direct_padded_rows(tile, params.rows) <= 65535
        && params.out_dim.div_ceil(tile.block()) <= 65535
        && ceil_div(params.in_dim / 4, 64) <= 65535
}

/// Bytes of the `edge` scratch [`gemm_coop_direct`] needs for this shape: one f32 tile per
/// sub-block of each block on Y's bottom or right edge, or of every block when Y's stride or
/// first column is not a multiple of 4 (then no block stores straight from its accumulators).
/// Assumes the device runs the workgroup as subgroups of [`CoopShape::subgroup_size`], the size
/// its cooperative-matrix properties name.
pub fn gemm_coop_direct_edge_bytes(tile: CoopTile, params: &LinearParams) -> u64 {
    let block = tile.block();
    let blocks_m = params.rows.div_ceil(block) as u64;
    let blocks_n = params.out_dim.div_ceil(block) as u64;
    let aligned = params.y_stride() % 4 == 0 && params.y_col_start % 4 == 0;
    let slots = if aligned {
        blocks_m + blocks_n
    } else {
        blocks_m * blocks_n
    };
    let tile_bytes = (tile.side() * tile.side()) as u64 * 4;
    slots * SUB_BLOCKS as u64 * tile_bytes
}

/// Converts rows `x_row_start ..+ rows` of the f32 `input` (`[.., in_dim]`, `params`' shape) into
/// the f16 `output` `[direct_padded_rows(rows), in_dim]`, zero past `rows`: the X16 of
/// [`gemm_coop_direct`]. Needs [`gemm_coop_direct_supports`].
pub fn to_f16<'b, B>(
    tile: CoopTile,
    params: &LinearParams,
    buffers: ToF16Buffers<'b, B>,
) -> Bound<'b, B> {
    let padded_rows = direct_padded_rows(tile, params.rows);
    let block = ToF16Block {
        rows: params.rows,
        padded_rows,
        dim: params.in_dim,
        x_row_start: params.x_row_start,
    };
    Bound {
        dispatch: Dispatch {
            kernel: &TO_F16,
            constants: TO_F16.default_constants(),
            params: block.words(),
            workgroups: [ceil_div(params.in_dim / 4, 64), padded_rows, 1],
        },
        buffers: buffers.in_order(),
    }
}

/// `Y = X · Wᵀ` (or `α·Y + X · Wᵀ`) on the tensor cores, operands from storage; needs
/// [`Features::cooperative_matrix`] with this `shape` and [`gemm_coop_direct_supports`].
/// Buffers: `weight [out_dim, in_dim]` f16, `input` the f16 X16 that [`to_f16`] made from X
/// (its `x_row_start` already applied), `output [rows, out_dim]` f32 (no padding), `edge` a
/// scratch of [`gemm_coop_direct_edge_bytes`].
pub fn gemm_coop_direct<'b, B>(
    shape: CoopShape,
    params: LinearParams,
    buffers: GemmCoopDirectBuffers<'b, B>,
) -> Bound<'b, B> {
    let kernel = shape.tile.direct_kernel();
    let constants =
        kernel
            .default_constants()
            .with(kernel, "WORKGROUP_SIZE", SUB_BLOCKS * shape.subgroup_size);
    let block = shape.tile.block();
    let params = LinearParams {
        x_row_start: 0,
        ..params
    };
    Bound {
        dispatch: Dispatch {
            kernel,
            constants,
            params: params.words(crate::WeightFormat::F16),
            workgroups: [
                ceil_div(params.out_dim, block),
                ceil_div(params.rows, block),
                1,
            ],
        },
        buffers: buffers.in_order(),
    }
}

/// `Y = X · Wᵀ` (or `α·Y + X · Wᵀ`) on the tensor cores; needs [`Features::cooperative_matrix`]
/// with this `shape` (the device's) and [`gemm_coop_supports`]. Buffers: `weight [out_dim,
/// in_dim]` f16, `input [x_row_start + rows, in_dim]` f32, `output [rows, out_dim]` f32 — the
/// same as the portable [`crate::linear::matmul`]'s, no padding.
pub fn gemm_coop<'b, B>(
    shape: CoopShape,
    params: LinearParams,
    buffers: LinearBuffers<'b, B>,
) -> Bound<'b, B> {
    Bound {
        dispatch: gemm_coop_launch(shape, params),
        buffers: buffers.in_order(),
    }
}

/// The launch [`gemm_coop`] binds (kernel, constants, parameters, grid), for probes that run a
/// modified copy of the kernel on the same grid (`cargo xtask bench --micro`'s checks).
pub fn gemm_coop_launch(shape: CoopShape, params: LinearParams) -> Dispatch {
    let kernel = shape.tile.kernel();
    let constants =
        kernel
            .default_constants()
            .with(kernel, "WORKGROUP_SIZE", SUB_BLOCKS * shape.subgroup_size);
    let block = shape.tile.block();
    Dispatch {
        kernel,
        constants,
        // f16 weights only: the weight stride is in_dim.
        params: params.words(crate::WeightFormat::F16),
        workgroups: [
            ceil_div(params.out_dim, block),
            ceil_div(params.rows, block),
            1,
        ],
    }
}
