// Weight access, f32 weights. Prepended to every kernel that reads a weight matrix, so that the
// kernel body is written once for all weight formats (see weights_f16.wgsl, weights_f16_packed.wgsl).
// The buffer is bound as vec4 so that `weight_vec4` is one 16-byte load; the runtime pads every
// buffer to a multiple of 16 bytes.

@group(0) @binding(1) var<storage, read> weight: array<vec4<f32>>;

/// Weight element `i` (row-major index into the whole matrix).
fn weight_at(i: u32) -> f32 {
    return weight[i >> 2u][i & 3u];
}

/// Weight elements 4·i4 .. 4·i4+3.
fn weight_vec4(i4: u32) -> vec4<f32> {
    return weight[i4];
}
