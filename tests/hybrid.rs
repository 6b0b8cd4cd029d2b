//! Hybrid checkpoints (fla's `attn` block: chosen layers are softmax attention) on the CPU
//! reference: the fla 0.6.0 fixtures in every form and every way of feeding them, the key/value
//! cache (a ring for windowed layers), sessions saved and resumed, forks.

mod common;

use common::*;
use pollster::block_on;
use retnet::model::{CpuEngine, CpuSession, Engine, Generator, LayerKind, SamplingParams};
use retnet::{CpuModel, RetentionForm};

/// The issue's bar on the CPU: fla's logits come from float32 with an exact softmax attention
/// and a plain recurrent retention loop (tools/fixtures/make_fla_hybrid.py), which agree with
/// an independent float64 forward to < 2e-6 (meta.json); the reference accumulates in f64.
const HYBRID_TOLERANCE: f64 = 1e-5;

fn hybrid_fixtures() -> Vec<std::path::PathBuf> {
    all_fixtures()
        .into_iter()
        .filter(|d| CpuModel::load(d).unwrap().config().is_hybrid())
        .collect()
}

fn forms() -> Vec<RetentionForm> {
    let mut forms = vec![RetentionForm::Parallel, RetentionForm::Recurrent];
    for chunk_size in [1, 5, 16, 64] {
        forms.push(RetentionForm::Chunkwise { chunk_size });
    }
    forms
}

#[test]
fn the_fixtures_cover_what_the_issue_asks_for() {
    let dirs = hybrid_fixtures();
    assert!(dirs.len() >= 4, "found {} hybrid fixtures", dirs.len());
    let (mut full, mut window_short, mut gqa, mut bias, mut qk_norm, mut two_specs) =
        (false, false, false, false, false, false);
    let mut dtypes = std::collections::BTreeSet::new();
    for dir in &dirs {
        let model = CpuModel::load(dir).unwrap();
        let c = model.config();
        let tokens = fixture_tokens(dir);
        two_specs |= c.attention.len() >= 2;
        for a in &c.attention {
            full |= a.window.is_none();
            window_short |= a.window.is_some_and(|w| w < tokens.len());
            gqa |= a.num_kv_heads < a.num_heads;
            bias |= a.qkv_bias;
        }
        qk_norm |= model
            .weights()
            .layers
            .iter()
            .any(|l| l.attention.as_ref().is_some_and(|a| a.qk_norm.is_some()));
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
        dtypes.insert(meta["weights_dtype"].as_str().unwrap().to_string());
        // The independent float64 forward agreed with the peer when the fixture was made.
        let f64_err = meta["reference_f64_vs_peer_rel_max_err"].as_f64().unwrap();
        assert!(f64_err < 2e-6, "{}: {f64_err}", dir.display());
    }
    assert!(full && window_short && gqa && bias && qk_norm && two_specs);
    assert!(
        dtypes.contains("float32") && dtypes.contains("bfloat16"),
        "{dtypes:?}"
    );
}

#[test]
fn every_hybrid_fixture_matches_fla_in_every_form() {
    let mut failures = Vec::new();
    for dir in hybrid_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let model = CpuModel::load(&dir).unwrap();
        let tokens = fixture_tokens(&dir);
        let (shape, want) = read_logits(&dir.join("logits.safetensors"));
        assert_eq!(shape, vec![tokens.len(), model.config().vocab_size]);
        for form in forms() {
            let got = model.logits(&tokens, form).unwrap();
            let err = rel_max_err(&got, &want);
            println!("{name:30} {form:?}: vs fla {err:.2e}");
            if err > HYBRID_TOLERANCE {
                failures.push(format!("{name} {form:?}: {err:.2e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Spans of every length through the key/value cache: the attention of a span must see the
/// cached positions exactly as one pass does, also where a span crosses or exceeds a window.
#[test]
fn any_split_into_spans_matches_fla() {
    for dir in hybrid_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let model = CpuModel::load(&dir).unwrap();
        let tokens = fixture_tokens(&dir);
        let (_, want) = read_logits(&dir.join("logits.safetensors"));
        for spans in [
            vec![1],
            vec![3],
            vec![7, 1, 13, 2],
            vec![tokens.len() - 1, 1],
        ] {
            let mut state = model.new_state();
            let mut got = Vec::new();
            let mut at = 0;
            for &len in spans.iter().cycle() {
                if at == tokens.len() {
                    break;
                }
                let end = (at + len).min(tokens.len());
                let form = if end - at == 1 {
                    RetentionForm::Recurrent
                } else {
                    RetentionForm::Chunkwise { chunk_size: 4 }
                };
                got.extend(model.forward(&tokens[at..end], &mut state, form).unwrap());
                at = end;
            }
            assert_eq!(state.position, tokens.len());
            let err = rel_max_err(&got, &want);
            assert!(err <= HYBRID_TOLERANCE, "{name} spans {spans:?}: {err:.2e}");
        }
    }
}

#[test]
fn a_windowed_layer_keeps_a_ring_of_w_positions() {
    let dir = fixture("fla_hybrid_window_gqa_bias");
    let model = CpuModel::load(&dir).unwrap();
    let c = model.config().clone();
    let tokens = fixture_tokens(&dir);
    let mut state = model.new_state();
    for (n, &t) in tokens.iter().enumerate() {
        model
            .forward(&[t], &mut state, RetentionForm::Recurrent)
            .unwrap();
        for (layer, values) in state.layers.iter().enumerate() {
            let want = match c.layer_kind(layer) {
                LayerKind::Retention => c.retention_state_len(),
                LayerKind::Attention(a) => {
                    let w = a.window.unwrap();
                    (n + 1).min(w) * 2 * a.kv_width()
                }
            };
            assert_eq!(values.len(), want, "layer {layer} after {} tokens", n + 1);
        }
    }
    // A full-attention layer's cache grows with every position.
    let dir = fixture("fla_hybrid_full");
    let model = CpuModel::load(&dir).unwrap();
    let c = model.config().clone();
    let mut state = model.new_state();
    let tokens = fixture_tokens(&dir);
    model
        .forward(&tokens, &mut state, RetentionForm::Parallel)
        .unwrap();
    let LayerKind::Attention(a) = c.layer_kind(1) else {
        panic!("layer 1 is attention")
    };
    assert_eq!(state.layers[1].len(), tokens.len() * 2 * a.kv_width());
}

fn next_tokens(session: &mut CpuSession<'_>, count: usize) -> Vec<u32> {
    (0..count)
        .map(|_| block_on(session.next_token(&SamplingParams::greedy())).unwrap())
        .collect()
}

#[test]
fn greedy_generation_saved_and_resumed_equals_an_uninterrupted_run() {
    for dir in hybrid_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let model = CpuModel::load(&dir).unwrap();
        let prompt: Vec<u32> = fixture_tokens(&dir)[..9].to_vec();
        let params = SamplingParams::greedy();
        let mut whole = CpuSession::new(CpuEngine::new(&model));
        block_on(whole.prefill(&prompt)).unwrap();
        let want: Vec<u32> = (0..24)
            .map(|_| block_on(whole.next_token(&params)).unwrap())
            .collect();

        // Saved past every window (prompt 9 + 11 > 7, 5 and 12), to a file and to bytes.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.safetensors");
        let mut first = CpuSession::new(CpuEngine::new(&model));
        block_on(first.prefill(&prompt)).unwrap();
        let mut got: Vec<u32> = (0..11)
            .map(|_| block_on(first.next_token(&params)).unwrap())
            .collect();
        block_on(first.save(&path)).unwrap();
        let bytes = block_on(first.save_bytes()).unwrap();
        let mut forked = first.fork().unwrap();
        let mut resumed = CpuSession::load(CpuEngine::new(&model), &path).unwrap();
        let mut from_bytes =
            CpuSession::load_bytes(CpuEngine::new(&model), "<bytes>", &bytes).unwrap();
        let tail = next_tokens(&mut resumed, 13);
        assert_eq!(next_tokens(&mut from_bytes, 13), tail, "{name}: from bytes");
        assert_eq!(next_tokens(&mut forked, 13), tail, "{name}: fork");
        assert_eq!(next_tokens(&mut first, 13), tail, "{name}: the original");
        got.extend(tail);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn state_files_carry_the_key_value_caches_and_refuse_other_models() {
    let dir = fixture("fla_hybrid_window_gqa_bias");
    let model = CpuModel::load(&dir).unwrap();
    let tokens = fixture_tokens(&dir);
    let mut session = CpuSession::new(CpuEngine::new(&model));
    block_on(session.prefill(&tokens[..20])).unwrap();
    let bytes = block_on(session.save_bytes()).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let c = model.config();
    // Layer 0 is windowed attention (w = 7, 2 kv heads of dim 8), layer 1 retention.
    assert_eq!(st.tensor("layers.0").unwrap().shape(), [7, 2, 2, 8]);
    assert_eq!(
        st.tensor("layers.1").unwrap().shape(),
        [c.num_heads, c.head_k_dim, c.head_v_dim]
    );

    // Another attention shape is another model: the fingerprint covers the attn block.
    for change in [
        r#"{"layers": [0, 2], "num_heads": 4, "num_kv_heads": 2, "qkv_bias": true, "window_size": 8, "rope_theta": 500.0}"#,
        r#"{"layers": [0, 2], "num_heads": 4, "num_kv_heads": 2, "qkv_bias": true, "window_size": 7, "rope_theta": 1000.0}"#,
    ] {
        let other_dir = copy_fixture("fla_hybrid_window_gqa_bias");
        rewrite_config(other_dir.path(), |cfg| {
            cfg.insert("attn".into(), serde_json::from_str(change).unwrap());
        });
        let other = CpuModel::load(other_dir.path()).unwrap();
        let e = CpuSession::load_bytes(CpuEngine::new(&other), "<bytes>", &bytes)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("belongs to another model"), "{e}");
    }

    // A cache that does not fit the position is refused, on import as well as from a file.
    let mut engine = CpuEngine::new(&model);
    let mut layers = block_on(session.engine().export_state()).unwrap();
    let shorter = layers[0].len() - 1;
    layers[0].truncate(shorter);
    let e = engine.import_state(20, &layers).unwrap_err();
    assert!(e.to_string().contains("layer 0"), "{e}");
    let layers = block_on(session.engine().export_state()).unwrap();
    assert!(
        engine.import_state(3, &layers).is_err(),
        "3 positions need 3 slots, not 7"
    );
    engine.import_state(20, &layers).unwrap();
    assert_eq!(engine.position(), 20);
}

// ---- The GPU path (lavapipe in CI): attention kernels, key/value caches in GPU buffers. ----

use retnet::model::{GpuBatch, GpuModel, GpuOptions, LogitRows, WeightPrecision};
use retnet_testkit::gpu::new_device as gpu_device;

/// The issue's bar on the GPU with f32 weights (measured ≤ 7e-7 against fla on lavapipe: f32
/// kernels against fla's float32, each softmax an online f32 rescaling).
const HYBRID_GPU_TOLERANCE: f64 = 1e-4;

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// On a device with 8×8 cooperative matrices (CI's lavapipe 26: `RETNET_REQUIRE_COOP=1`) the
/// attention prefill of every fixture runs on the tensor cores, so the tests here check it.
#[test]
fn gpu_attention_prefill_uses_the_tensor_cores_where_the_device_has_them() {
    let Some(device) = gpu_device() else { return };
    let eight = device
        .coop_shape()
        .is_some_and(|s| s.tile == retnet_runtime::kernels::gemm_coop::CoopTile::Eight);
    if std::env::var("RETNET_REQUIRE_COOP").is_ok_and(|v| v == "1") {
        assert!(
            eight,
            "RETNET_REQUIRE_COOP=1 but the adapter has no 8×8 cooperative matrices"
        );
    }
    for dir in hybrid_fixtures() {
        let cpu = CpuModel::load(&dir).unwrap();
        let gpu = GpuModel::new(device.clone(), &cpu, GpuOptions::default()).unwrap();
        assert_eq!(
            gpu.attention_uses_tensor_cores(),
            eight,
            "{}",
            dir.display()
        );
    }
}

/// Spans of every length on the GPU, decode steps continuing past every window: the ring of
/// `w − 1 + span` slots must hold what each query sees, across spans of 1 and longer ones.
#[test]
fn gpu_spans_and_decode_past_the_window_match_fla() {
    let Some(device) = gpu_device() else { return };
    for dir in hybrid_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let cpu = CpuModel::load(&dir).unwrap();
        let gpu = GpuModel::new(device.clone(), &cpu, GpuOptions::default()).unwrap();
        let tokens = fixture_tokens(&dir);
        let (_, want) = read_logits(&dir.join("logits.safetensors"));
        for spans in [
            vec![1],
            vec![3],
            vec![7, 1, 13, 2],
            vec![tokens.len() - 1, 1],
        ] {
            let mut session = gpu.session().unwrap();
            let mut got = Vec::new();
            let mut at = 0;
            for &len in spans.iter().cycle() {
                if at == tokens.len() {
                    break;
                }
                let end = (at + len).min(tokens.len());
                let form = if end - at == 1 {
                    RetentionForm::Recurrent
                } else {
                    RetentionForm::Chunkwise { chunk_size: 4 }
                };
                let rows = block_on(session.forward(&tokens[at..end], form, LogitRows::All));
                got.extend(rows.unwrap());
                at = end;
            }
            assert_eq!(session.position(), tokens.len());
            let err = rel_max_err(&got, &want);
            println!("{name:30} GPU spans {spans:?}: vs fla {err:.2e}");
            assert!(
                err <= HYBRID_GPU_TOLERANCE,
                "{name} spans {spans:?}: {err:.2e}"
            );
        }
    }
}

/// A state saved on one backend resumes on the other: the GPU's caches (a ring of its own
/// size) export to the CPU reference's layout and import from it.
#[test]
fn gpu_caches_export_as_the_cpu_reference_lays_them_out() {
    let Some(device) = gpu_device() else { return };
    for dir in hybrid_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let cpu = CpuModel::load(&dir).unwrap();
        let gpu = GpuModel::new(device.clone(), &cpu, GpuOptions::default()).unwrap();
        let tokens = fixture_tokens(&dir);
        let split = 17.min(tokens.len() - 2);
        let mut on_gpu = gpu.session().unwrap();
        block_on(on_gpu.prefill(&tokens[..split])).unwrap();
        block_on(on_gpu.step(tokens[split])).unwrap();
        let mut on_cpu = CpuEngine::new(&cpu);
        block_on(on_cpu.feed(&tokens[..=split], false)).unwrap();
        let gpu_state = block_on(on_gpu.export_state()).unwrap();
        let cpu_state = block_on(on_cpu.export_state()).unwrap();
        assert_eq!(gpu_state.len(), cpu_state.len());
        for (i, (g, c)) in gpu_state.iter().zip(&cpu_state).enumerate() {
            assert_eq!(g.len(), c.len(), "{name} layer {i}");
            let err = rel_max_err(g, c);
            assert!(err <= HYBRID_GPU_TOLERANCE, "{name} layer {i}: {err:.2e}");
        }
        // The CPU's state on the GPU, then the rest: fla's logits for the remaining rows.
        let mut resumed = gpu.session().unwrap();
        resumed.import_state(split + 1, &cpu_state).unwrap();
        let rest = &tokens[split + 1..];
        let got = block_on(resumed.forward(rest, RetentionForm::Recurrent, LogitRows::All));
        let (_, want) = read_logits(&dir.join("logits.safetensors"));
        let vocab = cpu.config().vocab_size;
        let err = rel_max_err(&got.unwrap(), &want[(split + 1) * vocab..]);
        assert!(
            err <= HYBRID_GPU_TOLERANCE,
            "{name} resumed from the CPU: {err:.2e}"
        );
    }
}

#[test]
fn gpu_greedy_generation_saved_resumed_forked_and_sampled_equals_one_run() {
    let Some(device) = gpu_device() else { return };
    for dir in hybrid_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let cpu = CpuModel::load(&dir).unwrap();
        let gpu = GpuModel::new(device.clone(), &cpu, GpuOptions::default()).unwrap();
        let prompt: Vec<u32> = fixture_tokens(&dir)[..9].to_vec();
        let params = SamplingParams::greedy();
        // The CPU reference's tokens.
        let mut reference = CpuSession::new(CpuEngine::new(&cpu));
        block_on(reference.prefill(&prompt)).unwrap();
        let want = next_tokens(&mut reference, 24);

        // On the GPU, sampled on the device (ids read back in batches).
        let mut sampled = Generator::new(gpu.session().unwrap());
        block_on(sampled.prefill(&prompt)).unwrap();
        let mut on_device = Vec::new();
        block_on(sampled.generate(&params, 24, &mut |t| {
            on_device.extend_from_slice(t);
            true
        }))
        .unwrap();
        assert_eq!(on_device, want, "{name}: GPU sampling vs the CPU reference");

        // Saved past every window, resumed from a file and from bytes, and forked.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.safetensors");
        let mut first = Generator::new(gpu.session().unwrap());
        block_on(first.prefill(&prompt)).unwrap();
        let mut got: Vec<u32> = (0..11)
            .map(|_| block_on(first.next_token(&params)).unwrap())
            .collect();
        block_on(first.save(&path)).unwrap();
        let bytes = block_on(first.save_bytes()).unwrap();
        let mut forked = first.fork().unwrap();
        let mut resumed = Generator::load(gpu.session().unwrap(), &path).unwrap();
        let mut from_bytes =
            Generator::load_bytes(gpu.session().unwrap(), "<bytes>", &bytes).unwrap();
        // The GPU's state file resumes on the CPU as well.
        let mut on_cpu = CpuSession::load(CpuEngine::new(&cpu), &path).unwrap();
        let steps = |g: &mut dyn FnMut() -> u32| (0..13).map(|_| g()).collect::<Vec<u32>>();
        let tail = steps(&mut || block_on(resumed.next_token(&params)).unwrap());
        assert_eq!(
            steps(&mut || block_on(from_bytes.next_token(&params)).unwrap()),
            tail,
            "{name}: from bytes"
        );
        assert_eq!(
            steps(&mut || block_on(forked.next_token(&params)).unwrap()),
            tail,
            "{name}: fork"
        );
        assert_eq!(next_tokens(&mut on_cpu, 13), tail, "{name}: on the CPU");
        assert_eq!(
            steps(&mut || block_on(first.next_token(&params)).unwrap()),
            tail,
            "{name}: the original"
        );
        got.extend(tail);
        assert_eq!(got, want, "{name}");
    }
}

/// Sequences of different lengths decode together; each row's attention reads its own caches.
#[test]
#[allow(clippy::needless_range_loop)] // `step` indexes each sequence's rows
fn gpu_batched_decode_of_different_lengths_equals_each_alone() {
    let Some(device) = gpu_device() else { return };
    for dir in hybrid_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let cpu = CpuModel::load(&dir).unwrap();
        let gpu = GpuModel::new(device.clone(), &cpu, GpuOptions::default()).unwrap();
        let vocab = cpu.config().vocab_size;
        let tokens = fixture_tokens(&dir);
        let prompts = [&tokens[..2], &tokens[..9], &tokens[3..20]];
        let mut alone = Vec::new();
        for p in prompts {
            let mut s = gpu.session().unwrap();
            let mut logits = block_on(s.prefill(p)).unwrap();
            let mut rows = Vec::new();
            for _ in 0..8 {
                logits = block_on(s.step(argmax(&logits))).unwrap();
                rows.push(logits.clone());
            }
            alone.push(rows);
        }
        let mut batch = GpuBatch::new(&gpu, 4).unwrap();
        let mut last = Vec::new();
        let mut slots = Vec::new();
        for p in prompts {
            let mut s = gpu.session().unwrap();
            last.push(block_on(s.prefill(p)).unwrap());
            slots.push(batch.insert(&s).unwrap());
        }
        for step in 0..8 {
            let inputs: Vec<(usize, u32)> = slots
                .iter()
                .zip(&last)
                .map(|(&s, l)| (s, argmax(l)))
                .collect();
            let out = block_on(batch.step(&inputs)).unwrap();
            for (i, row) in out.chunks_exact(vocab).enumerate() {
                let err = rel_max_err(row, &alone[i][step]);
                assert!(err <= 1e-5, "{name} sequence {i} step {step}: {err:.2e}");
                last[i] = row.to_vec();
            }
        }
        // Taken out, a sequence continues alone with its caches.
        let mut s = batch.extract(slots[1]).unwrap();
        assert_eq!(s.position(), 9 + 8);
        let next = block_on(s.step(argmax(&last[1]))).unwrap();
        let mut reference = gpu.session().unwrap();
        let mut fed: Vec<u32> = prompts[1].to_vec();
        let mut logits = block_on(reference.prefill(&fed)).unwrap();
        for _ in 0..9 {
            let t = argmax(&logits);
            fed.push(t);
            logits = block_on(reference.step(t)).unwrap();
        }
        assert!(rel_max_err(&next, &logits) <= 1e-5, "{name}: extracted");
    }
}

/// A full-attention cache grows past its first block (1024 positions) and a window's ring is
/// overwritten many times; f16 weights run the same kernels.
#[test]
fn gpu_long_sequences_grow_the_cache_and_wrap_the_ring() {
    let Some(device) = gpu_device() else { return };
    for name in ["fla_hybrid_full", "fla_hybrid_window_gqa_bias"] {
        let dir = fixture(name);
        let cpu = CpuModel::load(&dir).unwrap();
        let vocab = cpu.config().vocab_size as u32;
        let tokens: Vec<u32> = (0..1100u32).map(|i| (i * 7919 + 3) % vocab).collect();
        let want = cpu
            .logits(&tokens, RetentionForm::Chunkwise { chunk_size: 64 })
            .unwrap();
        let gpu = GpuModel::new(device.clone(), &cpu, GpuOptions::default()).unwrap();
        // A long prefill, then steps across the block boundary.
        let mut session = gpu.session().unwrap();
        let form = RetentionForm::Chunkwise { chunk_size: 32 };
        let mut got = block_on(session.forward(&tokens[..1020], form, LogitRows::All)).unwrap();
        for &t in &tokens[1020..] {
            got.extend(block_on(session.step(t)).unwrap());
        }
        let err = rel_max_err(&got, &want);
        println!("{name}: 1100 tokens on the GPU vs the CPU reference {err:.2e}");
        assert!(err <= HYBRID_GPU_TOLERANCE, "{name}: {err:.2e}");
        if device.supports_half_weights() {
            let f16 = GpuOptions {
                weights: WeightPrecision::F16,
            };
            let half = GpuModel::new(device.clone(), &cpu, f16).unwrap();
            let got = block_on(half.logits(&tokens[..300], form)).unwrap();
            let tolerance = f16_weights_tolerance(&cpu, half.uses_tensor_cores());
            let err = rel_max_err(&got, &want[..300 * vocab as usize]);
            assert!(err <= tolerance, "{name} f16: {err:.2e} > {tolerance:.1e}");
        }
    }
}
