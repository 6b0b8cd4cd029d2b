//! Every GPU kernel against an f64 CPU computation ([`super::reference`]) over a matrix of
//! shapes: odd sizes and sizes that are not multiples of the tiles, one and many heads, grouped
//! heads, K ≠ V, T from 1 to 4096, several chunk sizes, γ = 1 and γ < 1, with and without the
//! ÷sqrt(c_n) scale, every weight format and matvec reduction the device offers.
//!
//! Tolerances bound max |gpu − ref| / max |ref| and are stated next to each family with their
//! justification. Inputs are uniform in [-1, 1) unless said otherwise; f16 weights are compared
//! with a reference that uses the same f16-rounded values, so only the f32 arithmetic is measured.

use super::reference::{self as cpu, Layout};
use super::Row;
use retnet_kernels::embedding::{gather, EmbeddingParams, GatherBuffers};
use retnet_kernels::gated_activation::{
    gated_activation, Activation, GatedActivationBuffers, GatedActivationParams,
};
use retnet_kernels::gemm_coop::{
    dequant_f16, dequant_f16_supports, direct_padded_rows, gemm_coop, gemm_coop_direct,
    gemm_coop_direct_edge_bytes, gemm_coop_direct_supports, gemm_coop_supports, to_f16,
    DequantBuffers, GemmCoopDirectBuffers, ToF16Buffers,
};
use retnet_kernels::head_norm_gate::{
    head_norm_gate, head_norm_gate_unweighted, HeadGateBuffers, HeadNormGateBuffers,
    HeadNormGateParams,
};
use retnet_kernels::linear::{
    self, matmul, matvec, matvec_batch, LinearBuffers, LinearNormBuffers, LinearParams, Reduction,
};
use retnet_kernels::retention::{
    self, ChunkOutputsBuffers, ChunkScanBuffers, ChunkUpdatesBuffers, RetentionParams, Strided,
};
use retnet_kernels::rms_norm::{rms_norm, RmsNormBuffers, RmsNormParams};
use retnet_kernels::rotary::{rotary, RotaryBuffers, RotaryParams, RotaryStyle};
use retnet_kernels::{Bound, WeightFormat};
use retnet_runtime::{Device, GpuBuffer, RuntimeError};
use retnet_testkit::shapes::{self, Decay, RetentionShape, Set};
use retnet_testkit::Rng;
use std::time::Instant;

/// Data movement and a single product per value (gather × scale): at most two f32
/// roundings, 2·2^-24 ≈ 1.2e-7; 1e-6 leaves room for an FMA-less device.
const MOVE_TOLERANCE: f64 = 1e-6;
/// RMSNorm and the per-head norm: an f32 sum of up to 8191 squares (tree-reduced: error
/// ~log2(n)·2^-24 ≈ 8e-7 worst case) and one inverse square root (a few ulp), then ≤ 3 products.
pub(super) const NORM_TOLERANCE: f64 = 1e-5;
/// Activations: silu in f32 (exp to a few ulp) and gelu through an erfc fit with relative error
/// < 1.2e-7, times l, relative to max |ref| ≥ 1 here.
pub(super) const ACTIVATION_TOLERANCE: f64 = 1e-6;
/// Rotary: the f32 angle reduced by Cody–Waite; the rounded middle product k·2π_mid costs up to
/// ulp(k·2π_mid)/2 ≈ 1e-6 rad at angles near 1e5 rad (position 100 000, θ = 1), and GPU sin/cos
/// add a few ulp within [-π, π].
const ROTARY_TOLERANCE: f64 = 4e-6;

/// Beyond position 10^5 the reduction's k·(2π middle part) rounds to half an ulp of a value
/// growing with k: ~6e-6 at position 10^6 (measured), so the bound grows with the position.
fn rotary_tolerance(start_pos: usize) -> f64 {
    ROTARY_TOLERANCE * (start_pos as f64 / 1e5).max(1.0)
}

/// Linear layers: a dot product of n = in_dim f32 products accumulated in f32. Its rounding error
/// is ~√n·2^-24 times the terms' scale typically and n·2^-24 in the worst case; relative to
/// max |ref| (itself ~√n times the terms' scale for random data) the bound is ≈ √n·2^-24·c.
/// 1e-5 covers n ≤ 256 with a wide margin; longer rows scale with √n.
pub(super) fn linear_tolerance(in_dim: usize) -> f64 {
    1e-5 * (in_dim as f64 / 256.0).sqrt().max(1.0)
}

/// The weight formats, or why the device cannot run one.
pub(super) fn format_support(device: &Device, format: WeightFormat) -> Result<(), &'static str> {
    match format {
        WeightFormat::F32 => Ok(()),
        WeightFormat::F16 if device.features().shader_f16 => Ok(()),
        WeightFormat::F16 => Err("adapter lacks SHADER_F16"),
        WeightFormat::F16Packed if device.supports_half_weights() => Ok(()),
        WeightFormat::F16Packed | WeightFormat::Q4 if device.supports_half_weights() => Ok(()),
        WeightFormat::F16Packed | WeightFormat::Q4 => {
            Err("adapter lacks the SHADER_F16_IN_F32 downlevel flag (unpack2x16float)")
        }
        WeightFormat::Int8 => Ok(()),
    }
}

pub(super) fn reduction_support(device: &Device, reduction: Reduction) -> Result<(), &'static str> {
    match reduction {
        Reduction::Subgroup if !device.features().subgroups => Err("adapter lacks SUBGROUP"),
        _ => Ok(()),
    }
}

/// The weights as the GPU sees them (the block formats decoded by the codec that encodes their
/// buffers): the references below compute with these, so a row measures the kernel's f32
/// arithmetic whatever the format, and one tolerance holds for all.
use retnet_testkit::as_stored;

pub(super) fn submit(
    device: &Device,
    dispatches: &[Bound<'_, GpuBuffer>],
) -> Result<(), RuntimeError> {
    let mut sequence = device.sequence("verify");
    for bound in dispatches {
        sequence.dispatch(*bound)?;
    }
    sequence.submit()?;
    Ok(())
}

pub(super) fn read(
    device: &Device,
    buffer: &GpuBuffer,
    len: usize,
) -> Result<Vec<f32>, RuntimeError> {
    pollster::block_on(device.read_f32(buffer, 0, len))
}

/// Collects rows, timing each group and turning runtime errors into FAIL rows.
struct Rows<'d> {
    device: &'d Device,
    quick: bool,
    /// The cases of the shared tables ([`shapes`]) this run takes.
    set: Set,
    rows: Vec<Row>,
}

impl Rows<'_> {
    /// Runs `f`, which returns one or more rows; its time is given to each of them.
    fn add(
        &mut self,
        case: &str,
        shape: &str,
        f: impl FnOnce(&Device) -> Result<Vec<Row>, RuntimeError>,
    ) {
        let start = Instant::now();
        match f(self.device) {
            Ok(rows) => {
                let elapsed = start.elapsed() / rows.len().max(1) as u32;
                self.rows.extend(rows.into_iter().map(|r| r.timed(elapsed)));
            }
            Err(e) => self
                .rows
                .push(Row::fail(case, shape, format!("runtime error: {e}")).timed(start.elapsed())),
        }
    }

    fn skip(&mut self, case: &str, shape: &str, reason: &str) {
        self.rows.push(Row::skip(case, shape, reason));
    }
}

/// The kernel rows (`quick`: a representative subset).
pub fn rows(device: &Device, quick: bool) -> Vec<Row> {
    let mut rows = Rows {
        device,
        quick,
        set: if quick { Set::Quick } else { Set::Full },
        rows: Vec::new(),
    };
    embedding(&mut rows);
    rms_norms(&mut rows);
    linears(&mut rows);
    rotaries(&mut rows);
    head_norm_gates(&mut rows);
    gated_activations(&mut rows);
    retentions(&mut rows);
    rows.rows
}

fn embedding(rows: &mut Rows<'_>) {
    for (index, shape) in shapes::embedding(rows.set).into_iter().enumerate() {
        let shapes::EmbeddingShape {
            vocab,
            dim,
            tokens,
            scale,
        } = shape;
        let mut rng = Rng::new(100 + index as u64);
        let table = rng.vec(vocab * dim);
        let mut ids: Vec<u32> = (0..tokens)
            .map(|_| rng.below(vocab as u64) as u32)
            .collect();
        ids[0] = vocab as u32 - 1;
        let shape = format!("vocab={vocab} d={dim} T={tokens} scale={scale:.3}");
        for format in WeightFormat::ALL {
            let case = format!("embedding_gather/{}", format.name());
            if let Err(reason) = format_support(rows.device, format) {
                rows.skip(&case, &shape, reason);
                continue;
            }
            rows.add(&case, &shape, |device| {
                let weights = device.upload_matrix("table", &table, dim, format)?;
                let id_buffer = device.upload_u32("ids", &ids)?;
                let out = device.create_storage_f32("out", tokens * dim)?;
                let params = EmbeddingParams {
                    tokens: tokens as u32,
                    dim: dim as u32,
                    scale,
                };
                submit(
                    device,
                    &[gather(
                        format,
                        params,
                        GatherBuffers {
                            weight: weights.buffer(),
                            token_ids: &id_buffer,
                            output: &out,
                        },
                    )],
                )?;
                let reference = cpu::embedding(&as_stored(&table, dim, format), dim, &ids, scale);
                let gpu = read(device, &out, tokens * dim)?;
                Ok(vec![Row::compare(
                    &case,
                    &shape,
                    &gpu,
                    &reference,
                    MOVE_TOLERANCE,
                )])
            });
        }
    }
}

fn rms_norms(rows: &mut Rows<'_>) {
    for (index, shape) in shapes::rms_norm(rows.set).into_iter().enumerate() {
        let (count, dim, eps) = (shape.rows, shape.dim, shape.eps);
        let mut rng = Rng::new(200 + index as u64);
        let x: Vec<f32> = rng.vec(count * dim).iter().map(|v| 3.0 * v).collect();
        let weight: Vec<f32> = rng.vec(dim).iter().map(|v| 1.0 + 0.5 * v).collect();
        let shape = format!("rows={count} d={dim} eps={eps:.0e}");
        {
            let case = "rms_norm/weighted";
            rows.add(case, &shape, |device| {
                let input = device.upload_f32("x", &x)?;
                let w = device.upload_f32("w", &weight)?;
                let out = device.create_storage_f32("out", count * dim)?;
                let params = RmsNormParams {
                    rows: count as u32,
                    dim: dim as u32,
                    eps,
                };
                let buffers = RmsNormBuffers {
                    input: &input,
                    norm_weight: &w,
                    output: &out,
                };
                submit(device, &[rms_norm(params, buffers)])?;
                let reference = cpu::rms_norm(&x, dim, Some(&weight[..]), eps);
                let gpu = read(device, &out, count * dim)?;
                Ok(vec![Row::compare(
                    case,
                    &shape,
                    &gpu,
                    &reference,
                    NORM_TOLERANCE,
                )])
            });
        }
    }
}

#[derive(Clone, Copy)]
enum LinearKernel {
    Matmul,
    Matvec(Reduction),
    MatvecBatch(Reduction),
    /// The tensor-core GEMM with the device's tile (f16 weights only; X rounded to f16 as it
    /// is staged).
    Coop,
    /// The direct tensor-core GEMM (operands from storage) after the f16 conversion of X, as
    /// the model runs it.
    CoopDirect,
}

fn linear_case(
    rows: &mut Rows<'_>,
    kernel: LinearKernel,
    params: LinearParams,
    seed: u64,
    what: &str,
) {
    let (n_rows, i, o) = (
        params.rows as usize,
        params.in_dim as usize,
        params.out_dim as usize,
    );
    let mut rng = Rng::new(seed);
    let x = rng.vec((params.x_row_start as usize + n_rows) * i);
    let w = rng.vec(o * i);
    let y0 = rng.vec(n_rows * o);
    let mut shape = format!("rows={n_rows} in={i} out={o}");
    if params.x_row_start > 0 {
        shape += &format!(" x_row_start={}", params.x_row_start);
    }
    if let Some(alpha) = params.accumulate {
        shape += &format!(" Y=αY+XWᵀ α={alpha}");
    }
    if !what.is_empty() {
        shape += &format!(" ({what})");
    }
    let formats: &[WeightFormat] = match kernel {
        LinearKernel::Coop => &[WeightFormat::F16],
        // int8 and q4 through their f16 copy (`dequant_f16`), as the model prefills them.
        LinearKernel::CoopDirect => &[WeightFormat::F16, WeightFormat::Int8, WeightFormat::Q4],
        _ => &WeightFormat::ALL,
    };
    for &format in formats {
        let reduction_name = |r: Reduction| match r {
            Reduction::Workgroup => "workgroup",
            Reduction::Subgroup => "subgroup",
        };
        let case = match kernel {
            LinearKernel::Matmul => format!("matmul/{}", format.name()),
            LinearKernel::Matvec(r) => format!("matvec/{}/{}", format.name(), reduction_name(r)),
            LinearKernel::MatvecBatch(r) => {
                format!("matvec-batch/{}/{}", format.name(), reduction_name(r))
            }
            LinearKernel::Coop => match rows.device.coop_shape() {
                Some(shape) => shape.tile.kernel().name.to_string(),
                None => "gemm-coop".to_string(),
            },
            LinearKernel::CoopDirect => {
                let name = match rows.device.coop_shape() {
                    Some(shape) => shape.tile.direct_kernel().name.to_string(),
                    None => "gemm-coop-direct".to_string(),
                };
                match format {
                    WeightFormat::F16 => name,
                    _ => format!("{name}+dequant-f16/{}", format.name()),
                }
            }
        };
        let support = format_support(rows.device, format).and_then(|()| match kernel {
            LinearKernel::Matvec(reduction) | LinearKernel::MatvecBatch(reduction) => {
                reduction_support(rows.device, reduction)
            }
            LinearKernel::Coop => match rows.device.coop_shape() {
                None => {
                    Err("adapter lacks f16 cooperative matrices (8×8 or 16×16, f32 accumulators)")
                }
                Some(shape) if !gemm_coop_supports(shape.tile, &params) => {
                    Err("shape outside the tensor-core GEMM's grid")
                }
                Some(_) => Ok(()),
            },
            LinearKernel::CoopDirect => match rows.device.coop_shape() {
                None => {
                    Err("adapter lacks f16 cooperative matrices (8×8 or 16×16, f32 accumulators)")
                }
                Some(shape) if !gemm_coop_direct_supports(shape.tile, &params) => {
                    Err("in_dim or out_dim not a multiple of the tile")
                }
                Some(_)
                    if format != WeightFormat::F16
                        && !dequant_f16_supports(format, params.in_dim, params.out_dim) =>
                {
                    Err("shape outside dequant-f16's grid")
                }
                Some(_) => Ok(()),
            },
            LinearKernel::Matmul => Ok(()),
        });
        if let Err(reason) = support {
            rows.skip(&case, &shape, reason);
            continue;
        }
        let coop = rows.device.coop_shape();
        rows.add(&case, &shape, |device| {
            let weights = device.upload_matrix("w", &w, i, format)?;
            let input = device.upload_f32("x", &x)?;
            let y = device.upload_f32("y", &y0)?;
            let buffers = LinearBuffers {
                weight: weights.buffer(),
                input: &input,
                output: &y,
            };
            let (bound, x_seen) = match (kernel, coop) {
                (LinearKernel::Matmul, _) => (matmul(format, params, buffers), x.clone()),
                (LinearKernel::Matvec(reduction), _) => {
                    (matvec(format, reduction, params, buffers), x.clone())
                }
                (LinearKernel::MatvecBatch(reduction), _) => {
                    (matvec_batch(format, reduction, params, buffers), x.clone())
                }
                // The tensor cores multiply f16 inputs: the reference rounds X as they do.
                (LinearKernel::Coop, Some(shape)) => (
                    gemm_coop(shape, params, buffers),
                    retnet_testkit::round_f16(&x),
                ),
                (LinearKernel::CoopDirect, Some(coop_shape)) => {
                    let padded = direct_padded_rows(coop_shape.tile, params.rows) as usize;
                    let x16 = device.create_storage("x f16", (padded * i * 2).max(4) as u64)?;
                    let convert = to_f16(
                        coop_shape.tile,
                        &params,
                        ToF16Buffers {
                            input: &input,
                            output: &x16,
                        },
                    );
                    let edge_bytes = gemm_coop_direct_edge_bytes(coop_shape.tile, &params);
                    let edge = device.create_storage("coop edge tiles", edge_bytes.max(4))?;
                    // A block-format W is multiplied through its f16 copy: the reference
                    // rounds the decoded values to f16 as the copy does.
                    let w16 = match format {
                        WeightFormat::F16 => None,
                        _ => Some(device.create_storage("w f16", (o * i * 2).max(4) as u64)?),
                    };
                    let mut kernels = vec![convert];
                    let weight = match &w16 {
                        Some(w16) => {
                            let dequant = DequantBuffers {
                                weight: weights.buffer(),
                                output: w16,
                            };
                            kernels.extend(dequant_f16(format, i as u32, 0, o as u32, dequant));
                            w16
                        }
                        None => weights.buffer(),
                    };
                    let direct = GemmCoopDirectBuffers {
                        weight,
                        input: &x16,
                        output: &y,
                        edge: &edge,
                    };
                    kernels.push(gemm_coop_direct(coop_shape, params, direct));
                    submit(device, &kernels)?;
                    let gpu = read(device, &y, n_rows * o)?;
                    let reference = cpu::linear(&cpu::Linear {
                        x: &retnet_testkit::round_f16(&x),
                        weight: &retnet_testkit::round_f16(&as_stored(&w, i, format)),
                        y0: &y0,
                        rows: n_rows,
                        in_dim: i,
                        out_dim: o,
                        x_row_start: params.x_row_start as usize,
                        accumulate: params.accumulate,
                    });
                    return Ok(vec![Row::compare(
                        &case,
                        &shape,
                        &gpu,
                        &reference,
                        linear_tolerance(i),
                    )]);
                }
                (LinearKernel::Coop | LinearKernel::CoopDirect, None) => {
                    return Ok(vec![Row::skip(&case, &shape, "no cooperative matrices")]);
                }
            };
            submit(device, &[bound])?;
            let gpu = read(device, &y, n_rows * o)?;
            let reference = cpu::linear(&cpu::Linear {
                x: &x_seen,
                weight: &as_stored(&w, i, format),
                y0: &y0,
                rows: n_rows,
                in_dim: i,
                out_dim: o,
                x_row_start: params.x_row_start as usize,
                accumulate: params.accumulate,
            });
            Ok(vec![Row::compare(
                &case,
                &shape,
                &gpu,
                &reference,
                linear_tolerance(i),
            )])
        });
    }
}

fn matvec_norm_case(rows: &mut Rows<'_>, params: LinearParams, seed: u64) {
    let (n_rows, i, o) = (
        params.rows as usize,
        params.in_dim as usize,
        params.out_dim as usize,
    );
    let start = params.x_row_start as usize;
    let mut rng = Rng::new(seed);
    // Inputs of a realistic size (a residual stream), norm weights around 1.
    let x: Vec<f32> = rng
        .vec((start + n_rows) * i)
        .iter()
        .map(|v| 8.0 * v)
        .collect();
    let g: Vec<f32> = rng.vec(i).iter().map(|v| 1.0 + 0.5 * v).collect();
    let w = rng.vec(o * i);
    let mut shape = format!("rows={n_rows} in={i} out={o}");
    if start > 0 {
        shape += &format!(" x_row_start={start}");
    }
    for format in WeightFormat::ALL {
        let kernel = if n_rows > 1 {
            "matvec-batch-norm"
        } else {
            "matvec-norm"
        };
        let case = format!("{kernel}/{}/subgroup", format.name());
        let support = format_support(rows.device, format)
            .and_then(|()| reduction_support(rows.device, Reduction::Subgroup));
        if let Err(reason) = support {
            rows.skip(&case, &shape, reason);
            continue;
        }
        rows.add(&case, &shape, |device| {
            let weights = device.upload_matrix("w", &w, i, format)?;
            let input = device.upload_f32("x", &x)?;
            let norm = device.upload_f32("g", &g)?;
            let y = device.create_storage_f32("y", n_rows * o)?;
            let buffers = LinearNormBuffers {
                weight: weights.buffer(),
                input: &input,
                output: &y,
                norm_weight: &norm,
            };
            submit(device, &[linear::matvec_norm(format, params, buffers)])?;
            let rows_used = &x[start * i..];
            let normalized: Vec<f32> = cpu::rms_norm(rows_used, i, Some(&g), params.norm_eps)
                .iter()
                .map(|&v| v as f32)
                .collect();
            let reference = cpu::linear(&cpu::Linear {
                x: &normalized,
                weight: &as_stored(&w, i, format),
                y0: &[],
                rows: n_rows,
                in_dim: i,
                out_dim: o,
                x_row_start: 0,
                accumulate: None,
            });
            let gpu = read(device, &y, n_rows * o)?;
            Ok(vec![Row::compare(
                &case,
                &shape,
                &gpu,
                &reference,
                linear_tolerance(i),
            )])
        });
    }
}

fn linears(rows: &mut Rows<'_>) {
    for (index, case) in shapes::matmul(rows.set).into_iter().enumerate() {
        let seed = 300 + index as u64;
        linear_case(rows, LinearKernel::Matmul, case.params, seed, case.what);
    }
    for reduction in [Reduction::Workgroup, Reduction::Subgroup] {
        for (index, case) in shapes::matvec(rows.set).into_iter().enumerate() {
            let kernel = LinearKernel::Matvec(reduction);
            linear_case(rows, kernel, case.params, 400 + index as u64, case.what);
        }
    }
    for reduction in [Reduction::Workgroup, Reduction::Subgroup] {
        for (index, case) in shapes::matvec_batch(rows.set).into_iter().enumerate() {
            let kernel = LinearKernel::MatvecBatch(reduction);
            linear_case(rows, kernel, case.params, 470 + index as u64, case.what);
        }
    }

    // The fused-norm matvec and the tensor-core GEMM are verify's only (the runtime tests run
    // them on row blocks alone), so their shapes stay here.
    // RMSNorm fused into the matvec (decode): one row, from the last row of X in the head case;
    // batches (the batched kernel): one partial row block, two row blocks from row 2, and 1028
    // inputs (257 vec4s: two strides per iteration, then a last odd one).
    let mut normed = vec![
        (1, 8, 5, 0),
        (1, 256, 70, 0),
        (8, 256, 70, 0),
        (9, 64, 33, 2),
        (3, 1028, 9, 1),
    ];
    if !rows.quick {
        normed.extend([(1, 2048, 515, 3), (2, 1024, 130, 0)]);
    }
    for (index, &(r, i, o, start)) in normed.iter().enumerate() {
        let params = LinearParams {
            x_row_start: start,
            norm_eps: 1e-5,
            ..LinearParams::new(r, i, o)
        };
        matvec_norm_case(rows, params, 480 + index as u64);
    }

    // Tensor cores: blocks of 8 × 8 tiles (64 × 64 outputs with 8×8 tiles, 128 × 128 with
    // 16×16 ones), K in steps of two tiles. Every shape but the whole-block ones has partial
    // blocks in rows, columns and K (stored with bounds checks, staged with zeros); whole blocks
    // are stored straight from the accumulators.
    let mut coops = vec![(33, 64, 64), (70, 65, 130), (128, 128, 256), (5, 33, 17)];
    if !rows.quick {
        coops.extend([
            (257, 129, 65),
            (300, 2048, 512),
            (1000, 512, 2048),
            (256, 4096, 256),
        ]);
    }
    for (index, &(r, i, o)) in coops.iter().enumerate() {
        let params = LinearParams::new(r, i, o);
        linear_case(rows, LinearKernel::Coop, params, 500 + index as u64, "");
    }
    for (index, (r, i, o)) in [(70, 128, 64), (128, 100, 128)].into_iter().enumerate() {
        let fused = LinearParams {
            x_row_start: 3,
            accumulate: Some(1.5),
            ..LinearParams::new(r, i, o)
        };
        linear_case(
            rows,
            LinearKernel::Coop,
            fused,
            520 + index as u64,
            "residual fused",
        );
    }

    // The direct GEMM (the model's): in_dim and out_dim multiples of 16, so both tiles run
    // every shape. Partial row blocks (33, 70, 300, 1000 rows), partial column blocks (out 80,
    // 400, 4096 + 16: tiles past out_dim clamped onto W's last tile), whole blocks stored
    // straight from the accumulators (128 × 256, 256 × 256), long K.
    let mut directs = vec![(33, 64, 64), (70, 48, 80), (128, 128, 256), (5, 32, 16)];
    if !rows.quick {
        directs.extend([
            (256, 2048, 256),
            (300, 2048, 400),
            (1000, 512, 2048),
            (130, 256, 4112),
        ]);
    }
    for (index, &(r, i, o)) in directs.iter().enumerate() {
        let params = LinearParams::new(r, i, o);
        linear_case(
            rows,
            LinearKernel::CoopDirect,
            params,
            530 + index as u64,
            "",
        );
    }
    for (index, (r, i, o)) in [(70, 128, 64), (256, 96, 256)].into_iter().enumerate() {
        let fused = LinearParams {
            x_row_start: 3,
            accumulate: Some(1.5),
            ..LinearParams::new(r, i, o)
        };
        let what = "residual fused";
        linear_case(
            rows,
            LinearKernel::CoopDirect,
            fused,
            540 + index as u64,
            what,
        );
    }
}

fn rotaries(rows: &mut Rows<'_>) {
    for (index, shape) in shapes::rotary(rows.set).into_iter().enumerate() {
        let (tokens, heads, k, start_pos) =
            (shape.tokens, shape.heads, shape.head_dim, shape.start_pos);
        for style in [RotaryStyle::Interleaved, RotaryStyle::Halves] {
            let interleaved = style == RotaryStyle::Interleaved;
            let half = k / 2;
            // torchscale: 1/10000^linspace(0, 1, K/2); fla: 1/10000^(2i/K).
            let theta: Vec<f32> = (0..half)
                .map(|i| {
                    let exponent = if interleaved {
                        i as f32 / (half.max(2) - 1) as f32
                    } else {
                        2.0 * i as f32 / k as f32
                    };
                    1.0 / 10000f32.powf(exponent)
                })
                .collect();
            // q of `heads` heads after 7 other columns and before 4 more: a strided column range.
            let row_stride = 7 + heads * k + 4;
            let scale = if index % 2 == 0 {
                1.0
            } else {
                1.0 / (k as f32).sqrt()
            };
            let mut rng = Rng::new(500 + index as u64);
            let x = rng.vec(tokens * row_stride);
            let case = if interleaved {
                "rotary/interleaved"
            } else {
                "rotary/halves"
            };
            let shape = format!("T={tokens} H={heads} K={k} pos={start_pos} scale={scale:.3}");
            rows.add(case, &shape, |device| {
                let buffer = device.upload_f32("x", &x)?;
                let theta_buffer = device.upload_f32("theta", &theta)?;
                let params = RotaryParams {
                    tokens: tokens as u32,
                    heads: heads as u32,
                    head_dim: k as u32,
                    start_pos: start_pos as u32,
                    row_stride: row_stride as u32,
                    col_offset: 7,
                    scale,
                };
                submit(
                    device,
                    &[rotary(
                        style,
                        params,
                        RotaryBuffers {
                            theta: &theta_buffer,
                            x: &buffer,
                        },
                    )],
                )?;
                let reference = cpu::rotary(
                    &x,
                    &theta,
                    interleaved,
                    tokens,
                    heads,
                    k,
                    start_pos,
                    row_stride,
                    7,
                    scale,
                );
                let gpu = read(device, &buffer, x.len())?;
                Ok(vec![Row::compare(
                    case,
                    &shape,
                    &gpu,
                    &reference,
                    rotary_tolerance(start_pos),
                )])
            });
        }
    }
}

fn head_norm_gates(rows: &mut Rows<'_>) {
    for (index, shape) in shapes::head_norm_gate(rows.set).into_iter().enumerate() {
        let (tokens, heads, v) = (shape.tokens, shape.heads, shape.value_dim);
        let width = heads * v;
        let mut rng = Rng::new(600 + index as u64);
        // Input rows padded by 3; the gate a column range after 2 columns in rows of width + 5.
        let input = rng.vec(tokens * (width + 3));
        let gate: Vec<f32> = rng
            .vec(tokens * (width + 5))
            .iter()
            .map(|g| 4.0 * g)
            .collect();
        let weight: Vec<f32> = rng.vec(v).iter().map(|w| 1.0 + 0.5 * w).collect();
        let eps = 1e-6f32;
        let input_layout = Layout {
            offset: 0,
            stride: width + 3,
        };
        let gate_layout = Layout {
            offset: 2,
            stride: width + 5,
        };
        let shape = format!("T={tokens} H={heads} V={v}");
        for weighted in [true, false] {
            let case = if weighted {
                "head_norm_gate/weighted"
            } else {
                "head_norm_gate/unweighted"
            };
            rows.add(case, &shape, |device| {
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
                let ib = device.upload_f32("o", &input)?;
                let gb = device.upload_f32("g", &gate)?;
                let wb = device.upload_f32("w", &weight)?;
                let out = device.create_storage_f32("out", tokens * width)?;
                let bound = if weighted {
                    let buffers = HeadNormGateBuffers {
                        input: &ib,
                        gate: &gb,
                        norm_weight: &wb,
                        output: &out,
                    };
                    head_norm_gate(params, buffers)
                } else {
                    let buffers = HeadGateBuffers {
                        input: &ib,
                        gate: &gb,
                        output: &out,
                    };
                    head_norm_gate_unweighted(params, buffers)
                };
                submit(device, &[bound])?;
                let reference = cpu::head_norm_gate(
                    &input,
                    input_layout,
                    &gate,
                    gate_layout,
                    weighted.then_some(&weight[..]),
                    tokens,
                    heads,
                    v,
                    eps,
                );
                let gpu = read(device, &out, tokens * width)?;
                Ok(vec![Row::compare(
                    case,
                    &shape,
                    &gpu,
                    &reference,
                    NORM_TOLERANCE,
                )])
            });
        }
    }
}

fn gated_activations(rows: &mut Rows<'_>) {
    for (index, shape) in shapes::gated_activation(rows.set).into_iter().enumerate() {
        let (tokens, width) = (shape.tokens, shape.width);
        let mut rng = Rng::new(700 + index as u64);
        // One fused buffer [tokens, 2·width]: a (×8, both tails of gelu) then l.
        let mut fused = rng.vec(tokens * 2 * width);
        for t in 0..tokens {
            for i in 0..width {
                fused[t * 2 * width + i] *= 8.0;
            }
        }
        let shape = format!("T={tokens} width={width} a∈[-8,8)");
        for activation in [Activation::Silu, Activation::Gelu] {
            let case = match activation {
                Activation::Silu => "gated_activation/silu",
                Activation::Gelu => "gated_activation/gelu",
            };
            rows.add(case, &shape, |device| {
                let buffer = device.upload_f32("a|l", &fused)?;
                let out = device.create_storage_f32("out", tokens * width)?;
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
                submit(
                    device,
                    &[gated_activation(
                        activation,
                        params,
                        GatedActivationBuffers {
                            act_input: &buffer,
                            linear_input: &buffer,
                            output: &out,
                        },
                    )],
                )?;
                let mut reference = Vec::with_capacity(tokens * width);
                for t in 0..tokens {
                    for i in 0..width {
                        let a = f64::from(fused[t * 2 * width + i]);
                        let l = f64::from(fused[t * 2 * width + width + i]);
                        let act = match activation {
                            Activation::Silu => cpu::silu(a),
                            Activation::Gelu => cpu::gelu(a),
                        };
                        reference.push(act * l);
                    }
                }
                let gpu = read(device, &out, tokens * width)?;
                Ok(vec![Row::compare(
                    case,
                    &shape,
                    &gpu,
                    &reference,
                    ACTIVATION_TOLERANCE,
                )])
            });
        }
    }
}

/// One retention problem, all three forms.
#[derive(Clone, Copy, Debug)]
struct RetentionCase {
    tokens: usize,
    query_heads: usize,
    kv_heads: usize,
    key_dim: usize,
    value_dim: usize,
    decay: Decay,
    chunk_sizes: &'static [u32],
}

impl From<RetentionShape> for RetentionCase {
    fn from(shape: RetentionShape) -> Self {
        RetentionCase {
            tokens: shape.tokens,
            query_heads: shape.query_heads,
            kv_heads: shape.kv_heads,
            key_dim: shape.key_dim,
            value_dim: shape.value_dim,
            decay: shape.decay,
            chunk_sizes: shape.chunk_sizes,
        }
    }
}

impl RetentionCase {
    /// Columns of one token's fused q|k|v row, with 3 unused columns at the end.
    fn row(&self) -> usize {
        (self.query_heads + self.kv_heads) * self.key_dim + self.kv_heads * self.value_dim + 3
    }
    fn width(&self) -> usize {
        self.query_heads * self.value_dim
    }
    /// Output rows are wider than H·V and start at an offset, to exercise the output layout.
    fn out_stride(&self) -> usize {
        self.width() + 5
    }
    const OUT_OFFSET: usize = 3;
    fn state_len(&self) -> usize {
        self.query_heads * self.key_dim * self.value_dim
    }
    fn layout(&self, column: usize) -> Layout {
        Layout {
            offset: column,
            stride: self.row(),
        }
    }
    fn q(&self) -> Layout {
        self.layout(0)
    }
    fn k(&self) -> Layout {
        self.layout(self.query_heads * self.key_dim)
    }
    fn v(&self) -> Layout {
        self.layout((self.query_heads + self.kv_heads) * self.key_dim)
    }

    /// Parameters for tokens `first..first + count` (absolute positions).
    fn params(&self, first: usize, count: usize, scale: bool) -> RetentionParams {
        let strided = |l: Layout| Strided {
            offset: (l.offset + first * l.stride) as u32,
            stride: l.stride as u32,
        };
        RetentionParams {
            tokens: count as u32,
            query_heads: self.query_heads as u32,
            kv_heads: self.kv_heads as u32,
            key_dim: self.key_dim as u32,
            value_dim: self.value_dim as u32,
            start_pos: first as u32,
            q: strided(self.q()),
            k: strided(self.k()),
            v: strided(self.v()),
            out: Strided {
                offset: (Self::OUT_OFFSET + first * self.out_stride()) as u32,
                stride: self.out_stride() as u32,
            },
            scale_by_decay_sum: scale,
        }
    }

    fn shape(&self, scale: bool) -> String {
        format!(
            "T={} H={}/{} K={} V={} {}{}",
            self.tokens,
            self.query_heads,
            self.kv_heads,
            self.key_dim,
            self.value_dim,
            self.decay.label(),
            if scale { " ÷sqrt(c_n)" } else { "" }
        )
    }
}

/// Retention tolerance. Every output sums T·(K + 1) f32 products whose rounding stays
/// ~√(T·K)·2^-24 relative to max |ref|: 2e-5 covers T·K ≤ 3e5 with margin. On top, the forms
/// that carry a state multiply it by γ (recurrent, every token) or γ^B (chunkwise, every chunk)
/// `steps` times, and each multiplication can cost up to 2^-24 relative: the rounding of γ itself
/// (exp to about one ulp) and of γ·S, which for γ within 2^-24 of 1 is biased (γ·S − S is below
/// half an ulp of S, so the decay is lost, step after step). A term survives
/// min(steps, 1/(1 − γ^B)) multiplications, hence that many times 2^-23 (a factor 2 of margin).
/// γ = 1 heads are exact (exp(0) = 1) and add nothing.
fn retention_tolerance(case: &RetentionCase, log_decays: &[f32], step: usize) -> f64 {
    let base = 2e-5
        * (case.tokens as f64 * case.key_dim as f64 / 3e5)
            .sqrt()
            .max(1.0);
    let steps = case.tokens.div_ceil(step.max(1)) as f64;
    let survival = log_decays
        .iter()
        .filter(|&&l| l != 0.0)
        .map(|&l| {
            let chunk_decay = (f64::from(l) * step as f64).exp();
            steps.min(1.0 / (1.0 - chunk_decay))
        })
        .fold(0.0, f64::max);
    base + survival * 2f64.powi(-23)
}

/// Workgroup memory of the chunkwise kernel for a chunk size, as the runtime budgets it.
fn chunkwise_workgroup_bytes(chunk: u32) -> u64 {
    u64::from(retention::chunkwise_workgroup_bytes(chunk))
}

/// Mesa's llvmpipe (lavapipe) ends every loop of an invocation once that invocation has run
/// 65535 loop iterations in total (gallivm's `LP_MAX_TGSI_LOOP_ITERATIONS`, a guard against
/// infinite loops), silently. The chunkwise kernel walks every chunk inside one dispatch, so a
/// long single dispatch goes wrong there from a fixed chunk on (measured: T = 4096, K = 16,
/// B = 32 fails from token 4032; the failing token scales with the workgroup size). Split into
/// several dispatches (as a session's prefill may), the same tokens pass.
const LLVMPIPE_LOOP_LIMIT: u64 = 65_535;

/// Loop iterations of the busiest invocation of one chunkwise dispatch of `tokens` tokens
/// (within ~6% of the measured failure points, so used with a 10% margin).
fn chunkwise_loop_iterations(tokens: usize, key_dim: usize, chunk: u32) -> u64 {
    let constants = retention::CHUNKWISE.default_constants().0;
    let (columns, workgroup) = (u64::from(constants[1]), u64::from(constants[2]));
    let (b, k) = (u64::from(chunk), key_dim as u64);
    let chunks = (tokens as u64).div_ceil(b);
    let scores = (b * b).div_ceil(workgroup) * (k + 1);
    let per_lane = (b * columns).div_ceil(workgroup);
    let outputs: u64 = (0..per_lane)
        .map(|m| {
            let i = ((workgroup - 1 + workgroup * m) / columns).min(b - 1);
            (k + 1) + (i + 1)
        })
        .sum();
    let state = (k * columns).div_ceil(workgroup) * (b + 1);
    chunks * (scores + per_lane + outputs + state + 4)
}

/// Why this device cannot run a chunkwise dispatch of `tokens` tokens, if it cannot.
fn chunkwise_limit(device: &Device, tokens: usize, key_dim: usize, chunk: u32) -> Option<String> {
    let bytes = chunkwise_workgroup_bytes(chunk);
    let max_workgroup = u64::from(device.limits().max_compute_workgroup_storage_size);
    if bytes > max_workgroup {
        return Some(format!(
            "needs {bytes} bytes of workgroup memory, the adapter has {max_workgroup}"
        ));
    }
    let iterations = chunkwise_loop_iterations(tokens, key_dim, chunk);
    let llvmpipe = device.adapter_info().name.contains("llvmpipe");
    if llvmpipe && iterations * 11 / 10 > LLVMPIPE_LOOP_LIMIT {
        return Some(format!(
            "~{iterations} loop iterations per invocation in one dispatch; llvmpipe stops \
             loops after {LLVMPIPE_LOOP_LIMIT}"
        ));
    }
    None
}

/// Reads the output rows of `case` (dropping the layout's padding).
/// Rows comparing a retention run's outputs and final state with the reference's.
fn outputs_and_state(
    device: &Device,
    buffers: &RetentionBuffers,
    case: &RetentionCase,
    name: &str,
    shape: &str,
    (expected, expected_state): (&[f64], &[f64]),
    tolerance: f64,
) -> Result<Vec<Row>, RuntimeError> {
    let gpu = read_outputs(device, &buffers.out, case)?;
    let state = read(device, &buffers.state, case.state_len())?;
    Ok(vec![
        Row::compare(name, shape, &gpu, expected, tolerance),
        Row::compare(
            format!("{name} state"),
            shape,
            &state,
            expected_state,
            tolerance,
        ),
    ])
}

fn read_outputs(
    device: &Device,
    buffer: &GpuBuffer,
    case: &RetentionCase,
) -> Result<Vec<f32>, RuntimeError> {
    let all = read(
        device,
        buffer,
        RetentionCase::OUT_OFFSET + case.tokens * case.out_stride(),
    )?;
    Ok((0..case.tokens)
        .flat_map(|t| {
            let start = RetentionCase::OUT_OFFSET + t * case.out_stride();
            all[start..start + case.width()].to_vec()
        })
        .collect())
}

struct RetentionBuffers {
    data: GpuBuffer,
    log_decay: GpuBuffer,
    state: GpuBuffer,
    out: GpuBuffer,
}

impl RetentionBuffers {
    fn new(
        device: &Device,
        case: &RetentionCase,
        data: &[f32],
        log_decay: &[f32],
    ) -> Result<Self, RuntimeError> {
        Ok(RetentionBuffers {
            data: device.upload_f32("q|k|v", data)?,
            log_decay: device.upload_f32("log γ", log_decay)?,
            state: device.create_storage_f32("state", case.state_len())?,
            out: device.create_storage_f32(
                "out",
                RetentionCase::OUT_OFFSET + case.tokens * case.out_stride(),
            )?,
        })
    }

    fn reset(&self, device: &Device) {
        device.clear(&self.state);
        device.clear(&self.out);
    }

    /// Records and submits the forms in one sequence, on these buffers.
    fn run(&self, device: &Device, forms: &[Form]) -> Result<(), RuntimeError> {
        let stateful = retention::RetentionBuffers {
            q: &self.data,
            k: &self.data,
            v: &self.data,
            log_decay: &self.log_decay,
            state: &self.state,
            output: &self.out,
        };
        let list: Vec<Bound<'_, GpuBuffer>> = forms
            .iter()
            .map(|&form| match form {
                Form::Parallel(params) => {
                    let buffers = retention::ParallelBuffers {
                        q: &self.data,
                        k: &self.data,
                        v: &self.data,
                        log_decay: &self.log_decay,
                        output: &self.out,
                    };
                    retention::parallel(params, buffers)
                }
                Form::Chunkwise(params, chunk) => retention::chunkwise(params, chunk, stateful),
                Form::Recurrent(params) => retention::recurrent(params, stateful),
            })
            .collect();
        submit(device, &list)
    }
}

/// One retention dispatch of a verify case.
#[derive(Clone, Copy)]
enum Form {
    Parallel(RetentionParams),
    Chunkwise(RetentionParams, u32),
    Recurrent(RetentionParams),
}

fn retention_case(rows: &mut Rows<'_>, case: RetentionCase, scale: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let data = rng.vec(case.tokens * case.row());
    let log_decay = case.decay.log_decays(case.query_heads);
    let shape = case.shape(scale);
    let start = Instant::now();
    let (expected, expected_state) = cpu::retention(&cpu::Retention {
        data: &data,
        q: case.q(),
        k: case.k(),
        v: case.v(),
        tokens: case.tokens,
        query_heads: case.query_heads,
        kv_heads: case.kv_heads,
        key_dim: case.key_dim,
        value_dim: case.value_dim,
        log_decay: &log_decay,
        scale_by_decay_sum: scale,
    });
    let reference_time = start.elapsed();
    let buffers = match RetentionBuffers::new(rows.device, &case, &data, &log_decay) {
        Ok(b) => b,
        Err(e) => {
            rows.rows.push(Row::fail(
                "retention",
                &shape,
                format!("runtime error: {e}"),
            ));
            return;
        }
    };
    let params = case.params(0, case.tokens, scale);
    let max_workgroup = u64::from(rows.device.limits().max_compute_workgroup_storage_size);

    // Parallel: exp((n−m)·log γ) per pair, no carried product: only the summation error.
    let tolerance = retention_tolerance(&case, &[], 1);
    rows.add("retention/parallel", &shape, |device| {
        buffers.reset(device);
        buffers.run(device, &[Form::Parallel(params)])?;
        let gpu = read_outputs(device, &buffers.out, &case)?;
        Ok(vec![Row::compare(
            "retention/parallel",
            &shape,
            &gpu,
            &expected,
            tolerance,
        )])
    });

    for &chunk in case.chunk_sizes {
        let name = format!("retention/chunkwise(B={chunk})");
        if let Some(reason) = chunkwise_limit(rows.device, case.tokens, case.key_dim, chunk) {
            rows.skip(&name, &shape, &reason);
            if chunkwise_workgroup_bytes(chunk) <= max_workgroup {
                chunkwise_split(
                    rows,
                    &case,
                    &buffers,
                    scale,
                    chunk,
                    &expected,
                    &expected_state,
                );
            }
            continue;
        }
        // The state is scaled by γ^B once per chunk.
        let tolerance = retention_tolerance(&case, &log_decay, chunk as usize);
        rows.add(&name, &shape, |device| {
            buffers.reset(device);
            buffers.run(device, &[Form::Chunkwise(params, chunk)])?;
            let expected = (&expected[..], &expected_state[..]);
            outputs_and_state(device, &buffers, &case, &name, &shape, expected, tolerance)
        });
    }

    // Chunk-parallel: each chunk's update of the state, a scan over the chunks for the state
    // before each, then the chunkwise output formula for every chunk at once.
    for &chunk in case.chunk_sizes {
        let name = format!("retention/chunk-parallel(B={chunk})");
        let states_len = retention::chunk_states_len(&params, chunk);
        if u64::from(retention::chunk_outputs_workgroup_bytes(chunk)) > max_workgroup
            || chunk > retention::CHUNK_OUTPUTS_MAX_CHUNK
        {
            rows.skip(&name, &shape, "chunk over the workgroup memory limit");
            continue;
        }
        if states_len * 4 > 128 << 20 {
            rows.skip(&name, &shape, "a state per chunk would exceed 128 MiB");
            continue;
        }
        // The state is scaled by γ^B once per chunk.
        let tolerance = retention_tolerance(&case, &log_decay, chunk as usize);
        rows.add(&name, &shape, |device| {
            buffers.reset(device);
            let states = device.create_storage_f32("chunk states", states_len as usize)?;
            let b = &buffers;
            submit(
                device,
                &[
                    retention::chunk_updates(
                        params,
                        chunk,
                        ChunkUpdatesBuffers {
                            k: &b.data,
                            v: &b.data,
                            log_decay: &b.log_decay,
                            chunk_states: &states,
                        },
                    ),
                    retention::chunk_scan(
                        params,
                        chunk,
                        ChunkScanBuffers {
                            log_decay: &b.log_decay,
                            state: &b.state,
                            chunk_states: &states,
                        },
                    ),
                    retention::chunk_outputs(
                        params,
                        chunk,
                        ChunkOutputsBuffers {
                            q: &b.data,
                            k: &b.data,
                            v: &b.data,
                            log_decay: &b.log_decay,
                            chunk_states: &states,
                            output: &b.out,
                        },
                    ),
                ],
            )?;
            let expected = (&expected[..], &expected_state[..]);
            outputs_and_state(device, &buffers, &case, &name, &shape, expected, tolerance)
        });
    }

    // Chunk-parallel with the updates and the outputs on the tensor cores (hi/lo split f16
    // operands, held to the same tolerance), where the device has cooperative matrices.
    for &chunk in case.chunk_sizes {
        let Some(coop) = rows.device.coop_shape() else {
            let name = format!("retention/chunk-parallel-coop(B={chunk})");
            rows.skip(&name, &shape, "adapter lacks f16 cooperative matrices");
            continue;
        };
        let name = format!(
            "retention/chunk-parallel-coop/{0}x{0}(B={chunk})",
            coop.tile.side()
        );
        let states_len = retention::chunk_states_len(&params, chunk);
        if chunk > retention::CHUNK_OUTPUTS_COOP_MAX_CHUNK
            || u64::from(retention::chunk_outputs_coop_workgroup_bytes(coop, chunk)) > max_workgroup
            || u64::from(retention::chunk_updates_coop_workgroup_bytes(coop, chunk)) > max_workgroup
            || u64::from(retention::chunk_outputs_workgroup_bytes(chunk)) > max_workgroup
        {
            rows.skip(
                &name,
                &shape,
                "chunk over the tensor-core kernel's or memory limit",
            );
            continue;
        }
        if states_len * 4 > 128 << 20 {
            rows.skip(&name, &shape, "a state per chunk would exceed 128 MiB");
            continue;
        }
        let tolerance = retention_tolerance(&case, &log_decay, chunk as usize);
        rows.add(&name, &shape, |device| {
            buffers.reset(device);
            let states = device.create_storage_f32("chunk states", states_len as usize)?;
            let b = &buffers;
            submit(
                device,
                &[
                    retention::chunk_updates_coop(
                        coop,
                        params,
                        chunk,
                        ChunkUpdatesBuffers {
                            k: &b.data,
                            v: &b.data,
                            log_decay: &b.log_decay,
                            chunk_states: &states,
                        },
                    ),
                    retention::chunk_scan(
                        params,
                        chunk,
                        ChunkScanBuffers {
                            log_decay: &b.log_decay,
                            state: &b.state,
                            chunk_states: &states,
                        },
                    ),
                    retention::chunk_outputs_coop(
                        coop,
                        params,
                        chunk,
                        ChunkOutputsBuffers {
                            q: &b.data,
                            k: &b.data,
                            v: &b.data,
                            log_decay: &b.log_decay,
                            chunk_states: &states,
                            output: &b.out,
                        },
                    ),
                ],
            )?;
            let expected = (&expected[..], &expected_state[..]);
            outputs_and_state(device, &buffers, &case, &name, &shape, expected, tolerance)
        });
    }

    // Recurrent: γ is rounded to f32 once and the state multiplied by it at every token.
    let tolerance = retention_tolerance(&case, &log_decay, 1);
    rows.add("retention/recurrent", &shape, |device| {
        buffers.reset(device);
        buffers.run(device, &[Form::Recurrent(params)])?;
        let expected = (&expected[..], &expected_state[..]);
        outputs_and_state(
            device,
            &buffers,
            &case,
            "retention/recurrent",
            &shape,
            expected,
            tolerance,
        )
    });

    // Carried state across calls, as a session does: a chunkwise prefill of 37% of the tokens,
    // 5 decode steps submitted one by one, then a chunkwise prefill of the rest with another
    // chunk size; absolute positions carry over through start_pos.
    if case.tokens >= 16 && case.chunk_sizes.len() >= 2 {
        let (b1, b2) = (
            case.chunk_sizes[0],
            case.chunk_sizes[case.chunk_sizes.len() - 1],
        );
        let prefill = case.tokens * 37 / 100;
        let steps = 5;
        let name = format!("retention/chunkwise(B={b1})+recurrent×{steps}+chunkwise(B={b2})");
        let limit = chunkwise_limit(rows.device, prefill, case.key_dim, b1).or_else(|| {
            chunkwise_limit(rows.device, case.tokens - prefill - steps, case.key_dim, b2)
        });
        if let Some(reason) = limit {
            rows.skip(&name, &shape, &reason);
        } else {
            let tolerance = retention_tolerance(&case, &log_decay, 1);
            rows.add(&name, &shape, |device| {
                buffers.reset(device);
                buffers.run(
                    device,
                    &[Form::Chunkwise(case.params(0, prefill, scale), b1)],
                )?;
                for t in prefill..prefill + steps {
                    buffers.run(device, &[Form::Recurrent(case.params(t, 1, scale))])?;
                }
                let rest = prefill + steps;
                buffers.run(
                    device,
                    &[Form::Chunkwise(
                        case.params(rest, case.tokens - rest, scale),
                        b2,
                    )],
                )?;
                let expected = (&expected[..], &expected_state[..]);
                outputs_and_state(device, &buffers, &case, &name, &shape, expected, tolerance)
            });
        }
    }
    if let Some(row) = rows.rows.last_mut() {
        // The f64 reference's time goes to the last row of the case.
        row.elapsed = row.elapsed.map(|e| e + reference_time);
    }
}

/// The chunkwise form over all tokens in several dispatches of at most 512 tokens (a multiple of
/// the chunk size), recorded in one sequence: what a prefill does where one dispatch would exceed
/// llvmpipe's loop limit.
#[allow(clippy::too_many_arguments)]
fn chunkwise_split(
    rows: &mut Rows<'_>,
    case: &RetentionCase,
    buffers: &RetentionBuffers,
    scale: bool,
    chunk: u32,
    expected: &[f64],
    expected_state: &[f64],
) {
    let piece = (512 / chunk as usize).max(1) * chunk as usize;
    let name = format!(
        "retention/chunkwise(B={chunk}) in {} dispatches",
        case.tokens.div_ceil(piece)
    );
    let shape = case.shape(scale);
    if let Some(reason) = chunkwise_limit(rows.device, piece, case.key_dim, chunk) {
        rows.skip(&name, &shape, &reason);
        return;
    }
    let tolerance = retention_tolerance(
        case,
        &case.decay.log_decays(case.query_heads),
        chunk as usize,
    );
    rows.add(&name, &shape, |device| {
        buffers.reset(device);
        let dispatches: Vec<Form> = (0..case.tokens)
            .step_by(piece)
            .map(|first| {
                let count = piece.min(case.tokens - first);
                Form::Chunkwise(case.params(first, count, scale), chunk)
            })
            .collect();
        buffers.run(device, &dispatches)?;
        let gpu = read_outputs(device, &buffers.out, case)?;
        let state = read(device, &buffers.state, case.state_len())?;
        Ok(vec![
            Row::compare(&name, &shape, &gpu, expected, tolerance),
            Row::compare(
                format!("{name} state"),
                &shape,
                &state,
                expected_state,
                tolerance,
            ),
        ])
    });
}

fn retentions(rows: &mut Rows<'_>) {
    let mut all = shapes::retention(rows.set);
    if rows.quick {
        // Verify's own: the quick run also takes the first long context (T = 4096) of the full
        // table, which needs the loop-limit splitting and position-dependent tolerance above.
        all.extend(
            shapes::retention(Set::Full)
                .into_iter()
                .find(|shape| shape.tokens == 4096),
        );
    }
    for (index, shape) in all.into_iter().enumerate() {
        retention_case(
            rows,
            RetentionCase::from(shape),
            shape.scale,
            900 + index as u64,
        );
    }
}
