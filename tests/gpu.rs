//! The whole model on the GPU (lavapipe in CI) against the peers' logits and the CPU reference,
//! in every retention form, with f32 and f16 weights.
//!
//! These tests need a wgpu adapter; on a machine without a GPU install Mesa's software Vulkan
//! driver (`apt-get install mesa-vulkan-drivers`). The adapter policy is the test kit's
//! (`retnet_testkit::gpu`): `RETNET_REQUIRE_GPU=1` (CI) fails them without an adapter,
//! `RETNET_SKIP_GPU_TESTS=1` skips them explicitly.

mod common;

use common::*;
use retnet::model::{GpuBatch, GpuModel, GpuOptions, LogitRows, SamplingParams, WeightPrecision};
use retnet::{CpuModel, RetentionForm};
use retnet_testkit::gpu::new_device as device;

/// f32 weights: `GPU_F32_TOLERANCE` (tests/common, measured 1.4e-6); f16 weights:
/// `f16_weights_tolerance`, a bound from f16's unit roundoff (docs/testing.md).
const F32_TOLERANCE: f64 = GPU_F32_TOLERANCE;

fn forms() -> [RetentionForm; 5] {
    [
        RetentionForm::Parallel,
        RetentionForm::Recurrent,
        RetentionForm::Chunkwise { chunk_size: 7 },
        RetentionForm::Chunkwise { chunk_size: 16 },
        RetentionForm::Chunkwise { chunk_size: 64 },
    ]
}

#[test]
fn gpu_logits_match_the_peers_in_every_form() {
    let Some(device) = device() else { return };
    let mut failures = Vec::new();
    for dir in all_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let cpu = CpuModel::load(&dir).unwrap();
        let tokens = fixture_tokens(&dir);
        let (_, peer) = read_logits(&dir.join("logits.safetensors"));
        let reference = cpu.logits(&tokens, RetentionForm::Parallel).unwrap();
        for precision in [WeightPrecision::F32, WeightPrecision::F16] {
            if precision == WeightPrecision::F16 && !device.supports_half_weights() {
                eprintln!("{name}: this adapter cannot read f16 weights; skipping f16");
                continue;
            }
            let gpu =
                GpuModel::new(device.clone(), &cpu, GpuOptions { weights: precision }).unwrap();
            let tolerance = match precision {
                WeightPrecision::F16 => f16_weights_tolerance(&cpu, gpu.uses_tensor_cores()),
                // (The block formats are compared with their own reference, below.)
                _ => F32_TOLERANCE,
            };
            for form in forms() {
                let got = pollster::block_on(gpu.logits(&tokens, form)).unwrap();
                let err = rel_max_err(&got, &peer);
                let vs_cpu = rel_max_err(&got, &reference);
                println!(
                    "{name:30} {precision:?} {form:?}: vs peer {err:.2e}, vs cpu {vs_cpu:.2e} \
                     (tolerance {tolerance:.1e})"
                );
                // `!(x <= t)`: a NaN error (impossible with rel_max_err, which gives +∞) fails.
                if !(err <= tolerance && vs_cpu <= tolerance) {
                    failures.push(format!(
                        "{name} {precision:?} {form:?}: vs peer {err:.2e}, vs cpu {vs_cpu:.2e} > \
                         {tolerance:.1e}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// int8 and q4: the GPU against the CPU reference of the same quantized weights (the same
/// decoded blocks, `CpuModel::stored_as`), so only the f32 arithmetic differs: the f32 bar (the
/// f16 bound where the prefill runs on tensor cores, through an f16 copy of the blocks). Against
/// the peers the error is the quantization's own, held to verify's measured bars. Three forms:
/// parallel (batched matvec / matmul), recurrent (matvec, one token at a time) and chunkwise.
#[test]
fn quantized_gpu_logits_match_the_cpu_with_the_same_blocks() {
    let Some(device) = device() else { return };
    if !device.supports_half_weights() {
        eprintln!("this adapter cannot read f16 weights (the quantized models' head); skipping");
        return;
    }
    let mut failures = Vec::new();
    for dir in all_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let cpu = CpuModel::load(&dir).unwrap();
        if cpu.config().is_hybrid() {
            continue;
        }
        let tokens = fixture_tokens(&dir);
        let (_, peer) = read_logits(&dir.join("logits.safetensors"));
        for (precision, peer_bar) in [(WeightPrecision::Int8, 0.1), (WeightPrecision::Q4, 1.0)] {
            let stored = cpu.clone().stored_as(precision).unwrap();
            let reference = stored.logits(&tokens, RetentionForm::Parallel).unwrap();
            let gpu =
                GpuModel::new(device.clone(), &cpu, GpuOptions { weights: precision }).unwrap();
            // On tensor cores the prefill projections multiply an f16 copy of the decoded blocks
            // (and f16 inputs): the f16 bound on the decoded matrices. Elsewhere the kernels
            // decode exactly what the CPU decodes: the f32 bar.
            let tolerance = if gpu.uses_tensor_cores() {
                f16_weights_tolerance(&stored, true)
            } else {
                F32_TOLERANCE
            };
            for form in [
                RetentionForm::Parallel,
                RetentionForm::Recurrent,
                RetentionForm::Chunkwise { chunk_size: 16 },
            ] {
                let got = pollster::block_on(gpu.logits(&tokens, form)).unwrap();
                let vs_cpu = rel_max_err(&got, &reference);
                let vs_peer = rel_max_err(&got, &peer);
                println!(
                    "{name:30} {precision:?} {form:?}: vs cpu (same blocks) {vs_cpu:.2e} \
                     (tolerance {tolerance:.1e}), vs peer {vs_peer:.2e} (bar {peer_bar:.0e})"
                );
                if !(vs_cpu <= tolerance && vs_peer <= peer_bar) {
                    failures.push(format!(
                        "{name} {precision:?} {form:?}: vs cpu {vs_cpu:.2e}, vs peer {vs_peer:.2e}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn f16_weights_use_the_tensor_cores_where_the_device_has_them() {
    let Some(device) = device() else { return };
    // CI's run on lavapipe 26 (8×8 cooperative matrices) sets RETNET_REQUIRE_COOP=1: there the
    // peer-fixture tests above must have gone through the tensor cores.
    if std::env::var("RETNET_REQUIRE_COOP").is_ok_and(|v| v == "1") {
        assert!(
            device.coop_shape().is_some(),
            "RETNET_REQUIRE_COOP=1 but the adapter offers no usable cooperative matrices"
        );
    }
    let cpu = CpuModel::load(&fixture("fla_basic")).unwrap();
    let f16 = GpuOptions {
        weights: WeightPrecision::F16,
    };
    let gpu = GpuModel::new(device.clone(), &cpu, f16).unwrap();
    let native_f16 = device.features().shader_f16;
    assert_eq!(
        gpu.uses_tensor_cores(),
        device.coop_shape().is_some() && native_f16
    );
    // Chunk-parallel retention runs on 8×8 tensor cores whatever the weights' precision (its
    // hi/lo split operands keep f32 accuracy), so the f32 rows above went through it too.
    let eight = device
        .coop_shape()
        .is_some_and(|s| s.tile == retnet::runtime::kernels::gemm_coop::CoopTile::Eight);
    assert_eq!(gpu.retention_uses_tensor_cores(), eight);
    // int8 and q4 go through an f16 copy of their blocks; f32 weights never use them.
    for quantized in [WeightPrecision::Int8, WeightPrecision::Q4] {
        let options = GpuOptions { weights: quantized };
        let gpu = GpuModel::new(device.clone(), &cpu, options).unwrap();
        assert_eq!(
            gpu.uses_tensor_cores(),
            device.coop_shape().is_some() && native_f16
        );
    }
    let f32 = GpuOptions {
        weights: WeightPrecision::F32,
    };
    assert!(!GpuModel::new(device, &cpu, f32)
        .unwrap()
        .uses_tensor_cores());
}

#[test]
fn prefill_then_steps_equals_one_parallel_pass() {
    let Some(device) = device() else { return };
    for name in [
        "torchscale_gelu_lnemb_f16",
        "fla_gqa_tied_bf16_sharded",
        "torchscale_deepnorm_bf16",
    ] {
        let cpu = CpuModel::load(&fixture(name)).unwrap();
        let tokens = fixture_tokens(&fixture(name));
        let gpu = GpuModel::new(device.clone(), &cpu, GpuOptions::default()).unwrap();
        let vocab = cpu.config().vocab_size;
        let whole = pollster::block_on(gpu.logits(&tokens, RetentionForm::Parallel)).unwrap();
        let split = tokens.len() / 2;
        let mut session = gpu.session().unwrap();
        let last = pollster::block_on(session.prefill(&tokens[..split])).unwrap();
        let mut got = last.clone();
        for &t in &tokens[split..] {
            got.extend(pollster::block_on(session.step(t)).unwrap());
        }
        let want: Vec<f32> = whole[(split - 1) * vocab..].to_vec();
        // Forms vs each other on the GPU: the same f32 arithmetic in other orders.
        assert_close_f32(
            &format!("{name}: prefill+steps vs parallel"),
            &got,
            &want,
            F32_TOLERANCE,
        );
        assert_eq!(session.position(), tokens.len());
    }
}

#[test]
fn decode_steps_create_no_gpu_objects() {
    let Some(device) = device() else { return };
    let cpu = CpuModel::load(&fixture("fla_basic")).unwrap();
    let gpu = GpuModel::new(device.clone(), &cpu, GpuOptions::default()).unwrap();
    let mut session = gpu.session().unwrap();
    pollster::block_on(session.prefill(&[1, 2, 3])).unwrap();
    pollster::block_on(session.step(4)).unwrap();
    let before = device.cache_stats();
    let mut outputs = Vec::new();
    for t in 5..15 {
        outputs.push(pollster::block_on(session.step(t)).unwrap());
    }
    let after = device.cache_stats();
    assert_eq!(
        before, after,
        "a decode step created pipelines, bind groups or buffers"
    );
    // Finite and different: `assert_ne!` on float vectors passed on NaN.
    retnet_testkit::assert_finite_and_differ(
        "steps must still compute",
        &outputs[0],
        &outputs[1],
        1e-6,
    );
}

#[test]
fn long_prefill_spans_and_bad_inputs() {
    let Some(device) = device() else { return };
    let cpu = CpuModel::load(&fixture("torchscale_swish_tied")).unwrap();
    let gpu = GpuModel::new(device, &cpu, GpuOptions::default()).unwrap();
    let vocab = cpu.config().vocab_size as u32;
    // Longer than two recorded spans (512 tokens each): spans carry the state between them.
    let tokens: Vec<u32> = (0..1500u32).map(|i| (i * 37 + 11) % vocab).collect();
    let mut session = gpu.session().unwrap();
    let last = pollster::block_on(session.forward(
        &tokens,
        RetentionForm::Chunkwise { chunk_size: 32 },
        LogitRows::Last,
    ))
    .unwrap();
    let mut state = cpu.new_state();
    let want = cpu
        .forward(
            &tokens,
            &mut state,
            RetentionForm::Chunkwise { chunk_size: 64 },
        )
        .unwrap();
    assert_close_f32(
        "1500 tokens in spans, last row vs cpu",
        &last,
        &want[want.len() - vocab as usize..],
        F32_TOLERANCE,
    );
    // The parallel form over the whole sequence too (on llvmpipe it continues chunkwise past
    // one span, since long shader loops are cut there).
    let all = pollster::block_on(gpu.logits(&tokens, RetentionForm::Parallel)).unwrap();
    assert_close_f32("1500 tokens parallel vs cpu", &all, &want, F32_TOLERANCE);

    let mut session = gpu.session().unwrap();
    assert!(pollster::block_on(session.prefill(&[])).is_err());
    assert!(pollster::block_on(session.step(vocab)).is_err());
    assert!(pollster::block_on(session.forward(
        &[1],
        RetentionForm::Chunkwise { chunk_size: 0 },
        LogitRows::All
    ))
    .is_err());
    pollster::block_on(session.step(1)).unwrap();
    assert!(
        pollster::block_on(session.forward(&[1, 2], RetentionForm::Parallel, LogitRows::All))
            .is_err()
    );
}

#[test]
fn forked_sessions_continue_independently() {
    use retnet::model::{Generator, SamplingParams};
    let Some(device) = device() else { return };
    let cpu = CpuModel::load(&fixture("torchscale_24heads_syncdoth")).unwrap();
    let gpu = GpuModel::new(device, &cpu, GpuOptions::default()).unwrap();
    let mut a = Generator::new(gpu.session().unwrap());
    pollster::block_on(a.prefill(&[10, 20, 30])).unwrap();
    let mut b = a.fork().unwrap();
    let greedy = SamplingParams::greedy();
    let from_a: Vec<u32> = (0..8)
        .map(|_| pollster::block_on(a.next_token(&greedy)).unwrap())
        .collect();
    // The fork sees none of what `a` did after the fork.
    let from_b: Vec<u32> = (0..8)
        .map(|_| pollster::block_on(b.next_token(&greedy)).unwrap())
        .collect();
    assert_eq!(from_a, from_b);
    pollster::block_on(b.prefill(&[1, 2])).unwrap();
    // b consumed its pending token and the two new ones.
    assert_eq!(b.position(), a.position() + 3);
}

#[test]
#[allow(clippy::needless_range_loop)] // `step` indexes every sequence's rows
fn batched_decode_equals_decoding_each_alone() {
    use retnet::model::sampling::argmax;
    let Some(device) = device() else { return };
    for name in ["torchscale_swish_tied", "fla_gqa_tied_bf16_sharded"] {
        let cpu = CpuModel::load(&fixture(name)).unwrap();
        let gpu = GpuModel::new(device.clone(), &cpu, GpuOptions::default()).unwrap();
        let vocab = cpu.config().vocab_size;
        let prompts: [Vec<u32>; 3] = [vec![1, 2, 3], (0..10).collect(), (5..30).collect()];
        // Each sequence alone: prefill, then 6 greedy steps.
        let mut alone = Vec::new();
        for p in &prompts {
            let mut s = gpu.session().unwrap();
            let mut logits = pollster::block_on(s.prefill(p)).unwrap();
            let mut rows = Vec::new();
            for _ in 0..6 {
                logits = pollster::block_on(s.step(argmax(&logits))).unwrap();
                rows.push(logits.clone());
            }
            alone.push(rows);
        }
        // Together: prefill alone, then step all three (and once only two) in one batch.
        let mut batch = GpuBatch::new(&gpu, 4).unwrap();
        let mut last = Vec::new();
        let mut slots = Vec::new();
        for p in &prompts {
            let mut s = gpu.session().unwrap();
            last.push(pollster::block_on(s.prefill(p)).unwrap());
            slots.push(batch.insert(&s).unwrap());
        }
        for step in 0..6 {
            let inputs: Vec<(usize, u32)> = slots
                .iter()
                .zip(&last)
                .map(|(&s, l)| (s, argmax(l)))
                .collect();
            let out = pollster::block_on(batch.step(&inputs)).unwrap();
            for (i, row) in out.chunks_exact(vocab).enumerate() {
                let what = format!("{name} sequence {i} step {step}: batched vs alone");
                assert_close_f32(&what, row, &alone[i][step], F32_TOLERANCE);
                last[i] = row.to_vec();
            }
        }
        assert_eq!(batch.position(slots[2]), Some(prompts[2].len() + 6));
        // A sequence taken out of the batch continues alone from where it was.
        let mut s = batch.extract(slots[0]).unwrap();
        assert_eq!(s.position(), prompts[0].len() + 6);
        let next = pollster::block_on(s.step(argmax(&last[0]))).unwrap();
        assert!(next.iter().all(|v| v.is_finite()));
        // Bad inputs are errors.
        assert!(
            pollster::block_on(batch.step(&[(3, 1)])).is_err(),
            "empty slot"
        );
        assert!(
            pollster::block_on(batch.step(&[(0, 1), (0, 2)])).is_err(),
            "slot twice"
        );
        assert!(
            pollster::block_on(batch.step(&[(0, vocab as u32)])).is_err(),
            "token out of range"
        );
    }
}

#[test]
fn gpu_sampling_loop_creates_no_gpu_objects_after_warm_up() {
    use retnet::model::{Generator, SamplingParams};
    let Some(device) = device() else { return };
    let cpu = CpuModel::load(&fixture("fla_basic")).unwrap();
    let gpu = GpuModel::new(device.clone(), &cpu, GpuOptions::default()).unwrap();
    let mut session = Generator::new(gpu.session().unwrap());
    pollster::block_on(session.prefill(&[1, 2, 3])).unwrap();
    let params = SamplingParams {
        temperature: 0.8,
        top_k: 20,
        top_p: 0.9,
        repeat_penalty: 1.1,
        seed: 5,
    };
    let mut all = Vec::new();
    let mut sink = |t: &[u32]| {
        all.extend_from_slice(t);
        true
    };
    pollster::block_on(session.generate(&params, 20, &mut sink)).unwrap();
    let before = device.cache_stats();
    pollster::block_on(session.generate(&params, 40, &mut sink)).unwrap();
    assert_eq!(
        device.cache_stats(),
        before,
        "the decode loop created GPU objects"
    );
    assert_eq!(all.len(), 60);
    assert_eq!(session.position(), 3 + 59, "the last token stays pending");
}

/// Batched decode with sampling on the GPU (`GpuBatch::generate`): greedy, it equals stepping
/// the batch and taking each row's argmax on the CPU; with temperature and top-k, each row of a
/// three-row batch draws what it draws alone in a one-row batch (the sampler's per-row state,
/// logits row and output slots), and the rows advance.
#[test]
fn batched_generation_samples_on_the_gpu_row_by_row() {
    use retnet::model::sampling::argmax;
    let Some(device) = device() else { return };
    for name in ["fla_basic", "fla_hybrid_window_gqa_bias"] {
        let cpu = CpuModel::load(&fixture(name)).unwrap();
        let gpu = GpuModel::new(device.clone(), &cpu, GpuOptions::default()).unwrap();
        let tokens = fixture_tokens(&fixture(name));
        let prompts = [&tokens[..3], &tokens[..10], &tokens[4..12]];
        let fill = |batch: &mut GpuBatch, prompts: &[&[u32]]| -> Vec<(usize, u32)> {
            prompts
                .iter()
                .map(|p| {
                    let mut s = gpu.session().unwrap();
                    pollster::block_on(s.prefill(&p[..p.len() - 1])).unwrap();
                    (batch.insert(&s).unwrap(), p[p.len() - 1])
                })
                .collect()
        };
        let steps = 20;

        // Greedy: generate vs step + argmax.
        let mut by_steps = GpuBatch::new(&gpu, 3).unwrap();
        let mut inputs = fill(&mut by_steps, &prompts);
        let vocab = cpu.config().vocab_size;
        let mut want = vec![Vec::new(); 3];
        for _ in 0..steps {
            let logits = pollster::block_on(by_steps.step(&inputs)).unwrap();
            for (i, row) in logits.chunks_exact(vocab).enumerate() {
                let t = argmax(row);
                want[i].push(t);
                inputs[i].1 = t;
            }
        }
        let mut generating = GpuBatch::new(&gpu, 3).unwrap();
        let inputs = fill(&mut generating, &prompts);
        let mut calls = 0;
        let greedy = SamplingParams::greedy();
        let got =
            pollster::block_on(
                generating.generate(&inputs, &greedy, 0, &[], steps, &mut |_| {
                    calls += 1;
                    true
                }),
            )
            .unwrap();
        assert_eq!(got, want, "{name}: greedy");
        assert_eq!(calls, 2, "ids read back every 16 steps");
        for (i, p) in prompts.iter().enumerate() {
            assert_eq!(generating.position(inputs[i].0), Some(p.len() - 1 + steps));
        }

        // Sampled: each row as it draws alone.
        let params = SamplingParams {
            temperature: 0.9,
            top_k: 20,
            top_p: 0.95,
            repeat_penalty: 1.1,
            seed: 7,
        };
        let histories: Vec<&[u32]> = prompts.to_vec();
        let mut together = GpuBatch::new(&gpu, 3).unwrap();
        let inputs = fill(&mut together, &prompts);
        let all = pollster::block_on(together.generate(
            &inputs,
            &params,
            5,
            &histories,
            steps,
            &mut |_| true,
        ))
        .unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let mut alone = GpuBatch::new(&gpu, 1).unwrap();
            let input = fill(&mut alone, &[p]);
            let one =
                pollster::block_on(alone.generate(&input, &params, 5, &[p], steps, &mut |_| true))
                    .unwrap();
            assert_eq!(one[0], all[i], "{name}: row {i} alone vs in the batch");
        }
        assert!(all.iter().all(|r| r.len() == steps));
    }
}
