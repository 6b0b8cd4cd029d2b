// Rotary position embedding, in place, on a head-major column range of a row-strided buffer
// (so it can rotate q or k inside a fused q|k|v|g projection output), then a scale
// (K^-½ on q for fla, on k for torchscale: scaling commutes with the rotation).
// Token t has absolute position start_pos + t; pair i turns by position·theta[i].

struct RotaryParams {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    start_pos: u32,
    // Elements between consecutive tokens, and the first element of head 0 of token 0.
    row_stride: u32,
    col_offset: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: RotaryParams;
@group(0) @binding(1) var<storage, read> theta: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

override WORKGROUP_SIZE: u32 = 64u;

fn rotate(first: u32, second: u32, position: u32, pair: u32) {
    let cs = rotation(position, theta[pair]);
    let a = x[first];
    let b = x[second];
    x[first] = (a * cs.x - b * cs.y) * params.scale;
    x[second] = (b * cs.x + a * cs.y) * params.scale;
}

// torchscale: pairs (2i, 2i+1). Grid: (ceil(heads·head_dim/2 / WORKGROUP_SIZE), tokens).
@compute @workgroup_size(WORKGROUP_SIZE)
fn rotary_interleaved(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half_dim = params.head_dim / 2u;
    let head = gid.x / half_dim;
    let pair = gid.x % half_dim;
    let token = gid.y;
    if head >= params.heads || token >= params.tokens {
        return;
    }
    let base = token * params.row_stride + params.col_offset + head * params.head_dim;
    rotate(base + 2u * pair, base + 2u * pair + 1u, params.start_pos + token, pair);
}

// fla / NeoX: halves (i, i + K/2). Grid: (ceil(heads·head_dim/2 / WORKGROUP_SIZE), tokens).
@compute @workgroup_size(WORKGROUP_SIZE)
fn rotary_halves(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half_dim = params.head_dim / 2u;
    let head = gid.x / half_dim;
    let pair = gid.x % half_dim;
    let token = gid.y;
    if head >= params.heads || token >= params.tokens {
        return;
    }
    let base = token * params.row_stride + params.col_offset + head * params.head_dim;
    rotate(base + pair, base + half_dim + pair, params.start_pos + token, pair);
}

// Batched decode: row `token` is one token of its own sequence, at absolute position
// positions[token] (start_pos is not used). Used only by the *_batched entry points.
@group(0) @binding(3) var<storage, read> positions: array<u32>;

// torchscale pairs, per-row positions. Grid: (ceil(heads·head_dim/2 / WORKGROUP_SIZE), rows).
@compute @workgroup_size(WORKGROUP_SIZE)
fn rotary_interleaved_batched(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half_dim = params.head_dim / 2u;
    let head = gid.x / half_dim;
    let pair = gid.x % half_dim;
    let token = gid.y;
    if head >= params.heads || token >= params.tokens {
        return;
    }
    let base = token * params.row_stride + params.col_offset + head * params.head_dim;
    rotate(base + 2u * pair, base + 2u * pair + 1u, positions[token], pair);
}

// fla / NeoX halves, per-row positions. Grid: (ceil(heads·head_dim/2 / WORKGROUP_SIZE), rows).
@compute @workgroup_size(WORKGROUP_SIZE)
fn rotary_halves_batched(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half_dim = params.head_dim / 2u;
    let head = gid.x / half_dim;
    let pair = gid.x % half_dim;
    let token = gid.y;
    if head >= params.heads || token >= params.tokens {
        return;
    }
    let base = token * params.row_stride + params.col_offset + head * params.head_dim;
    rotate(base + pair, base + half_dim + pair, positions[token], pair);
}
