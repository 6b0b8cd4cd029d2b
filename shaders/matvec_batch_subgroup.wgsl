// Subgroup reduction for matvec_batch_common.wgsl (needs SUBGROUP; any subgroup size): each sum
// is added within every subgroup (subgroupAdd), then the subgroups' totals are added through
// workgroup memory, SLOTS subgroups per round: one round for subgroups of 16 or more at 128
// invocations (NVIDIA and Apple 32, AMD 32 or 64), two on lavapipe's subgroups of 8, so the
// tests run both paths. Rounds add the subgroups in the same order as one pass would, so the
// bits do not depend on SLOTS. matvec_batch_norm_subgroup.wgsl reuses `reduce_batch` with the
// rows' sums of squares.

const SLOTS: u32 = 8u;
// Indexed [sum][slot]: the SUMS products, then the BATCH_ROWS sums of squares.
var<workgroup> subgroup_sums: array<f32, (SUMS + BATCH_ROWS) * SLOTS>;
var<workgroup> subgroup_count: u32;

// Entry e's four sums (4e … 4e + 3) of one subgroup, in its slot.
fn keep_subgroup_sum(e: u32, slot: u32, total: vec4<f32>) {
    let at = 4u * e * SLOTS + slot;
    subgroup_sums[at] = total.x;
    subgroup_sums[at + SLOTS] = total.y;
    subgroup_sums[at + 2u * SLOTS] = total.z;
    subgroup_sums[at + 3u * SLOTS] = total.w;
}

// The workgroup's totals: for invocation s < SUMS (WORKGROUP_SIZE ≥ SUMS: 128 against 32),
// x = sum s and, with `with_squares`, y = the sum of squares of row s / OUTPUTS_PER_WORKGROUP.
// Called in uniform control flow; `count` is the workgroup's subgroup count.
fn reduce_batch(
    p: BatchPartials,
    with_squares: bool,
    count: u32,
    lane: u32,
    subgroup: u32,
    subgroup_lane: u32,
) -> vec2<f32> {
    // Entry by entry, spelled out (see matvec_batch_partial_sums).
    let t0 = subgroupAdd(p.sums[0]);
    let t1 = subgroupAdd(p.sums[1]);
    let t2 = subgroupAdd(p.sums[2]);
    let t3 = subgroupAdd(p.sums[3]);
    let t4 = subgroupAdd(p.sums[4]);
    let t5 = subgroupAdd(p.sums[5]);
    let t6 = subgroupAdd(p.sums[6]);
    let t7 = subgroupAdd(p.sums[7]);
    var squares_low = vec4<f32>(0.0);
    var squares_high = vec4<f32>(0.0);
    if with_squares {
        squares_low = subgroupAdd(p.squares_low);
        squares_high = subgroupAdd(p.squares_high);
    }
    var total = vec2<f32>(0.0);
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
            if with_squares {
                keep_subgroup_sum(ENTRIES, slot, squares_low);
                keep_subgroup_sum(ENTRIES + 1u, slot, squares_high);
            }
        }
        workgroupBarrier();
        let filled = min(SLOTS, count - first);
        if lane < SUMS {
            let row_squares = (SUMS + lane / OUTPUTS_PER_WORKGROUP) * SLOTS;
            for (var g = 0u; g < filled; g++) {
                total.x += subgroup_sums[lane * SLOTS + g];
                if with_squares {
                    total.y += subgroup_sums[row_squares + g];
                }
            }
        }
        workgroupBarrier();
    }
    return total;
}

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
    // makes that visible to the uniformity analysis (the rounds hold barriers).
    if lane == 0u {
        subgroup_count = subgroups;
    }
    let count = workgroupUniformLoad(&subgroup_count);
    let first_output = wid.x * OUTPUTS_PER_WORKGROUP;
    let first_row = wid.y * BATCH_ROWS;
    let partials = matvec_batch_partial_sums(lane, first_output, first_row);
    let total = reduce_batch(partials, false, count, lane, subgroup, subgroup_lane);
    if lane < SUMS {
        store_batch_sum(lane, first_output, first_row, total.x);
    }
}
