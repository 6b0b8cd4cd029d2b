//! Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition penalty,
//! reproducible from a seed.
//!
//! The procedure is written so that a GPU kernel can reproduce it exactly without sorting the
//! vocabulary: the candidates are *every token at or above a threshold* (ties are kept
//! together), and the draw walks the candidates in token-id order. Randomness comes from a
//! counter-based hash of (seed, step) on u32s, so the n-th draw depends on nothing but the seed
//! and n — no generator state to save with a session.

/// How to pick tokens. `temperature == 0` means greedy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: no limit).
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities sum to at least p (1: no limit).
    pub top_p: f32,
    /// Divide positive (multiply negative) logits of already seen tokens by this (1: off).
    pub repeat_penalty: f32,
    /// The seed of the draws.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks the ranges of every parameter; the message names the offending one.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(format!(
                "repeat penalty must be > 0, got {}",
                self.repeat_penalty
            ));
        }
        // GPUs may flush subnormal floats to zero (a temperature or penalty of 0 there), so
        // the CPU and the GPU would sample differently from the same value.
        for (what, value, zero) in [
            ("temperature", self.temperature, "0 or "),
            ("repeat penalty", self.repeat_penalty, ""),
        ] {
            if value != 0.0 && !value.is_normal() {
                return Err(format!(
                    "{what} {value:e} is subnormal; give {zero}at least {:e} (f32's smallest \
                     normal)",
                    f32::MIN_POSITIVE
                ));
            }
        }
        Ok(())
    }
}

/// PCG's output hash of a u32 (O'Neill), a good cheap mixer that WGSL can run too.
pub fn pcg_hash(input: u32) -> u32 {
    let state = input.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// The uniform draw in [0, 1) for step `step` of a sequence seeded with `seed` (24 bits).
pub fn uniform(seed: u64, step: u64) -> f32 {
    let seed32 = (seed as u32) ^ ((seed >> 32) as u32);
    let step32 = (step as u32) ^ ((step >> 32) as u32);
    let h = pcg_hash(pcg_hash(seed32) ^ pcg_hash(step32.wrapping_add(0x9e37_79b9)));
    (h >> 8) as f32 / (1u32 << 24) as f32
}

/// Applies the repetition penalty in place to the logits of every token in `seen`.
pub fn apply_repeat_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    Sampler::default().apply_repeat_penalty(logits, seen, penalty);
}

/// The sampler's working buffers, kept between calls so that sampling a token allocates
/// nothing once they have grown to the vocabulary ([`sample`] and [`apply_repeat_penalty`] are
/// this with fresh buffers: one procedure, the same results).
#[derive(Clone, Debug, Default)]
pub struct Sampler {
    done: Vec<bool>,
    weights: Vec<f64>,
    sorted: Vec<f64>,
}

impl Sampler {
    /// [`apply_repeat_penalty`] with this sampler's buffer.
    pub fn apply_repeat_penalty(&mut self, logits: &mut [f32], seen: &[u32], penalty: f32) {
        if penalty == 1.0 {
            return;
        }
        self.done.clear();
        self.done.resize(logits.len(), false);
        for &t in seen {
            let t = t as usize;
            if let (Some(l), Some(d)) = (logits.get_mut(t), self.done.get_mut(t)) {
                if !*d {
                    // Clamped to the finite range, as the GPU kernel does: a tiny penalty
                    // overflows a logit to infinity, and infinity − max would be NaN.
                    let p = if *l > 0.0 { *l / penalty } else { *l * penalty };
                    *l = p.clamp(-f32::MAX, f32::MAX);
                    *d = true;
                }
            }
        }
    }

    /// [`sample`] with this sampler's buffers.
    pub fn sample(&mut self, logits: &[f32], params: &SamplingParams, step: u64) -> u32 {
        if params.temperature == 0.0 || logits.len() <= 1 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let inv_t = 1.0 / params.temperature as f64;
        // Unnormalised probabilities, in f64 so that the threshold comparisons below are exact
        // functions of the logits.
        let weights = &mut self.weights;
        weights.clear();
        weights.extend(logits.iter().map(|&l| ((l - max) as f64 * inv_t).exp()));

        // The candidates are decided on d = l − max itself (exact, as the GPU kernel decides
        // them), not on the weights: where exp(d / T) saturates (T = 1e20 makes every weight
        // 1.0), weights tie that d does not, and the two sets would differ.
        let sorted = &mut self.sorted;
        sorted.clear();
        sorted.extend(logits.iter().map(|&l| (l - max) as f64));
        // Values equal under total_cmp are bit-identical: an unstable sort orders them the same.
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let weight = |d: f64| (d * inv_t).exp();
        let mut threshold = f64::NEG_INFINITY;
        if params.top_k < sorted.len() {
            if let Some(&kth) = params.top_k.checked_sub(1).and_then(|k| sorted.get(k)) {
                threshold = kth;
            }
        }
        if params.top_p < 1.0 {
            let kept = || sorted.iter().copied().filter(|&d| d >= threshold);
            let total: f64 = kept().map(weight).sum();
            let mut cumulative = 0.0;
            let mut raised = threshold;
            for d in kept() {
                cumulative += weight(d);
                if cumulative >= params.top_p as f64 * total {
                    raised = threshold.max(d);
                    break;
                }
            }
            threshold = raised;
        }
        let candidate = |l: f32| (l - max) as f64 >= threshold;
        let total: f64 = logits
            .iter()
            .zip(weights.iter())
            .filter(|(&l, _)| candidate(l))
            .map(|(_, &w)| w)
            .sum();
        let target = uniform(params.seed, step) as f64 * total;
        let mut cumulative = 0.0;
        let mut last = 0;
        for (i, (&l, &w)) in logits.iter().zip(weights.iter()).enumerate() {
            if candidate(l) {
                cumulative += w;
                last = i;
                if cumulative > target {
                    return i as u32;
                }
            }
        }
        last as u32
    }
}

/// Index of the largest logit; the lowest id wins ties (and 0 for an empty slice).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0usize, logits.first().copied().unwrap_or(0.0));
    for (i, &l) in logits.iter().enumerate() {
        if l > best.1 {
            best = (i, l);
        }
    }
    best.0 as u32
}

/// Picks the token for draw number `step` from one row of logits (the penalty, if any, must
/// already be applied).
pub fn sample(logits: &[f32], params: &SamplingParams, step: u64) -> u32 {
    Sampler::default().sample(logits, params, step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(
            sample(&[0.1, 2.0, 2.0, -1.0], &SamplingParams::greedy(), 0),
            1
        );
    }

    #[test]
    fn uniform_is_spread_and_reproducible() {
        let draws: Vec<f32> = (0..10_000).map(|s| uniform(42, s)).collect();
        assert!(draws.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = draws.iter().map(|&u| u as f64).sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        assert_eq!(uniform(42, 7), uniform(42, 7));
        assert_ne!(uniform(42, 7), uniform(43, 7));
    }

    #[test]
    fn top_k_one_is_greedy_and_frequencies_follow_probabilities() {
        let logits = [1.0f32, 2.0, 0.5, 3.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            repeat_penalty: 1.0,
            seed: 1,
        };
        assert!((0..100).all(|s| sample(&logits, &p, s) == 3));

        let p = SamplingParams { top_k: 0, ..p };
        let mut counts = [0usize; 4];
        let n = 40_000;
        for s in 0..n {
            counts[sample(&logits, &p, s) as usize] += 1;
        }
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let want = (logits[i] as f64).exp() / z;
            assert!((c as f64 / n as f64 - want).abs() < 0.01, "token {i}: {c}");
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_sufficient_set() {
        // Probabilities ≈ 0.64, 0.24, 0.09, 0.03: p = 0.8 keeps the first two.
        let logits = [3.0f32, 2.0, 1.0, -0.1];
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.8,
            repeat_penalty: 1.0,
            seed: 9,
        };
        let picked: std::collections::BTreeSet<u32> =
            (0..2000).map(|s| sample(&logits, &p, s)).collect();
        assert_eq!(picked.into_iter().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn repeat_penalty_lowers_seen_tokens_once() {
        let mut logits = [2.0f32, -2.0, 1.0];
        apply_repeat_penalty(&mut logits, &[0, 1, 0], 2.0);
        assert_eq!(logits, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn validation_names_the_parameter() {
        let bad = SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        };
        assert!(bad.validate().unwrap_err().contains("top-p"));
        let bad = SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        };
        assert!(bad.validate().unwrap_err().contains("temperature"));
    }
}
