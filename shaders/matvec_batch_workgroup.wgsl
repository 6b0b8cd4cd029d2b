// Portable reduction for matvec_batch_common.wgsl: a tree over workgroup memory, half of the
// sums at a time (all SUMS at once would take 32 KiB at 128 invocations; WebGPU guarantees 16).

const HALF_SUMS: u32 = SUMS / 2u;
// WORKGROUP_SIZE must be a power of two. Indexed [sum − first sum of the half][lane].
var<workgroup> partial_sums: array<f32, HALF_SUMS * WORKGROUP_SIZE>;

// Grid: (ceil(out_dim / OUTPUTS_PER_WORKGROUP), ceil(rows / BATCH_ROWS)).
@compute @workgroup_size(WORKGROUP_SIZE)
fn matvec_batch(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let first_output = wid.x * OUTPUTS_PER_WORKGROUP;
    let first_row = wid.y * BATCH_ROWS;
    let acc = matvec_batch_partial_sums(lane, first_output, first_row).sums;
    for (var half = 0u; half < 2u; half++) {
        // Entries 4·half … 4·half + 3 hold sums HALF_SUMS·half … (see ENTRIES).
        for (var e = 0u; e < ENTRIES / 2u; e++) {
            let entry = acc[half * (ENTRIES / 2u) + e];
            for (var c = 0u; c < 4u; c++) {
                partial_sums[(4u * e + c) * WORKGROUP_SIZE + lane] = entry[c];
            }
        }
        workgroupBarrier();
        for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride >>= 1u) {
            if lane < stride {
                for (var s = 0u; s < HALF_SUMS; s++) {
                    partial_sums[s * WORKGROUP_SIZE + lane] += partial_sums[s * WORKGROUP_SIZE + lane + stride];
                }
            }
            workgroupBarrier();
        }
        if lane < HALF_SUMS {
            store_batch_sum(half * HALF_SUMS + lane, first_output, first_row, partial_sums[lane * WORKGROUP_SIZE]);
        }
        // The next half overwrites the sums just read.
        workgroupBarrier();
    }
}
