//! Retention of one head in its three forms, as the spec writes them.
//!
//! Inputs are contiguous per head: `q` and `k` are `T × K` (already rotated and scaled), `v` is
//! `T × V`, the state `S` is `K × V`. Sums are accumulated in f64; the state is stored in f32,
//! as the GPU stores it. Every form reads the incoming state and leaves the outgoing one, so a
//! sequence can be split anywhere and continued in any form.

/// γ^m for a head with decay `log_gamma` = log γ.
fn decay_pow(log_gamma: f64, m: usize) -> f64 {
    (m as f64 * log_gamma).exp()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Shapes of one head's retention problem.
#[derive(Clone, Copy, Debug)]
pub struct HeadShape {
    /// Tokens in the span.
    pub tokens: usize,
    /// Key dim.
    pub k: usize,
    /// Value dim.
    pub v: usize,
}

/// Recurrent form: S_n = γ S_{n−1} + k̂_nᵀ v_n, P_n = q̂_n S_n, token after token.
///
/// # Panics
///
/// If a slice is shorter than `shape` says (the model's callers size them from a config whose
/// shapes were validated at load).
#[allow(clippy::indexing_slicing)] // row offsets are multiples of the shape's dims, in range by the shape
pub fn recurrent(
    shape: HeadShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    state: &mut [f32],
    log_gamma: f64,
) -> Vec<f32> {
    let HeadShape {
        tokens,
        k: kd,
        v: vd,
    } = shape;
    // γ − 1 rather than γ, as the GPU kernels do: S + (γ − 1)·S keeps every digit of 1 − γ
    // for γ near 1 (in f64 this matters only beyond ~1e-16, but the two paths stay alike).
    let decay_minus_one = log_gamma.exp_m1();
    let mut out = vec![0.0f32; tokens * vd];
    for n in 0..tokens {
        let (qn, kn, vn) = (&q[n * kd..][..kd], &k[n * kd..][..kd], &v[n * vd..][..vd]);
        for a in 0..kd {
            for (b, s) in state[a * vd..][..vd].iter_mut().enumerate() {
                let old = *s as f64;
                *s = (old + decay_minus_one * old + kn[a] as f64 * vn[b] as f64) as f32;
            }
        }
        for (b, o) in out[n * vd..][..vd].iter_mut().enumerate() {
            *o = (0..kd)
                .map(|a| qn[a] as f64 * state[a * vd + b] as f64)
                .sum::<f64>() as f32;
        }
    }
    out
}

/// Parallel form over the whole span: P = (Q̂K̂ᵀ ⊙ D) V plus the incoming state's term.
pub fn parallel(
    shape: HeadShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    state: &mut [f32],
    log_gamma: f64,
) -> Vec<f32> {
    chunkwise(shape, q, k, v, state, log_gamma, shape.tokens.max(1))
}

/// Chunkwise form with chunks of `chunk` tokens (the last one may be shorter): inside a chunk
/// starting at s, P_{s+i} = γ^(i+1) q̂ S + Σ_{j≤i} γ^(i−j) (q̂·k̂_{s+j}) v_{s+j}; then
/// S ← γ^B S + Σ_j γ^(B−1−j) k̂_{s+j}ᵀ v_{s+j}.
///
/// # Panics
///
/// If a slice is shorter than `shape` says (the model's callers size them from a config whose
/// shapes were validated at load).
#[allow(clippy::indexing_slicing)] // row offsets are multiples of the shape's dims, in range by the shape
pub fn chunkwise(
    shape: HeadShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    state: &mut [f32],
    log_gamma: f64,
    chunk: usize,
) -> Vec<f32> {
    let HeadShape {
        tokens,
        k: kd,
        v: vd,
    } = shape;
    let mut out = vec![0.0f32; tokens * vd];
    let mut acc = vec![0.0f64; vd];
    // γ^m for every m a chunk can need, computed once.
    let pow: Vec<f64> = (0..=chunk.min(tokens))
        .map(|m| decay_pow(log_gamma, m))
        .collect();
    let mut start = 0;
    while start < tokens {
        let len = chunk.min(tokens - start);
        for i in 0..len {
            let n = start + i;
            let qn = &q[n * kd..][..kd];
            let cross = pow[i + 1];
            for (b, a) in acc.iter_mut().enumerate() {
                *a = cross
                    * (0..kd)
                        .map(|r| qn[r] as f64 * state[r * vd + b] as f64)
                        .sum::<f64>();
            }
            for j in 0..=i {
                let m = start + j;
                let w = pow[i - j] * dot(qn, &k[m * kd..][..kd]);
                for (a, &vm) in acc.iter_mut().zip(&v[m * vd..][..vd]) {
                    *a += w * vm as f64;
                }
            }
            for (o, &a) in out[n * vd..][..vd].iter_mut().zip(&acc) {
                *o = a as f32;
            }
        }
        let carry = pow[len];
        for r in 0..kd {
            for b in 0..vd {
                let mut s = carry * state[r * vd + b] as f64;
                for j in 0..len {
                    let m = start + j;
                    s += pow[len - 1 - j] * k[m * kd + r] as f64 * v[m * vd + b] as f64;
                }
                state[r * vd + b] = s as f32;
            }
        }
        start += len;
    }
    out
}

/// c_n = Σ_{i=0..n} γ^i, whose square root torchscale divides position n's output by.
pub fn decay_sum(log_gamma: f64, position: usize) -> f64 {
    if log_gamma == 0.0 {
        (position + 1) as f64
    } else {
        ((position + 1) as f64 * log_gamma).exp_m1() / log_gamma.exp_m1()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32
            })
            .collect()
    }

    fn rel_max_err(a: &[f32], b: &[f32]) -> f64 {
        let num = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() as f64)
            .fold(0.0, f64::max);
        let den = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
        num / den
    }

    /// The spec's definition, P_n = Σ_{m≤n} γ^(n−m) (q̂_n·k̂_m) v_m, written as directly as
    /// possible, independent of the three forms above.
    fn definition(shape: HeadShape, q: &[f32], k: &[f32], v: &[f32], lg: f64) -> Vec<f32> {
        let HeadShape {
            tokens,
            k: kd,
            v: vd,
        } = shape;
        let mut out = vec![0.0; tokens * vd];
        for n in 0..tokens {
            for b in 0..vd {
                let mut s = 0.0f64;
                for m in 0..=n {
                    s += ((n - m) as f64 * lg).exp()
                        * dot(&q[n * kd..][..kd], &k[m * kd..][..kd])
                        * v[m * vd + b] as f64;
                }
                out[n * vd + b] = s as f32;
            }
        }
        out
    }

    #[test]
    fn the_three_forms_equal_the_definition_and_carry_state() {
        for &(tokens, kd, vd, lg) in &[
            (1usize, 2usize, 1usize, (1.0f64 - 1.0 / 32.0).ln()),
            (37, 6, 5, (1.0f64 - 1.0 / 32.0).ln()),
            (50, 4, 7, 0.0), // γ = 1: no decay
            (23, 8, 3, (0.5f64).ln()),
        ] {
            let shape = HeadShape {
                tokens,
                k: kd,
                v: vd,
            };
            let q = pseudo_random(tokens * kd, 1);
            let k = pseudo_random(tokens * kd, 2);
            let v = pseudo_random(tokens * vd, 3);
            let want = definition(shape, &q, &k, &v, lg);
            let mut s_rec = vec![0.0; kd * vd];
            let rec = recurrent(shape, &q, &k, &v, &mut s_rec, lg);
            assert!(rel_max_err(&rec, &want) < 1e-6, "recurrent T={tokens}");
            let mut s_par = vec![0.0; kd * vd];
            let par = parallel(shape, &q, &k, &v, &mut s_par, lg);
            assert!(rel_max_err(&par, &want) < 1e-6, "parallel T={tokens}");
            assert!(rel_max_err(&s_par, &s_rec) < 1e-6);
            for chunk in [1, 3, 7, 16, 64] {
                let mut s = vec![0.0; kd * vd];
                let got = chunkwise(shape, &q, &k, &v, &mut s, lg, chunk);
                assert!(
                    rel_max_err(&got, &want) < 1e-6,
                    "chunkwise {chunk} T={tokens}"
                );
                assert!(rel_max_err(&s, &s_rec) < 1e-6, "state chunk {chunk}");
            }
        }
    }

    #[test]
    fn a_split_sequence_continues_exactly() {
        let (tokens, kd, vd, lg) = (30, 4, 3, (1.0f64 - 1.0 / 64.0).ln());
        let q = pseudo_random(tokens * kd, 4);
        let k = pseudo_random(tokens * kd, 5);
        let v = pseudo_random(tokens * vd, 6);
        let whole = definition(
            HeadShape {
                tokens,
                k: kd,
                v: vd,
            },
            &q,
            &k,
            &v,
            lg,
        );
        let split = 11;
        let mut state = vec![0.0; kd * vd];
        let head = HeadShape {
            tokens: split,
            k: kd,
            v: vd,
        };
        let mut got = parallel(
            head,
            &q[..split * kd],
            &k[..split * kd],
            &v[..split * vd],
            &mut state,
            lg,
        );
        let tail = HeadShape {
            tokens: tokens - split,
            k: kd,
            v: vd,
        };
        got.extend(chunkwise(
            tail,
            &q[split * kd..],
            &k[split * kd..],
            &v[split * vd..],
            &mut state,
            lg,
            4,
        ));
        assert!(rel_max_err(&got, &whole) < 1e-6);
    }

    #[test]
    fn decay_sum_matches_its_definition() {
        for lg in [0.0, (1.0f64 - 1.0 / 32.0).ln(), (0.5f64).ln()] {
            for n in [0usize, 1, 5, 100] {
                let direct: f64 = (0..=n).map(|i| (i as f64 * lg).exp()).sum();
                assert!((decay_sum(lg, n) - direct).abs() <= 1e-12 * direct);
            }
        }
    }
}
