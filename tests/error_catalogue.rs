//! The library rows of `docs/errors.md`: each bad input and the exact message of the error it
//! yields (temporary directories written as `<dir>`). A changed message fails here, so the
//! table stays true; the CLI rows are covered by `crates/retnet-cli/tests/*.rs`.

mod common;

use common::*;
use pollster::block_on;
use retnet::model::{CpuEngine, CpuSession};
use retnet::{CpuModel, ModelConfig, ModelError, RetentionForm};
use safetensors::Dtype;
use std::path::Path;

const TS: &str = "torchscale_swish_tied";
const FLA: &str = "fla_basic";

/// The message of a load that must fail, with `dir` written as `<dir>`.
fn load_message(dir: &Path) -> String {
    match CpuModel::load(dir) {
        Ok(_) => panic!("{} loaded, but should not have", dir.display()),
        Err(e) => e.to_string().replace(&dir.display().to_string(), "<dir>"),
    }
}

/// A copy of `fixture` with its config edited, loaded.
fn with_config(
    fixture: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> String {
    let dir = copy_fixture(fixture);
    rewrite_config(dir.path(), edit);
    load_message(dir.path())
}

/// A copy of `fixture` with its weights edited, loaded.
fn with_weights(
    fixture: &str,
    edit: impl FnOnce(&mut std::collections::HashMap<String, RawTensor>),
) -> String {
    let dir = copy_fixture(fixture);
    rewrite_weights(dir.path(), edit);
    load_message(dir.path())
}

/// A copy of `fixture` whose `model.safetensors` bytes are replaced by `edit(bytes)`.
fn with_bytes(fixture: &str, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) -> String {
    let dir = copy_fixture(fixture);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, edit(bytes)).unwrap();
    load_message(dir.path())
}

fn config_message(text: &str) -> String {
    ModelConfig::from_json_str(text).unwrap_err().to_string()
}

fn set(
    key: &str,
    value: serde_json::Value,
) -> impl FnOnce(&mut serde_json::Map<String, serde_json::Value>) {
    let key = key.to_string();
    move |c| {
        c.insert(key, value);
    }
}

/// A safetensors file whose header is valid JSON but whose one tensor claims `bytes` bytes.
fn claims_gigabytes(bytes: u64) -> Vec<u8> {
    let header = format!(
        r#"{{"embed_tokens.weight":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{bytes}]}}}}"#,
        n = bytes / 4
    );
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&[0; 64]);
    file
}

/// Every library row of docs/errors.md: (bad input, the error's message).
fn catalogue() -> Vec<(&'static str, String)> {
    let mut rows: Vec<(&'static str, String)> = Vec::new();
    let mut row = |what: &'static str, message: String| rows.push((what, message));

    // config.json
    row(
        "config: invalid JSON (cut short)",
        with_config_text(TS, "{\"decoder_embed_dim\": 48,"),
    );
    row("config: not an object", config_message("[1]"));
    row(
        "config: a size of the wrong type",
        config_message(r#"{"model_type": "retnet", "hidden_size": "big", "num_heads": 2}"#),
    );
    row(
        "config: heads that do not divide the width",
        with_config(TS, set("decoder_retention_heads", 5.into())),
    );
    row(
        "config: zero layers",
        with_config(FLA, set("num_hidden_layers", 0.into())),
    );
    row(
        "config: zero vocabulary",
        with_config(TS, set("vocab_size", 0.into())),
    );
    row(
        "config: zero key/value heads",
        with_config(FLA, set("num_kv_heads", 0.into())),
    );
    row(
        "config: fla `use_short_conv: true`",
        with_config(FLA, set("use_short_conv", true.into())),
    );
    row(
        "config: fla `feature_map`",
        with_config(FLA, set("feature_map", "elu".into())),
    );
    row(
        "config: fla hybrid `attn` naming a layer the model lacks",
        with_config(
            FLA,
            set("attn", serde_json::json!({"layers": [5], "num_heads": 2})),
        ),
    );
    row(
        "config: torchscale `multiway: true`",
        with_config(TS, set("multiway", true.into())),
    );
    row(
        "config: torchscale mixture of experts",
        with_config(TS, set("moe_expert_count", 8.into())),
    );
    row(
        "config: unknown activation",
        with_config(TS, set("activation_fn", "relu".into())),
    );

    // weights
    row(
        "weights: model directory missing",
        load_message(Path::new("/nonexistent/model/dir")),
    );
    row("weights: no safetensors file", {
        let dir = copy_fixture(TS);
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        load_message(dir.path())
    });
    row(
        "weights: file shorter than the 8-byte header length",
        with_bytes(TS, |b| b[..5].to_vec()),
    );
    row(
        "weights: truncated (half the file)",
        with_bytes(TS, |b| b[..b.len() / 2].to_vec()),
    );
    row(
        "weights: garbage inside the JSON header",
        with_bytes(TS, |mut b| {
            b[8..40].fill(b'#');
            b
        }),
    );
    row(
        "weights: header length claiming exabytes",
        with_bytes(TS, |mut b| {
            b[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
            b
        }),
    );
    row(
        "weights: a tensor claiming 4 GB in a small file",
        with_bytes(TS, |_| claims_gigabytes(4 << 30)),
    );
    row(
        "weights: missing tensor",
        with_weights(FLA, |t| {
            t.remove("model.layers.1.attn.k_proj.weight");
        }),
    );
    row(
        "weights: wrong shape",
        with_weights(FLA, |t| {
            let w = t.get_mut("model.layers.0.mlp.down_proj.weight").unwrap();
            let row = w.data.len() / w.shape[0];
            w.data.truncate(w.data.len() - row);
            w.shape[0] -= 1;
        }),
    );
    row(
        "weights: unsupported dtype (I32)",
        with_weights(FLA, |t| {
            t.get_mut("model.norm.weight").unwrap().dtype = Dtype::I32;
        }),
    );
    row(
        "weights: torchscale v1 checkpoint (biases)",
        with_weights(TS, |t| {
            let bias = RawTensor {
                dtype: Dtype::F32,
                shape: vec![1],
                data: vec![0; 4],
            };
            t.insert("layers.0.retention.q_proj.bias".into(), bias);
        }),
    );
    row("weights: missing shard", {
        let dir = copy_fixture("fla_gqa_tied_bf16_sharded");
        std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
        load_message(dir.path())
    });
    row(
        "weights: shard index naming a file outside the directory",
        {
            let dir = copy_fixture("fla_gqa_tied_bf16_sharded");
            std::fs::write(
                dir.path().join("model.safetensors.index.json"),
                r#"{"weight_map": {"model.norm.weight": "../model.safetensors"}}"#,
            )
            .unwrap();
            load_message(dir.path())
        },
    );
    row(
        "weights: config has fewer layers than the weights",
        with_config(FLA, set("num_hidden_layers", 1.into())),
    );
    row(
        "weights: config has more layers than the weights",
        with_config(FLA, set("num_hidden_layers", 3.into())),
    );
    row(
        "weights: config vocabulary wider than the embeddings",
        with_config(TS, |c| {
            let v = c["vocab_size"].as_u64().unwrap();
            c.insert("vocab_size".into(), (v + 1).into());
        }),
    );

    // tokens, chunk size, state files
    let model = CpuModel::load(&fixture(TS)).unwrap();
    let vocab = model.config().vocab_size as u32;
    let err = |r: Result<Vec<f32>, ModelError>| r.unwrap_err().to_string();
    row(
        "tokens: empty",
        err(model.logits(&[], RetentionForm::Recurrent)),
    );
    row(
        "tokens: an id ≥ vocab",
        err(model.logits(&[0, vocab], RetentionForm::Recurrent)),
    );
    row(
        "chunk size 0",
        err(model.logits(&[0], RetentionForm::Chunkwise { chunk_size: 0 })),
    );
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.safetensors");
    let mut session = CpuSession::new(CpuEngine::new(&model));
    block_on(session.prefill(&[1, 2, 3])).unwrap();
    block_on(session.save(&state)).unwrap();
    let fla = CpuModel::load(&fixture(FLA)).unwrap();
    let state_message = |model: &CpuModel, path: &Path| {
        CpuSession::load(CpuEngine::new(model), path)
            .err()
            .expect("refused")
            .to_string()
            .replace(&tmp.path().display().to_string(), "<dir>")
            .replace(&fixtures_root().display().to_string(), "<fixtures>")
    };
    row("state file from another model", state_message(&fla, &state));
    row(
        "state file: not a state file (a checkpoint)",
        state_message(&model, &fixture(FLA).join("model.safetensors")),
    );

    // Hostile inputs, round two (issue 12; more cases in tests/hostile.rs).
    row(
        "config: a layer count beyond what the weights files hold",
        with_config(FLA, set("num_hidden_layers", 100_000.into())),
    );
    row(
        "config: sizes whose product overflows",
        with_config(TS, set("vocab_size", (1u64 << 62).into())),
    );
    row(
        "config: a recurrent state over 4 GiB (a huge head dimension)",
        with_config(TS, |c| {
            c.insert("decoder_value_embed_dim".into(), (1u64 << 36).into());
            c.insert("decoder_retention_heads".into(), 1.into());
        }),
    );
    row(
        "config: zero `norm_eps` (0/0 on an all-zero row)",
        with_config(FLA, set("norm_eps", 0.into())),
    );
    row("config: `config.json` is a FIFO", {
        let dir = copy_fixture(FLA);
        let config = dir.path().join("config.json");
        std::fs::remove_file(&config).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&config).status();
        assert!(made.unwrap().success());
        load_message(dir.path())
    });
    row(
        "weights: NaN in an f32 tensor",
        with_weights(FLA, |t| {
            let w = t.get_mut("model.norm.weight").unwrap();
            w.data[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
        }),
    );
    row(
        "weights: an f16 NaN bit pattern",
        with_weights("fla_f16_24heads", |t| {
            let w = t.get_mut("model.layers.0.attn_norm.weight").unwrap();
            w.data[0..2].copy_from_slice(&0x7e01u16.to_le_bytes());
        }),
    );
    row(
        "weights: a log decay above 0 (γ > 1)",
        with_weights(TS, |t| {
            let w = t.get_mut("retnet_rel_pos.decay").unwrap();
            w.data[4..8].copy_from_slice(&0.25f32.to_le_bytes());
        }),
    );
    row(
        "weights: a header naming a tensor twice",
        with_bytes(TS, |_| {
            let entry = r#"{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
            let header = format!(r#"{{"layer_norm.weight":{entry},"layer_norm.weight":{entry}}}"#);
            let mut file = (header.len() as u64).to_le_bytes().to_vec();
            file.extend_from_slice(header.as_bytes());
            file.extend_from_slice(&1f32.to_le_bytes());
            file
        }),
    );
    row("logits: non-finite (the arithmetic overflowed)", {
        let dir = copy_fixture(FLA);
        rewrite_weights(dir.path(), |t| {
            let w = t.get_mut("model.norm.weight").unwrap();
            let n = w.data.len() / 4;
            w.data = (0..n).flat_map(|_| 3e38f32.to_le_bytes()).collect();
        });
        let overflowing = CpuModel::load(dir.path()).unwrap();
        err(overflowing.logits(&[1, 2], RetentionForm::Recurrent))
    });
    let mut engine = CpuEngine::new(&model);
    let zeros = block_on(retnet::model::Engine::export_state(&engine)).unwrap();
    retnet::model::Engine::import_state(&mut engine, u32::MAX as usize, &zeros).unwrap();
    row(
        "tokens: past the 2^32 − 1 positions a session holds",
        block_on(retnet::model::Engine::feed(&mut engine, &[1], false))
            .unwrap_err()
            .to_string(),
    );
    let mut session = CpuSession::new(CpuEngine::new(&model));
    block_on(session.prefill(&[1, 2, 3])).unwrap();
    block_on(session.next_token(&retnet::model::SamplingParams::greedy())).unwrap();
    let saved = block_on(session.save_bytes()).unwrap();
    let edited = |name: &str, bytes: Vec<u8>| {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        state_message(&model, &path)
    };
    let set_meta = |key: &'static str, value: &'static str| {
        edit_state_file(
            &saved,
            move |m| {
                m.insert(key.into(), value.into());
            },
            |_, _| {},
        )
    };
    row(
        "state file: a position past what a backend represents",
        edited("far.safetensors", set_meta("position", "4294967300")),
    );
    row(
        "state file: a history id ≥ vocab",
        edited("history.safetensors", set_meta("history", "1,2,97")),
    );
    row(
        "state file: NaN in the state",
        edited(
            "nan.safetensors",
            edit_state_file(&saved, |_| {}, |_, v| v[3] = f32::NAN),
        ),
    );
    let mut weights = model.weights().clone();
    weights.layers.pop();
    row(
        "`CpuModel::new`: weights with a layer missing",
        CpuModel::new(model.config().clone(), weights)
            .unwrap_err()
            .to_string(),
    );
    rows
}

fn with_config_text(fixture: &str, text: &str) -> String {
    let dir = copy_fixture(fixture);
    std::fs::write(dir.path().join("config.json"), text).unwrap();
    load_message(dir.path())
}

#[test]
fn every_library_row_of_docs_errors_md_yields_its_error() {
    let rows = catalogue();
    for (what, message) in &rows {
        println!("| {what} | `{message}` |");
    }
    let got: Vec<(&str, &str)> = rows.iter().map(|(w, m)| (*w, m.as_str())).collect();
    assert_eq!(got.len(), EXPECTED.len());
    for (got, want) in got.iter().zip(EXPECTED) {
        assert_eq!(got, want);
    }
}

/// The library rows of docs/errors.md, verbatim.
const EXPECTED: &[(&str, &str)] = &[
    ("config: invalid JSON (cut short)", "<dir>/config.json: EOF while parsing a value at line 1 column 25"),
    ("config: not an object", "invalid config: config.json must hold a JSON object"),
    ("config: a size of the wrong type", r#"config.json: invalid type: string "big", expected usize"#),
    ("config: heads that do not divide the width", "invalid config: decoder_embed_dim 48 is not divisible by 5 heads"),
    ("config: zero layers", "invalid config: layer count is zero"),
    ("config: zero vocabulary", "invalid config: vocab size is zero"),
    ("config: zero key/value heads", "invalid config: key/value head count is zero"),
    ("config: fla `use_short_conv: true`", "unsupported checkpoint: use_short_conv = true (short convolutions are not plain RetNet)"),
    ("config: fla `feature_map`", r#"unsupported checkpoint: feature_map = "elu" (feature maps on q and k are not plain RetNet)"#),
    ("config: fla hybrid `attn` naming a layer the model lacks", "invalid config: attn.layers names layer 5, but the model has 2 layers"),
    ("config: torchscale `multiway: true`", "unsupported checkpoint: multiway = true (multiway (vision-language) layers are not plain RetNet)"),
    ("config: torchscale mixture of experts", "unsupported checkpoint: moe_freq / moe_expert_count / use_xmoe (mixture-of-experts layers are not plain RetNet)"),
    ("config: unknown activation", r#"unsupported checkpoint: activation_fn = "relu" (supported activations are swish (silu) and gelu)"#),
    ("weights: model directory missing", "<dir>/config.json: No such file or directory (os error 2)"),
    ("weights: no safetensors file", "<dir>: no model.safetensors or model.safetensors.index.json in the model directory"),
    ("weights: file shorter than the 8-byte header length", "<dir>/model.safetensors: corrupt safetensors file: the file is 5 bytes long, shorter than a safetensors header"),
    ("weights: truncated (half the file)", "<dir>/model.safetensors: corrupt safetensors file: truncated file or corrupt header length (MetadataIncompleteBuffer)"),
    ("weights: garbage inside the JSON header", "<dir>/model.safetensors: corrupt safetensors file: invalid JSON in header: expected value at line 1 column 1"),
    ("weights: header length claiming exabytes", "<dir>/model.safetensors: corrupt safetensors file: truncated file or corrupt header length (HeaderTooLarge)"),
    ("weights: a tensor claiming 4 GB in a small file", "<dir>/model.safetensors: corrupt safetensors file: truncated file or corrupt header length (MetadataIncompleteBuffer)"),
    ("weights: missing tensor", "missing tensor `model.layers.1.attn.k_proj.weight` in <dir>"),
    ("weights: wrong shape", "tensor `model.layers.0.mlp.down_proj.weight` has shape [63, 112], but the config implies [64, 112]"),
    ("weights: unsupported dtype (I32)", "tensor `model.norm.weight` has dtype I32; supported dtypes are F32, F16 and BF16"),
    ("weights: torchscale v1 checkpoint (biases)", "unsupported checkpoint: layers.0.ffn / retention biases (this is a torchscale v1 checkpoint (biased projections, FFN without gate); only v2 (torchscale 0.3.0) checkpoints are supported)"),
    ("weights: missing shard", "<dir>/model-00002-of-00002.safetensors: No such file or directory (os error 2)"),
    ("weights: shard index naming a file outside the directory", "<dir>/model.safetensors.index.json: shard name `../model.safetensors` leaves the model directory"),
    ("weights: config has fewer layers than the weights", "invalid config: the weights hold layer 1 but the config says 1 layers"),
    ("weights: config has more layers than the weights", "missing tensor `model.layers.2.attn.g_norm.weight` in <dir>"),
    ("weights: config vocabulary wider than the embeddings", "tensor `embed_tokens.weight` has shape [97, 48], but the config implies [98, 48]"),
    ("tokens: empty", "the token list is empty"),
    ("tokens: an id ≥ vocab", "token id 97 at position 1 is out of range: the vocabulary has 97 entries (ids 0..97)"),
    ("chunk size 0", "chunk size must be at least 1"),
    ("state file from another model", "<dir>/state.safetensors: this state belongs to another model (fingerprint 9103db054dab5e65, this model's is b4563550abc3e5b9)"),
    ("state file: not a state file (a checkpoint)", "<fixtures>/fla_basic/model.safetensors: not a retnet state file"),
    ("config: a layer count beyond what the weights files hold", "invalid config: the config's layer count 100000 is more than the weights files' 25 tensors can hold"),
    ("config: sizes whose product overflows", "invalid config: vocab size 4611686018427387904 × model width 48 × 4 bytes overflows"),
    ("config: a recurrent state over 4 GiB (a huge head dimension)", "invalid config: the recurrent state of one sequence (layer count 2 × head count 1 × key dim per head 48 × value dim per head 68719476736 × 4 bytes) is 26388279066624 bytes, over the 4294967296 bytes a session may hold"),
    ("config: zero `norm_eps` (0/0 on an all-zero row)", "invalid config: norm eps is 0; it must be positive and finite"),
    ("config: `config.json` is a FIFO", "<dir>/config.json: not a regular file (a FIFO); give a file"),
    ("weights: NaN in an f32 tensor", "tensor `model.norm.weight` holds a non-finite value (NaN) at element 2"),
    ("weights: an f16 NaN bit pattern", "tensor `model.layers.0.attn_norm.weight` holds a non-finite value (NaN) at element 0"),
    ("weights: a log decay above 0 (γ > 1)", "tensor `retnet_rel_pos.decay` holds the log decay 0.25 at element 1: a decay above 1 grows without bound (log γ must be ≤ 0)"),
    ("weights: a header naming a tensor twice", "<dir>/model.safetensors: corrupt safetensors file: the header names tensor `layer_norm.weight` twice"),
    ("logits: non-finite (the arithmetic overflowed)", "the logits at position 0 are not finite (NaN): the model's arithmetic overflowed"),
    ("tokens: past the 2^32 − 1 positions a session holds", "the sequence would reach position 4294967296, beyond the 4294967295 tokens a session can hold"),
    ("state file: a position past what a backend represents", "<dir>/far.safetensors: position 4294967300 is beyond the 4294967295 tokens a session can hold"),
    ("state file: a history id ≥ vocab", "<dir>/history.safetensors: history token 97 is out of range: the vocabulary has 97 entries"),
    ("state file: NaN in the state", "<dir>/nan.safetensors: tensor `layers.0` holds a non-finite value at element 3"),
    ("`CpuModel::new`: weights with a layer missing", "invalid config: the weights have 1 layers, the config 2"),
];

/// The table in docs/errors.md itself: every row of [`EXPECTED`] is there, with its message
/// word for word (in the table's backticks), so the document cannot drift from the code.
#[test]
fn docs_errors_md_holds_every_library_row_verbatim() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/errors.md"))
        .unwrap();
    for (what, message) in EXPECTED {
        let cell = if message.contains('`') {
            format!("`` {message} ``")
        } else {
            format!("`{message}`")
        };
        let found = doc
            .lines()
            .any(|l| l.contains(&format!(" | {what} | ")) && l.contains(&format!(" | {cell} |")));
        assert!(found, "docs/errors.md has no row `| {what} | {cell} |`");
    }
}
