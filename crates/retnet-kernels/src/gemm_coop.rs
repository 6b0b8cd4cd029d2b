//! The tensor-core GEMM `Y (= α·Y +) X · Wᵀ` on cooperative matrices, one kernel body for every
//! tile size an adapter offers (`shaders/gemm_coop.wgsl`): 8×8 tiles (Mesa's lavapipe, Apple GPUs'
//! simdgroup matrices through Metal, some AMD GPUs) and 16×16 tiles (NVIDIA), f16 inputs and f32
//! accumulators, any subgroup size, any shape. X is read in f32 and converted to f16 as it is
//! staged in workgroup memory; W is native f16.
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
    Kernel {
        name,
        source,
        entry_point: "gemm_coop",
        workgroup_size: [
            Dim::Constant("WORKGROUP_SIZE"),
            Dim::Fixed(1),
            Dim::Fixed(1),
        ],
        constants: &[OverrideConstant {
            name: "WORKGROUP_SIZE",
            default: 128,
        }],
        bindings: crate::linear::BINDINGS,
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

/// All variants.
pub static KERNELS: &[&Kernel] = &[&GEMM_COOP_8, &GEMM_COOP_16];

/// Whether [`gemm_coop`] computes this shape: any non-empty one whose grid fits a dispatch.
pub fn gemm_coop_supports(tile: CoopTile, params: &LinearParams) -> bool {
    params.rows > 0
        && params.in_dim > 0
        && params.out_dim > 0
        && params.rows.div_ceil(tile.block()) <= 65535
        && params.out_dim.div_ceil(tile.block()) <= 65535
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
