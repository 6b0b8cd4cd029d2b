// The head-gate prologue of the portable matvec (matvec_input_head_gate.wgsl with
// matvec_workgroup.wgsl): every head's 1/rms by tree reductions over the workgroup, four heads
// per tree.

// Four heads' partial sums of squares per invocation (a tree over WORKGROUP_SIZE, a power of two).
var<workgroup> head_partials: array<vec4<f32>, WORKGROUP_SIZE>;

// Square of element c of head h of row `row`, 0 past the last head.
fn square_at(row: u32, h: u32, c: u32) -> f32 {
    if h * params.head_dim >= params.in_dim {
        return 0.0;
    }
    let x = input_element(row * params.in_dim + h * params.head_dim + c);
    return x * x;
}

// head_scale[h] = 1/rms of head h, four heads per tree reduction. Called in uniform control flow.
fn prepare_input(lane: u32, row: u32) {
    let heads = params.in_dim / params.head_dim;
    for (var h0 = 0u; h0 < heads; h0 += 4u) {
        var sums = vec4<f32>(0.0);
        for (var c = lane; c < params.head_dim; c += WORKGROUP_SIZE) {
            sums += vec4<f32>(
                square_at(row, h0, c),
                square_at(row, h0 + 1u, c),
                square_at(row, h0 + 2u, c),
                square_at(row, h0 + 3u, c),
            );
        }
        head_partials[lane] = sums;
        workgroupBarrier();
        for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride >>= 1u) {
            if lane < stride {
                head_partials[lane] += head_partials[lane + stride];
            }
            workgroupBarrier();
        }
        // Lane 0 reads entry 0, which no other lane writes in the next round.
        if lane == 0u {
            let mean_squares = head_partials[0] / f32(params.head_dim);
            let scales = vec4<f32>(1.0) / sqrt(mean_squares + vec4<f32>(params.norm_eps));
            for (var j = 0u; j < 4u && h0 + j < heads; j++) {
                head_scale[h0 + j] = scales[j];
            }
        }
    }
    workgroupBarrier();
}
