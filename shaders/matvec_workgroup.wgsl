// Portable reduction for matvec_common.wgsl: a tree over workgroup memory.

// WORKGROUP_SIZE must be a power of two.
var<workgroup> partial_sums: array<f32, OUTPUTS_PER_WORKGROUP * WORKGROUP_SIZE>;

// Grid: (ceil(out_dim / OUTPUTS_PER_WORKGROUP), rows).
@compute @workgroup_size(WORKGROUP_SIZE)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let first_output = wid.x * OUTPUTS_PER_WORKGROUP;
    prepare_input(lane, params.x_row_start + wid.y);
    let acc = matvec_partial_sums(lane, first_output, wid.y);
    partial_sums[lane] = acc.x;
    partial_sums[WORKGROUP_SIZE + lane] = acc.y;
    partial_sums[2u * WORKGROUP_SIZE + lane] = acc.z;
    partial_sums[3u * WORKGROUP_SIZE + lane] = acc.w;
    workgroupBarrier();
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride >>= 1u) {
        if lane < stride {
            for (var o = 0u; o < OUTPUTS_PER_WORKGROUP; o++) {
                partial_sums[o * WORKGROUP_SIZE + lane] += partial_sums[o * WORKGROUP_SIZE + lane + stride];
            }
        }
        workgroupBarrier();
    }
    if lane < OUTPUTS_PER_WORKGROUP && first_output + lane < params.out_dim {
        store_output(output_index(wid.y, first_output + lane), partial_sums[lane * WORKGROUP_SIZE]);
    }
}
