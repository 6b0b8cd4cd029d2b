//! `cargo xtask bench --micro [--preset NAME] [--json FILE]`: the kernels alone, so that one
//! device call tells where the ceiling is.
//!
//! - peak probes: a pure multiply-accumulate loop in registers, f32 FMAs on the shader cores and,
//!   where the device has them, cooperative-matrix multiply-adds with its tile (tensor cores);
//! - the GEMM over the preset's projection shapes (q|k|v|g, out_proj, ffn act|lin, ffn_down) at
//!   2048 and 8192 rows: the tensor-core GEMM and the portable tiled matmul, f16 weights;
//! - the matvec over the same shapes (one row): many dispatches in one pass that are
//!   independent (each writes its own output) against dependent ones (each reads the previous
//!   one's output), which separates per-dispatch latency from throughput;
//! - correctness probes of each cooperative operation and GEMM variant ([`crate::coop_check`]);
//! - the retention kernels of a 2048-token prefill span alone (chunk updates, chunk scan, chunk
//!   outputs) and one recurrent decode step.
//!
//! Each measurement records `count` identical dispatches in one compute pass, submits them and
//! waits for a one-value read-back; the time per dispatch is the best of `reps` such runs divided
//! by `count`, after a warm-up run that compiles the pipelines. Inputs are random; f16 weights.
//! `--preset test` runs everything in tiny shapes (on lavapipe: a check that it works, no more).

use std::sync::Arc;
use std::time::{Duration, Instant};

use retnet_kernels::gemm_coop::{
    direct_padded_rows, gemm_coop, gemm_coop_direct, gemm_coop_direct_edge_bytes,
    gemm_coop_direct_supports, gemm_coop_supports, to_f16, CoopShape, CoopTile,
    GemmCoopDirectBuffers, ToF16Buffers, SUB_BLOCKS,
};
use retnet_kernels::linear::{matmul, matvec, LinearBuffers, LinearParams, Reduction};
use retnet_kernels::retention::{self, RetentionParams, Strided};
use retnet_kernels::{Bound, WeightFormat};
use retnet_model::ModelConfig;
use retnet_runtime::{Device, GpuBuffer, RuntimeError, WeightData};
use serde_json::{json, Value};

/// How much work each measurement does.
#[derive(Clone, Copy)]
struct Effort {
    /// Dispatches per timed submission.
    count: usize,
    /// Timed submissions (the best is kept).
    reps: usize,
    /// Workgroups and loop trips of the peak probes.
    probe_workgroups: u32,
    probe_iterations: u32,
}

/// One measured case.
struct Measure {
    section: &'static str,
    case: String,
    shape: String,
    per_dispatch: Duration,
    /// Floating-point operations (or bytes, for bandwidth-bound cases) per dispatch.
    work: f64,
    /// "TFLOP/s" or "GB/s".
    unit: &'static str,
}

impl Measure {
    fn rate(&self) -> f64 {
        let seconds = self.per_dispatch.as_secs_f64();
        match self.unit {
            "GB/s" => self.work / seconds / 1e9,
            _ => self.work / seconds / 1e12,
        }
    }

    fn json(&self) -> Value {
        json!({
            "section": self.section,
            "case": self.case,
            "shape": self.shape,
            "us_per_dispatch": self.per_dispatch.as_secs_f64() * 1e6,
            "rate": self.rate(),
            "unit": self.unit,
        })
    }
}

pub(crate) fn err(e: RuntimeError) -> String {
    e.to_string()
}

/// Runs the micro-benchmarks for the shapes of `config`; `tiny` for the test preset.
pub async fn run(
    device: &Arc<Device>,
    name: &str,
    config: &ModelConfig,
    tiny: bool,
) -> Result<Value, String> {
    let effort = if tiny {
        Effort {
            count: 2,
            reps: 1,
            probe_workgroups: 4,
            probe_iterations: 64,
        }
    } else {
        Effort {
            count: 20,
            reps: 3,
            probe_workgroups: 4096,
            probe_iterations: 4096,
        }
    };
    let coop_checks = crate::coop_check::run(device, tiny).await?;
    let mut measures = Vec::new();
    probes(device, effort, &mut measures).await?;
    gemms(device, config, effort, &mut measures).await?;
    matvecs(device, config, effort, &mut measures).await?;
    retentions(device, config, effort, &mut measures).await?;
    print_table(name, &measures);
    Ok(json!({
        "preset": name,
        "coop_shape": device.coop_shape().map(|s| format!("{:?} tiles, subgroups of {}", s.tile, s.subgroup_size)),
        "measures": measures.iter().map(Measure::json).collect::<Vec<_>>(),
        "coop_checks": coop_checks,
    }))
}

fn print_table(name: &str, measures: &[Measure]) {
    println!("\nmicro-benchmarks, {name} shapes (best of the runs, per dispatch)");
    let case_width = measures
        .iter()
        .map(|m| m.case.chars().count())
        .max()
        .unwrap_or(4);
    let shape_width = measures
        .iter()
        .map(|m| m.shape.chars().count())
        .max()
        .unwrap_or(5);
    println!(
        "{:9}  {:case_width$}  {:shape_width$}  {:>11}  {:>10}",
        "section", "case", "shape", "µs", "rate"
    );
    for m in measures {
        println!(
            "{:9}  {:case_width$}  {:shape_width$}  {:>11.2}  {:>10.3} {}",
            m.section,
            m.case,
            m.shape,
            m.per_dispatch.as_secs_f64() * 1e6,
            m.rate(),
            m.unit
        );
    }
}

/// Best time per dispatch of `count` copies of `dispatches` (one pass), waiting on `done`.
async fn time(
    device: &Device,
    dispatches: &[Bound<'_, GpuBuffer>],
    done: &GpuBuffer,
    effort: Effort,
) -> Result<Duration, String> {
    let run = || -> Result<(), String> {
        let mut sequence = device.sequence("micro");
        for bound in dispatches {
            sequence.dispatch(*bound).map_err(err)?;
        }
        sequence.submit().map_err(err)?;
        Ok(())
    };
    run()?;
    device.read_f32(done, 0, 1).await.map_err(err)?;
    let mut best = Duration::MAX;
    for _ in 0..effort.reps {
        let start = Instant::now();
        run()?;
        device.read_f32(done, 0, 1).await.map_err(err)?;
        best = best.min(start.elapsed());
    }
    Ok(best / dispatches.len().max(1) as u32)
}

/// A cheap, seedable uniform generator (xorshift64*) for the inputs.
pub(crate) fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let unit =
                (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * unit - 1.0) * scale
        })
        .collect()
}

const FMA_PROBE: &str = "
@group(0) @binding(0) var<storage, read> factors: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> sink: array<vec4<f32>>;

// Eight independent FMA chains of vec4s per invocation, ITERATIONS trips.
@compute @workgroup_size(256)
fn probe(@builtin(global_invocation_id) gid: vec3<u32>) {
    let m = factors[0];
    let c = factors[1];
    var x0 = vec4<f32>(f32(gid.x) * 1e-7);
    var x1 = x0 + 0.1; var x2 = x0 + 0.2; var x3 = x0 + 0.3;
    var x4 = x0 + 0.4; var x5 = x0 + 0.5; var x6 = x0 + 0.6; var x7 = x0 + 0.7;
    for (var i = 0u; i < ITERATIONSu; i++) {
        x0 = fma(x0, m, c); x1 = fma(x1, m, c); x2 = fma(x2, m, c); x3 = fma(x3, m, c);
        x4 = fma(x4, m, c); x5 = fma(x5, m, c); x6 = fma(x6, m, c); x7 = fma(x7, m, c);
    }
    sink[gid.x] = x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7;
}
";

const MMA_PROBE: &str = "
@group(0) @binding(0) var<storage, read> factors: array<f16>;
@group(0) @binding(1) var<storage, read_write> sink: array<f32>;

// Four independent accumulator chains per subgroup, ITERATIONS trips, operands in registers.
@compute @workgroup_size(WORKGROUP_SIZEu)
fn probe(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_id) subgroup: u32) {
    let a = coopLoadT<TileA>(&factors[0], TILE);
    let b = coopLoad<TileB>(&factors[0], TILE);
    var c0: TileC;
    var c1: TileC;
    var c2: TileC;
    var c3: TileC;
    for (var i = 0u; i < ITERATIONSu; i++) {
        c0 = coopMultiplyAdd(a, b, c0);
        c1 = coopMultiplyAdd(a, b, c1);
        c2 = coopMultiplyAdd(a, b, c2);
        c3 = coopMultiplyAdd(a, b, c3);
    }
    let base = (wid.x * SUBGROUPSu + subgroup) * 4u * TILE * TILE;
    let at0 = base;
    coopStoreT(c0, &sink[at0], TILE);
    let at1 = base + TILE * TILE;
    coopStoreT(c1, &sink[at1], TILE);
    let at2 = base + 2u * TILE * TILE;
    coopStoreT(c2, &sink[at2], TILE);
    let at3 = base + 3u * TILE * TILE;
    coopStoreT(c3, &sink[at3], TILE);
}
";

/// The pipeline and bind group of a probe shader: entry point `probe`, bindings 0 (`factors`)
/// and 1 (`sink`). Probes are built once per run, outside any timed loop.
pub(crate) fn probe_pipeline(
    device: &Device,
    source: &str,
    factors: &GpuBuffer,
    sink: &GpuBuffer,
) -> (wgpu::ComputePipeline, wgpu::BindGroup) {
    let wgpu_device = device.wgpu_device();
    let module = wgpu_device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("micro probe"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = wgpu_device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("micro probe"),
        layout: None,
        module: &module,
        entry_point: Some("probe"),
        compilation_options: Default::default(),
        cache: None,
    });
    let group = wgpu_device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("micro probe"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: factors.wgpu_buffer().as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: sink.wgpu_buffer().as_entire_binding(),
            },
        ],
    });
    (pipeline, group)
}

/// Runs a probe shader (bindings: `factors`, `sink`) on `workgroups` workgroups, `count` times
/// per submission; the best time per dispatch.
async fn run_probe(
    device: &Device,
    source: &str,
    factors: &GpuBuffer,
    sink: &GpuBuffer,
    workgroups: u32,
    effort: Effort,
) -> Result<Duration, String> {
    let (pipeline, group) = probe_pipeline(device, source, factors, sink);
    let wgpu_device = device.wgpu_device();
    let run = |count: usize| {
        let mut encoder = wgpu_device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            for _ in 0..count {
                pass.dispatch_workgroups(workgroups, 1, 1);
            }
        }
        device.wgpu_queue().submit([encoder.finish()]);
    };
    run(1);
    device.read_f32(sink, 0, 1).await.map_err(err)?;
    let mut best = Duration::MAX;
    for _ in 0..effort.reps {
        let start = Instant::now();
        run(effort.count);
        device.read_f32(sink, 0, 1).await.map_err(err)?;
        best = best.min(start.elapsed());
    }
    Ok(best / effort.count as u32)
}

async fn probes(device: &Device, effort: Effort, out: &mut Vec<Measure>) -> Result<(), String> {
    let (groups, iterations) = (effort.probe_workgroups, effort.probe_iterations);
    let factors = device
        .upload_f32(
            "probe factors",
            &[0.999, 0.999, 0.999, 0.999, 1e-3, 1e-3, 1e-3, 1e-3],
        )
        .map_err(err)?;
    let threads = u64::from(groups) * 256;
    let sink = device
        .create_storage("probe sink", threads * 16)
        .map_err(err)?;
    let source = FMA_PROBE.replace("ITERATIONS", &iterations.to_string());
    let per = run_probe(device, &source, &factors, &sink, groups, effort).await?;
    out.push(Measure {
        section: "peak",
        case: "f32 fma (shader cores)".into(),
        shape: format!("{groups} workgroups × 256, {iterations} trips × 8 vec4"),
        per_dispatch: per,
        work: threads as f64 * f64::from(iterations) * 8.0 * 4.0 * 2.0,
        unit: "TFLOP/s",
    });

    let Some(shape) = device.coop_shape() else {
        return Ok(());
    };
    let t = shape.tile.side();
    let tile_file = match shape.tile {
        CoopTile::Eight => include_str!("../../shaders/gemm_coop_tile8.wgsl"),
        CoopTile::Sixteen => include_str!("../../shaders/gemm_coop_tile16.wgsl"),
    };
    let source = format!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n{tile_file}{}",
        MMA_PROBE
            .replace(
                "WORKGROUP_SIZE",
                &(SUB_BLOCKS * shape.subgroup_size).to_string()
            )
            .replace("SUBGROUPS", &SUB_BLOCKS.to_string())
            .replace("ITERATIONS", &iterations.to_string())
    );
    let halves: Vec<half::f16> = random((t * t) as usize, 7, 0.5)
        .into_iter()
        .map(half::f16::from_f32)
        .collect();
    let factors = device
        .upload_weights_as("mma factors", WeightData::F16(&halves), WeightFormat::F16)
        .map_err(err)?;
    let subgroups = u64::from(groups) * u64::from(SUB_BLOCKS);
    let sink = device
        .create_storage("mma sink", subgroups * 4 * u64::from(t * t) * 4)
        .map_err(err)?;
    let per = run_probe(device, &source, factors.buffer(), &sink, groups, effort).await?;
    out.push(Measure {
        section: "peak",
        case: format!("coop multiply-add {t}×{t}×{t} f16→f32"),
        shape: format!(
            "{groups} workgroups × {SUB_BLOCKS} subgroups of {}, {iterations} trips × 4",
            shape.subgroup_size
        ),
        per_dispatch: per,
        work: subgroups as f64 * f64::from(iterations) * 4.0 * 2.0 * f64::from(t * t * t),
        unit: "TFLOP/s",
    });
    Ok(())
}

/// The projections of one layer: (name, in, out).
fn projections(c: &ModelConfig) -> Vec<(&'static str, u32, u32)> {
    let d = c.d_model as u32;
    let qkvg = (c.query_width() + c.key_width() + c.kv_value_width() + c.value_width()) as u32;
    vec![
        ("q|k|v|g", d, qkvg),
        ("out_proj", c.value_width() as u32, d),
        ("ffn act|lin", d, 2 * c.ffn_dim as u32),
        ("ffn_down", c.ffn_dim as u32, d),
    ]
}

async fn gemms(
    device: &Device,
    config: &ModelConfig,
    effort: Effort,
    out: &mut Vec<Measure>,
) -> Result<(), String> {
    for rows in [2048u32, 8192] {
        for (name, in_dim, out_dim) in projections(config) {
            let params = LinearParams::new(rows, in_dim, out_dim);
            let w = random((in_dim * out_dim) as usize, 11, 0.05);
            let weights = device
                .upload_weights_as(
                    "w",
                    WeightData::F32(&w),
                    WeightFormat::half_for(device.features()),
                )
                .map_err(err)?;
            let x = device
                .upload_f32("x", &random((rows * in_dim) as usize, 12, 1.0))
                .map_err(err)?;
            let y = device
                .create_storage_f32("y", (rows * out_dim) as usize)
                .map_err(err)?;
            let buffers = LinearBuffers {
                weight: weights.buffer(),
                input: &x,
                output: &y,
            };
            // The direct GEMM reads an f16 copy of X (made once here; its conversion is
            // timed on its own, in GB/s of f32 read plus f16 written).
            let direct_shape = device
                .coop_shape()
                .filter(|s: &CoopShape| gemm_coop_direct_supports(s.tile, &params))
                .filter(|_| weights.format == WeightFormat::F16);
            let x16 = match direct_shape {
                Some(shape) => {
                    let padded = u64::from(direct_padded_rows(shape.tile, rows));
                    let edge_bytes = gemm_coop_direct_edge_bytes(shape.tile, &params);
                    Some((
                        device
                            .create_storage("x f16", padded * u64::from(in_dim) * 2)
                            .map_err(err)?,
                        device
                            .create_storage("coop edge tiles", edge_bytes.max(4))
                            .map_err(err)?,
                    ))
                }
                None => None,
            };
            let mut kernels: Vec<(String, Bound<'_, GpuBuffer>)> = Vec::new();
            if let (Some(shape), Some((x16, edge))) = (direct_shape, &x16) {
                let convert = to_f16(
                    shape.tile,
                    &params,
                    ToF16Buffers {
                        input: &x,
                        output: x16,
                    },
                );
                let list: Vec<_> = (0..effort.count).map(|_| convert).collect();
                let per = time(device, &list, x16, effort).await?;
                out.push(Measure {
                    section: "gemm",
                    case: "to-f16".to_string(),
                    shape: format!("{name} rows={rows} in={in_dim}"),
                    per_dispatch: per,
                    work: 6.0 * f64::from(rows) * f64::from(in_dim),
                    unit: "GB/s",
                });
                let direct = GemmCoopDirectBuffers {
                    weight: weights.buffer(),
                    input: x16,
                    output: &y,
                    edge,
                };
                kernels.push((
                    shape.tile.direct_kernel().name.to_string(),
                    gemm_coop_direct(shape, params, direct),
                ));
            }
            let coop = device
                .coop_shape()
                .filter(|s: &CoopShape| gemm_coop_supports(s.tile, &params));
            if let (Some(shape), WeightFormat::F16) = (coop, weights.format) {
                kernels.push((
                    shape.tile.kernel().name.to_string(),
                    gemm_coop(shape, params, buffers),
                ));
            }
            kernels.push((
                format!("matmul/{}", weights.format.name()),
                matmul(weights.format, params, buffers),
            ));
            for (kernel, bound) in kernels {
                let list: Vec<_> = (0..effort.count).map(|_| bound).collect();
                let per = time(device, &list, &y, effort).await?;
                out.push(Measure {
                    section: "gemm",
                    case: kernel,
                    shape: format!("{name} rows={rows} in={in_dim} out={out_dim}"),
                    per_dispatch: per,
                    work: 2.0 * f64::from(rows) * f64::from(in_dim) * f64::from(out_dim),
                    unit: "TFLOP/s",
                });
            }
        }
    }
    Ok(())
}

async fn matvecs(
    device: &Device,
    config: &ModelConfig,
    effort: Effort,
    out: &mut Vec<Measure>,
) -> Result<(), String> {
    let format = WeightFormat::half_for(device.features());
    let reduction = Reduction::for_features(device.features());
    let count = effort.count.max(8);
    for (name, in_dim, out_dim) in projections(config) {
        let params = LinearParams::new(1, in_dim, out_dim);
        let w = random((in_dim * out_dim) as usize, 21, 0.05);
        let weights = device
            .upload_weights_as("w", WeightData::F32(&w), format)
            .map_err(err)?;
        let width = in_dim.max(out_dim) as usize;
        let x = device
            .upload_f32("x", &random(width, 22, 1.0))
            .map_err(err)?;
        // Independent: every dispatch reads x and writes an output of its own.
        let outputs: Vec<GpuBuffer> = (0..count)
            .map(|_| device.create_storage_f32("y", width))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        let product = |input, output| {
            let buffers = LinearBuffers {
                weight: weights.buffer(),
                input,
                output,
            };
            matvec(format, reduction, params, buffers)
        };
        let independent: Vec<_> = outputs.iter().map(|y| product(&x, y)).collect();
        // Dependent: each reads what the previous one wrote (two buffers in turn).
        let pair = [&outputs[0], &outputs[1]];
        let dependent: Vec<_> = (0..count)
            .map(|i| product(pair[i % 2], pair[(i + 1) % 2]))
            .collect();
        let kernel_name = independent[0].kernel().name;
        let bytes = f64::from(in_dim) * f64::from(out_dim) * format.bytes_per_value();
        for (how, list) in [("independent", &independent), ("dependent", &dependent)] {
            let per = time(device, list, &outputs[0], effort).await?;
            out.push(Measure {
                section: "matvec",
                case: format!("{kernel_name} {how}"),
                shape: format!("{name} in={in_dim} out={out_dim} ×{count}"),
                per_dispatch: per,
                work: bytes,
                unit: "GB/s",
            });
        }
    }
    Ok(())
}

async fn retentions(
    device: &Device,
    c: &ModelConfig,
    effort: Effort,
    out: &mut Vec<Measure>,
) -> Result<(), String> {
    let tokens = 2048u32;
    let chunk = 64u32;
    let (h, kv, k, v) = (
        c.num_heads as u32,
        c.num_kv_heads as u32,
        c.head_k_dim as u32,
        c.head_v_dim as u32,
    );
    // q | k | v in one row per token, as the model's projection writes them.
    let width = h * k + kv * k + kv * v;
    let params = |tokens: u32| RetentionParams {
        tokens,
        query_heads: h,
        kv_heads: kv,
        key_dim: k,
        value_dim: v,
        start_pos: 0,
        q: Strided {
            offset: 0,
            stride: width,
        },
        k: Strided {
            offset: h * k,
            stride: width,
        },
        v: Strided {
            offset: h * k + kv * k,
            stride: width,
        },
        out: Strided {
            offset: 0,
            stride: h * v,
        },
        scale_by_decay_sum: true,
    };
    let qkv = device
        .upload_f32("qkv", &random((tokens * width) as usize, 31, 0.3))
        .map_err(err)?;
    let decays: Vec<f32> = (0..h)
        .map(|i| (1.0 - 2f32.powf(-5.0 - i as f32)).ln())
        .collect();
    let log_decay = device.upload_f32("log_decay", &decays).map_err(err)?;
    let state = device
        .create_storage_f32("state", (h * k * v) as usize)
        .map_err(err)?;
    let output = device
        .create_storage_f32("out", (tokens * h * v) as usize)
        .map_err(err)?;
    let span = params(tokens);
    let states = device
        .create_storage(
            "chunk states",
            retention::chunk_states_len(&span, chunk) * 4,
        )
        .map_err(err)?;
    let (tf, hf, kf, vf) = (f64::from(tokens), f64::from(h), f64::from(k), f64::from(v));
    let cf = f64::from(chunk);
    let updates = retention::ChunkUpdatesBuffers {
        k: &qkv,
        v: &qkv,
        log_decay: &log_decay,
        chunk_states: &states,
    };
    let scan = retention::ChunkScanBuffers {
        log_decay: &log_decay,
        state: &state,
        chunk_states: &states,
    };
    let outputs = retention::ChunkOutputsBuffers {
        q: &qkv,
        k: &qkv,
        v: &qkv,
        log_decay: &log_decay,
        chunk_states: &states,
        output: &output,
    };
    let step = retention::RetentionBuffers {
        q: &qkv,
        k: &qkv,
        v: &qkv,
        log_decay: &log_decay,
        state: &state,
        output: &output,
    };
    let cases: Vec<(Bound<'_, GpuBuffer>, f64)> = vec![
        // Per chunk: kᵀ·v, C·K·V multiply-adds per head.
        (
            retention::chunk_updates(span, chunk, updates),
            2.0 * tf * hf * kf * vf,
        ),
        (
            retention::chunk_scan(span, chunk, scan),
            2.0 * (tf / cf) * hf * kf * vf,
        ),
        // Per chunk: q·kᵀ (C·C·K), scores·v (C·C·V), q·S (C·K·V).
        (
            retention::chunk_outputs(span, chunk, outputs),
            2.0 * tf * hf * (cf * kf + cf * vf + kf * vf),
        ),
        // One decode token: the state read, updated and read again.
        (retention::recurrent(params(1), step), 4.0 * hf * kf * vf),
    ];
    for (bound, flops) in cases {
        let dispatch = bound.dispatch;
        let list: Vec<_> = (0..effort.count).map(|_| bound).collect();
        let per = time(device, &list, &output, effort).await?;
        let tokens = if dispatch.kernel.name.starts_with("retention/recurrent") {
            1
        } else {
            tokens
        };
        out.push(Measure {
            section: "retention",
            case: dispatch.kernel.name.to_string(),
            shape: format!("T={tokens} H={h}/{kv} K={k} V={v} chunk={chunk}"),
            per_dispatch: per,
            work: flops,
            unit: "TFLOP/s",
        });
    }
    Ok(())
}
