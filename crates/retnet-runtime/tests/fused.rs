//! The decode kernels that fuse a stage into their neighbour, against the f64 composition of the
//! stages (the test kit's references): recurrent retention with rotary applied as q and k are
//! read (single and batched), the matvecs whose input is act(a)·b (FFN down) or the head
//! norm × gate (out_proj), in every weight format and both reductions, and the batched FFN
//! input projection with its norm and its gating (subgroups).
//!
//! Tolerances, relative to the largest |reference|:
//! - rotary + retention: 2e-5, the recurrent kernel's own bar (`retention.rs`: sums of ≤ T·(K+1)
//!   f32 products, T ≤ 5, K ≤ 32 here) — the rotation adds ~1e-7 (f32 angle reduction and
//!   sin/cos, `rotary_matches_cpu_in_both_styles_at_large_positions` holds it to 1e-6);
//! - the fused matvecs: 1e-5, the matvec's bar (dot products of ≤ 1024 f32 terms); the input
//!   stage adds a few f32 roundings per element (silu/gelu ≤ 2e-7·(|x|+1), the head norm's
//!   sum of ≤ 300 squares), far below it. The references use the stored (decoded) weights.
// Test code: clippy.toml allows these in #[test] functions; the helpers here are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::reference::{self, log_decay_f32, Layout};
use common::{as_stored, assert_close, device, formats, read, Rng};
use retnet_runtime::kernels::gated_activation::Activation;
use retnet_runtime::kernels::linear::{
    matvec_act_lin, matvec_batch_norm_gated, matvec_batch_norm_gated_supports, matvec_head_gate,
    matvec_head_gate_supports, HeadGate, LinearBuffers, LinearHeadGateBuffers, LinearNormBuffers,
    LinearParams, Reduction,
};
use retnet_runtime::kernels::retention::{
    recurrent_batched_rotary, recurrent_rotary, QkRotary, RecurrentBatchedRotaryBuffers,
    RecurrentRotaryBuffers, RetentionBatchedParams, RetentionParams, Strided,
};
use retnet_runtime::kernels::rotary::RotaryStyle;
use retnet_runtime::kernels::Bound;
use retnet_runtime::{Device, GpuBuffer};

fn run(device: &Device, bound: Bound<'_, GpuBuffer>) {
    let mut sequence = device.sequence("test");
    sequence.dispatch(bound).expect("dispatch");
    sequence.submit().expect("submit");
}

fn reductions(device: &Device) -> Vec<Reduction> {
    let mut reductions = vec![Reduction::Workgroup];
    if device.features().subgroups {
        reductions.push(Reduction::Subgroup);
    }
    reductions
}

/// q `[H, K]` | k `[H_kv, K]` | v `[H_kv, V]` | 3 more columns (the gate's place), from column 2
/// of each row: strided column ranges as in the fused projection.
#[derive(Clone, Copy, Debug)]
struct QkvShape {
    heads: usize,
    kv_heads: usize,
    key_dim: usize,
    value_dim: usize,
}

impl QkvShape {
    fn q(&self) -> usize {
        2
    }
    fn k(&self) -> usize {
        self.q() + self.heads * self.key_dim
    }
    fn v(&self) -> usize {
        self.k() + self.kv_heads * self.key_dim
    }
    fn row(&self) -> usize {
        self.v() + self.kv_heads * self.value_dim + 3
    }
    fn layout(&self, offset: usize) -> Layout {
        Layout {
            offset,
            stride: self.row(),
        }
    }
    fn strided(&self, offset: usize) -> Strided {
        Strided {
            offset: offset as u32,
            stride: self.row() as u32,
        }
    }
    fn reference<'a>(
        &self,
        data: &'a [f32],
        tokens: usize,
        log_decay: &'a [f32],
        scale: bool,
    ) -> reference::Retention<'a> {
        reference::Retention {
            data,
            q: self.layout(self.q()),
            k: self.layout(self.k()),
            v: self.layout(self.v()),
            tokens,
            query_heads: self.heads,
            kv_heads: self.kv_heads,
            key_dim: self.key_dim,
            value_dim: self.value_dim,
            log_decay,
            scale_by_decay_sum: scale,
        }
    }
}

/// Grouped heads with K ≠ V; K = 6 (three pairs: the halves meet mid-pair of an interleaved
/// head); K = 32 with V = 67 (two column tiles of the single kernel, three of the batched one).
const QKV_SHAPES: [QkvShape; 3] = [
    QkvShape {
        heads: 4,
        kv_heads: 2,
        key_dim: 8,
        value_dim: 12,
    },
    QkvShape {
        heads: 2,
        kv_heads: 2,
        key_dim: 6,
        value_dim: 5,
    },
    QkvShape {
        heads: 2,
        kv_heads: 1,
        key_dim: 32,
        value_dim: 67,
    },
];

fn theta(key_dim: usize) -> Vec<f32> {
    let half = key_dim / 2;
    (0..half)
        .map(|i| 1.0 / 10000f32.powf(i as f32 / (half.max(2) - 1) as f32))
        .collect()
}

fn log_decays(heads: usize) -> Vec<f32> {
    // γ < 1 and γ = 1 (head 20 of the peers' formula rounds to exactly 1).
    (0..heads)
        .map(|h| log_decay_f32(if h % 2 == 0 { h } else { 20 }))
        .collect()
}

#[test]
fn recurrent_rotary_equals_rotary_then_recurrent() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(21);
    let tokens = 5;
    for shape in QKV_SHAPES {
        for style in [RotaryStyle::Interleaved, RotaryStyle::Halves] {
            // Position 0 with torchscale's ÷sqrt(c_n); a large position (angles of thousands of
            // radians) without it, as the reference counts c_n from 0.
            for (start_pos, scale) in [(0usize, true), (7000, false)] {
                let data = rng.vec(tokens * shape.row());
                let log_decay = log_decays(shape.heads);
                let theta = theta(shape.key_dim);
                let q_scale = (shape.key_dim as f64).powf(-0.5) as f32;
                let r = shape.reference(&data, tokens, &log_decay, scale);
                let interleaved = style == RotaryStyle::Interleaved;
                let (want, want_state) =
                    reference::rotated_retention(&r, &theta, interleaved, start_pos, q_scale);
                let out_width = shape.heads * shape.value_dim;
                let state_len = shape.heads * shape.key_dim * shape.value_dim;
                let qkv = device.upload_f32("q|k|v", &data).unwrap();
                let log_decay_buffer = device.upload_f32("log γ", &log_decay).unwrap();
                let theta_buffer = device.upload_f32("θ", &theta).unwrap();
                let state = device.upload_f32("state", &vec![0.0; state_len]).unwrap();
                let output = device
                    .create_storage_f32("out", tokens * out_width)
                    .unwrap();
                let params = RetentionParams {
                    tokens: tokens as u32,
                    query_heads: shape.heads as u32,
                    kv_heads: shape.kv_heads as u32,
                    key_dim: shape.key_dim as u32,
                    value_dim: shape.value_dim as u32,
                    start_pos: start_pos as u32,
                    q: shape.strided(shape.q()),
                    k: shape.strided(shape.k()),
                    v: shape.strided(shape.v()),
                    out: Strided::dense(out_width as u32),
                    scale_by_decay_sum: scale,
                };
                let buffers = RecurrentRotaryBuffers {
                    log_decay: &log_decay_buffer,
                    state: &state,
                    output: &output,
                    qkv: &qkv,
                    theta: &theta_buffer,
                };
                run(
                    device,
                    recurrent_rotary(params, QkRotary { style, q_scale }, buffers),
                );
                let label = format!("recurrent-rotary {shape:?} {style:?} at {start_pos}");
                let got = read(device, &output, tokens * out_width);
                assert_close(&label, &got, &want, 2e-5);
                let got_state = read(device, &state, state_len);
                assert_close(&format!("{label} state"), &got_state, &want_state, 2e-5);
            }
        }
    }
}

#[test]
fn recurrent_batched_rotary_rotates_each_row_at_its_position() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(22);
    // Rows at different positions in scattered slots of a pool of 5.
    let positions: [u32; 3] = [0, 4097, 31];
    let slots: [u32; 3] = [3, 0, 4];
    let pool = 5;
    for shape in QKV_SHAPES {
        for style in [RotaryStyle::Interleaved, RotaryStyle::Halves] {
            let b = positions.len();
            let data = rng.vec(b * shape.row());
            let log_decay = log_decays(shape.heads);
            let theta = theta(shape.key_dim);
            let q_scale = (shape.key_dim as f64).powf(-0.5) as f32;
            let out_width = shape.heads * shape.value_dim;
            let state_len = shape.heads * shape.key_dim * shape.value_dim;
            let qkv = device.upload_f32("q|k|v", &data).unwrap();
            let log_decay_buffer = device.upload_f32("log γ", &log_decay).unwrap();
            let theta_buffer = device.upload_f32("θ", &theta).unwrap();
            let pool_buffer = device
                .upload_f32("pool", &vec![0.0; pool * state_len])
                .unwrap();
            let positions_buffer = device.upload_u32("positions", &positions).unwrap();
            let slots_buffer = device.upload_u32("slots", &slots).unwrap();
            let output = device.create_storage_f32("out", b * out_width).unwrap();
            let params = RetentionBatchedParams {
                rows: b as u32,
                query_heads: shape.heads as u32,
                kv_heads: shape.kv_heads as u32,
                key_dim: shape.key_dim as u32,
                value_dim: shape.value_dim as u32,
                q: shape.strided(shape.q()),
                k: shape.strided(shape.k()),
                v: shape.strided(shape.v()),
                out: Strided::dense(out_width as u32),
                // The reference's c_n counts from position 0: the scale is the plain kernel's
                // business (batched.rs), the rotation this test's.
                scale_by_decay_sum: false,
            };
            let buffers = RecurrentBatchedRotaryBuffers {
                log_decay: &log_decay_buffer,
                positions: &positions_buffer,
                slots: &slots_buffer,
                state: &pool_buffer,
                output: &output,
                qkv: &qkv,
                theta: &theta_buffer,
            };
            run(
                device,
                recurrent_batched_rotary(params, QkRotary { style, q_scale }, buffers),
            );
            let got = read(device, &output, b * out_width);
            let got_pool = read(device, &pool_buffer, pool * state_len);
            let interleaved = style == RotaryStyle::Interleaved;
            for (row, (&position, &slot)) in positions.iter().zip(&slots).enumerate() {
                let row_data = &data[row * shape.row()..][..shape.row()];
                let r = shape.reference(row_data, 1, &log_decay, false);
                let (want, want_state) = reference::rotated_retention(
                    &r,
                    &theta,
                    interleaved,
                    position as usize,
                    q_scale,
                );
                let label =
                    format!("recurrent-batched-rotary {shape:?} {style:?} row {row} at {position}");
                assert_close(&label, &got[row * out_width..][..out_width], &want, 2e-5);
                let slot_state = &got_pool[slot as usize * state_len..][..state_len];
                assert_close(&format!("{label} state"), slot_state, &want_state, 2e-5);
            }
        }
    }
}

#[test]
fn matvec_act_lin_equals_gated_activation_then_matvec() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(23);
    // One decode row and a batch of 5 (the batched matvec); widths with a partial vec4 stride.
    for (rows, in_dim, out_dim) in [(1usize, 36usize, 10usize), (1, 260, 7), (5, 44, 9)] {
        // a spread over ±4 so that silu and gelu leave their linear range.
        let fused: Vec<f32> = rng.vec(rows * 2 * in_dim).iter().map(|x| 4.0 * x).collect();
        let w = rng.vec(out_dim * in_dim);
        let y0 = rng.vec(rows * out_dim);
        let xb = device.upload_f32("act|lin", &fused).unwrap();
        for act in [Activation::Silu, Activation::Gelu] {
            let mid = reference::act_lin(&fused, in_dim, act == Activation::Gelu);
            for reduction in reductions(device) {
                for format in formats(device) {
                    let weights = device.upload_matrix("w", &w, in_dim, format).unwrap();
                    let y = device.upload_f32("y", &y0).unwrap();
                    let mut params = LinearParams::new(rows as u32, in_dim as u32, out_dim as u32);
                    params.accumulate = Some(0.7);
                    let buffers = LinearBuffers {
                        weight: weights.buffer(),
                        input: &xb,
                        output: &y,
                    };
                    run(
                        device,
                        matvec_act_lin(format, reduction, act, params, buffers),
                    );
                    let stored = as_stored(&w, in_dim, format);
                    let want =
                        reference::linear_f64(&mid, &stored, &y0, in_dim, out_dim, Some(0.7));
                    let label = format!(
                        "matvec-act-lin {act:?} {reduction:?} {format:?} rows {rows} in {in_dim} out {out_dim}"
                    );
                    assert_close(&label, &read(device, &y, rows * out_dim), &want, 1e-5);
                }
            }
        }
    }
}

#[test]
fn matvec_batch_norm_gated_equals_norm_then_act_lin_projection_then_gating() {
    let Some(device) = device() else { return };
    if !device.features().subgroups {
        assert!(
            !std::env::var("RETNET_REQUIRE_GPU").is_ok_and(|v| v == "1"),
            "RETNET_REQUIRE_GPU=1 but the adapter has no subgroups"
        );
        return;
    }
    let mut rng = Rng::new(25);
    // (rows, in, F): a partial row block and an odd F (its last workgroup's second column is
    // past the end); two row blocks from row 2; 1028 inputs (257 vec4s per row).
    for (rows, in_dim, half, start) in [
        (3usize, 36usize, 7usize, 0usize),
        (9, 64, 10, 2),
        (2, 1028, 5, 1),
    ] {
        // Residual rows of a realistic size, norm weights around 1.
        let x: Vec<f32> = rng
            .vec((start + rows) * in_dim)
            .iter()
            .map(|v| 6.0 * v)
            .collect();
        let g: Vec<f32> = rng.vec(in_dim).iter().map(|v| 1.0 + 0.5 * v).collect();
        let w: Vec<f32> = rng.vec(2 * half * in_dim).iter().map(|v| 0.3 * v).collect();
        let y0 = rng.vec(rows * half);
        let (xb, gb) = (
            device.upload_f32("x", &x).unwrap(),
            device.upload_f32("g", &g).unwrap(),
        );
        let eps = 1e-5f32;
        let normed = reference::rms_norm(&x[start * in_dim..], in_dim, Some(&g), eps);
        for act in [Activation::Silu, Activation::Gelu] {
            for format in formats(device) {
                let weights = device.upload_matrix("w", &w, in_dim, format).unwrap();
                let y = device.upload_f32("y", &y0).unwrap();
                let mut params = LinearParams::new(rows as u32, in_dim as u32, 2 * half as u32);
                params.x_row_start = start as u32;
                params.norm_eps = eps;
                params.accumulate = Some(0.5);
                assert!(matvec_batch_norm_gated_supports(&params));
                let buffers = LinearNormBuffers {
                    weight: weights.buffer(),
                    input: &xb,
                    output: &y,
                    norm_weight: &gb,
                };
                run(
                    device,
                    matvec_batch_norm_gated(format, act, params, buffers),
                );
                let stored = as_stored(&w, in_dim, format);
                let zeros = vec![0.0f32; rows * 2 * half];
                let ab = reference::linear_f64(&normed, &stored, &zeros, in_dim, 2 * half, None);
                let gelu = act == Activation::Gelu;
                let want = reference::act_lin_f64(&ab, half, gelu, &y0, Some(0.5));
                let label = format!(
                    "matvec-batch-norm-gated {act:?} {format:?} rows {rows} in {in_dim} F {half}"
                );
                // act(a)·b magnifies a's and b's errors against max|act(a)·b|, so the matvec's
                // bar scales (reference::gating_amplification).
                let tolerance = 1e-5 * reference::gating_amplification(&ab, half, &want);
                assert_close(&label, &read(device, &y, rows * half), &want, tolerance);
            }
        }
    }
}

#[test]
fn matvec_head_gate_equals_head_norm_gate_then_matvec() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(24);
    // (heads, V, out): V = 6 puts head boundaries inside vec4s; V = 300 exceeds the workgroup;
    // 9 heads: a partial group of four in the reduction; 1 head; 40 heads: more heads than
    // subgroups (rounds of the subgroup prologue: 4 to 32 subgroups per workgroup); V = 2 and 1:
    // heads shorter than a vec4.
    for (heads, v, out_dim) in [
        (2usize, 6usize, 5usize),
        (3, 300, 6),
        (9, 4, 11),
        (1, 8, 3),
        (40, 4, 7),
        (6, 2, 3),
        (8, 1, 5),
    ] {
        let width = heads * v;
        let input = rng.vec(width);
        // g is a column range of a wider buffer, as in the q|k|v|g projection.
        let gate_offset = 7;
        let gate: Vec<f32> = rng
            .vec(gate_offset + width + 2)
            .iter()
            .map(|g| 4.0 * g)
            .collect();
        let weight: Vec<f32> = rng.vec(v).iter().map(|w| 1.0 + 0.5 * w).collect();
        let w = rng.vec(out_dim * width);
        let y0 = rng.vec(out_dim);
        let eps = 1e-6f32;
        let (ib, gb, nb) = (
            device.upload_f32("o", &input).unwrap(),
            device.upload_f32("g", &gate).unwrap(),
            device.upload_f32("w", &weight).unwrap(),
        );
        for weighted in [true, false] {
            let mid = reference::head_norm_gate(
                &input,
                Layout {
                    offset: 0,
                    stride: width,
                },
                &gate,
                Layout {
                    offset: gate_offset,
                    stride: width,
                },
                weighted.then_some(&weight[..]),
                1,
                heads,
                v,
                eps,
            );
            let head_gate = HeadGate {
                head_dim: v as u32,
                eps,
                gate_offset: gate_offset as u32,
                gate_stride: gate.len() as u32,
                weighted,
            };
            // Subgroups first: workgroup memory is not zeroed between dispatches, and on
            // lavapipe a head the subgroup prologue failed to normalize would otherwise read
            // the scale the tree prologue left there for the same input.
            for reduction in reductions(device).into_iter().rev() {
                for format in formats(device) {
                    let weights = device.upload_matrix("w", &w, width, format).unwrap();
                    let y = device.upload_f32("y", &y0).unwrap();
                    let mut params = LinearParams::new(1, width as u32, out_dim as u32);
                    params.accumulate = Some(1.3);
                    assert!(matvec_head_gate_supports(&params, &head_gate));
                    let buffers = LinearHeadGateBuffers {
                        weight: weights.buffer(),
                        input: &ib,
                        output: &y,
                        // Unweighted: any buffer, not read.
                        norm_weight: if weighted { &nb } else { &gb },
                        gate: &gb,
                    };
                    run(
                        device,
                        matvec_head_gate(format, reduction, head_gate, params, buffers),
                    );
                    let stored = as_stored(&w, width, format);
                    let want = reference::linear_f64(&mid, &stored, &y0, width, out_dim, Some(1.3));
                    let label = format!(
                        "matvec-head-gate weighted={weighted} {reduction:?} {format:?} {heads}x{v} out {out_dim}"
                    );
                    assert_close(&label, &read(device, &y, out_dim), &want, 1e-5);
                }
            }
        }
    }
}
