// RMSNorm fused into the decode matvec (needs SUBGROUP): Y[r, :] = (x ⊙ g / rms(x)) · Wᵀ with
// rms(x) = sqrt(mean(x²) + eps), x = X[x_row_start + r, :]. 1/rms is one scalar per row, so the
// dot products take x ⊙ g and the sums are scaled at the end; every workgroup reads all of x
// anyway, so it sums the squares itself. Saves the norm's dispatch and its output buffer's round
// trip before each projection of a pre-norm layer and before the logits head.

@group(0) @binding(4) var<storage, read> norm_weight: array<vec4<f32>>;

// Indexed [sum][subgroup]: the four outputs' sums, then the sum of squares.
var<workgroup> subgroup_sums: array<f32, (OUTPUTS_PER_WORKGROUP + 1u) * WORKGROUP_SIZE>;

// Grid: (ceil(out_dim / OUTPUTS_PER_WORKGROUP), rows).
@compute @workgroup_size(WORKGROUP_SIZE)
fn matvec_norm_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
) {
    let first_output = wid.x * OUTPUTS_PER_WORKGROUP;
    let in4 = params.in_dim / 4u;
    let x_start = (params.x_row_start + wid.y) * in4;
    let w = weight_rows(first_output);
    var acc = vec4<f32>(0.0);
    var squares = 0.0;
    for (var i = lane; i < in4; i += WORKGROUP_SIZE) {
        let x = input[x_start + i];
        squares = fma(x.x, x.x, squares);
        squares = fma(x.y, x.y, squares);
        squares = fma(x.z, x.z, squares);
        squares = fma(x.w, x.w, squares);
        acc += dot4(w, i, x * norm_weight[i]);
    }
    let total = subgroupAdd(acc);
    let total_squares = subgroupAdd(squares);
    if subgroup_lane == 0u {
        subgroup_sums[subgroup] = total.x;
        subgroup_sums[WORKGROUP_SIZE + subgroup] = total.y;
        subgroup_sums[2u * WORKGROUP_SIZE + subgroup] = total.z;
        subgroup_sums[3u * WORKGROUP_SIZE + subgroup] = total.w;
        subgroup_sums[4u * WORKGROUP_SIZE + subgroup] = total_squares;
    }
    workgroupBarrier();
    if lane < OUTPUTS_PER_WORKGROUP && first_output + lane < params.out_dim {
        var sum = 0.0;
        var sum_squares = 0.0;
        for (var s = 0u; s < subgroups; s++) {
            sum += subgroup_sums[lane * WORKGROUP_SIZE + s];
            sum_squares += subgroup_sums[4u * WORKGROUP_SIZE + s];
        }
        let inverse_rms = 1.0 / sqrt(sum_squares / f32(params.in_dim) + params.norm_eps);
        store_output(output_index(wid.y, first_output + lane), sum * inverse_rms);
    }
}
