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
    // Row by row, spelled out (see matvec_batch_partial_sums).
    let first_lane = subgroup_lane == 0u;
    keep_subgroup_sum(0u, subgroup, first_lane, subgroupAdd(acc[0]));
    keep_subgroup_sum(1u, subgroup, first_lane, subgroupAdd(acc[1]));
    keep_subgroup_sum(2u, subgroup, first_lane, subgroupAdd(acc[2]));
    keep_subgroup_sum(3u, subgroup, first_lane, subgroupAdd(acc[3]));
    keep_subgroup_sum(4u, subgroup, first_lane, subgroupAdd(acc[4]));
    keep_subgroup_sum(5u, subgroup, first_lane, subgroupAdd(acc[5]));
    keep_subgroup_sum(6u, subgroup, first_lane, subgroupAdd(acc[6]));
    keep_subgroup_sum(7u, subgroup, first_lane, subgroupAdd(acc[7]));
    workgroupBarrier();
    if lane < SUMS {
        var sum = 0.0;
        for (var g = 0u; g < subgroups; g++) {
            sum += subgroup_sums[lane * WORKGROUP_SIZE + g];
        }
        store_batch_sum(lane, first_output, first_row, sum);
    }
}

// Row r's four sums of one subgroup, written by its first invocation.
fn keep_subgroup_sum(r: u32, subgroup: u32, first_lane: bool, total: vec4<f32>) {
    if first_lane {
        let at = r * OUTPUTS_PER_WORKGROUP * WORKGROUP_SIZE + subgroup;
        subgroup_sums[at] = total.x;
        subgroup_sums[at + WORKGROUP_SIZE] = total.y;
        subgroup_sums[at + 2u * WORKGROUP_SIZE] = total.z;
        subgroup_sums[at + 3u * WORKGROUP_SIZE] = total.w;
    }
}
