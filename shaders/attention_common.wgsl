// Causal softmax attention against a key/value cache (hybrid checkpoints' attention layers),
// in the flash-attention manner: keys and values stream through workgroup memory in tiles,
// each query keeps a running maximum, sum and weighted value sum (online softmax), and no
// T×T score matrix exists anywhere.
//
// The cache holds one slot per cached position m, at slot m % ring: keys of all kv heads
// (kv_heads·head_dim), then their values. Full attention uses a ring larger than any position
// (slot = m); a window w uses a ring of at least w − 1 + (queries per call) slots, so that every
// key a query of this call can see is still there. The caller writes this call's keys and
// values into the cache first (attention_kv_append.wgsl).
//
// Query n (absolute position p = start_pos + n) of head h sees the keys m with
// lo(p) ≤ m ≤ p, lo(p) = 0 (full) or max(0, p − w + 1) (window w), of kv head
// h / (heads / kv_heads), with scores q·k·scale.

struct AttentionParams {
    queries: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    start_pos: u32,
    // 0: full attention; else the window w.
    window: u32,
    // Slots of the cache ring (slot of position m = m % ring).
    ring: u32,
    scale: f32,
    // Query n, head h, dim d is at q_offset + n·q_stride + h·head_dim + d; likewise the output.
    q_stride: u32,
    q_offset: u32,
    out_stride: u32,
    out_offset: u32,
    // Split decode: keys per split and the number of splits.
    keys_per_split: u32,
    splits: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: AttentionParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// Split decode: per (head, split) the running maximum, the sum and head_dim weighted sums.
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;

// One query per invocation in the prefill kernel; also the decode kernels' width.
const WG: u32 = 64u;
// The largest head dim (private accumulators of the prefill kernel).
const MAX_HEAD_DIM: u32 = 256u;
// Workgroup memory for one tile of keys and one of values: TILE_VALUES f32 each (16 KiB
// together, WebGPU's default limit).
const TILE_VALUES: u32 = 2048u;
// Below every score: the running maximum before the first key (WGSL has no guaranteed -inf).
const NO_MAX: f32 = -3.0e38;

fn first_key(position: u32) -> u32 {
    if (params.window == 0u || position + 1u < params.window) {
        return 0u;
    }
    return position + 1u - params.window;
}

fn key_at(m: u32, kv_head: u32, d: u32) -> u32 {
    let kv_width = params.kv_heads * params.head_dim;
    return (m % params.ring) * 2u * kv_width + kv_head * params.head_dim + d;
}

