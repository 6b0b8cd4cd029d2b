//! The wgpu runtime for RetNet's kernels; knows nothing of checkpoints.
//!
//! - [`Device`]: adapter selection (discrete GPU first; `RETNET_BACKEND`, `RETNET_ADAPTER`),
//!   feature detection (SHADER_F16, SUBGROUP, TIMESTAMP_QUERY) and the adapter's own limits.
//! - [`choose_backend`]: what `--backend auto` runs on — a hardware adapter, else the CPU engine
//!   (software rasterizers such as lavapipe count as no GPU).
//! - Buffers: [`GpuBuffer`], [`Weights`] (f32, f16 native or packed), upload and async read-back;
//!   [`WeightWriter`] fills weights piece by piece in bounded host memory.
//! - [`Sequence`]: records [`retnet_kernels::Bound`] dispatches (a kernel launch with its
//!   buffers, named by the kernel's constructor) and submits them as one compute pass.
//!   Pipelines, bind groups and the parameter arena are cached in the device, so recording the
//!   same sequence again creates no GPU object ([`Device::cache_stats`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), retnet_runtime::RuntimeError> {
//! use retnet_kernels::rms_norm::{rms_norm, RmsNormBuffers, RmsNormParams};
//! use retnet_runtime::Device;
//! let device = Device::from_env().await?;
//! let x = device.upload_f32("x", &[1.0, 2.0, 3.0, 4.0])?;
//! let g = device.upload_f32("g", &[1.0; 4])?;
//! let y = device.create_storage_f32("y", 4)?;
//! let mut step = device.sequence("normalize");
//! let params = RmsNormParams { rows: 1, dim: 4, eps: 1e-6 };
//! let buffers = RmsNormBuffers { input: &x, norm_weight: &g, output: &y };
//! step.dispatch(rms_norm(params, buffers))?;
//! step.submit()?;
//! let values = device.read_f32(&y, 0, 4).await?;
//! # Ok(()) }
//! ```
//!
//! No call blocks: read-back is a future (drive it with any executor; tests use `pollster`).

mod auto;
mod buffer;
mod cache;
mod device;
mod error;
mod profile;
mod sequence;
mod upload;

pub use auto::{
    choose_backend, is_software_adapter, AutoBackend, AutoChoice, SOFTWARE_ADAPTER_NAMES,
};
pub use buffer::{GpuBuffer, RowBlock, WeightData, Weights};
pub use cache::{CacheStats, HostStats};
pub use device::{list_adapters, parse_backend, Device, DeviceOptions};
pub use error::RuntimeError;
pub use profile::KernelTime;
pub use retnet_kernels as kernels;
pub use sequence::Sequence;
pub use upload::WeightWriter;
/// The wgpu this runtime is built on, for [`Device::wgpu_device`] and [`Device::create_buffer_checked`].
pub use wgpu;
