//! Helpers shared by the integration tests: the committed peer fixtures and ways to damage
//! copies of them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

/// The error measure of every comparison (max|got − want| / max|want|, +∞ on any non-finite
/// value on either side) and the assertion built on it.
#[allow(unused_imports)]
pub use retnet_testkit::{assert_close_f32, rel_max_err};

/// `tests/fixtures`.
pub fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every fixture directory (those holding a config.json), sorted by name.
pub fn all_fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_root())
        .expect("tests/fixtures exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// One fixture by name.
pub fn fixture(name: &str) -> PathBuf {
    let dir = fixtures_root().join(name);
    assert!(
        dir.join("config.json").is_file(),
        "fixture {name} is missing"
    );
    dir
}

/// The token ids of a fixture.
pub fn fixture_tokens(dir: &Path) -> Vec<u32> {
    let text = std::fs::read_to_string(dir.join("tokens.json")).expect("tokens.json");
    serde_json::from_str(&text).expect("tokens.json is an array of ids")
}

/// Reads the f32 tensor `logits` of a safetensors file: (shape, values).
pub fn read_logits(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).expect("logits file");
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let view = st.tensor("logits").expect("tensor `logits`");
    assert_eq!(view.dtype(), Dtype::F32);
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

/// A copy of a fixture in a fresh temporary directory.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(fixture(name)).expect("fixture dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, tmp.path().join(path.file_name().expect("name"))).expect("copy");
    }
    tmp
}

/// One tensor as raw parts, for rewriting.
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Rewrites `model.safetensors` of `dir` through `edit`, which may change or drop tensors.
pub fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, RawTensor>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).expect("weights");
    let st = SafeTensors::deserialize(&bytes).expect("valid");
    let mut tensors: HashMap<String, RawTensor> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let raw = RawTensor {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            };
            (name, raw)
        })
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            let view = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .expect("consistent tensor");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).expect("write weights");
}

/// Edits `config.json` of `dir` as JSON.
pub fn rewrite_config(
    dir: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) {
    let path = dir.join("config.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
    edit(value.as_object_mut().expect("object"));
    std::fs::write(&path, serde_json::to_string_pretty(&value).expect("json")).expect("write");
}

/// The fixtures without attention layers (pure RetNet): what engines that run retention layers
/// only take (the fast CPU engine, the GPU model until its attention kernels are wired in).
#[allow(dead_code)]
pub fn retention_fixtures() -> Vec<PathBuf> {
    all_fixtures()
        .into_iter()
        .filter(|dir| {
            let json = std::fs::read_to_string(dir.join("config.json")).expect("readable config");
            !retnet_model::ModelConfig::from_json_str(&json)
                .expect("fixture configs parse")
                .is_hybrid()
        })
        .collect()
}

/// `bytes` (a state file) with its metadata edited and its tensors' values mapped.
pub fn edit_state_file(
    bytes: &[u8],
    meta: impl FnOnce(&mut HashMap<String, String>),
    values: impl Fn(&str, &mut Vec<f32>),
) -> Vec<u8> {
    let (_, m) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let mut metadata = m.metadata().clone().unwrap_or_default();
    meta(&mut metadata);
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let mut v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            values(&name, &mut v);
            (
                name,
                view.shape().to_vec(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                .unwrap();
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize(views, Some(metadata)).unwrap()
}

#[allow(unused_imports)]
pub use retnet_testkit::GPU_F32_TOLERANCE;

/// [`retnet_testkit::f16_weights_tolerance`] of a loaded model's matrices.
/// `tensor_cores`: the GPU model runs its projections on the tensor cores (f16 inputs).
pub fn f16_weights_tolerance(model: &retnet::CpuModel, tensor_cores: bool) -> f64 {
    let w = model.weights();
    let mut matrices = vec![&w.embed];
    matrices.extend(w.head.as_ref());
    for layer in &w.layers {
        matrices.extend([
            &layer.q_proj,
            &layer.k_proj,
            &layer.v_proj,
            &layer.g_proj,
            &layer.out_proj,
            &layer.ffn_act,
            &layer.ffn_lin,
            &layer.ffn_down,
        ]);
    }
    retnet_testkit::f16_weights_tolerance(
        w.layers.len(),
        matrices.into_iter().map(|m| &m.data[..]),
        tensor_cores,
    )
}
