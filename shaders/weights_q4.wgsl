// Weight access, q4 blocks (crates/retnet-kernels/src/quant.rs, docs/weight-formats.md): each row
// is cut into blocks of 32 values along the input dimension; a block is 5 u32 words, the f16 step
// d (low half) and f16 minimum m (high half), then 32 nibbles (element j in bits 4·(j % 8) of
// word 1 + j / 8); w = q · d + m. q · d is exact in f32, so fused or not the result is rounded
// once, as on the CPU. Element i is in block i / 32 (the kernels' weight stride is whole blocks).
// Core WGSL: `unpack2x16float` and bit operations, no `shader-f16`.

@group(0) @binding(1) var<storage, read> weight: array<u32>;

const BLOCK_WORDS: u32 = 5u;

/// Weight element `i` (row-major index with the weight stride), decoded to f32.
fn weight_at(i: u32) -> f32 {
    let base = (i >> 5u) * BLOCK_WORDS;
    let step_min = unpack2x16float(weight[base]);
    let j = i & 31u;
    let code = (weight[base + 1u + (j >> 3u)] >> (4u * (j & 7u))) & 15u;
    return fma(f32(code), step_min.x, step_min.y);
}

/// Weight elements 4·i4 .. 4·i4+3 (half a word of one block), decoded to f32.
fn weight_vec4(i4: u32) -> vec4<f32> {
    let base = (i4 >> 3u) * BLOCK_WORDS;
    let step_min = unpack2x16float(weight[base]);
    let j = i4 & 7u;
    let half_word = weight[base + 1u + (j >> 1u)] >> (16u * (j & 1u));
    let codes = (vec4<u32>(half_word) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u);
    return fma(vec4<f32>(codes), vec4<f32>(step_min.x), vec4<f32>(step_min.y));
}
