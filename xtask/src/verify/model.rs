//! Model-level rows: the whole model on the GPU against `retnet-model`'s CPU reference (and the
//! peers' recorded logits), for every committed fixture, every form, f32, f16, int8 and q4
//! weights, plus prefill-then-step against one parallel pass. A quantized model is compared with
//! the CPU reference of the same quantized weights ([`CpuModel::stored_as`]: the same decoded
//! blocks), so that row measures the kernels' f32 arithmetic; against the peers it measures the
//! quantization itself, held to a bar measured on these fixtures ([`quantized_peer_tolerance`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::Row;
use retnet_model::{CpuModel, GpuBatch, GpuModel, GpuOptions, RetentionForm, WeightPrecision};
use retnet_runtime::Device;

/// f32 weights: the test kit's whole-model bar (measured worst 1.4e-6, docs/testing.md).
const F32_TOLERANCE: f64 = retnet_testkit::GPU_F32_TOLERANCE;
/// Prefill-then-step vs one parallel pass, both on the GPU with f32 weights: the same sums in
/// another order; the same bar.
const CONTINUATION_TOLERANCE: f64 = retnet_testkit::GPU_F32_TOLERANCE;

/// f16 weights: the bound from f16's unit roundoff for this model's matrices
/// ([`retnet_testkit::f16_weights_tolerance`]).
fn f16_tolerance(cpu: &CpuModel, gpu: &GpuModel) -> f64 {
    let w = cpu.weights();
    let mut matrices = vec![&w.embed];
    matrices.extend(w.head.as_ref());
    for l in &w.layers {
        matrices.extend([
            &l.q_proj,
            &l.k_proj,
            &l.v_proj,
            &l.g_proj,
            &l.out_proj,
            &l.ffn_act,
            &l.ffn_lin,
            &l.ffn_down,
        ]);
    }
    retnet_testkit::f16_weights_tolerance(
        w.layers.len(),
        matrices.into_iter().map(|m| &m.data[..]),
        gpu.uses_tensor_cores(),
    )
}

/// Quantized weights against the peers' logits: the quantization's own error, on fixtures with
/// random weights (nothing a trained model learns, logits that are small differences of large
/// sums). Measured on lavapipe over the 7 retention fixtures: int8 worst 5.6e-2, q4 worst 4.8e-1
/// (torchscale_24heads_syncdoth; docs/testing.md); the bars are ×~2 of those, so they catch a
/// format decoded wrongly (errors ≥ 1), not a small loss of accuracy: the row against the CPU
/// with the same blocks does that, and the shipped model's loss says what the formats cost on
/// trained weights (README).
pub fn quantized_peer_tolerance(precision: WeightPrecision) -> f64 {
    match precision {
        WeightPrecision::Q4 => 1.0,
        _ => 0.1,
    }
}

/// `tests/fixtures` of the current directory when run from the repository root (also a copied
/// binary on another machine), else of the source tree this binary was built from.
fn fixtures_root() -> PathBuf {
    let here = PathBuf::from("tests/fixtures");
    if here.is_dir() {
        here
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }
}

fn fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_root())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("config.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

fn tokens_of(dir: &Path) -> Result<Vec<u32>, String> {
    let text = std::fs::read_to_string(dir.join("tokens.json")).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn peer_logits(dir: &Path) -> Result<Vec<f64>, String> {
    let bytes = std::fs::read(dir.join("logits.safetensors")).map_err(|e| e.to_string())?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
    let view = st.tensor("logits").map_err(|e| e.to_string())?;
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
        .collect())
}

fn forms(quick: bool) -> Vec<(RetentionForm, &'static str)> {
    let mut forms = vec![
        (RetentionForm::Parallel, "parallel"),
        (RetentionForm::Recurrent, "recurrent"),
        (RetentionForm::Chunkwise { chunk_size: 16 }, "chunkwise/16"),
    ];
    if !quick {
        forms.push((RetentionForm::Chunkwise { chunk_size: 7 }, "chunkwise/7"));
        forms.push((RetentionForm::Chunkwise { chunk_size: 64 }, "chunkwise/64"));
    }
    forms
}

/// The model rows (`quick`: f32 and f16 on every fixture, three forms).
pub fn rows(device: &Arc<Device>, quick: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    let dirs = fixtures();
    if dirs.is_empty() {
        rows.push(Row::fail(
            "model",
            "tests/fixtures",
            "no fixtures found".into(),
        ));
    }
    for dir in dirs {
        let name = dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().to_string());
        match fixture_rows(device, &dir, &name, quick) {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => rows.push(Row::fail(format!("model/{name}"), "", e)),
        }
    }
    rows
}

fn fixture_rows(
    device: &Arc<Device>,
    dir: &Path,
    name: &str,
    quick: bool,
) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let cpu = CpuModel::load(dir).map_err(|e| e.to_string())?;
    let tokens = tokens_of(dir)?;
    let c = cpu.config();
    // Hybrid checkpoints name their attention layers (the same rows check them).
    let attention: Vec<String> = c
        .attention
        .iter()
        .map(|a| {
            let window = a.window.map_or("full".to_string(), |w| format!("w{w}"));
            format!(" attn{:?} {window}", a.layers)
        })
        .collect();
    let shape = format!(
        "T={} d={} L={} H={}/{} K={} V={} vocab={}{}",
        tokens.len(),
        c.d_model,
        c.num_layers,
        c.num_heads,
        c.num_kv_heads,
        c.head_k_dim,
        c.head_v_dim,
        c.vocab_size,
        attention.concat()
    );
    let started = Instant::now();
    let reference = to_f64(
        &cpu.logits(&tokens, RetentionForm::Parallel)
            .map_err(|e| e.to_string())?,
    );
    let reference_time = started.elapsed();
    let peer = peer_logits(dir)?;

    // The f16 rows' tolerance, for the batch row below (same model, same projections).
    let mut f16_bound = None;
    let precisions = [
        WeightPrecision::F32,
        WeightPrecision::F16,
        WeightPrecision::Int8,
        WeightPrecision::Q4,
    ];
    for precision in precisions {
        let label = precision.name();
        if precision != WeightPrecision::F32 && !device.supports_half_weights() {
            rows.push(Row::skip(
                format!("model/{name}/{label}"),
                shape.clone(),
                "no f16 weights on this adapter",
            ));
            continue;
        }
        let gpu = GpuModel::new(device.clone(), &cpu, GpuOptions { weights: precision })
            .map_err(|e| e.to_string())?;
        // The quantized model's own reference: the CPU with the same decoded blocks.
        let quantized_reference;
        let (reference, tolerance, peer_tolerance) = match precision {
            WeightPrecision::F32 => (&reference, F32_TOLERANCE, F32_TOLERANCE),
            WeightPrecision::F16 => {
                let bound = *f16_bound.insert(f16_tolerance(&cpu, &gpu));
                (&reference, bound, bound)
            }
            WeightPrecision::Int8 | WeightPrecision::Q4 => {
                let stored = cpu
                    .clone()
                    .stored_as(precision)
                    .map_err(|e| e.to_string())?;
                quantized_reference = to_f64(
                    &stored
                        .logits(&tokens, RetentionForm::Parallel)
                        .map_err(|e| e.to_string())?,
                );
                // On tensor cores the projections multiply an f16 copy of the decoded blocks
                // and f16 inputs: the f16 bound on the decoded matrices. Elsewhere the kernels
                // decode exactly what the CPU decodes.
                let tolerance = if gpu.uses_tensor_cores() {
                    f16_tolerance(&stored, &gpu)
                } else {
                    F32_TOLERANCE
                };
                (
                    &quantized_reference,
                    tolerance,
                    quantized_peer_tolerance(precision),
                )
            }
        };
        for (form, form_name) in forms(quick) {
            let started = Instant::now();
            let got = pollster::block_on(gpu.logits(&tokens, form));
            let elapsed = started.elapsed() + reference_time;
            let case = format!("model/{name}/{label}/{form_name}");
            match got {
                Ok(got) => {
                    rows.push(
                        Row::compare(
                            case.clone(),
                            format!("{shape} vs cpu"),
                            &got,
                            reference,
                            tolerance,
                        )
                        .timed(elapsed),
                    );
                    rows.push(Row::compare(
                        case,
                        format!("{shape} vs peer"),
                        &got,
                        &peer,
                        peer_tolerance,
                    ));
                }
                Err(e) => rows.push(Row::fail(case, shape.clone(), e.to_string())),
            }
        }
    }

    // Batched decode (f16 weights where the adapter reads them: the tensor-core path for few rows
    // where it applies): three sequences prefilled to different lengths, then stepped together;
    // each step's logits equal the reference's at that position.
    let precision = if device.supports_half_weights() {
        WeightPrecision::F16
    } else {
        WeightPrecision::F32
    };
    let batch_rows = batch_row(device, &cpu, &tokens, precision, &reference)
        .map_err(|e| format!("batched decode: {e}"))?;
    // The sequences are prefilled through the same projections as the f16 rows above.
    let tolerance = match (precision, f16_bound) {
        (WeightPrecision::F16, Some(bound)) => bound,
        _ => F32_TOLERANCE,
    };
    let (got, want) = batch_rows;
    rows.push(Row::compare(
        format!("model/{name}/{precision:?}/batch").to_lowercase(),
        format!("{shape} 3 sequences × 4 steps"),
        &got,
        &want,
        tolerance,
    ));

    // Prefill (chunkwise) the first half, then step token by token: equal to one parallel pass.
    let gpu =
        GpuModel::new(device.clone(), &cpu, GpuOptions::default()).map_err(|e| e.to_string())?;
    let whole = pollster::block_on(gpu.logits(&tokens, RetentionForm::Parallel))
        .map_err(|e| e.to_string())?;
    let split = (tokens.len() / 2).max(1);
    let mut session = gpu.session().map_err(|e| e.to_string())?;
    let mut got =
        pollster::block_on(session.prefill(&tokens[..split])).map_err(|e| e.to_string())?;
    for &t in &tokens[split..] {
        got.extend(pollster::block_on(session.step(t)).map_err(|e| e.to_string())?);
    }
    let vocab = c.vocab_size;
    let want = to_f64(&whole[(split - 1) * vocab..]);
    rows.push(Row::compare(
        format!("model/{name}/prefill+steps"),
        format!("{shape} split at {split}"),
        &got,
        &want,
        CONTINUATION_TOLERANCE,
    ));
    Ok(rows)
}

/// Logits of three sequences stepped together in a [`GpuBatch`] after prefills of different
/// lengths, and the reference logits at the same positions.
fn batch_row(
    device: &Arc<Device>,
    cpu: &CpuModel,
    tokens: &[u32],
    precision: WeightPrecision,
    reference: &[f64],
) -> Result<(Vec<f32>, Vec<f64>), retnet_model::ModelError> {
    let vocab = cpu.config().vocab_size;
    let gpu = GpuModel::new(device.clone(), cpu, GpuOptions { weights: precision })?;
    let steps = 4;
    let starts: Vec<usize> = [3, 2, 1]
        .iter()
        .map(|d| tokens.len().saturating_sub(steps + 4 * d).max(1))
        .collect();
    let mut batch = GpuBatch::new(&gpu, starts.len())?;
    let mut slots = Vec::new();
    for &start in &starts {
        let mut session = gpu.session()?;
        pollster::block_on(session.prefill(&tokens[..start]))?;
        slots.push(batch.insert(&session)?);
    }
    let (mut got, mut want) = (Vec::new(), Vec::new());
    for step in 0..steps {
        let inputs: Vec<(usize, u32)> = slots
            .iter()
            .zip(&starts)
            .filter_map(|(&slot, &start)| tokens.get(start + step).map(|&t| (slot, t)))
            .collect();
        got.extend(pollster::block_on(batch.step(&inputs))?);
        for &start in &starts {
            let at = (start + step) * vocab;
            if let Some(row) = reference.get(at..at + vocab) {
                want.extend_from_slice(row);
            }
        }
    }
    Ok((got, want))
}
