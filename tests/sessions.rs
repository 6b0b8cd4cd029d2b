//! CPU sessions: greedy decoding equals the argmax of one parallel pass, and saved states
//! resume exactly and only into the model they came from.

mod common;

use common::*;
use pollster::block_on;
use retnet::model::{CpuEngine, CpuSession, SamplingParams};
use retnet::CpuModel;

#[test]
fn greedy_decoding_follows_the_parallel_argmax() {
    let model = CpuModel::load(&fixture("fla_basic")).unwrap();
    let prompt = [3u32, 1, 4, 1, 5];
    let mut session = CpuSession::new(CpuEngine::new(&model));
    block_on(session.prefill(&prompt)).unwrap();
    let mut tokens = prompt.to_vec();
    for _ in 0..12 {
        tokens.push(block_on(session.next_token(&SamplingParams::greedy())).unwrap());
    }
    // Every generated token is the argmax of the parallel logits at the position before it.
    let vocab = model.config().vocab_size;
    let logits = model
        .logits(&tokens, retnet::RetentionForm::Parallel)
        .unwrap();
    for n in prompt.len()..tokens.len() {
        let row = &logits[(n - 1) * vocab..][..vocab];
        assert_eq!(
            tokens[n],
            retnet::model::sampling::argmax(row),
            "position {n}"
        );
    }
}

#[test]
fn saved_state_resumes_exactly_and_only_into_its_model() {
    let model = CpuModel::load(&fixture("torchscale_swish_tied")).unwrap();
    let params = SamplingParams {
        temperature: 0.9,
        top_k: 10,
        top_p: 0.9,
        repeat_penalty: 1.3,
        seed: 3,
    };
    let mut whole = CpuSession::new(CpuEngine::new(&model));
    block_on(whole.prefill(&[1, 2, 3])).unwrap();
    let want: Vec<u32> = (0..10)
        .map(|_| block_on(whole.next_token(&params)).unwrap())
        .collect();

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("state.safetensors");
    let mut first = CpuSession::new(CpuEngine::new(&model));
    block_on(first.prefill(&[1, 2, 3])).unwrap();
    let mut got: Vec<u32> = (0..4)
        .map(|_| block_on(first.next_token(&params)).unwrap())
        .collect();
    block_on(first.save(&path)).unwrap();
    let mut resumed = CpuSession::load(CpuEngine::new(&model), &path).unwrap();
    assert_eq!(resumed.book(), first.book());
    got.extend((0..6).map(|_| block_on(resumed.next_token(&params)).unwrap()));
    assert_eq!(got, want);

    // The same checkpoint with one knob changed is another model.
    let dir = copy_fixture("torchscale_swish_tied");
    rewrite_config(dir.path(), |c| {
        c.insert("layernorm_eps".into(), 1e-3.into());
    });
    let other = CpuModel::load(dir.path()).unwrap();
    let e = CpuSession::load(CpuEngine::new(&other), &path)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("belongs to another model"), "{e}");

    // The same config with other weights (one bit of one weight) is another checkpoint.
    let dir = copy_fixture("torchscale_swish_tied");
    rewrite_weights(dir.path(), |tensors| {
        tensors
            .get_mut("layers.0.retention.v_proj.weight")
            .unwrap()
            .data[0] ^= 1;
    });
    let retrained = CpuModel::load(dir.path()).unwrap();
    assert_eq!(
        format!("{:?}", retrained.config()),
        format!("{:?}", model.config())
    );
    let e = CpuSession::load(CpuEngine::new(&retrained), &path)
        .err()
        .expect("refused");
    assert!(
        e.to_string()
            .contains("belongs to another checkpoint with the same config"),
        "{e}"
    );

    // Not a state file at all.
    let e = CpuSession::load(
        CpuEngine::new(&model),
        &fixture("fla_basic").join("model.safetensors"),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("not a retnet state file"), "{e}");
}

#[test]
fn a_state_in_memory_is_the_state_file_and_resumes_the_same() {
    // The browser has no file system: `save_bytes` / `load_bytes` must be the file's format.
    use retnet::model::state_file;
    use std::path::Path;
    let model = CpuModel::load(&fixture("torchscale_swish_tied")).unwrap();
    let params = SamplingParams {
        seed: 5,
        ..SamplingParams::default()
    };
    let prompt = [4u32, 2, 9];
    let mut session = CpuSession::new(CpuEngine::new(&model));
    block_on(session.prefill(&prompt)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("state.safetensors");
    block_on(session.save(&path)).unwrap();
    let bytes = block_on(session.save_bytes()).unwrap();
    let (config, weights) = (model.config(), model.fingerprint());
    let from_disk = state_file::load_state(&path, config, weights).unwrap();
    let in_memory =
        state_file::state_from_bytes(Path::new("state"), &bytes, config, weights).unwrap();
    // The same file format (metadata order aside: safetensors writes a hash map).
    assert!(
        from_disk == in_memory,
        "the state in memory differs from the file"
    );
    // Both are written by one function, so that equality alone says nothing about their
    // content: the saved state must be the state the reference computes independently for the
    // same tokens, and its logits the reference's last row.
    let mut want = model.new_state();
    let logits = model
        .forward(&prompt, &mut want, retnet::RetentionForm::Recurrent)
        .unwrap();
    assert_eq!(in_memory.position, prompt.len());
    assert_eq!(in_memory.layers.len(), want.layers.len());
    for (i, (got, want)) in in_memory.layers.iter().zip(&want.layers).enumerate() {
        // Forms vs each other: measured ≤ 1e-7 on the fixtures (docs/testing.md).
        assert_close_f32(&format!("layer {i} state"), got, want, 1e-6);
    }
    let vocab = config.vocab_size;
    let last = in_memory
        .last_logits
        .as_ref()
        .expect("no pending token: logits kept");
    assert_close_f32("last logits", last, &logits[logits.len() - vocab..], 1e-6);

    // Resumed from the file or from the bytes, a session continues exactly as the one that
    // was saved (not merely as each other).
    let mut from_file = CpuSession::load(CpuEngine::new(&model), &path).unwrap();
    let mut from_bytes = CpuSession::load_bytes(CpuEngine::new(&model), "state", &bytes).unwrap();
    for step in 0..5 {
        let want = block_on(session.next_token(&params)).unwrap();
        assert_eq!(
            block_on(from_bytes.next_token(&params)).unwrap(),
            want,
            "step {step}"
        );
        assert_eq!(
            block_on(from_file.next_token(&params)).unwrap(),
            want,
            "step {step}"
        );
    }
    let e = CpuSession::load_bytes(CpuEngine::new(&model), "state", &bytes[..40])
        .err()
        .expect("refused");
    assert!(e.to_string().starts_with("state: "), "{e}");
}
