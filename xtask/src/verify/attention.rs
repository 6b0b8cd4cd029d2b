//! The attention kernels of hybrid checkpoints (`retnet_kernels::attention`) against causal
//! softmax attention in f64: tiled prefill (full, windowed, earlier positions read from the
//! cache ring, grouped kv heads), split decode over long caches, and the q/k/v biases and q/k
//! norms before them (`qkv_prep`).
//!
//! Tolerance 2e-5 of max |ref|: outputs are convex combinations of values whose weights come
//! from f32 dot products of ≤ 128 terms (~1e-6 relative per score) and an online rescaling by
//! f32 exp; measured ≤ 1e-6 on lavapipe (crates/retnet-runtime/tests/attention.rs).

use super::Row;
use retnet_kernels::attention::{
    decode, decode_scratch_len, kv_append, prefill, prefill_coop, prefill_coop_workgroup_bytes,
    qkv_prep, AttentionParams, DecodeBuffers, KvAppendBuffers, KvAppendParams, PrefillBuffers,
    QkvPrepBuffers, QkvPrepParams,
};
use retnet_runtime::Device;
use retnet_testkit::Rng;

const ATTENTION_TOLERANCE: f64 = 2e-5;

#[derive(Clone, Copy)]
struct Case {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
    /// Positions already cached.
    before: usize,
    /// Queries of the checked call (1: split decode).
    queries: usize,
    keys_per_split: usize,
}

impl Case {
    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn ring(&self) -> usize {
        let end = self.before + self.queries;
        match self.window {
            Some(w) => (w - 1 + self.queries).min(end),
            None => end,
        }
    }
    fn shape(&self) -> String {
        format!(
            "H={}/{} D={} {} cached={} T={}",
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.window
                .map_or("full".to_string(), |w| format!("window {w}")),
            self.before,
            self.queries
        )
    }
}

/// f64 attention of the last `queries` positions over `kv` rows `[k (kv_width), v]`.
fn reference(case: &Case, kv: &[f32], q: &[f32], scale: f64) -> Vec<f64> {
    let (d, kvw) = (case.head_dim, case.kv_width());
    let mut out = Vec::with_capacity(case.queries * case.q_width());
    for n in 0..case.queries {
        let p = case.before + n;
        let lo = case.window.map_or(0, |w| (p + 1).saturating_sub(w));
        for h in 0..case.heads {
            let kvh = h / (case.heads / case.kv_heads);
            let qh = q.get(n * case.q_width() + h * d..).unwrap_or(&[]);
            let scores: Vec<f64> = (lo..=p)
                .map(|m| {
                    let k = kv.get(m * 2 * kvw + kvh * d..).unwrap_or(&[]);
                    qh.iter()
                        .zip(k)
                        .take(d)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for j in 0..d {
                let sum: f64 = (lo..=p)
                    .zip(&weights)
                    .map(|(m, w)| {
                        let at = m * 2 * kvw + kvw + kvh * d + j;
                        w * kv.get(at).copied().map_or(f64::NAN, f64::from)
                    })
                    .sum();
                out.push(sum / total);
            }
        }
    }
    out
}

fn run(device: &Device, case: &Case, seed: u64) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let name = if case.queries == 1 && case.before > 0 {
        "attention/decode-split"
    } else {
        "attention/prefill"
    };
    let mut rng = Rng::new(seed);
    let end = case.before + case.queries;
    let kvw = case.kv_width();
    let kv = rng.vec(end * 2 * kvw);
    let q = rng.vec(case.queries * case.q_width());
    let ring = case.ring();
    let scale = 3.0 / (case.head_dim as f32).sqrt();
    let cache = device.create_storage_f32("cache", ring * 2 * kvw)?;
    let src = device.upload_f32("kv", &kv)?;
    let q_buffer = device.upload_f32("q", &q)?;
    let out = device.create_storage_f32("out", case.queries * case.q_width())?;
    let params = AttentionParams {
        queries: case.queries as u32,
        heads: case.heads as u32,
        kv_heads: case.kv_heads as u32,
        head_dim: case.head_dim as u32,
        start_pos: case.before as u32,
        window: case.window.map(|w| w as u32),
        ring: ring as u32,
        scale,
        q_stride: case.q_width() as u32,
        q_offset: 0,
        out_stride: case.q_width() as u32,
        out_offset: 0,
    };
    // The history in spans no longer than the ring, then this call's attention.
    let mut sequence = device.sequence("verify attention");
    let mut at = 0;
    while at < end {
        let span = (end - at).min(ring);
        let append = KvAppendParams {
            tokens: span as u32,
            kv_width: kvw as u32,
            start_pos: at as u32,
            ring: ring as u32,
            k_stride: 2 * kvw as u32,
            k_offset: (at * 2 * kvw) as u32,
            v_stride: 2 * kvw as u32,
            v_offset: (at * 2 * kvw + kvw) as u32,
        };
        let buffers = KvAppendBuffers {
            src: &src,
            cache: &cache,
        };
        sequence.dispatch(kv_append(append, buffers))?;
        at += span;
    }
    let scratch;
    if name == "attention/decode-split" {
        scratch = device.create_storage_f32(
            "partial",
            decode_scratch_len(&params, case.keys_per_split as u32) as usize,
        )?;
        let buffers = DecodeBuffers {
            q: &q_buffer,
            cache: &cache,
            partial: &scratch,
            out: &out,
        };
        let [split, combine] = decode(params, case.keys_per_split as u32, buffers)?;
        sequence.dispatch(split)?;
        sequence.dispatch(combine)?;
    } else {
        let buffers = PrefillBuffers {
            q: &q_buffer,
            cache: &cache,
            out: &out,
        };
        sequence.dispatch(prefill(params, buffers)?)?;
    }
    sequence.submit()?;
    let len = case.queries * case.q_width();
    let gpu = pollster::block_on(device.read_f32(&out, 0, len))?;
    let want = reference(case, &kv, &q, f64::from(scale));
    let mut rows = vec![Row::compare(
        name,
        case.shape(),
        &gpu,
        &want,
        ATTENTION_TOLERANCE,
    )];
    // The tensor-core prefill (hi/lo split f16 operands: held to the same tolerance), on a
    // device with cooperative matrices whose workgroup memory fits the head dim.
    if name == "attention/prefill" {
        let limit = device.limits().max_compute_workgroup_storage_size;
        match device.coop_shape() {
            Some(shape) if prefill_coop_workgroup_bytes(shape, params.head_dim) <= limit => {
                let buffers = PrefillBuffers {
                    q: &q_buffer,
                    cache: &cache,
                    out: &out,
                };
                device.clear(&out);
                let mut sequence = device.sequence("verify attention on tensor cores");
                sequence.dispatch(prefill_coop(shape, params, buffers)?)?;
                sequence.submit()?;
                let gpu = pollster::block_on(device.read_f32(&out, 0, len))?;
                rows.push(Row::compare(
                    prefill_coop_kernel_name(shape),
                    case.shape(),
                    &gpu,
                    &want,
                    ATTENTION_TOLERANCE,
                ));
            }
            Some(shape) => rows.push(Row::skip(
                prefill_coop_kernel_name(shape),
                case.shape(),
                "its workgroup memory is over the adapter's",
            )),
            None => rows.push(Row::skip(
                "attention/prefill-coop",
                case.shape(),
                "adapter lacks f16 cooperative matrices",
            )),
        }
    }
    Ok(rows)
}

fn prefill_coop_kernel_name(shape: retnet_kernels::gemm_coop::CoopShape) -> String {
    format!("attention/prefill-coop/{0}x{0}", shape.tile.side())
}

/// The attention rows (`quick`: a representative subset).
pub fn rows(device: &Device, quick: bool) -> Vec<Row> {
    let case = |heads, kv_heads, head_dim, window, before, queries, keys_per_split| Case {
        heads,
        kv_heads,
        head_dim,
        window,
        before,
        queries,
        keys_per_split,
    };
    let mut cases = vec![
        case(4, 2, 16, None, 0, 70, 0),
        case(4, 4, 8, Some(7), 30, 50, 0),
        case(2, 1, 64, None, 1000, 1, 256),
        case(4, 2, 8, Some(128), 3000, 1, 64),
    ];
    if !quick {
        cases.extend([
            case(3, 1, 40, Some(33), 100, 129, 0),
            case(2, 2, 128, None, 17, 64, 0),
            case(8, 1, 72, None, 20_000, 1, 1024),
            case(2, 2, 256, Some(512), 5000, 1, 128),
        ]);
    }
    let mut rows: Vec<Row> = cases
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            run(device, c, 700 + i as u64).unwrap_or_else(|e| {
                vec![Row::fail(
                    "attention",
                    c.shape(),
                    format!("runtime error: {e}"),
                )]
            })
        })
        .collect();
    let mut prep = vec![(4, 2, 8, true, true), (3, 1, 72, false, true)];
    if !quick {
        prep.extend([(2, 2, 130, true, false), (16, 8, 128, true, true)]);
    }
    for (i, (heads, kv_heads, dim, bias, norm)) in prep.into_iter().enumerate() {
        let shape = format!("H={heads}/{kv_heads} D={dim} bias={bias} norm={norm}");
        rows.push(
            run_prep(device, (heads, kv_heads, dim), bias, norm, 800 + i as u64).unwrap_or_else(
                |e| Row::fail("attention/qkv-prep", shape, format!("runtime error: {e}")),
            ),
        );
    }
    rows
}

/// `qkv_prep` (biases added, query and key heads RMS-normed) against f64, on 7 rows with a
/// row stride wider than the heads. Tolerance 1e-6: one f32 add and an f32 sum of ≤ 130
/// squares per head.
fn run_prep(
    device: &Device,
    (heads, kv_heads, dim): (usize, usize, usize),
    bias: bool,
    norm: bool,
    seed: u64,
) -> Result<Row, Box<dyn std::error::Error>> {
    let mut rng = Rng::new(seed);
    let rows = 7;
    let slots = heads + 2 * kv_heads;
    let stride = slots * dim + 3;
    let x: Vec<f32> = rng.vec(rows * stride).iter().map(|v| 4.0 * v).collect();
    let b = rng.vec(slots * dim);
    let w: Vec<f32> = rng.vec(2 * dim).iter().map(|v| 1.0 + v).collect();
    let eps = 1e-5f32;
    let x_buffer = device.upload_f32("x", &x)?;
    let b_buffer = device.upload_f32("bias", &b)?;
    let w_buffer = device.upload_f32("norm", &w)?;
    let params = QkvPrepParams {
        rows: rows as u32,
        row_stride: stride as u32,
        heads: heads as u32,
        kv_heads: kv_heads as u32,
        head_dim: dim as u32,
        bias,
        norm_eps: norm.then_some(eps),
    };
    let buffers = QkvPrepBuffers {
        x: &x_buffer,
        bias: &b_buffer,
        norm: &w_buffer,
    };
    let mut sequence = device.sequence("verify qkv prep");
    sequence.dispatch(qkv_prep(params, buffers))?;
    sequence.submit()?;
    let gpu = pollster::block_on(device.read_f32(&x_buffer, 0, rows * stride))?;
    let mut want: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    for row in want.chunks_exact_mut(stride) {
        for slot in 0..slots {
            let head = row
                .get_mut(slot * dim..(slot + 1) * dim)
                .unwrap_or_default();
            if bias {
                for (e, be) in head.iter_mut().zip(b.iter().skip(slot * dim)) {
                    *e += f64::from(*be);
                }
            }
            if norm && slot < heads + kv_heads {
                let weight = w.iter().skip(if slot < heads { 0 } else { dim });
                let mean_sq = head.iter().map(|e| e * e).sum::<f64>() / dim as f64;
                let inv = 1.0 / (mean_sq + f64::from(eps)).sqrt();
                for (e, we) in head.iter_mut().zip(weight) {
                    *e *= inv * f64::from(*we);
                }
            }
        }
    }
    Ok(Row::compare(
        "attention/qkv-prep",
        format!("H={heads}/{kv_heads} D={dim} bias={bias} norm={norm}"),
        &gpu,
        &want,
        1e-6,
    ))
}
