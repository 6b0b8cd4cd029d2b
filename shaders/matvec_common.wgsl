// Matrix-vector product for decode (one or a few tokens): each workgroup computes
// OUTPUTS_PER_WORKGROUP outputs of one row; every invocation walks a strided share of the input
// with 16-byte loads, reusing each loaded x vec4 for all the workgroup's outputs. The partial sums
// are then reduced by matvec_workgroup.wgsl (portable) or matvec_subgroup.wgsl (SUBGROUP).
// The input vector comes through `prepare_input` and `input_vec4`: X itself (matvec_input.wgsl),
// or a decode step's elementwise stage computed as it is read (matvec_input_act_lin.wgsl,
// matvec_input_head_gate.wgsl), which saves that stage's dispatch.
// Requires in_dim % 4 == 0 (vec4 loads of X and of every weight row); use matmul otherwise.

@group(0) @binding(2) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

// The four outputs of a workgroup are the components of one vec4 accumulator.
const OUTPUTS_PER_WORKGROUP: u32 = 4u;
override WORKGROUP_SIZE: u32 = 128u;

// First elements (in vec4s) of the workgroup's four weight rows (past the last output, the last
// row is read again: cheaper than a branch in the loop; not stored).
fn weight_rows(first_output: u32) -> vec4<u32> {
    let stride4 = params.weight_stride / 4u;
    let last = params.out_dim - 1u;
    return vec4<u32>(
        min(first_output, last),
        min(first_output + 1u, last),
        min(first_output + 2u, last),
        min(first_output + 3u, last),
    ) * stride4;
}

// W[rows w, i] · x for the four rows, as a vec4.
fn dot4(w: vec4<u32>, i: u32, x: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(
        dot(weight_vec4(w.x + i), x),
        dot(weight_vec4(w.y + i), x),
        dot(weight_vec4(w.z + i), x),
        dot(weight_vec4(w.w + i), x),
    );
}

// This invocation's share of the workgroup's four outputs for one row of X. Named registers
// throughout: a private array indexed in a loop can end up in local memory (measured on the H100
// for the batched variant: 3× slower).
fn matvec_partial_sums(lane: u32, first_output: u32, row: u32) -> vec4<f32> {
    let in4 = params.in_dim / 4u;
    let x_row = params.x_row_start + row;
    let w = weight_rows(first_output);
    var acc = vec4<f32>(0.0);
    // Two strides per iteration: twice the loads in flight per invocation (decode is bound by
    // memory latency as much as by bandwidth).
    let step = 2u * WORKGROUP_SIZE;
    var i = lane;
    for (; i + WORKGROUP_SIZE < in4; i += step) {
        let x0 = input_vec4(x_row, i);
        let x1 = input_vec4(x_row, i + WORKGROUP_SIZE);
        acc += dot4(w, i, x0) + dot4(w, i + WORKGROUP_SIZE, x1);
    }
    if i < in4 {
        acc += dot4(w, i, input_vec4(x_row, i));
    }
    return acc;
}
