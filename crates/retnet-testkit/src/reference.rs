//! f64 CPU computations of what each kernel computes, written from the formulas
//! (/work/shared/docs/retnet-spec.md and the kernels' documentation), independently of the
//! shaders. Inputs are the f32 values the GPU receives, widened. The one copy: the kernel tests
//! of `retnet-runtime` and `cargo xtask verify` both compare against these.

pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Exact (erf) gelu.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// `table[ids[t], :] · scale`.
pub fn embedding(table: &[f32], dim: usize, ids: &[u32], scale: f32) -> Vec<f64> {
    let mut out = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        let row = &table[id as usize * dim..][..dim];
        out.extend(row.iter().map(|&v| f64::from(v) * f64::from(scale)));
    }
    out
}

/// RMSNorm of each `dim`-wide row: x / sqrt(mean(x²) + eps) (⊙ w).
pub fn rms_norm(x: &[f32], dim: usize, weight: Option<&[f32]>, eps: f32) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(dim) {
        let mean_square = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / dim as f64;
        let inverse = 1.0 / (mean_square + f64::from(eps)).sqrt();
        for (c, &v) in row.iter().enumerate() {
            let w = weight.map_or(1.0, |w| f64::from(w[c]));
            out.push(f64::from(v) * inverse * w);
        }
    }
    out
}

/// A linear layer as the kernels define it: `Y[r] = (α·Y0[r] +) X[x_row_start + r] · Wᵀ`,
/// W stored `[out, in]`.
pub struct Linear<'a> {
    pub x: &'a [f32],
    pub weight: &'a [f32],
    pub y0: &'a [f32],
    pub rows: usize,
    pub in_dim: usize,
    pub out_dim: usize,
    pub x_row_start: usize,
    pub accumulate: Option<f32>,
}

pub fn linear(l: &Linear<'_>) -> Vec<f64> {
    let mut out = Vec::with_capacity(l.rows * l.out_dim);
    for r in 0..l.rows {
        let x = &l.x[(l.x_row_start + r) * l.in_dim..][..l.in_dim];
        for o in 0..l.out_dim {
            let w = &l.weight[o * l.in_dim..][..l.in_dim];
            let dot: f64 = x
                .iter()
                .zip(w)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let previous = l.accumulate.map_or(0.0, |alpha| {
                f64::from(alpha) * f64::from(l.y0[r * l.out_dim + o])
            });
            out.push(previous + dot);
        }
    }
    out
}

/// Rotary in place on a strided buffer (returns the whole buffer). The angle is the f32 product
/// f32(position)·θ_i, as PyTorch computes it; cos and sin in f64.
#[allow(clippy::too_many_arguments)]
pub fn rotary(
    x: &[f32],
    theta: &[f32],
    interleaved: bool,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    start_pos: usize,
    row_stride: usize,
    col_offset: usize,
    scale: f32,
) -> Vec<f64> {
    let mut out: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let half = head_dim / 2;
    for t in 0..tokens {
        for h in 0..heads {
            let base = col_offset + t * row_stride + h * head_dim;
            for (i, &th) in theta.iter().enumerate().take(half) {
                let angle = f64::from((start_pos + t) as f32 * th);
                let (a, b) = if interleaved {
                    (base + 2 * i, base + 2 * i + 1)
                } else {
                    (base + i, base + half + i)
                };
                let (xa, xb) = (f64::from(x[a]), f64::from(x[b]));
                let s = f64::from(scale);
                out[a] = (xa * angle.cos() - xb * angle.sin()) * s;
                out[b] = (xb * angle.cos() + xa * angle.sin()) * s;
            }
        }
    }
    out
}

/// Where element `c` of head `h` of token `t` lives: `offset + t·stride + h·dim + c`.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub offset: usize,
    pub stride: usize,
}

impl Layout {
    pub fn at(&self, token: usize, head: usize, dim: usize, c: usize) -> usize {
        self.offset + token * self.stride + head * dim + c
    }
}

/// Per-head RMSNorm over V (optional weight) times silu(gate); dense `[tokens, heads·V]` output.
#[allow(clippy::too_many_arguments)]
pub fn head_norm_gate(
    input: &[f32],
    input_layout: Layout,
    gate: &[f32],
    gate_layout: Layout,
    weight: Option<&[f32]>,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    eps: f32,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(tokens * heads * head_dim);
    for t in 0..tokens {
        for h in 0..heads {
            let o = |c| f64::from(input[input_layout.at(t, h, head_dim, c)]);
            let mean_square = (0..head_dim).map(|c| o(c).powi(2)).sum::<f64>() / head_dim as f64;
            let inverse = 1.0 / (mean_square + f64::from(eps)).sqrt();
            for c in 0..head_dim {
                let g = f64::from(gate[gate_layout.at(t, h, head_dim, c)]);
                let w = weight.map_or(1.0, |w| f64::from(w[c]));
                out.push(o(c) * inverse * w * silu(g));
            }
        }
    }
    out
}

/// One retention problem: q `[T, H, K]`, k `[T, H_kv, K]`, v `[T, H_kv, V]` at their layouts.
pub struct Retention<'a> {
    pub data: &'a [f32],
    pub q: Layout,
    pub k: Layout,
    pub v: Layout,
    pub tokens: usize,
    pub query_heads: usize,
    pub kv_heads: usize,
    pub key_dim: usize,
    pub value_dim: usize,
    /// log γ per query head, as the GPU receives it (f32).
    pub log_decay: &'a [f32],
    /// Divide P_n by sqrt(c_n) (torchscale).
    pub scale_by_decay_sum: bool,
}

/// The recurrent definition, O(T·H·K·V): S_n = γ S_{n−1} + k_nᵀ v_n, P_n = q_n S_n
/// (÷ sqrt(c_n), c_n = γ c_{n−1} + 1 = Σ_{i≤n} γ^i), from a zero state at position 0.
/// Returns the outputs `[T, H, V]` (dense) and the final state `[H, K, V]`.
pub fn retention(r: &Retention<'_>) -> (Vec<f64>, Vec<f64>) {
    let (kd, vd) = (r.key_dim, r.value_dim);
    let group = r.query_heads / r.kv_heads;
    let mut state = vec![0.0f64; r.query_heads * kd * vd];
    let mut out = vec![0.0f64; r.tokens * r.query_heads * vd];
    let mut decay_sums = vec![0.0f64; r.query_heads];
    let gammas: Vec<f64> = r.log_decay.iter().map(|&l| f64::from(l).exp()).collect();
    let mut q = vec![0.0f64; kd];
    let mut k = vec![0.0f64; kd];
    let mut v = vec![0.0f64; vd];
    for t in 0..r.tokens {
        for h in 0..r.query_heads {
            let kv = h / group;
            let gamma = gammas[h];
            for i in 0..kd {
                q[i] = f64::from(r.data[r.q.at(t, h, kd, i)]);
                k[i] = f64::from(r.data[r.k.at(t, kv, kd, i)]);
            }
            for (c, value) in v.iter_mut().enumerate() {
                *value = f64::from(r.data[r.v.at(t, kv, vd, c)]);
            }
            let s = &mut state[h * kd * vd..][..kd * vd];
            let p = &mut out[(t * r.query_heads + h) * vd..][..vd];
            for (i, row) in s.chunks_exact_mut(vd).enumerate() {
                for (c, entry) in row.iter_mut().enumerate() {
                    *entry = gamma * *entry + k[i] * v[c];
                    p[c] += q[i] * *entry;
                }
            }
            decay_sums[h] = gamma * decay_sums[h] + 1.0;
            if r.scale_by_decay_sum {
                let scale = 1.0 / decay_sums[h].sqrt();
                p.iter_mut().for_each(|x| *x *= scale);
            }
        }
    }
    (out, state)
}

/// log γ for head h as both peer implementations compute it, in f32: log(1 − 2^(−5−h))
/// (exactly 0 for h ≥ 20, where the subtraction rounds to 1).
pub fn log_decay_f32(h: usize) -> f32 {
    (1.0f32 - 2f32.powi(-5 - h as i32)).ln()
}

/// `y0·α + x·Wᵀ` for rows of an f64 input `x [rows, in_dim]` (the output of another reference
/// stage, so a fused kernel is compared with the composition of its stages without rounding in
/// between); W `[out_dim, in_dim]`.
pub fn linear_f64(
    x: &[f64],
    weight: &[f32],
    y0: &[f32],
    in_dim: usize,
    out_dim: usize,
    accumulate: Option<f32>,
) -> Vec<f64> {
    let rows = x.len() / in_dim;
    let mut out = Vec::with_capacity(rows * out_dim);
    for r in 0..rows {
        let xr = &x[r * in_dim..][..in_dim];
        for o in 0..out_dim {
            let w = &weight[o * in_dim..][..in_dim];
            let dot: f64 = xr.iter().zip(w).map(|(&a, &b)| a * f64::from(b)).sum();
            let previous = accumulate.map_or(0.0, |alpha| {
                f64::from(alpha) * f64::from(y0[r * out_dim + o])
            });
            out.push(previous + dot);
        }
    }
    out
}

/// [`act_lin`] of an f64 act|lin product `[rows, 2·width]`, added to `α·y0` when `accumulate`
/// is `Some(α)`: `[rows, width]` (the batched FFN input projection with its gating fused).
pub fn act_lin_f64(
    ab: &[f64],
    width: usize,
    gelu_act: bool,
    y0: &[f32],
    accumulate: Option<f32>,
) -> Vec<f64> {
    ab.chunks_exact(2 * width)
        .zip(y0.chunks_exact(width))
        .flat_map(|(row, previous)| {
            let (a, b) = row.split_at(width);
            a.iter().zip(b).zip(previous).map(move |((&a, &b), &y)| {
                let act = if gelu_act { gelu(a) } else { silu(a) };
                accumulate.map_or(0.0, |alpha| f64::from(alpha) * f64::from(y)) + act * b
            })
        })
        .collect()
}

/// How much act(a)·b can magnify a's and b's relative errors against the largest |output|: a
/// and b are each off by up to a bar times max|a| or max|b|, and |act'| ≤ 1.13, |act(a)| ≤ |a|
/// for silu and gelu, so act(a)·b is off by at most ~2.2·max|a|·max|b| times that bar; a
/// comparison relative to max|out| scales its bar by this factor (at least 1).
pub fn gating_amplification(ab: &[f64], width: usize, out: &[f64]) -> f64 {
    let (mut max_a, mut max_b) = (0.0f64, 0.0f64);
    for row in ab.chunks_exact(2 * width) {
        let (a, b) = row.split_at(width);
        max_a = a.iter().fold(max_a, |m, v| m.max(v.abs()));
        max_b = b.iter().fold(max_b, |m, v| m.max(v.abs()));
    }
    let max_out = out.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if max_out > 0.0 {
        (2.2 * max_a * max_b / max_out).max(1.0)
    } else {
        1.0
    }
}

/// The FFN's gating act(a)·b of a fused act|lin buffer `[rows, 2·width]` (a the first half of
/// each row): `[rows, width]`.
pub fn act_lin(fused: &[f32], width: usize, gelu_act: bool) -> Vec<f64> {
    fused
        .chunks_exact(2 * width)
        .flat_map(|row| {
            let (a, b) = row.split_at(width);
            a.iter().zip(b).map(move |(&a, &b)| {
                let a = f64::from(a);
                let act = if gelu_act { gelu(a) } else { silu(a) };
                act * f64::from(b)
            })
        })
        .collect()
}

/// [`retention`] of raw q and k: both rotated first (in f64 at positions `start_pos + t`, then
/// rounded to f32 as the rotary kernel stores them; q also scaled by `q_scale`), as the
/// recurrent kernels that rotate q and k themselves must compute. The ÷sqrt(c_n) scale counts
/// positions from 0, so use `scale_by_decay_sum` only with `start_pos` 0.
pub fn rotated_retention(
    r: &Retention<'_>,
    theta: &[f32],
    interleaved: bool,
    start_pos: usize,
    q_scale: f32,
) -> (Vec<f64>, Vec<f64>) {
    let rotate = |data: &[f32], layout: Layout, heads: usize, scale: f32| -> Vec<f32> {
        rotary(
            data,
            theta,
            interleaved,
            r.tokens,
            heads,
            r.key_dim,
            start_pos,
            layout.stride,
            layout.offset,
            scale,
        )
        .iter()
        .map(|&v| v as f32)
        .collect()
    };
    let with_q = rotate(r.data, r.q, r.query_heads, q_scale);
    let rotated = rotate(&with_q, r.k, r.kv_heads, 1.0);
    retention(&Retention {
        data: &rotated,
        ..*r
    })
}
