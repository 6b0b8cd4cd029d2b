//! Weights streamed from the checkpoint to the GPU: the same model as one uploaded from the CPU
//! reference (bit for bit), the same fingerprint on both backends, states refused by another
//! checkpoint of the same config, and matrices split by rows where a binding is too small.
//!
//! Needs a wgpu adapter (lavapipe in CI); the adapter policy is `retnet_testkit::gpu`'s.

mod common;

use common::*;
use pollster::block_on;
use retnet::model::{
    CpuEngine, CpuSession, Generator, GpuBatch, GpuModel, GpuOptions, LogitRows, SamplingParams,
    WeightPrecision,
};
use retnet::runtime::Device;
use retnet::{CpuModel, ModelConfig, ModelWeights, RetentionForm};
use retnet_testkit::gpu::{new_device as device, new_device_with as device_with};

/// Every precision the adapter can load (the block formats keep the embeddings and head f16).
fn precisions(device: &Device) -> Vec<WeightPrecision> {
    if device.supports_half_weights() {
        vec![
            WeightPrecision::F32,
            WeightPrecision::F16,
            WeightPrecision::Int8,
            WeightPrecision::Q4,
        ]
    } else {
        eprintln!("this adapter cannot read f16 weights: f32 only");
        vec![WeightPrecision::F32]
    }
}

#[test]
fn a_streamed_model_is_the_model_uploaded_from_the_cpu_reference() {
    // Every fixture (f32, f16, bf16; one file and shards; both families): streaming each tensor
    // to its rows of the fused matrices must give exactly the model that concatenating host
    // f32 copies gives, in both precisions.
    let Some(device) = device() else { return };
    for dir in retention_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let cpu = CpuModel::load(&dir).unwrap();
        let tokens = fixture_tokens(&dir);
        for weights in precisions(&device) {
            let options = GpuOptions { weights };
            let streamed = block_on(GpuModel::load(device.clone(), &dir, options)).unwrap();
            let uploaded = GpuModel::new(device.clone(), &cpu, options).unwrap();
            assert_eq!(streamed.buffer_bytes(), uploaded.buffer_bytes(), "{name}");
            let form = RetentionForm::Chunkwise { chunk_size: 16 };
            let a = block_on(streamed.logits(&tokens, form)).unwrap();
            let b = block_on(uploaded.logits(&tokens, form)).unwrap();
            assert!(a.iter().all(|v| v.is_finite()), "{name} {weights:?}");
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name} {weights:?}: streamed and uploaded models differ"
            );
        }
    }
}

#[test]
fn the_fingerprint_is_the_weights_on_both_backends() {
    let Some(device) = device() else { return };
    for name in ["torchscale_swish_tied", "fla_gqa_tied_bf16_sharded"] {
        let dir = fixture(name);
        let cpu = CpuModel::load(&dir).unwrap();
        let from_memory = cpu.weights().fingerprint();
        assert_eq!(cpu.fingerprint(), &from_memory, "{name}");
        for weights in precisions(&device) {
            let options = GpuOptions { weights };
            let gpu = block_on(GpuModel::load(device.clone(), &dir, options)).unwrap();
            assert_eq!(gpu.fingerprint(), cpu.fingerprint(), "{name} {weights:?}");
        }
    }
    // Another checkpoint, another fingerprint.
    let a = CpuModel::load(&fixture("torchscale_swish_tied")).unwrap();
    let b = CpuModel::load(&fixture("fla_basic")).unwrap();
    assert_ne!(a.fingerprint(), b.fingerprint());
}

/// A copy of `fixture` with one weight of one matrix changed (the config is untouched).
fn retrained_copy(fixture: &str, tensor: &str) -> tempfile::TempDir {
    let dir = copy_fixture(fixture);
    rewrite_weights(dir.path(), |tensors| {
        let t = tensors.get_mut(tensor).expect("the tensor exists");
        // Flip the lowest mantissa bit of the first element (any dtype is little-endian).
        t.data[0] ^= 1;
    });
    dir
}

#[test]
fn a_state_of_another_checkpoint_with_the_same_config_is_refused_on_both_backends() {
    let Some(device) = device() else { return };
    let name = "torchscale_swish_tied";
    let original = fixture(name);
    let other = retrained_copy(name, "layers.1.ffn.fc2.weight");
    let config = |dir: &std::path::Path| {
        ModelConfig::from_file(&dir.join("config.json")).map(|c| format!("{c:?}"))
    };
    assert_eq!(config(&original).unwrap(), config(other.path()).unwrap());

    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("state.safetensors");
    let cpu = CpuModel::load(&original).unwrap();
    let mut session = CpuSession::new(CpuEngine::new(&cpu));
    block_on(session.prefill(&[4, 2, 7])).unwrap();
    block_on(session.next_token(&SamplingParams::greedy())).unwrap();
    block_on(session.save(&saved)).unwrap();

    let refused = |e: retnet::ModelError| {
        let message = e.to_string();
        assert!(
            message.contains("belongs to another checkpoint with the same config"),
            "{message}"
        );
    };
    // CPU: the other checkpoint refuses it, the original resumes it.
    let other_cpu = CpuModel::load(other.path()).unwrap();
    assert_ne!(other_cpu.fingerprint(), cpu.fingerprint());
    refused(
        CpuSession::load(CpuEngine::new(&other_cpu), &saved)
            .err()
            .unwrap(),
    );
    CpuSession::load(CpuEngine::new(&cpu), &saved).unwrap();

    // GPU (streamed loads): the same, and a state the GPU saves resumes on the CPU.
    let options = GpuOptions::default();
    let gpu = block_on(GpuModel::load(device.clone(), &original, options)).unwrap();
    let other_gpu = block_on(GpuModel::load(device.clone(), other.path(), options)).unwrap();
    refused(
        Generator::load(other_gpu.session().unwrap(), &saved)
            .err()
            .unwrap(),
    );
    let mut resumed = Generator::load(gpu.session().unwrap(), &saved).unwrap();
    block_on(resumed.next_token(&SamplingParams::greedy())).unwrap();
    let bytes = block_on(resumed.save_bytes()).unwrap();
    refused(
        CpuSession::load_bytes(CpuEngine::new(&other_cpu), "state", &bytes)
            .err()
            .unwrap(),
    );
    refused(
        Generator::load_bytes(other_gpu.session().unwrap(), "state", &bytes)
            .err()
            .unwrap(),
    );
    CpuSession::load_bytes(CpuEngine::new(&cpu), "state", &bytes).unwrap();
}

/// Deterministic pseudo-random values in [-scale, scale).
fn random(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// An fla model (untied head) wide enough that its matrices dwarf its activation buffers, with
/// random weights.
fn wide_model() -> CpuModel {
    let config = ModelConfig::from_json_str(
        r#"{"model_type": "retnet", "hidden_size": 256, "num_heads": 4, "num_hidden_layers": 2,
            "vocab_size": 1000, "expand_k": 1, "expand_v": 1, "intermediate_size": 384,
            "hidden_ratio": 2, "tie_word_embeddings": false, "elementwise_affine": true,
            "use_short_conv": false, "attn_mode": "chunk", "norm_eps": 1e-6}"#,
    )
    .unwrap();
    let mut seed = 0;
    let mut next = |len: usize, scale: f32| {
        seed += 1;
        random(len, seed, scale)
    };
    let weights = ModelWeights::from_source(&config, &ZeroSource(&config), &mut |_, _| {})
        .unwrap()
        .0;
    let mut weights = weights;
    let linear_scale = 1.0 / (config.d_model as f32).sqrt();
    for m in [&mut weights.embed, weights.head.as_mut().unwrap()] {
        m.data = next(m.data.len(), 1.0);
    }
    for layer in &mut weights.layers {
        for m in [
            &mut layer.q_proj,
            &mut layer.k_proj,
            &mut layer.v_proj,
            &mut layer.g_proj,
            &mut layer.out_proj,
            &mut layer.ffn_act,
            &mut layer.ffn_lin,
            &mut layer.ffn_down,
        ] {
            m.data = next(m.data.len(), linear_scale);
        }
        for v in [&mut layer.retention_norm, &mut layer.ffn_norm] {
            *v = next(v.len(), 0.5).iter().map(|x| 1.0 + x).collect();
        }
        if let Some(v) = &mut layer.head_norm {
            *v = next(v.len(), 0.5).iter().map(|x| 1.0 + x).collect();
        }
    }
    if let Some(v) = &mut weights.final_norm {
        *v = next(v.len(), 0.5).iter().map(|x| 1.0 + x).collect();
    }
    CpuModel::new(config, weights).unwrap()
}

/// Zero matrices, unit norms and the formulas' decays and angles, shaped for `config`.
struct ZeroSource<'a>(&'a ModelConfig);

impl retnet::model::WeightSource for ZeroSource<'_> {
    fn len(&self, role: retnet::model::TensorRole) -> Option<usize> {
        role.shape(self.0).map(|s| s.iter().product())
    }

    fn read(
        &self,
        role: retnet::model::TensorRole,
        _start: usize,
        out: &mut [f32],
    ) -> retnet::model::Result<()> {
        use retnet::model::TensorRole as R;
        match role {
            R::LogDecay => out.copy_from_slice(&retnet::model::weights::decay_formula(out.len())),
            R::RotaryTheta => out.copy_from_slice(&retnet::model::weights::rotary_formula(
                self.0.rotary,
                2 * out.len(),
            )),
            _ => out.fill(0.0),
        }
        Ok(())
    }
}

#[test]
fn matrices_over_the_binding_limit_are_split_by_rows() {
    // A binding limit of 256 KiB (as if the adapter were that small) splits every matrix of the
    // wide model into 2 to 4 row blocks (the 1000 × 256 f32 embeddings and head: 1000 KB), while
    // the activations of a 40-token prefill still fit. Split or not, each output is the same
    // dot product: the logits must agree bit for bit, in prefill (tiled matmul), decode
    // (matvec) and batched decode (batched matvec).
    let Some(full) = device() else { return };
    let mut small_options = retnet_testkit::gpu::env_options();
    small_options.max_storage_binding_size = Some(256 << 10);
    let Some(small) = device_with(&small_options) else {
        return;
    };
    assert_eq!(small.limits().max_storage_buffer_binding_size, 256 << 10);
    let cpu = wide_model();
    let tokens: Vec<u32> = (0..40).map(|i| (i * 37 % 1000) as u32).collect();
    let vocab = cpu.config().vocab_size;
    for weights in precisions(&full) {
        let options = GpuOptions { weights };
        let whole = GpuModel::new(full.clone(), &cpu, options).unwrap();
        let split = GpuModel::new(small.clone(), &cpu, options).unwrap();
        let run = |model: &GpuModel| {
            let mut session = model.session().unwrap();
            let form = RetentionForm::Chunkwise { chunk_size: 16 };
            let mut out = block_on(session.forward(&tokens[..36], form, LogitRows::All)).unwrap();
            for &t in &tokens[36..] {
                out.extend(block_on(session.step(t)).unwrap());
            }
            let mut batch = GpuBatch::new(model, 3).unwrap();
            let slots: Vec<usize> = (0..3).map(|_| batch.insert(&session).unwrap()).collect();
            let inputs: Vec<(usize, u32)> = slots.iter().map(|&s| (s, s as u32 + 1)).collect();
            out.extend(block_on(batch.step(&inputs)).unwrap());
            out
        };
        let (a, b) = (run(&whole), run(&split));
        assert_eq!(a.len(), (tokens.len() + 3) * vocab);
        assert!(a.iter().all(|v| v.is_finite()));
        let differing = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(differing, 0, "{weights:?}: split and whole models differ");
        // And both are the model: against the CPU reference on the prefill rows.
        // (The block formats' reference is the CPU with the same decoded blocks.)
        let stored = cpu.clone().stored_as(weights).unwrap();
        let want = stored
            .logits(&tokens[..36], RetentionForm::Recurrent)
            .unwrap();
        let tolerance = match weights {
            WeightPrecision::F16 => f16_weights_tolerance(&cpu, split.uses_tensor_cores()),
            // On tensor cores the block formats prefill through an f16 copy of their blocks.
            WeightPrecision::Int8 | WeightPrecision::Q4 if split.uses_tensor_cores() => {
                f16_weights_tolerance(&stored, true)
            }
            _ => GPU_F32_TOLERANCE,
        };
        assert_close_f32(
            &format!("{weights:?}: split model vs the CPU reference"),
            &b[..36 * vocab],
            &want,
            tolerance,
        );
    }
}
