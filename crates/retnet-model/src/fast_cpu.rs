//! The fast CPU engine: the same model as the reference [`CpuModel`], computed the way the GPU
//! computes it — f32 accumulation, the recurrent state in f32, weights kept in their checkpoint
//! precision — with SIMD panel kernels ([`crate::cpu_kernels`]) on rayon's threads.
//!
//! The reference stays the oracle (f64 accumulation, plain loops); this engine is checked
//! against it (`tests/fast_cpu.rs`): it differs only by f32 rounding. Its own results do not
//! depend on the thread count or the SIMD width, and a prompt fed at once gives bit-for-bit the
//! logits and state of the same tokens fed one by one (every projection row is the same f32 sum
//! in the same order, and retention is recurrent in both cases).
//!
//! A decode step allocates nothing: every buffer lives in the engine and is sized by the
//! longest span seen (prompts are processed in spans of [`SPAN`] tokens).

use rayon::prelude::*;

use crate::config::{Activation, ModelConfig, NormPlacement, OutputScale, RotaryStyle};
use crate::cpu_kernels::{vectorized, PackedMatrix};
use crate::error::{ModelError, Result};
use crate::reference::{check_tokens, rms_norm_rows, CpuModel, CpuState};
use crate::retention::decay_sum;
use crate::sampling::{Sampler, SamplingParams};
use crate::session::{Engine, REPEAT_WINDOW};
use crate::weights::WeightsFingerprint;

/// Tokens per internal span of a prefill: bounds the activations a long prompt needs.
pub const SPAN: usize = 256;

/// One layer's weights, packed: q|k|v|g as one matrix, the FFN's two input branches as one.
#[derive(Clone, Debug)]
struct FastLayer {
    retention_norm: Vec<f32>,
    qkvg: PackedMatrix,
    out_proj: PackedMatrix,
    head_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// The activated branch's rows, then the linear branch's.
    ffn_up: PackedMatrix,
    ffn_down: PackedMatrix,
}

/// A model packed for the fast CPU engine. Build it from a loaded [`CpuModel`].
#[derive(Clone, Debug)]
pub struct FastCpuModel {
    config: ModelConfig,
    fingerprint: WeightsFingerprint,
    embed: Vec<f32>,
    embed_norm: Option<Vec<f32>>,
    layers: Vec<FastLayer>,
    final_norm: Option<Vec<f32>>,
    head: PackedMatrix,
    log_decay: Vec<f32>,
    rotary_theta: Vec<f32>,
}

impl FastCpuModel {
    /// Packs the weights of `model` (in f16, bf16 or f32: the narrowest that holds every weight
    /// of a matrix exactly).
    ///
    /// Hybrid checkpoints (attention layers) are refused: this engine runs retention layers
    /// only, and the CPU reference ([`CpuModel`]) runs them instead.
    pub fn new(model: &CpuModel) -> Result<Self> {
        let c = model.config();
        if c.is_hybrid() {
            return Err(ModelError::unsupported(
                "attn",
                "the fast CPU engine runs retention layers only; use the CPU reference",
            ));
        }
        let w = model.weights();
        let layers = w
            .layers
            .iter()
            .map(|l| FastLayer {
                retention_norm: l.retention_norm.clone(),
                qkvg: PackedMatrix::stack(
                    &[
                        &l.q_proj.data,
                        &l.k_proj.data,
                        &l.v_proj.data,
                        &l.g_proj.data,
                    ],
                    c.d_model,
                ),
                out_proj: PackedMatrix::stack(&[&l.out_proj.data], c.value_width()),
                head_norm: l.head_norm.clone(),
                ffn_norm: l.ffn_norm.clone(),
                ffn_up: PackedMatrix::stack(&[&l.ffn_act.data, &l.ffn_lin.data], c.d_model),
                ffn_down: PackedMatrix::stack(&[&l.ffn_down.data], c.ffn_dim),
            })
            .collect();
        Ok(Self {
            config: c.clone(),
            fingerprint: model.fingerprint().clone(),
            embed: w.embed.data.clone(),
            embed_norm: w.embed_norm.clone(),
            layers,
            final_norm: w.final_norm.clone(),
            head: PackedMatrix::stack(&[&w.head().data], c.d_model),
            log_decay: w.log_decay.clone(),
            rotary_theta: w.rotary_theta.clone(),
        })
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The fingerprint of the weights it was packed from (the [`CpuModel`]'s).
    pub fn fingerprint(&self) -> &WeightsFingerprint {
        &self.fingerprint
    }

    /// Bytes of packed weight matrices (the embedding table and norms excluded).
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| l.qkvg.bytes() + l.out_proj.bytes() + l.ffn_up.bytes() + l.ffn_down.bytes())
            .sum();
        layers + self.head.bytes()
    }

    /// A fresh sequence on this model.
    pub fn session(&self) -> FastCpuEngine<'_> {
        FastCpuEngine::new(self)
    }

    /// Logits `[T, vocab]` (row-major) of a whole sequence from a fresh state.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.session().forward(tokens, true)
    }
}

/// Activations of one span, reused from step to step.
#[derive(Default)]
struct Scratch {
    /// The residual stream, `[T, d]`.
    x: Vec<f32>,
    /// A normed copy of it.
    h: Vec<f32>,
    /// q|k|v|g, `[T, width]`.
    qkvg: Vec<f32>,
    /// Retention outputs head-major, `[H, T, V]`.
    heads: Vec<f32>,
    /// The same token-major, `[T, H·V]` (spans of more than one token).
    o: Vec<f32>,
    /// A sublayer's output, `[T, d]`.
    r: Vec<f32>,
    /// The FFN's two branches, `[T, 2f]`.
    up: Vec<f32>,
    /// The gated FFN activation, `[T, f]`.
    act: Vec<f32>,
    /// cos and sin of every rotary angle, `[T, K/2]`.
    cos: Vec<f64>,
    sin: Vec<f64>,
    /// Logits of the rows asked for.
    logits: Vec<f32>,
}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

impl Scratch {
    fn reserve(&mut self, c: &ModelConfig, t: usize) {
        let width = c.query_width() + c.key_width() + c.kv_value_width() + c.value_width();
        grow(&mut self.x, t * c.d_model);
        grow(&mut self.h, t * c.d_model);
        grow(&mut self.r, t * c.d_model);
        grow(&mut self.qkvg, t * width);
        grow(&mut self.heads, t * c.value_width());
        grow(&mut self.o, t * c.value_width());
        grow(&mut self.up, t * 2 * c.ffn_dim);
        grow(&mut self.act, t * c.ffn_dim);
        let pairs = t * (c.head_k_dim / 2);
        if self.cos.len() < pairs {
            self.cos.resize(pairs, 0.0);
            self.sin.resize(pairs, 0.0);
        }
    }
}

/// One sequence on a [`FastCpuModel`]: its recurrent state and buffers. An [`Engine`], so
/// [`crate::Generator`] drives it; sampling runs inside the engine
/// ([`Engine::sample_on_device`]) without allocating per token.
pub struct FastCpuEngine<'m> {
    model: &'m FastCpuModel,
    state: CpuState,
    scratch: Scratch,
    /// Logits of the last token fed, while known.
    last: Option<Vec<f32>>,
    sampler: Sampler,
}

impl<'m> FastCpuEngine<'m> {
    /// A fresh sequence at position 0.
    pub fn new(model: &'m FastCpuModel) -> Self {
        let c = &model.config;
        Self {
            model,
            state: CpuState {
                position: 0,
                layers: vec![vec![0.0; c.retention_state_len()]; c.num_layers],
            },
            scratch: Scratch::default(),
            last: None,
            sampler: Sampler::default(),
        }
    }

    /// The recurrent state (per layer `H × K × V`) and position.
    pub fn state(&self) -> &CpuState {
        &self.state
    }

    /// Feeds `tokens` and returns the logits of every one (`[T, vocab]`) when `all_rows`, else
    /// of the last one.
    pub fn forward(&mut self, tokens: &[u32], all_rows: bool) -> Result<Vec<f32>> {
        check_tokens(tokens, self.model.config.vocab_size)?;
        crate::reference::check_advance(self.state.position, tokens.len())?;
        let vocab = self.model.config.vocab_size;
        let mut out = Vec::with_capacity(if all_rows {
            crate::reference::logits_len(tokens.len(), vocab)?
        } else {
            vocab
        });
        for span in tokens.chunks(SPAN) {
            self.run_span(span, all_rows);
            if all_rows {
                let rows = self.scratch.logits.get(..span.len() * vocab);
                out.extend_from_slice(rows.unwrap_or_default());
            }
        }
        let last = if all_rows {
            out.get(out.len().saturating_sub(vocab)..)
        } else {
            self.scratch.logits.get(..vocab)
        };
        let last = last.unwrap_or_default().to_vec();
        if !all_rows {
            out.extend_from_slice(&last);
        }
        let first = self.state.position - if all_rows { tokens.len() } else { 1 };
        crate::reference::check_finite_logits(&out, vocab, first)?;
        self.last = Some(last);
        Ok(out)
    }

    /// Feeds one checked token, leaving its logits in `self.last` (no allocation once warm).
    fn step(&mut self, token: u32) {
        self.run_span(&[token], false);
        let vocab = self.model.config.vocab_size;
        let logits = self.scratch.logits.get(..vocab).unwrap_or_default();
        match &mut self.last {
            Some(last) if last.len() == logits.len() => last.copy_from_slice(logits),
            last => *last = Some(logits.to_vec()),
        }
    }

    /// Runs one span of checked tokens from the state; leaves the logits of every row (when
    /// `all_rows`) or of the last row in `scratch.logits`, and advances the state.
    ///
    /// The span runs inside a rayon scope, i.e. on one of the pool's threads: its thirty-odd
    /// parallel loops per token are then forked from a worker, which takes part in them, instead
    /// of from the caller's thread, which would be put to sleep and woken for each of them (a
    /// context switch each way; 20 % of a decode step's time when measured).
    fn run_span(&mut self, tokens: &[u32], all_rows: bool) {
        rayon::scope(|_| self.run_span_on_pool(tokens, all_rows));
    }

    #[allow(clippy::indexing_slicing)] // buffers are sized by `reserve` from the validated config
    fn run_span_on_pool(&mut self, tokens: &[u32], all_rows: bool) {
        let model = self.model;
        let c = &model.config;
        let t = tokens.len();
        let d = c.d_model;
        let position = self.state.position;
        let s = &mut self.scratch;
        s.reserve(c, t);

        // Rotary angles of the span's positions, as the reference computes them (f64).
        let pairs = c.head_k_dim / 2;
        for n in 0..t {
            for (i, &th) in model.rotary_theta.iter().enumerate().take(pairs) {
                let (sin, cos) = ((position + n) as f64 * th as f64).sin_cos();
                s.cos[n * pairs + i] = cos;
                s.sin[n * pairs + i] = sin;
            }
        }

        let x = &mut s.x[..t * d];
        for (row, &token) in x.chunks_exact_mut(d).zip(tokens) {
            let e = &model.embed[token as usize * d..][..d];
            for (o, &e) in row.iter_mut().zip(e) {
                *o = e * c.embed_scale;
            }
        }
        if let Some(norm) = &model.embed_norm {
            rms_norm_rows(x, d, Some(norm), c.norm_eps);
        }

        for (layer, state) in model.layers.iter().zip(self.state.layers.iter_mut()) {
            let alpha = c.residual_alpha;
            let x = &mut s.x[..t * d];
            let h = &mut s.h[..t * d];
            let r = &mut s.r[..t * d];
            let bufs = RetentionBuffers {
                qkvg: &mut s.qkvg,
                heads: &mut s.heads,
                o: &mut s.o,
                cos: &s.cos,
                sin: &s.sin,
            };
            match c.norm_placement {
                NormPlacement::PreNorm => {
                    h.copy_from_slice(x);
                    rms_norm_rows(h, d, Some(&layer.retention_norm), c.norm_eps);
                    retention(model, layer, state, h, t, position, bufs, r);
                    residual_add(x, alpha, r);
                    h.copy_from_slice(x);
                    rms_norm_rows(h, d, Some(&layer.ffn_norm), c.norm_eps);
                    ffn(c, layer, h, t, &mut s.up, &mut s.act, r);
                    residual_add(x, alpha, r);
                }
                NormPlacement::PostNorm => {
                    retention(model, layer, state, x, t, position, bufs, r);
                    residual_add(x, alpha, r);
                    rms_norm_rows(x, d, Some(&layer.retention_norm), c.norm_eps);
                    ffn(c, layer, x, t, &mut s.up, &mut s.act, r);
                    residual_add(x, alpha, r);
                    rms_norm_rows(x, d, Some(&layer.ffn_norm), c.norm_eps);
                }
            }
        }

        let rows = if all_rows { t } else { 1 };
        let first = t - rows;
        let x = &mut s.x[first * d..t * d];
        if let Some(norm) = &model.final_norm {
            rms_norm_rows(x, d, Some(norm), c.norm_eps);
        }
        grow(&mut s.logits, rows * c.vocab_size);
        model
            .head
            .matmul(x, rows, &mut s.logits[..rows * c.vocab_size]);
        self.state.position += t;
    }
}

/// Buffers of the retention sublayer.
struct RetentionBuffers<'a> {
    qkvg: &'a mut [f32],
    heads: &'a mut [f32],
    o: &'a mut [f32],
    cos: &'a [f64],
    sin: &'a [f64],
}

/// `x ← α·x + r`, as the reference computes it.
fn residual_add(x: &mut [f32], alpha: f32, r: &[f32]) {
    for (xe, &re) in x.iter_mut().zip(r) {
        *xe = (alpha as f64 * *xe as f64 + re as f64) as f32;
    }
}

/// An activation in f32.
#[inline]
fn activate(kind: Activation, x: f32) -> f32 {
    match kind {
        Activation::Swish => x / (1.0 + (-x).exp()),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
    }
}

/// Multi-scale retention of `input` (`T × d`) into `r` (`T × d`), advancing the layer's state.
#[allow(clippy::indexing_slicing, clippy::too_many_arguments)] // widths from the validated config
fn retention(
    model: &FastCpuModel,
    layer: &FastLayer,
    state: &mut [f32],
    input: &[f32],
    t: usize,
    position: usize,
    bufs: RetentionBuffers<'_>,
    r: &mut [f32],
) {
    let c = &model.config;
    let (kd, vd) = (c.head_k_dim, c.head_v_dim);
    let (qw, kw, vw) = (c.query_width(), c.key_width(), c.kv_value_width());
    let width = qw + kw + vw + c.value_width();
    let RetentionBuffers {
        qkvg,
        heads,
        o,
        cos,
        sin,
    } = bufs;
    let qkvg = &mut qkvg[..t * width];
    layer.qkvg.matmul(input, t, qkvg);

    let pairs = kd / 2;
    let scale = (kd as f64).powf(-0.5);
    for (n, row) in qkvg.chunks_exact_mut(width).enumerate() {
        let (cos, sin) = (&cos[n * pairs..][..pairs], &sin[n * pairs..][..pairs]);
        let (q, rest) = row.split_at_mut(qw);
        for head in q.chunks_exact_mut(kd) {
            rotate(head, cos, sin, c.rotary);
            for e in head.iter_mut() {
                *e = (*e as f64 * scale) as f32;
            }
        }
        for head in rest[..kw].chunks_exact_mut(kd) {
            rotate(head, cos, sin, c.rotary);
        }
    }

    let qkvg = &*qkvg;
    let heads = &mut heads[..c.num_heads * t * vd];
    heads
        .par_chunks_mut(t * vd)
        .zip(state.par_chunks_mut(kd * vd))
        .enumerate()
        .for_each(|(head, (out, state))| {
            let kv = c.kv_head_of(head);
            let log_gamma = model.log_decay[head] as f64;
            let decay_minus_one = log_gamma.exp_m1() as f32;
            for (n, out) in out.chunks_exact_mut(vd).enumerate() {
                let row = &qkvg[n * width..][..width];
                let q = &row[head * kd..][..kd];
                let k = &row[qw + kv * kd..][..kd];
                let v = &row[qw + kw + kv * vd..][..vd];
                let g = &row[qw + kw + vw + head * vd..][..vd];
                vectorized(|| recurrent_step(state, q, k, v, decay_minus_one, out));
                if c.output_scale == OutputScale::InvSqrtDecaySum {
                    let s = decay_sum(log_gamma, position + n).sqrt();
                    for e in out.iter_mut() {
                        *e = (*e as f64 / s) as f32;
                    }
                }
                rms_norm_rows(out, vd, layer.head_norm.as_deref(), c.head_norm_eps);
                for (e, &g) in out.iter_mut().zip(g) {
                    *e *= activate(c.gate_activation, g);
                }
            }
        });

    let value_width = c.value_width();
    let o: &[f32] = if t == 1 {
        heads // [H, 1, V] is [1, H·V]
    } else {
        let o = &mut o[..t * value_width];
        for (head, rows) in heads.chunks_exact(t * vd).enumerate() {
            for (n, src) in rows.chunks_exact(vd).enumerate() {
                o[n * value_width + head * vd..][..vd].copy_from_slice(src);
            }
        }
        o
    };
    layer.out_proj.matmul(o, t, r);
}

/// One token of one head: `S ← S + (γ − 1)·S + kᵀv`, `out = q S`, in f32 (vectorized over V).
#[inline(always)]
fn recurrent_step(
    state: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    decay_minus_one: f32,
    out: &mut [f32],
) {
    out.fill(0.0);
    for ((row, &ka), &qa) in state.chunks_exact_mut(v.len()).zip(k).zip(q) {
        for ((s, &vb), o) in row.iter_mut().zip(v).zip(out.iter_mut()) {
            let updated = *s + decay_minus_one * *s + ka * vb;
            *s = updated;
            *o += qa * updated;
        }
    }
}

/// Rotates one head's vector by the span row's precomputed angles (as `reference::rotate`).
#[allow(clippy::indexing_slicing)] // i < x.len() / 2, so 2i + 1 and i + x.len() / 2 are in range
fn rotate(x: &mut [f32], cos: &[f64], sin: &[f64], style: RotaryStyle) {
    let half = x.len() / 2;
    for (i, (&cos, &sin)) in cos.iter().zip(sin).enumerate().take(half) {
        let (a, b) = match style {
            RotaryStyle::InterleavedPairs => (2 * i, 2 * i + 1),
            RotaryStyle::SplitHalves => (i, i + half),
        };
        let (xa, xb) = (x[a] as f64, x[b] as f64);
        x[a] = (xa * cos - xb * sin) as f32;
        x[b] = (xb * cos + xa * sin) as f32;
    }
}

/// Gated FFN of `input` into `r`.
#[allow(clippy::indexing_slicing)] // buffers sized by `reserve`
fn ffn(
    c: &ModelConfig,
    layer: &FastLayer,
    input: &[f32],
    t: usize,
    up: &mut [f32],
    act: &mut [f32],
    r: &mut [f32],
) {
    let f = c.ffn_dim;
    let up = &mut up[..t * 2 * f];
    layer.ffn_up.matmul(input, t, up);
    let act = &mut act[..t * f];
    for (a, u) in act.chunks_exact_mut(f).zip(up.chunks_exact(2 * f)) {
        let (branch, linear) = u.split_at(f);
        for ((a, &b), &l) in a.iter_mut().zip(branch).zip(linear) {
            *a = activate(c.ffn_activation, b) * l;
        }
    }
    layer.ffn_down.matmul(act, t, r);
}

impl Engine for FastCpuEngine<'_> {
    fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    fn fingerprint(&self) -> &WeightsFingerprint {
        &self.model.fingerprint
    }

    fn position(&self) -> usize {
        self.state.position
    }

    async fn feed(&mut self, tokens: &[u32], all_rows: bool) -> Result<Vec<f32>> {
        self.forward(tokens, all_rows)
    }

    async fn export_state(&self) -> Result<Vec<Vec<f32>>> {
        Ok(self.state.layers.clone())
    }

    fn import_state(&mut self, position: usize, layers: &[Vec<f32>]) -> Result<()> {
        crate::reference::check_state_shape(&self.model.config, position, layers)?;
        self.state = CpuState {
            position,
            layers: layers.to_vec(),
        };
        self.last = None;
        Ok(())
    }

    fn restore_logits(&mut self, logits: &[f32]) -> Result<()> {
        self.last = Some(logits.to_vec());
        Ok(())
    }

    fn fork(&self) -> Result<Self> {
        Ok(Self {
            model: self.model,
            state: self.state.clone(),
            scratch: Scratch::default(),
            last: self.last.clone(),
            sampler: Sampler::default(),
        })
    }

    /// The sampler of [`crate::Generator::next_token`] (same draws, same penalty window), run
    /// here so that a decode step reuses every buffer.
    async fn sample_on_device(
        &mut self,
        params: &SamplingParams,
        draws: u64,
        history: &[u32],
        count: usize,
        on_tokens: &mut dyn FnMut(&[u32]) -> bool,
    ) -> Result<Option<Vec<u32>>> {
        let Some(mut logits) = self.last.take() else {
            return Err(ModelError::invalid(
                "nothing to continue from: give a prompt first",
            ));
        };
        let mut recent = Vec::with_capacity(REPEAT_WINDOW + 1);
        recent.extend_from_slice(
            history
                .get(history.len().saturating_sub(REPEAT_WINDOW)..)
                .unwrap_or_default(),
        );
        // `count` comes from the user (`--max-tokens`): tokens are collected as they come.
        let mut out = Vec::new();
        let vocab = self.model.config.vocab_size;
        for i in 0..count {
            // Each token but the last is fed, so the position must stay representable.
            crate::reference::check_advance(self.state.position, 1)?;
            crate::reference::check_finite_logits(&logits, vocab, self.state.position)?;
            self.sampler
                .apply_repeat_penalty(&mut logits, &recent, params.repeat_penalty);
            let token = self
                .sampler
                .sample(&logits, params, draws.wrapping_add(i as u64));
            out.push(token);
            recent.push(token);
            let excess = recent.len().saturating_sub(REPEAT_WINDOW);
            recent.drain(..excess);
            if !on_tokens(&[token]) || i + 1 == count {
                break;
            }
            self.last = Some(logits);
            self.step(token);
            logits = self.last.take().unwrap_or_default();
        }
        Ok(Some(out))
    }
}
