//! Loading a model for a command: a directory given with `--model`, or the default model
//! compiled into the binary. The GPU backend streams the weights from the file to the GPU; the
//! CPU reference (a host f32 copy of every weight) is only built for the CPU backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use retnet_model::{Bytes, CpuModel, GpuModel, GpuOptions, ModelConfig, TensorStore, Tokenizer};

use crate::commands::Weights;
use crate::CliError;

/// The default model, compiled into the binary so that `retnet generate` works anywhere: a
/// byte-level RetNet (torchscale architecture, 6.8M parameters, f16) trained on Shakespeare's
/// plays; see `models/retnet-shakespeare` and `tools/train`.
const DEFAULT_CONFIG: &str = include_str!("../../../models/retnet-shakespeare/config.json");
static DEFAULT_WEIGHTS: &[u8] =
    include_bytes!("../../../models/retnet-shakespeare/model.safetensors");

/// Loads that take longer than this show a progress bar.
const QUIET_LOAD: Duration = Duration::from_secs(1);

/// A model directory, or the default model.
pub struct ModelSource {
    dir: Option<PathBuf>,
    config: ModelConfig,
}

impl ModelSource {
    /// `dir`'s config, or the default model's.
    pub fn new(dir: Option<&Path>) -> Result<Self, CliError> {
        let config = match dir {
            Some(dir) => ModelConfig::from_file(&dir.join("config.json"))?,
            None => ModelConfig::from_json_str(DEFAULT_CONFIG)?,
        };
        Ok(Self {
            dir: dir.map(Path::to_path_buf),
            config,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn store(&self) -> Result<TensorStore, CliError> {
        Ok(match &self.dir {
            Some(dir) => TensorStore::open(dir)?,
            None => TensorStore::from_bytes("model.safetensors", Bytes::Static(DEFAULT_WEIGHTS))?,
        })
    }

    fn name(&self) -> String {
        self.dir
            .as_ref()
            .map_or("the default model".into(), |d| d.display().to_string())
    }

    /// The CPU reference: every weight in host f32.
    pub fn cpu_model(&self) -> Result<CpuModel, CliError> {
        let store = self.store()?;
        let bar = LoadBar::new(&self.name(), "layer {pos}/{len}");
        let model = CpuModel::from_store(self.config.clone(), &store, &mut |done, total| {
            bar.update(done as u64, total as u64)
        })?;
        bar.finish();
        Ok(model)
    }

    /// The CPU reference with its weights as `weights` stores them
    /// ([`CpuModel::stored_as`]): what `--weights` means on the CPU backend.
    pub fn cpu_model_as(&self, weights: Weights) -> Result<CpuModel, CliError> {
        Ok(self.cpu_model()?.stored_as(weights.precision())?)
    }

    /// The model on `device` (opened by `--backend`, see `engine::resolve`), its weights
    /// streamed from the file.
    pub fn gpu_model_on(
        &self,
        device: Arc<retnet_runtime::Device>,
        weights: Weights,
    ) -> Result<GpuModel, CliError> {
        let precision = weights.precision();
        let store = self.store()?;
        let bar = LoadBar::new(&self.name(), "{bytes}/{total_bytes}");
        let options = GpuOptions { weights: precision };
        let config = self.config.clone();
        let model = pollster::block_on(GpuModel::from_store(
            device,
            config,
            &store,
            options,
            &mut |done, total| bar.update(done, total),
        ))?;
        bar.finish();
        Ok(model)
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> Result<Tokenizer, CliError> {
        match &self.dir {
            Some(dir) => Ok(Tokenizer::for_model(dir, &self.config)?),
            None => Tokenizer::bytes_for(&self.config)
                .ok_or_else(|| CliError::BadArgument("the default model is not byte-level".into())),
        }
    }
}

/// A progress bar on stderr that appears only once a load has taken [`QUIET_LOAD`].
struct LoadBar {
    bar: ProgressBar,
    started: Instant,
}

impl LoadBar {
    fn new(name: &str, counter: &str) -> Self {
        let bar = ProgressBar::hidden();
        let template = format!("loading {{msg}} {{bar:30}} {counter} ({{elapsed}})");
        bar.set_style(
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(name.to_string());
        Self {
            bar,
            started: Instant::now(),
        }
    }

    fn update(&self, done: u64, total: u64) {
        if self.bar.is_hidden() && self.started.elapsed() >= QUIET_LOAD {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        self.bar.set_length(total);
        self.bar.set_position(done);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The GPU device (chosen by `RETNET_BACKEND` / `RETNET_ADAPTER`, discrete GPUs first).
pub fn gpu_device() -> Result<Arc<retnet_runtime::Device>, CliError> {
    let device = pollster::block_on(retnet_runtime::Device::from_env())
        .map_err(retnet_model::ModelError::from)?;
    Ok(Arc::new(device))
}
