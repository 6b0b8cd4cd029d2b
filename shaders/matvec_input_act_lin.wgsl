// The FFN's gating computed as the down projection reads its input (decode): X holds the act|lin
// projection, [rows, 2·in_dim], a = columns [0, in_dim), b = columns [in_dim, 2·in_dim), and the
// input is act(a)·b with act = silu (params.prologue = 0) or exact gelu (1), as gated_activation.wgsl
// computes it (activation.wgsl). Saves the gated_activation dispatch and its output's round trip.

fn prepare_input(lane: u32, row: u32) {}

fn input_vec4(row: u32, i: u32) -> vec4<f32> {
    let in4 = params.in_dim / 4u;
    let a = input[2u * row * in4 + i];
    let b = input[2u * row * in4 + in4 + i];
    if params.prologue != 0u {
        return vec4<f32>(gelu(a.x) * b.x, gelu(a.y) * b.y, gelu(a.z) * b.z, gelu(a.w) * b.w);
    }
    return vec4<f32>(silu(a.x) * b.x, silu(a.y) * b.y, silu(a.z) * b.z, silu(a.w) * b.w);
}

// No factor on the gated input (see matvec_input.wgsl).
fn input_weight(i: u32) -> vec4<f32> {
    return vec4<f32>(1.0);
}
