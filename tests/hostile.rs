//! Hostile inputs, round two (issue 12), through the library: sizes bounded before anything is
//! allocated, non-finite numbers never passed on, state files validated, the public CPU API
//! checking what it is given. Each case failed (an abort, a panic or a silent NaN) before.

mod common;

use common::*;
use pollster::block_on;
use retnet::model::{CpuEngine, CpuSession, Engine, FastCpuModel, Generator, SamplingParams};
use retnet::{CpuModel, ModelConfig, ModelError, RetentionForm};
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::Path;

const TS: &str = "torchscale_swish_tied";
const FLA: &str = "fla_basic";

fn load_error(dir: &Path) -> String {
    match CpuModel::load(dir) {
        Ok(_) => panic!("{} loaded, but should not have", dir.display()),
        Err(e) => e.to_string().replace(&dir.display().to_string(), "<dir>"),
    }
}

fn edited_config(
    fixture: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> String {
    let dir = copy_fixture(fixture);
    rewrite_config(dir.path(), edit);
    load_error(dir.path())
}

fn edited_weights(fixture: &str, edit: impl FnOnce(&mut HashMap<String, RawTensor>)) -> String {
    let dir = copy_fixture(fixture);
    rewrite_weights(dir.path(), edit);
    load_error(dir.path())
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn a_huge_layer_count_is_refused_before_anything_is_allocated() {
    // Before: `Vec::with_capacity(num_layers)` aborted every command, `info` included.
    let e = edited_config(FLA, |c| {
        c.insert("num_hidden_layers".into(), (1u64 << 60).into());
    });
    assert!(
        e.contains("the recurrent state") || e.contains("layer count"),
        "{e}"
    );
    let e = edited_config(FLA, |c| {
        c.insert("num_hidden_layers".into(), 100_000.into());
    });
    assert_eq!(
        e,
        "invalid config: the config's layer count 100000 is more than the weights files' 25 \
         tensors can hold"
    );
}

#[test]
fn sizes_whose_products_overflow_name_the_fields() {
    let e = edited_config(TS, |c| {
        c.insert("vocab_size".into(), (1u64 << 62).into());
    });
    assert!(e.contains("vocab size") && e.contains("overflows"), "{e}");
    // A huge head dimension with a small width: the state per layer would be terabytes.
    let e = edited_config(TS, |c| {
        c.insert("decoder_value_embed_dim".into(), (1u64 << 36).into());
        c.insert("decoder_retention_heads".into(), 1.into());
    });
    assert!(
        e.contains("recurrent state") || e.contains("overflows"),
        "{e}"
    );
}

#[test]
fn a_tensor_is_checked_before_memory_is_allocated_for_it() {
    // The embedding is read last; the config claims a vocabulary of 2^40 rows. Before, the
    // reader allocated 2^40 × 48 floats before the shape check failed.
    let e = edited_config(TS, |c| {
        c.insert("vocab_size".into(), (1u64 << 40).into());
    });
    assert!(
        e.contains("embed_tokens.weight") && e.contains("has shape"),
        "{e}"
    );
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let e = edited_weights(FLA, |t| {
        let w = t.get_mut("model.norm.weight").unwrap();
        assert_eq!(w.dtype, Dtype::F32);
        w.data[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert_eq!(
        e,
        "tensor `model.norm.weight` holds a non-finite value (NaN) at element 2"
    );
    // An f16 NaN bit pattern, and an f16 infinity.
    for (bits, shown) in [(0x7e01u16, "NaN"), (0x7c00, "inf")] {
        let e = edited_weights("fla_f16_24heads", |t| {
            let w = t.get_mut("model.layers.0.attn_norm.weight").unwrap();
            assert_eq!(w.dtype, Dtype::F16);
            w.data[0..2].copy_from_slice(&bits.to_le_bytes());
        });
        assert_eq!(
            e,
            format!(
                "tensor `model.layers.0.attn_norm.weight` holds a non-finite value ({shown}) at \
                 element 0"
            )
        );
    }
}

#[test]
fn a_decay_above_one_is_refused() {
    let e = edited_weights(TS, |t| {
        let w = t.get_mut("retnet_rel_pos.decay").unwrap();
        let n = w.data.len() / 4;
        let mut values = vec![-0.03f32; n];
        values[n - 1] = 0.25;
        w.data = f32_bytes(&values);
        w.dtype = Dtype::F32;
    });
    assert!(
        e.starts_with("tensor `retnet_rel_pos.decay` holds the log decay 0.25 at element"),
        "{e}"
    );
}

#[test]
fn non_finite_rotary_angles_are_refused() {
    let e = edited_weights(TS, |t| {
        let w = t.get_mut("retnet_rel_pos.angle").unwrap();
        w.data[0..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    });
    assert!(e.contains("non-finite value (inf)"), "{e}");
}

#[test]
fn a_zero_norm_eps_is_refused() {
    let e = edited_config(FLA, |c| {
        c.insert("norm_eps".into(), 0.into());
    });
    assert_eq!(
        e,
        "invalid config: norm eps is 0; it must be positive and finite"
    );
}

#[test]
fn a_header_naming_a_tensor_twice_is_refused() {
    let entry = r#"{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
    let header = format!(r#"{{"model.norm.weight":{entry},"model.norm.weight":{entry}}}"#);
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&1f32.to_le_bytes());
    let e = retnet::model::TensorStore::from_bytes(
        "twice.safetensors",
        retnet::model::Bytes::Owned(file),
    )
    .err()
    .expect("refused")
    .to_string();
    assert_eq!(
        e,
        "twice.safetensors: corrupt safetensors file: the header names tensor \
         `model.norm.weight` twice"
    );
}

#[test]
fn logits_that_overflow_are_an_error_not_a_result() {
    let dir = copy_fixture(FLA);
    rewrite_weights(dir.path(), |t| {
        let w = t.get_mut("model.norm.weight").unwrap();
        let n = w.data.len() / 4;
        w.data = f32_bytes(&vec![3e38; n]);
    });
    let model = CpuModel::load(dir.path()).unwrap();
    let e = model.logits(&[1, 2], RetentionForm::Recurrent).unwrap_err();
    assert!(matches!(e, ModelError::NonFinite(_)), "{e}");
    assert!(
        e.to_string()
            .starts_with("the logits at position 0 are not finite"),
        "{e}"
    );
}

/// A saved state of the torchscale fixture, and the model.
fn saved_state() -> (CpuModel, Vec<u8>) {
    let model = CpuModel::load(&fixture(TS)).unwrap();
    let mut session = CpuSession::new(CpuEngine::new(&model));
    block_on(session.prefill(&[1, 2, 3])).unwrap();
    block_on(session.next_token(&SamplingParams::greedy())).unwrap();
    let bytes = block_on(session.save_bytes()).unwrap();
    (model, bytes)
}

fn resume_error(model: &CpuModel, bytes: &[u8]) -> String {
    CpuSession::load_bytes(CpuEngine::new(model), "state", bytes)
        .err()
        .expect("refused")
        .to_string()
}

#[test]
fn state_files_are_validated() {
    let (model, bytes) = saved_state();
    assert!(CpuSession::load_bytes(CpuEngine::new(&model), "state", &bytes).is_ok());
    let set = |key: &'static str, value: String| {
        edit_state_file(
            &bytes,
            move |m| {
                m.insert(key.into(), value);
            },
            |_, _| {},
        )
    };
    // A position the GPU cannot represent (it takes positions as u32): refused by every
    // backend, at load.
    let far = set("position", (u32::MAX as u64 + 5).to_string());
    assert_eq!(
        resume_error(&model, &far),
        "state: position 4294967300 is beyond the 4294967295 tokens a session can hold"
    );
    let history = set("history", "1,2,97".into());
    assert_eq!(
        resume_error(&model, &history),
        "state: history token 97 is out of range: the vocabulary has 97 entries"
    );
    let pending = set("pending", "4000".into());
    assert_eq!(
        resume_error(&model, &pending),
        "state: pending token 4000 is out of range: the vocabulary has 97 entries"
    );
    let long: Vec<String> = (0..65).map(|_| "1".to_string()).collect();
    let long = set("history", long.join(","));
    assert!(resume_error(&model, &long).contains("more than the 64"));
    let draws = set("draws", u64::MAX.to_string());
    assert_eq!(
        resume_error(&model, &draws),
        "state: 18446744073709551615 draws is beyond the 4294967295 a session can make"
    );
    let nan = edit_state_file(&bytes, |_| {}, |_, v| v[3] = f32::NAN);
    assert_eq!(
        resume_error(&model, &nan),
        "state: tensor `layers.0` holds a non-finite value at element 3"
    );
}

#[test]
fn a_state_saved_before_any_token_was_generated_resumes() {
    // Before: saved after the prompt with `--max-tokens 0`, the session held neither a pending
    // token nor logits, and `generate` on the resumed session failed.
    let model = CpuModel::load(&fixture(TS)).unwrap();
    let fast = FastCpuModel::new(&model).unwrap();
    let greedy = SamplingParams::greedy();
    let mut first = Generator::new(fast.session());
    block_on(first.prefill(&[5, 6, 7])).unwrap();
    let bytes = block_on(first.save_bytes()).unwrap();
    let mut want = Vec::new();
    block_on(first.generate(&greedy, 6, &mut |t| {
        want.extend_from_slice(t);
        true
    }))
    .unwrap();
    for resumed in [
        Generator::load_bytes(fast.session(), "state", &bytes).unwrap(),
        Generator::load_bytes(fast.session(), "state", &bytes).unwrap(),
    ] {
        let mut resumed = resumed;
        let mut got = Vec::new();
        block_on(resumed.generate(&greedy, 6, &mut |t| {
            got.extend_from_slice(t);
            true
        }))
        .unwrap();
        assert_eq!(got, want);
    }
    // The CPU reference resumes it too.
    let mut reference = CpuSession::load_bytes(CpuEngine::new(&model), "state", &bytes).unwrap();
    let token = block_on(reference.next_token(&greedy)).unwrap();
    assert_eq!(token, want[0]);
}

#[test]
fn the_public_cpu_api_checks_what_it_is_given() {
    let model = CpuModel::load(&fixture(TS)).unwrap();
    let config = model.config().clone();
    let mut weights = model.weights().clone();
    assert!(CpuModel::new(config.clone(), weights.clone()).is_ok());
    weights.layers.pop();
    let e = CpuModel::new(config.clone(), weights)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "invalid config: the weights have 1 layers, the config 2");
    let mut weights = model.weights().clone();
    weights.layers[1].ffn_down.data.pop();
    let e = CpuModel::new(config.clone(), weights)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layers.1.FfnDown"), "{e}");
    let mut weights = model.weights().clone();
    weights.layers[0].q_proj.data[7] = f32::INFINITY;
    let e = CpuModel::new(config.clone(), weights)
        .unwrap_err()
        .to_string();
    assert!(e.contains("non-finite value (inf) at element 7"), "{e}");
    let mut bad = config.clone();
    bad.norm_eps = 0.0;
    assert!(CpuModel::new(bad, model.weights().clone()).is_err());

    let mut engine = CpuEngine::new(&model);
    let state = block_on(engine.export_state()).unwrap();
    assert!(engine.import_state(3, &state).is_ok());
    assert!(engine.import_state(3, &state[..1]).is_err());
    let mut short = state.clone();
    short[0].pop();
    assert!(engine.import_state(3, &short).is_err());
    let mut nan = state.clone();
    nan[1][0] = f32::NAN;
    assert!(engine.import_state(3, &nan).is_err());
    assert!(engine.import_state(u32::MAX as usize + 1, &state).is_err());
    let fast = FastCpuModel::new(&model).unwrap();
    let mut engine = fast.session();
    assert!(Engine::import_state(&mut engine, 3, &short).is_err());
    assert!(Engine::import_state(&mut engine, 3, &nan).is_err());

    // A state whose layers do not fit the model, handed to `forward` directly.
    let mut state = model.new_state();
    state.layers.pop();
    assert!(model
        .forward(&[1], &mut state, RetentionForm::Recurrent)
        .is_err());
}

#[test]
fn config_sizes_are_checked_for_configs_built_in_memory() {
    let mut config = ModelConfig::from_json_str(
        r#"{"model_type": "retnet", "hidden_size": 16, "num_heads": 2, "vocab_size": 5,
            "num_hidden_layers": 1}"#,
    )
    .unwrap();
    assert!(config.check().is_ok());
    config.head_v_dim = usize::MAX / 2;
    let e = config.check().unwrap_err().to_string();
    assert!(e.contains("overflows"), "{e}");
}

/// Seeds of the `state` and `tokens` fuzz targets (`fuzz/seed.sh` runs this): states the
/// torchscale fixture saved (after a prompt, after sampling, after no token), and token lists.
#[test]
#[ignore = "writes fuzz/corpus; run by fuzz/seed.sh"]
fn write_fuzz_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let (states, tokens) = (root.join("state"), root.join("tokens"));
    std::fs::create_dir_all(&states).unwrap();
    std::fs::create_dir_all(&tokens).unwrap();
    let model = CpuModel::load(&fixture(TS)).unwrap();
    let mut session = CpuSession::new(CpuEngine::new(&model));
    block_on(session.prefill(&[1, 2, 3])).unwrap();
    std::fs::write(
        states.join("seed-prefilled"),
        block_on(session.save_bytes()).unwrap(),
    )
    .unwrap();
    for i in 0..3 {
        block_on(session.next_token(&SamplingParams::default())).unwrap();
        let bytes = block_on(session.save_bytes()).unwrap();
        std::fs::write(states.join(format!("seed-sampled-{i}")), bytes).unwrap();
    }
    for (i, list) in [vec![0u32], vec![1, 2, 3, 4, 5, 6, 7, 8, 9], vec![96, 0, 96]]
        .into_iter()
        .enumerate()
    {
        for selector in [0u8, 1, 2 + 3 * 4] {
            let mut bytes = vec![selector];
            bytes.extend(list.iter().flat_map(|t| t.to_le_bytes()));
            std::fs::write(tokens.join(format!("seed-{i}-{selector}")), bytes).unwrap();
        }
    }
}
