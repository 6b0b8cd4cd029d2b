// Matrix-vector product for decode (one or a few tokens): each workgroup computes
// OUTPUTS_PER_WORKGROUP outputs of one row; every invocation walks a strided share of the input
// with 16-byte loads, reusing each loaded x vec4 for all the workgroup's outputs. The partial sums
// are then reduced by matvec_workgroup.wgsl (portable) or matvec_subgroup.wgsl (SUBGROUP).
// Requires in_dim % 4 == 0 (vec4 loads of X and of every weight row); use matmul otherwise.

@group(0) @binding(2) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

// A private array cannot be sized by an override, so this is a const.
const OUTPUTS_PER_WORKGROUP: u32 = 4u;
override WORKGROUP_SIZE: u32 = 128u;

fn matvec_partial_sums(lane: u32, first_output: u32, row: u32) -> array<f32, OUTPUTS_PER_WORKGROUP> {
    let in4 = params.in_dim / 4u;
    let x_start = (params.x_row_start + row) * in4;
    var acc: array<f32, OUTPUTS_PER_WORKGROUP>;
    var w_start: array<u32, OUTPUTS_PER_WORKGROUP>;
    for (var o = 0u; o < OUTPUTS_PER_WORKGROUP; o++) {
        // Past the last output, reread the last row: cheaper than a branch in the loop; not stored.
        w_start[o] = min(first_output + o, params.out_dim - 1u) * in4;
    }
    // Two strides per iteration: twice the loads in flight per invocation (decode is bound by
    // memory latency as much as by bandwidth).
    let step = 2u * WORKGROUP_SIZE;
    var i = lane;
    for (; i + WORKGROUP_SIZE < in4; i += step) {
        let x0 = input[x_start + i];
        let x1 = input[x_start + i + WORKGROUP_SIZE];
        for (var o = 0u; o < OUTPUTS_PER_WORKGROUP; o++) {
            let w0 = weight_vec4(w_start[o] + i);
            let w1 = weight_vec4(w_start[o] + i + WORKGROUP_SIZE);
            acc[o] += dot(w0, x0) + dot(w1, x1);
        }
    }
    if i < in4 {
        let x = input[x_start + i];
        for (var o = 0u; o < OUTPUTS_PER_WORKGROUP; o++) {
            acc[o] += dot(weight_vec4(w_start[o] + i), x);
        }
    }
    return acc;
}
