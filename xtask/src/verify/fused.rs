//! The decode kernels that fuse a stage into their neighbour, against the f64 composition of
//! the stages: recurrent retention that rotates q and k itself (single and batched) against
//! rotary then the recurrence; the matvecs whose input is act(a)·b or the per-head norm × gate
//! against that stage then the product, in every weight format and reduction the device offers;
//! the batched FFN input projection with its RMSNorm and gating (`matvec-batch-norm-gated`)
//! against the norm, the act|lin product and act(a)·b.
//!
//! Tolerances: the unfused kernels' bars. Retention: 2e-5 (`crates/retnet-runtime/tests/
//! retention.rs`: sums of T·(K + 1) f32 products; T ≤ 3 here, K ≤ 256 — √(3·257)·6e-8 ≈ 2e-6
//! typically) plus the rotation's ~1e-7 (f32 angle reduction and sin/cos). Matvecs: the
//! matvec's `linear_tolerance(in_dim)` plus the input stage's own few roundings (silu/gelu
//! ≤ 2e-7·(|x| + 1), the norm's sum of ≤ 432 squares: `NORM_TOLERANCE`'s 1e-5 reasoning), so
//! `linear_tolerance` + 1e-6.

use super::kernels::{format_support, linear_tolerance, read, reduction_support, submit};
use super::reference::{self as cpu, Layout};
use super::Row;
use retnet_kernels::gated_activation::Activation;
use retnet_kernels::linear::{
    matvec_act_lin, matvec_batch_norm_gated, matvec_batch_norm_gated_supports, matvec_head_gate,
    matvec_head_gate_supports, HeadGate, LinearBuffers, LinearHeadGateBuffers, LinearNormBuffers,
    LinearParams, Reduction,
};
use retnet_kernels::retention::{
    recurrent_batched_rotary, recurrent_rotary, QkRotary, RecurrentBatchedRotaryBuffers,
    RecurrentRotaryBuffers, RetentionBatchedParams, RetentionParams, Strided,
};
use retnet_kernels::rotary::RotaryStyle;
use retnet_kernels::WeightFormat;
use retnet_runtime::{Device, RuntimeError};
use retnet_testkit::as_stored;
use retnet_testkit::Rng;
use std::time::Instant;

const RETENTION_TOLERANCE: f64 = 2e-5;

/// The fused kernels' rows (`quick`: the small shapes only).
pub fn rows(device: &Device, quick: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    retention_rows(device, quick, &mut rows);
    act_lin_rows(device, quick, &mut rows);
    norm_gated_rows(device, quick, &mut rows);
    head_gate_rows(device, quick, &mut rows);
    rows
}

/// Runs `f`, turning a runtime error into a FAIL row and timing the rows it returns.
fn add(
    rows: &mut Vec<Row>,
    case: &str,
    shape: &str,
    f: impl FnOnce() -> Result<Vec<Row>, RuntimeError>,
) {
    let start = Instant::now();
    match f() {
        Ok(new) => {
            let elapsed = start.elapsed() / new.len().max(1) as u32;
            rows.extend(new.into_iter().map(|r| r.timed(elapsed)));
        }
        Err(e) => rows.push(Row::fail(case, shape, format!("runtime error: {e}"))),
    }
}

/// q `[H, K]` | k `[H_kv, K]` | v `[H_kv, V]` | g, from column 2 of each row.
#[derive(Clone, Copy)]
struct Qkv {
    heads: usize,
    kv_heads: usize,
    key_dim: usize,
    value_dim: usize,
}

impl Qkv {
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
    ) -> cpu::Retention<'a> {
        let layout = |offset| Layout {
            offset,
            stride: self.row(),
        };
        cpu::Retention {
            data,
            q: layout(self.q()),
            k: layout(self.k()),
            v: layout(self.v()),
            tokens,
            query_heads: self.heads,
            kv_heads: self.kv_heads,
            key_dim: self.key_dim,
            value_dim: self.value_dim,
            log_decay,
            scale_by_decay_sum: scale,
        }
    }
    fn label(&self) -> String {
        format!(
            "H={} H_kv={} K={} V={}",
            self.heads, self.kv_heads, self.key_dim, self.value_dim
        )
    }
}

fn qkv_shapes(quick: bool) -> Vec<Qkv> {
    let q = |heads, kv_heads, key_dim, value_dim| Qkv {
        heads,
        kv_heads,
        key_dim,
        value_dim,
    };
    // Grouped heads with K ≠ V; three pairs per head; two and three column tiles.
    let mut all = vec![q(4, 2, 8, 12), q(2, 2, 6, 5), q(2, 1, 32, 67)];
    if !quick {
        // retnet_xl's head (K = 256, V = 432) and fla-1.3B's (V = 512), two heads each.
        all.extend([q(2, 2, 256, 432), q(2, 1, 256, 512)]);
    }
    all
}

fn theta(key_dim: usize) -> Vec<f32> {
    let half = key_dim / 2;
    (0..half)
        .map(|i| 1.0 / 10000f32.powf(i as f32 / (half.max(2) - 1) as f32))
        .collect()
}

/// γ < 1 on even heads, γ = 1 (head 20 of the peers' formula) on odd ones.
fn log_decays(heads: usize) -> Vec<f32> {
    (0..heads)
        .map(|h| cpu::log_decay_f32(if h % 2 == 0 { h } else { 20 }))
        .collect()
}

fn style_name(style: RotaryStyle) -> &'static str {
    match style {
        RotaryStyle::Interleaved => "interleaved",
        RotaryStyle::Halves => "halves",
    }
}

fn retention_rows(device: &Device, quick: bool, rows: &mut Vec<Row>) {
    let tokens = 3;
    for (index, shape) in qkv_shapes(quick).into_iter().enumerate() {
        for style in [RotaryStyle::Interleaved, RotaryStyle::Halves] {
            let q_scale = (shape.key_dim as f64).powf(-0.5) as f32;
            let rotary = QkRotary { style, q_scale };
            let interleaved = style == RotaryStyle::Interleaved;
            let theta = theta(shape.key_dim);
            let log_decay = log_decays(shape.heads);
            let out_width = shape.heads * shape.value_dim;
            let state_len = shape.heads * shape.key_dim * shape.value_dim;
            // Position 0 with ÷sqrt(c_n); position 7000 (angles of thousands of radians)
            // without, as the reference counts c_n from position 0.
            for (start_pos, scale) in [(0usize, true), (7000, false)] {
                let case = format!("retention/recurrent-rotary/{}", style_name(style));
                let label = format!("T={tokens} {} pos={start_pos} scale={scale}", shape.label());
                let data = Rng::new(1500 + index as u64).vec(tokens * shape.row());
                add(rows, &case, &label, || {
                    let qkv = device.upload_f32("q|k|v", &data)?;
                    let decay = device.upload_f32("log γ", &log_decay)?;
                    let angles = device.upload_f32("θ", &theta)?;
                    let state = device.upload_f32("state", &vec![0.0; state_len])?;
                    let output = device.create_storage_f32("out", tokens * out_width)?;
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
                        log_decay: &decay,
                        state: &state,
                        output: &output,
                        qkv: &qkv,
                        theta: &angles,
                    };
                    submit(device, &[recurrent_rotary(params, rotary, buffers)])?;
                    let r = shape.reference(&data, tokens, &log_decay, scale);
                    let (want, want_state) =
                        cpu::rotated_retention(&r, &theta, interleaved, start_pos, q_scale);
                    let got = read(device, &output, tokens * out_width)?;
                    let got_state = read(device, &state, state_len)?;
                    Ok(vec![
                        Row::compare(&case, &label, &got, &want, RETENTION_TOLERANCE),
                        Row::compare(
                            format!("{case} state"),
                            &label,
                            &got_state,
                            &want_state,
                            RETENTION_TOLERANCE,
                        ),
                    ])
                });
            }
            // Batched: three sequences at their own positions, in scattered slots of a pool.
            let positions: [u32; 3] = [0, 4097, 31];
            let slots: [u32; 3] = [3, 0, 4];
            let pool = 5;
            let b = positions.len();
            let case = format!("retention/recurrent-batched-rotary/{}", style_name(style));
            let label = format!("B={b} {} positions {positions:?}", shape.label());
            let data = Rng::new(1600 + index as u64).vec(b * shape.row());
            add(rows, &case, &label, || {
                let qkv = device.upload_f32("q|k|v", &data)?;
                let decay = device.upload_f32("log γ", &log_decay)?;
                let angles = device.upload_f32("θ", &theta)?;
                let pool_buffer = device.upload_f32("pool", &vec![0.0; pool * state_len])?;
                let positions_buffer = device.upload_u32("positions", &positions)?;
                let slots_buffer = device.upload_u32("slots", &slots)?;
                let output = device.create_storage_f32("out", b * out_width)?;
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
                    scale_by_decay_sum: false,
                };
                let buffers = RecurrentBatchedRotaryBuffers {
                    log_decay: &decay,
                    positions: &positions_buffer,
                    slots: &slots_buffer,
                    state: &pool_buffer,
                    output: &output,
                    qkv: &qkv,
                    theta: &angles,
                };
                submit(device, &[recurrent_batched_rotary(params, rotary, buffers)])?;
                let got = read(device, &output, b * out_width)?;
                let got_pool = read(device, &pool_buffer, pool * state_len)?;
                // Every row's outputs then every row's state, against the reference row by row.
                let (mut want, mut got_states, mut want_states) = (vec![], vec![], vec![]);
                for (row, (&position, &slot)) in positions.iter().zip(&slots).enumerate() {
                    let row_data = &data[row * shape.row()..][..shape.row()];
                    let r = shape.reference(row_data, 1, &log_decay, false);
                    let (out, state) =
                        cpu::rotated_retention(&r, &theta, interleaved, position as usize, q_scale);
                    want.extend(out);
                    want_states.extend(state);
                    got_states
                        .extend_from_slice(&got_pool[slot as usize * state_len..][..state_len]);
                }
                Ok(vec![
                    Row::compare(&case, &label, &got, &want, RETENTION_TOLERANCE),
                    Row::compare(
                        format!("{case} state"),
                        &label,
                        &got_states,
                        &want_states,
                        RETENTION_TOLERANCE,
                    ),
                ])
            });
        }
    }
}

/// The formats and reductions to run, each with the reason it cannot where it cannot.
fn variants(device: &Device) -> Vec<(WeightFormat, Reduction, Result<(), &'static str>)> {
    let mut all = Vec::new();
    for reduction in [Reduction::Workgroup, Reduction::Subgroup] {
        for format in WeightFormat::ALL {
            let support =
                format_support(device, format).and_then(|()| reduction_support(device, reduction));
            all.push((format, reduction, support));
        }
    }
    all
}

fn reduction_name(reduction: Reduction) -> &'static str {
    match reduction {
        Reduction::Workgroup => "workgroup",
        Reduction::Subgroup => "subgroup",
    }
}

fn act_lin_rows(device: &Device, quick: bool, rows: &mut Vec<Row>) {
    // (rows, in, out): one decode row, a batch of 5 (the batched matvec), a long row.
    let mut shapes = vec![(1usize, 36usize, 10usize), (5, 44, 9)];
    if !quick {
        shapes.push((1, 3456, 64));
        shapes.push((8, 2816, 33));
    }
    for (index, &(n_rows, i, o)) in shapes.iter().enumerate() {
        let mut rng = Rng::new(1700 + index as u64);
        // a over ±4 so that silu and gelu leave their linear range.
        let fused: Vec<f32> = rng.vec(n_rows * 2 * i).iter().map(|x| 4.0 * x).collect();
        let w = rng.vec(o * i);
        let y0 = rng.vec(n_rows * o);
        let shape = format!("rows={n_rows} in={i} out={o}");
        for act in [Activation::Silu, Activation::Gelu] {
            let gelu = act == Activation::Gelu;
            let mid = cpu::act_lin(&fused, i, gelu);
            for (format, reduction, support) in variants(device) {
                let case = format!(
                    "matvec-act-lin/{}/{}/{}",
                    if gelu { "gelu" } else { "silu" },
                    format.name(),
                    reduction_name(reduction)
                );
                if let Err(reason) = support {
                    rows.push(Row::skip(&case, &shape, reason));
                    continue;
                }
                add(rows, &case, &shape, || {
                    let weights = device.upload_matrix("w", &w, i, format)?;
                    let input = device.upload_f32("act|lin", &fused)?;
                    let y = device.upload_f32("y", &y0)?;
                    let mut params = LinearParams::new(n_rows as u32, i as u32, o as u32);
                    params.accumulate = Some(0.7);
                    let buffers = LinearBuffers {
                        weight: weights.buffer(),
                        input: &input,
                        output: &y,
                    };
                    submit(
                        device,
                        &[matvec_act_lin(format, reduction, act, params, buffers)],
                    )?;
                    let stored = as_stored(&w, i, format);
                    let want = cpu::linear_f64(&mid, &stored, &y0, i, o, Some(0.7));
                    let got = read(device, &y, n_rows * o)?;
                    let tolerance = linear_tolerance(i) + 1e-6;
                    Ok(vec![Row::compare(&case, &shape, &got, &want, tolerance)])
                });
            }
        }
    }
}

fn norm_gated_rows(device: &Device, quick: bool, rows: &mut Vec<Row>) {
    // (rows, in, F, first row of X): a partial row block with an odd F, two row blocks from
    // row 2, 257 vec4s per row; retnet_xl's FFN (d 2 048, F 3 456; 40 of its columns).
    let mut shapes = vec![
        (3usize, 36usize, 7usize, 0usize),
        (9, 64, 10, 2),
        (2, 1028, 5, 1),
    ];
    if !quick {
        shapes.push((8, 2048, 40, 0));
    }
    for (index, &(n_rows, i, half, start)) in shapes.iter().enumerate() {
        let mut rng = Rng::new(1750 + index as u64);
        let x: Vec<f32> = rng
            .vec((start + n_rows) * i)
            .iter()
            .map(|v| 6.0 * v)
            .collect();
        let g: Vec<f32> = rng.vec(i).iter().map(|v| 1.0 + 0.5 * v).collect();
        let w: Vec<f32> = rng.vec(2 * half * i).iter().map(|v| 0.3 * v).collect();
        let y0 = rng.vec(n_rows * half);
        let eps = 1e-5f32;
        let normed = cpu::rms_norm(&x[start * i..], i, Some(&g), eps);
        let mut shape = format!("rows={n_rows} in={i} F={half}");
        if start > 0 {
            shape += &format!(" x_row_start={start}");
        }
        for act in [Activation::Silu, Activation::Gelu] {
            let gelu = act == Activation::Gelu;
            for format in WeightFormat::ALL {
                let case = format!(
                    "matvec-batch-norm-gated/{}/{}/subgroup",
                    if gelu { "gelu" } else { "silu" },
                    format.name()
                );
                let support = format_support(device, format)
                    .and_then(|()| reduction_support(device, Reduction::Subgroup));
                if let Err(reason) = support {
                    rows.push(Row::skip(&case, &shape, reason));
                    continue;
                }
                add(rows, &case, &shape, || {
                    let weights = device.upload_matrix("w", &w, i, format)?;
                    let input = device.upload_f32("x", &x)?;
                    let norm = device.upload_f32("g", &g)?;
                    let y = device.upload_f32("y", &y0)?;
                    let mut params = LinearParams::new(n_rows as u32, i as u32, 2 * half as u32);
                    params.x_row_start = start as u32;
                    params.norm_eps = eps;
                    params.accumulate = Some(0.5);
                    if !matvec_batch_norm_gated_supports(&params) {
                        return Ok(vec![Row::fail(&case, &shape, "shape not supported".into())]);
                    }
                    let buffers = LinearNormBuffers {
                        weight: weights.buffer(),
                        input: &input,
                        output: &y,
                        norm_weight: &norm,
                    };
                    submit(
                        device,
                        &[matvec_batch_norm_gated(format, act, params, buffers)],
                    )?;
                    let stored = as_stored(&w, i, format);
                    let zeros = vec![0.0f32; n_rows * 2 * half];
                    let ab = cpu::linear_f64(&normed, &stored, &zeros, i, 2 * half, None);
                    let want = cpu::act_lin_f64(&ab, half, gelu, &y0, Some(0.5));
                    let got = read(device, &y, n_rows * half)?;
                    let tolerance =
                        (linear_tolerance(i) + 1e-6) * cpu::gating_amplification(&ab, half, &want);
                    Ok(vec![Row::compare(&case, &shape, &got, &want, tolerance)])
                });
            }
        }
    }
}

fn head_gate_rows(device: &Device, quick: bool, rows: &mut Vec<Row>) {
    // (heads, V, out): head boundaries inside vec4s; V over the workgroup; a partial group of
    // four heads in the reduction; more heads than subgroups; heads shorter than a vec4.
    let mut shapes = vec![
        (2usize, 6usize, 5usize),
        (3, 300, 6),
        (9, 4, 11),
        (40, 4, 7),
        (6, 2, 3),
    ];
    if !quick {
        // retnet_xl's out_proj input (8 × 432) and fla-1.3B's (8 × 512), 40 outputs.
        shapes.extend([(8, 432, 40), (8, 512, 40)]);
    }
    for (index, &(heads, v, o)) in shapes.iter().enumerate() {
        let width = heads * v;
        let mut rng = Rng::new(1800 + index as u64);
        let input = rng.vec(width);
        let gate_offset = 7;
        let gate: Vec<f32> = rng
            .vec(gate_offset + width + 2)
            .iter()
            .map(|g| 4.0 * g)
            .collect();
        let weight: Vec<f32> = rng.vec(v).iter().map(|w| 1.0 + 0.5 * w).collect();
        let w = rng.vec(o * width);
        let y0 = rng.vec(o);
        let eps = 1e-6f32;
        let shape = format!("H={heads} V={v} out={o}");
        for weighted in [true, false] {
            let mid = cpu::head_norm_gate(
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
            for (format, reduction, support) in variants(device) {
                let case = format!(
                    "matvec-head-gate/{}/{}/{}",
                    if weighted { "weighted" } else { "unweighted" },
                    format.name(),
                    reduction_name(reduction)
                );
                let mut params = LinearParams::new(1, width as u32, o as u32);
                params.accumulate = Some(1.3);
                if let Err(reason) = support {
                    rows.push(Row::skip(&case, &shape, reason));
                    continue;
                }
                if !matvec_head_gate_supports(&params, &head_gate) {
                    rows.push(Row::fail(&case, &shape, "shape not supported".into()));
                    continue;
                }
                add(rows, &case, &shape, || {
                    let weights = device.upload_matrix("w", &w, width, format)?;
                    let ib = device.upload_f32("o", &input)?;
                    let gb = device.upload_f32("g", &gate)?;
                    let nb = device.upload_f32("norm", &weight)?;
                    let y = device.upload_f32("y", &y0)?;
                    let buffers = LinearHeadGateBuffers {
                        weight: weights.buffer(),
                        input: &ib,
                        output: &y,
                        norm_weight: &nb,
                        gate: &gb,
                    };
                    let bound = matvec_head_gate(format, reduction, head_gate, params, buffers);
                    submit(device, &[bound])?;
                    let stored = as_stored(&w, width, format);
                    let want = cpu::linear_f64(&mid, &stored, &y0, width, o, Some(1.3));
                    let got = read(device, &y, o)?;
                    let tolerance = linear_tolerance(width) + 1e-6;
                    Ok(vec![Row::compare(&case, &shape, &got, &want, tolerance)])
                });
            }
        }
    }
}
