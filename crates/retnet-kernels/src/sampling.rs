//! Sampling the next token on the GPU: repetition penalty, greedy, temperature, top-k, top-p and
//! the seeded draw of `retnet_model::sampling`, in one dispatch of one workgroup.
//!
//! Everything that changes from one decode step to the next lives in GPU buffers, so the same
//! [`sample`] dispatch (same parameters) is recorded at every step and no value goes through the
//! CPU between steps:
//!
//! | binding | buffer | access | contents |
//! |---|---|---|---|
//! | 1 | `logits` | read | the row `[vocab]` at element `logits_offset` |
//! | 2 | `state` | read-write | [`state_len`]`(window)` u32: draw index, tokens pushed, 2 reserved, the history ring |
//! | 3 | `next_token` | read-write | `[1]`: the chosen id (bind it as the next step's embedding `ids`) |
//! | 4 | `generated` | read-write | `[capacity]`: draw *n* writes its id at `n % capacity` |
//!
//! Each dispatch reads the draw index *n* from `state[0]`, draws with `uniform(seed, n)`, writes
//! the id, pushes it into the history ring and stores *n* + 1 (a u32: draws past 2³² are not
//! supported). Write `state` with [`initial_state`] from a session's draw counter and recent
//! tokens (prompt included, as `SessionBook::history` keeps them) when a generation starts and
//! after each prefill, which adds tokens to the history; read it back with [`state_draws`] and
//! [`state_history`] to save a session (`next_token[0]` is then its pending token).
//!
//! A decode loop, per step (buffers created once; the same parameters every step):
//!
//! ```ignore
//! let mut step = device.sequence("decode");
//! // The embedding reads the previous step's choice: `ids: &next_token`.
//! step.dispatch(embedding::gather(format, EmbeddingParams { tokens: 1, .. }, buffers))?;
//! // … the layers and the head, into `logits` …
//! let buffers = SampleBuffers { logits: &logits, state: &state, next_token: &next_token,
//!                               generated: &generated };
//! step.dispatch(sampling::sample(params, buffers))?;
//! step.submit()?;
//! // every `capacity` steps (or at the end): device.read_u32(&generated, 0, capacity)
//! ```
//!
//! The choice equals the CPU's `sample()` exactly in the greedy case and for the candidate set
//! (top-k, top-p thresholds are found on exact order keys of `l − max` by nine-way bisection,
//! eight pivots counted or summed per pass over the row); the weights are f32 `exp` rounded to
//! 31-bit fixed point and summed exactly in 64-bit integers, so a draw can differ from the CPU's
//! f64 only where its target falls within that rounding of a boundary.
//!
//! Cost: one workgroup of 256 invocations makes at most about 24 passes over the row (1 for
//! greedy; + ≤ 10 for top-k, + ≤ 11 for top-p, + 1–2 for the draw). On llvmpipe, which stops a
//! shader after 65535 loop iterations in all, that bounds the vocabulary to about 690k.

use crate::{Bound, Dim, Dispatch, Features, Kernel, OverrideConstant};

/// Words of `state` before the history ring.
pub const STATE_HEADER: usize = 4;

/// The repetition-penalty window of the CPU sessions (`REPEAT_WINDOW`).
pub const DEFAULT_HISTORY_WINDOW: u32 = 64;

/// The largest history window (the size of the shader's sorted history table).
pub const MAX_HISTORY_WINDOW: u32 = 256;

/// Parameters of [`sample`]; constant over a generation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleParams {
    /// Vocabulary size (row length).
    pub vocab: u32,
    /// Element offset of the row in the `logits` buffer (0 for one row).
    pub logits_offset: u32,
    /// Softmax temperature; 0 picks the largest logit (lowest id among equals).
    pub temperature: f32,
    /// Keep the k most likely tokens (0: no limit).
    pub top_k: u32,
    /// Keep the most likely tokens reaching this share of the probability (1: no limit).
    pub top_p: f32,
    /// Divide positive (multiply negative) logits of tokens in the history by this (1: off).
    pub repeat_penalty: f32,
    /// Seed of the draws (folded to u32 as `uniform` does).
    pub seed: u64,
    /// Entries of the history ring, at most [`MAX_HISTORY_WINDOW`] (0: no history kept).
    pub history_window: u32,
    /// Length of `generated` (0: not written).
    pub capacity: u32,
}

param_block! {
    /// The WGSL parameter block of [`sample`].
    pub(crate) struct SampleBlock = "SampleParams" {
        vocab: u32,
        logits_offset: u32,
        temperature: f32,
        top_k: u32,
        top_p: f32,
        repeat_penalty: f32,
        seed_lo: u32,
        seed_hi: u32,
        history_window: u32,
        capacity: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

buffers! {
    /// Buffers of [`sample`] (see the module's table).
    pub struct SampleBuffers, bindings BINDINGS {
        /// The logits row `[vocab]` at `logits_offset`.
        1 logits: ReadOnly,
        /// [`state_len`] u32: draw index, tokens pushed, the history ring.
        2 state: ReadWrite,
        /// `[1]` u32: the chosen id.
        3 next_token: ReadWrite,
        /// `[capacity]` u32: draw n at `n % capacity`.
        4 generated: ReadWrite,
    }
}

/// The sampling kernel.
pub static SAMPLE: Kernel = Kernel {
    name: "sampling/sample",
    source: shader!("sampling.wgsl"),
    entry_point: "sample_token",
    workgroup_size: [
        Dim::Constant("WORKGROUP_SIZE"),
        Dim::Fixed(1),
        Dim::Fixed(1),
    ],
    constants: &[OverrideConstant {
        name: "WORKGROUP_SIZE",
        default: 256,
    }],
    bindings: BINDINGS,
    params: SampleBlock::STRUCT,
    requires: Features::NONE,
};

/// All variants.
pub static KERNELS: &[&Kernel] = &[&SAMPLE];

/// One draw. Buffers: `logits`, `state` ([`state_len`] words), `next_token` (1 word),
/// `generated` (`capacity` words). A window over [`MAX_HISTORY_WINDOW`] is clamped.
pub fn sample<'b, B>(params: SampleParams, buffers: SampleBuffers<'b, B>) -> Bound<'b, B> {
    sample_rows(params, 1, buffers)
}

/// One draw for each of `rows` rows of a batch, with the same parameters, one workgroup each:
/// row b reads its logits at `logits_offset + b·vocab` and its own [`state_len`] words from
/// `b·state_len`, and writes `next_token[b]` and `generated[b·capacity + draw % capacity]`.
pub fn sample_rows<'b, B>(
    params: SampleParams,
    rows: u32,
    buffers: SampleBuffers<'b, B>,
) -> Bound<'b, B> {
    let block = SampleBlock {
        vocab: params.vocab,
        logits_offset: params.logits_offset,
        temperature: params.temperature,
        top_k: params.top_k,
        top_p: params.top_p,
        repeat_penalty: params.repeat_penalty,
        seed_lo: params.seed as u32,
        seed_hi: (params.seed >> 32) as u32,
        history_window: params.history_window.min(MAX_HISTORY_WINDOW),
        capacity: params.capacity,
        ..Default::default()
    };
    Bound {
        dispatch: Dispatch {
            kernel: &SAMPLE,
            constants: SAMPLE.default_constants(),
            params: block.words(),
            workgroups: [rows.max(1), 1, 1],
        },
        buffers: buffers.in_order(),
    }
}

/// Length in u32 of the `state` buffer for a history window.
pub fn state_len(window: u32) -> usize {
    STATE_HEADER + window.min(MAX_HISTORY_WINDOW) as usize
}

/// The `state` words for the next draw index `draws` and the recent tokens `history` (oldest
/// first; only the last `window` are kept, as the CPU session keeps them).
pub fn initial_state(window: u32, draws: u32, history: &[u32]) -> Vec<u32> {
    let window = window.min(MAX_HISTORY_WINDOW) as usize;
    let mut words = vec![0u32; STATE_HEADER + window];
    if let Some(w) = words.first_mut() {
        *w = draws;
    }
    if window > 0 {
        let kept = history
            .get(history.len().saturating_sub(window)..)
            .unwrap_or_default();
        if let Some(w) = words.get_mut(1) {
            *w = kept.len() as u32;
        }
        for (w, &token) in words.iter_mut().skip(STATE_HEADER).zip(kept) {
            *w = token;
        }
    }
    words
}

/// The next draw index in a `state` read back from the GPU.
pub fn state_draws(state: &[u32]) -> u32 {
    state.first().copied().unwrap_or(0)
}

/// The history tokens in a `state` read back from the GPU, oldest first.
pub fn state_history(state: &[u32], window: u32) -> Vec<u32> {
    let window = window.min(MAX_HISTORY_WINDOW) as usize;
    let (Some(&pushed), Some(ring)) =
        (state.get(1), state.get(STATE_HEADER..STATE_HEADER + window))
    else {
        return Vec::new();
    };
    let pushed = pushed as usize;
    if window == 0 {
        return Vec::new();
    }
    if pushed < window {
        return ring.iter().take(pushed).copied().collect();
    }
    let head = pushed % window;
    ring.iter()
        .cycle()
        .skip(head)
        .take(window)
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_keeps_the_last_window() {
        let history: Vec<u32> = (0..100).collect();
        let state = initial_state(64, 7, &history);
        assert_eq!(state.len(), state_len(64));
        assert_eq!(state_draws(&state), 7);
        assert_eq!(state_history(&state, 64), history[36..].to_vec());
        let short = initial_state(64, 0, &[5, 6]);
        assert_eq!(state_history(&short, 64), vec![5, 6]);
        assert!(state_history(&initial_state(0, 3, &[1, 2]), 0).is_empty());
    }

    #[test]
    fn a_ring_that_wrapped_reads_oldest_first() {
        // Window 4 after pushing 1..=6: the ring holds [5, 6, 3, 4] and pushed = 6 (≥ window).
        let state = [0, 6, 0, 0, 5, 6, 3, 4];
        assert_eq!(state_history(&state, 4), vec![3, 4, 5, 6]);
    }
}
