//! Which engine a command runs on: `--backend gpu|cpu|auto`.

use std::sync::Arc;

use retnet_model::ModelError;
use retnet_runtime::{choose_backend, AutoBackend, Device, DeviceOptions};

use crate::{Backend, CliError};

/// The engine a command runs on.
pub enum Engine {
    /// The GPU path on this device.
    Gpu(Arc<Device>),
    /// The CPU engine.
    Cpu,
}

/// Resolves `--backend`, printing one line on stderr that says which engine runs and why
/// (`auto`: a hardware GPU adapter, else the CPU; see `retnet_runtime::choose_backend`). An
/// explicit `gpu` or `cpu` is announced too when `announce_explicit`.
pub fn resolve(backend: Backend, announce_explicit: bool) -> Result<Engine, CliError> {
    let (engine, reason) = match backend {
        Backend::Gpu => {
            let device = crate::load::gpu_device()?;
            let info = device.adapter_info();
            let reason = format!(
                "--backend gpu: {} ({:?}, {:?})",
                info.name, info.device_type, info.backend
            );
            (Engine::Gpu(device), reason)
        }
        Backend::Cpu => (Engine::Cpu, "--backend cpu".to_string()),
        Backend::Auto => {
            let options = DeviceOptions::from_env().map_err(ModelError::from)?;
            let choice = pollster::block_on(choose_backend(&options)).map_err(ModelError::from)?;
            let engine = match choice.backend {
                AutoBackend::Gpu(device) => Engine::Gpu(Arc::new(device)),
                AutoBackend::Cpu => Engine::Cpu,
            };
            (engine, format!("auto: {}", choice.reason))
        }
    };
    let name = match engine {
        Engine::Gpu(_) => "gpu",
        Engine::Cpu => "cpu",
    };
    if announce_explicit || backend == Backend::Auto {
        crate::note(format_args!("engine: {name} ({reason})"));
    }
    Ok(engine)
}
