//! `retnet serve`: an OpenAI-compatible HTTP server for RetNet models, with continuous batching
//! and an exact prefix-state cache.
//!
//! - [`engine`]: the scheduler (usable without HTTP): a batch of [`retnet_model::Generator`]s
//!   that requests join and leave between steps, prompts prefilled in pieces between decode
//!   steps, a prefix-state cache ([`cache`]) and kept sessions.
//! - [`http`]: the axum routes (`/v1/completions`, `/v1/chat/completions`, `/v1/models`,
//!   `/health`, `/metrics`, `/v1/sessions/{id}`), OpenAI-style errors.
//! - [`backend`]: where sequences come from on the CPU and on the GPU.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use retnet_model::{CpuModel, Tokenizer};
//! use retnet_server::{backend::CpuSource, engine::EngineOptions};
//! let model = CpuModel::load(std::path::Path::new("models/retnet-shakespeare")).unwrap();
//! let tokenizer = Tokenizer::bytes_for(model.config()).unwrap();
//! let options = EngineOptions { max_batch: 8, queue: 64, state_cache_bytes: 256 << 20, max_sessions: 1024 };
//! let router = retnet_server::router(CpuSource(model), tokenizer, "retnet-shakespeare", options)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, router).await
//! # }
//! ```

pub mod api;
pub mod backend;
pub mod cache;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod text;

use std::sync::{Arc, Mutex};

pub use axum;
use backend::EngineSource;
use engine::{EngineOptions, Shared};
use retnet_model::Tokenizer;
pub use tokio;

/// Starts the engine on a thread of its own and returns the HTTP routes over it; serve them
/// with `axum::serve`.
pub fn router<S: EngineSource>(
    source: S,
    tokenizer: Tokenizer,
    model_id: &str,
    options: EngineOptions,
) -> std::io::Result<axum::Router> {
    let config = source.config().clone();
    let fingerprint = source.fingerprint().clone();
    let backend = source.name();
    let shared = Arc::new(Shared {
        options,
        tokenizer,
        metrics: Default::default(),
        sessions: Mutex::new(Default::default()),
    });
    let jobs = engine::spawn(source, shared.clone())?;
    let app = http::App {
        shared,
        jobs: Mutex::new(jobs),
        model_id: model_id.to_string(),
        config,
        fingerprint,
        backend,
        created: http::unix_now(),
    };
    Ok(http::router(Arc::new(app)))
}
