// The batched matvec's input when an RMSNorm is fused into it (matvec_batch_norm_subgroup.wgsl):
// X as it is stored, and the norm's weight g as the factor of the products, so the sums are
// (x ⊙ g) · w; the per-row 1/rms scales them at the end (the sums of squares of raw x are
// taken as it is read, matvec_batch_common.wgsl).

@group(0) @binding(4) var<storage, read> norm_weight: array<vec4<f32>>;

fn prepare_input(lane: u32, row: u32) {}

fn input_vec4(row: u32, i: u32) -> vec4<f32> {
    return input[row * (params.in_dim / 4u) + i];
}

fn input_weight(i: u32) -> vec4<f32> {
    return norm_weight[i];
}
