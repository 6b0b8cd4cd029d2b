//! Every non-retention kernel against a straightforward f64 CPU computation.
//!
//! Tolerances (error relative to the largest |reference|, see `common::max_relative_error`):
//! - data movement and single products (gather × scale): 1e-6, a few f32 roundings;
//! - reductions in f32 (norms over ≤ 1000 values, dot products over ≤ 1024 terms): 1e-5; the
//!   rounding error of an n-term f32 sum is ~√n·6e-8 typically and stays well under 1e-5 here;
//! - f16 weights: the reference uses the same f16-rounded weights, so the f32 tolerances apply.
// Test code: clippy.toml allows these in #[test] functions; the helpers here are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{as_stored, assert_close, device, formats, read, reference, shapes, Rng, Set};
use retnet_runtime::kernels::embedding::{gather, gather_rows, EmbeddingParams, GatherBuffers};
use retnet_runtime::kernels::gated_activation::{
    gated_activation, Activation, GatedActivationBuffers, GatedActivationParams,
};
use retnet_runtime::kernels::gemm_coop::{
    direct_padded_rows, gemm_coop, gemm_coop_direct, gemm_coop_direct_edge_bytes,
    gemm_coop_direct_supports, gemm_coop_supports, to_f16, CoopShape, GemmCoopDirectBuffers,
    ToF16Buffers,
};
use retnet_runtime::kernels::head_norm_gate::{
    head_norm_gate, head_norm_gate_unweighted, HeadGateBuffers, HeadNormGateBuffers,
    HeadNormGateParams,
};
use retnet_runtime::kernels::linear::{
    matmul, matvec, matvec_batch, matvec_norm, LinearBuffers, LinearNormBuffers, LinearParams,
    Reduction,
};
use retnet_runtime::kernels::retention::Strided;
use retnet_runtime::kernels::rms_norm::{rms_norm, RmsNormBuffers, RmsNormParams};
use retnet_runtime::kernels::rotary::{rotary, RotaryBuffers, RotaryParams, RotaryStyle};
use retnet_runtime::kernels::{Bound, WeightFormat};
use retnet_runtime::{Device, GpuBuffer};

fn run(device: &Device, bound: Bound<'_, GpuBuffer>) {
    let mut sequence = device.sequence("test");
    sequence.dispatch(bound).expect("dispatch");
    sequence.submit().expect("submit");
}

#[test]
fn embedding_gather_matches_cpu() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(1);
    for shape in shapes::embedding(Set::Quick) {
        let (vocab, dim, scale) = (shape.vocab, shape.dim, shape.scale);
        let table = rng.vec(vocab * dim);
        // The last row among random ones.
        let mut ids: Vec<u32> = (0..shape.tokens)
            .map(|_| rng.below(vocab as u64) as u32)
            .collect();
        ids[0] = vocab as u32 - 1;
        for format in formats(device) {
            let weights = device.upload_matrix("table", &table, dim, format).unwrap();
            let ids_buffer = device.upload_u32("ids", &ids).unwrap();
            let out = device.create_storage_f32("out", ids.len() * dim).unwrap();
            let params = EmbeddingParams {
                tokens: ids.len() as u32,
                dim: dim as u32,
                scale,
            };
            run(
                device,
                gather(
                    format,
                    params,
                    GatherBuffers {
                        weight: weights.buffer(),
                        token_ids: &ids_buffer,
                        output: &out,
                    },
                ),
            );
            let stored = as_stored(&table, dim, format);
            let reference: Vec<f64> = ids
                .iter()
                .flat_map(|&id| (0..dim).map(move |c| (id as usize, c)))
                .map(|(id, c)| f64::from(stored[id * dim + c]) * f64::from(scale))
                .collect();
            assert_close(
                &format!("embedding {format:?} {shape:?}"),
                &read(device, &out, ids.len() * dim),
                &reference,
                1e-6,
            );
        }
    }
}

#[test]
fn rms_norm_matches_cpu() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(2);
    for shape in shapes::rms_norm(Set::Quick) {
        let (rows, dim, eps) = (shape.rows, shape.dim, shape.eps);
        let x = rng.vec(rows * dim);
        let w: Vec<f32> = rng.vec(dim).iter().map(|v| 1.0 + 0.5 * v).collect();
        let xb = device.upload_f32("x", &x).unwrap();
        let wb = device.upload_f32("w", &w).unwrap();
        let out = device.create_storage_f32("out", rows * dim).unwrap();
        let params = RmsNormParams {
            rows: rows as u32,
            dim: dim as u32,
            eps,
        };
        run(
            device,
            rms_norm(
                params,
                RmsNormBuffers {
                    input: &xb,
                    norm_weight: &wb,
                    output: &out,
                },
            ),
        );
        let reference = reference::rms_norm(&x, dim, Some(&w), eps);
        assert_close(
            &format!("rms_norm {rows}x{dim}"),
            &read(device, &out, rows * dim),
            &reference,
            1e-5,
        );
    }
}

/// Y[r] = alpha·Y0[r] + X[x_row_start + r]·Wᵀ in f64 (the test kit's reference).
fn linear_reference(x: &[f32], w: &[f32], y0: &[f32], params: &LinearParams) -> Vec<f64> {
    reference::linear(&reference::Linear {
        x,
        weight: w,
        y0,
        rows: params.rows as usize,
        in_dim: params.in_dim as usize,
        out_dim: params.out_dim as usize,
        x_row_start: params.x_row_start as usize,
        accumulate: params.accumulate,
    })
}

/// The linear kernel under test.
#[derive(Clone, Copy)]
enum Linear {
    Matmul,
    Matvec(Reduction),
    MatvecBatch(Reduction),
    MatvecNorm,
    Coop(CoopShape),
}

impl Linear {
    fn bound<'b>(
        self,
        format: WeightFormat,
        params: LinearParams,
        buffers: LinearBuffers<'b, GpuBuffer>,
    ) -> Bound<'b, GpuBuffer> {
        match self {
            Linear::Matmul => matmul(format, params, buffers),
            Linear::Matvec(reduction) => matvec(format, reduction, params, buffers),
            Linear::MatvecBatch(reduction) => matvec_batch(format, reduction, params, buffers),
            Linear::Coop(shape) => gemm_coop(shape, params, buffers),
            Linear::MatvecNorm => unreachable!("matvec-norm takes a norm weight: bound_norm"),
        }
    }

    /// Like [`Linear::bound`]; matvec-norm also binds the norm's weight `g`.
    fn bound_with_norm<'b>(
        self,
        format: WeightFormat,
        params: LinearParams,
        buffers: LinearBuffers<'b, GpuBuffer>,
        g: &'b GpuBuffer,
    ) -> Bound<'b, GpuBuffer> {
        match self {
            Linear::MatvecNorm => {
                let buffers = LinearNormBuffers {
                    weight: buffers.weight,
                    input: buffers.input,
                    output: buffers.output,
                    norm_weight: g,
                };
                matvec_norm(format, params, buffers)
            }
            other => other.bound(format, params, buffers),
        }
    }
}

fn check_linear(device: &Device, rng: &mut Rng, params: LinearParams, kernel: Linear, what: &str) {
    let (i, o) = (params.in_dim as usize, params.out_dim as usize);
    let x_rows = params.x_row_start as usize + params.rows as usize;
    let x = rng.vec(x_rows * i);
    let w = rng.vec(o * i);
    let y0 = rng.vec(params.rows as usize * o);
    let xb = device.upload_f32("x", &x).unwrap();
    for format in formats(device) {
        let weights = device.upload_matrix("w", &w, i, format).unwrap();
        let y = device.upload_f32("y", &y0).unwrap();
        let buffers = LinearBuffers {
            weight: weights.buffer(),
            input: &xb,
            output: &y,
        };
        run(device, kernel.bound(format, params, buffers));
        let reference = linear_reference(&x, &as_stored(&w, i, format), &y0, &params);
        let label = format!(
            "{what} {format:?} rows {} in {i} out {o} {:?}",
            params.rows, params.accumulate
        );
        assert_close(
            &label,
            &read(device, &y, params.rows as usize * o),
            &reference,
            1e-5,
        );
    }
}

/// The matvec reductions this device runs.
fn reductions(device: &Device) -> Vec<Reduction> {
    let mut reductions = vec![Reduction::Workgroup];
    if device.features().subgroups {
        reductions.push(Reduction::Subgroup);
    }
    reductions
}

/// `(what, kernel, rows)` for every linear kernel this device runs, at a row count it takes.
type LinearCase = (String, Linear, u32);

fn linear_cases(device: &Device) -> Vec<LinearCase> {
    let mut cases: Vec<LinearCase> = vec![("matmul".into(), Linear::Matmul, 37)];
    for reduction in reductions(device) {
        cases.push((
            format!("matvec {reduction:?}"),
            Linear::Matvec(reduction),
            1,
        ));
        cases.push((
            format!("matvec-batch {reduction:?}"),
            Linear::MatvecBatch(reduction),
            11,
        ));
    }
    if device.features().subgroups {
        cases.push(("matvec-norm".into(), Linear::MatvecNorm, 1));
        // More rows: the batched kernel with the norm fused (two row blocks, one partial).
        cases.push(("matvec-batch-norm".into(), Linear::MatvecNorm, 11));
    }
    if let Some(shape) = device.coop_shape() {
        // f16 weights only (the kernel reads native halves); 70 rows: a partial block.
        cases.push((
            format!("gemm-coop {:?}", shape.tile),
            Linear::Coop(shape),
            70,
        ));
    }
    cases
}

/// The direct tensor-core GEMM as the model runs it: X converted to f16 once (from row 1, rows
/// padded to whole blocks), then one product per row block of a split W writing its columns of
/// the one Y, with and without the fused residual; a partial row block (70 rows) and blocks of
/// 64, 48 and 48 columns (tiles past each block's columns clamped onto its last tile). Against
/// the f64 reference of the f16-rounded X and W.
#[test]
fn direct_gemm_converts_once_and_writes_row_blocks_at_their_column_offset() {
    let Some(device) = device() else { return };
    // CI's run on lavapipe 26 sets RETNET_REQUIRE_COOP=1: there a missing tile is a failure.
    let Some(shape) = device.coop_shape() else {
        assert!(
            !std::env::var("RETNET_REQUIRE_COOP").is_ok_and(|v| v == "1"),
            "RETNET_REQUIRE_COOP=1 but the adapter has no cooperative matrices"
        );
        eprintln!("skipped: adapter lacks cooperative matrices");
        return;
    };
    let mut rng = Rng::new(12);
    let (rows, i, o) = (70u32, 96usize, 160usize);
    let bounds = [0usize, 64, 112, 160];
    for accumulate in [None, Some(0.75)] {
        let params = LinearParams {
            x_row_start: 1,
            accumulate,
            ..LinearParams::new(rows, i as u32, o as u32)
        };
        let x = rng.vec((rows as usize + 1) * i);
        let w = rng.vec(o * i);
        let y0 = rng.vec(rows as usize * o);
        let xb = device.upload_f32("x", &x).unwrap();
        let padded = direct_padded_rows(shape.tile, rows) as usize;
        let x16 = device
            .create_storage("x f16", (padded * i * 2) as u64)
            .unwrap();
        let y = device.upload_f32("y", &y0).unwrap();
        let edge_bytes = gemm_coop_direct_edge_bytes(shape.tile, &params);
        let edge = device.create_storage("edge", edge_bytes).unwrap();
        let blocks: Vec<_> = bounds
            .windows(2)
            .map(|b| {
                let part = &w[b[0] * i..b[1] * i];
                let buffer = device.upload_matrix("w block", part, i, WeightFormat::F16);
                (b[0] as u32, (b[1] - b[0]) as u32, buffer.unwrap())
            })
            .collect();
        let mut sequence = device.sequence("test");
        let convert = ToF16Buffers {
            input: &xb,
            output: &x16,
        };
        sequence
            .dispatch(to_f16(shape.tile, &params, convert))
            .unwrap();
        for (first, n, wb) in &blocks {
            let part = params.row_block(*first, *n);
            assert!(gemm_coop_direct_supports(shape.tile, &part));
            let buffers = GemmCoopDirectBuffers {
                weight: wb.buffer(),
                input: &x16,
                output: &y,
                edge: &edge,
            };
            sequence
                .dispatch(gemm_coop_direct(shape, part, buffers))
                .unwrap();
        }
        sequence.submit().unwrap();
        let x_seen = retnet_testkit::round_f16(&x);
        let stored = as_stored(&w, i, WeightFormat::F16);
        let reference = linear_reference(&x_seen, &stored, &y0, &params);
        let got = read(device, &y, rows as usize * o);
        // Exact f16 products summed in f32 over 96 terms: f32 rounding only.
        assert_close(
            &format!("gemm-coop-direct {accumulate:?}"),
            &got,
            &reference,
            1e-5,
        );
    }
}

/// A matrix split by rows (as one over the binding limit is); its own shape (the row blocks only
/// make sense here, verify does not split matrices): each block in its own buffer,
/// dispatched with `LinearParams::row_block`, writes its columns of the one Y at the full row
/// stride, for every linear kernel, with and without the fused residual; the columns of the
/// blocks not run are left as they were.
#[test]
fn linear_kernels_write_row_blocks_at_their_column_offset() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(11);
    let (i, o) = (64usize, 150usize);
    // Uneven blocks, one of them not a multiple of any tile or of 4 columns.
    let bounds = [0usize, 64, 101, 150];
    let norm_weight: Vec<f32> = rng.vec(i).iter().map(|v| 1.0 + 0.5 * v).collect();
    let gb = device.upload_f32("g", &norm_weight).unwrap();
    let eps = 1e-5f32;
    for (what, make, rows) in linear_cases(device) {
        let normed = matches!(make, Linear::MatvecNorm);
        let coop = what.starts_with("gemm-coop");
        for accumulate in [None, Some(0.75)] {
            let params = LinearParams {
                x_row_start: 1,
                accumulate,
                norm_eps: eps,
                ..LinearParams::new(rows, i as u32, o as u32)
            };
            let x = rng.vec((rows as usize + 1) * i);
            let w = rng.vec(o * i);
            let y0 = rng.vec(rows as usize * o);
            let xb = device.upload_f32("x", &x).unwrap();
            // The reference sees x as the kernel does: normalized first for matvec-norm.
            let x_ref: Vec<f32> = if normed {
                let mut n = x.clone();
                for row in n.chunks_mut(i) {
                    let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / i as f64;
                    let inv = 1.0 / (ms + f64::from(eps)).sqrt();
                    for (v, &g) in row.iter_mut().zip(&norm_weight) {
                        *v = (f64::from(*v) * inv * f64::from(g)) as f32;
                    }
                }
                n
            } else {
                x.clone()
            };
            let formats = if coop {
                vec![WeightFormat::F16]
            } else {
                formats(device)
            };
            for format in formats {
                let stored = as_stored(&w, i, format);
                let blocks: Vec<_> = bounds
                    .windows(2)
                    .map(|b| {
                        let rows_of = &w[b[0] * i..b[1] * i];
                        let buffer = device.upload_matrix("w block", rows_of, i, format);
                        (b[0] as u32, (b[1] - b[0]) as u32, buffer.unwrap())
                    })
                    .collect();
                let dispatch_block = |y: &GpuBuffer, first: u32, n: u32, wb: &GpuBuffer| {
                    let part = params.row_block(first, n);
                    assert!(!coop || gemm_coop_supports(device.coop_shape().unwrap().tile, &part));
                    let buffers = LinearBuffers {
                        weight: wb,
                        input: &xb,
                        output: y,
                    };
                    run(device, make.bound_with_norm(format, part, buffers, &gb));
                };
                let label = format!("{what} {format:?} rows {rows} {accumulate:?}");
                let y = device.upload_f32("y", &y0).unwrap();
                for (first, n, wb) in &blocks {
                    dispatch_block(&y, *first, *n, wb.buffer());
                }
                let reference = linear_reference(&x_ref, &stored, &y0, &params);
                let got = read(device, &y, rows as usize * o);
                // gemm-coop rounds X to f16 as it stages it.
                let tolerance = if coop { 3e-3 } else { 1e-5 };
                assert_close(&label, &got, &reference, tolerance);

                // Only the middle block: its columns change, the others keep Y's values.
                let y = device.upload_f32("y", &y0).unwrap();
                let (first, n, wb) = &blocks[1];
                dispatch_block(&y, *first, *n, wb.buffer());
                let got = read(device, &y, rows as usize * o);
                for r in 0..rows as usize {
                    for c in 0..o {
                        let at = r * o + c;
                        if c < bounds[1] || c >= bounds[2] {
                            assert_eq!(got[at].to_bits(), y0[at].to_bits(), "{label}: ({r}, {c})");
                        } else {
                            let err = (f64::from(got[at]) - reference[at]).abs();
                            assert!(
                                err < 1e-2,
                                "{label}: ({r}, {c}) {} vs {}",
                                got[at],
                                reference[at]
                            );
                        }
                    }
                }
            }
        }
    }
}

/// An embedding table split by rows (its own shape, as above): each part writes the rows of the tokens it holds, and
/// together they give the whole table's gather.
#[test]
fn embedding_gather_over_row_blocks_matches_cpu() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(12);
    let (vocab, dim) = (40usize, 12usize);
    let table = rng.vec(vocab * dim);
    let ids: Vec<u32> = vec![39, 0, 16, 17, 15, 16, 3];
    let bounds = [0usize, 16, 17, 40];
    let scale = 0.5f32;
    let params = EmbeddingParams {
        tokens: ids.len() as u32,
        dim: dim as u32,
        scale,
    };
    for format in formats(device) {
        let ids_buffer = device.upload_u32("ids", &ids).unwrap();
        let out = device.create_storage_f32("out", ids.len() * dim).unwrap();
        for b in bounds.windows(2) {
            let part = &table[b[0] * dim..b[1] * dim];
            let weights = device.upload_matrix("part", part, dim, format).unwrap();
            let buffers = GatherBuffers {
                weight: weights.buffer(),
                token_ids: &ids_buffer,
                output: &out,
            };
            let (first, rows) = (b[0] as u32, (b[1] - b[0]) as u32);
            run(device, gather_rows(format, params, first, rows, buffers));
        }
        let stored = as_stored(&table, dim, format);
        let reference: Vec<f64> = ids
            .iter()
            .flat_map(|&id| (0..dim).map(move |c| (id as usize, c)))
            .map(|(id, c)| f64::from(stored[id * dim + c]) * f64::from(scale))
            .collect();
        assert_close(
            &format!("split embedding {format:?}"),
            &read(device, &out, ids.len() * dim),
            &reference,
            1e-6,
        );
    }
}

#[test]
fn matmul_matches_cpu_for_odd_and_untiled_shapes() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(3);
    // Tiles are 64×64 with 16-wide K slices: these shapes exercise partial tiles on every axis.
    for case in shapes::matmul(Set::Quick) {
        check_linear(device, &mut rng, case.params, Linear::Matmul, "matmul");
    }
}

#[test]
fn matvec_matches_cpu_with_both_reductions() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(4);
    for reduction in reductions(device) {
        let make = Linear::Matvec(reduction);
        for case in shapes::matvec(Set::Quick) {
            let what = format!("matvec {reduction:?} {}", case.what);
            check_linear(device, &mut rng, case.params, make, &what);
        }
    }
}

#[test]
fn matvec_batch_matches_cpu_with_both_reductions() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(8);
    for reduction in reductions(device) {
        let make = Linear::MatvecBatch(reduction);
        for case in shapes::matvec_batch(Set::Quick) {
            let what = format!("matvec-batch {reduction:?} {}", case.what);
            check_linear(device, &mut rng, case.params, make, &what);
        }
    }
}

/// Rotates like PyTorch: the angle is the f32 product f32(position)·θ, then cos/sin in f64.
fn rotary_reference(x: &[f32], theta: &[f32], style: RotaryStyle, p: &RotaryParams) -> Vec<f64> {
    reference::rotary(
        x,
        theta,
        style == RotaryStyle::Interleaved,
        p.tokens as usize,
        p.heads as usize,
        p.head_dim as usize,
        p.start_pos as usize,
        p.row_stride as usize,
        p.col_offset as usize,
        p.scale,
    )
}

#[test]
fn rotary_matches_cpu_in_both_styles_at_large_positions() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(5);
    for style in [RotaryStyle::Interleaved, RotaryStyle::Halves] {
        // Positions of 5000 and more: angles of thousands of radians, where unreduced GPU sin/cos
        // lose accuracy.
        // Past position 10^5 the angle reduction's error grows with the position: verify bounds
        // those rows with its position-dependent tolerance, this test's 1e-6 stops at 10^5.
        for shape in shapes::rotary(Set::Quick)
            .into_iter()
            .filter(|s| s.start_pos <= 100_000)
        {
            let (tokens, heads, k) = (
                shape.tokens as u32,
                shape.heads as u32,
                shape.head_dim as u32,
            );
            let start_pos = shape.start_pos as u32;
            // Rows hold q (`heads` heads) after 7 other columns and before 4 more: a strided
            // column range.
            let row_stride = 7 + heads * k + 4;
            let theta: Vec<f32> = (0..k / 2)
                .map(|i| 1.0 / 10000f32.powf(i as f32 / ((k / 2).max(2) - 1) as f32))
                .collect();
            let x = rng.vec((tokens * row_stride) as usize);
            let params = RotaryParams {
                tokens,
                heads,
                head_dim: k,
                start_pos,
                row_stride,
                col_offset: 7,
                scale: 0.3,
            };
            let xb = device.upload_f32("x", &x).unwrap();
            let tb = device.upload_f32("theta", &theta).unwrap();
            run(
                device,
                rotary(style, params, RotaryBuffers { theta: &tb, x: &xb }),
            );
            let reference = rotary_reference(&x, &theta, style, &params);
            // Angle reduction and sin/cos in f32: ~1e-7 absolute, so 1e-6 relative to max.
            assert_close(
                &format!("rotary {style:?} at {start_pos}"),
                &read(device, &xb, x.len()),
                &reference,
                1e-6,
            );
        }
    }
}

#[test]
fn head_norm_gate_matches_cpu() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(6);
    // V = 300 exceeds the workgroup (128): several values per invocation.
    for shape in shapes::head_norm_gate(Set::Quick) {
        let (tokens, heads, v) = (shape.tokens, shape.heads, shape.value_dim);
        let width = heads * v;
        // Input rows padded by 3, gate a column range after 2 columns in rows of width + 5.
        let input = rng.vec(tokens * (width + 3));
        let gate = rng
            .vec(tokens * (width + 5))
            .iter()
            .map(|g| 4.0 * g)
            .collect::<Vec<_>>();
        let weight: Vec<f32> = rng.vec(v).iter().map(|w| 1.0 + 0.5 * w).collect();
        let eps = 1e-6f32;
        let params = HeadNormGateParams {
            tokens: tokens as u32,
            heads: heads as u32,
            head_dim: v as u32,
            eps,
            input: Strided {
                offset: 0,
                stride: (width + 3) as u32,
            },
            gate: Strided {
                offset: 2,
                stride: (width + 5) as u32,
            },
            out: Strided::dense(width as u32),
        };
        let (ib, gb, wb) = (
            device.upload_f32("o", &input).unwrap(),
            device.upload_f32("g", &gate).unwrap(),
            device.upload_f32("w", &weight).unwrap(),
        );
        let out = device.create_storage_f32("out", tokens * width).unwrap();
        for weighted in [true, false] {
            let reference = reference::head_norm_gate(
                &input,
                reference::Layout {
                    offset: 0,
                    stride: width + 3,
                },
                &gate,
                reference::Layout {
                    offset: 2,
                    stride: width + 5,
                },
                weighted.then_some(&weight[..]),
                tokens,
                heads,
                v,
                eps,
            );
            if weighted {
                run(
                    device,
                    head_norm_gate(
                        params,
                        HeadNormGateBuffers {
                            input: &ib,
                            gate: &gb,
                            norm_weight: &wb,
                            output: &out,
                        },
                    ),
                );
            } else {
                run(
                    device,
                    head_norm_gate_unweighted(
                        params,
                        HeadGateBuffers {
                            input: &ib,
                            gate: &gb,
                            output: &out,
                        },
                    ),
                );
            }
            let label = format!("head_norm_gate weighted={weighted} {tokens}x{heads}x{v}");
            assert_close(
                &label,
                &read(device, &out, tokens * width),
                &reference,
                1e-5,
            );
        }
    }
}

#[test]
fn gated_activation_matches_cpu_with_exact_gelu() {
    let Some(device) = device() else { return };
    let mut rng = Rng::new(7);
    for shape in shapes::gated_activation(Set::Quick) {
        let (tokens, width) = (shape.tokens, shape.width);
        // One fused buffer [tokens, 2·width]: a in the first half, l in the second.
        let mut fused = rng.vec(tokens * 2 * width);
        for t in 0..tokens {
            for i in 0..width {
                fused[t * 2 * width + i] *= 8.0; // a spans [-8, 8): both tails of gelu.
                fused[t * 2 * width + width + i] = 1.0; // l = 1 isolates the activation's error.
            }
        }
        let buffer = device.upload_f32("a|l", &fused).unwrap();
        let out = device.create_storage_f32("out", tokens * width).unwrap();
        let params = GatedActivationParams {
            tokens: tokens as u32,
            width: width as u32,
            act: Strided {
                offset: 0,
                stride: (2 * width) as u32,
            },
            linear: Strided {
                offset: width as u32,
                stride: (2 * width) as u32,
            },
            out: Strided::dense(width as u32),
        };
        for activation in [Activation::Silu, Activation::Gelu] {
            run(
                device,
                gated_activation(
                    activation,
                    params,
                    GatedActivationBuffers {
                        act_input: &buffer,
                        linear_input: &buffer,
                        output: &out,
                    },
                ),
            );
            let gpu = read(device, &out, tokens * width);
            let mut worst = 0.0f64;
            for t in 0..tokens {
                for i in 0..width {
                    let a = f64::from(fused[t * 2 * width + i]);
                    let reference = match activation {
                        Activation::Silu => reference::silu(a),
                        Activation::Gelu => reference::gelu(a),
                    };
                    // Elementwise: |error| ≤ 2e-7·(|a| + 1) combines the erfc fit (< 1.2e-7 relative)
                    // with f32 rounding of x, x² and exp (|x| ≤ 8).
                    let error = (f64::from(gpu[t * width + i]) - reference).abs() / (a.abs() + 1.0);
                    worst = worst.max(error);
                }
            }
            eprintln!("{activation:?} {shape:?}: max |error|/(|x|+1) = {worst:.2e}");
            assert!(worst <= 2e-7, "{activation:?} {shape:?}: error {worst:.2e}");
        }
    }
}
