//! Config + safetensors loading on arbitrary bytes: `config.json` text, a NUL byte, then the
//! bytes of a safetensors file (JSON text cannot contain a raw NUL). Every input must give a
//! model or a `ModelError`, never a panic, an abort or an allocation the input does not back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retnet_model::{Bytes, ModelConfig, ModelWeights, TensorStore};

fuzz_target!(|data: &[u8]| {
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
});
