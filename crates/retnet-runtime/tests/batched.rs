//! Batched decode: B sequences, each at its own position with its own state slot in a pool,
//! advanced by one token each in one dispatch per kernel.
//! Its shapes are its own, not the shared tables' (`retnet_testkit::shapes`): bit equality with
//! the unbatched kernels only makes sense here (verify checks the batched model decode instead).
//!
//! - `rotary/*-batched` must give the same bits as the unbatched rotary run on each row alone at
//!   that row's position (same arithmetic, only the position's source differs), and match the
//!   f64 reference within 1e-6 (as in basic_kernels.rs).
//! - `retention/recurrent-batched` must update each state exactly as the unbatched recurrent
//!   kernel run on each sequence alone (same bits), give its outputs within the rounding of
//!   another summation order (8 slices there, 32 in the single kernel), leave the pool's other
//!   slots untouched,
//!   and match an f64 recurrence within 2e-5 (the tolerance of retention.rs; 1e-4 after a
//!   1000-token prefill, see that test).
// Test code: clippy.toml allows these in #[test] functions; the helpers here are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::reference::log_decay_f32;
use common::{assert_close, device, read, to_f64, Rng};
use retnet_runtime::kernels::retention::{
    recurrent, recurrent_batched, RecurrentBatchedBuffers, RetentionBatchedParams,
    RetentionBuffers, RetentionParams, Strided,
};
use retnet_runtime::kernels::rotary::{
    rotary, rotary_batched, RotaryBatchedBuffers, RotaryBatchedParams, RotaryBuffers, RotaryParams,
    RotaryStyle,
};
use retnet_runtime::kernels::Bound;
use retnet_runtime::{Device, GpuBuffer};

const TOLERANCE: f64 = 2e-5;
/// Batched and single recurrent outputs: the same products summed in another order (see the
/// comparison).
const SUM_ORDER_TOLERANCE: f64 = 1.5e-5;

fn run(device: &Device, bound: Bound<'_, GpuBuffer>) {
    let mut sequence = device.sequence("batched test");
    sequence.dispatch(bound).expect("dispatch");
    sequence.submit().expect("submit");
}

/// Asserts bit equality of two f32 slices (the batched kernels repeat the unbatched arithmetic).
#[track_caller]
fn assert_same_bits(what: &str, batched: &[f32], alone: &[f32]) {
    assert_eq!(batched.len(), alone.len(), "{what}: lengths differ");
    for (i, (a, b)) in batched.iter().zip(alone).enumerate() {
        assert!(
            a.to_bits() == b.to_bits(),
            "{what}: element {i} differs: batched {a:e}, alone {b:e}"
        );
    }
}

/// Positions of up to 8 sequences: from a fresh one (0) to well past any chunk (70000: rotary
/// angles of tens of thousands of radians, c_n of a γ = 1 head = 70001).
const POSITIONS: [u32; 8] = [0, 5, 1000, 1, 70000, 37, 4096, 2];

#[test]
fn rotary_batched_equals_rotary_at_each_rows_position() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(21);
    let (heads, k) = (3u32, 10u32);
    // Rows hold the rotated heads after 7 other columns and before 4 more.
    let row_stride = 7 + heads * k + 4;
    let theta: Vec<f32> = (0..k / 2)
        .map(|i| 1.0 / 10000f32.powf(i as f32 / (k / 2 - 1) as f32))
        .collect();
    let theta_buffer = device.upload_f32("theta", &theta).unwrap();
    for style in [RotaryStyle::Interleaved, RotaryStyle::Halves] {
        for rows in [1u32, 3, 8] {
            let positions = &POSITIONS[..rows as usize];
            let x = rng.vec((rows * row_stride) as usize);
            let params = RotaryBatchedParams {
                rows,
                heads,
                head_dim: k,
                row_stride,
                col_offset: 7,
                scale: 0.3,
            };
            let batched = device.upload_f32("x batched", &x).unwrap();
            let positions_buffer = device.upload_u32("positions", positions).unwrap();
            run(
                device,
                rotary_batched(
                    style,
                    params,
                    RotaryBatchedBuffers {
                        theta: &theta_buffer,
                        x: &batched,
                        positions: &positions_buffer,
                    },
                ),
            );
            let batched = read(device, &batched, x.len());

            // Each row alone, unbatched, at its own start_pos.
            let alone_buffer = device.upload_f32("x alone", &x).unwrap();
            for (b, &position) in positions.iter().enumerate() {
                let alone = RotaryParams {
                    tokens: 1,
                    heads,
                    head_dim: k,
                    start_pos: position,
                    row_stride,
                    col_offset: b as u32 * row_stride + 7,
                    scale: 0.3,
                };
                run(
                    device,
                    rotary(
                        style,
                        alone,
                        RotaryBuffers {
                            theta: &theta_buffer,
                            x: &alone_buffer,
                        },
                    ),
                );
            }
            let alone = read(device, &alone_buffer, x.len());
            let label = format!("rotary {style:?} batched, rows {rows}");
            assert_same_bits(&label, &batched, &alone);

            // And the f64 reference (angle rounded to f32 as PyTorch does).
            let mut reference = to_f64(&x);
            for (b, &position) in positions.iter().enumerate() {
                for h in 0..heads as usize {
                    let base = b * row_stride as usize + 7 + h * k as usize;
                    for (i, &th) in theta.iter().enumerate() {
                        let angle = f64::from(position as f32 * th);
                        let (ia, ib) = match style {
                            RotaryStyle::Interleaved => (base + 2 * i, base + 2 * i + 1),
                            RotaryStyle::Halves => (base + i, base + k as usize / 2 + i),
                        };
                        let (xa, xb) = (f64::from(x[ia]), f64::from(x[ib]));
                        reference[ia] = (xa * angle.cos() - xb * angle.sin()) * 0.3;
                        reference[ib] = (xb * angle.cos() + xa * angle.sin()) * 0.3;
                    }
                }
            }
            assert_close(&format!("{label} vs f64"), &batched, &reference, 1e-6);
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Shape {
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
    /// The output rows are strided: 2 unused elements before, 5 between rows.
    fn out_stride(&self) -> usize {
        self.out_width() + 5
    }
    fn state_len(&self) -> usize {
        self.query_heads * self.key_dim * self.value_dim
    }

    /// q, k, v of row `row` of the fused buffer.
    fn layout(&self, row: usize) -> (Strided, Strided, Strided) {
        let at = |column: usize| Strided {
            offset: (row * self.row() + column) as u32,
            stride: self.row() as u32,
        };
        (at(0), at(self.k_offset()), at(self.v_offset()))
    }

    fn batched_params(&self, rows: usize, scale_by_decay_sum: bool) -> RetentionBatchedParams {
        let (q, k, v) = self.layout(0);
        RetentionBatchedParams {
            rows: rows as u32,
            query_heads: self.query_heads as u32,
            kv_heads: self.kv_heads as u32,
            key_dim: self.key_dim as u32,
            value_dim: self.value_dim as u32,
            q,
            k,
            v,
            out: Strided {
                offset: 2,
                stride: self.out_stride() as u32,
            },
            scale_by_decay_sum,
        }
    }

    /// Unbatched params for the one token in row `row` at `position`, output in row 0.
    fn alone_params(&self, row: usize, position: u32, scale_by_decay_sum: bool) -> RetentionParams {
        let (q, k, v) = self.layout(row);
        RetentionParams {
            tokens: 1,
            query_heads: self.query_heads as u32,
            kv_heads: self.kv_heads as u32,
            key_dim: self.key_dim as u32,
            value_dim: self.value_dim as u32,
            start_pos: position,
            q,
            k,
            v,
            out: Strided::dense(self.out_width() as u32),
            scale_by_decay_sum,
        }
    }
}

/// One f64 recurrent step of one sequence: S ← γ S + kᵀ v, returns P = q S (÷ sqrt(c_n)).
fn reference_step(
    shape: &Shape,
    row: &[f32],
    log_decay: &[f32],
    position: u32,
    state: &mut [f64],
    scale_by_decay_sum: bool,
) -> Vec<f64> {
    let Shape {
        query_heads,
        kv_heads,
        key_dim: kd,
        value_dim: vd,
    } = *shape;
    let group = query_heads / kv_heads;
    let mut out = vec![0.0; shape.out_width()];
    for h in 0..query_heads {
        let kvh = h / group;
        let log_gamma = f64::from(log_decay[h]);
        let gamma = log_gamma.exp();
        let q = &row[h * kd..][..kd];
        let k = &row[shape.k_offset() + kvh * kd..][..kd];
        let v = &row[shape.v_offset() + kvh * vd..][..vd];
        let s = &mut state[h * kd * vd..][..kd * vd];
        for r in 0..kd {
            for c in 0..vd {
                s[r * vd + c] = gamma * s[r * vd + c] + f64::from(k[r]) * f64::from(v[c]);
            }
        }
        // c_n = Σ_{i=0..n} γ^i = expm1((n+1) log γ) / expm1(log γ), or n + 1 when γ = 1.
        let n1 = f64::from(position) + 1.0;
        let decay_sum = if log_gamma == 0.0 {
            n1
        } else {
            (n1 * log_gamma).exp_m1() / log_gamma.exp_m1()
        };
        let scale = if scale_by_decay_sum {
            1.0 / decay_sum.sqrt()
        } else {
            1.0
        };
        for c in 0..vd {
            let p: f64 = (0..kd).map(|r| f64::from(q[r]) * s[r * vd + c]).sum();
            out[h * vd + c] = p * scale;
        }
    }
    out
}

/// Which sequences advance in each step, in row order: all in order, reversed, every other one
/// (a sequence may sit out a step), all rotated by one.
fn schedule(sequences: usize) -> Vec<Vec<usize>> {
    let all: Vec<usize> = (0..sequences).collect();
    let reversed: Vec<usize> = all.iter().rev().copied().collect();
    let every_other: Vec<usize> = all.iter().copied().step_by(2).collect();
    let mut rotated = all.clone();
    rotated.rotate_left(1);
    vec![all, reversed, every_other, rotated]
}

/// B sequences at the positions of [`POSITIONS`] with random starting states, in slots of a pool
/// of `pool` (slots given in sequence order), advanced by the steps of [`schedule`]: each step's
/// outputs and, at the end, every slot of the pool are compared with the unbatched kernel run on
/// each sequence alone (bit for bit) and with an f64 recurrence.
fn check_batched_recurrent(
    device: &Device,
    shape: Shape,
    log_decay: &[f32],
    slots: &[u32],
    pool: usize,
    seed: u64,
) {
    let sequences = slots.len();
    let state_len = shape.state_len();
    let mut rng = Rng::new(seed);
    let log_decay_buffer = device.upload_f32("log γ", log_decay).unwrap();
    for scale_by_decay_sum in [false, true] {
        let label = format!(
            "{shape:?} B={sequences} slots {slots:?} scale_by_decay_sum={scale_by_decay_sum}"
        );
        // The pool starts random everywhere: slots of sequences hold their (arbitrary) state so
        // far, the others must come out untouched.
        let initial_pool = rng.vec(pool * state_len);
        let pool_buffer = device.upload_f32("state pool", &initial_pool).unwrap();
        let slot_state = |slot: u32| &initial_pool[slot as usize * state_len..][..state_len];
        let alone_states: Vec<GpuBuffer> = slots
            .iter()
            .map(|&slot| device.upload_f32("state alone", slot_state(slot)).unwrap())
            .collect();
        let mut reference_states: Vec<Vec<f64>> =
            slots.iter().map(|&slot| to_f64(slot_state(slot))).collect();
        let mut positions: Vec<u32> = POSITIONS[..sequences].to_vec();

        for (step, rows) in schedule(sequences).into_iter().enumerate() {
            let b = rows.len();
            let fused = rng.vec(b * shape.row());
            let fused_buffer = device.upload_f32("q|k|v", &fused).unwrap();
            let row_positions: Vec<u32> = rows.iter().map(|&s| positions[s]).collect();
            let row_slots: Vec<u32> = rows.iter().map(|&s| slots[s]).collect();
            let positions_buffer = device.upload_u32("positions", &row_positions).unwrap();
            let slots_buffer = device.upload_u32("slots", &row_slots).unwrap();
            let out_len = 2 + b * shape.out_stride();
            let out_buffer = device.create_storage_f32("out", out_len).unwrap();
            run(
                device,
                recurrent_batched(
                    shape.batched_params(b, scale_by_decay_sum),
                    RecurrentBatchedBuffers {
                        q: &fused_buffer,
                        k: &fused_buffer,
                        v: &fused_buffer,
                        log_decay: &log_decay_buffer,
                        positions: &positions_buffer,
                        slots: &slots_buffer,
                        state: &pool_buffer,
                        output: &out_buffer,
                    },
                ),
            );
            let out = read(device, &out_buffer, out_len);

            for (row, &sequence) in rows.iter().enumerate() {
                let position = positions[sequence];
                let alone_out = device
                    .create_storage_f32("out alone", shape.out_width())
                    .unwrap();
                run(
                    device,
                    recurrent(
                        shape.alone_params(row, position, scale_by_decay_sum),
                        RetentionBuffers {
                            q: &fused_buffer,
                            k: &fused_buffer,
                            v: &fused_buffer,
                            log_decay: &log_decay_buffer,
                            state: &alone_states[sequence],
                            output: &alone_out,
                        },
                    ),
                );
                let alone = read(device, &alone_out, shape.out_width());
                let batched = &out[2 + row * shape.out_stride()..][..shape.out_width()];
                let what =
                    format!("{label} step {step} row {row} (sequence {sequence} at {position})");
                // The state update is the same per entry in both kernels (bits compared below);
                // the output's q·S sum is split over 8 slices in the batched kernel and 32 in the
                // single one: the same terms in another order, at most ~K·2⁻²⁴ apart relative to
                // the largest output, 256 · 6e-8 = 1.5e-5 for the widest K here.
                let alone64: Vec<f64> = alone.iter().map(|&v| f64::from(v)).collect();
                assert_close(
                    &format!("{what} output vs alone"),
                    batched,
                    &alone64,
                    SUM_ORDER_TOLERANCE,
                );
                let reference = reference_step(
                    &shape,
                    &fused[row * shape.row()..][..shape.row()],
                    log_decay,
                    position,
                    &mut reference_states[sequence],
                    scale_by_decay_sum,
                );
                assert_close(
                    &format!("{what} output vs f64"),
                    batched,
                    &reference,
                    TOLERANCE,
                );
                positions[sequence] += 1;
            }
            // Nothing outside the rows' output ranges is written.
            for row in 0..b {
                let gap_start = if row == 0 {
                    0
                } else {
                    2 + (row - 1) * shape.out_stride() + shape.out_width()
                };
                let gap_end = 2 + row * shape.out_stride();
                assert!(
                    out[gap_start..gap_end].iter().all(|&v| v == 0.0),
                    "{label}: gap written"
                );
            }
        }

        let final_pool = read(device, &pool_buffer, pool * state_len);
        for slot in 0..pool as u32 {
            let in_pool = &final_pool[slot as usize * state_len..][..state_len];
            match slots.iter().position(|&s| s == slot) {
                Some(sequence) => {
                    let what = format!("{label} state of sequence {sequence} in slot {slot}");
                    let alone = read(device, &alone_states[sequence], state_len);
                    assert_same_bits(&format!("{what} vs alone"), in_pool, &alone);
                    assert_close(
                        &format!("{what} vs f64"),
                        in_pool,
                        &reference_states[sequence],
                        TOLERANCE,
                    );
                }
                None => assert_same_bits(
                    &format!("{label} unused slot {slot}"),
                    in_pool,
                    slot_state(slot),
                ),
            }
        }
    }
}

/// Heads: γ = 1 − 2^-5, γ = 1 exactly (log γ = 0), γ = 1 − 2^-8, γ = 1 − 2^-24.
fn four_heads() -> [f32; 4] {
    [log_decay_f32(0), 0.0, log_decay_f32(3), log_decay_f32(19)]
}

#[test]
fn batched_recurrent_one_sequence() {
    let Some(device) = device() else { return };
    let shape = Shape {
        query_heads: 4,
        kv_heads: 2,
        key_dim: 12,
        value_dim: 20,
    };
    check_batched_recurrent(device, shape, &four_heads(), &[3], 6, 31);
}

#[test]
fn batched_recurrent_three_sequences_in_scattered_slots_grouped_heads() {
    let Some(device) = device() else { return };
    let shape = Shape {
        query_heads: 4,
        kv_heads: 2,
        key_dim: 12,
        value_dim: 20,
    };
    check_batched_recurrent(device, shape, &four_heads(), &[4, 0, 2], 6, 32);
}

#[test]
fn batched_recurrent_eight_sequences_odd_widths() {
    let Some(device) = device() else { return };
    // K = 33, V = 67: neither a multiple of SLICES nor of COLUMNS (three column tiles).
    let shape = Shape {
        query_heads: 2,
        kv_heads: 1,
        key_dim: 33,
        value_dim: 67,
    };
    let log_decay = [log_decay_f32(1), 0.0];
    check_batched_recurrent(device, shape, &log_decay, &[7, 2, 9, 0, 5, 3, 8, 1], 10, 33);
}

#[test]
fn batched_recurrent_value_width_above_256() {
    let Some(device) = device() else { return };
    let shape = Shape {
        query_heads: 1,
        kv_heads: 1,
        key_dim: 16,
        value_dim: 300,
    };
    check_batched_recurrent(device, shape, &[log_decay_f32(2)], &[5, 1, 3], 6, 34);
}

/// A real prefix instead of a random state: sequence b is prefilled alone with the unbatched
/// recurrent kernel over POSITIONS[b] tokens (0, 5, 1000), then all three take batched steps;
/// the result equals the f64 recurrence over the whole sequence. Tolerance 1e-4: after 1000
/// recurrent steps the f32 decay powers (γ multiplied 1000 times, γ itself the f32 exp of log γ)
/// are off by up to ~n·6e-8 ≈ 6e-5 relative (retention.rs keeps n ≤ 100); observed 1.7e-5.
#[test]
fn batched_steps_after_prefills_of_different_lengths_match_the_whole_recurrence() {
    let Some(device) = device() else { return };
    let shape = Shape {
        query_heads: 4,
        kv_heads: 2,
        key_dim: 12,
        value_dim: 20,
    };
    let log_decay = four_heads();
    let log_decay_buffer = device.upload_f32("log γ", &log_decay).unwrap();
    let slots = [4u32, 0, 2];
    let prefill_lengths = [0usize, 5, 1000];
    let steps = 3;
    let state_len = shape.state_len();
    let scale_by_decay_sum = true;
    let tolerance = 1e-4;
    let mut rng = Rng::new(35);
    let pool_buffer = device.create_storage_f32("pool", 6 * state_len).unwrap();
    let mut reference_states = vec![vec![0.0f64; state_len]; slots.len()];
    let tokens: Vec<Vec<f32>> = prefill_lengths
        .iter()
        .map(|&n| rng.vec((n + steps) * shape.row()))
        .collect();

    for (sequence, &n) in prefill_lengths.iter().enumerate() {
        let state = device
            .create_storage_f32("prefill state", state_len)
            .unwrap();
        let fused = &tokens[sequence];
        if n > 0 {
            let fused_buffer = device
                .upload_f32("prefill", &fused[..n * shape.row()])
                .unwrap();
            let out = device
                .create_storage_f32("prefill out", n * shape.out_width())
                .unwrap();
            let params = RetentionParams {
                tokens: n as u32,
                ..shape.alone_params(0, 0, scale_by_decay_sum)
            };
            run(
                device,
                recurrent(
                    params,
                    RetentionBuffers {
                        q: &fused_buffer,
                        k: &fused_buffer,
                        v: &fused_buffer,
                        log_decay: &log_decay_buffer,
                        state: &state,
                        output: &out,
                    },
                ),
            );
        }
        for t in 0..n {
            reference_step(
                &shape,
                &fused[t * shape.row()..][..shape.row()],
                &log_decay,
                t as u32,
                &mut reference_states[sequence],
                scale_by_decay_sum,
            );
        }
        // Move the prefilled state into its slot of the pool.
        let mut encoder = device
            .wgpu_device()
            .create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(
            state.wgpu_buffer(),
            0,
            pool_buffer.wgpu_buffer(),
            u64::from(slots[sequence]) * state_len as u64 * 4,
            state_len as u64 * 4,
        );
        device.wgpu_queue().submit([encoder.finish()]);
    }

    for step in 0..steps {
        let mut fused = Vec::new();
        for (sequence, &n) in prefill_lengths.iter().enumerate() {
            fused.extend_from_slice(&tokens[sequence][(n + step) * shape.row()..][..shape.row()]);
        }
        let positions: Vec<u32> = prefill_lengths.iter().map(|&n| (n + step) as u32).collect();
        let fused_buffer = device.upload_f32("q|k|v", &fused).unwrap();
        let positions_buffer = device.upload_u32("positions", &positions).unwrap();
        let slots_buffer = device.upload_u32("slots", &slots).unwrap();
        let out_len = 2 + slots.len() * shape.out_stride();
        let out_buffer = device.create_storage_f32("out", out_len).unwrap();
        run(
            device,
            recurrent_batched(
                shape.batched_params(slots.len(), scale_by_decay_sum),
                RecurrentBatchedBuffers {
                    q: &fused_buffer,
                    k: &fused_buffer,
                    v: &fused_buffer,
                    log_decay: &log_decay_buffer,
                    positions: &positions_buffer,
                    slots: &slots_buffer,
                    state: &pool_buffer,
                    output: &out_buffer,
                },
            ),
        );
        let out = read(device, &out_buffer, out_len);
        for (row, &position) in positions.iter().enumerate() {
            let reference = reference_step(
                &shape,
                &fused[row * shape.row()..][..shape.row()],
                &log_decay,
                position,
                &mut reference_states[row],
                scale_by_decay_sum,
            );
            assert_close(
                &format!("step {step} sequence {row} at {position}"),
                &out[2 + row * shape.out_stride()..][..shape.out_width()],
                &reference,
                tolerance,
            );
        }
    }
    let final_pool = read(device, &pool_buffer, 6 * state_len);
    for (sequence, &slot) in slots.iter().enumerate() {
        assert_close(
            &format!("state of sequence {sequence} (slot {slot})"),
            &final_pool[slot as usize * state_len..][..state_len],
            &reference_states[sequence],
            tolerance,
        );
    }
}
