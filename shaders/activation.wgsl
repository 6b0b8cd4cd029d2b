// The FFN activations, shared by gated_activation.wgsl and the matvec whose input is act(a)·b
// (matvec_input_act_lin.wgsl), and silu for the output gate (matvec_input_head_gate.wgsl).

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
