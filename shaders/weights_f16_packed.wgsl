// Weight access, f16 weights packed two per u32 (element 2j in the low half), for adapters without
// `shader-f16`. `unpack2x16float` is core WGSL, so this runs everywhere.

@group(0) @binding(1) var<storage, read> weight: array<vec2<u32>>;

/// Weight element `i` (row-major index into the whole matrix), widened to f32.
fn weight_at(i: u32) -> f32 {
    let word = weight[i >> 2u][(i >> 1u) & 1u];
    return unpack2x16float(word)[i & 1u];
}

/// Weight elements 4·i4 .. 4·i4+3, widened to f32.
fn weight_vec4(i4: u32) -> vec4<f32> {
    let words = weight[i4];
    return vec4<f32>(unpack2x16float(words.x), unpack2x16float(words.y));
}
