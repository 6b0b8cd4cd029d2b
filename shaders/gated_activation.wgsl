// FFN gating: out[t, i] = act(a[t, i]) ⊙ l[t, i], act = silu or exact (erf) gelu. a and l are
// row-strided with offsets so both can be column ranges of one fused projection output.

struct GatedActivationParams {
    tokens: u32,
    width: u32,
    act_offset: u32,
    act_stride: u32,
    linear_offset: u32,
    linear_stride: u32,
    out_offset: u32,
    out_stride: u32,
}

@group(0) @binding(0) var<uniform> params: GatedActivationParams;
@group(0) @binding(1) var<storage, read> act_input: array<f32>;
@group(0) @binding(2) var<storage, read> linear_input: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

override WORKGROUP_SIZE: u32 = 256u;

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}

// erfc(x) for x ≥ 0 by the Chebyshev fit of Numerical Recipes (`erfcc`): fractional error below
// 1.2e-7 for every x ≥ 0, before f32 rounding. WGSL has no erf.
fn erfc_nonnegative(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    return t * exp(-z * z + poly);
}

// Exact gelu: 0.5·x·(1 + erf(x/√2)) = 0.5·x·erfc(−x/√2). Written with erfc so that the tail
// x ≪ 0 keeps its relative accuracy instead of cancelling in 1 + erf.
fn gelu(x: f32) -> f32 {
    let z = x * 0.70710678;
    var erfc_minus_z: f32;
    if z <= 0.0 {
        erfc_minus_z = erfc_nonnegative(-z);
    } else {
        erfc_minus_z = 2.0 - erfc_nonnegative(z);
    }
    return 0.5 * x * erfc_minus_z;
}

// Grid: (ceil(width / WORKGROUP_SIZE), tokens).
@compute @workgroup_size(WORKGROUP_SIZE)
fn silu_gate(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if i >= params.width || t >= params.tokens {
        return;
    }
    let a = act_input[params.act_offset + t * params.act_stride + i];
    let l = linear_input[params.linear_offset + t * params.linear_stride + i];
    output[params.out_offset + t * params.out_stride + i] = silu(a) * l;
}

// Grid: (ceil(width / WORKGROUP_SIZE), tokens).
@compute @workgroup_size(WORKGROUP_SIZE)
fn gelu_gate(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if i >= params.width || t >= params.tokens {
        return;
    }
    let a = act_input[params.act_offset + t * params.act_stride + i];
    let l = linear_input[params.linear_offset + t * params.linear_stride + i];
    output[params.out_offset + t * params.out_stride + i] = gelu(a) * l;
}
