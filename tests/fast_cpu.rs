//! The fast CPU engine against the oracle (`CpuModel`, f64 accumulation) and the peers, on every
//! committed fixture and on the shipped model; its own invariants (prefill = steps, bit for
//! bit; independent of the thread count); its sampler against the reference `Generator` path.

mod common;

use common::*;
use retnet::model::{CpuEngine, CpuSession, Engine, FastCpuModel, Generator, SamplingParams};
use retnet::{CpuModel, RetentionForm};

/// The fast engine accumulates in f32 (the oracle in f64) and keeps activations in f32: sums of
/// at most a few thousand terms, each rounding ~6e-8 relative, through a handful of layers.
/// Measured on the 7 fixtures: 1.9e-7 – 1.04e-6 of the oracle, 2.6e-7 – 1.29e-6 of the peers. 1e-5 leaves room for longer
/// rows on unseen checkpoints while still catching any modelling error (the ablations of
/// tools/fixtures/reference_f64.py are all above 1e-4).
const ORACLE_TOLERANCE: f64 = 1e-5;
/// Against the peers: the parity bar of tests/parity.rs (measured worst 1.29e-6, ×~8).
const PEER_TOLERANCE: f64 = 1e-5;

#[test]
fn every_fixture_matches_the_oracle_and_the_peer() {
    let mut failures = Vec::new();
    for dir in retention_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let model = CpuModel::load(&dir).unwrap();
        let fast = FastCpuModel::new(&model).unwrap();
        let tokens = fixture_tokens(&dir);
        let (_, peer) = read_logits(&dir.join("logits.safetensors"));
        let oracle = model.logits(&tokens, RetentionForm::Recurrent).unwrap();
        let got = fast.logits(&tokens).unwrap();
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{name}: non-finite logits"
        );
        let vs_oracle = rel_max_err(&got, &oracle);
        let vs_peer = rel_max_err(&got, &peer);
        println!("{name:32} vs oracle {vs_oracle:.2e}, vs peer {vs_peer:.2e}");
        if !(vs_oracle <= ORACLE_TOLERANCE && vs_peer <= PEER_TOLERANCE) {
            failures.push(format!(
                "{name}: vs oracle {vs_oracle:.2e}, vs peer {vs_peer:.2e}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn prefill_then_steps_is_bit_identical_to_steps_and_to_one_prefill() {
    for dir in retention_fixtures() {
        let model = CpuModel::load(&dir).unwrap();
        let fast = FastCpuModel::new(&model).unwrap();
        let tokens = fixture_tokens(&dir);
        let whole = fast.logits(&tokens).unwrap();

        let vocab = model.config().vocab_size;
        let mut steps = fast.session();
        let mut stepped = Vec::new();
        for &t in &tokens {
            stepped.extend(steps.forward(&[t], true).unwrap());
        }
        assert_eq!(bits(&stepped), bits(&whole), "{}", dir.display());

        let split = tokens.len() / 3;
        let mut mixed = fast.session();
        let mut got = mixed.forward(&tokens[..split], true).unwrap();
        got.extend(mixed.forward(&tokens[split..], false).unwrap());
        assert_eq!(bits(&got[..split * vocab]), bits(&whole[..split * vocab]));
        assert_eq!(
            bits(&got[split * vocab..]),
            bits(&whole[whole.len() - vocab..])
        );
        assert_eq!(mixed.state(), steps.state(), "same state either way");
        assert_eq!(mixed.position(), tokens.len());
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let dir = fixture("torchscale_24heads_syncdoth");
    let model = CpuModel::load(&dir).unwrap();
    let fast = FastCpuModel::new(&model).unwrap();
    let tokens = fixture_tokens(&dir);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| fast.logits(&tokens).unwrap())
    };
    let one = run(1);
    assert_eq!(bits(&run(3)), bits(&one));
    assert_eq!(bits(&run(2)), bits(&one));
}

/// The shipped model (f16 weights, packed as f16): long prefill spans and a long decode.
#[test]
fn the_shipped_model_matches_the_oracle() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/retnet-shakespeare");
    let model = CpuModel::load(&dir).unwrap();
    let fast = FastCpuModel::new(&model).unwrap();
    // Kept in f16 (two bytes per weight): the packed matrices are about half the f32 size.
    let params: usize = model
        .weights()
        .layers
        .iter()
        .map(|l| {
            [
                &l.q_proj,
                &l.k_proj,
                &l.v_proj,
                &l.g_proj,
                &l.out_proj,
                &l.ffn_act,
                &l.ffn_lin,
                &l.ffn_down,
            ]
            .iter()
            .map(|m| m.data.len())
            .sum::<usize>()
        })
        .sum::<usize>()
        + model.weights().head().data.len();
    assert_eq!(
        fast.weight_bytes(),
        2 * params,
        "f16 storage, no padding for these widths"
    );
    let text = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/train/val_sample.txt"),
    )
    .unwrap();
    let tokens: Vec<u32> = text.iter().take(600).map(|&b| u32::from(b)).collect();
    let oracle = model
        .logits(&tokens, RetentionForm::Chunkwise { chunk_size: 64 })
        .unwrap();
    let got = fast.logits(&tokens).unwrap(); // spans of 256: 256 + 256 + 88
    let err = rel_max_err(&got, &oracle);
    println!("shipped model, 600 tokens: vs oracle {err:.2e}");
    assert!(err <= ORACLE_TOLERANCE, "{err:.2e}");
}

/// Generation through the fast engine (sampling inside the engine, buffers reused) picks
/// exactly the tokens of the host path (`Generator::next_token`, the reference sampler) on the
/// same engine, for greedy and seeded sampling with penalties; and greedy text equals the
/// oracle's on this fixture.
#[test]
fn generation_matches_the_reference_session() {
    let dir = fixture("torchscale_24heads_syncdoth");
    let model = CpuModel::load(&dir).unwrap();
    let fast = FastCpuModel::new(&model).unwrap();
    let prompt: Vec<u32> = b"To be or not".iter().map(|&b| u32::from(b)).collect();
    for params in [
        SamplingParams::greedy(),
        SamplingParams {
            temperature: 0.9,
            top_k: 20,
            top_p: 0.9,
            repeat_penalty: 1.3,
            seed: 7,
        },
    ] {
        let mut reference = Generator::new(fast.session());
        reference.prefill(&prompt).now().unwrap();
        let mut want = Vec::new();
        for _ in 0..40 {
            want.push(reference.next_token(&params).now().unwrap());
        }
        let mut session = Generator::new(fast.session());
        session.prefill(&prompt).now().unwrap();
        let mut got = Vec::new();
        let n = session
            .generate(&params, 40, &mut |t| {
                got.extend_from_slice(t);
                true
            })
            .now()
            .unwrap();
        assert_eq!(n, 40);
        assert_eq!(got, want, "{params:?}");
        assert_eq!(session.book(), reference.book());
        assert_eq!(session.position(), reference.position());
    }
    let mut oracle = CpuSession::new(CpuEngine::new(&model));
    oracle.prefill(&prompt).now().unwrap();
    let mut fast_session = Generator::new(fast.session());
    fast_session.prefill(&prompt).now().unwrap();
    for step in 0..24 {
        let greedy = SamplingParams::greedy();
        let want = oracle.next_token(&greedy).now().unwrap();
        assert_eq!(
            fast_session.next_token(&greedy).now().unwrap(),
            want,
            "step {step}"
        );
    }
}

/// Stopping early leaves the last token pending, and a saved session resumes exactly.
#[test]
fn a_stopped_and_resumed_generation_continues_exactly() {
    let dir = fixture("torchscale_24heads_syncdoth");
    let model = CpuModel::load(&dir).unwrap();
    let fast = FastCpuModel::new(&model).unwrap();
    let params = SamplingParams {
        seed: 3,
        ..SamplingParams::default()
    };
    let prompt = [10u32, 20, 30];
    let mut whole = Generator::new(fast.session());
    whole.prefill(&prompt).now().unwrap();
    let mut all = Vec::new();
    whole
        .generate(&params, 30, &mut |t| {
            all.extend_from_slice(t);
            true
        })
        .now()
        .unwrap();

    let mut first = Generator::new(fast.session());
    first.prefill(&prompt).now().unwrap();
    let mut part = Vec::new();
    let n = first
        .generate(&params, 30, &mut |t| {
            part.extend_from_slice(t);
            part.len() < 12
        })
        .now()
        .unwrap();
    assert_eq!(n, 12);
    let bytes = first.save_bytes().now().unwrap();
    let mut resumed = Generator::load_bytes(fast.session(), "state", &bytes).unwrap();
    resumed
        .generate(&params, 18, &mut |t| {
            part.extend_from_slice(t);
            true
        })
        .now()
        .unwrap();
    assert_eq!(part, all);
}

/// Bad input is refused with the reference's errors, and a state of another shape too.
#[test]
fn bad_tokens_and_states_are_refused() {
    let dir = fixture("torchscale_24heads_syncdoth");
    let model = CpuModel::load(&dir).unwrap();
    let fast = FastCpuModel::new(&model).unwrap();
    let mut engine = fast.session();
    let vocab = model.config().vocab_size as u32;
    assert!(engine.forward(&[], false).is_err());
    let e = engine.forward(&[1, vocab], false).unwrap_err();
    assert!(e.to_string().contains(&vocab.to_string()), "{e}");
    assert_eq!(engine.position(), 0, "nothing consumed");
    assert!(engine.import_state(3, &[vec![0.0; 5]]).is_err());
}

/// Drives a future that never waits (the CPU engine's are all ready at once).
trait Now: std::future::Future + Sized {
    fn now(self) -> Self::Output {
        pollster::block_on(self)
    }
}
impl<F: std::future::Future> Now for F {}

#[test]
fn hybrid_checkpoints_are_refused_not_miscomputed() {
    let model = CpuModel::load(&common::fixture("fla_hybrid_full")).unwrap();
    let Err(err) = FastCpuModel::new(&model) else {
        panic!("a hybrid config is refused");
    };
    assert!(err.to_string().contains("attn"), "{err}");
}
