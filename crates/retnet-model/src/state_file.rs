//! Saving and loading a recurrent state (safetensors), with the model's fingerprints (of its
//! config and of its weights) so that a state is never loaded into another model, not even
//! another checkpoint of the same architecture.

use std::collections::HashMap;
use std::path::Path;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

use crate::weights::WeightsFingerprint;

/// v2 added the weights fingerprint.
const FORMAT: &str = "retnet-state-v2";
const FORMAT_V1: &str = "retnet-state-v1";

/// A stable fingerprint of every architectural knob of a config (FNV-1a over its description).
pub fn config_fingerprint(config: &ModelConfig) -> String {
    let text = format!("{config:?}");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A recurrent state as stored in a file.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedState {
    /// Tokens consumed.
    pub position: usize,
    /// Per layer, `H × K × V` f32.
    pub layers: Vec<Vec<f32>>,
    /// Session bookkeeping (pending token, history, draw counter), as strings.
    pub extra: HashMap<String, String>,
}

/// Writes a state to `path`, tagged with the fingerprints of the config and the weights.
pub fn save_state(
    path: &Path,
    config: &ModelConfig,
    weights: &WeightsFingerprint,
    saved: &SavedState,
) -> Result<()> {
    let bytes = state_to_bytes(path, config, weights, saved)?;
    std::fs::write(path, bytes).map_err(|e| ModelError::io(path, e))
}

/// A state as the bytes of a state file (what [`save_state`] writes); `name` is used in error
/// messages.
pub fn state_to_bytes(
    name: &Path,
    config: &ModelConfig,
    weights: &WeightsFingerprint,
    saved: &SavedState,
) -> Result<Vec<u8>> {
    let (position, layers) = (saved.position, &saved.layers);
    let err = |message: String| ModelError::StateFile {
        path: name.to_path_buf(),
        message,
    };
    let shape = vec![config.num_heads, config.head_k_dim, config.head_v_dim];
    let bytes: Vec<Vec<u8>> = layers
        .iter()
        .map(|l| l.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(layers.len());
    for (i, b) in bytes.iter().enumerate() {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
            .map_err(|e| err(e.to_string()))?;
        views.push((format!("layers.{i}"), view));
    }
    let mut metadata = saved.extra.clone();
    metadata.extend([
        ("format".to_string(), FORMAT.to_string()),
        ("config_fingerprint".to_string(), config_fingerprint(config)),
        ("weights_fingerprint".to_string(), weights.0.clone()),
        ("position".to_string(), position.to_string()),
    ]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| err(e.to_string()))
}

/// Reads a state saved by [`save_state`] for a model with this config and these weights.
pub fn load_state(
    path: &Path,
    config: &ModelConfig,
    weights: &WeightsFingerprint,
) -> Result<SavedState> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    state_from_bytes(path, &bytes, config, weights)
}

/// Reads the bytes of a state file for a model with this config; `name` is used in error
/// messages.
pub fn state_from_bytes(
    name: &Path,
    bytes: &[u8],
    config: &ModelConfig,
    weights: &WeightsFingerprint,
) -> Result<SavedState> {
    let err = |message: String| ModelError::StateFile {
        path: name.to_path_buf(),
        message,
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| err(format!("not a state file: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| err(format!("not a state file: {e}")))?;
    let info = meta.metadata().clone().unwrap_or_default();
    match info.get("format").map(String::as_str) {
        Some(FORMAT) => {}
        Some(FORMAT_V1) => {
            return Err(err(
                "saved by an older retnet, without the fingerprint of its weights: it cannot be \
                 matched to a checkpoint"
                    .into(),
            ))
        }
        _ => return Err(err("not a retnet state file".into())),
    }
    let want = config_fingerprint(config);
    if info.get("config_fingerprint") != Some(&want) {
        return Err(err(format!(
            "this state belongs to another model (fingerprint {}, this model's is {want})",
            info.get("config_fingerprint")
                .map_or("none", String::as_str)
        )));
    }
    if info.get("weights_fingerprint") != Some(&weights.0) {
        return Err(err(format!(
            "this state belongs to another checkpoint with the same config (weights \
             fingerprint {}, this model's is {weights})",
            info.get("weights_fingerprint")
                .map_or("none", String::as_str)
        )));
    }
    let position = info
        .get("position")
        .and_then(|p| p.parse::<usize>().ok())
        .ok_or_else(|| err("missing or bad position".into()))?;
    let shape = [config.num_heads, config.head_k_dim, config.head_v_dim];
    let mut layers = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let name = format!("layers.{i}");
        let view = st
            .tensor(&name)
            .map_err(|_| err(format!("missing tensor `{name}`")))?;
        if view.dtype() != safetensors::Dtype::F32 || view.shape() != shape {
            return Err(err(format!("tensor `{name}` is not f32 {shape:?}")));
        }
        layers.push(crate::safetensors_store::le_words(
            view.data(),
            f32::from_le_bytes,
        ));
    }
    Ok(SavedState {
        position,
        layers,
        extra: info,
    })
}
