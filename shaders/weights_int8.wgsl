// Weight access, int8 blocks (crates/retnet-kernels/src/quant.rs, docs/weight-formats.md): each
// row is cut into blocks of 32 values along the input dimension; a block is 9 u32 words, the f32
// scale, then 32 signed bytes (element j in byte j % 4 of word 1 + j / 4); w = q · scale. The
// kernels index a row with the weight stride (the row length rounded up to a whole block), so
// element i is in block i / 32. Core WGSL: bit shifts, no `shader-f16`.

@group(0) @binding(1) var<storage, read> weight: array<u32>;

const BLOCK_WORDS: u32 = 9u;

/// Weight element `i` (row-major index with the weight stride), decoded to f32.
fn weight_at(i: u32) -> f32 {
    let base = (i >> 5u) * BLOCK_WORDS;
    let word = weight[base + 1u + ((i & 31u) >> 2u)];
    // The byte moved to the top, then an arithmetic shift: sign-extended.
    let code = bitcast<i32>(word << (24u - 8u * (i & 3u))) >> 24u;
    return f32(code) * bitcast<f32>(weight[base]);
}

/// Weight elements 4·i4 .. 4·i4+3 (one word of one block), decoded to f32.
fn weight_vec4(i4: u32) -> vec4<f32> {
    let base = (i4 >> 3u) * BLOCK_WORDS;
    let word = weight[base + 1u + (i4 & 7u)];
    let codes = bitcast<vec4<i32>>(vec4<u32>(word) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
    return vec4<f32>(codes) * bitcast<f32>(weight[base]);
}
