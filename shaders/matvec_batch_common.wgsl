// Matrix-vector products for a batch of rows (batched decode, short prompts): like
// matvec_common.wgsl, but each workgroup computes OUTPUTS_PER_WORKGROUP outputs for BATCH_ROWS rows
// at once, so every weight is read from memory once per BATCH_ROWS rows instead of once per row.
// Rows past `rows` reread the last row (not stored). The partial sums are reduced by
// matvec_batch_workgroup.wgsl or matvec_batch_subgroup.wgsl. Requires in_dim % 4 == 0.

@group(0) @binding(2) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

// Private arrays cannot be sized by overrides, so these are consts.
const OUTPUTS_PER_WORKGROUP: u32 = 4u;
const BATCH_ROWS: u32 = 8u;
const SUMS: u32 = OUTPUTS_PER_WORKGROUP * BATCH_ROWS;
override WORKGROUP_SIZE: u32 = 128u;

// Partial sums: element o of entry r is row first_row + r, output first_output + o. Written with
// one vec4 accumulator per row and the four weight vectors in named registers, so nothing is a
// private array indexed in a loop the compiler might keep in local memory.
fn matvec_batch_partial_sums(lane: u32, first_output: u32, first_row: u32) -> array<vec4<f32>, BATCH_ROWS> {
    let in4 = params.in_dim / 4u;
    let last_output = params.out_dim - 1u;
    let last_row = params.rows - 1u;
    let w0 = min(first_output, last_output) * in4;
    let w1 = min(first_output + 1u, last_output) * in4;
    let w2 = min(first_output + 2u, last_output) * in4;
    let w3 = min(first_output + 3u, last_output) * in4;
    var acc: array<vec4<f32>, BATCH_ROWS>;
    for (var i = lane; i < in4; i += WORKGROUP_SIZE) {
        let a = weight_vec4(w0 + i);
        let b = weight_vec4(w1 + i);
        let c = weight_vec4(w2 + i);
        let d = weight_vec4(w3 + i);
        for (var r = 0u; r < BATCH_ROWS; r++) {
            let x = input[(params.x_row_start + min(first_row + r, last_row)) * in4 + i];
            acc[r] += vec4<f32>(dot(a, x), dot(b, x), dot(c, x), dot(d, x));
        }
    }
    return acc;
}

// Stores sum `s` (row s / OUTPUTS_PER_WORKGROUP, output s % OUTPUTS_PER_WORKGROUP) if in range.
fn store_batch_sum(s: u32, first_output: u32, first_row: u32, value: f32) {
    let row = first_row + s / OUTPUTS_PER_WORKGROUP;
    let column = first_output + s % OUTPUTS_PER_WORKGROUP;
    if row < params.rows && column < params.out_dim {
        store_output(row * params.out_dim + column, value);
    }
}
