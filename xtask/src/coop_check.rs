//! Correctness probes of the tensor-core path, run by `cargo xtask bench --micro` on a device with
//! cooperative matrices, so that one device call says *which* cooperative operation a driver gets
//! wrong, not only that the GEMM is wrong.
//!
//! - tile probes, one subgroup: a tile of A (random f16) multiplied by the identity, with A loaded
//!   from a storage buffer, from workgroup memory (row-major, with and without the GEMM's row
//!   padding and offset), B loaded column-major from workgroup memory, and the accumulator stored
//!   to workgroup memory and copied out element by element. Each must reproduce A (or Aᵀ)
//!   exactly: f16 values times 1, accumulated in f32.
//! - chained multiply-adds into one accumulator, operands from workgroup memory or storage, at
//!   constant and run-time offsets;
//! - the GEMM as built (also over K = one tile, one K step, two K steps) and in variants: B tiles
//!   read straight from the weight buffer instead of workgroup memory; X read as f16, staged or
//!   with A (and B) tiles read straight from storage; sub-blocks of one tile. Each is checked
//!   against an f64 product of the same f16-rounded operands on a whole-block shape (and an edge
//!   shape where the variant handles edges) and timed on a 2048³ product.
//!
//! On the H200 (docs/runs/h200-coop-checks.txt) every probe is exact, and the GEMM is right only
//! when K is one tile or when neither operand comes from workgroup memory; see
//! docs/perf-notes.md.

use std::sync::Arc;
use std::time::Instant;

use retnet_kernels::gemm_coop::{gemm_coop_launch, CoopShape, CoopTile, GEMM_COOP_16, GEMM_COOP_8};
use retnet_kernels::linear::LinearParams;
use retnet_kernels::{Bound, BufferList, Dispatch, Kernel, WeightFormat};
use retnet_runtime::{Device, WeightData};

use crate::micro::{err, random};
use serde_json::{json, Value};

/// Largest |a − b|; infinite when either holds a non-finite value or the lengths differ.
fn max_abs(a: &[f32], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter().zip(b).fold(0.0, |m: f64, (&x, &y)| {
        let x = f64::from(x);
        if !x.is_finite() || !y.is_finite() {
            f64::INFINITY
        } else {
            m.max((x - y).abs())
        }
    })
}

const TILE_PROBE: &str = "
@group(0) @binding(0) var<storage, read> factors: array<f16>;
@group(0) @binding(1) var<storage, read_write> sink: array<f32>;

const PAD: u32 = PADu;
const OFFSET: u32 = OFFSETu;
const ROW: u32 = TILE + PAD;
var<workgroup> staged: array<f16, OFFSET + TILE * ROW>;
var<workgroup> out_tile: array<f32, TILE * TILE>;

// factors: A [TILE, TILE] row-major, then the identity. sink: four tiles, row-major:
// A from storage, A from workgroup memory, (B = Aᵀ from workgroup memory) and A through a
// workgroup-memory accumulator store.
@compute @workgroup_size(LANESu)
fn probe(@builtin(local_invocation_index) lid: u32) {
    for (var i = lid; i < TILE * TILE; i += LANESu) {
        staged[OFFSET + (i / TILE) * ROW + i % TILE] = factors[i];
    }
    workgroupBarrier();
    let at_identity = TILE * TILE;
    let identity_b = coopLoad<TileB>(&factors[at_identity], TILE);
    let identity_a = coopLoadT<TileA>(&factors[at_identity], TILE);

    let a_storage = coopLoadT<TileA>(&factors[0], TILE);
    var c0: TileC;
    c0 = coopMultiplyAdd(a_storage, identity_b, c0);
    coopStoreT(c0, &sink[0], TILE);

    let at_staged = OFFSET;
    let a_staged = coopLoadT<TileA>(&staged[at_staged], ROW);
    var c1: TileC;
    c1 = coopMultiplyAdd(a_staged, identity_b, c1);
    let at1 = TILE * TILE;
    coopStoreT(c1, &sink[at1], TILE);

    let b_staged = coopLoad<TileB>(&staged[at_staged], ROW);
    var c2: TileC;
    c2 = coopMultiplyAdd(identity_a, b_staged, c2);
    let at2 = 2u * TILE * TILE;
    coopStoreT(c2, &sink[at2], TILE);

    coopStoreT(c0, &out_tile[0], TILE);
    workgroupBarrier();
    for (var i = lid; i < TILE * TILE; i += LANESu) {
        sink[3u * TILE * TILE + i] = out_tile[i];
    }
}
";

const CHAIN_PROBE: &str = "
@group(0) @binding(0) var<storage, read> factors: array<f16>;
@group(0) @binding(1) var<storage, read_write> sink: array<f32>;

// factors: [A | A2] as TILE rows of 2·TILE (row-major), then the identity (TILE × TILE).
// sink: four tiles, each expected A + A2: two multiply-adds chained into one accumulator, A and A2
// loaded from workgroup memory at constant offsets, at run-time offsets in a loop, from storage
// at run-time offsets in a loop, and from workgroup memory with each product in an accumulator of
// its own, added through workgroup memory.
const ROW: u32 = 2u * TILE + 8u;
var<workgroup> staged: array<f16, TILE * ROW>;
var<workgroup> out_tile: array<f32, 2u * TILE * TILE>;

@compute @workgroup_size(LANESu)
fn probe(@builtin(local_invocation_index) lid: u32) {
    for (var i = lid; i < 2u * TILE * TILE; i += LANESu) {
        staged[(i / (2u * TILE)) * ROW + i % (2u * TILE)] = factors[i];
    }
    workgroupBarrier();
    let at_identity = 2u * TILE * TILE;
    let identity = coopLoad<TileB>(&factors[at_identity], TILE);
    // Zero at run time: the identity's first element is 1.
    let dynamic_zero = u32(factors[at_identity]) - 1u;

    var c0: TileC;
    let at_c0a = 0u;
    let a0 = coopLoadT<TileA>(&staged[at_c0a], ROW);
    c0 = coopMultiplyAdd(a0, identity, c0);
    let at_c0b = TILE;
    let a1 = coopLoadT<TileA>(&staged[at_c0b], ROW);
    c0 = coopMultiplyAdd(a1, identity, c0);
    coopStoreT(c0, &sink[0], TILE);

    var c1: TileC;
    for (var kk = dynamic_zero; kk < 2u * TILE; kk += TILE) {
        let at = kk;
        let a = coopLoadT<TileA>(&staged[at], ROW);
        c1 = coopMultiplyAdd(a, identity, c1);
    }
    let at1 = TILE * TILE;
    coopStoreT(c1, &sink[at1], TILE);

    var c2: TileC;
    for (var kk = dynamic_zero; kk < 2u * TILE; kk += TILE) {
        let at = kk;
        let a = coopLoadT<TileA>(&factors[at], 2u * TILE);
        c2 = coopMultiplyAdd(a, identity, c2);
    }
    let at2 = 2u * TILE * TILE;
    coopStoreT(c2, &sink[at2], TILE);

    var d0: TileC;
    var d1: TileC;
    d0 = coopMultiplyAdd(a0, identity, d0);
    d1 = coopMultiplyAdd(a1, identity, d1);
    coopStoreT(d0, &out_tile[0], TILE);
    let at_d1 = TILE * TILE;
    coopStoreT(d1, &out_tile[at_d1], TILE);
    workgroupBarrier();
    for (var i = lid; i < TILE * TILE; i += LANESu) {
        sink[3u * TILE * TILE + i] = out_tile[i] + out_tile[TILE * TILE + i];
    }
}
";

async fn chain_probe(device: &Device, shape: CoopShape) -> Result<Vec<(String, f64)>, String> {
    let t = shape.tile.side() as usize;
    let source = format!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n{}{}",
        tile_file(shape.tile),
        CHAIN_PROBE.replace("LANESu", &format!("{}u", shape.subgroup_size))
    );
    let both: Vec<half::f16> = random(2 * t * t, 9, 1.0)
        .into_iter()
        .map(half::f16::from_f32)
        .collect();
    let mut factors = both.clone();
    factors.extend((0..t * t).map(|i| half::f16::from_f32(if i / t == i % t { 1.0 } else { 0.0 })));
    let factors = device
        .upload_weights_as("chain probe", WeightData::F16(&factors), WeightFormat::F16)
        .map_err(err)?;
    let sink = device
        .create_storage_f32("chain probe sink", 4 * t * t)
        .map_err(err)?;
    let got = run_one(device, &source, factors.buffer(), &sink, 4 * t * t).await?;
    let want: Vec<f64> = (0..t * t)
        .map(|i| {
            let (r, c) = (i / t, i % t);
            f64::from(both[r * 2 * t + c].to_f32()) + f64::from(both[r * 2 * t + t + c].to_f32())
        })
        .collect();
    let cases = [
        "two chained multiply-adds, A from workgroup memory, constant offsets",
        "chained in a loop, A from workgroup memory, run-time offsets",
        "chained in a loop, A from storage, run-time offsets",
        "two accumulators, A from workgroup memory, summed after",
    ];
    Ok(cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            (
                case.to_string(),
                max_abs(&got[i * t * t..(i + 1) * t * t], &want),
            )
        })
        .collect())
}

/// Runs a one-workgroup probe (bindings `factors`, `sink`) once and reads `len` values back.
async fn run_one(
    device: &Device,
    source: &str,
    factors: &retnet_runtime::GpuBuffer,
    sink: &retnet_runtime::GpuBuffer,
    len: usize,
) -> Result<Vec<f32>, String> {
    let (pipeline, group) = crate::micro::probe_pipeline(device, source, factors, sink);
    let wgpu_device = device.wgpu_device();
    let mut encoder = wgpu_device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    device.wgpu_queue().submit([encoder.finish()]);
    device.read_f32(sink, 0, len).await.map_err(err)
}

fn tile_file(tile: CoopTile) -> &'static str {
    match tile {
        CoopTile::Eight => include_str!("../../shaders/gemm_coop_tile8.wgsl"),
        CoopTile::Sixteen => include_str!("../../shaders/gemm_coop_tile16.wgsl"),
    }
}

async fn tile_probe(
    device: &Device,
    shape: CoopShape,
    pad: u32,
    offset: u32,
) -> Result<Vec<(String, f64)>, String> {
    let t = shape.tile.side() as usize;
    let source = format!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n{}{}",
        tile_file(shape.tile),
        TILE_PROBE
            .replace("PADu", &format!("{pad}u"))
            .replace("OFFSETu", &format!("{offset}u"))
            .replace("LANESu", &format!("{}u", shape.subgroup_size))
    );
    let a: Vec<half::f16> = random(t * t, 5, 1.0)
        .into_iter()
        .map(half::f16::from_f32)
        .collect();
    let mut factors = a.clone();
    factors.extend((0..t * t).map(|i| half::f16::from_f32(if i / t == i % t { 1.0 } else { 0.0 })));
    let factors = device
        .upload_weights_as("tile probe", WeightData::F16(&factors), WeightFormat::F16)
        .map_err(err)?;
    let sink = device
        .create_storage_f32("tile probe sink", 4 * t * t)
        .map_err(err)?;
    let got = run_one(device, &source, factors.buffer(), &sink, 4 * t * t).await?;
    let a64: Vec<f64> = a.iter().map(|h| f64::from(h.to_f32())).collect();
    let at64: Vec<f64> = (0..t * t).map(|i| a64[(i % t) * t + i / t]).collect();
    let label = format!("pad {pad}, offset {offset}");
    Ok(vec![
        (
            format!("A from storage ({label})"),
            max_abs(&got[..t * t], &a64),
        ),
        (
            format!("A from workgroup memory ({label})"),
            max_abs(&got[t * t..2 * t * t], &a64),
        ),
        (
            format!("B from workgroup memory ({label})"),
            max_abs(&got[2 * t * t..3 * t * t], &at64),
        ),
        (
            format!("C stored to workgroup memory ({label})"),
            max_abs(&got[3 * t * t..], &a64),
        ),
    ])
}

/// A GEMM variant: the built kernel's source with `edits` applied, under a name of its own (the
/// pipeline cache is keyed by name). Leaked: a diagnostic builds a handful once.
fn variant(
    base: &'static Kernel,
    name: &str,
    edits: &[(&str, &str)],
) -> Result<&'static Kernel, String> {
    let mut source = base.source.to_string();
    for (from, to) in edits {
        if !source.contains(from) {
            return Err(format!("gemm variant {name}: {from:?} not in the shader"));
        }
        source = source.replace(from, to);
    }
    Ok(Box::leak(Box::new(Kernel {
        name: Box::leak(format!("{}+{name}", base.name).into_boxed_str()),
        source: Box::leak(source.into_boxed_str()),
        ..*base
    })))
}

/// A GEMM to check: the kernel, whether it handles edge shapes, whether its workgroup is one
/// subgroup (the four sub-blocks then computed in four rounds) instead of four, and whether it
/// reads X as f16 (`input: array<f16>`) instead of f32.
type Variant = (&'static Kernel, bool, bool, bool);

/// Edits that make the GEMM read X as f16 from storage.
const F16_INPUT: [(&str, &str); 2] = [
    (
        "var<storage, read> input: array<f32>;",
        "var<storage, read> input: array<f16>;",
    ),
    (
        "value = clamp(input[(params.x_row_start + row) * k_dim + k0 + k], -F16_MAX, F16_MAX);",
        "value = f32(input[(params.x_row_start + row) * k_dim + k0 + k]);",
    ),
];

/// Edits that load the A (X) or B (W) tiles straight from storage instead of workgroup memory
/// (whole blocks only: the tiles are read without bounds).
fn from_storage(operand: char) -> Vec<(String, String)> {
    let mut edits = Vec::new();
    for j in 0..4 {
        let (stage, base, origin, buffer) = match operand {
            'a' => ("stage_a", "a_base", "r0", "input"),
            _ => ("stage_b", "b_base", "c0", "weight"),
        };
        edits.push((
            format!("let at_{operand}{j} = {base} + {j}u * TILE * STRIDE + kk;"),
            format!(
                "let at_{operand}{j} = ({origin} + {j}u * TILE) * params.in_dim + s * K_STEP + kk;"
            ),
        ));
        let tile = if operand == 'a' {
            "coopLoadT<TileA>"
        } else {
            "coopLoad<TileB>"
        };
        edits.push((
            format!("{tile}(&{stage}[at_{operand}{j}], STRIDE)"),
            format!("{tile}(&{buffer}[at_{operand}{j}], params.in_dim)"),
        ));
    }
    edits
}

fn with_edits(
    base: &'static Kernel,
    name: &str,
    edits: &[(String, String)],
) -> Result<&'static Kernel, String> {
    let edits: Vec<(&str, &str)> = edits
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    variant(base, name, &edits)
}

/// Edits that zero every workgroup array at the start (the runtime creates pipelines without
/// wgpu's zero-initialization): if the 16×16 NaN comes from reading an element the kernel never
/// wrote, this variant is right where the base one is not.
const ZEROED_WORKGROUP_MEMORY: [(&str, &str); 1] = [(
    "    let count = workgroupUniformLoad(&subgroup_count);\n",
    "    let count = workgroupUniformLoad(&subgroup_count);
    for (var i = lid; i < 2u * STAGE_A; i += WORKGROUP_SIZE) {
        stage_a[i] = f16(0.0);
    }
    for (var i = lid; i < 2u * STAGE_B; i += WORKGROUP_SIZE) {
        stage_b[i] = f16(0.0);
    }
    for (var i = lid; i < SUB_BLOCKS * TILE * TILE; i += WORKGROUP_SIZE) {
        edge_tiles[i] = 0.0;
    }
    workgroupBarrier();
",
)];

fn variants(tile: CoopTile) -> Result<Vec<Variant>, String> {
    let base = match tile {
        CoopTile::Eight => &GEMM_COOP_8,
        CoopTile::Sixteen => &GEMM_COOP_16,
    };
    let f16: Vec<(String, String)> = F16_INPUT
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let f16_a: Vec<_> = f16.iter().cloned().chain(from_storage('a')).collect();
    let f16_ab: Vec<_> = f16_a.iter().cloned().chain(from_storage('b')).collect();
    Ok(vec![
        (base, true, false, false),
        (
            with_edits(base, "b-from-storage", &from_storage('b'))?,
            false,
            false,
            false,
        ),
        (with_edits(base, "f16-input", &f16)?, true, false, true),
        (
            with_edits(base, "f16-input+a-from-storage", &f16_a)?,
            false,
            false,
            true,
        ),
        (
            with_edits(base, "f16-input+a-b-from-storage", &f16_ab)?,
            false,
            false,
            true,
        ),
        (smaller_sub_blocks(base, 1)?, true, false, false),
        (
            variant(base, "zeroed-workgroup-memory", &ZEROED_WORKGROUP_MEMORY)?,
            true,
            false,
            false,
        ),
    ])
}

/// X as the GEMM variant reads it: f32, or f16.
fn upload_x(
    device: &Device,
    x: &[f32],
    f16_input: bool,
) -> Result<retnet_runtime::GpuBuffer, String> {
    if f16_input {
        let halves: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
        Ok(device
            .upload_weights_as("x16", WeightData::F16(&halves), WeightFormat::F16)
            .map_err(err)?
            .into_buffer())
    } else {
        device.upload_f32("x", x).map_err(err)
    }
}

/// f64 `X · Wᵀ` of the f16-rounded operands.
fn reference(x: &[f32], w: &[half::f16], rows: usize, k: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * n];
    for r in 0..rows {
        for c in 0..n {
            let mut acc = 0.0f64;
            for i in 0..k {
                let xv = f64::from(half::f16::from_f32(x[r * k + i]).to_f32());
                acc += xv * f64::from(w[c * k + i].to_f32());
            }
            y[r * n + c] = acc;
        }
    }
    y
}

/// Tiles per side of a subgroup's sub-block in `kernel` (4 in the built GEMM).
fn sub_tiles(kernel: &Kernel) -> u32 {
    if kernel.source.contains("const SUB: u32 = 2u * TILE;") {
        2
    } else if kernel.source.contains("const SUB: u32 = 1u * TILE;") {
        1
    } else {
        4
    }
}

/// Rows and columns of Y per workgroup: 2 × 2 sub-blocks.
fn block_of(kernel: &Kernel, tile: CoopTile) -> u32 {
    2 * sub_tiles(kernel) * tile.side()
}

/// The built GEMM with sub-blocks of `n` × `n` tiles (n = 1 or 2) instead of 4 × 4: every line
/// that names a tile, operand or accumulator beyond the first `n` is dropped.
fn smaller_sub_blocks(base: &'static Kernel, n: u32) -> Result<&'static Kernel, String> {
    let mut dropped: Vec<String> = Vec::new();
    for i in 0..4u32 {
        for j in 0..4u32 {
            if i >= n || j >= n {
                dropped.push(format!("y{i}{j}"));
            }
        }
        if i >= n {
            for name in ["a", "b", "r", "c", "at_a", "at_b"] {
                dropped.push(format!("{name}{i}"));
            }
        }
    }
    let is_dropped = |line: &str| {
        line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|word| dropped.iter().any(|d| d == word))
    };
    let mut source: String = base
        .source
        .lines()
        .filter(|line| !is_dropped(line))
        .map(|line| format!("{line}\n"))
        .collect();
    let from = "const SUB: u32 = 4u * TILE;";
    if !source.contains(from) {
        return Err("gemm variant: no SUB constant".into());
    }
    source = source.replace(from, &format!("const SUB: u32 = {n}u * TILE;"));
    Ok(Box::leak(Box::new(Kernel {
        name: Box::leak(format!("{}+sub{n}x{n}", base.name).into_boxed_str()),
        source: Box::leak(source.into_boxed_str()),
        ..*base
    })))
}

/// The GEMM's dispatch with `kernel` in place of the built one.
fn dispatch(
    shape: CoopShape,
    kernel: &'static Kernel,
    single: bool,
    params: LinearParams,
) -> Dispatch {
    let mut built = gemm_coop_launch(shape, params);
    // Variants with smaller sub-blocks cover smaller blocks: a grid of their own.
    let block = block_of(kernel, shape.tile);
    built.workgroups = [
        params.out_dim.div_ceil(block),
        params.rows.div_ceil(block),
        1,
    ];
    let constants = if single {
        built
            .constants
            .with(kernel, "WORKGROUP_SIZE", shape.subgroup_size)
    } else {
        built.constants
    };
    Dispatch {
        kernel,
        constants,
        ..built
    }
}

async fn gemm_error(
    device: &Device,
    shape: CoopShape,
    (kernel, single, f16_input): (&'static Kernel, bool, bool),
    (rows, k, n): (u32, u32, u32),
) -> Result<f64, String> {
    let params = LinearParams::new(rows, k, n);
    let x = random((rows * k) as usize, 31, 1.0);
    let w: Vec<half::f16> = random((n * k) as usize, 32, 0.1)
        .into_iter()
        .map(half::f16::from_f32)
        .collect();
    let weights = device
        .upload_weights_as("w", WeightData::F16(&w), WeightFormat::F16)
        .map_err(err)?;
    let xb = upload_x(device, &x, f16_input)?;
    let y = device
        .create_storage_f32("y", (rows * n) as usize)
        .map_err(err)?;
    let dispatch = dispatch(shape, kernel, single, params);
    let mut sequence = device.sequence("coop check");
    sequence
        .dispatch(Bound {
            dispatch,
            buffers: BufferList::new(&[weights.buffer(), &xb, &y]),
        })
        .map_err(err)?;
    sequence.submit().map_err(err)?;
    let got = device
        .read_f32(&y, 0, (rows * n) as usize)
        .await
        .map_err(err)?;
    let want = reference(&x, &w, rows as usize, k as usize, n as usize);
    Ok(max_abs(&got, &want))
}

async fn gemm_time(
    device: &Device,
    shape: CoopShape,
    (kernel, single, f16_input): (&'static Kernel, bool, bool),
    side: u32,
) -> Result<f64, String> {
    let params = LinearParams::new(side, side, side);
    let w: Vec<half::f16> = random((side * side) as usize, 41, 0.05)
        .into_iter()
        .map(half::f16::from_f32)
        .collect();
    let weights = device
        .upload_weights_as("w", WeightData::F16(&w), WeightFormat::F16)
        .map_err(err)?;
    let x = upload_x(device, &random((side * side) as usize, 42, 1.0), f16_input)?;
    let y = device
        .create_storage_f32("y", (side * side) as usize)
        .map_err(err)?;
    let dispatch = dispatch(shape, kernel, single, params);
    let count = 10;
    let run = || -> Result<(), String> {
        let mut sequence = device.sequence("coop time");
        for _ in 0..count {
            sequence
                .dispatch(Bound {
                    dispatch,
                    buffers: BufferList::new(&[weights.buffer(), &x, &y]),
                })
                .map_err(err)?;
        }
        sequence.submit().map_err(err)?;
        Ok(())
    };
    run()?;
    device.read_f32(&y, 0, 1).await.map_err(err)?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        run()?;
        device.read_f32(&y, 0, 1).await.map_err(err)?;
        best = best.min(start.elapsed().as_secs_f64() / f64::from(count));
    }
    Ok(2.0 * f64::from(side).powi(3) / best / 1e12)
}

/// Runs the probes and prints their table; `tiny` skips the 2048³ timings.
pub async fn run(device: &Arc<Device>, tiny: bool) -> Result<Value, String> {
    let Some(shape) = device.coop_shape() else {
        return Ok(json!(null));
    };
    let t = shape.tile.side();
    let mut rows: Vec<Value> = Vec::new();
    println!(
        "\ncooperative-matrix checks, {t}×{t} tiles, subgroups of {} (max |error|; 0 expected for tiles)",
        shape.subgroup_size
    );
    for (pad, offset) in [(0, 0), (8, 0), (8, t)] {
        for (case, error) in tile_probe(device, shape, pad, offset).await? {
            println!("  tile  {case:52} {error:.3e}");
            rows.push(json!({"case": case, "max_abs": error}));
        }
    }
    for (case, error) in chain_probe(device, shape).await? {
        println!("  chain {case:52} {error:.3e}");
        rows.push(json!({"case": case, "max_abs": error}));
    }
    let whole = (2 * shape.tile.block(), 2 * 64, 2 * shape.tile.block());
    let edge = (70, 65, 130);
    let block = shape.tile.block();
    for (index, (kernel, edges, single, f16_input)) in variants(shape.tile)?.into_iter().enumerate()
    {
        // The built kernel also over K = one tile, one K step, two K steps: where its error
        // starts says whether the K loop is at fault.
        let mut shapes = if index == 0 {
            vec![
                (2 * block, t, 2 * block),
                (2 * block, 2 * t, 2 * block),
                (2 * block, 4 * t, 2 * block),
            ]
        } else {
            Vec::new()
        };
        shapes.push(whole);
        if edges {
            shapes.push(edge);
        }
        let name = if single {
            format!("{} (one subgroup)", kernel.name)
        } else {
            kernel.name.to_string()
        };
        for dims in shapes {
            let error = gemm_error(device, shape, (kernel, single, f16_input), dims).await?;
            let case = format!("{name} rows={} in={} out={}", dims.0, dims.1, dims.2);
            println!("  gemm  {case:52} {error:.3e}");
            rows.push(json!({"case": case, "max_abs": error}));
        }
        if !tiny {
            let rate = gemm_time(device, shape, (kernel, single, f16_input), 2048).await?;
            println!("  time  {:52} {rate:.1} TFLOP/s", format!("{name} 2048³"));
            rows.push(json!({"case": format!("{name} 2048^3"), "tflops": rate}));
        }
    }
    Ok(json!(rows))
}
