// The f16 hi/lo split of the tensor-core kernels that keep f32 accuracy (joined before
// attention_prefill_coop.wgsl, retention_chunk_outputs_coop.wgsl and
// retention_chunk_updates_coop.wgsl): a product of split operands is summed as
// hi·hi + hi·lo + lo·hi in f32.

const F16_MAX: f32 = 65504.0;

// x (clamped to f16's range) as hi + lo, both f16: hi is x with its mantissa cut to f16's 10
// bits (exact in f16 in its normal range), lo = x − hi exactly, then rounded to f16 (11 more
// bits). Cut by masking the bits, not by converting: a compiler may fold f32(f16(x)) back to x
// (Mesa's does) and unpack(pack(x)) too (NVIDIA's did: its 16×16 rows came out at f16's
// precision), either of which makes every lo part zero.
fn split(x: f32) -> vec2<f16> {
    let c = clamp(x, -F16_MAX, F16_MAX);
    let hi = bitcast<f32>(bitcast<u32>(c) & 0xffffe000u);
    return vec2<f16>(f16(hi), f16(c - hi));
}
