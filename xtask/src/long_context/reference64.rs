//! A float64 recurrent RetNet: every activation, sum and the recurrent state in f64.
//!
//! `retnet-model`'s `CpuModel` accumulates in f64 but stores activations and the recurrent state
//! in f32 after every operation, as the GPU does; so over a long context its state carries the
//! same kind of rounding as the GPU's. This model keeps the state in f64, which makes it the
//! yardstick both f32 paths are measured against. It computes the same model (the weights, log γ
//! and rotary angles as loaded, widened exactly to f64) and follows `reference.rs` knob by knob:
//! embedding scale and norm, pre/post-norm, α, rotary style, ÷sqrt(c_n), per-head norm with or
//! without weight, gate and FFN activations, grouped heads, final norm, tied head.

use retnet_model::{
    Activation, CpuModel, Linear, ModelConfig, NormPlacement, OutputScale, RotaryStyle,
};

/// A weight matrix `[out, in]` in f64.
struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl Matrix {
    fn from(linear: &Linear) -> Matrix {
        Matrix {
            rows: linear.out_features,
            cols: linear.in_features,
            data: widen(&linear.data),
        }
    }

    /// `y = W x`.
    fn apply(&self, x: &[f64]) -> Vec<f64> {
        (0..self.rows)
            .map(|r| dot(&self.data[r * self.cols..][..self.cols], x))
            .collect()
    }
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// A dot product with four independent partial sums (vectorizable; the order of an f64 sum of
/// a few hundred terms changes it by ~1e-16).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = a4
        .remainder()
        .iter()
        .zip(b4.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a4.zip(b4) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

struct Layer {
    retention_norm: Vec<f64>,
    q: Matrix,
    k: Matrix,
    v: Matrix,
    g: Matrix,
    out: Matrix,
    head_norm: Option<Vec<f64>>,
    ffn_norm: Vec<f64>,
    ffn_act: Matrix,
    ffn_lin: Matrix,
    ffn_down: Matrix,
}

/// The f64 model and one sequence's state (`[layer][head][K][V]`, f64).
pub struct Reference64 {
    config: ModelConfig,
    embed: Matrix,
    embed_norm: Option<Vec<f64>>,
    layers: Vec<Layer>,
    final_norm: Option<Vec<f64>>,
    head: Matrix,
    log_decay: Vec<f64>,
    theta: Vec<f64>,
    /// Per layer, `H × K × V`.
    pub state: Vec<Vec<f64>>,
    /// Tokens consumed.
    pub position: usize,
}

impl Reference64 {
    /// The model's weights in f64 and a zero state.
    pub fn new(model: &CpuModel) -> Reference64 {
        let c = model.config().clone();
        let w = model.weights();
        let layers = w
            .layers
            .iter()
            .map(|l| Layer {
                retention_norm: widen(&l.retention_norm),
                q: Matrix::from(&l.q_proj),
                k: Matrix::from(&l.k_proj),
                v: Matrix::from(&l.v_proj),
                g: Matrix::from(&l.g_proj),
                out: Matrix::from(&l.out_proj),
                head_norm: l.head_norm.as_deref().map(widen),
                ffn_norm: widen(&l.ffn_norm),
                ffn_act: Matrix::from(&l.ffn_act),
                ffn_lin: Matrix::from(&l.ffn_lin),
                ffn_down: Matrix::from(&l.ffn_down),
            })
            .collect();
        let state_len = c.retention_state_len();
        Reference64 {
            embed: Matrix::from(&w.embed),
            embed_norm: w.embed_norm.as_deref().map(widen),
            layers,
            final_norm: w.final_norm.as_deref().map(widen),
            head: Matrix::from(w.head()),
            log_decay: widen(&w.log_decay),
            theta: widen(&w.rotary_theta),
            state: vec![vec![0.0; state_len]; c.num_layers],
            position: 0,
            config: c,
        }
    }

    /// Feeds one token; returns its logits when `want_logits` (the head is most of a small
    /// model's cost, and only sampled positions need it).
    pub fn step(&mut self, token: u32, want_logits: bool) -> Option<Vec<f64>> {
        let c = &self.config;
        let d = c.d_model;
        let row = &self.embed.data[token as usize * d..][..d];
        let mut x: Vec<f64> = row.iter().map(|&e| e * f64::from(c.embed_scale)).collect();
        if let Some(norm) = &self.embed_norm {
            rms_norm(&mut x, Some(norm), c.norm_eps);
        }
        let alpha = f64::from(c.residual_alpha);
        for (index, layer) in self.layers.iter().enumerate() {
            let state = &mut self.state[index];
            match c.norm_placement {
                NormPlacement::PreNorm => {
                    let mut h = x.clone();
                    rms_norm(&mut h, Some(&layer.retention_norm), c.norm_eps);
                    let r = retention(
                        c,
                        layer,
                        state,
                        &self.log_decay,
                        &self.theta,
                        &h,
                        self.position,
                    );
                    residual(&mut x, alpha, &r);
                    let mut h = x.clone();
                    rms_norm(&mut h, Some(&layer.ffn_norm), c.norm_eps);
                    residual(&mut x, alpha, &ffn(c, layer, &h));
                }
                NormPlacement::PostNorm => {
                    let r = retention(
                        c,
                        layer,
                        state,
                        &self.log_decay,
                        &self.theta,
                        &x,
                        self.position,
                    );
                    residual(&mut x, alpha, &r);
                    rms_norm(&mut x, Some(&layer.retention_norm), c.norm_eps);
                    let f = ffn(c, layer, &x);
                    residual(&mut x, alpha, &f);
                    rms_norm(&mut x, Some(&layer.ffn_norm), c.norm_eps);
                }
            }
        }
        self.position += 1;
        if !want_logits {
            return None;
        }
        if let Some(norm) = &self.final_norm {
            rms_norm(&mut x, Some(norm), c.norm_eps);
        }
        Some(self.head.apply(&x))
    }
}

fn residual(x: &mut [f64], alpha: f64, r: &[f64]) {
    for (xe, re) in x.iter_mut().zip(r) {
        *xe = alpha * *xe + re;
    }
}

fn rms_norm(x: &mut [f64], weight: Option<&[f64]>, eps: f32) {
    let mean_sq = x.iter().map(|e| e * e).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (mean_sq + f64::from(eps)).sqrt();
    match weight {
        Some(w) => x.iter_mut().zip(w).for_each(|(e, w)| *e *= inv * w),
        None => x.iter_mut().for_each(|e| *e *= inv),
    }
}

fn activate(kind: Activation, x: f64) -> f64 {
    match kind {
        Activation::Swish => x / (1.0 + (-x).exp()),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
    }
}

/// Rotates one head's vector for absolute `position`, with the exact angle position·θ (as the
/// CPU reference does).
fn rotate(x: &mut [f64], position: usize, theta: &[f64], style: RotaryStyle) {
    let half = x.len() / 2;
    for (i, &th) in theta.iter().enumerate().take(half) {
        let (a, b) = match style {
            RotaryStyle::InterleavedPairs => (2 * i, 2 * i + 1),
            RotaryStyle::SplitHalves => (i, i + half),
        };
        let (sin, cos) = (position as f64 * th).sin_cos();
        let (xa, xb) = (x[a], x[b]);
        x[a] = xa * cos - xb * sin;
        x[b] = xb * cos + xa * sin;
    }
}

/// One token of multi-scale retention: S ← γ S + kᵀv, P = q S (÷ sqrt(c_n)), per-head norm,
/// silu(g) gate, out_proj.
fn retention(
    c: &ModelConfig,
    layer: &Layer,
    state: &mut [f64],
    log_decay: &[f64],
    theta: &[f64],
    h: &[f64],
    position: usize,
) -> Vec<f64> {
    let (kd, vd) = (c.head_k_dim, c.head_v_dim);
    let mut q = layer.q.apply(h);
    let mut k = layer.k.apply(h);
    let v = layer.v.apply(h);
    let g = layer.g.apply(h);
    let scale = (kd as f64).powf(-0.5);
    for head in q.chunks_exact_mut(kd) {
        rotate(head, position, theta, c.rotary);
        head.iter_mut().for_each(|e| *e *= scale);
    }
    for head in k.chunks_exact_mut(kd) {
        rotate(head, position, theta, c.rotary);
    }
    let mut o = vec![0.0f64; c.value_width()];
    for head in 0..c.num_heads {
        let kv = c.kv_head_of(head);
        let (qh, kh) = (&q[head * kd..][..kd], &k[kv * kd..][..kd]);
        let vh = &v[kv * vd..][..vd];
        let s = &mut state[head * kd * vd..][..kd * vd];
        let log_gamma = log_decay[head];
        // γ − 1 to full precision: for γ near 1, γ·S loses the decay's digits, S + (γ−1)·S keeps them.
        let decay_minus_one = log_gamma.exp_m1();
        let out = &mut o[head * vd..][..vd];
        for (a, (&ka, &qa)) in kh.iter().zip(qh).enumerate() {
            for (b, (entry, &vb)) in s[a * vd..][..vd].iter_mut().zip(vh).enumerate() {
                *entry += decay_minus_one * *entry + ka * vb;
                out[b] += qa * *entry;
            }
        }
        if c.output_scale == OutputScale::InvSqrtDecaySum {
            let decay_sum = if log_gamma == 0.0 {
                (position + 1) as f64
            } else {
                ((position + 1) as f64 * log_gamma).exp_m1() / decay_minus_one
            };
            let inv = 1.0 / decay_sum.sqrt();
            out.iter_mut().for_each(|e| *e *= inv);
        }
        rms_norm(out, layer.head_norm.as_deref(), c.head_norm_eps);
    }
    for (oe, &ge) in o.iter_mut().zip(&g) {
        *oe *= activate(c.gate_activation, ge);
    }
    layer.out.apply(&o)
}

fn ffn(c: &ModelConfig, layer: &Layer, h: &[f64]) -> Vec<f64> {
    let mut a = layer.ffn_act.apply(h);
    let l = layer.ffn_lin.apply(h);
    for (ae, le) in a.iter_mut().zip(&l) {
        *ae = activate(c.ffn_activation, *ae) * le;
    }
    layer.ffn_down.apply(&a)
}
