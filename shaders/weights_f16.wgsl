// Weight access, f16 weights read natively (needs the `shader-f16` feature; the kernel source is
// preceded by `enable f16;`). Same byte layout as weights_f16_packed.wgsl: the runtime uploads
// one buffer of IEEE halves and either variant can read it.

@group(0) @binding(1) var<storage, read> weight: array<vec4<f16>>;

/// Weight element `i` (row-major index into the whole matrix), widened to f32.
fn weight_at(i: u32) -> f32 {
    return f32(weight[i >> 2u][i & 3u]);
}

/// Weight elements 4·i4 .. 4·i4+3, widened to f32.
fn weight_vec4(i4: u32) -> vec4<f32> {
    return vec4<f32>(weight[i4]);
}
