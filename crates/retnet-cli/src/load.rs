//! Loading a model for a command: a directory given with `--model`, or the default model
//! compiled into the binary.

use std::path::Path;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use retnet_model::{Bytes, CpuModel, Tokenizer};

use crate::CliError;

/// The default model, compiled into the binary so that `retnet generate` works anywhere: a
/// byte-level RetNet (torchscale architecture, 6.8M parameters, f16) trained on Shakespeare's
/// plays; see `models/retnet-shakespeare` and `tools/train`.
const DEFAULT_CONFIG: &str = include_str!("../../../models/retnet-shakespeare/config.json");
static DEFAULT_WEIGHTS: &[u8] =
    include_bytes!("../../../models/retnet-shakespeare/model.safetensors");

/// A model, its tokenizer, and a name for messages.
pub struct Loaded {
    pub model: CpuModel,
    pub tokenizer: Tokenizer,
}

/// Loads `dir`, or the default model; shows a progress bar for checkpoints of many layers.
pub fn load(dir: Option<&Path>) -> Result<Loaded, CliError> {
    let Some(dir) = dir else {
        let model = CpuModel::from_bytes(DEFAULT_CONFIG, Bytes::Static(DEFAULT_WEIGHTS))?;
        let tokenizer = Tokenizer::bytes_for(model.config())
            .ok_or_else(|| CliError::BadArgument("the default model is not byte-level".into()))?;
        return Ok(Loaded { model, tokenizer });
    };
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template("loading {msg} {bar:30} layer {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(dir.display().to_string());
    let mut progress = |done: usize, total: usize| {
        if total >= 8 && bar.is_hidden() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let model = CpuModel::load_with_progress(dir, &mut progress)?;
    bar.finish_and_clear();
    let tokenizer = Tokenizer::for_model(dir, model.config())?;
    Ok(Loaded { model, tokenizer })
}

/// The GPU device (chosen by `RETNET_BACKEND` / `RETNET_ADAPTER`, discrete GPUs first).
pub fn gpu_device() -> Result<Arc<retnet_runtime::Device>, CliError> {
    let device = pollster::block_on(retnet_runtime::Device::from_env())
        .map_err(retnet_model::ModelError::from)?;
    Ok(Arc::new(device))
}
