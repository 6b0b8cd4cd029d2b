//! The runtime's error type.

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No adapter at all on the selected backends.
    #[error(
        "no GPU adapter found (backends: {backends}; on a machine without a GPU: \
         `apt-get install mesa-vulkan-drivers`)"
    )]
    NoAdapter {
        /// The backends searched.
        backends: String,
    },
    /// `RETNET_ADAPTER` (or the option) matched none of the adapters.
    #[error("no adapter name contains {wanted:?}; available: {}", available.join(", "))]
    AdapterNotFound {
        /// The substring asked for.
        wanted: String,
        /// Names of the adapters that exist.
        available: Vec<String>,
    },
    /// `RETNET_BACKEND` holds something else than vulkan, metal, dx12 or gl.
    #[error("unknown backend {0:?} (expected vulkan, metal, dx12 or gl)")]
    UnknownBackend(String),
    /// The adapter refused the device request.
    #[error("requesting a device from {adapter} failed: {source}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// wgpu's reason.
        source: wgpu::RequestDeviceError,
    },
    /// A buffer larger than the adapter allows.
    #[error("buffer {label:?} needs {size} bytes, over the adapter's {limit} of {max} bytes")]
    BufferTooLarge {
        /// Buffer label.
        label: String,
        /// Requested size.
        size: u64,
        /// Which limit.
        limit: &'static str,
        /// The limit's value.
        max: u64,
    },
    /// A kernel needs a feature the device lacks.
    #[error("kernel {kernel} needs {needed}, the device offers {available}")]
    MissingFeature {
        /// Kernel name.
        kernel: &'static str,
        /// What it needs.
        needed: String,
        /// What the device has.
        available: String,
    },
    /// Packed f16 weights need `unpack2x16float`, missing on this adapter.
    #[error(
        "this adapter cannot unpack f16 (no SHADER_F16_IN_F32 nor SHADER_F16): use f32 weights"
    )]
    NoHalfPrecision,
    /// A dispatch got the wrong number of buffers.
    #[error("kernel {kernel} binds {expected} buffers, got {got}")]
    WrongBufferCount {
        /// Kernel name.
        kernel: &'static str,
        /// Buffers it binds.
        expected: usize,
        /// Buffers given.
        got: usize,
    },
    /// The same buffer bound as written and at another binding of one dispatch (wgpu forbids it).
    #[error("kernel {kernel}: buffer {label:?} is written at binding {binding} and bound again")]
    AliasedOutput {
        /// Kernel name.
        kernel: &'static str,
        /// Buffer label.
        label: String,
        /// The written binding.
        binding: u32,
    },
    /// Mapping a buffer for reading failed.
    #[error("reading back buffer {label:?} failed: {source}")]
    Map {
        /// Buffer label.
        label: String,
        /// wgpu's reason.
        source: wgpu::BufferAsyncError,
    },
    /// The GPU could not allocate memory (reported by wgpu's out-of-memory error scope around
    /// buffer creation, or by the device at the next submit).
    #[error("out of GPU memory: {what}")]
    OutOfMemory {
        /// What was being allocated or submitted.
        what: String,
    },
    /// The device is gone (driver reset, GPU removed, or [`crate::Device::simulate_loss`]):
    /// nothing on it can be used again. Drop its models and sessions and create a new device.
    #[error("the GPU device was lost ({reason}); create a new device")]
    DeviceLost {
        /// The driver's or wgpu's reason.
        reason: String,
    },
    /// wgpu reported a validation error.
    #[error("wgpu error: {0}")]
    Wgpu(String),
}
