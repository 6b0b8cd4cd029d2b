//! Adapter selection, feature detection and the [`Device`] that owns every cache.

use crate::cache::{CacheStats, Caches, Counters};
use crate::error::RuntimeError;
use retnet_kernels::gemm_coop::CoopShape;
use retnet_kernels::Features;
use std::sync::{Arc, Mutex};

/// Backends searched unless told otherwise: Vulkan, Metal, DX12 and the browser's WebGPU.
/// OpenGL is left out by default: its compute support is the weakest, and probing it on Linux
/// (EGL) prints driver noise on stderr; `RETNET_BACKEND=gl` still selects it.
pub const DEFAULT_BACKENDS: wgpu::Backends = wgpu::Backends::PRIMARY;

/// How to pick and configure the adapter. [`DeviceOptions::from_env`] reads the environment.
#[derive(Clone, Debug, Default)]
pub struct DeviceOptions {
    /// Backends to search; `None`: all that this build supports.
    pub backends: Option<wgpu::Backends>,
    /// Pick the first adapter whose name contains this (case-insensitive).
    pub adapter_name: Option<String>,
    /// Do not use `shader-f16` even if the adapter has it (driver workaround; f16 weights then use
    /// the packed path).
    pub disable_f16: bool,
    /// Do not use subgroup operations even if the adapter has them (driver workaround).
    pub disable_subgroups: bool,
    /// Do not use cooperative matrices (tensor cores) even if the adapter has them.
    pub disable_cooperative_matrix: bool,
    /// Bind at most this many bytes per storage binding, below the adapter's own limit (to test
    /// on any adapter what a smaller one does, e.g. WebGPU's default 128 MiB: larger matrices
    /// are split by rows).
    pub max_storage_binding_size: Option<u64>,
}

impl DeviceOptions {
    /// Options from the environment: `RETNET_BACKEND` = vulkan|metal|dx12|gl,
    /// `RETNET_ADAPTER` = substring of the adapter name, `RETNET_DISABLE_F16=1`,
    /// `RETNET_DISABLE_SUBGROUPS=1`, `RETNET_DISABLE_COOP=1`. Unset variables leave the defaults.
    pub fn from_env() -> Result<Self, RuntimeError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let backends = var("RETNET_BACKEND")
            .map(|b| parse_backend(&b))
            .transpose()?;
        let flag = |name: &str| var(name).is_some_and(|v| v != "0");
        Ok(DeviceOptions {
            backends,
            adapter_name: var("RETNET_ADAPTER"),
            disable_f16: flag("RETNET_DISABLE_F16"),
            disable_subgroups: flag("RETNET_DISABLE_SUBGROUPS"),
            disable_cooperative_matrix: flag("RETNET_DISABLE_COOP"),
            max_storage_binding_size: None,
        })
    }
}

/// Parses a backend name as `RETNET_BACKEND` takes it.
pub fn parse_backend(name: &str) -> Result<wgpu::Backends, RuntimeError> {
    match name.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
        "metal" | "mtl" => Ok(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
        "gl" | "gles" | "opengl" => Ok(wgpu::Backends::GL),
        _ => Err(RuntimeError::UnknownBackend(name.to_string())),
    }
}

/// One line per adapter the options can see: name, backend, device type.
pub async fn list_adapters(options: &DeviceOptions) -> Vec<wgpu::AdapterInfo> {
    let backends = options.backends.unwrap_or(DEFAULT_BACKENDS);
    let instance = instance(backends);
    instance
        .enumerate_adapters(backends)
        .await
        .iter()
        .map(wgpu::Adapter::get_info)
        .collect()
}

pub(crate) fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = backends;
    wgpu::Instance::new(descriptor)
}

/// Discrete first, CPU renderers last.
fn preference(device_type: wgpu::DeviceType) -> u8 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// The adapters the options allow (backends, `adapter_name`), in no particular order; empty when
/// there are none. `AdapterNotFound` when a name was asked for and none matches.
pub(crate) async fn candidate_adapters(
    instance: &wgpu::Instance,
    backends: wgpu::Backends,
    options: &DeviceOptions,
) -> Result<Vec<wgpu::Adapter>, RuntimeError> {
    #[cfg(not(target_arch = "wasm32"))]
    let mut adapters = instance.enumerate_adapters(backends).await;
    // Browsers expose one adapter through requestAdapter only (the instance's backends apply).
    #[cfg(target_arch = "wasm32")]
    let _ = backends;
    #[cfg(target_arch = "wasm32")]
    let mut adapters: Vec<wgpu::Adapter> = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .into_iter()
        .collect();
    if adapters.is_empty() {
        return Ok(adapters);
    }
    if let Some(wanted) = &options.adapter_name {
        let needle = wanted.to_lowercase();
        let available: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        adapters.retain(|a| a.get_info().name.to_lowercase().contains(&needle));
        if adapters.is_empty() {
            return Err(RuntimeError::AdapterNotFound {
                wanted: wanted.clone(),
                available,
            });
        }
    }
    Ok(adapters)
}

/// The most preferred of `adapters` (discrete first, CPU renderers last).
pub(crate) fn best_adapter(mut adapters: Vec<wgpu::Adapter>) -> Option<wgpu::Adapter> {
    adapters.sort_by_key(|a| preference(a.get_info().device_type));
    adapters.into_iter().next()
}

async fn select_adapter(
    instance: &wgpu::Instance,
    backends: wgpu::Backends,
    options: &DeviceOptions,
) -> Result<wgpu::Adapter, RuntimeError> {
    let adapters = candidate_adapters(instance, backends, options).await?;
    best_adapter(adapters).ok_or_else(|| RuntimeError::NoAdapter {
        backends: format!("{backends:?}"),
    })
}

/// How the tensor-core GEMM runs on this adapter, if it can: the largest square tile among the
/// adapter's cooperative-matrix configurations with f16 inputs and f32 accumulators that the
/// backend's shading language expresses ([`CoopTile::expressible_in`]) and whose workgroup fits
/// the adapter's limits.
///
/// The workgroup is sized for the adapter's smallest subgroup, so that it never holds more
/// subgroups than the kernel has sub-blocks (wider subgroups are computed in passes); Metal
/// reports 4..64 for every GPU, while Apple GPUs, the only ones with simdgroup matrices, run
/// SIMD-groups of 32.
fn coop_shape(adapter: &wgpu::Adapter) -> Option<CoopShape> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use retnet_kernels::gemm_coop::{CoopTile, Language, SUB_BLOCKS};
        use wgpu::CooperativeScalarType as Scalar;
        let info = adapter.get_info();
        // The shading language wgpu writes for this backend.
        let language = match info.backend {
            wgpu::Backend::Vulkan => Language::SpirV,
            wgpu::Backend::Metal => Language::Msl,
            wgpu::Backend::Dx12 => Language::Hlsl,
            _ => return None,
        };
        if !adapter
            .features()
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        {
            return None;
        }
        let subgroup_size = match info.backend {
            wgpu::Backend::Metal => 32,
            _ => info.subgroup_min_size,
        };
        let limits = adapter.limits();
        let properties = adapter.cooperative_matrix_properties();
        CoopTile::ALL.into_iter().find_map(|tile| {
            let offered = properties.iter().any(|p| {
                CoopTile::from_sizes(p.m_size, p.n_size, p.k_size) == Some(tile)
                    && p.ab_type == Scalar::F16
                    && p.cr_type == Scalar::F32
            });
            let invocations = SUB_BLOCKS * subgroup_size;
            let fits = subgroup_size > 0
                && invocations <= limits.max_compute_invocations_per_workgroup
                && invocations <= limits.max_compute_workgroup_size_x
                && tile.workgroup_bytes() <= limits.max_compute_workgroup_storage_size;
            (offered && fits && tile.expressible_in(language)).then_some(CoopShape {
                tile,
                subgroup_size,
            })
        })
    }
    // Browsers offer no cooperative matrices.
    #[cfg(target_arch = "wasm32")]
    {
        let _ = adapter;
        None
    }
}

/// The GPU: wgpu device and queue, what the adapter offers, and every cache (shader modules,
/// pipelines, bind groups, the parameter arena, read-back staging buffers).
pub struct Device {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    features: Features,
    coop: Option<CoopShape>,
    timestamp_query: bool,
    half_unpack: bool,
    limits: wgpu::Limits,
    pub(crate) caches: Mutex<Caches>,
    pub(crate) counters: Arc<Counters>,
    /// Ids of dropped [`crate::GpuBuffer`]s whose bind groups are still cached.
    pub(crate) dropped_buffers: Arc<Mutex<Vec<u64>>>,
    /// First wgpu error reported outside an error scope, taken by the next submit.
    pub(crate) uncaptured_error: Arc<Mutex<Option<UncapturedError>>>,
    /// Why the device was lost, once it is: every later call fails with
    /// [`RuntimeError::DeviceLost`] instead of waiting on a device that will never answer.
    pub(crate) lost: Arc<Mutex<Option<String>>>,
    /// Per-dispatch timestamps, while profiling ([`Device::start_profiling`]).
    pub(crate) profiler: Mutex<Option<crate::profile::Profiler>>,
    /// The last submitted sequence's emptied lists, reused by the next ([`Device::sequence`]).
    pub(crate) sequence_storage: Mutex<crate::sequence::SequenceStorage>,
}

/// An error wgpu reported outside an error scope, kept until the next submit.
#[derive(Debug)]
pub(crate) enum UncapturedError {
    OutOfMemory(String),
    Other(String),
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Picks an adapter (discrete GPU first; `options` may fix backend and name), enables
    /// SHADER_F16, SUBGROUP and TIMESTAMP_QUERY where offered, and requests the adapter's own
    /// limits (WebGPU's defaults, e.g. 128 MiB per storage binding, are too small for an LLM).
    pub async fn new(options: &DeviceOptions) -> Result<Device, RuntimeError> {
        let backends = options.backends.unwrap_or(DEFAULT_BACKENDS);
        let instance = instance(backends);
        let adapter = select_adapter(&instance, backends, options).await?;
        Device::open(adapter, options).await
    }

    /// Opens `adapter` as [`Device::new`] does once it has picked one.
    pub(crate) async fn open(
        adapter: wgpu::Adapter,
        options: &DeviceOptions,
    ) -> Result<Device, RuntimeError> {
        let info = adapter.get_info();
        let offered = adapter.features();
        let mut wanted = wgpu::Features::empty();
        if offered.contains(wgpu::Features::SHADER_F16) && !options.disable_f16 {
            wanted |= wgpu::Features::SHADER_F16;
        }
        if offered.contains(wgpu::Features::SUBGROUP) && !options.disable_subgroups {
            wanted |= wgpu::Features::SUBGROUP;
        }
        if offered.contains(wgpu::Features::TIMESTAMP_QUERY) {
            wanted |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let coop = if !options.disable_cooperative_matrix
            && wanted.contains(wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP)
        {
            coop_shape(&adapter)
        } else {
            None
        };
        let cooperative_matrix = coop.is_some();
        if cooperative_matrix {
            wanted |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        let mut limits = adapter.limits();
        if let Some(max) = options.max_storage_binding_size {
            // Bindings are offset and sized in multiples of 256 bytes at most.
            let max = (max / 256 * 256).max(256);
            limits.max_storage_buffer_binding_size =
                limits.max_storage_buffer_binding_size.min(max);
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("retnet"),
                required_features: wanted,
                required_limits: limits.clone(),
                experimental_features: if cooperative_matrix {
                    // SAFETY: the one experimental feature requested is cooperative matrices,
                    // used only by the tensor-core matmul, which `cargo xtask verify` checks
                    // against the CPU on every adapter that offers it.
                    unsafe { wgpu::ExperimentalFeatures::enabled() }
                } else {
                    wgpu::ExperimentalFeatures::disabled()
                },
                ..Default::default()
            })
            .await
            .map_err(|source| RuntimeError::RequestDevice {
                adapter: info.name.clone(),
                source,
            })?;
        // wgpu's default handler panics: record the error instead, for the next submit.
        let uncaptured_error = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&uncaptured_error);
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            if let Ok(mut slot) = slot.lock() {
                slot.get_or_insert_with(|| match error {
                    wgpu::Error::OutOfMemory { .. } => {
                        UncapturedError::OutOfMemory(error.to_string())
                    }
                    _ => UncapturedError::Other(error.to_string()),
                });
            }
        }));
        let lost = Arc::new(Mutex::new(None));
        let lost_slot = Arc::clone(&lost);
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut slot) = lost_slot.lock() {
                slot.get_or_insert_with(|| format!("{reason:?}: {message}"));
            }
        });
        let downlevel = adapter.get_downlevel_capabilities().flags;
        let features = Features {
            shader_f16: wanted.contains(wgpu::Features::SHADER_F16),
            subgroups: wanted.contains(wgpu::Features::SUBGROUP),
            cooperative_matrix,
        };
        Ok(Device {
            device,
            queue,
            info,
            features,
            coop,
            timestamp_query: wanted.contains(wgpu::Features::TIMESTAMP_QUERY),
            half_unpack: features.shader_f16
                || downlevel.contains(wgpu::DownlevelFlags::SHADER_F16_IN_F32),
            limits,
            caches: Mutex::new(Caches::default()),
            counters: Arc::new(Counters::default()),
            dropped_buffers: Arc::new(Mutex::new(Vec::new())),
            uncaptured_error,
            lost,
            profiler: Mutex::new(None),
            sequence_storage: Mutex::new(Default::default()),
        })
    }

    /// [`Device::new`] with [`DeviceOptions::from_env`].
    pub async fn from_env() -> Result<Device, RuntimeError> {
        Device::new(&DeviceOptions::from_env()?).await
    }

    /// The adapter's name, backend, type and driver.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Optional features in use (kernel variants are chosen from these).
    pub fn features(&self) -> Features {
        self.features
    }

    /// How the tensor-core GEMM runs here ([`retnet_kernels::gemm_coop`]); `Some` exactly when
    /// [`Features::cooperative_matrix`] is in [`Device::features`].
    pub fn coop_shape(&self) -> Option<CoopShape> {
        self.coop
    }

    /// Whether TIMESTAMP_QUERY is enabled.
    pub fn has_timestamp_query(&self) -> bool {
        self.timestamp_query
    }

    /// Whether f16 weights can be read at all (natively or packed).
    pub fn supports_half_weights(&self) -> bool {
        self.half_unpack
    }

    /// The limits in force (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The wgpu device, for what this crate does not wrap.
    pub fn wgpu_device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn wgpu_queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// How many GPU objects the runtime has created so far. Recording the same dispatch sequence
    /// a second time must leave these unchanged.
    pub fn cache_stats(&self) -> CacheStats {
        self.counters.snapshot()
    }

    /// Sequences submitted so far and the host time they took (recording, encoding and
    /// submitting): against the GPU's time, whether the host keeps up.
    pub fn host_stats(&self) -> crate::HostStats {
        self.counters.host()
    }

    pub(crate) fn take_uncaptured_error(&self) -> Result<(), RuntimeError> {
        self.check_lost()?;
        let error = self.uncaptured_error.lock().ok().and_then(|mut e| e.take());
        match error {
            None => Ok(()),
            Some(UncapturedError::OutOfMemory(message)) => Err(RuntimeError::OutOfMemory {
                what: format!("submitted work ({message})"),
            }),
            Some(UncapturedError::Other(message)) => Err(RuntimeError::Wgpu(message)),
        }
    }

    /// Why the device was lost, if it was.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|reason| reason.clone())
    }

    /// [`RuntimeError::DeviceLost`] once the device is lost.
    pub(crate) fn check_lost(&self) -> Result<(), RuntimeError> {
        match self.lost_reason() {
            Some(reason) => Err(RuntimeError::DeviceLost { reason }),
            None => Ok(()),
        }
    }

    /// Destroys the wgpu device as a driver reset would, to test recovery: every later call on
    /// this device, its buffers, models and sessions returns [`RuntimeError::DeviceLost`]. A
    /// new [`Device`] can be created afterwards.
    pub fn simulate_loss(&self) {
        if let Ok(mut slot) = self.lost.lock() {
            slot.get_or_insert_with(|| "simulated loss (Device::simulate_loss)".to_string());
        }
        self.device.destroy();
    }
}
