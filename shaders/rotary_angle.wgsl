// The rotary angle of one pair at one position, shared by rotary.wgsl and the recurrent retention
// kernels that rotate q and k as they read them (retention_qk_rotary.wgsl). Needs a uniform
// `params` with a `tokens` member (the condition that keeps the reduction from being folded).

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
