//! Helpers shared by every test of the workspace and by `cargo xtask verify` (dev-only, never
//! published):
//!
//! - [`Rng`]: the one seeded generator (splitmix64), so a seed means the same data everywhere;
//! - [`gpu`]: the one adapter policy (`RETNET_REQUIRE_GPU`, `RETNET_SKIP_GPU_TESTS`);
//! - [`compare`]: error measures and assertions that fail on any non-finite value, on either
//!   side;
//! - [`reference`]: f64 computations of what each kernel computes, written from the spec
//!   (/work/shared/docs/retnet-spec.md), independently of the shaders and of the runtime.
//!
//! See `docs/testing.md` for the tolerances and what they catch.
#![allow(clippy::indexing_slicing)]

pub mod compare;
pub mod gpu;
pub mod reference;
mod rng;

pub use compare::{
    assert_close, assert_close_f32, assert_finite_and_differ, errors, max_relative_error,
    rel_max_err, to_f64,
};
pub use rng::Rng;

/// Rounds through f16, as f16 weights are stored.
pub fn round_f16(values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect()
}

/// f16's unit roundoff, 2^-11: the largest relative error of rounding one value to f16.
pub const F16_UNIT_ROUNDOFF: f64 = 1.0 / 2048.0;
/// f32's unit roundoff, 2^-24.
pub const F32_UNIT_ROUNDOFF: f64 = 1.0 / 16_777_216.0;
