//! Shared helpers of the kernel tests: the test kit's device policy, RNG, comparisons and f64
//! references (`retnet-testkit`), the shared tables of shapes (their quick set runs here), and a
//! blocking read-back.
// Test code: clippy.toml allows these in #[test] functions; the helpers here are test code too.
#![allow(clippy::expect_used)]
#![allow(dead_code, unused_imports)]

pub use retnet_testkit::gpu::device;
pub use retnet_testkit::reference;
pub use retnet_testkit::shapes::{self, Set};
pub use retnet_testkit::{as_stored, assert_close, formats, round_f16, to_f64, Rng};

/// Reads `len` f32 from a buffer, blocking (tests only).
pub fn read(
    device: &retnet_runtime::Device,
    buffer: &retnet_runtime::GpuBuffer,
    len: usize,
) -> Vec<f32> {
    pollster::block_on(device.read_f32(buffer, 0, len)).expect("read-back")
}
