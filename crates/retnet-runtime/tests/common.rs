//! Shared helpers of the kernel tests: one device for all tests, seeded data, comparisons.
// Test code: clippy.toml allows these in #[test] functions; the helpers here are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(dead_code)]

use retnet_runtime::{Device, DeviceOptions, RuntimeError};
use std::sync::OnceLock;

/// The device shared by every test, or `None` (with a message) when there is no adapter at all.
pub fn device() -> Option<&'static Device> {
    static DEVICE: OnceLock<Option<Device>> = OnceLock::new();
    DEVICE
        .get_or_init(|| match pollster::block_on(Device::new(&DeviceOptions::from_env().expect("RETNET_* variables"))) {
            Ok(device) => {
                let info = device.adapter_info();
                eprintln!(
                    "testing on {} ({:?}, {:?}), features {}",
                    info.name,
                    info.backend,
                    info.device_type,
                    device.features()
                );
                Some(device)
            }
            Err(RuntimeError::NoAdapter { .. }) => {
                eprintln!("SKIPPED: no GPU adapter (apt-get install mesa-vulkan-drivers for lavapipe)");
                None
            }
            Err(e) => panic!("device creation failed: {e}"),
        })
        .as_ref()
}

/// Reads `len` f32 from a buffer, blocking (tests only).
pub fn read(device: &Device, buffer: &retnet_runtime::GpuBuffer, len: usize) -> Vec<f32> {
    pollster::block_on(device.read_f32(buffer, 0, len)).expect("read-back")
}

/// Deterministic uniform values in [-1, 1) (splitmix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.uniform()).collect()
    }
}

/// Rounds through f16, as f16 weights are stored.
pub fn round_f16(values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect()
}

/// Error of `gpu` against `reference`, relative to the largest |reference| (a norm-wise measure:
/// elementwise relative error is meaningless for outputs that cancel to near zero).
pub fn max_relative_error(gpu: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(gpu.len(), reference.len(), "lengths differ");
    let scale = reference
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    gpu.iter()
        .zip(reference)
        .map(|(&g, &r)| (f64::from(g) - r).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Asserts `max_relative_error(gpu, reference) <= tolerance` and that nothing is NaN.
#[track_caller]
pub fn assert_close(what: &str, gpu: &[f32], reference: &[f64], tolerance: f64) {
    assert!(
        gpu.iter().all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    let error = max_relative_error(gpu, reference);
    eprintln!("{what}: {error:.2e}");
    assert!(
        error <= tolerance,
        "{what}: max error {error:.3e} (relative to max |ref|) over tolerance {tolerance:.1e}"
    );
}

pub fn to_f64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}
