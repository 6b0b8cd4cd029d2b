//! Hugging Face `tokenizer.json` support: a model directory with one uses it for encoding
//! prompts and decoding (streaming) output.

mod common;

use common::*;
use retnet::model::{CpuEngine, Generator, SamplingParams, TextStream, Tokenizer};
use retnet::CpuModel;

/// A word-level tokenizer over the fixture's vocabulary: token i is the word `w{i}`.
fn write_word_tokenizer(dir: &std::path::Path, vocab: usize) {
    let entries: Vec<String> = (0..vocab).map(|i| format!("\"w{i}\": {i}")).collect();
    let json = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}},
            "post_processor": null, "decoder": null,
            "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "w0"}}}}"#,
        entries.join(", ")
    );
    std::fs::write(dir.join("tokenizer.json"), json).unwrap();
}

#[test]
fn a_model_directory_with_tokenizer_json_uses_it() {
    let dir = copy_fixture("fla_basic");
    let model = CpuModel::load(dir.path()).unwrap();
    let vocab = model.config().vocab_size;
    write_word_tokenizer(dir.path(), vocab);
    let tokenizer = Tokenizer::for_model(dir.path(), model.config()).unwrap();
    assert!(matches!(tokenizer, Tokenizer::HuggingFace(_)));
    assert_eq!(tokenizer.encode("w3 w141 w7").unwrap(), vec![3, 141, 7]);
    assert_eq!(tokenizer.decode(&[3, 141, 7]).unwrap(), b"w3 w141 w7");

    // Streaming decode emits exactly the text of the generated ids.
    let mut session = Generator::new(CpuEngine::new(&model));
    pollster::block_on(session.prefill(&tokenizer.encode("w1 w2 w3").unwrap())).unwrap();
    let mut stream = TextStream::new();
    let mut ids = Vec::new();
    let mut text = Vec::new();
    for _ in 0..10 {
        let id = pollster::block_on(session.next_token(&SamplingParams::greedy())).unwrap();
        ids.push(id);
        text.extend(stream.push(&tokenizer, id).unwrap());
    }
    assert_eq!(text, tokenizer.decode(&ids).unwrap());
}

#[test]
fn a_broken_tokenizer_json_is_a_clean_error() {
    let dir = copy_fixture("fla_basic");
    std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
    let model = CpuModel::load(dir.path()).unwrap();
    let err = Tokenizer::for_model(dir.path(), model.config())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}
