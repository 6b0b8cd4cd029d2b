//! Attention kernels (hybrid checkpoints' softmax-attention layers) against causal softmax
//! attention computed in f64: the tiled prefill (full and windowed, with earlier positions in
//! the cache ring, grouped kv heads, head dims that are not powers of two), the split decode
//! over a long cache, the cache append, and the q/k/v biases and q/k norms before them.
//!
//! Tolerance 2e-5 relative to the largest |reference| output: each output is a convex
//! combination of values, with weights from f32 dot products of ≤ 128 terms (~1e-6 relative
//! error in each score, which perturbs a weight by the same relative amount) and an online
//! rescaling by f32 exp (≤ a few ulp per step).
// Test code: clippy.toml allows these in #[test] functions; the helpers here are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{assert_close, device, read, Rng};
use retnet_runtime::kernels::attention::{
    decode, decode_scratch_len, kv_append, prefill, AttentionParams, DecodeBuffers,
    KvAppendBuffers, KvAppendParams, PrefillBuffers, QkvPrepBuffers, QkvPrepParams,
};
use retnet_runtime::kernels::attention::{prefill_coop, prefill_coop_workgroup_bytes, qkv_prep};
use retnet_runtime::kernels::gemm_coop::CoopShape;
use retnet_runtime::{Device, GpuBuffer};

const TOLERANCE: f64 = 2e-5;

#[derive(Clone, Copy, Debug)]
struct Shape {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
}

impl Shape {
    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn scale(&self) -> f32 {
        // Peakier than head_dim^-½ so that the softmax is far from uniform.
        3.0 / (self.head_dim as f32).sqrt()
    }
}

/// Keys and values of every position (absolute), as rows `[k (kv_width), 1 pad, v, 2 pads]`.
struct History {
    rows: Vec<f32>,
    stride: usize,
}

impl History {
    fn new(shape: &Shape, positions: usize, rng: &mut Rng) -> Self {
        let stride = 2 * shape.kv_width() + 3;
        Self {
            rows: rng.vec(positions * stride),
            stride,
        }
    }
    fn key(&self, shape: &Shape, m: usize, kv_head: usize) -> &[f32] {
        &self.rows[m * self.stride + kv_head * shape.head_dim..][..shape.head_dim]
    }
    fn value(&self, shape: &Shape, m: usize, kv_head: usize) -> &[f32] {
        &self.rows[m * self.stride + shape.kv_width() + 1 + kv_head * shape.head_dim..]
            [..shape.head_dim]
    }
}

/// f64 causal softmax attention of queries at positions `start..start + count` (rows of
/// `q_width` values, row n at n·q_stride + 2) over the history.
fn reference(
    shape: &Shape,
    history: &History,
    q: &[f32],
    q_stride: usize,
    start: usize,
    count: usize,
) -> Vec<f64> {
    let d = shape.head_dim;
    let mut out = Vec::with_capacity(count * shape.q_width());
    for n in 0..count {
        let p = start + n;
        let lo = shape.window.map_or(0, |w| (p + 1).saturating_sub(w));
        for h in 0..shape.heads {
            let kvh = h / (shape.heads / shape.kv_heads);
            let qh = &q[n * q_stride + 2 + h * d..][..d];
            let scores: Vec<f64> = (lo..=p)
                .map(|m| {
                    let k = history.key(shape, m, kvh);
                    qh.iter()
                        .zip(k)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * shape.scale() as f64
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for j in 0..d {
                let sum: f64 = (lo..=p)
                    .zip(&weights)
                    .map(|(m, w)| w * history.value(shape, m, kvh)[j] as f64)
                    .sum();
                out.push(sum / total);
            }
        }
    }
    out
}

fn params(
    shape: &Shape,
    start: usize,
    queries: usize,
    ring: usize,
    q_stride: usize,
) -> AttentionParams {
    AttentionParams {
        queries: queries as u32,
        heads: shape.heads as u32,
        kv_heads: shape.kv_heads as u32,
        head_dim: shape.head_dim as u32,
        start_pos: start as u32,
        window: shape.window.map(|w| w as u32),
        ring: ring as u32,
        scale: shape.scale(),
        q_stride: q_stride as u32,
        q_offset: 2,
        out_stride: shape.q_width() as u32,
        out_offset: 0,
    }
}

/// Appends positions `start..start + count` of the history into the cache ring.
fn append(
    device: &Device,
    shape: &Shape,
    history: &History,
    cache: &GpuBuffer,
    start: usize,
    count: usize,
    ring: usize,
) {
    let src = device
        .upload_f32(
            "kv rows",
            &history.rows[start * history.stride..][..count * history.stride],
        )
        .unwrap();
    let mut sequence = device.sequence("kv append");
    let params = KvAppendParams {
        tokens: count as u32,
        kv_width: shape.kv_width() as u32,
        start_pos: start as u32,
        ring: ring as u32,
        k_stride: history.stride as u32,
        k_offset: 0,
        v_stride: history.stride as u32,
        v_offset: shape.kv_width() as u32 + 1,
    };
    let buffers = KvAppendBuffers { src: &src, cache };
    sequence.dispatch(kv_append(params, buffers)).unwrap();
    sequence.submit().unwrap();
}

/// The device's cooperative-matrix shape, if it has one and the tensor-core prefill's workgroup
/// memory for `head_dim` fits. `RETNET_REQUIRE_COOP=1` (CI's lavapipe 26) fails the test
/// without one.
fn coop_shape(device: &Device, head_dim: usize) -> Option<CoopShape> {
    let shape = device.coop_shape();
    if std::env::var("RETNET_REQUIRE_COOP").is_ok_and(|v| v == "1") {
        assert!(
            shape.is_some(),
            "RETNET_REQUIRE_COOP=1 but the adapter has no coop matrices"
        );
    }
    let limit = device.limits().max_compute_workgroup_storage_size;
    shape.filter(|&s| prefill_coop_workgroup_bytes(s, head_dim as u32) <= limit)
}

/// Prefills positions 0..before in one call, then `count` more in a second call (so that the
/// second call reads earlier positions from the ring), and checks the second call's outputs.
fn check_prefill(device: &Device, shape: Shape, before: usize, count: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let history = History::new(&shape, before + count, &mut rng);
    let ring = match shape.window {
        Some(w) => w - 1 + count.max(before),
        None => before + count,
    };
    let cache = device
        .create_storage_f32("cache", ring * 2 * shape.kv_width())
        .unwrap();
    let q_stride = shape.q_width() + 5;
    let out = device
        .create_storage_f32("out", count.max(before) * shape.q_width())
        .unwrap();
    for (start, span) in [(0, before), (before, count)] {
        if span == 0 {
            continue;
        }
        let q = rng.vec(span * q_stride);
        let q_buffer = device.upload_f32("q", &q).unwrap();
        append(device, &shape, &history, &cache, start, span, ring);
        let mut sequence = device.sequence("attention");
        let buffers = PrefillBuffers {
            q: &q_buffer,
            cache: &cache,
            out: &out,
        };
        let p = params(&shape, start, span, ring, q_stride);
        sequence.dispatch(prefill(p, buffers).unwrap()).unwrap();
        sequence.submit().unwrap();
        let got = read(device, &out, span * shape.q_width());
        let want = reference(&shape, &history, &q, q_stride, start, span);
        assert_close(
            &format!("prefill {shape:?} positions {start}..{}", start + span),
            &got,
            &want,
            TOLERANCE,
        );
        // The tensor-core variant, where the device has cooperative matrices: the same
        // tolerance (its hi/lo split operands keep f32 accuracy).
        if let Some(coop) = coop_shape(device, shape.head_dim) {
            device.clear(&out);
            let buffers = PrefillBuffers {
                q: &q_buffer,
                cache: &cache,
                out: &out,
            };
            let mut sequence = device.sequence("attention on tensor cores");
            sequence
                .dispatch(prefill_coop(coop, p, buffers).unwrap())
                .unwrap();
            sequence.submit().unwrap();
            let got = read(device, &out, span * shape.q_width());
            assert_close(
                &format!("prefill-coop {shape:?} positions {start}..{}", start + span),
                &got,
                &want,
                TOLERANCE,
            );
        }
    }
}

#[test]
fn prefill_full_and_windowed_with_grouped_heads() {
    let Some(device) = device() else { return };
    let shapes = [
        Shape {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            window: None,
        },
        Shape {
            heads: 3,
            kv_heads: 1,
            head_dim: 40,
            window: None,
        },
        Shape {
            heads: 4,
            kv_heads: 4,
            head_dim: 16,
            window: Some(7),
        },
        Shape {
            heads: 6,
            kv_heads: 2,
            head_dim: 12,
            window: Some(70),
        },
        Shape {
            heads: 2,
            kv_heads: 1,
            head_dim: 128,
            window: Some(33),
        },
    ];
    for (i, shape) in shapes.into_iter().enumerate() {
        // Spans of more than 64 queries (two query tiles), keys over several key tiles.
        check_prefill(device, shape, 37, 90, 11 + i as u64);
        check_prefill(device, shape, 0, 5, 21 + i as u64);
    }
}

#[test]
fn split_decode_over_a_long_cache() {
    let Some(device) = device() else { return };
    for (i, (shape, position, keys_per_split)) in [
        (
            Shape {
                heads: 4,
                kv_heads: 2,
                head_dim: 16,
                window: None,
            },
            3000,
            256,
        ),
        (
            Shape {
                heads: 2,
                kv_heads: 2,
                head_dim: 72,
                window: None,
            },
            700,
            100,
        ),
        (
            Shape {
                heads: 4,
                kv_heads: 1,
                head_dim: 8,
                window: Some(300),
            },
            2500,
            64,
        ),
        (
            Shape {
                heads: 2,
                kv_heads: 2,
                head_dim: 8,
                window: None,
            },
            0,
            256,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut rng = Rng::new(50 + i as u64);
        let history = History::new(&shape, position + 1, &mut rng);
        let ring = shape.window.unwrap_or(position + 1);
        let cache = device
            .create_storage_f32("cache", ring * 2 * shape.kv_width())
            .unwrap();
        // The history in spans, as decode would have left it (the last position included).
        let mut at = 0;
        while at <= position {
            let span = (position + 1 - at).min(ring);
            append(device, &shape, &history, &cache, at, span, ring);
            at += span;
        }
        let q_stride = shape.q_width() + 5;
        let q = rng.vec(q_stride);
        let q_buffer = device.upload_f32("q", &q).unwrap();
        let p = params(&shape, position, 1, ring, q_stride);
        let scratch = device
            .create_storage_f32("partial", decode_scratch_len(&p, keys_per_split) as usize)
            .unwrap();
        let out = device.create_storage_f32("out", shape.q_width()).unwrap();
        let buffers = DecodeBuffers {
            q: &q_buffer,
            cache: &cache,
            partial: &scratch,
            out: &out,
        };
        let [split, combine] = decode(p, keys_per_split, buffers).unwrap();
        let mut sequence = device.sequence("decode");
        sequence.dispatch(split).unwrap();
        sequence.dispatch(combine).unwrap();
        sequence.submit().unwrap();
        let got = read(device, &out, shape.q_width());
        let want = reference(&shape, &history, &q, q_stride, position, 1);
        assert_close(
            &format!("decode {shape:?} at {position}, {keys_per_split} keys per split"),
            &got,
            &want,
            TOLERANCE,
        );
    }
}

/// Shape checks only: the kernels refuse before touching any buffer.
fn prefill_of(p: AttentionParams) -> Result<(), String> {
    let buffers = PrefillBuffers {
        q: &(),
        cache: &(),
        out: &(),
    };
    prefill(p, buffers).map(drop).map_err(|e| e.to_string())
}

fn decode_of(p: AttentionParams, keys_per_split: u32) -> Result<(), String> {
    let buffers = DecodeBuffers {
        q: &(),
        cache: &(),
        partial: &(),
        out: &(),
    };
    decode(p, keys_per_split, buffers)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[test]
fn shapes_the_kernels_cannot_run_are_refused() {
    let shape = Shape {
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        window: Some(8),
    };
    assert!(prefill_of(params(&shape, 10, 4, 11, 40)).is_ok());
    assert!(
        prefill_of(params(&shape, 10, 4, 10, 40)).is_err(),
        "ring below w - 1 + queries"
    );
    let full = Shape {
        window: None,
        ..shape
    };
    assert!(
        prefill_of(params(&full, 10, 4, 13, 40)).is_err(),
        "ring below the positions"
    );
    let odd = Shape {
        kv_heads: 3,
        ..shape
    };
    assert!(prefill_of(params(&odd, 0, 1, 8, 40)).is_err());
    let wide = Shape {
        head_dim: 512,
        ..shape
    };
    assert!(prefill_of(params(&wide, 0, 1, 8, 4096)).is_err());
    assert!(decode_of(params(&wide, 0, 1, 8, 4096), 64).is_ok());
    assert!(
        decode_of(params(&shape, 0, 2, 9, 40), 64).is_err(),
        "decode takes one query"
    );
}

/// f64 of what `qkv_prep` computes: biases added to q, k and v, then each query and key head
/// RMS-normed over its values times its weight.
fn qkv_prep_reference(
    x: &[f32],
    stride: usize,
    (heads, kv_heads, dim): (usize, usize, usize),
    bias: Option<&[f32]>,
    norm: Option<(&[f32], f32)>,
) -> Vec<f64> {
    let slots = heads + 2 * kv_heads;
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for row in out.chunks_exact_mut(stride) {
        for slot in 0..slots {
            let head = &mut row[slot * dim..][..dim];
            if let Some(b) = bias {
                for (e, &be) in head.iter_mut().zip(&b[slot * dim..]) {
                    *e += be as f64;
                }
            }
            if let Some((w, eps)) = norm {
                if slot < heads + kv_heads {
                    let w = &w[if slot < heads { 0 } else { dim }..][..dim];
                    let mean_sq = head.iter().map(|e| e * e).sum::<f64>() / dim as f64;
                    let inv = 1.0 / (mean_sq + eps as f64).sqrt();
                    for (e, &we) in head.iter_mut().zip(w) {
                        *e *= inv * we as f64;
                    }
                }
            }
        }
    }
    out
}

#[test]
fn qkv_prep_adds_biases_and_norms_query_and_key_heads() {
    let Some(device) = device() else { return };
    // (heads, kv_heads, head_dim): head dims below, at and above the workgroup width.
    for (i, (heads, kv_heads, dim)) in [(4, 2, 8), (3, 1, 72), (2, 2, 130)].into_iter().enumerate()
    {
        for (bias, norm) in [(true, false), (false, true), (true, true)] {
            let mut rng = Rng::new(90 + i as u64);
            let rows = 5;
            let width = (heads + 2 * kv_heads) * dim;
            let stride = width + 3;
            let x = rng.vec(rows * stride);
            let b = rng.vec(width);
            // Norm weights away from zero, and rows scaled so the norm matters.
            let w: Vec<f32> = rng.vec(2 * dim).iter().map(|v| 1.0 + v).collect();
            let x: Vec<f32> = x.iter().map(|v| 4.0 * v).collect();
            let eps = 1e-5;
            let x_buffer = device.upload_f32("x", &x).unwrap();
            let b_buffer = device.upload_f32("bias", &b).unwrap();
            let w_buffer = device.upload_f32("norm", &w).unwrap();
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
            let mut sequence = device.sequence("qkv prep");
            sequence.dispatch(qkv_prep(params, buffers)).unwrap();
            sequence.submit().unwrap();
            let got = read(device, &x_buffer, rows * stride);
            let want = qkv_prep_reference(
                &x,
                stride,
                (heads, kv_heads, dim),
                bias.then_some(&b[..]),
                norm.then_some((&w[..], eps)),
            );
            // f32 sums of ≤ 130 squares and one bias add: a few ulp.
            assert_close(
                &format!("qkv prep H={heads}/{kv_heads} D={dim} bias={bias} norm={norm}"),
                &got,
                &want,
                1e-6,
            );
        }
    }
}
