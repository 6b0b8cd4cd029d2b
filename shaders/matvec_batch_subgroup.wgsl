// Subgroup reduction for matvec_batch_common.wgsl (needs SUBGROUP; any subgroup size).

// Indexed [sum][subgroup]; at most WORKGROUP_SIZE subgroups.
var<workgroup> subgroup_sums: array<f32, SUMS * WORKGROUP_SIZE>;

// Grid: (ceil(out_dim / OUTPUTS_PER_WORKGROUP), ceil(rows / BATCH_ROWS)).
@compute @workgroup_size(WORKGROUP_SIZE)
fn matvec_batch_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
) {
    let first_output = wid.x * OUTPUTS_PER_WORKGROUP;
    let first_row = wid.y * BATCH_ROWS;
    let acc = matvec_batch_partial_sums(lane, first_output, first_row);
    for (var r = 0u; r < BATCH_ROWS; r++) {
        let total = subgroupAdd(acc[r]);
        if subgroup_lane == 0u {
            for (var o = 0u; o < OUTPUTS_PER_WORKGROUP; o++) {
                subgroup_sums[(r * OUTPUTS_PER_WORKGROUP + o) * WORKGROUP_SIZE + subgroup] = total[o];
            }
        }
    }
    workgroupBarrier();
    if lane < SUMS {
        var sum = 0.0;
        for (var g = 0u; g < subgroups; g++) {
            sum += subgroup_sums[lane * WORKGROUP_SIZE + g];
        }
        store_batch_sum(lane, first_output, first_row, sum);
    }
}
