//! Retention in its three forms against the recurrent definition computed in f64, and the state
//! carried across calls (chunkwise, then recurrent steps, then chunkwise = one parallel pass).
//!
//! Tolerance 2e-5 relative to the largest |reference| output (or state entry): every output is a
//! sum of up to T·(K + 1) f32 products (T ≤ 100, K ≤ 33 in the quick set), whose rounding error is
//! ~√(T·K)·6e-8 ≈ 4e-6 typically; the decay powers γ^n (f32 exp of n·log γ, or repeated f32
//! multiplication in the recurrent form) add ~n·6e-8 relative. The reference uses the same f32
//! log γ values, widened.
// Test code: clippy.toml allows these in #[test] functions; the helpers here are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::reference::{self, log_decay_f32};
use common::{assert_close, device, read, shapes, Rng, Set};
use retnet_runtime::kernels::retention::{
    chunkwise, parallel, recurrent, ParallelBuffers, RetentionBuffers, RetentionParams, Strided,
};
use retnet_runtime::{Device, GpuBuffer};

const TOLERANCE: f64 = 2e-5;

#[derive(Clone, Copy, Debug)]
struct Shape {
    tokens: usize,
    query_heads: usize,
    kv_heads: usize,
    key_dim: usize,
    value_dim: usize,
}

impl Shape {
    /// Columns of the fused q|k|v row, with 3 unused columns at the end.
    fn row(&self) -> usize {
        (self.query_heads + self.kv_heads) * self.key_dim + self.kv_heads * self.value_dim + 3
    }
    fn k_offset(&self) -> usize {
        self.query_heads * self.key_dim
    }
    fn v_offset(&self) -> usize {
        (self.query_heads + self.kv_heads) * self.key_dim
    }
    fn out_width(&self) -> usize {
        self.query_heads * self.value_dim
    }
    fn state_len(&self) -> usize {
        self.query_heads * self.key_dim * self.value_dim
    }

    /// Params for tokens `first..first + count` of the fused buffer.
    fn params(&self, first: usize, count: usize, scale_by_decay_sum: bool) -> RetentionParams {
        let row = self.row() as u32;
        let at = |column: usize| (first * self.row() + column) as u32;
        RetentionParams {
            tokens: count as u32,
            query_heads: self.query_heads as u32,
            kv_heads: self.kv_heads as u32,
            key_dim: self.key_dim as u32,
            value_dim: self.value_dim as u32,
            start_pos: first as u32,
            q: Strided {
                offset: at(0),
                stride: row,
            },
            k: Strided {
                offset: at(self.k_offset()),
                stride: row,
            },
            v: Strided {
                offset: at(self.v_offset()),
                stride: row,
            },
            out: Strided {
                offset: (first * self.out_width()) as u32,
                stride: self.out_width() as u32,
            },
            scale_by_decay_sum,
        }
    }
}

/// The recurrent definition in f64 (the test kit's): outputs [T, H·V], final state [H, K, V].
fn reference(
    shape: &Shape,
    fused: &[f32],
    log_decay: &[f32],
    scale_by_decay_sum: bool,
) -> (Vec<f64>, Vec<f64>) {
    let at = |offset| reference::Layout {
        offset,
        stride: shape.row(),
    };
    reference::retention(&reference::Retention {
        data: fused,
        q: at(0),
        k: at(shape.k_offset()),
        v: at(shape.v_offset()),
        tokens: shape.tokens,
        query_heads: shape.query_heads,
        kv_heads: shape.kv_heads,
        key_dim: shape.key_dim,
        value_dim: shape.value_dim,
        log_decay,
        scale_by_decay_sum,
    })
}

struct Buffers {
    fused: GpuBuffer,
    log_decay: GpuBuffer,
    state: GpuBuffer,
    out: GpuBuffer,
}

fn buffers(device: &Device, shape: &Shape, fused: &[f32], log_decay: &[f32]) -> Buffers {
    Buffers {
        fused: device.upload_f32("q|k|v", fused).unwrap(),
        log_decay: device.upload_f32("log γ", log_decay).unwrap(),
        state: device
            .create_storage_f32("state", shape.state_len())
            .unwrap(),
        out: device
            .create_storage_f32("out", shape.tokens * shape.out_width())
            .unwrap(),
    }
}

/// One retention dispatch over the test's buffers.
#[derive(Clone, Copy)]
enum Form {
    Parallel(RetentionParams),
    Chunkwise(RetentionParams, u32),
    Recurrent(RetentionParams),
}

fn record(device: &Device, b: &Buffers, forms: &[Form]) {
    let mut sequence = device.sequence("retention");
    let stateful = RetentionBuffers {
        q: &b.fused,
        k: &b.fused,
        v: &b.fused,
        log_decay: &b.log_decay,
        state: &b.state,
        output: &b.out,
    };
    for &form in forms {
        let bound = match form {
            Form::Parallel(params) => {
                let buffers = ParallelBuffers {
                    q: &b.fused,
                    k: &b.fused,
                    v: &b.fused,
                    log_decay: &b.log_decay,
                    output: &b.out,
                };
                parallel(params, buffers)
            }
            Form::Chunkwise(params, chunk) => chunkwise(params, chunk, stateful),
            Form::Recurrent(params) => recurrent(params, stateful),
        };
        sequence.dispatch(bound).unwrap();
    }
    sequence.submit().unwrap();
}

fn check_all_forms(
    device: &Device,
    shape: Shape,
    log_decay: &[f32],
    chunk_sizes: &[u32],
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let fused = rng.vec(shape.tokens * shape.row());
    for scale_by_decay_sum in [false, true] {
        let (expected, expected_state) = reference(&shape, &fused, log_decay, scale_by_decay_sum);
        let b = buffers(device, &shape, &fused, log_decay);
        let params = shape.params(0, shape.tokens, scale_by_decay_sum);
        let out_len = shape.tokens * shape.out_width();
        let label = format!("{shape:?} scale_by_decay_sum={scale_by_decay_sum}");

        record(device, &b, &[Form::Parallel(params)]);
        assert_close(
            &format!("parallel {label}"),
            &read(device, &b.out, out_len),
            &expected,
            TOLERANCE,
        );

        for &chunk in chunk_sizes {
            device.clear(&b.state);
            device.clear(&b.out);
            record(device, &b, &[Form::Chunkwise(params, chunk)]);
            assert_close(
                &format!("chunkwise({chunk}) {label}"),
                &read(device, &b.out, out_len),
                &expected,
                TOLERANCE,
            );
            let state = read(device, &b.state, shape.state_len());
            assert_close(
                &format!("chunkwise({chunk}) state {label}"),
                &state,
                &expected_state,
                TOLERANCE,
            );
        }

        device.clear(&b.state);
        device.clear(&b.out);
        record(device, &b, &[Form::Recurrent(params)]);
        assert_close(
            &format!("recurrent {label}"),
            &read(device, &b.out, out_len),
            &expected,
            TOLERANCE,
        );
        let state = read(device, &b.state, shape.state_len());
        assert_close(
            &format!("recurrent state {label}"),
            &state,
            &expected_state,
            TOLERANCE,
        );
    }
}

/// The quick set of the shared retention table (`retnet_testkit::shapes::retention`): one token
/// and one head, grouped heads with K ≠ V over many partial chunks, γ = 1 and γ = 1 − 2^-24
/// heads, odd widths (K = 33, V = 67 over two column tiles), V above 256; each at both settings
/// of the ÷sqrt(c_n) scale.
#[test]
fn every_form_matches_the_recurrence_on_the_quick_shapes() {
    let Some(device) = device() else { return };
    for (index, case) in shapes::retention(Set::Quick).into_iter().enumerate() {
        let shape = Shape {
            tokens: case.tokens,
            query_heads: case.query_heads,
            kv_heads: case.kv_heads,
            key_dim: case.key_dim,
            value_dim: case.value_dim,
        };
        let log_decay = case.decay.log_decays(case.query_heads);
        check_all_forms(
            device,
            shape,
            &log_decay,
            case.chunk_sizes,
            11 + index as u64,
        );
    }
}

/// Its own case (the runtime's; verify carries the state across calls in every retention case).
#[test]
fn chunkwise_then_recurrent_steps_then_chunkwise_equals_one_parallel_pass() {
    let Some(device) = device() else { return };
    let shape = Shape {
        tokens: 100,
        query_heads: 2,
        kv_heads: 2,
        key_dim: 12,
        value_dim: 10,
    };
    let log_decay = [log_decay_f32(0), 0.0];
    let mut rng = Rng::new(15);
    let fused = rng.vec(shape.tokens * shape.row());
    let out_len = shape.tokens * shape.out_width();
    for scale_by_decay_sum in [false, true] {
        let (expected, expected_state) = reference(&shape, &fused, &log_decay, scale_by_decay_sum);
        let b = buffers(device, &shape, &fused, &log_decay);
        record(
            device,
            &b,
            &[Form::Parallel(shape.params(
                0,
                shape.tokens,
                scale_by_decay_sum,
            ))],
        );
        let parallel_out = read(device, &b.out, out_len);
        assert_close("parallel", &parallel_out, &expected, TOLERANCE);

        device.clear(&b.out);
        // Prefill 37 tokens in chunks of 16, decode 5 tokens one submission each, then prefill
        // the remaining 58 in chunks of 32: the state and absolute positions carry over.
        record(
            device,
            &b,
            &[Form::Chunkwise(shape.params(0, 37, scale_by_decay_sum), 16)],
        );
        for t in 37..42 {
            record(
                device,
                &b,
                &[Form::Recurrent(shape.params(t, 1, scale_by_decay_sum))],
            );
        }
        record(
            device,
            &b,
            &[Form::Chunkwise(
                shape.params(42, 58, scale_by_decay_sum),
                32,
            )],
        );
        let label = format!("prefill+steps+prefill scale_by_decay_sum={scale_by_decay_sum}");
        let pieced = read(device, &b.out, out_len);
        assert_close(&label, &pieced, &expected, TOLERANCE);
        let parallel_as_reference: Vec<f64> = parallel_out.iter().map(|&v| f64::from(v)).collect();
        assert_close(
            &format!("{label} vs parallel"),
            &pieced,
            &parallel_as_reference,
            TOLERANCE,
        );
        assert_close(
            &format!("{label} state"),
            &read(device, &b.state, shape.state_len()),
            &expected_state,
            TOLERANCE,
        );
    }
}
