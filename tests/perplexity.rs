//! The shipped model's perplexity on `tools/train/val_sample.txt`, pinned: the whole file as one
//! sequence from position 0 (bytes are tokens), mean NLL of byte i+1 given bytes 0..i — the
//! metric of `retnet perplexity` and of `tools/train/README.md`.

use std::path::Path;

use pollster::block_on;
use retnet::model::{mean_nll, FastCpuModel, WeightPrecision};
use retnet::CpuModel;

/// torchscale 0.3.0, float64, recurrent form (`tools/train/README.md`,
/// `val_sample_nats_per_byte`); its float32 rerun gave 1.356102.
const PEER_NATS: f64 = 1.356104;
/// What this runtime's CPU engine measures (f32 accumulation, f16 weights as stored).
const OURS_NATS: f64 = 1.356_103_8;
/// Against the peer: the two f32 computations (torchscale's and ours) differ from its float64
/// value by ~1e-6 nats; 1e-5 is ten times the larger.
const PEER_TOLERANCE: f64 = 1e-5;
/// Against our own pinned value: the engine is deterministic (bit-identical on every machine,
/// ARCHITECTURE.md), so only the pin's rounding to 8 digits (5e-8) is allowed, times 10.
const PIN_TOLERANCE: f64 = 5e-7;

#[test]
fn the_shipped_model_scores_its_validation_sample() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = CpuModel::load(&root.join("models/retnet-shakespeare")).unwrap();
    assert_eq!(model.config().vocab_size, 256, "a byte-level model");
    let text = std::fs::read(root.join("tools/train/val_sample.txt")).unwrap();
    assert_eq!(text.len(), 39_972);
    let tokens: Vec<u32> = text.iter().map(|&b| u32::from(b)).collect();
    let fast = FastCpuModel::new(&model).unwrap();
    let mut engine = fast.session();
    let nats = block_on(mean_nll(&mut engine, &tokens, 512, &mut |_, _| {})).unwrap();
    println!(
        "nats/byte {nats:.7} (peer {PEER_NATS}, {:+.2e}; pinned {OURS_NATS}, {:+.2e})",
        nats - PEER_NATS,
        nats - OURS_NATS
    );
    assert!(nats.is_finite(), "{nats}");
    assert!(
        (nats - PEER_NATS).abs() <= PEER_TOLERANCE,
        "{nats} vs the peer's {PEER_NATS}"
    );
    assert!(
        (nats - OURS_NATS).abs() <= PIN_TOLERANCE,
        "{nats} vs the pinned {OURS_NATS}"
    );
}

/// The block formats on the shipped model (f16 checkpoint, 6.8M parameters): the layers'
/// matrices in int8 or q4, the embeddings/head f16, as a GPU load stores them and the CPU engine
/// computes with them (`CpuModel::stored_as`). Issue 15's quality bars: within 1 % (int8) and
/// 5 % (q4) of the f16 loss. The values are pinned like the f16 one (the codec and the engine
/// are deterministic).
#[test]
fn the_quantized_shipped_model_stays_within_its_quality_bars() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = CpuModel::load(&root.join("models/retnet-shakespeare")).unwrap();
    let text = std::fs::read(root.join("tools/train/val_sample.txt")).unwrap();
    let tokens: Vec<u32> = text.iter().map(|&b| u32::from(b)).collect();
    for (precision, bar, pinned) in [
        (WeightPrecision::Int8, 0.01, INT8_NATS),
        (WeightPrecision::Q4, 0.05, Q4_NATS),
    ] {
        let stored = model.clone().stored_as(precision).unwrap();
        let fast = FastCpuModel::new(&stored).unwrap();
        let mut engine = fast.session();
        let nats = block_on(mean_nll(&mut engine, &tokens, 512, &mut |_, _| {})).unwrap();
        let relative = nats / OURS_NATS - 1.0;
        println!(
            "{precision:?}: nats/byte {nats:.7} ({:+.3} % of f16's {OURS_NATS}; pinned {pinned})",
            100.0 * relative
        );
        assert!(
            nats.is_finite() && relative.abs() <= bar,
            "{precision:?}: {nats}"
        );
        assert!(
            (nats - pinned).abs() <= PIN_TOLERANCE,
            "{precision:?}: {nats} vs the pinned {pinned}"
        );
    }
}

/// `the_quantized_shipped_model_stays_within_its_quality_bars`'s measurements (f16: 1.3561038).
const INT8_NATS: f64 = 1.355_986_2;
const Q4_NATS: f64 = 1.357_454_6;
