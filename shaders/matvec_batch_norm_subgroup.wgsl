// RMSNorm fused into the batched matvec (batched decode; needs SUBGROUP), after
// matvec_input_norm.wgsl, matvec_batch_common.wgsl and matvec_batch_subgroup.wgsl:
// Y[r, :] = (x ⊙ g / rms(x)) · Wᵀ, rms(x) = sqrt(mean(x²) + eps), as matvec_norm_subgroup.wgsl
// computes it for one row: the products take x ⊙ g, every workgroup sums the squares of the rows
// it reads anyway, and each sum is scaled by its row's 1/rms at the end. Saves the norm's
// dispatch and its output's round trip before each projection of a pre-norm layer.

// Grid: (ceil(out_dim / OUTPUTS_PER_WORKGROUP), ceil(rows / BATCH_ROWS)).
@compute @workgroup_size(WORKGROUP_SIZE)
fn matvec_batch_norm_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
) {
    if lane == 0u {
        subgroup_count = subgroups;
    }
    let count = workgroupUniformLoad(&subgroup_count);
    let first_output = wid.x * OUTPUTS_PER_WORKGROUP;
    let first_row = wid.y * BATCH_ROWS;
    let partials = matvec_batch_partial_sums(lane, first_output, first_row);
    let total = reduce_batch(partials, true, count, lane, subgroup, subgroup_lane);
    if lane < SUMS {
        let inverse_rms = 1.0 / sqrt(total.y / f32(params.in_dim) + params.norm_eps);
        store_batch_sum(lane, first_output, first_row, total.x * inverse_rms);
    }
}
