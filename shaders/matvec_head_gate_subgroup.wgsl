// The head-gate prologue of the subgroup matvec (matvec_input_head_gate.wgsl with
// matvec_subgroup.wgsl, which sets `own_subgroup`, `own_subgroup_lane`, `own_subgroup_size` and
// `own_subgroups` before calling it): each subgroup sums the squares of whole heads (heads
// first + s for subgroup s, in rounds of the subgroup count), one subgroupAdd per head, and one
// barrier for all heads. The tree it replaces (matvec_head_gate_tree.wgsl) took 8 barriers per
// four heads: 16 before the first weight load of an out_proj workgroup for 8 heads.

var<workgroup> prologue_subgroups: u32;

fn prepare_input(lane: u32, row: u32) {
    // The subgroup count is the same for the whole workgroup; loading it through workgroup memory
    // makes that visible to the uniformity analysis (the rounds end in a barrier).
    if lane == 0u {
        prologue_subgroups = own_subgroups;
    }
    let count = workgroupUniformLoad(&prologue_subgroups);
    let heads = params.in_dim / params.head_dim;
    for (var first = 0u; first < heads; first += count) {
        let h = first + own_subgroup;
        var squares = 0.0;
        if h < heads {
            // Four loads in flight per lane: a loop of single loads waited on each in turn
            // (13 dependent cache round trips per head of 432 on NVIDIA: slower than the tree).
            let base = row * params.in_dim + h * params.head_dim;
            let lanes = own_subgroup_size;
            var c = own_subgroup_lane;
            for (; c + 3u * lanes < params.head_dim; c += 4u * lanes) {
                let x0 = input_element(base + c);
                let x1 = input_element(base + c + lanes);
                let x2 = input_element(base + c + 2u * lanes);
                let x3 = input_element(base + c + 3u * lanes);
                squares = fma(x0, x0, squares);
                squares = fma(x1, x1, squares);
                squares = fma(x2, x2, squares);
                squares = fma(x3, x3, squares);
            }
            for (; c < params.head_dim; c += lanes) {
                let x = input_element(base + c);
                squares = fma(x, x, squares);
            }
        }
        let total = subgroupAdd(squares);
        if h < heads && own_subgroup_lane == 0u {
            head_scale[h] = 1.0 / sqrt(total / f32(params.head_dim) + params.norm_eps);
        }
    }
    workgroupBarrier();
}
