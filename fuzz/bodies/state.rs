// State files on arbitrary bytes, resumed into the CPU reference of a small fixture
// (torchscale_swish_tied, compiled in): every input must resume (and then generate) or give a
// `ModelError`, never a panic, an abort or an allocation the input does not back. Seeds:
// states that fixture saved (`fuzz/seed.sh`), so the fingerprints are there to mutate around.
//
// Shared by the cargo-fuzz target `fuzz/fuzz_targets/state.rs` and the stable replay of the
// committed regression inputs, `tests/fuzz_corpora.rs` (both `include!` this file).

use std::sync::OnceLock;

use retnet_model::{Bytes, CpuEngine, CpuModel, Generator, SamplingParams};

static CONFIG: &str = include_str!("../../tests/fixtures/torchscale_swish_tied/config.json");
static WEIGHTS: &[u8] =
    include_bytes!("../../tests/fixtures/torchscale_swish_tied/model.safetensors");

fn model() -> &'static CpuModel {
    static MODEL: OnceLock<CpuModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        CpuModel::from_bytes(CONFIG, Bytes::Static(WEIGHTS)).expect("the fixture loads")
    })
}

/// One fuzz input: must not panic.
pub fn check(data: &[u8]) {
    let model = model();
    if let Ok(mut session) = Generator::load_bytes(CpuEngine::new(model), "state", data) {
        let mut tokens = Vec::new();
        let generated =
            pollster::block_on(session.generate(&SamplingParams::default(), 2, &mut |t| {
                tokens.extend_from_slice(t);
                true
            }));
        if generated.is_ok() {
            assert!(tokens
                .iter()
                .all(|&t| (t as usize) < model.config().vocab_size));
        }
    }
}
