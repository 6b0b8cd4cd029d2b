// Subgroup reduction for matvec_batch_common.wgsl (needs SUBGROUP; any subgroup size): each sum
// is added within every subgroup (subgroupAdd), then the subgroups' totals are added through
// workgroup memory, SLOTS subgroups per round: one round for subgroups of 16 or more at 128
// invocations (NVIDIA and Apple 32, AMD 32 or 64), two on lavapipe's subgroups of 8, so the
// tests run both paths. Rounds add the subgroups in the same order as one pass would, so the
// bits do not depend on SLOTS.

const SLOTS: u32 = 8u;
// Indexed [sum][slot].
var<workgroup> subgroup_sums: array<f32, SUMS * SLOTS>;
var<workgroup> subgroup_count: u32;

// Grid: (ceil(out_dim / OUTPUTS_PER_WORKGROUP), ceil(rows / BATCH_ROWS)).
@compute @workgroup_size(WORKGROUP_SIZE)
fn matvec_batch_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
) {
    // The subgroup count is the same for the whole workgroup; loading it through workgroup memory
    // makes that visible to the uniformity analysis (the rounds below hold barriers).
    if lane == 0u {
        subgroup_count = subgroups;
    }
    let count = workgroupUniformLoad(&subgroup_count);
    let first_output = wid.x * OUTPUTS_PER_WORKGROUP;
    let first_row = wid.y * BATCH_ROWS;
    let acc = matvec_batch_partial_sums(lane, first_output, first_row);
    // Entry by entry, spelled out (see matvec_batch_partial_sums).
    let t0 = subgroupAdd(acc[0]);
    let t1 = subgroupAdd(acc[1]);
    let t2 = subgroupAdd(acc[2]);
    let t3 = subgroupAdd(acc[3]);
    let t4 = subgroupAdd(acc[4]);
    let t5 = subgroupAdd(acc[5]);
    let t6 = subgroupAdd(acc[6]);
    let t7 = subgroupAdd(acc[7]);
    let t8 = subgroupAdd(acc[8]);
    let t9 = subgroupAdd(acc[9]);
    let t10 = subgroupAdd(acc[10]);
    let t11 = subgroupAdd(acc[11]);
    let t12 = subgroupAdd(acc[12]);
    let t13 = subgroupAdd(acc[13]);
    let t14 = subgroupAdd(acc[14]);
    let t15 = subgroupAdd(acc[15]);
    // Invocation s < SUMS adds up sum s (WORKGROUP_SIZE ≥ SUMS: 128 against 64).
    var sum = 0.0;
    for (var first = 0u; first < count; first += SLOTS) {
        if subgroup_lane == 0u && subgroup >= first && subgroup < first + SLOTS {
            let slot = subgroup - first;
            keep_subgroup_sum(0u, slot, t0);
            keep_subgroup_sum(1u, slot, t1);
            keep_subgroup_sum(2u, slot, t2);
            keep_subgroup_sum(3u, slot, t3);
            keep_subgroup_sum(4u, slot, t4);
            keep_subgroup_sum(5u, slot, t5);
            keep_subgroup_sum(6u, slot, t6);
            keep_subgroup_sum(7u, slot, t7);
            keep_subgroup_sum(8u, slot, t8);
            keep_subgroup_sum(9u, slot, t9);
            keep_subgroup_sum(10u, slot, t10);
            keep_subgroup_sum(11u, slot, t11);
            keep_subgroup_sum(12u, slot, t12);
            keep_subgroup_sum(13u, slot, t13);
            keep_subgroup_sum(14u, slot, t14);
            keep_subgroup_sum(15u, slot, t15);
        }
        workgroupBarrier();
        let filled = min(SLOTS, count - first);
        if lane < SUMS {
            for (var g = 0u; g < filled; g++) {
                sum += subgroup_sums[lane * SLOTS + g];
            }
        }
        workgroupBarrier();
    }
    if lane < SUMS {
        store_batch_sum(lane, first_output, first_row, sum);
    }
}

// Entry e's four sums (4e … 4e + 3) of one subgroup, in its slot.
fn keep_subgroup_sum(e: u32, slot: u32, total: vec4<f32>) {
    let at = 4u * e * SLOTS + slot;
    subgroup_sums[at] = total.x;
    subgroup_sums[at + SLOTS] = total.y;
    subgroup_sums[at + 2u * SLOTS] = total.z;
    subgroup_sums[at + 3u * SLOTS] = total.w;
}
