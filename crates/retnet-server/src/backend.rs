//! The adapter between the scheduler and the model crate's engines: where a fresh sequence
//! comes from on each backend. Everything the server knows about `GpuSession`/`CpuEngine`
//! construction lives here, so that a change of their signatures touches this file only.

use retnet_model::{
    CpuEngine, CpuModel, Engine, FastCpuEngine, FastCpuModel, GpuModel, GpuSession, ModelConfig,
    Result, WeightsFingerprint,
};

/// A model on some backend that makes independent sequences (one per request).
pub trait EngineSource: Send + 'static {
    /// One sequence's engine.
    type Engine<'a>: Engine + Send
    where
        Self: 'a;
    /// A fresh sequence (zero state at position 0).
    fn engine(&self) -> Result<Self::Engine<'_>>;
    /// The model's config.
    fn config(&self) -> &ModelConfig;
    /// The fingerprint of the model's weights (state files carry it).
    fn fingerprint(&self) -> &WeightsFingerprint;
    /// The backend's name for logs and `/metrics`: `cpu` or `gpu`.
    fn name(&self) -> &'static str;
    /// Whether the sequences of a step should run on parallel threads (the CPU's cores); a
    /// GPU queue runs them one after the other anyway.
    fn parallel_steps(&self) -> bool;
}

/// The fast CPU engine, the one `retnet generate --backend cpu` runs: one [`FastCpuEngine`] per
/// sequence (each also spreads its own work over rayon's threads).
pub struct FastCpuSource(pub FastCpuModel);

impl EngineSource for FastCpuSource {
    type Engine<'a> = FastCpuEngine<'a>;

    fn engine(&self) -> Result<FastCpuEngine<'_>> {
        Ok(self.0.session())
    }

    fn config(&self) -> &ModelConfig {
        self.0.config()
    }

    fn fingerprint(&self) -> &WeightsFingerprint {
        self.0.fingerprint()
    }

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn parallel_steps(&self) -> bool {
        true
    }
}

/// The exact CPU reference (f64): one [`CpuEngine`] per sequence. `retnet serve` uses it only
/// for what the fast engine cannot run (hybrid checkpoints), as `retnet generate` does.
pub struct CpuSource(pub CpuModel);

impl EngineSource for CpuSource {
    type Engine<'a> = CpuEngine<'a>;

    fn engine(&self) -> Result<CpuEngine<'_>> {
        Ok(CpuEngine::new(&self.0))
    }

    fn config(&self) -> &ModelConfig {
        self.0.config()
    }

    fn fingerprint(&self) -> &WeightsFingerprint {
        self.0.fingerprint()
    }

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn parallel_steps(&self) -> bool {
        true
    }
}

/// The GPU: one [`GpuSession`] per sequence (its own state and activation buffers).
pub struct GpuSource(pub GpuModel);

impl EngineSource for GpuSource {
    type Engine<'a> = GpuSession;

    fn engine(&self) -> Result<GpuSession> {
        self.0.session()
    }

    fn config(&self) -> &ModelConfig {
        self.0.config()
    }

    fn fingerprint(&self) -> &WeightsFingerprint {
        self.0.fingerprint()
    }

    fn name(&self) -> &'static str {
        "gpu"
    }

    fn parallel_steps(&self) -> bool {
        false
    }
}
