//! `--backend auto`: a hardware GPU when there is one, otherwise the CPU engine.
//!
//! A software rasterizer (Mesa's llvmpipe/lavapipe, Google's SwiftShader, Microsoft's WARP)
//! runs the GPU kernels on the CPU through a shader JIT; on the same cores the CPU engine of
//! `retnet-model` decodes several times faster, so `auto` treats those adapters as "no GPU".
//! An adapter is software when wgpu reports [`wgpu::DeviceType::Cpu`] (lavapipe, SwiftShader
//! and WARP do) or when its name names one of them ([`SOFTWARE_ADAPTER_NAMES`]; the GL backend
//! reports llvmpipe as `Other`).

use crate::device::{best_adapter, candidate_adapters, instance, DEFAULT_BACKENDS};
use crate::{Device, DeviceOptions, RuntimeError};

/// Words (lower case) that mark an adapter name as a software rasterizer; multi-word entries
/// are matched as substrings of the lower-cased name, single words as whole words.
pub const SOFTWARE_ADAPTER_NAMES: &[&str] = &[
    "llvmpipe",
    "lavapipe",
    "softpipe",
    "swiftshader",
    "warp",
    "microsoft basic render driver",
];

/// Whether an adapter renders in software on the CPU (see the module docs).
pub fn is_software_adapter(info: &wgpu::AdapterInfo) -> bool {
    if info.device_type == wgpu::DeviceType::Cpu {
        return true;
    }
    let name = info.name.to_lowercase();
    let words = name.split(|c: char| !c.is_ascii_alphanumeric());
    SOFTWARE_ADAPTER_NAMES.iter().any(|&marker| {
        if marker.contains(' ') {
            name.contains(marker)
        } else {
            words.clone().any(|w| w == marker)
        }
    })
}

/// What `auto` picked.
// Made once per process and moved straight into an `Arc`: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum AutoBackend {
    /// A hardware adapter, opened.
    Gpu(Device),
    /// The CPU engine: no adapter, only software adapters, or the hardware one failed to open.
    Cpu,
}

/// The choice and a one-line reason, for the user (`engine: … (reason)`).
pub struct AutoChoice {
    /// The engine to run on.
    pub backend: AutoBackend,
    /// Why, in a few words: the adapter's name and kind, or why no GPU is used.
    pub reason: String,
}

impl AutoChoice {
    /// `"gpu"` or `"cpu"`.
    pub fn engine_name(&self) -> &'static str {
        match self.backend {
            AutoBackend::Gpu(_) => "gpu",
            AutoBackend::Cpu => "cpu",
        }
    }
}

/// Chooses the engine as `--backend auto` does: the most preferred hardware adapter among those
/// `options` allow (backend and name filters apply), opened; otherwise the CPU. Errors only for
/// options that name something absent (`RETNET_ADAPTER` matching no adapter); a missing driver
/// or a device that fails to open falls back to the CPU with the reason.
pub async fn choose_backend(options: &DeviceOptions) -> Result<AutoChoice, RuntimeError> {
    let backends = options.backends.unwrap_or(DEFAULT_BACKENDS);
    let instance = instance(backends);
    let adapters = candidate_adapters(&instance, backends, options).await?;
    if adapters.is_empty() {
        return Ok(AutoChoice {
            backend: AutoBackend::Cpu,
            reason: format!("no GPU adapter found (searched {backends:?})"),
        });
    }
    let (software, hardware): (Vec<_>, Vec<_>) = adapters
        .into_iter()
        .partition(|a| is_software_adapter(&a.get_info()));
    let Some(adapter) = best_adapter(hardware) else {
        let names: Vec<String> = software
            .iter()
            .map(|a| {
                let info = a.get_info();
                format!("{} ({:?})", info.name, info.backend)
            })
            .collect();
        return Ok(AutoChoice {
            backend: AutoBackend::Cpu,
            reason: format!(
                "only software GPU adapters: {}; the CPU engine is faster on the same cores \
                 (--backend gpu uses the adapter anyway)",
                names.join(", ")
            ),
        });
    };
    let info = adapter.get_info();
    let described = format!("{} ({:?}, {:?})", info.name, info.device_type, info.backend);
    Ok(match Device::open(adapter, options).await {
        Ok(device) => AutoChoice {
            backend: AutoBackend::Gpu(device),
            reason: format!("hardware adapter {described}"),
        },
        Err(e) => AutoChoice {
            backend: AutoBackend::Cpu,
            reason: format!("the hardware adapter {described} failed to open: {e}"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, device_type: wgpu::DeviceType) -> wgpu::AdapterInfo {
        wgpu::AdapterInfo {
            name: name.into(),
            ..wgpu::AdapterInfo::new(device_type, wgpu::Backend::Vulkan)
        }
    }

    #[test]
    fn software_adapters_are_recognised_by_type_and_name() {
        use wgpu::DeviceType::*;
        for (name, kind, software) in [
            ("llvmpipe (LLVM 15.0.6, 256 bits)", Cpu, true),
            ("llvmpipe (LLVM 15.0.6, 256 bits)", Other, true), // the GL backend
            ("SwiftShader Device (Subzero)", Cpu, true),
            ("SwiftShader Device (LLVM 10.0.0)", Other, true),
            ("Microsoft Basic Render Driver", Other, true), // WARP
            ("Some Software Device", Cpu, true),
            ("NVIDIA H100 80GB HBM3", DiscreteGpu, false),
            (
                "AMD Radeon Graphics (RADV RAPHAEL_MENDOCINO)",
                IntegratedGpu,
                false,
            ),
            ("Apple M2", IntegratedGpu, false),
            ("Intel(R) Arc(tm) A770 Graphics (DG2)", DiscreteGpu, false),
            ("Warpspeed GPU 9000", DiscreteGpu, false), // "warp" only as a whole word
        ] {
            assert_eq!(is_software_adapter(&info(name, kind)), software, "{name}");
        }
    }
}
