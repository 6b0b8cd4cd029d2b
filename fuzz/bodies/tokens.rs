// Token lists on arbitrary bytes through every retention form of a small fixture's CPU
// reference and its fast CPU engine: the first byte picks the form and chunk size, the rest are
// little-endian u32 ids (out of range ones included). Every input must give logits of the
// right length or a `ModelError`, never a panic; logits returned are finite.
//
// Shared by the cargo-fuzz target `fuzz/fuzz_targets/tokens.rs` and the stable replay of the
// committed regression inputs, `tests/fuzz_corpora.rs` (both `include!` this file).

use std::sync::OnceLock;

use retnet_model::{Bytes, CpuModel, FastCpuModel, RetentionForm};

static CONFIG: &str = include_str!("../../tests/fixtures/torchscale_swish_tied/config.json");
static WEIGHTS: &[u8] =
    include_bytes!("../../tests/fixtures/torchscale_swish_tied/model.safetensors");

fn models() -> &'static (CpuModel, FastCpuModel) {
    static MODELS: OnceLock<(CpuModel, FastCpuModel)> = OnceLock::new();
    MODELS.get_or_init(|| {
        let model =
            CpuModel::from_bytes(CONFIG, Bytes::Static(WEIGHTS)).expect("the fixture loads");
        let fast = FastCpuModel::new(&model).expect("the fast engine takes it");
        (model, fast)
    })
}

/// One fuzz input: must not panic.
pub fn check(data: &[u8]) {
    let Some((&selector, ids)) = data.split_first() else {
        return;
    };
    let tokens: Vec<u32> = ids
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let (model, fast) = models();
    let vocab = model.config().vocab_size;
    let form = match selector % 3 {
        0 => RetentionForm::Parallel,
        1 => RetentionForm::Recurrent,
        _ => RetentionForm::Chunkwise {
            chunk_size: (selector / 3) as usize,
        },
    };
    if let Ok(logits) = model.logits(&tokens, form) {
        assert_eq!(logits.len(), tokens.len() * vocab);
        assert!(logits.iter().all(|v| v.is_finite()));
    }
    let mut engine = fast.session();
    if let Ok(logits) = engine.forward(&tokens, selector & 1 == 0) {
        assert!(logits.iter().all(|v| v.is_finite()));
    }
}
