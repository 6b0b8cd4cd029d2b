//! Model weights in f32, named as either checkpoint family names them.

use std::path::Path;

use crate::config::{AttentionConfig, DecaySource, Family, LayerKind, ModelConfig, RotaryStyle};
use crate::error::{ModelError, Result};
use crate::safetensors_store::TensorStore;

/// A linear layer's weight, stored `[out, in]` row-major as in PyTorch (`y = x Wᵀ`).
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// Output features (rows).
    pub out_features: usize,
    /// Input features (columns).
    pub in_features: usize,
    /// `out_features × in_features` values.
    pub data: Vec<f32>,
}

/// The parts of a softmax-attention layer (hybrid checkpoints) beyond its four projections.
///
/// In such a layer `q_proj`, `k_proj`, `v_proj` and `out_proj` of [`LayerWeights`] are the
/// attention's projections (`[H·D, d]`, `[H_kv·D, d]`, `[H_kv·D, d]`, `[d, H·D]`), `g_proj`
/// is empty (`0 × d`) and `head_norm` is `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionWeights {
    /// The layer's shape (heads, window, rotary base).
    pub config: AttentionConfig,
    /// Biases of q, k, v (`qkv_bias`): `[H·D]`, `[H_kv·D]`, `[H_kv·D]`.
    pub qkv_bias: Option<[Vec<f32>; 3]>,
    /// RMSNorm weights `[D]` of each query and key head (before rotary, ε = 1e-5), when the
    /// checkpoint holds them.
    pub qk_norm: Option<[Vec<f32>; 2]>,
    /// Rotary angle per dimension pair, `[D/2]`: 1/θ^(2i/D).
    pub rotary_theta: Vec<f32>,
}

/// ε of the q/k RMSNorms: fla's `RMSNorm` default, which `fla.layers.attn.Attention` keeps.
pub const QK_NORM_EPS: f32 = 1e-5;

/// The weights of one block: retention (or attention, in hybrid checkpoints) and the FFN.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    /// RMSNorm weight before (pre-norm) or after (post-norm) retention, `[d]`.
    pub retention_norm: Vec<f32>,
    /// `[H·K, d]`.
    pub q_proj: Linear,
    /// `[H_kv·K, d]`.
    pub k_proj: Linear,
    /// `[H_kv·V, d]`.
    pub v_proj: Linear,
    /// Output gate, `[H·V, d]`.
    pub g_proj: Linear,
    /// `[d, H·V]`.
    pub out_proj: Linear,
    /// Per-head RMSNorm weight `[V]`, shared by all heads (fla); `None` when the norm has none.
    pub head_norm: Option<Vec<f32>>,
    /// RMSNorm weight around the FFN, `[d]`.
    pub ffn_norm: Vec<f32>,
    /// The activated FFN branch (torchscale `fc1`, fla `gate_proj`), `[f, d]`.
    pub ffn_act: Linear,
    /// The linear FFN branch (torchscale `gate`, fla `up_proj`), `[f, d]`.
    pub ffn_lin: Linear,
    /// FFN output (torchscale `fc2`, fla `down_proj`), `[d, f]`.
    pub ffn_down: Linear,
    /// `Some` for a softmax-attention layer of a hybrid checkpoint (see [`AttentionWeights`]).
    pub attention: Option<AttentionWeights>,
}

/// All weights of a model, converted to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelWeights {
    /// Token embeddings `[vocab, d]`.
    pub embed: Linear,
    /// `layernorm_embedding` weight, `[d]`.
    pub embed_norm: Option<Vec<f32>>,
    /// The blocks, first to last.
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm weight (pre-norm models), `[d]`.
    pub final_norm: Option<Vec<f32>>,
    /// Output head `[vocab, d]`; `None` when tied to the embeddings.
    pub head: Option<Linear>,
    /// log γ_h per head, `[H]`.
    pub log_decay: Vec<f32>,
    /// Rotary angle per dimension pair, `[K/2]`: pair i turns by n·θ_i at position n.
    pub rotary_theta: Vec<f32>,
}

impl ModelWeights {
    /// The output head: its own matrix, or the embeddings when tied.
    pub fn head(&self) -> &Linear {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    /// Reads every tensor the config requires from a model directory.
    pub fn load(config: &ModelConfig, dir: &Path) -> Result<Self> {
        let store = TensorStore::open(dir)?;
        Self::from_store(config, &store, &mut |_, _| {})
    }

    /// Reads every tensor the config requires from opened safetensors files, calling
    /// `progress(layers_done, layers_total)` after each layer (for progress bars).
    pub fn from_store(
        config: &ModelConfig,
        store: &TensorStore,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let names = CheckpointNames::detect(config, store)?;
        names.check_layer_count(config, store)?;
        let d = config.d_model;
        let f = config.ffn_dim;
        let linear = |name: String, out_features: usize, in_features: usize| -> Result<Linear> {
            Ok(Linear {
                out_features,
                in_features,
                data: store.read_f32(&name, &[out_features, in_features])?,
            })
        };
        let vector = |name: String, len: usize| store.read_f32(&name, &[len]);

        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let n = |suffix: &str| names.layer(i, suffix);
            if let LayerKind::Attention(attn) = config.layer_kind(i) {
                layers.push(LayerWeights {
                    retention_norm: vector(n(names.retention_norm), d)?,
                    q_proj: linear(n(names.q_proj), attn.query_width(), d)?,
                    k_proj: linear(n(names.k_proj), attn.kv_width(), d)?,
                    v_proj: linear(n(names.v_proj), attn.kv_width(), d)?,
                    g_proj: Linear {
                        out_features: 0,
                        in_features: d,
                        data: Vec::new(),
                    },
                    out_proj: linear(n(names.out_proj), d, attn.query_width())?,
                    head_norm: None,
                    ffn_norm: vector(n(names.ffn_norm), d)?,
                    ffn_act: linear(n(names.ffn_act), f, d)?,
                    ffn_lin: linear(n(names.ffn_lin), f, d)?,
                    ffn_down: linear(n(names.ffn_down), d, f)?,
                    attention: Some(attention_parts(attn, store, &|s| n(s))?),
                });
                progress(i + 1, config.num_layers);
                continue;
            }
            let head_norm = if config.head_norm_weight {
                let fused = n(names.head_norm_fused);
                let plain = n(names.head_norm_plain);
                let name = if store.contains(&fused) { fused } else { plain };
                Some(vector(name, config.head_v_dim)?)
            } else {
                None
            };
            layers.push(LayerWeights {
                retention_norm: vector(n(names.retention_norm), d)?,
                q_proj: linear(n(names.q_proj), config.query_width(), d)?,
                k_proj: linear(n(names.k_proj), config.key_width(), d)?,
                v_proj: linear(n(names.v_proj), config.kv_value_width(), d)?,
                g_proj: linear(n(names.g_proj), config.value_width(), d)?,
                out_proj: linear(n(names.out_proj), d, config.value_width())?,
                head_norm,
                ffn_norm: vector(n(names.ffn_norm), d)?,
                ffn_act: linear(n(names.ffn_act), f, d)?,
                ffn_lin: linear(n(names.ffn_lin), f, d)?,
                ffn_down: linear(n(names.ffn_down), d, f)?,
                attention: None,
            });
            progress(i + 1, config.num_layers);
        }

        let head = if config.tied_head {
            None
        } else {
            let name = names
                .head_candidates
                .iter()
                .find(|n| store.contains(n))
                .cloned()
                .ok_or_else(|| ModelError::MissingTensor {
                    name: names.head_candidates.join("` or `"),
                    dir: store.dir().to_path_buf(),
                })?;
            Some(linear(name, config.vocab_size, d)?)
        };

        let h = config.num_heads;
        let log_decay = match (config.decay_source, &names.decay_buffer) {
            (DecaySource::CheckpointBuffer, Some(name)) if store.contains(name) => {
                vector(name.clone(), h)?
            }
            _ => decay_formula(h),
        };
        let rotary_theta = match (&names.angle_buffer, config.rotary) {
            (Some(name), RotaryStyle::InterleavedPairs) if store.contains(name) => {
                // torchscale stores each pair's angle twice: [θ0, θ0, θ1, θ1, …].
                let angle = vector(name.clone(), config.head_k_dim)?;
                angle.iter().step_by(2).copied().collect()
            }
            _ => rotary_formula(config.rotary, config.head_k_dim),
        };

        Ok(Self {
            embed: linear(names.embed.clone(), config.vocab_size, d)?,
            embed_norm: match &names.embed_norm {
                Some(name) if config.embedding_norm => Some(vector(name.clone(), d)?),
                _ => None,
            },
            layers,
            final_norm: if config.final_norm {
                Some(vector(names.final_norm.clone(), d)?)
            } else {
                None
            },
            head,
            log_decay,
            rotary_theta,
        })
    }
}

/// The biases, q/k norms and rotary angles of an attention layer (fla names, `attn.` prefix).
fn attention_parts(
    attn: &AttentionConfig,
    store: &TensorStore,
    name: &dyn Fn(&str) -> String,
) -> Result<AttentionWeights> {
    let qkv_bias = if attn.qkv_bias {
        Some([
            store.read_f32(&name("attn.q_proj.bias"), &[attn.query_width()])?,
            store.read_f32(&name("attn.k_proj.bias"), &[attn.kv_width()])?,
            store.read_f32(&name("attn.v_proj.bias"), &[attn.kv_width()])?,
        ])
    } else {
        None
    };
    let (q_norm, k_norm) = (name("attn.q_norm.weight"), name("attn.k_norm.weight"));
    let qk_norm = match (store.contains(&q_norm), store.contains(&k_norm)) {
        (true, true) => Some([
            store.read_f32(&q_norm, &[attn.head_dim])?,
            store.read_f32(&k_norm, &[attn.head_dim])?,
        ]),
        (false, false) => None,
        (true, false) | (false, true) => {
            return Err(ModelError::invalid(format!(
                "the weights hold only one of `{q_norm}` and `{k_norm}`"
            )))
        }
    };
    Ok(AttentionWeights {
        config: attn.clone(),
        qkv_bias,
        qk_norm,
        rotary_theta: attention_rotary(attn.rope_theta, attn.head_dim),
    })
}

/// fla's `RotaryEmbedding(dim, base)`: inv_freq_i = 1/θ^(2i/D), i < D/2, as f32.
pub fn attention_rotary(theta: f64, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
        .collect()
}

/// log γ_h = log(1 − 2^(−5−h)). γ is rounded to f32 as both peers compute it: for h ≥ 20 the
/// subtraction rounds to 1, so those heads do not decay at all (below that it is exact). The
/// logarithm of that γ is taken in f64 and rounded once to f32, so log γ, from which every
/// kernel derives γ^n and γ^n − 1, carries no error beyond its own rounding.
pub fn decay_formula(heads: usize) -> Vec<f32> {
    (0..heads)
        .map(|h| {
            let exponent = -5.0f32 - h as f32;
            let gamma = 1.0f32 - exponent.exp2();
            f64::from(gamma).ln() as f32
        })
        .collect()
}

/// The rotary angle of each pair for a key dim of `k`.
pub fn rotary_formula(style: RotaryStyle, k: usize) -> Vec<f32> {
    let pairs = k / 2;
    (0..pairs)
        .map(|i| {
            let exponent = match style {
                // torch.linspace(0, 1, K/2)
                RotaryStyle::InterleavedPairs if pairs > 1 => i as f64 / (pairs - 1) as f64,
                RotaryStyle::InterleavedPairs => 0.0,
                RotaryStyle::SplitHalves => (2 * i) as f64 / k as f64,
            };
            (1.0 / 10000f64.powf(exponent)) as f32
        })
        .collect()
}

/// The tensor names of one checkpoint family and prefix.
struct CheckpointNames {
    layer_prefix: String,
    embed: String,
    embed_norm: Option<String>,
    final_norm: String,
    head_candidates: Vec<String>,
    decay_buffer: Option<String>,
    angle_buffer: Option<String>,
    retention_norm: &'static str,
    q_proj: &'static str,
    k_proj: &'static str,
    v_proj: &'static str,
    g_proj: &'static str,
    out_proj: &'static str,
    head_norm_fused: &'static str,
    head_norm_plain: &'static str,
    ffn_norm: &'static str,
    ffn_act: &'static str,
    ffn_lin: &'static str,
    ffn_down: &'static str,
}

impl CheckpointNames {
    fn detect(config: &ModelConfig, store: &TensorStore) -> Result<Self> {
        match config.family {
            Family::Torchscale => {
                // plain torchscale state dict, fairseq (`decoder.`), syncdoth (`model.`)
                let prefix = ["", "decoder.", "model."]
                    .into_iter()
                    .find(|p| store.contains(&format!("{p}embed_tokens.weight")))
                    .ok_or_else(|| ModelError::MissingTensor {
                        name: "embed_tokens.weight` (or `decoder.`/`model.` prefixed".into(),
                        dir: store.dir().to_path_buf(),
                    })?;
                let p = |s: &str| format!("{prefix}{s}");
                let first = p("layers.0.");
                if store.contains(&format!("{first}retention.q_proj.bias"))
                    || (store.contains(&format!("{first}ffn.fc1.weight"))
                        && !store.contains(&format!("{first}ffn.gate.weight")))
                {
                    return Err(ModelError::unsupported(
                        format!("{first}ffn / retention biases"),
                        "this is a torchscale v1 checkpoint (biased projections, FFN without \
                         gate); only v2 (torchscale 0.3.0) checkpoints are supported",
                    ));
                }
                let (norm_before, norm_after) =
                    ("retention_layer_norm.weight", "final_layer_norm.weight");
                Ok(Self {
                    layer_prefix: p("layers."),
                    embed: p("embed_tokens.weight"),
                    embed_norm: Some(p("layernorm_embedding.weight")),
                    final_norm: p("layer_norm.weight"),
                    head_candidates: vec![p("output_projection.weight"), "lm_head.weight".into()],
                    decay_buffer: Some(p("retnet_rel_pos.decay")),
                    angle_buffer: Some(p("retnet_rel_pos.angle")),
                    retention_norm: norm_before,
                    q_proj: "retention.q_proj.weight",
                    k_proj: "retention.k_proj.weight",
                    v_proj: "retention.v_proj.weight",
                    g_proj: "retention.g_proj.weight",
                    out_proj: "retention.out_proj.weight",
                    head_norm_fused: "retention.group_norm.weight",
                    head_norm_plain: "retention.group_norm.weight",
                    ffn_norm: norm_after,
                    ffn_act: "ffn.fc1.weight",
                    ffn_lin: "ffn.gate.weight",
                    ffn_down: "ffn.fc2.weight",
                })
            }
            Family::Fla => Ok(Self {
                layer_prefix: "model.layers.".into(),
                embed: "model.embeddings.weight".into(),
                embed_norm: None,
                final_norm: "model.norm.weight".into(),
                head_candidates: vec!["lm_head.weight".into()],
                decay_buffer: None,
                angle_buffer: None,
                retention_norm: "attn_norm.weight",
                q_proj: "attn.q_proj.weight",
                k_proj: "attn.k_proj.weight",
                v_proj: "attn.v_proj.weight",
                g_proj: "attn.g_proj.weight",
                out_proj: "attn.o_proj.weight",
                head_norm_fused: "attn.g_norm_swish_gate.weight",
                head_norm_plain: "attn.g_norm.weight",
                ffn_norm: "mlp_norm.weight",
                ffn_act: "mlp.gate_proj.weight",
                ffn_lin: "mlp.up_proj.weight",
                ffn_down: "mlp.down_proj.weight",
            }),
        }
    }

    fn layer(&self, index: usize, suffix: &str) -> String {
        format!("{}{index}.{suffix}", self.layer_prefix)
    }

    /// A checkpoint with more layers than its config says is a config/weights disagreement,
    /// not something to ignore silently.
    fn check_layer_count(&self, config: &ModelConfig, store: &TensorStore) -> Result<()> {
        let deepest = store
            .names()
            .filter_map(|name| name.strip_prefix(self.layer_prefix.as_str()))
            .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .max();
        match deepest {
            Some(last) if last >= config.num_layers => Err(ModelError::invalid(format!(
                "the weights hold layer {last} but the config says {} layers",
                config.num_layers
            ))),
            _ => Ok(()),
        }
    }
}
