//! Bad checkpoints and inputs give typed errors that name the problem, never panics.

mod common;

use common::*;
use retnet::{CpuModel, ModelError, RetentionForm};
use safetensors::Dtype;

const TS: &str = "torchscale_swish_tied";
const FLA: &str = "fla_basic";

fn load_err(dir: &std::path::Path) -> ModelError {
    match CpuModel::load(dir) {
        Ok(_) => panic!("{} loaded, but should not have", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_directory() {
    let e = load_err(std::path::Path::new("/nonexistent/model/dir"));
    assert!(matches!(e, ModelError::Io { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/model/dir"), "{e}");
}

#[test]
fn missing_weights_file() {
    let dir = copy_fixture(TS);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::NoWeights { .. }), "{e}");
}

#[test]
fn truncated_weights_file() {
    let dir = copy_fixture(TS);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for keep in [0, 5, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let e = load_err(dir.path());
        assert!(matches!(e, ModelError::Safetensors { .. }), "{keep}: {e}");
        assert!(e.to_string().contains("model.safetensors"), "{e}");
    }
}

#[test]
fn corrupt_header() {
    let dir = copy_fixture(TS);
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    // Garbage inside the JSON header.
    for b in &mut bytes[8..40] {
        *b = b'#';
    }
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        load_err(dir.path()),
        ModelError::Safetensors { .. }
    ));
    // A header length that claims far more than the file holds must not allocate it.
    bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        load_err(dir.path()),
        ModelError::Safetensors { .. }
    ));
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture(FLA);
    let name = "model.layers.1.attn.k_proj.weight";
    rewrite_weights(dir.path(), |t| {
        t.remove(name).expect("fixture has the tensor");
    });
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::MissingTensor { .. }), "{e}");
    assert!(e.to_string().contains(name), "{e}");
}

#[test]
fn wrong_shape_names_expected_and_found() {
    let dir = copy_fixture(FLA);
    let name = "model.layers.0.mlp.down_proj.weight";
    rewrite_weights(dir.path(), |t| {
        let w = t.get_mut(name).unwrap();
        let row = w.data.len() / w.shape[0];
        w.data.truncate(w.data.len() - row);
        w.shape[0] -= 1;
    });
    let e = load_err(dir.path());
    let ModelError::ShapeMismatch {
        name: got,
        expected,
        found,
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(got, name);
    assert_eq!(found[0] + 1, expected[0]);
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = copy_fixture(FLA);
    let name = "model.norm.weight";
    rewrite_weights(dir.path(), |t| {
        let w = t.get_mut(name).unwrap();
        // Same bytes reinterpreted as i32: a dtype the runtime does not read.
        assert_eq!(w.dtype, Dtype::F32);
        w.dtype = Dtype::I32;
    });
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::UnsupportedDtype { .. }), "{e}");
    assert!(
        e.to_string().contains(name) && e.to_string().contains("I32"),
        "{e}"
    );
}

#[test]
fn heads_that_do_not_divide_the_width() {
    let dir = copy_fixture(TS);
    rewrite_config(dir.path(), |c| {
        c.insert("decoder_retention_heads".into(), 5.into());
    });
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::InvalidConfig(_)), "{e}");
    assert!(e.to_string().contains("not divisible by 5 heads"), "{e}");
}

#[test]
fn zero_sizes_are_refused() {
    let dir = copy_fixture(FLA);
    rewrite_config(dir.path(), |c| {
        c.insert("num_hidden_layers".into(), 0.into());
    });
    assert!(load_err(dir.path())
        .to_string()
        .contains("layer count is zero"));
}

#[test]
fn invalid_config_json() {
    let dir = copy_fixture(TS);
    std::fs::write(
        dir.path().join("config.json"),
        "{\"decoder_embed_dim\": 48,",
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::Json { .. }), "{e}");
    assert!(e.to_string().contains("config.json"), "{e}");
}

#[test]
fn config_weights_disagreement() {
    // The config says fewer layers than the file holds.
    let dir = copy_fixture(FLA);
    rewrite_config(dir.path(), |c| {
        c.insert("num_hidden_layers".into(), 1.into());
    });
    assert!(load_err(dir.path())
        .to_string()
        .contains("the weights hold layer 1"));
    // The config says a wider vocabulary than the embeddings have.
    let dir = copy_fixture(TS);
    rewrite_config(dir.path(), |c| {
        let v = c["vocab_size"].as_u64().unwrap();
        c.insert("vocab_size".into(), (v + 1).into());
    });
    assert!(matches!(
        load_err(dir.path()),
        ModelError::ShapeMismatch { .. }
    ));
}

#[test]
fn unsupported_options_are_named() {
    let dir = copy_fixture(FLA);
    rewrite_config(dir.path(), |c| {
        c.insert("use_short_conv".into(), true.into());
    });
    let e = load_err(dir.path());
    assert!(
        matches!(e, ModelError::Unsupported { .. }) && e.to_string().contains("use_short_conv")
    );
}

#[test]
fn missing_shard_is_named() {
    let sharded = all_fixtures()
        .into_iter()
        .find(|d| d.join("model.safetensors.index.json").is_file())
        .expect("a sharded fixture");
    let name = sharded.file_name().unwrap().to_str().unwrap().to_string();
    let dir = copy_fixture(&name);
    let shard = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("model-")
        })
        .unwrap();
    std::fs::remove_file(&shard).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.to_string()
            .contains(shard.file_name().unwrap().to_str().unwrap()),
        "{e}"
    );
}

#[test]
fn bad_token_lists() {
    let model = CpuModel::load(&fixture(TS)).unwrap();
    let vocab = model.config().vocab_size as u32;
    let form = RetentionForm::Recurrent;
    assert!(matches!(
        model.logits(&[], form),
        Err(ModelError::EmptyTokens)
    ));
    let e = model.logits(&[0, vocab], form).unwrap_err();
    assert!(
        matches!(e, ModelError::TokenOutOfRange { position: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains(&vocab.to_string()));
    assert!(matches!(
        model.logits(&[0], RetentionForm::Chunkwise { chunk_size: 0 }),
        Err(ModelError::ZeroChunkSize)
    ));
}
