//! One model config for both checkpoint families.
//!
//! torchscale (and syncdoth) `config.json` files use `RetNetConfig` attribute names; fla files are
//! Hugging Face configs with `model_type: "retnet"`. Both are parsed into [`ModelConfig`], which
//! names every knob in which the families differ, so that the rest of the crate has a single code
//! path. See `shared/docs/retnet-spec.md` for what each knob means.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// Which implementation a checkpoint comes from; decides weight names and defaults only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Microsoft's torchscale v2 (also fairseq `decoder.`-prefixed and syncdoth `model.`-prefixed).
    Torchscale,
    /// flash-linear-attention (`fla.models.RetNetForCausalLM`, fla-hub checkpoints).
    Fla,
}

/// How rotary embeddings pair up the key dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotaryStyle {
    /// Pairs (2i, 2i+1), angle θ_i = 1/10000^(linspace(0, 1, K/2)_i) (torchscale).
    InterleavedPairs,
    /// Pairs (i, i+K/2), angle θ_i = 1/10000^(2i/K) (fla, GPT-NeoX).
    SplitHalves,
}

/// Where the per-head decay log γ_h comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecaySource {
    /// The checkpoint's `retnet_rel_pos.decay` buffer when present, else the formula.
    CheckpointBuffer,
    /// log(1 − 2^(−5−h)) computed in f32.
    Formula,
}

/// How the retention output is scaled before the per-head norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputScale {
    /// Divide position n by sqrt(c_n), c_n = Σ_{i≤n} γ^i (torchscale).
    InvSqrtDecaySum,
    /// No scaling (fla).
    None,
}

/// Activation functions of the FFN and the output gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// x·sigmoid(x), also called SiLU.
    Swish,
    /// The exact (erf) GELU.
    Gelu,
}

/// Where the block norms sit relative to the residual connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPlacement {
    /// x ← α·x + f(norm(x)), with a final norm after the last layer.
    PreNorm,
    /// x ← norm(α·x + f(x)) (torchscale deepnorm), no final norm.
    PostNorm,
}

/// Softmax attention in place of retention at chosen layers (fla's `attn` config block, one
/// spec per distinct attention shape). fla 0.6.0 builds each such layer as
/// `fla.layers.attn.Attention`: q/k/v/o projections (q/k/v biased when `qkv_bias`), NeoX-style
/// rotary on q and k with `rope_theta`, causal softmax attention with scale `head_dim^-½`,
/// grouped key/value heads, optionally a sliding window. The block around it (pre-norms,
/// residuals, MLP) is the retention block's.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionConfig {
    /// The layers (0-based, ascending) that are attention layers.
    pub layers: Vec<usize>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads; query head j reads key/value head j / (heads / kv heads).
    pub num_kv_heads: usize,
    /// Dimension per head: `hidden_size / num_heads` (query, key and value alike).
    pub head_dim: usize,
    /// q, k and v projections carry biases.
    pub qkv_bias: bool,
    /// The config's `qk_norm`. fla 0.6.0's RetNet does not pass it on to its attention layers,
    /// so its checkpoints never hold q/k norm weights; the norms are applied exactly when the
    /// checkpoint holds them (`attn.q_norm.weight`, `attn.k_norm.weight`).
    pub qk_norm: bool,
    /// `None`: full causal attention. `Some(w)`: each query sees its `w` most recent positions,
    /// itself included (flash-attn's `window_size = (w − 1, 0)`).
    pub window: Option<usize>,
    /// Rotary base θ: pair i turns by n / θ^(2i/head_dim) at position n.
    pub rope_theta: f64,
}

impl AttentionConfig {
    /// Query width, heads × head dim (= d_model).
    pub fn query_width(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Key (and value) width, kv heads × head dim.
    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// The key/value head that query head `head` reads.
    pub fn kv_head_of(&self, head: usize) -> usize {
        head / (self.num_heads / self.num_kv_heads)
    }

    /// Cached positions after `position` tokens: all of them, or the last `w`.
    pub fn cached_positions(&self, position: usize) -> usize {
        self.window.map_or(position, |w| position.min(w))
    }
}

/// The token mixer of one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LayerKind<'a> {
    /// Multi-scale retention (the RetNet layer).
    Retention,
    /// Softmax attention (hybrid checkpoints).
    Attention(&'a AttentionConfig),
}

/// The architecture of a RetNet checkpoint, whichever family it comes from.
///
/// The FFN is always gated: `out = W_down (act(W_act x) ⊙ (W_lin x))`; torchscale names
/// `W_act, W_lin, W_down` `fc1, gate, fc2`, fla names them `gate_proj, up_proj, down_proj`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The checkpoint family.
    pub family: Family,
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: usize,
    /// Model width d.
    pub d_model: usize,
    /// Number of layers.
    pub num_layers: usize,
    /// Query (and retention) heads H.
    pub num_heads: usize,
    /// Key/value heads; query head j uses key/value head j / (H / H_kv).
    pub num_kv_heads: usize,
    /// Key (and query) dimension per head K.
    pub head_k_dim: usize,
    /// Value dimension per head V.
    pub head_v_dim: usize,
    /// FFN hidden width.
    pub ffn_dim: usize,
    /// Activation of the gated FFN.
    pub ffn_activation: Activation,
    /// Activation applied to the output gate g before it multiplies the normed retention.
    pub gate_activation: Activation,
    /// Pre-norm or post-norm blocks.
    pub norm_placement: NormPlacement,
    /// Residual multiplier α ((2·layers)^¼ for deepnorm, else 1).
    pub residual_alpha: f32,
    /// Multiplier of the embeddings (sqrt(d) or 1).
    pub embed_scale: f32,
    /// RMSNorm of the scaled embeddings (`layernorm_embedding`).
    pub embedding_norm: bool,
    /// RMSNorm after the last layer.
    pub final_norm: bool,
    /// The output head reuses the embedding matrix.
    pub tied_head: bool,
    /// The per-head RMSNorm over V has a weight.
    pub head_norm_weight: bool,
    /// Retention output scale.
    pub output_scale: OutputScale,
    /// Rotary pairing and angles.
    pub rotary: RotaryStyle,
    /// Where log γ comes from.
    pub decay_source: DecaySource,
    /// ε of the block, embedding and final norms.
    pub norm_eps: f32,
    /// ε of the per-head norm.
    pub head_norm_eps: f32,
    /// The chunk size the checkpoint's authors used for chunkwise retention.
    pub default_chunk_size: usize,
    /// Attention layers of a hybrid checkpoint (fla's `attn`); empty for pure RetNet. Keep
    /// this field last: the state-file fingerprint of a pure model omits it (see
    /// `state_file::config_fingerprint`).
    pub attention: Vec<AttentionConfig>,
}

impl ModelConfig {
    /// Reads and parses `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::files::read_bounded_text(path, crate::files::MAX_JSON_BYTES)?;
        Self::from_json_str(&text).map_err(|e| match e {
            ModelError::Json { message, .. } => ModelError::Json {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses the text of a `config.json` of either family.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(json_error)?;
        let Value::Object(map) = &value else {
            return Err(ModelError::invalid("config.json must hold a JSON object"));
        };
        if map.contains_key("decoder_embed_dim") {
            let raw: TorchscaleJson = serde_json::from_value(value).map_err(json_error)?;
            raw.into_config()
        } else if map.get("model_type").and_then(Value::as_str) == Some("retnet") {
            let raw: FlaJson = serde_json::from_value(value).map_err(json_error)?;
            raw.into_config()
        } else {
            Err(ModelError::invalid(
                "config.json is neither a torchscale RetNetConfig (no `decoder_embed_dim`) \
                 nor an fla config (`model_type` is not \"retnet\")",
            ))
        }
    }

    /// Key width of all query heads, H·K.
    pub fn query_width(&self) -> usize {
        self.num_heads * self.head_k_dim
    }

    /// Key width of all key heads, H_kv·K.
    pub fn key_width(&self) -> usize {
        self.num_kv_heads * self.head_k_dim
    }

    /// Value width of all key/value heads, H_kv·V.
    pub fn kv_value_width(&self) -> usize {
        self.num_kv_heads * self.head_v_dim
    }

    /// Value width of all retention heads, H·V (the width of g and of out_proj's input).
    pub fn value_width(&self) -> usize {
        self.num_heads * self.head_v_dim
    }

    /// Values of one retention layer's recurrent state, `[H, K, V]` f32 (the one place this
    /// size is written down: sessions, batches, state files and the server's cache use it).
    pub fn retention_state_len(&self) -> usize {
        self.num_heads * self.head_k_dim * self.head_v_dim
    }

    /// The key/value head that query head `head` reads.
    pub fn kv_head_of(&self, head: usize) -> usize {
        head / (self.num_heads / self.num_kv_heads)
    }

    /// The token mixer of layer `layer`.
    pub fn layer_kind(&self, layer: usize) -> LayerKind<'_> {
        self.attention
            .iter()
            .find(|a| a.layers.contains(&layer))
            .map_or(LayerKind::Retention, LayerKind::Attention)
    }

    /// Whether any layer is an attention layer.
    pub fn is_hybrid(&self) -> bool {
        !self.attention.is_empty()
    }

    fn validate(self) -> Result<Self> {
        self.check()?;
        Ok(self)
    }

    /// Checks the relations between sizes that every later stage relies on, that every size
    /// derived from them (widths, weights, the recurrent state) is computable without
    /// overflow, and that one sequence's recurrent state stays under [`MAX_STATE_BYTES`]; and
    /// that the norms' ε keep the arithmetic finite. Parsing a config checks this; so does
    /// every model built from a config given in memory.
    pub fn check(&self) -> Result<()> {
        let nonzero = [
            ("vocab size", self.vocab_size),
            ("model width", self.d_model),
            ("layer count", self.num_layers),
            ("head count", self.num_heads),
            ("key/value head count", self.num_kv_heads),
            ("key dim per head", self.head_k_dim),
            ("value dim per head", self.head_v_dim),
            ("FFN width", self.ffn_dim),
        ];
        for (what, n) in nonzero {
            if n == 0 {
                return Err(ModelError::invalid(format!("{what} is zero")));
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(ModelError::invalid(format!(
                "{} heads cannot be grouped over {} key/value heads",
                self.num_heads, self.num_kv_heads
            )));
        }
        if self.head_k_dim % 2 != 0 {
            return Err(ModelError::invalid(format!(
                "key dim per head is {}, but rotary embeddings need an even key dim",
                self.head_k_dim
            )));
        }
        for (what, eps) in [
            ("norm eps", self.norm_eps),
            ("head norm eps", self.head_norm_eps),
        ] {
            // ε = 0 makes an all-zero row's RMSNorm 0/0 = NaN.
            if !(eps.is_finite() && eps > 0.0) {
                return Err(ModelError::invalid(format!(
                    "{what} is {eps}; it must be positive and finite"
                )));
            }
        }
        if !(self.embed_scale.is_finite() && self.residual_alpha.is_finite()) {
            return Err(ModelError::invalid(
                "non-finite embedding scale or residual alpha",
            ));
        }
        if self.default_chunk_size == 0 {
            return Err(ModelError::invalid("recurrent chunk size is zero"));
        }
        for a in &self.attention {
            if let Some(&layer) = a.layers.iter().find(|&&l| l >= self.num_layers) {
                return Err(ModelError::invalid(format!(
                    "attn names layer {layer}, but the model has {} layers",
                    self.num_layers
                )));
            }
            if a.num_heads == 0 || a.num_kv_heads == 0 || a.num_heads % a.num_kv_heads != 0 {
                return Err(ModelError::invalid(format!(
                    "attention heads {} cannot be grouped over {} key/value heads",
                    a.num_heads, a.num_kv_heads
                )));
            }
            product(&[
                ("attention heads", a.num_heads),
                ("attention head dim", a.head_dim),
            ])?;
            product(&[
                ("attention key/value heads", a.num_kv_heads),
                ("attention head dim", a.head_dim),
                ("2 (keys and values)", 2),
                ("4 bytes", 4),
            ])?;
        }
        self.check_sizes()
    }

    /// Every width and tensor size the rest of the crate derives, computed with checked
    /// arithmetic, and the recurrent state of one sequence bounded.
    fn check_sizes(&self) -> Result<()> {
        let (d, f, vocab) = (self.d_model, self.ffn_dim, self.vocab_size);
        let query = product(&[
            ("head count", self.num_heads),
            ("key dim per head", self.head_k_dim),
        ])?;
        let value = product(&[
            ("head count", self.num_heads),
            ("value dim per head", self.head_v_dim),
        ])?;
        for (what, width) in [("query width", query), ("value width", value)] {
            product(&[(what, width), ("model width", d), ("4 bytes", 4)])?;
        }
        product(&[("vocab size", vocab), ("model width", d), ("4 bytes", 4)])?;
        product(&[("FFN width", f), ("model width", d), ("4 bytes", 4)])?;
        let state = product(&[
            ("layer count", self.num_layers),
            ("head count", self.num_heads),
            ("key dim per head", self.head_k_dim),
            ("value dim per head", self.head_v_dim),
            ("4 bytes", 4),
        ])?;
        if state as u128 > MAX_STATE_BYTES {
            return Err(ModelError::invalid(format!(
                "the recurrent state of one sequence (layer count {} × head count {} × key dim \
                 per head {} × value dim per head {} × 4 bytes) is {state} bytes, over the \
                 {MAX_STATE_BYTES} bytes a session may hold",
                self.num_layers, self.num_heads, self.head_k_dim, self.head_v_dim
            )));
        }
        Ok(())
    }
}

/// The most bytes one sequence's recurrent state may take (4 GiB; a 7B RetNet's is 268 MB).
pub const MAX_STATE_BYTES: u128 = 1 << 32;

/// The product of named sizes, or an error naming them when it overflows.
fn product(factors: &[(&str, usize)]) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &(_, n)| acc.checked_mul(n))
        .ok_or_else(|| {
            // A constant factor ("4 bytes") is its own name.
            let named: Vec<String> = factors
                .iter()
                .map(
                    |(what, n)| match what.starts_with(|c: char| c.is_ascii_digit()) {
                        true => what.to_string(),
                        false => format!("{what} {n}"),
                    },
                )
                .collect();
            ModelError::invalid(format!("{} overflows", named.join(" × ")))
        })
}

fn json_error(e: serde_json::Error) -> ModelError {
    ModelError::Json {
        path: "config.json".into(),
        message: e.to_string(),
    }
}

fn divide(what: &str, total: usize, heads: usize) -> Result<usize> {
    if heads == 0 || total % heads != 0 {
        return Err(ModelError::invalid(format!(
            "{what} {total} is not divisible by {heads} heads"
        )));
    }
    Ok(total / heads)
}

fn activation(key: &str, name: &str) -> Result<Activation> {
    match name {
        "swish" | "silu" => Ok(Activation::Swish),
        "gelu" => Ok(Activation::Gelu),
        other => Err(ModelError::unsupported(
            format!("{key} = \"{other}\""),
            "supported activations are swish (silu) and gelu",
        )),
    }
}

/// `RetNetConfig` of torchscale 0.3.0; defaults are its constructor's. Unknown keys are ignored.
#[derive(Deserialize)]
#[serde(default)]
struct TorchscaleJson {
    decoder_embed_dim: usize,
    decoder_value_embed_dim: usize,
    decoder_retention_heads: usize,
    decoder_ffn_embed_dim: usize,
    decoder_layers: usize,
    decoder_normalize_before: bool,
    activation_fn: String,
    no_scale_embedding: bool,
    layernorm_embedding: bool,
    deepnorm: bool,
    subln: bool,
    share_decoder_input_output_embed: bool,
    no_output_layer: bool,
    layernorm_eps: f64,
    vocab_size: i64,
    recurrent_chunk_size: usize,
    moe_freq: usize,
    moe_expert_count: usize,
    use_xmoe: bool,
    multiway: bool,
}

impl Default for TorchscaleJson {
    fn default() -> Self {
        Self {
            decoder_embed_dim: 768,
            decoder_value_embed_dim: 1280,
            decoder_retention_heads: 3,
            decoder_ffn_embed_dim: 1280,
            decoder_layers: 12,
            decoder_normalize_before: true,
            activation_fn: "gelu".into(),
            no_scale_embedding: true,
            layernorm_embedding: false,
            deepnorm: false,
            subln: true,
            share_decoder_input_output_embed: false,
            no_output_layer: false,
            layernorm_eps: 1e-6,
            vocab_size: -1,
            recurrent_chunk_size: 512,
            moe_freq: 0,
            moe_expert_count: 0,
            use_xmoe: false,
            multiway: false,
        }
    }
}

impl TorchscaleJson {
    fn into_config(self) -> Result<ModelConfig> {
        if self.moe_freq > 0 || self.moe_expert_count > 0 || self.use_xmoe {
            return Err(ModelError::unsupported(
                "moe_freq / moe_expert_count / use_xmoe",
                "mixture-of-experts layers are not plain RetNet",
            ));
        }
        if self.multiway {
            return Err(ModelError::unsupported(
                "multiway = true",
                "multiway (vision-language) layers are not plain RetNet",
            ));
        }
        if self.no_output_layer {
            return Err(ModelError::unsupported(
                "no_output_layer = true",
                "a language model needs an output layer",
            ));
        }
        let vocab_size = usize::try_from(self.vocab_size)
            .map_err(|_| ModelError::invalid(format!("vocab_size is {}", self.vocab_size)))?;
        let heads = self.decoder_retention_heads;
        let head_k_dim = divide("decoder_embed_dim", self.decoder_embed_dim, heads)?;
        let head_v_dim = divide(
            "decoder_value_embed_dim",
            self.decoder_value_embed_dim,
            heads,
        )?;
        // RetNetConfig's constructor: deepnorm forces post-norm; otherwise subln forces pre-norm.
        let post_norm = if self.deepnorm {
            true
        } else if self.subln {
            false
        } else {
            !self.decoder_normalize_before
        };
        let eps = self.layernorm_eps as f32;
        ModelConfig {
            family: Family::Torchscale,
            vocab_size,
            d_model: self.decoder_embed_dim,
            num_layers: self.decoder_layers,
            num_heads: heads,
            num_kv_heads: heads,
            head_k_dim,
            head_v_dim,
            ffn_dim: self.decoder_ffn_embed_dim,
            ffn_activation: activation("activation_fn", &self.activation_fn)?,
            gate_activation: Activation::Swish,
            norm_placement: if post_norm {
                NormPlacement::PostNorm
            } else {
                NormPlacement::PreNorm
            },
            residual_alpha: if self.deepnorm {
                (2.0 * self.decoder_layers as f64).powf(0.25) as f32
            } else {
                1.0
            },
            embed_scale: if self.no_scale_embedding {
                1.0
            } else {
                (self.decoder_embed_dim as f64).sqrt() as f32
            },
            embedding_norm: self.layernorm_embedding,
            final_norm: !post_norm,
            tied_head: self.share_decoder_input_output_embed,
            head_norm_weight: false,
            output_scale: OutputScale::InvSqrtDecaySum,
            rotary: RotaryStyle::InterleavedPairs,
            decay_source: DecaySource::CheckpointBuffer,
            norm_eps: eps,
            head_norm_eps: eps,
            default_chunk_size: self.recurrent_chunk_size,
            attention: Vec::new(),
        }
        .validate()
    }
}

/// fla 0.6.0's `RetNetConfig`; defaults are its constructor's. Unknown keys are ignored.
#[derive(Deserialize)]
#[serde(default)]
struct FlaJson {
    hidden_size: usize,
    expand_k: f64,
    expand_v: f64,
    hidden_ratio: Option<f64>,
    intermediate_size: Option<usize>,
    num_hidden_layers: usize,
    num_heads: usize,
    num_kv_heads: Option<usize>,
    feature_map: Option<Value>,
    hidden_act: String,
    use_short_conv: bool,
    use_output_gate: bool,
    elementwise_affine: Option<bool>,
    norm_eps: f64,
    attn: Option<Value>,
    attnres_block_size: Option<Value>,
    tie_word_embeddings: bool,
    vocab_size: usize,
}

impl Default for FlaJson {
    fn default() -> Self {
        Self {
            hidden_size: 2048,
            expand_k: 1.0,
            expand_v: 2.0,
            hidden_ratio: Some(2.0),
            intermediate_size: None,
            num_hidden_layers: 24,
            num_heads: 8,
            num_kv_heads: None,
            feature_map: None,
            hidden_act: "swish".into(),
            use_short_conv: false,
            use_output_gate: true,
            elementwise_affine: Some(true),
            norm_eps: 1e-6,
            attn: None,
            attnres_block_size: None,
            tie_word_embeddings: false,
            vocab_size: 32000,
        }
    }
}

/// `d · expand`, which fla requires to be a whole number.
fn expanded_width(what: &str, d: usize, expand: f64) -> Result<usize> {
    let width = d as f64 * expand;
    if !(width.is_finite() && width >= 0.0 && width.fract() == 0.0) {
        return Err(ModelError::invalid(format!(
            "hidden_size {d} × {what} {expand} is not a whole number"
        )));
    }
    Ok(width as usize)
}

impl FlaJson {
    fn into_config(self) -> Result<ModelConfig> {
        if self.use_short_conv {
            return Err(ModelError::unsupported(
                "use_short_conv = true",
                "short convolutions are not plain RetNet",
            ));
        }
        if let Some(map) = self.feature_map.filter(|v| !v.is_null()) {
            return Err(ModelError::unsupported(
                format!("feature_map = {map}"),
                "feature maps on q and k are not plain RetNet",
            ));
        }
        if let Some(size) = self.attnres_block_size.filter(|v| !v.is_null()) {
            return Err(ModelError::unsupported(
                format!("attnres_block_size = {size}"),
                "attention residuals (attnres) are not implemented",
            ));
        }
        let attention = match &self.attn {
            None | Some(Value::Null) => Vec::new(),
            Some(spec) => parse_attention(spec, self.hidden_size, self.num_hidden_layers)?,
        };
        if !self.use_output_gate {
            return Err(ModelError::unsupported(
                "use_output_gate = false",
                "retention without the output gate is not implemented",
            ));
        }
        let act = activation("hidden_act", &self.hidden_act)?;
        if act != Activation::Swish {
            return Err(ModelError::unsupported(
                format!("hidden_act = \"{}\"", self.hidden_act),
                "fla's gated MLP and output gate support swish only",
            ));
        }
        let heads = self.num_heads;
        let kv_heads = self.num_kv_heads.unwrap_or(heads);
        let key_width = expanded_width("expand_k", self.hidden_size, self.expand_k)?;
        let value_width = expanded_width("expand_v", self.hidden_size, self.expand_v)?;
        let head_k_dim = divide("key width (hidden_size × expand_k)", key_width, heads)?;
        let head_v_dim = divide("value width (hidden_size × expand_v)", value_width, heads)?;
        let ffn_dim = match self.intermediate_size {
            Some(n) => n,
            None => {
                let ratio = self.hidden_ratio.unwrap_or(4.0);
                let n = (self.hidden_size as f64 * ratio * 2.0 / 3.0) as usize;
                n.div_ceil(256).checked_mul(256).ok_or_else(|| {
                    ModelError::invalid(format!(
                        "hidden_size {} × hidden_ratio {ratio} overflows the FFN width",
                        self.hidden_size
                    ))
                })?
            }
        };
        let eps = self.norm_eps as f32;
        ModelConfig {
            family: Family::Fla,
            vocab_size: self.vocab_size,
            d_model: self.hidden_size,
            num_layers: self.num_hidden_layers,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_k_dim,
            head_v_dim,
            ffn_dim,
            ffn_activation: act,
            gate_activation: act,
            norm_placement: NormPlacement::PreNorm,
            residual_alpha: 1.0,
            embed_scale: 1.0,
            embedding_norm: false,
            final_norm: true,
            tied_head: self.tie_word_embeddings,
            head_norm_weight: self.elementwise_affine.unwrap_or(false),
            output_scale: OutputScale::None,
            rotary: RotaryStyle::SplitHalves,
            decay_source: DecaySource::Formula,
            norm_eps: eps,
            head_norm_eps: eps,
            default_chunk_size: 64,
            attention,
        }
        .validate()
    }
}

/// One entry of fla's `attn` block (`fla.models.configuration_utils.AttentionSpec`); defaults
/// are fla's. Unknown keys are ignored, as fla ignores them.
#[derive(Deserialize)]
struct AttentionSpecJson {
    layers: Vec<i64>,
    num_heads: usize,
    #[serde(default)]
    num_kv_heads: Option<usize>,
    #[serde(default)]
    qkv_bias: bool,
    #[serde(default)]
    qk_norm: bool,
    #[serde(default)]
    window_size: Option<u64>,
    #[serde(default)]
    rope_theta: Option<f64>,
}

/// Parses `attn`: one spec or a list of specs. Refuses what fla refuses (layers out of range,
/// a layer named twice, non-positive head counts or window) and what this runtime cannot
/// compute (head dims that do not divide the width, odd head dims, ungroupable heads).
fn parse_attention(
    attn: &Value,
    hidden_size: usize,
    num_layers: usize,
) -> Result<Vec<AttentionConfig>> {
    let specs: Vec<(String, &Value)> = match attn {
        Value::Object(_) => vec![("attn".to_string(), attn)],
        Value::Array(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("attn[{i}]"), v))
            .collect(),
        other => {
            return Err(ModelError::invalid(format!(
                "attn must be null, an object or a non-empty list of objects, not {other}"
            )))
        }
    };
    // Which spec made each named layer attention (a map: `num_layers` is not trusted yet).
    let mut owner = std::collections::BTreeMap::<usize, String>::new();
    let mut out = Vec::with_capacity(specs.len());
    for (name, value) in specs {
        if !value.is_object() {
            return Err(ModelError::invalid(format!(
                "{name} must be an object, not {value}"
            )));
        }
        let spec: AttentionSpecJson = serde_json::from_value(value.clone())
            .map_err(|e| ModelError::invalid(format!("{name}: {e}")))?;
        let mut layers = Vec::with_capacity(spec.layers.len());
        for &layer in &spec.layers {
            let index = usize::try_from(layer)
                .ok()
                .filter(|&l| l < num_layers)
                .ok_or_else(|| {
                    ModelError::invalid(format!(
                        "{name}.layers names layer {layer}, but the model has {num_layers} layers"
                    ))
                })?;
            if let Some(first) = owner.get(&index) {
                return Err(ModelError::invalid(format!(
                    "{name}.layers names layer {index}, which {first} already makes attention"
                )));
            }
            owner.insert(index, name.clone());
            layers.push(index);
        }
        if layers.is_empty() {
            return Err(ModelError::invalid(format!("{name}.layers is empty")));
        }
        layers.sort_unstable();
        let heads = spec.num_heads;
        let kv_heads = spec.num_kv_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 {
            return Err(ModelError::invalid(format!(
                "{name}: head counts must be positive (num_heads {heads}, num_kv_heads {kv_heads})"
            )));
        }
        if heads % kv_heads != 0 {
            return Err(ModelError::invalid(format!(
                "{name}: {heads} heads cannot be grouped over {kv_heads} key/value heads"
            )));
        }
        let head_dim = divide(&format!("{name}: hidden_size"), hidden_size, heads)?;
        if head_dim % 2 != 0 {
            return Err(ModelError::invalid(format!(
                "{name}: head dim {head_dim} (hidden_size / num_heads) is odd; rotary embeddings \
                 need an even head dim"
            )));
        }
        let window = match spec.window_size {
            None => None,
            Some(0) => {
                return Err(ModelError::invalid(format!(
                    "{name}.window_size is 0; it must be positive or null"
                )))
            }
            Some(w) => Some(usize::try_from(w).map_err(|_| {
                ModelError::invalid(format!("{name}.window_size {w} is too large"))
            })?),
        };
        let rope_theta = spec.rope_theta.unwrap_or(10000.0);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(ModelError::invalid(format!(
                "{name}.rope_theta is {rope_theta}; it must be positive and finite"
            )));
        }
        out.push(AttentionConfig {
            layers,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            qkv_bias: spec.qkv_bias,
            qk_norm: spec.qk_norm,
            window,
            rope_theta,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchscale_defaults_and_derived_values() {
        let cfg = ModelConfig::from_json_str(
            r#"{"decoder_embed_dim": 64, "decoder_value_embed_dim": 96, "decoder_retention_heads": 4,
                "decoder_ffn_embed_dim": 128, "decoder_layers": 2, "vocab_size": 100,
                "activation_fn": "swish", "no_scale_embedding": false, "some_unknown_key": [1]}"#,
        )
        .unwrap();
        assert_eq!(cfg.family, Family::Torchscale);
        assert_eq!((cfg.head_k_dim, cfg.head_v_dim), (16, 24));
        assert_eq!(cfg.embed_scale, 8.0);
        assert_eq!(cfg.norm_placement, NormPlacement::PreNorm);
        assert_eq!(cfg.ffn_activation, Activation::Swish);
        assert!(cfg.final_norm && !cfg.tied_head && !cfg.head_norm_weight);
    }

    #[test]
    fn torchscale_deepnorm_is_post_norm_with_alpha() {
        let cfg = ModelConfig::from_json_str(
            r#"{"decoder_embed_dim": 8, "decoder_value_embed_dim": 8, "decoder_retention_heads": 2,
                "decoder_ffn_embed_dim": 8, "decoder_layers": 8, "vocab_size": 10, "deepnorm": true}"#,
        )
        .unwrap();
        assert_eq!(cfg.norm_placement, NormPlacement::PostNorm);
        assert!(!cfg.final_norm);
        assert_eq!(cfg.residual_alpha, 2.0); // (2·8)^¼
    }

    #[test]
    fn fla_mlp_width_and_groups() {
        let cfg = ModelConfig::from_json_str(
            r#"{"model_type": "retnet", "hidden_size": 80, "num_heads": 4, "num_kv_heads": 2,
                "num_hidden_layers": 1, "vocab_size": 50, "intermediate_size": null}"#,
        )
        .unwrap();
        // int(80 · 2 · 2/3) = 106, rounded up to 256.
        assert_eq!(cfg.ffn_dim, 256);
        assert_eq!((cfg.head_k_dim, cfg.head_v_dim), (20, 40));
        assert_eq!(cfg.kv_head_of(3), 1);
        assert_eq!(cfg.key_width(), 40);
    }

    fn fla_with_attn(attn: &str) -> Result<ModelConfig> {
        ModelConfig::from_json_str(&format!(
            r#"{{"model_type": "retnet", "hidden_size": 32, "num_heads": 2, "num_hidden_layers": 4,
                "vocab_size": 5, "attn": {attn}}}"#
        ))
    }

    #[test]
    fn attn_one_spec_or_a_list_with_fla_defaults() {
        let cfg = fla_with_attn(r#"{"layers": [2, 0], "num_heads": 4, "unknown": 1}"#).unwrap();
        assert!(cfg.is_hybrid());
        let a = &cfg.attention[0];
        assert_eq!(a.layers, [0, 2]);
        assert_eq!((a.num_heads, a.num_kv_heads, a.head_dim), (4, 4, 8));
        assert!(!a.qkv_bias && !a.qk_norm && a.window.is_none());
        assert_eq!(a.rope_theta, 10000.0);
        assert_eq!(cfg.layer_kind(1), LayerKind::Retention);
        assert_eq!(cfg.layer_kind(2), LayerKind::Attention(a));
        assert_eq!(a.cached_positions(100), 100);

        let cfg = fla_with_attn(
            r#"[{"layers": [1], "num_heads": 8, "num_kv_heads": 2, "qkv_bias": true,
                 "window_size": 16, "rope_theta": 5e5, "qk_norm": true},
                {"layers": [3], "num_heads": 2, "window_size": null}]"#,
        )
        .unwrap();
        let LayerKind::Attention(a) = cfg.layer_kind(1) else {
            panic!("layer 1 is attention")
        };
        assert_eq!((a.head_dim, a.kv_width(), a.kv_head_of(7)), (4, 8, 1));
        assert_eq!(a.window, Some(16));
        assert_eq!(a.cached_positions(5), 5);
        assert_eq!(a.cached_positions(100), 16);
        assert!(a.qkv_bias && a.qk_norm && a.rope_theta == 5e5);
        assert!(matches!(cfg.layer_kind(3), LayerKind::Attention(b) if b.window.is_none()));
        assert!(!fla_with_attn("null").unwrap().is_hybrid());
    }

    #[test]
    fn attn_refusals_are_clear() {
        let err = |attn: &str| fla_with_attn(attn).unwrap_err().to_string();
        assert!(err(r#"{"layers": [4], "num_heads": 2}"#).contains("layer 4"));
        assert!(err(r#"{"layers": [-1], "num_heads": 2}"#).contains("layer -1"));
        assert!(err(r#"{"layers": [1, 1], "num_heads": 2}"#).contains("already"));
        let two = err(r#"[{"layers": [1], "num_heads": 2}, {"layers": [1], "num_heads": 4}]"#);
        assert!(two.contains("attn[1]") && two.contains("attn[0]"), "{two}");
        assert!(err(r#"{"layers": [], "num_heads": 2}"#).contains("empty"));
        assert!(err(r#"{"layers": [0]}"#).contains("num_heads"));
        assert!(err(r#"{"layers": [0], "num_heads": 0}"#).contains("positive"));
        assert!(err(r#"{"layers": [0], "num_heads": 4, "num_kv_heads": 3}"#).contains("grouped"));
        assert!(err(r#"{"layers": [0], "num_heads": 3}"#).contains("not divisible"));
        assert!(err(r#"{"layers": [0], "num_heads": 32}"#).contains("odd"));
        assert!(err(r#"{"layers": [0], "num_heads": 2, "window_size": 0}"#).contains("window"));
        assert!(err(r#"{"layers": [0], "num_heads": 2, "window_size": -3}"#).contains("attn"));
        assert!(err(r#"{"layers": [0], "num_heads": 2, "rope_theta": 0}"#).contains("rope_theta"));
        assert!(err(r#"{"layers": [0], "num_heads": 2, "qkv_bias": 1}"#).contains("attn"));
        assert!(err("[]").contains("attn"));
        assert!(err("[3]").contains("attn[0]"));
        assert!(err("true").contains("attn"));
    }

    #[test]
    fn refusals_name_the_option() {
        let fla = |extra: &str| {
            ModelConfig::from_json_str(&format!(
                r#"{{"model_type": "retnet", "hidden_size": 16, "num_heads": 2, "vocab_size": 5 {extra}}}"#
            ))
            .unwrap_err()
            .to_string()
        };
        assert!(fla(r#", "use_short_conv": true"#).contains("use_short_conv"));
        assert!(fla(r#", "feature_map": "elu""#).contains("feature_map"));
        assert!(fla(r#", "attn": {"layers": [30], "num_heads": 2}"#).contains("layer 30"));
        assert!(fla(r#", "attnres_block_size": 2"#).contains("attnres_block_size"));
        assert!(fla(r#", "num_heads": 3"#).contains("not divisible by 3 heads"));
        assert!(fla(r#", "num_kv_heads": 0"#).contains("zero"));
        assert!(fla(r#", "hidden_size": "big""#).contains("invalid type"));
        let ts = ModelConfig::from_json_str(
            r#"{"decoder_embed_dim": 8, "decoder_retention_heads": 2, "vocab_size": 5, "multiway": true}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(ts.contains("multiway"));
        assert!(ModelConfig::from_json_str("{\"decoder_embed_dim\": 8,").is_err());
        assert!(ModelConfig::from_json_str("[1]").is_err());
    }
}
