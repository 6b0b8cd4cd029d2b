//! GPU limits and faults come back as typed errors, promptly, never as hangs or aborts; and a
//! new device, model and session work after a lost one (issue 6 §4, `docs/errors.md` G rows).
//!
//! Needs a wgpu adapter (lavapipe in CI); the adapter policy is `retnet_testkit::gpu`'s.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use retnet::model::{
    GpuBatch, GpuModel, GpuOptions, LayerWeights, Linear, LogitRows, ModelWeights,
};
use retnet::runtime::{wgpu, RuntimeError};
use retnet::{CpuModel, ModelConfig, ModelError, RetentionForm};
use retnet_testkit::gpu::new_device as device;

/// A fault must be reported within this time (a hang would block forever).
const PROMPT: Duration = Duration::from_secs(20);

fn is_lost(e: &ModelError) -> bool {
    matches!(e, ModelError::Gpu(RuntimeError::DeviceLost { .. }))
}

/// After the loss, a fresh device, model and session give the CPU reference's logits.
fn recovers(model: &CpuModel, tokens: &[u32]) {
    let device = device().expect("a second device");
    let gpu = GpuModel::new(device, model, GpuOptions::default()).unwrap();
    let mut session = gpu.session().unwrap();
    let got = pollster::block_on(session.forward(
        tokens,
        RetentionForm::Chunkwise { chunk_size: 16 },
        LogitRows::All,
    ))
    .unwrap();
    let want = model
        .logits(tokens, RetentionForm::Chunkwise { chunk_size: 16 })
        .unwrap();
    assert_close_f32("logits after recovery", &got, &want, GPU_F32_TOLERANCE);
}

#[test]
fn a_lost_device_fails_every_call_promptly_and_a_new_one_works() {
    let Some(device) = device() else { return };
    let dir = fixture("torchscale_swish_tied");
    let model = CpuModel::load(&dir).unwrap();
    let tokens = fixture_tokens(&dir);
    let gpu = GpuModel::new(Arc::clone(&device), &model, GpuOptions::default()).unwrap();
    let mut session = gpu.session().unwrap();
    pollster::block_on(session.prefill(&tokens[..10])).unwrap();

    device.simulate_loss();
    let start = Instant::now();
    let step = pollster::block_on(session.step(tokens[10])).unwrap_err();
    assert!(is_lost(&step), "step: {step}");
    assert_eq!(
        step.to_string(),
        "the GPU device was lost (simulated loss (Device::simulate_loss)); create a new device"
    );
    let prefill = pollster::block_on(session.prefill(&tokens[10..20])).unwrap_err();
    assert!(is_lost(&prefill), "prefill: {prefill}");
    let state = &session.states()[0];
    let read = pollster::block_on(device.read_f32(state, 0, 4)).unwrap_err();
    assert!(
        matches!(read, RuntimeError::DeviceLost { .. }),
        "read: {read}"
    );
    assert!(matches!(
        gpu.session().map(|_| ()).unwrap_err(),
        ModelError::Gpu(RuntimeError::DeviceLost { .. })
    ));
    assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());

    drop(session);
    drop(gpu);
    drop(device);
    recovers(&model, &tokens);
}

/// A loss that wgpu reports itself (not through `simulate_loss`): the device-lost callback
/// records it and the next read-back says so instead of waiting forever.
#[test]
fn a_loss_reported_by_wgpu_ends_the_wait_of_a_read_back() {
    let Some(device) = device() else { return };
    let dir = fixture("torchscale_swish_tied");
    let model = CpuModel::load(&dir).unwrap();
    let tokens = fixture_tokens(&dir);
    let gpu = GpuModel::new(Arc::clone(&device), &model, GpuOptions::default()).unwrap();
    let mut session = gpu.session().unwrap();
    pollster::block_on(session.prefill(&tokens[..10])).unwrap();

    device.wgpu_device().destroy();
    let start = Instant::now();
    // The first call may still be submitted before wgpu reports the loss; within a few calls
    // it must fail, and as DeviceLost.
    let error = (10..20)
        .find_map(|i| pollster::block_on(session.step(tokens[i])).err())
        .expect("a call on a destroyed device fails");
    assert!(is_lost(&error), "{error}");
    assert!(device.lost_reason().is_some());
    assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());

    drop(session);
    drop(gpu);
    drop(device);
    recovers(&model, &tokens);
}

/// The allocation error scopes: a buffer wgpu refuses comes back as an error from the call that
/// made it. A real out-of-memory cannot be provoked safely here (lavapipe allocates host memory
/// and would take the machine's RAM first); the out-of-memory scope is the same code path with
/// the other filter, so a validation failure inside it is what this checks.
#[test]
fn a_refused_allocation_is_an_error_at_once() {
    let Some(device) = device() else { return };
    let max = device.limits().max_buffer_size;
    let error = device
        .create_buffer_checked(&wgpu::BufferDescriptor {
            label: Some("too big"),
            size: max.saturating_add(1 << 20) & !3,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
        .unwrap_err();
    assert!(
        matches!(&error, RuntimeError::Wgpu(m) if m.starts_with("buffer \"too big\" of")),
        "{error}"
    );
    // MAP_READ with STORAGE needs a feature the device does not enable.
    let error = device
        .create_buffer_checked(&wgpu::BufferDescriptor {
            label: Some("bad usage"),
            size: 256,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
        .unwrap_err();
    assert!(matches!(error, RuntimeError::Wgpu(_)), "{error}");
    // The device is still usable afterwards.
    let ok = device.upload_f32("fine", &[1.0, 2.0]).unwrap();
    assert_eq!(
        pollster::block_on(device.read_f32(&ok, 0, 2)).unwrap(),
        vec![1.0, 2.0]
    );
}

/// A small torchscale model with random weights (for shapes no fixture has).
fn random_model(vocab: usize, d: usize) -> CpuModel {
    let json = format!(
        r#"{{"decoder_embed_dim": {d}, "decoder_value_embed_dim": {d},
            "decoder_ffn_embed_dim": {d}, "decoder_layers": 1, "decoder_retention_heads": 1,
            "vocab_size": {vocab}, "activation_fn": "swish",
            "share_decoder_input_output_embed": true}}"#
    );
    let c = ModelConfig::from_json_str(&json).unwrap();
    let mut x = 1u64;
    let mut linear = |out_features: usize, in_features: usize| Linear {
        out_features,
        in_features,
        data: (0..out_features * in_features)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
            })
            .collect(),
    };
    let layer = LayerWeights {
        retention_norm: vec![1.0; d],
        q_proj: linear(c.query_width(), d),
        k_proj: linear(c.key_width(), d),
        v_proj: linear(c.kv_value_width(), d),
        g_proj: linear(c.value_width(), d),
        out_proj: linear(d, c.value_width()),
        head_norm: None,
        ffn_norm: vec![1.0; d],
        ffn_act: linear(c.ffn_dim, d),
        ffn_lin: linear(c.ffn_dim, d),
        ffn_down: linear(d, c.ffn_dim),
        attention: None,
    };
    let weights = ModelWeights {
        embed: linear(vocab, d),
        embed_norm: None,
        layers: vec![layer],
        final_norm: Some(vec![1.0; d]),
        head: None,
        log_decay: retnet::model::weights::decay_formula(1),
        rotary_theta: retnet::model::weights::rotary_formula(c.rotary, c.head_k_dim),
    };
    CpuModel::new(c, weights).unwrap()
}

fn too_large(e: &ModelError) -> Option<(&str, &str)> {
    match e {
        ModelError::Gpu(RuntimeError::BufferTooLarge { label, limit, .. }) => {
            Some((label.as_str(), limit))
        }
        _ => None,
    }
}

/// Activations over the adapter's binding limit are refused before anything is allocated: all
/// logits of a 512-token span at a vocabulary of 70,000 need 143 MB (lavapipe binds 128 MiB;
/// on a larger adapter the test asks for proportionally more).
#[test]
fn activations_over_the_binding_limit_are_refused() {
    let Some(device) = device() else { return };
    let binding = device.limits().max_storage_buffer_binding_size;
    // 512 rows of logits must exceed one binding.
    let vocab = (binding / (512 * 4) + 1) as usize;
    if vocab > 4_000_000 {
        eprintln!("binding limit {binding}: a test vocabulary would be too large, skipped");
        return;
    }
    let model = random_model(vocab, 8);
    let gpu = GpuModel::new(Arc::clone(&device), &model, GpuOptions::default()).unwrap();
    let tokens: Vec<u32> = (0..512).collect();
    let mut session = gpu.session().unwrap();
    let error = pollster::block_on(session.forward(
        &tokens,
        RetentionForm::Chunkwise { chunk_size: 16 },
        LogitRows::All,
    ))
    .unwrap_err();
    assert_eq!(
        too_large(&error),
        Some(("logits", "max_storage_buffer_binding_size")),
        "{error}"
    );
    // The same session still works for what fits.
    let last = pollster::block_on(session.prefill(&tokens[..4])).unwrap();
    assert_eq!(last.len(), vocab);
}

/// A batch whose state pool would exceed one binding is refused at creation.
#[test]
fn a_batch_over_the_binding_limit_is_refused() {
    let Some(device) = device() else { return };
    let dir = fixture("torchscale_swish_tied");
    let model = CpuModel::load(&dir).unwrap();
    let gpu = GpuModel::new(Arc::clone(&device), &model, GpuOptions::default()).unwrap();
    let error = GpuBatch::new(&gpu, 100_000_000).map(|_| ()).unwrap_err();
    assert!(too_large(&error).is_some(), "{error}");
}

/// A weight matrix over the binding limit is split by rows (`tests/gpu_load.rs`), but a single
/// row over it cannot be: with bindings shrunk to 256 bytes, a 128-wide f32 embedding (512-byte
/// rows) is refused by name when the model is put on the GPU.
#[test]
fn a_weight_row_over_the_binding_limit_is_refused() {
    let mut options = retnet_testkit::gpu::env_options();
    options.max_storage_binding_size = Some(256);
    let Some(device) = retnet_testkit::gpu::new_device_with(&options) else {
        return;
    };
    let model = random_model(10, 128);
    let error = GpuModel::new(Arc::clone(&device), &model, GpuOptions::default())
        .map(|_| ())
        .unwrap_err();
    let (label, limit) = too_large(&error).unwrap_or_else(|| panic!("{error}"));
    assert_eq!(limit, "max_storage_buffer_binding_size");
    assert_eq!(label, "embed_tokens (one row)");
}
