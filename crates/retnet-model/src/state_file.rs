//! Saving and loading a recurrent state (safetensors), with the model's fingerprints (of its
//! config and of its weights) so that a state is never loaded into another model, not even
//! another checkpoint of the same architecture.

use std::collections::HashMap;
use std::path::Path;

use crate::config::{LayerKind, ModelConfig};
use crate::error::{ModelError, Result};

use crate::weights::WeightsFingerprint;

/// v2 added the weights fingerprint.
const FORMAT: &str = "retnet-state-v2";
const FORMAT_V1: &str = "retnet-state-v1";

/// A stable fingerprint of every architectural knob of a config (FNV-1a over its description),
/// attention layers included. A pure RetNet config is described without its (empty)
/// `attention` field, so its fingerprint, and the state files saved before hybrid models
/// existed, stay valid.
pub fn config_fingerprint(config: &ModelConfig) -> String {
    let full = format!("{config:?}");
    let text = match full.strip_suffix(", attention: [] }") {
        Some(head) if !config.is_hybrid() => format!("{head} }}"),
        _ => full,
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The tensor shape of layer `layer`'s state after `position` tokens: `[H, K, V]` for
/// retention, `[cached positions, 2 (k, v), H_kv, D]` for an attention layer's key/value cache
/// (slot order as in [`crate::CpuState`]). `None` if the cache's size overflows.
pub fn layer_state_shape(
    config: &ModelConfig,
    layer: usize,
    position: usize,
) -> Option<Vec<usize>> {
    match config.layer_kind(layer) {
        LayerKind::Retention => Some(vec![config.num_heads, config.head_k_dim, config.head_v_dim]),
        LayerKind::Attention(a) => {
            crate::reference::kv_cache_len(a, position)?;
            Some(vec![
                a.cached_positions(position),
                2,
                a.num_kv_heads,
                a.head_dim,
            ])
        }
    }
}

/// The name of the optional tensor of [`SavedState::last_logits`].
const LAST_LOGITS: &str = "last_logits";

/// The most bytes a state file of a model of `config` can need: its layers (a full attention
/// layer's cache grows with the position, so such models are bounded by the file's own
/// size only), the last logits and 1 MiB of header.
fn max_state_file_bytes(config: &ModelConfig) -> u64 {
    let mut total: u64 = 1 << 20;
    total = total.saturating_add((config.vocab_size as u64).saturating_mul(4));
    for layer in 0..config.num_layers {
        let values = match config.layer_kind(layer) {
            LayerKind::Retention => config.retention_state_len(),
            LayerKind::Attention(a) => match a.window {
                Some(w) => crate::reference::kv_cache_len(a, w).unwrap_or(usize::MAX),
                None => return u64::MAX,
            },
        };
        total = total.saturating_add((values as u64).saturating_mul(4));
    }
    total
}

/// A recurrent state as stored in a file.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedState {
    /// Tokens consumed.
    pub position: usize,
    /// Per layer, `H × K × V` f32 (retention) or the key/value cache (attention, see
    /// [`layer_state_shape`]).
    pub layers: Vec<Vec<f32>>,
    /// Session bookkeeping (pending token, history, draw counter), as strings.
    pub extra: HashMap<String, String>,
    /// The logits after the last consumed token, for a session saved with no pending token
    /// (one that has generated nothing yet since its last input): without them it could not
    /// continue without new input.
    pub last_logits: Option<Vec<f32>>,
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
    let bytes: Vec<Vec<u8>> = layers
        .iter()
        .map(|l| l.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(layers.len());
    for (i, b) in bytes.iter().enumerate() {
        let shape = layer_state_shape(config, i, position)
            .ok_or_else(|| err(format!("layer {i}'s cache is too large")))?;
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, b)
            .map_err(|e| err(e.to_string()))?;
        views.push((format!("layers.{i}"), view));
    }
    let logit_bytes: Option<Vec<u8>> = saved
        .last_logits
        .as_ref()
        .map(|l| l.iter().flat_map(|v| v.to_le_bytes()).collect());
    if let Some(b) = &logit_bytes {
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            vec![config.vocab_size],
            b,
        )
        .map_err(|e| err(e.to_string()))?;
        views.push((LAST_LOGITS.to_string(), view));
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
    let bytes = crate::files::read_bounded(path, max_state_file_bytes(config))?;
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
        .and_then(|p| p.parse::<u64>().ok())
        .ok_or_else(|| err("missing or bad position".into()))?;
    // Compared as u64: on wasm32 `usize` is u32 and the bound is its maximum.
    let beyond = || {
        err(format!(
            "position {position} is beyond the {} tokens a session can hold",
            crate::reference::MAX_POSITION
        ))
    };
    if position > crate::reference::MAX_POSITION as u64 {
        return Err(beyond());
    }
    let position = usize::try_from(position).map_err(|_| beyond())?;
    let finite = |name: &str, values: &[f32]| match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(j) => Err(err(format!(
            "tensor `{name}` holds a non-finite value at element {j}"
        ))),
    };
    let mut layers = Vec::new();
    for i in 0..config.num_layers {
        let name = format!("layers.{i}");
        let view = st
            .tensor(&name)
            .map_err(|_| err(format!("missing tensor `{name}`")))?;
        let shape = layer_state_shape(config, i, position).ok_or_else(|| {
            err(format!(
                "position {position} is too large for layer {i}'s cache"
            ))
        })?;
        if view.dtype() != safetensors::Dtype::F32 || view.shape() != shape {
            return Err(err(format!("tensor `{name}` is not f32 {shape:?}")));
        }
        let values = crate::safetensors_store::le_words(view.data(), f32::from_le_bytes);
        finite(&name, &values)?;
        layers.push(values);
    }
    let expected = config.num_layers + usize::from(st.names().contains(&LAST_LOGITS));
    if st.len() != expected {
        return Err(err(format!(
            "holds {} tensors, but a state of this model has {} layers",
            st.len(),
            config.num_layers
        )));
    }
    let last_logits = match st.tensor(LAST_LOGITS) {
        Err(_) => None,
        Ok(view) => {
            if view.dtype() != safetensors::Dtype::F32 || view.shape() != [config.vocab_size] {
                return Err(err(format!(
                    "tensor `{LAST_LOGITS}` is not f32 [{}]",
                    config.vocab_size
                )));
            }
            let values = crate::safetensors_store::le_words(view.data(), f32::from_le_bytes);
            finite(LAST_LOGITS, &values)?;
            Some(values)
        }
    };
    Ok(SavedState {
        position,
        layers,
        extra: info,
        last_logits,
    })
}
