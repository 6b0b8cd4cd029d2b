// The matvec's input as it is stored: row `row` of X, vec4 `i` (matvec_common.wgsl,
// matvec_batch_common.wgsl).

fn prepare_input(lane: u32, row: u32) {}

fn input_vec4(row: u32, i: u32) -> vec4<f32> {
    return input[row * (params.in_dim / 4u) + i];
}

// Factor applied to input vec4 `i` in the products: none (matvec_input_norm.wgsl applies the
// RMSNorm's weight here).
fn input_weight(i: u32) -> vec4<f32> {
    return vec4<f32>(1.0);
}
