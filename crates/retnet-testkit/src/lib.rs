//! Helpers shared by every test of the workspace and by `cargo xtask verify` (dev-only, never
//! published):
//!
//! - [`Rng`]: the one seeded generator (splitmix64), so a seed means the same data everywhere;
//! - [`gpu`]: the one adapter policy (`RETNET_REQUIRE_GPU`, `RETNET_SKIP_GPU_TESTS`);
//! - [`compare`]: error measures and assertions that fail on any non-finite value, on either
//!   side;
//! - [`reference`]: f64 computations of what each kernel computes, written from the spec
//!   (/work/shared/docs/retnet-spec.md), independently of the shaders and of the runtime;
//! - [`shapes`]: the one table of shapes per kernel family, a quick subset (`cargo test`,
//!   `cargo xtask verify --quick`) and the full set (`cargo xtask verify`).
//!
//! See `docs/testing.md` for the tolerances and what they catch.
#![allow(clippy::indexing_slicing)]

pub mod compare;
pub mod gpu;
pub mod reference;
mod rng;
pub mod shapes;

pub use compare::{
    assert_close, assert_close_f32, assert_finite_and_differ, errors, max_relative_error,
    rel_max_err, to_f64,
};
pub use rng::Rng;

use retnet_runtime::kernels::WeightFormat;
use retnet_runtime::Device;

/// Rounds through f16, as f16 weights are stored.
pub fn round_f16(values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect()
}

/// The weights `values` (rows of `row_len`) as a GPU buffer in `format` holds them, i.e. what a
/// kernel reading that format computes with: f32 as they are, f16 rounded, the block formats
/// encoded and decoded by the codec that builds their buffers (`retnet_kernels::quant`). A
/// reference computed from these measures only the kernel's arithmetic.
pub fn as_stored(values: &[f32], row_len: usize, format: WeightFormat) -> Vec<f32> {
    match format.quant() {
        None if format == WeightFormat::F32 => values.to_vec(),
        None => round_f16(values),
        Some(quant) => {
            let mut stored = values.to_vec();
            quant.round_trip(&mut stored, row_len);
            stored
        }
    }
}

/// The weight formats `device` can run (native f16 only with `shader-f16`; packed halves and
/// q4's f16 block parameters with `unpack2x16float`).
pub fn formats(device: &Device) -> Vec<WeightFormat> {
    WeightFormat::ALL
        .into_iter()
        .filter(|f| match f {
            WeightFormat::F16 => device.features().shader_f16,
            WeightFormat::F16Packed | WeightFormat::Q4 => device.supports_half_weights(),
            WeightFormat::F32 | WeightFormat::Int8 => true,
        })
        .collect()
}

/// f16's unit roundoff, 2^-11: the largest relative error of rounding one value to f16.
pub const F16_UNIT_ROUNDOFF: f64 = 1.0 / 2048.0;
/// Tolerance of the GPU with f32 weights against the CPU reference (and the peers), whole model:
/// the GPU accumulates in f32 where the reference uses f64; measured worst 1.4e-6 over the
/// retention fixtures in every form on lavapipe, ×~7 (docs/testing.md).
pub const GPU_F32_TOLERANCE: f64 = 1e-5;

/// The tolerance of a whole model run with its weight matrices rounded to f16, derived from
/// f16's unit roundoff u = 2^-11: each matrix on the path from a token to its logits (per layer
/// the q|k|v|g, out, act|lin and down projections, plus the embedding and the head) perturbs the
/// logits by at most ~u relative, to first order, so the bound is u × (`layers`·4 + 2), plus
/// [`GPU_F32_TOLERANCE`]. A checkpoint whose `matrices` are all exactly representable in f16
/// (stored f16, or bf16 within f16's range) loses nothing to the weights' rounding. Where the
/// projections run on the tensor cores (`tensor_cores`), their inputs are rounded to f16 too:
/// another u per matrix. Measured on lavapipe: 1.65e-3 against a bound of 4.9e-3
/// (torchscale_24heads_syncdoth, 2 layers), 8.8e-4 against 4.9e-3 (fla_basic); the exact ones
/// 1.3e-6 without tensor cores and 1.2e-3 against 6.8e-3 with lavapipe 26's 8×8 tiles
/// (torchscale_gelu_lnemb_f16, 3 layers).
pub fn f16_weights_tolerance<'a>(
    layers: usize,
    matrices: impl IntoIterator<Item = &'a [f32]>,
    tensor_cores: bool,
) -> f64 {
    let exact = |m: &[f32]| m.iter().all(|&v| half::f16::from_f32(v).to_f32() == v);
    let rounded = usize::from(!matrices.into_iter().all(exact)) + usize::from(tensor_cores);
    F16_UNIT_ROUNDOFF * ((4 * layers + 2) * rounded) as f64 + GPU_F32_TOLERANCE
}

/// f32's unit roundoff, 2^-24.
pub const F32_UNIT_ROUNDOFF: f64 = 1.0 / 16_777_216.0;
