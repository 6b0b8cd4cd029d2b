//! The GPU sampling kernel (`retnet_kernels::sampling`) against the CPU sampler
//! (`retnet_model::sampling`): greedy exactly, the seeded draws on ≥ 99% of steps (the agreement
//! is printed), the per-step state kept on the GPU (draw counter, history ring, outputs), the
//! repetition penalty, reproducibility, and that recording the dispatch again each step creates
//! no GPU object.
//!
//! Every sequence below records one dispatch per step with the same parameters (apart from the
//! row offset when a test gives each step its own logits), as a decode loop does.

// clippy.toml allows unwrap in tests; the helpers below are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use retnet_model::sampling::{apply_repeat_penalty, argmax, sample, SamplingParams};
use retnet_model::session::REPEAT_WINDOW;
use retnet_runtime::kernels::sampling::{
    self as gpu, initial_state, state_draws, state_history, state_len, SampleParams,
    DEFAULT_HISTORY_WINDOW,
};
use retnet_runtime::{Device, GpuBuffer};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

const VOCABS: [usize; 5] = [1, 7, 256, 32000, 50257];

/// Runs a future to completion on this thread (the runtime's read-back futures wake themselves).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        std::thread::park();
    }
}

use retnet_testkit::gpu::device;

/// The test kit's generator, with this file's shapes of logits.
struct Rng(retnet_testkit::Rng);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(retnet_testkit::Rng::new(seed))
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        self.0.unit()
    }

    fn below(&mut self, n: usize) -> usize {
        self.0.below(n as u64) as usize
    }

    /// A row of logits of one of several shapes: uniform of various spreads, roughly Gaussian,
    /// quantised (many exact ties), or peaked like a trained model's.
    fn logits(&mut self, vocab: usize, shape: usize) -> Vec<f32> {
        (0..vocab)
            .map(|_| match shape % 5 {
                0 => self.unit() * 2.0 - 1.0,
                1 => (self.unit() * 2.0 - 1.0) * 6.0,
                2 => (0..4).map(|_| self.unit()).sum::<f32>() * 3.0 - 6.0,
                3 => ((self.unit() * 2.0 - 1.0) * 8.0).round() * 0.5,
                _ => -12.0 * self.unit().powi(3) + 4.0 * self.unit().powi(40),
            })
            .collect()
    }
}

/// A sampler on the GPU: its state, output buffers and parameters.
struct Sampler<'d> {
    device: &'d Device,
    params: SampleParams,
    state: GpuBuffer,
    next: GpuBuffer,
    generated: GpuBuffer,
}

impl<'d> Sampler<'d> {
    fn new(device: &'d Device, params: SampleParams, draws: u32, history: &[u32]) -> Self {
        let words = initial_state(params.history_window, draws, history);
        Sampler {
            device,
            params,
            state: device.upload_u32("sampler state", &words).unwrap(),
            next: device.create_storage_f32("next token", 1).unwrap(),
            generated: device
                .create_storage_f32("generated", params.capacity.max(1) as usize)
                .unwrap(),
        }
    }

    /// One sequence with one draw per entry of `offsets` (the row of each step in `logits`).
    fn run(&self, logits: &GpuBuffer, offsets: &[u32]) {
        let mut sequence = self.device.sequence("sampling test");
        for &offset in offsets {
            let params = SampleParams {
                logits_offset: offset,
                ..self.params
            };
            let buffers = gpu::SampleBuffers {
                logits,
                state: &self.state,
                next_token: &self.next,
                generated: &self.generated,
            };
            sequence.dispatch(gpu::sample(params, buffers)).unwrap();
        }
        sequence.submit().unwrap();
    }

    fn generated(&self) -> Vec<u32> {
        let n = self.params.capacity as usize;
        block_on(self.device.read_u32(&self.generated, 0, n)).unwrap()
    }

    fn state(&self) -> Vec<u32> {
        let n = state_len(self.params.history_window);
        block_on(self.device.read_u32(&self.state, 0, n)).unwrap()
    }

    fn next_token(&self) -> u32 {
        block_on(self.device.read_u32(&self.next, 0, 1)).unwrap()[0]
    }
}

fn cpu_params(p: &SampleParams) -> SamplingParams {
    SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k as usize,
        top_p: p.top_p,
        repeat_penalty: p.repeat_penalty,
        seed: p.seed,
    }
}

/// What the CPU picks for the draw `step` from `row`, with `history` seen.
fn cpu_choice(row: &[f32], params: &SamplingParams, history: &[u32], step: u64) -> u32 {
    let mut logits = row.to_vec();
    apply_repeat_penalty(&mut logits, history, params.repeat_penalty);
    sample(&logits, params, step)
}

fn remember(history: &mut Vec<u32>, token: u32) {
    history.push(token);
    let excess = history.len().saturating_sub(REPEAT_WINDOW);
    history.drain(..excess);
}

/// Runs `steps` draws on the GPU (step s uses row `rows_of(s)` of `rows`) from the given state and
/// replays them on the CPU with the GPU's own history. Returns (agreeing draws, draws, tokens).
/// `start` is the initial state: the first draw index and the history.
fn compare(
    device: &Device,
    rows: &[Vec<f32>],
    row_of: impl Fn(usize) -> usize,
    params: SampleParams,
    (first_draw, history): (u32, &[u32]),
    steps: usize,
) -> (usize, usize, Vec<u32>) {
    let vocab = params.vocab as usize;
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let logits = device.upload_f32("logits", &flat).unwrap();
    let params = SampleParams {
        capacity: steps as u32,
        ..params
    };
    let sampler = Sampler::new(device, params, first_draw, history);
    let offsets: Vec<u32> = (0..steps).map(|s| (row_of(s) * vocab) as u32).collect();
    sampler.run(&logits, &offsets);
    // Every dispatch ran to its end (llvmpipe cuts a shader short after 65535 loop iterations).
    assert_eq!(state_draws(&sampler.state()), first_draw + steps as u32);
    // generated[n % capacity] holds draw n.
    let ring = sampler.generated();
    let tokens: Vec<u32> = (0..steps)
        .map(|s| ring[(first_draw as usize + s) % steps])
        .collect();
    let cpu = cpu_params(&params);
    let mut seen = history.to_vec();
    let mut agree = 0;
    for (s, &token) in tokens.iter().enumerate() {
        let want = cpu_choice(
            &rows[row_of(s)],
            &cpu,
            &seen,
            u64::from(first_draw) + s as u64,
        );
        if want == token {
            agree += 1;
        }
        remember(&mut seen, token);
    }
    (agree, steps, tokens)
}

fn params(vocab: usize) -> SampleParams {
    SampleParams {
        vocab: vocab as u32,
        logits_offset: 0,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        repeat_penalty: 1.0,
        seed: 0,
        history_window: DEFAULT_HISTORY_WINDOW,
        capacity: 1,
    }
}

#[test]
fn the_history_window_is_the_cpu_sessions() {
    assert_eq!(DEFAULT_HISTORY_WINDOW as usize, REPEAT_WINDOW);
}

#[test]
fn greedy_equals_argmax_exactly_including_ties() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(1);
    for vocab in VOCABS {
        let count = if vocab > 10_000 { 24 } else { 96 };
        let mut rows: Vec<Vec<f32>> = (0..count).map(|r| rng.logits(vocab, r)).collect();
        // All equal (id 0 wins), maximum last, maximum tied first and last, -inf around.
        rows.push(vec![0.5; vocab]);
        let mut last = vec![-1.0; vocab];
        last[vocab - 1] = 1.0;
        rows.push(last);
        let mut both = vec![f32::NEG_INFINITY; vocab];
        both[0] = 3.0;
        both[vocab - 1] = 3.0;
        rows.push(both);
        for penalty in [1.0, 1.3] {
            let p = SampleParams {
                repeat_penalty: penalty,
                ..params(vocab)
            };
            let history: Vec<u32> = (0..20).map(|_| rng.below(vocab) as u32).collect();
            let (agree, n, tokens) = compare(device, &rows, |s| s, p, (0, &history), rows.len());
            assert_eq!(agree, n, "vocab {vocab}, penalty {penalty}");
            if penalty == 1.0 {
                for (row, &token) in rows.iter().zip(&tokens) {
                    assert_eq!(token, argmax(row), "vocab {vocab}");
                }
            }
        }
    }
}

#[test]
fn seeded_draws_agree_with_the_cpu() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(2);
    // (temperature, top-k, top-p, penalty)
    let settings: [(f32, u32, f32, f32); 7] = [
        (1.0, 0, 1.0, 1.0),
        (0.8, 40, 0.95, 1.1),
        (1.3, 0, 0.9, 1.0),
        (0.7, 5, 1.0, 1.5),
        (1.0, 1000, 0.5, 1.2),
        (0.5, 3, 0.99, 1.0),
        (2.0, 0, 0.3, 1.3),
    ];
    let (mut agree_all, mut all) = (0, 0);
    for vocab in VOCABS {
        let (rows_per_setting, draws_per_row) = match vocab {
            1 => (4, 4),
            7 | 256 => (40, 4),
            _ => (12, 4),
        };
        for (i, &(temperature, top_k, top_p, penalty)) in settings.iter().enumerate() {
            let rows: Vec<Vec<f32>> = (0..rows_per_setting)
                .map(|r| rng.logits(vocab, r + i))
                .collect();
            let p = SampleParams {
                temperature,
                top_k,
                top_p,
                repeat_penalty: penalty,
                seed: rng.next_u64(),
                ..params(vocab)
            };
            let history: Vec<u32> = (0..10).map(|_| rng.below(vocab) as u32).collect();
            let first = rng.below(1000) as u32;
            let steps = rows.len() * draws_per_row;
            let (agree, n, tokens) = compare(
                device,
                &rows,
                |s| s / draws_per_row,
                p,
                (first, &history),
                steps,
            );
            assert!(tokens.iter().all(|&t| (t as usize) < vocab));
            eprintln!(
                "vocab {vocab:>5}, T {temperature}, top-k {top_k:>4}, top-p {top_p}, \
                 penalty {penalty}: {agree}/{n}"
            );
            agree_all += agree;
            all += n;
        }
    }
    let share = agree_all as f64 / all as f64;
    eprintln!(
        "GPU/CPU agreement: {agree_all}/{all} draws ({:.3}%)",
        100.0 * share
    );
    assert!(share >= 0.99, "{agree_all}/{all}");
}

#[test]
fn a_vocabulary_of_256k_works() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(7);
    let vocab = 262_144 + 3;
    let rows: Vec<Vec<f32>> = (0..4).map(|r| rng.logits(vocab, r + 1)).collect();
    for (temperature, top_k, top_p, penalty) in [
        (0.0, 0, 1.0, 1.3),
        (1.0, 0, 1.0, 1.0),
        (0.8, 40, 0.95, 1.1),
        (1.0, 5000, 0.9, 1.0),
    ] {
        let p = SampleParams {
            temperature,
            top_k,
            top_p,
            repeat_penalty: penalty,
            seed: 3,
            ..params(vocab)
        };
        let history: Vec<u32> = (0..64).map(|_| rng.below(vocab) as u32).collect();
        let (agree, n, _) = compare(device, &rows, |s| s / 2, p, (0, &history), 8);
        eprintln!("vocab {vocab}, T {temperature}, top-k {top_k}, top-p {top_p}: {agree}/{n}");
        assert!(agree >= n - 1, "{agree}/{n}");
    }
}

#[test]
fn top_k_and_top_p_keep_exactly_the_cpu_candidates() {
    // Many draws from one row with the candidates' union compared: a threshold off by one token
    // would show as a token the CPU never picks (or a missing one).
    let Some(device) = device() else { return };
    let mut rng = Rng::new(3);
    let vocab = 300;
    let row = rng.logits(vocab, 1);
    for (top_k, top_p) in [(7, 1.0), (0, 0.6), (20, 0.8), (1, 1.0)] {
        let p = SampleParams {
            temperature: 1.0,
            top_k,
            top_p,
            seed: 11,
            ..params(vocab)
        };
        let steps = 400;
        let (agree, n, tokens) = compare(
            device,
            std::slice::from_ref(&row),
            |_| 0,
            p,
            (0, &[]),
            steps,
        );
        assert!(
            agree * 100 >= n * 99,
            "top-k {top_k}, top-p {top_p}: {agree}/{n}"
        );
        let cpu = cpu_params(&p);
        let mut gpu_set: Vec<u32> = tokens.clone();
        gpu_set.sort_unstable();
        gpu_set.dedup();
        let mut cpu_set: Vec<u32> = (0..steps as u64).map(|s| sample(&row, &cpu, s)).collect();
        cpu_set.sort_unstable();
        cpu_set.dedup();
        assert_eq!(gpu_set, cpu_set, "top-k {top_k}, top-p {top_p}");
        if top_k == 1 {
            assert_eq!(gpu_set, vec![argmax(&row)]);
        }
    }
}

#[test]
fn the_draw_counter_history_and_outputs_advance_on_the_gpu() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(4);
    let vocab = 256;
    let row = rng.logits(vocab, 0);
    let logits = device.upload_f32("logits", &row).unwrap();
    let p = SampleParams {
        temperature: 1.0,
        top_k: 50,
        top_p: 0.9,
        repeat_penalty: 1.2,
        seed: 99,
        capacity: 8,
        ..params(vocab)
    };
    let prompt: Vec<u32> = (0..70).map(|_| rng.below(vocab) as u32).collect();
    let start = 5;
    let sampler = Sampler::new(device, p, start, &prompt);
    let mut cpu_history = prompt[prompt.len() - REPEAT_WINDOW..].to_vec();
    let mut tokens = Vec::new();
    // Twenty steps, each a sequence of its own as in a decode loop.
    for step in 0..20u32 {
        sampler.run(&logits, &[0]);
        let token = sampler.next_token();
        let want = cpu_choice(&row, &cpu_params(&p), &cpu_history, u64::from(start + step));
        assert_eq!(token, want, "step {step}");
        remember(&mut cpu_history, token);
        tokens.push(token);
        let state = sampler.state();
        assert_eq!(state_draws(&state), start + step + 1);
        assert_eq!(state_history(&state, p.history_window), cpu_history);
    }
    // generated[n % 8] holds draw n: the last eight draws (5 + 12 ..= 5 + 19).
    let generated = sampler.generated();
    for (i, &token) in tokens.iter().enumerate().skip(12) {
        assert_eq!(generated[(start as usize + i) % 8], token);
    }
}

#[test]
fn the_penalty_applies_once_to_tokens_in_the_history_only() {
    let Some(device) = device() else { return };
    let vocab = 50257;
    let mut row = vec![-1.0f32; vocab];
    row[5] = 2.0;
    row[2053] = 1.9; // 2053 ≡ 5 (mod 2048): shares the filter's bit with 5
    row[9] = 1.2;
    row[10] = -0.5;
    let logits = device.upload_f32("logits", &row).unwrap();
    let greedy = SampleParams {
        repeat_penalty: 2.0,
        capacity: 1,
        ..params(vocab)
    };
    let cases: [(&[u32], u32); 6] = [
        // 2053 seen, 5 not: 5 stays the largest.
        (&[2053], 5),
        // 5 seen three times: 2.0 / 2 = 1.0 once (not 0.25), so 2053 (1.9) wins.
        (&[5, 5, 5], 2053),
        // Both seen: 1.0 and 0.95, so 9 (1.2) wins.
        (&[5, 2053], 9),
        // Ids beyond the vocabulary are ignored.
        (&[60000, 5, 70000], 2053),
        // An empty history.
        (&[], 5),
        // All four seen: 1.0, 0.95, 0.6 and -1.0: 5 again.
        (&[10, 5, 2053, 9], 5),
    ];
    for (history, want) in cases {
        let sampler = Sampler::new(device, greedy, 0, history);
        sampler.run(&logits, &[0]);
        let token = sampler.next_token();
        assert_eq!(token, want, "history {history:?}");
        let cpu = cpu_choice(&row, &cpu_params(&greedy), history, 0);
        assert_eq!(token, cpu, "history {history:?}");
    }
    // The chosen token enters the history: greedy with a penalty alternates 5 and 2053.
    let sampler = Sampler::new(device, greedy, 0, &[]);
    let mut picked = Vec::new();
    for _ in 0..4 {
        sampler.run(&logits, &[0]);
        picked.push(sampler.next_token());
    }
    assert_eq!(picked, vec![5, 2053, 9, 5]);
    // Negative logits are multiplied: -0.5 · 2 = -1.0 falls below -0.9 (divided, it would rise).
    let mut negative = vec![-3.0f32; vocab];
    negative[10] = -0.5;
    negative[11] = -0.9;
    let negative_logits = device.upload_f32("negative", &negative).unwrap();
    for (history, want) in [(&[][..], 10), (&[10][..], 11)] {
        let sampler = Sampler::new(device, greedy, 0, history);
        sampler.run(&negative_logits, &[0]);
        assert_eq!(sampler.next_token(), want, "history {history:?}");
        assert_eq!(
            want,
            cpu_choice(&negative, &cpu_params(&greedy), history, 0)
        );
    }
    // Penalty 1 switches it off.
    let off = SampleParams {
        repeat_penalty: 1.0,
        ..greedy
    };
    let sampler = Sampler::new(device, off, 0, &[5, 5]);
    sampler.run(&logits, &[0]);
    assert_eq!(sampler.next_token(), 5);
}

#[test]
fn the_same_seed_gives_the_same_sequence() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(5);
    let vocab = 32000;
    let rows: Vec<Vec<f32>> = (0..4).map(|r| rng.logits(vocab, r)).collect();
    let p = SampleParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 0.95,
        repeat_penalty: 1.1,
        seed: 0x1234_5678_9abc_def0,
        ..params(vocab)
    };
    let run = |p: SampleParams| compare(device, &rows, |s| s % 4, p, (0, &[]), 24).2;
    let first = run(p);
    assert_eq!(first, run(p));
    let other = run(SampleParams { seed: 7, ..p });
    assert_ne!(first, other);
    // Only the folded seed matters, as on the CPU.
    let folded = (p.seed as u32 ^ (p.seed >> 32) as u32) as u64;
    assert_eq!(first, run(SampleParams { seed: folded, ..p }));
}

#[test]
fn one_token_vocabulary_always_gives_zero() {
    let Some(device) = device() else { return };
    let logits = device.upload_f32("logits", &[0.3]).unwrap();
    let p = SampleParams {
        temperature: 0.9,
        top_k: 5,
        top_p: 0.5,
        repeat_penalty: 1.5,
        capacity: 4,
        ..params(1)
    };
    let sampler = Sampler::new(device, p, 0, &[0, 3]);
    sampler.run(&logits, &[0, 0, 0, 0]);
    assert_eq!(sampler.generated(), vec![0; 4]);
    assert_eq!(state_draws(&sampler.state()), 4);
}

#[test]
fn recording_the_step_again_creates_no_gpu_object() {
    // A device of its own: the counters count every object of the device, and the other tests
    // run concurrently on the shared one.
    let Some(device) = retnet_testkit::gpu::new_device() else {
        return;
    };
    let device = &*device;
    let mut rng = Rng::new(6);
    let vocab = 256;
    let logits = device.upload_f32("logits", &rng.logits(vocab, 0)).unwrap();
    let p = SampleParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        capacity: 16,
        ..params(vocab)
    };
    let sampler = Sampler::new(device, p, 0, &[]);
    sampler.run(&logits, &[0]);
    let _ = sampler.next_token();
    let before = device.cache_stats();
    for _ in 0..5 {
        sampler.run(&logits, &[0]);
    }
    let _ = sampler.next_token();
    assert_eq!(device.cache_stats(), before);
    assert_eq!(state_draws(&sampler.state()), 6);
}
