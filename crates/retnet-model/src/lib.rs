//! RetNet models: one config for the torchscale and fla checkpoint families, safetensors
//! weights, an exact CPU reference implementation of the three retention forms (the oracle),
//! and a fast CPU engine ([`FastCpuModel`]) checked against it.
//!
//! ```no_run
//! use retnet_model::{CpuModel, RetentionForm};
//! # fn main() -> Result<(), retnet_model::ModelError> {
//! let model = CpuModel::load(std::path::Path::new("path/to/model"))?;
//! let logits = model.logits(&[1, 2, 3], RetentionForm::Chunkwise { chunk_size: 64 })?;
//! assert_eq!(logits.len(), 3 * model.config().vocab_size);
//! # Ok(()) }
//! ```

pub mod config;
pub mod cpu_kernels;
pub mod error;
pub mod fast_cpu;
pub mod files;
pub mod gpu;
pub mod quant;
pub mod reference;
pub mod retention;
pub mod safetensors_store;
pub mod sampling;
pub mod session;
pub mod state_file;
pub mod tokenizer;
pub mod weights;

pub use config::{
    Activation, AttentionConfig, DecaySource, Family, LayerKind, ModelConfig, NormPlacement,
    OutputScale, RotaryStyle,
};
pub use error::{ModelError, Result};
pub use fast_cpu::{FastCpuEngine, FastCpuModel};
pub use gpu::{GpuBatch, GpuModel, GpuOptions, GpuSession, LogitRows, WeightPrecision};
pub use reference::{CpuModel, CpuState, RetentionForm};
pub use safetensors_store::{Bytes, TensorStore};
pub use sampling::{Sampler, SamplingParams};
pub use session::{mean_nll, CpuEngine, CpuSession, Engine, Generator, SessionBook};
pub use tokenizer::{TextStream, Tokenizer};
pub use weights::{
    AttentionWeights, CheckpointWeights, LayerTensor, LayerWeights, Linear, ModelWeights,
    TensorRole, WeightSource, WeightsFingerprint,
};
