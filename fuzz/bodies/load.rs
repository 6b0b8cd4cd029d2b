// Config + safetensors loading on arbitrary bytes: `config.json` text, a NUL byte, then the
// bytes of a safetensors file (JSON text cannot contain a raw NUL). Every input must give a
// model or a `ModelError`, never a panic, an abort or an allocation the input does not back.
//
// Shared by the cargo-fuzz target `fuzz/fuzz_targets/load.rs` and the stable replay of the
// committed regression inputs, `tests/fuzz_corpora.rs` (both `include!` this file).

use retnet_model::{Bytes, ModelConfig, ModelWeights, TensorStore};

/// One fuzz input: must not panic.
pub fn check(data: &[u8]) {
    let (config, weights) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(config) = std::str::from_utf8(config) else {
        return;
    };
    let config = ModelConfig::from_json_str(config);
    let store = TensorStore::from_bytes("model.safetensors", Bytes::Owned(weights.to_vec()));
    if let (Ok(config), Ok(store)) = (config, store) {
        let _ = ModelWeights::from_store(&config, &store, &mut |_, _| {});
    }
}
