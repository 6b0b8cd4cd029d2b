// The q|k|v rows of an attention layer (hybrid checkpoints) between their projection and rotary:
// the biases added (`qkv_bias`), then each query and key head RMS-normalized over its head_dim
// values times its weight (`qk_norm`; value heads are not normed), as fla.layers.attn.Attention
// does before rotary. One workgroup per (head slot, row): head slots 0..heads are the query
// heads, then kv_heads key heads, then kv_heads value heads, head_dim columns each and
// contiguous in the row (q at column 0, k at heads·head_dim, v after the keys).

struct QkvPrepParams {
    rows: u32,
    // Elements between consecutive rows.
    row_stride: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    // 1: add bias[slot·head_dim + d] (one bias vector q|k|v, `(heads + 2·kv_heads)·head_dim`).
    has_bias: u32,
    // 1: norm the query heads with norm[d] and the key heads with norm[head_dim + d].
    has_norm: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> params: QkvPrepParams;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> norm: array<f32>;

// Must be a power of two (tree reduction).
override WORKGROUP_SIZE: u32 = 64u;

var<workgroup> partial_sums: array<f32, WORKGROUP_SIZE>;

// Grid: (heads + 2·kv_heads, rows).
@compute @workgroup_size(WORKGROUP_SIZE)
fn attention_qkv_prep(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let slot = wid.x;
    let row = wid.y;
    let dim = params.head_dim;
    let start = row * params.row_stride + slot * dim;
    if params.has_bias != 0u {
        for (var d = lane; d < dim; d += WORKGROUP_SIZE) {
            x[start + d] += bias[slot * dim + d];
        }
    }
    // Uniform per workgroup: the whole workgroup takes the same branch, so the barriers below
    // are reached by every invocation.
    let normed = params.has_norm != 0u && slot < params.heads + params.kv_heads;
    if !normed {
        return;
    }
    var sum = 0.0;
    for (var d = lane; d < dim; d += WORKGROUP_SIZE) {
        let v = x[start + d];
        sum += v * v;
    }
    partial_sums[lane] = sum;
    workgroupBarrier();
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride >>= 1u) {
        if lane < stride {
            partial_sums[lane] += partial_sums[lane + stride];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(partial_sums[0] / f32(dim) + params.eps);
    let weight_start = select(dim, 0u, slot < params.heads);
    for (var d = lane; d < dim; d += WORKGROUP_SIZE) {
        x[start + d] = x[start + d] * inv * norm[weight_start + d];
    }
}
