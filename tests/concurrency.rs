//! Models are shared between threads: `CpuModel` and `GpuModel` are `Send + Sync`, and
//! independent sessions run on several threads at once on one device give exactly the outputs
//! they give one after another.
//!
//! The GPU test needs a wgpu adapter (lavapipe in CI); the adapter policy is `retnet_testkit::gpu`'s.

mod common;

use std::sync::Arc;

use common::*;
use retnet::model::{sampling::argmax, CpuEngine, CpuSession, GpuModel, GpuOptions};
use retnet::runtime::Device;
use retnet::CpuModel;

/// Compile-time check: a model can be put in an `Arc` and used from any thread.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<CpuModel>();
    send_sync::<GpuModel>();
    send_sync::<Device>();
};

const THREADS: usize = 4;
const STEPS: usize = 6;

/// A different prompt per sequence.
fn prompt(seq: usize) -> Vec<u32> {
    (0..5 + seq)
        .map(|i| ((seq * 7 + i * 3) % 20) as u32)
        .collect()
}

/// Prefill, then `STEPS` greedy steps: every logit row the session produced.
fn run_gpu(model: &GpuModel, seq: usize) -> Vec<Vec<f32>> {
    let mut session = model.session().unwrap();
    let mut rows = vec![pollster::block_on(session.prefill(&prompt(seq))).unwrap()];
    for _ in 0..STEPS {
        let next = argmax(rows.last().unwrap());
        rows.push(pollster::block_on(session.step(next)).unwrap());
    }
    rows
}

fn run_cpu(model: &CpuModel, seq: usize) -> Vec<u32> {
    let mut session = CpuSession::new(CpuEngine::new(model));
    pollster::block_on(session.prefill(&prompt(seq))).unwrap();
    (0..STEPS)
        .map(|_| {
            let params = retnet::model::SamplingParams::greedy();
            pollster::block_on(session.next_token(&params)).unwrap()
        })
        .collect()
}

#[test]
fn cpu_sessions_on_threads_equal_sequential_runs() {
    let model = CpuModel::load(&fixture("fla_basic")).unwrap();
    let sequential: Vec<Vec<u32>> = (0..THREADS).map(|s| run_cpu(&model, s)).collect();
    let threaded: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|s| {
                let model = &model;
                scope.spawn(move || run_cpu(model, s))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(threaded, sequential);
}

#[test]
fn gpu_sessions_on_threads_equal_sequential_runs() {
    let Some(device) = retnet_testkit::gpu::new_device() else {
        return;
    };
    let cpu = CpuModel::load(&fixture("fla_basic")).unwrap();
    let model = Arc::new(GpuModel::new(device, &cpu, GpuOptions::default()).unwrap());

    let sequential: Vec<Vec<Vec<f32>>> = (0..THREADS).map(|s| run_gpu(&model, s)).collect();
    // Each thread owns an `Arc` of the model and its own session, all on one device at once.
    let handles: Vec<_> = (0..THREADS)
        .map(|s| {
            let model = Arc::clone(&model);
            std::thread::spawn(move || run_gpu(&model, s))
        })
        .collect();
    let threaded: Vec<Vec<Vec<f32>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (s, (got, want)) in threaded.iter().zip(&sequential).enumerate() {
        assert_eq!(got.len(), want.len());
        for (step, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()),
                "sequence {s}, step {step}: threaded logits differ from the sequential run"
            );
        }
    }
    // And the sequences differ from each other, so the comparison is not vacuous.
    // (`assert_ne!` on floats would pass on NaN.)
    retnet_testkit::assert_finite_and_differ(
        "sequences 0 and 1",
        &sequential[0].concat(),
        &sequential[1].concat(),
        1e-6,
    );
}
