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

// cos and sin of position·θ. The angle is rounded to f32 exactly as PyTorch does
// (f32(position) * θ), then reduced to [-π, π] here: GPU sin/cos are only accurate near zero
// (Vulkan allows 2^-11 absolute error within [-π, π] and says nothing beyond), while positions in
// the thousands give angles in the thousands of radians. Cody–Waite with 2π split in three parts.
// TWO_PI_HI has 8 significant bits, so k·TWO_PI_HI is exact only for k < 2^16 (angles below
// 411,774: position 411,774 at θ = 1): k is split into k_high (a multiple of 256, < 2^24) and
// k_low (< 256), each of whose products with TWO_PI_HI is exact, so the reduction stays exact to
// a million positions and beyond (found by `cargo xtask long-context`).
fn rotation(position: u32, theta_i: f32) -> vec2<f32> {
    const TWO_PI_HI: f32 = 6.28125;
    const TWO_PI_MID: f32 = 1.93530717e-3;
    const TWO_PI_LO: f32 = 1.0253132e-11;
    let angle = f32(position) * theta_i;
    let k = round(angle * 0.15915494);
    // Through a condition the compiler cannot decide, so that it cannot fold
    // k_high·HI + k_low·HI back into k·HI.
    let k_low = select(k - 256.0 * floor(k / 256.0), 0.0, params.tokens == 0xffffffffu);
    let k_high = k - k_low;
    let reduced = (((angle - k_high * TWO_PI_HI) - k_low * TWO_PI_HI) - k * TWO_PI_MID) - k * TWO_PI_LO;
    return vec2<f32>(cos(reduced), sin(reduced));
}

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
