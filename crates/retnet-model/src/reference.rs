//! The CPU reference: the whole model to logits, written to mirror the spec line by line.
//!
//! f32 storage, f64 accumulation in every reduction. It is the oracle that the GPU path is
//! checked against, so it favours plain loops over cleverness.

use std::path::Path;
use std::sync::OnceLock;

use crate::config::{
    Activation, AttentionConfig, LayerKind, ModelConfig, NormPlacement, OutputScale, RotaryStyle,
};
use crate::error::{ModelError, Result};
use crate::retention::{self, HeadShape};
use crate::weights::{
    AttentionWeights, CheckpointWeights, LayerWeights, Linear, ModelWeights, WeightsFingerprint,
    QK_NORM_EPS,
};

/// Which of retention's three equivalent forms to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetentionForm {
    /// The whole span at once, with the decay mask.
    Parallel,
    /// One token after another through the K×V state.
    Recurrent,
    /// Parallel inside chunks of this many tokens, recurrent across them.
    Chunkwise {
        /// Tokens per chunk (≥ 1); the last chunk may be shorter.
        chunk_size: usize,
    },
}

/// The recurrent state of a sequence: one K×V f32 matrix per retention layer and head (or the
/// key/value cache of an attention layer), and the position of the next token.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuState {
    /// Tokens consumed so far (the 0-based position of the next token).
    pub position: usize,
    /// Per retention layer, `H × K × V` values. Per attention layer, its key/value cache (see
    /// [`kv_cache_len`]): one slot of `[k (H_kv·D), v (H_kv·D)]` per cached position p, at
    /// slot p (full attention) or p mod w (a ring of w slots for a window w).
    pub layers: Vec<Vec<f32>>,
}

/// The length (f32 values) of an attention layer's key/value cache after `position` tokens:
/// `cached positions × 2 × H_kv × D`; `None` if it does not fit in memory's address space.
pub fn kv_cache_len(attn: &AttentionConfig, position: usize) -> Option<usize> {
    attn.cached_positions(position)
        .checked_mul(2)?
        .checked_mul(attn.kv_width())
}

/// The most tokens one sequence can consume. The GPU kernels take positions as u32, so every
/// backend refuses to go past this alike (a state file at a later position included): the same
/// input never continues differently on the CPU and the GPU.
pub const MAX_POSITION: usize = u32::MAX as usize;

/// Checks that a sequence at `position` can consume `tokens` more.
pub fn check_advance(position: usize, tokens: usize) -> Result<()> {
    let end = position as u128 + tokens as u128;
    if end > MAX_POSITION as u128 {
        return Err(ModelError::SequenceTooLong { end });
    }
    Ok(())
}

/// The most bytes of logits one call returns (`[T, vocab]` f32): 4 GiB.
pub const MAX_LOGITS_BYTES: u128 = 1 << 32;

/// The f32 values of `tokens` rows of logits, refused (before anything is allocated) when
/// over [`MAX_LOGITS_BYTES`].
pub fn logits_len(tokens: usize, vocab: usize) -> Result<usize> {
    let values = tokens as u128 * vocab as u128;
    if values * 4 > MAX_LOGITS_BYTES {
        return Err(ModelError::TooLarge(format!(
            "the logits of {tokens} tokens over a vocabulary of {vocab} need {} bytes, over the \
             {MAX_LOGITS_BYTES} bytes one call returns; feed fewer tokens at once",
            values * 4
        )));
    }
    usize::try_from(values).map_err(|_| ModelError::TooLarge("logits too large".into()))
}

/// Refuses logits that hold a NaN or an infinity: a result like that is never passed on.
pub fn check_finite_logits(logits: &[f32], vocab: usize, first_position: usize) -> Result<()> {
    match logits.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(ModelError::NonFinite(format!(
            "the logits at position {} are not finite ({}): the model's arithmetic overflowed",
            first_position + i / vocab.max(1),
            logits.get(i).copied().unwrap_or(f32::NAN)
        ))),
    }
}

/// Checks that a state (per-layer values after `position` tokens) fits a model of `config`:
/// the position is one a session can reach, the layer count, `H × K × V` values per
/// retention layer, the cache length per attention layer (see [`kv_cache_len`]), and every
/// value finite. Every engine's `import_state` checks this.
pub fn check_state_shape(config: &ModelConfig, position: usize, layers: &[Vec<f32>]) -> Result<()> {
    let c = config;
    check_advance(position, 0)?;
    if layers.len() != c.num_layers {
        return Err(ModelError::invalid(format!(
            "the state has {} layers, the model {}",
            layers.len(),
            c.num_layers
        )));
    }
    for (i, layer) in layers.iter().enumerate() {
        let want = match c.layer_kind(i) {
            LayerKind::Retention => c
                .num_heads
                .checked_mul(c.head_k_dim)
                .and_then(|n| n.checked_mul(c.head_v_dim)),
            LayerKind::Attention(a) => kv_cache_len(a, position),
        };
        if want != Some(layer.len()) {
            return Err(ModelError::invalid(format!(
                "layer {i} of the state holds {} values, not what position {position} needs",
                layer.len()
            )));
        }
        if let Some(j) = layer.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite(format!(
                "layer {i} of the state holds a non-finite value at element {j}"
            )));
        }
    }
    Ok(())
}

/// The most bytes of one activation (`[T, width]` f32) the CPU reference allocates in one call.
const MAX_ACTIVATION_BYTES: u128 = 1 << 32;

/// Refuses a call whose widest activation (`T ×` the widest of the model's widths) would be
/// over [`MAX_ACTIVATION_BYTES`], before anything is allocated.
fn activations_fit(c: &ModelConfig, tokens: usize) -> Result<()> {
    let widest = [
        c.d_model,
        c.ffn_dim,
        c.vocab_size,
        c.query_width(),
        c.key_width(),
        c.value_width(),
    ]
    .into_iter()
    .chain(c.attention.iter().map(|a| a.query_width()))
    .max()
    .unwrap_or(0);
    let bytes = tokens as u128 * widest as u128 * 4;
    if bytes > MAX_ACTIVATION_BYTES {
        return Err(ModelError::TooLarge(format!(
            "{tokens} tokens at once need activations of {bytes} bytes, over the \
             {MAX_ACTIVATION_BYTES} bytes one call may allocate; feed fewer tokens at once"
        )));
    }
    Ok(())
}

/// A model on the CPU.
#[derive(Clone, Debug)]
pub struct CpuModel {
    config: ModelConfig,
    weights: ModelWeights,
    /// Computed on first use for weights given in memory, at load for a checkpoint.
    fingerprint: OnceLock<WeightsFingerprint>,
}

impl CpuModel {
    /// Wraps a config and its weights, after checking that they agree: the config's sizes
    /// (see [`ModelConfig::check`]), one layer of weights per layer, every tensor of the shape
    /// the config implies, every value finite.
    pub fn new(config: ModelConfig, weights: ModelWeights) -> Result<Self> {
        config.check()?;
        weights.check(&config)?;
        Ok(Self {
            config,
            weights,
            fingerprint: OnceLock::new(),
        })
    }

    /// Builds a model from the text of its `config.json` and the bytes of its safetensors file.
    pub fn from_bytes(config_json: &str, weights: crate::Bytes) -> Result<Self> {
        let config = ModelConfig::from_json_str(config_json)?;
        let store = crate::TensorStore::from_bytes("model.safetensors", weights)?;
        Self::from_store(config, &store, &mut |_, _| {})
    }

    /// Loads `config.json` and the safetensors weights of a model directory.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with_progress(dir, &mut |_, _| {})
    }

    /// [`CpuModel::load`], calling `progress(layers_done, layers_total)` as layers are read.
    pub fn load_with_progress(dir: &Path, progress: &mut dyn FnMut(usize, usize)) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let store = crate::TensorStore::open(dir)?;
        Self::from_store(config, &store, progress)
    }

    /// Reads the weights of opened safetensors files into host f32.
    pub fn from_store(
        config: ModelConfig,
        store: &crate::TensorStore,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let source = CheckpointWeights::new(&config, store)?;
        let (weights, fingerprint) = ModelWeights::from_source(&config, &source, progress)?;
        Ok(Self {
            config,
            weights,
            fingerprint: OnceLock::from(fingerprint),
        })
    }

    /// A model whose weights are given with the fingerprint of the checkpoint they came from
    /// (weights transformed after loading, [`CpuModel::stored_as`]).
    pub(crate) fn with_fingerprint(
        config: ModelConfig,
        weights: ModelWeights,
        fingerprint: WeightsFingerprint,
    ) -> Result<Self> {
        weights.check(&config)?;
        Ok(Self {
            config,
            weights,
            fingerprint: OnceLock::from(fingerprint),
        })
    }

    /// The config and the weights, taken apart.
    pub(crate) fn into_parts(self) -> (ModelConfig, ModelWeights) {
        (self.config, self.weights)
    }

    /// The fingerprint of the weights (a state file records it: [`crate::state_file`]).
    pub fn fingerprint(&self) -> &WeightsFingerprint {
        self.fingerprint.get_or_init(|| self.weights.fingerprint())
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The model's weights.
    pub fn weights(&self) -> &ModelWeights {
        &self.weights
    }

    /// A zero state at position 0.
    pub fn new_state(&self) -> CpuState {
        let c = &self.config;
        CpuState {
            position: 0,
            layers: (0..c.num_layers)
                .map(|layer| match c.layer_kind(layer) {
                    LayerKind::Retention => vec![0.0; c.retention_state_len()],
                    LayerKind::Attention(_) => Vec::new(),
                })
                .collect(),
        }
    }

    /// Checks that a state (per-layer values after `position` tokens) fits this model: the
    /// layer count, `H × K × V` values per retention layer, the cache length per attention
    /// layer (see [`kv_cache_len`]).
    pub fn check_state(&self, position: usize, layers: &[Vec<f32>]) -> Result<()> {
        check_state_shape(&self.config, position, layers)
    }

    /// Checks that a token list is non-empty and inside the vocabulary.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        check_tokens(tokens, self.config.vocab_size)
    }

    /// Logits `[T, vocab]` (row-major) of a whole sequence, from a fresh state.
    pub fn logits(&self, tokens: &[u32], form: RetentionForm) -> Result<Vec<f32>> {
        let mut state = self.new_state();
        self.forward(tokens, &mut state, form)
    }

    /// Runs `tokens` from `state`, returns their logits `[T, vocab]` and advances the state.
    #[allow(clippy::indexing_slicing)] // tokens are checked against the vocab; shapes at load
    pub fn forward(
        &self,
        tokens: &[u32],
        state: &mut CpuState,
        form: RetentionForm,
    ) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        self.check_state(state.position, &state.layers)?;
        check_advance(state.position, tokens.len())?;
        if form == (RetentionForm::Chunkwise { chunk_size: 0 }) {
            return Err(ModelError::ZeroChunkSize);
        }
        let c = &self.config;
        logits_len(tokens.len(), c.vocab_size)?;
        activations_fit(c, tokens.len())?;
        let w = &self.weights;
        let t = tokens.len();
        let d = c.d_model;

        let mut x = Vec::with_capacity(t * d);
        for &token in tokens {
            let row = &w.embed.data[token as usize * d..][..d];
            x.extend(row.iter().map(|&e| e * c.embed_scale));
        }
        if let Some(norm) = &w.embed_norm {
            rms_norm_rows(&mut x, d, Some(norm), c.norm_eps);
        }

        for (layer, layer_state) in w.layers.iter().zip(state.layers.iter_mut()) {
            let alpha = c.residual_alpha;
            match c.norm_placement {
                NormPlacement::PreNorm => {
                    let mut h = x.clone();
                    rms_norm_rows(&mut h, d, Some(&layer.retention_norm), c.norm_eps);
                    let r = self.mixer(layer, layer_state, &h, t, state.position, form)?;
                    residual_add(&mut x, alpha, &r);
                    let mut h = x.clone();
                    rms_norm_rows(&mut h, d, Some(&layer.ffn_norm), c.norm_eps);
                    let f = self.ffn(layer, &h, t);
                    residual_add(&mut x, alpha, &f);
                }
                NormPlacement::PostNorm => {
                    let r = self.mixer(layer, layer_state, &x, t, state.position, form)?;
                    residual_add(&mut x, alpha, &r);
                    rms_norm_rows(&mut x, d, Some(&layer.retention_norm), c.norm_eps);
                    let f = self.ffn(layer, &x, t);
                    residual_add(&mut x, alpha, &f);
                    rms_norm_rows(&mut x, d, Some(&layer.ffn_norm), c.norm_eps);
                }
            }
        }
        if let Some(norm) = &w.final_norm {
            rms_norm_rows(&mut x, d, Some(norm), c.norm_eps);
        }
        let logits = matmul_t(&x, t, w.head());
        check_finite_logits(&logits, c.vocab_size, state.position)?;
        state.position += t;
        Ok(logits)
    }

    /// The layer's token mixer: retention, or softmax attention in a hybrid checkpoint.
    fn mixer(
        &self,
        layer: &LayerWeights,
        state: &mut Vec<f32>,
        h: &[f32],
        t: usize,
        position: usize,
        form: RetentionForm,
    ) -> Result<Vec<f32>> {
        match &layer.attention {
            Some(attn) => attention(layer, attn, state, h, t, position),
            None => Ok(self.retention(layer, state, h, t, position, form)),
        }
    }

    /// Multi-scale retention of `h` (`T × d`, already normed) for tokens at positions
    /// `position..position+T`; returns `T × d`.
    #[allow(clippy::indexing_slicing)] // widths and head offsets come from the validated config
    fn retention(
        &self,
        layer: &LayerWeights,
        state: &mut [f32],
        h: &[f32],
        t: usize,
        position: usize,
        form: RetentionForm,
    ) -> Vec<f32> {
        let c = &self.config;
        let (kd, vd) = (c.head_k_dim, c.head_v_dim);
        let mut q = matmul_t(h, t, &layer.q_proj);
        let mut k = matmul_t(h, t, &layer.k_proj);
        let v = matmul_t(h, t, &layer.v_proj);
        let g = matmul_t(h, t, &layer.g_proj);

        let scale = (kd as f64).powf(-0.5);
        for n in 0..t {
            for head in q[n * c.query_width()..][..c.query_width()].chunks_exact_mut(kd) {
                rotate(head, position + n, &self.weights.rotary_theta, c.rotary);
                for e in head.iter_mut() {
                    *e = (*e as f64 * scale) as f32;
                }
            }
            for head in k[n * c.key_width()..][..c.key_width()].chunks_exact_mut(kd) {
                rotate(head, position + n, &self.weights.rotary_theta, c.rotary);
            }
        }

        let mut o = vec![0.0f32; t * c.value_width()];
        for head in 0..c.num_heads {
            let kv = c.kv_head_of(head);
            let gather = |src: &[f32], width: usize, index: usize, dim: usize| -> Vec<f32> {
                (0..t)
                    .flat_map(|n| src[n * width + index * dim..][..dim].iter().copied())
                    .collect()
            };
            let qh = gather(&q, c.query_width(), head, kd);
            let kh = gather(&k, c.key_width(), kv, kd);
            let vh = gather(&v, c.kv_value_width(), kv, vd);
            let head_state = &mut state[head * kd * vd..][..kd * vd];
            let log_gamma = self.weights.log_decay[head] as f64;
            let shape = HeadShape {
                tokens: t,
                k: kd,
                v: vd,
            };
            let p = match form {
                RetentionForm::Parallel => {
                    retention::parallel(shape, &qh, &kh, &vh, head_state, log_gamma)
                }
                RetentionForm::Recurrent => {
                    retention::recurrent(shape, &qh, &kh, &vh, head_state, log_gamma)
                }
                RetentionForm::Chunkwise { chunk_size } => {
                    retention::chunkwise(shape, &qh, &kh, &vh, head_state, log_gamma, chunk_size)
                }
            };
            for n in 0..t {
                let mut row: Vec<f32> = p[n * vd..][..vd].to_vec();
                if c.output_scale == OutputScale::InvSqrtDecaySum {
                    let s = retention::decay_sum(log_gamma, position + n).sqrt();
                    for e in &mut row {
                        *e = (*e as f64 / s) as f32;
                    }
                }
                rms_norm_rows(&mut row, vd, layer.head_norm.as_deref(), c.head_norm_eps);
                o[n * c.value_width() + head * vd..][..vd].copy_from_slice(&row);
            }
        }
        for (oe, &ge) in o.iter_mut().zip(&g) {
            *oe *= activate(c.gate_activation, ge);
        }
        matmul_t(&o, t, &layer.out_proj)
    }

    /// Gated FFN: `W_down (act(W_act h) ⊙ W_lin h)`.
    fn ffn(&self, layer: &LayerWeights, h: &[f32], t: usize) -> Vec<f32> {
        let mut a = matmul_t(h, t, &layer.ffn_act);
        let l = matmul_t(h, t, &layer.ffn_lin);
        for (ae, &le) in a.iter_mut().zip(&l) {
            *ae = activate(self.config.ffn_activation, *ae) * le;
        }
        matmul_t(&a, t, &layer.ffn_down)
    }
}

/// Causal softmax attention of `h` (`T × d`, already normed) for tokens at positions
/// `position..position+T`, as `fla.layers.attn.Attention` computes it: q, k, v projections
/// (plus biases), per-head RMSNorm of q and k when present, NeoX rotary, scores q·k / sqrt(D),
/// each query over the keys of its window (all earlier positions and itself, or its `w` most
/// recent), softmax, o_proj. Earlier positions come from `cache`, which is then updated with
/// this span's keys and values. Returns `T × d`.
#[allow(clippy::indexing_slicing)] // the cache length is checked; widths come from the config
fn attention(
    layer: &LayerWeights,
    attn: &AttentionWeights,
    cache: &mut Vec<f32>,
    h: &[f32],
    t: usize,
    position: usize,
) -> Result<Vec<f32>> {
    let a = &attn.config;
    let (dh, qw, kvw) = (a.head_dim, a.query_width(), a.kv_width());
    let slot_len = 2 * kvw;
    let cached = a.cached_positions(position);
    if Some(cache.len()) != kv_cache_len(a, position) {
        return Err(ModelError::invalid(format!(
            "an attention layer's key/value cache holds {} values, but {cached} positions need {}",
            cache.len(),
            cached * slot_len
        )));
    }
    let mut q = matmul_t(h, t, &layer.q_proj);
    let mut k = matmul_t(h, t, &layer.k_proj);
    let mut v = matmul_t(h, t, &layer.v_proj);
    if let Some([qb, kb, vb]) = &attn.qkv_bias {
        for (x, b) in [(&mut q, qb), (&mut k, kb), (&mut v, vb)] {
            for row in x.chunks_exact_mut(b.len()) {
                for (e, &be) in row.iter_mut().zip(b.iter()) {
                    *e = (*e as f64 + be as f64) as f32;
                }
            }
        }
    }
    if let Some([qn, kn]) = &attn.qk_norm {
        rms_norm_rows(&mut q, dh, Some(qn), QK_NORM_EPS);
        rms_norm_rows(&mut k, dh, Some(kn), QK_NORM_EPS);
    }
    for n in 0..t {
        let p = position + n;
        for head in q[n * qw..][..qw].chunks_exact_mut(dh) {
            rotate(head, p, &attn.rotary_theta, RotaryStyle::SplitHalves);
        }
        for head in k[n * kvw..][..kvw].chunks_exact_mut(dh) {
            rotate(head, p, &attn.rotary_theta, RotaryStyle::SplitHalves);
        }
    }
    let slot_of = |m: usize| a.window.map_or(m, |w| m % w);
    // The keys and values this span reads, by absolute position from `base`: cached ones, then
    // this span's.
    let base = a.window.map_or(0, |w| (position + 1).saturating_sub(w));
    let mut keys = Vec::with_capacity((position + t - base) * kvw);
    let mut values = Vec::with_capacity(keys.capacity());
    for m in base..position {
        let slot = slot_of(m) * slot_len;
        keys.extend_from_slice(&cache[slot..][..kvw]);
        values.extend_from_slice(&cache[slot + kvw..][..kvw]);
    }
    keys.extend_from_slice(&k);
    values.extend_from_slice(&v);
    let scale = (dh as f64).powf(-0.5);
    let mut o = vec![0.0f32; t * qw];
    let mut scores = Vec::new();
    for n in 0..t {
        let p = position + n;
        let first = a.window.map_or(0, |w| (p + 1).saturating_sub(w));
        for head in 0..a.num_heads {
            let kvh = a.kv_head_of(head);
            let qh = &q[n * qw + head * dh..][..dh];
            scores.clear();
            let at = |m: usize| (m - base) * kvw + kvh * dh;
            scores.extend((first..=p).map(|m| {
                qh.iter()
                    .zip(&keys[at(m)..][..dh])
                    .map(|(&x, &y)| x as f64 * y as f64)
                    .sum::<f64>()
                    * scale
            }));
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut acc = vec![0.0f64; dh];
            let mut total = 0.0f64;
            for (m, &s) in (first..=p).zip(&scores) {
                let e = (s - max).exp();
                total += e;
                for (ae, &ve) in acc.iter_mut().zip(&values[at(m)..][..dh]) {
                    *ae += e * ve as f64;
                }
            }
            for (oe, ae) in o[n * qw + head * dh..][..dh].iter_mut().zip(&acc) {
                *oe = (ae / total) as f32;
            }
        }
    }
    // This span's keys and values into the cache: appended, or into their ring slots (the
    // positions already outside the next query's window are left out).
    let end = position + t;
    let new_len = kv_cache_len(a, end)
        .ok_or_else(|| ModelError::invalid("the key/value cache outgrows the address space"))?;
    cache.resize(new_len.max(cache.len()), 0.0);
    for n in 0..t {
        let m = position + n;
        if a.window.is_some_and(|w| m + w < end) {
            continue;
        }
        let slot = slot_of(m) * slot_len;
        cache[slot..][..kvw].copy_from_slice(&k[n * kvw..][..kvw]);
        cache[slot + kvw..][..kvw].copy_from_slice(&v[n * kvw..][..kvw]);
    }
    Ok(matmul_t(&o, t, &layer.out_proj))
}

/// Checks that a token list is non-empty and every id is below `vocab_size`.
pub fn check_tokens(tokens: &[u32], vocab_size: usize) -> Result<()> {
    if tokens.is_empty() {
        return Err(ModelError::EmptyTokens);
    }
    match tokens
        .iter()
        .enumerate()
        .find(|&(_, &t)| t as usize >= vocab_size)
    {
        Some((position, &token)) => Err(ModelError::TokenOutOfRange {
            token: token as i64,
            position,
            vocab_size,
        }),
        None => Ok(()),
    }
}

/// `x ← α·x + r`.
fn residual_add(x: &mut [f32], alpha: f32, r: &[f32]) {
    for (xe, &re) in x.iter_mut().zip(r) {
        *xe = (alpha as f64 * *xe as f64 + re as f64) as f32;
    }
}

/// RMSNorm of each `width`-long row: x / sqrt(mean(x²) + ε) ⊙ w.
pub fn rms_norm_rows(x: &mut [f32], width: usize, weight: Option<&[f32]>, eps: f32) {
    for row in x.chunks_exact_mut(width) {
        let mean_sq = row.iter().map(|&e| e as f64 * e as f64).sum::<f64>() / width as f64;
        let inv = 1.0 / (mean_sq + eps as f64).sqrt();
        match weight {
            Some(weight) => {
                for (e, &w) in row.iter_mut().zip(weight) {
                    *e = (*e as f64 * inv * w as f64) as f32;
                }
            }
            None => {
                for e in row.iter_mut() {
                    *e = (*e as f64 * inv) as f32;
                }
            }
        }
    }
}

/// `y = x Wᵀ` for `rows` rows of x.
///
/// # Panics
///
/// If `x` has fewer than `rows × w.in_features` values.
#[allow(clippy::indexing_slicing)] // row offsets are in range by the shapes checked at load
pub fn matmul_t(x: &[f32], rows: usize, w: &Linear) -> Vec<f32> {
    let (n_in, n_out) = (w.in_features, w.out_features);
    let mut y = vec![0.0f32; rows * n_out];
    for r in 0..rows {
        let xr = &x[r * n_in..][..n_in];
        for (o, ye) in y[r * n_out..][..n_out].iter_mut().enumerate() {
            let wr = &w.data[o * n_in..][..n_in];
            *ye = xr
                .iter()
                .zip(wr)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>() as f32;
        }
    }
    y
}

/// An activation function, in f64.
pub fn activate(kind: Activation, x: f32) -> f32 {
    let x = x as f64;
    let y = match kind {
        Activation::Swish => x / (1.0 + (-x).exp()),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
    };
    y as f32
}

/// Rotates one head's query or key vector for absolute position `position`.
#[allow(clippy::indexing_slicing)] // i < x.len() / 2, so 2i + 1 and i + x.len() / 2 are in range
pub fn rotate(x: &mut [f32], position: usize, theta: &[f32], style: RotaryStyle) {
    let half = x.len() / 2;
    for (i, &th) in theta.iter().enumerate().take(half) {
        let (a, b) = match style {
            RotaryStyle::InterleavedPairs => (2 * i, 2 * i + 1),
            RotaryStyle::SplitHalves => (i, i + half),
        };
        let (sin, cos) = (position as f64 * th as f64).sin_cos();
        let (xa, xb) = (x[a] as f64, x[b] as f64);
        x[a] = (xa * cos - xb * sin) as f32;
        x[b] = (xb * cos + xa * sin) as f32;
    }
}
