// Subgroup reduction for matvec_common.wgsl (needs the SUBGROUP feature): subgroupAdd within each
// subgroup, then one partial per subgroup summed through workgroup memory. Makes no assumption on
// the subgroup size (8 on lavapipe, 32 on NVIDIA, 64 on AMD).

// Indexed [output][subgroup]; at most WORKGROUP_SIZE subgroups.
var<workgroup> subgroup_sums: array<f32, OUTPUTS_PER_WORKGROUP * WORKGROUP_SIZE>;

// Grid: (ceil(out_dim / OUTPUTS_PER_WORKGROUP), rows).
@compute @workgroup_size(WORKGROUP_SIZE)
fn matvec_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
) {
    let first_output = wid.x * OUTPUTS_PER_WORKGROUP;
    prepare_input(lane, params.x_row_start + wid.y);
    let acc = matvec_partial_sums(lane, first_output, wid.y);
    let total = subgroupAdd(acc);
    if subgroup_lane == 0u {
        subgroup_sums[subgroup] = total.x;
        subgroup_sums[WORKGROUP_SIZE + subgroup] = total.y;
        subgroup_sums[2u * WORKGROUP_SIZE + subgroup] = total.z;
        subgroup_sums[3u * WORKGROUP_SIZE + subgroup] = total.w;
    }
    workgroupBarrier();
    if lane < OUTPUTS_PER_WORKGROUP && first_output + lane < params.out_dim {
        var sum = 0.0;
        for (var s = 0u; s < subgroups; s++) {
            sum += subgroup_sums[lane * WORKGROUP_SIZE + s];
        }
        store_output(output_index(wid.y, first_output + lane), sum);
    }
}
