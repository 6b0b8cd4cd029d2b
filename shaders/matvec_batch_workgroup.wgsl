// Portable reduction for matvec_batch_common.wgsl: a tree over workgroup memory.

// WORKGROUP_SIZE must be a power of two. Indexed [sum][lane].
var<workgroup> partial_sums: array<f32, SUMS * WORKGROUP_SIZE>;

// Grid: (ceil(out_dim / OUTPUTS_PER_WORKGROUP), ceil(rows / BATCH_ROWS)).
@compute @workgroup_size(WORKGROUP_SIZE)
fn matvec_batch(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let first_output = wid.x * OUTPUTS_PER_WORKGROUP;
    let first_row = wid.y * BATCH_ROWS;
    let acc = matvec_batch_partial_sums(lane, first_output, first_row);
    for (var r = 0u; r < BATCH_ROWS; r++) {
        for (var o = 0u; o < OUTPUTS_PER_WORKGROUP; o++) {
            partial_sums[(r * OUTPUTS_PER_WORKGROUP + o) * WORKGROUP_SIZE + lane] = acc[r][o];
        }
    }
    workgroupBarrier();
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride >>= 1u) {
        if lane < stride {
            for (var s = 0u; s < SUMS; s++) {
                partial_sums[s * WORKGROUP_SIZE + lane] += partial_sums[s * WORKGROUP_SIZE + lane + stride];
            }
        }
        workgroupBarrier();
    }
    if lane < SUMS {
        store_batch_sum(lane, first_output, first_row, partial_sums[lane * WORKGROUP_SIZE]);
    }
}
