//! `retnet serve`: the OpenAI-compatible server of `retnet-server` over a loaded model.

use std::path::PathBuf;

use retnet_model::FastCpuModel;
use retnet_server::backend::{CpuSource, FastCpuSource, GpuSource};
use retnet_server::engine::EngineOptions;

use crate::commands::Weights;
use crate::load::ModelSource;
use crate::CliError;

/// Where the server computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeBackend {
    /// A hardware GPU adapter if there is one, else the CPU engine.
    Auto,
    /// The GPU path (wgpu).
    Gpu,
    /// The CPU engine `retnet generate --backend cpu` runs (the fast one; the exact reference
    /// for hybrid checkpoints).
    Cpu,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Model directory (default: the shipped byte-level Shakespeare model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Where to compute.
    #[arg(long, value_enum, default_value = "auto")]
    backend: ServeBackend,
    /// Precision of the weight matrices (int8/q4 on the CPU too).
    #[arg(long, value_enum, default_value = "f32")]
    weights: Weights,
    /// Most sequences generated together.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_batch: u64,
    /// Most requests waiting for a slot; more get 503.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    queue: u64,
    /// Megabytes of prompt-prefix states to keep (0: no cache).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    state_cache_mb: u64,
}

pub fn serve(args: &ServeArgs) -> Result<(), CliError> {
    let source = ModelSource::new(args.model.as_deref())?;
    let tokenizer = source.tokenizer()?;
    let model_id = match &args.model {
        Some(dir) => dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string()),
        None => "retnet-shakespeare".to_string(),
    };
    let options = EngineOptions {
        max_batch: args.max_batch as usize,
        queue: args.queue as usize,
        state_cache_bytes: (args.state_cache_mb as usize) << 20,
        max_sessions: 1024,
    };
    // The codebase's one `auto` choice (`engine::resolve`): a hardware adapter, else the CPU
    // (software rasterizers such as lavapipe count as no GPU).
    let backend = match args.backend {
        ServeBackend::Auto => crate::Backend::Auto,
        ServeBackend::Gpu => crate::Backend::Gpu,
        ServeBackend::Cpu => crate::Backend::Cpu,
    };
    let gpu = match crate::engine::resolve(backend, true)? {
        crate::engine::Engine::Gpu(device) => Some(source.gpu_model_on(device, args.weights)?),
        crate::engine::Engine::Cpu => None,
    };
    let backend = if gpu.is_some() { "gpu" } else { "cpu" };
    let router = match gpu {
        Some(gpu) => retnet_server::router(GpuSource(gpu), tokenizer, &model_id, options),
        None => {
            // The engine `retnet generate --backend cpu` runs, so that a completion is its
            // output by construction: the fast one, the reference for hybrid checkpoints.
            let model = source.cpu_model_as(args.weights)?;
            if model.config().is_hybrid() {
                retnet_server::router(CpuSource(model), tokenizer, &model_id, options)
            } else {
                let fast = FastCpuSource(FastCpuModel::new(&model)?);
                drop(model);
                retnet_server::router(fast, tokenizer, &model_id, options)
            }
        }
    }
    .map_err(|e| CliError::BadArgument(format!("cannot start the engine: {e}")))?;
    let runtime = retnet_server::tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::BadArgument(format!("cannot start the server: {e}")))?;
    let address = format!("{}:{}", args.host, args.port);
    runtime.block_on(async {
        let listener = retnet_server::tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|e| CliError::BadArgument(format!("cannot listen on {address}: {e}")))?;
        let local = listener.local_addr().map_or(address.clone(), |a| a.to_string());
        crate::note(format_args!(
            "listening on http://{local} (model {model_id}, {backend} backend, max batch {}, queue {}, state cache {} MB)",
            args.max_batch, args.queue, args.state_cache_mb
        ));
        retnet_server::axum::serve(listener, router)
            .await
            .map_err(|e| CliError::BadArgument(format!("server failed: {e}")))
    })
}
