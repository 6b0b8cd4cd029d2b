//! # retnet
//!
//! Inference of RetNet (Retentive Network) language models: one config for the torchscale and
//! fla checkpoint families, safetensors weights, an exact CPU reference of the three retention
//! forms (parallel, recurrent, chunkwise), and — in [`runtime`] and [`kernels`] — the wgpu
//! device layer and the WGSL kernels of the GPU path.
//!
//! Embedders depend on this crate alone; it re-exports the layers below it.
//!
//! ```no_run
//! use retnet::{CpuModel, RetentionForm};
//! # fn main() -> Result<(), retnet::ModelError> {
//! let model = CpuModel::load(std::path::Path::new("tests/fixtures/fla_basic"))?;
//! let mut state = model.new_state();
//! // Prefill chunkwise, then continue token by token: both advance the same state.
//! let prompt = model.forward(&[1, 2, 3, 4], &mut state, RetentionForm::Chunkwise { chunk_size: 64 })?;
//! let next = model.forward(&[5], &mut state, RetentionForm::Recurrent)?;
//! # let _ = (prompt, next);
//! # Ok(()) }
//! ```

pub use retnet_kernels as kernels;
pub use retnet_model as model;
pub use retnet_model::{
    CpuModel, CpuState, Family, ModelConfig, ModelError, ModelWeights, RetentionForm,
};
pub use retnet_runtime as runtime;
