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

// Partial sums indexed [row * OUTPUTS_PER_WORKGROUP + output].
fn matvec_batch_partial_sums(lane: u32, first_output: u32, first_row: u32) -> array<f32, SUMS> {
    let in4 = params.in_dim / 4u;
    var x_start: array<u32, BATCH_ROWS>;
    for (var r = 0u; r < BATCH_ROWS; r++) {
        x_start[r] = (params.x_row_start + min(first_row + r, params.rows - 1u)) * in4;
    }
    var w_start: array<u32, OUTPUTS_PER_WORKGROUP>;
    for (var o = 0u; o < OUTPUTS_PER_WORKGROUP; o++) {
        w_start[o] = min(first_output + o, params.out_dim - 1u) * in4;
    }
    var acc: array<f32, SUMS>;
    for (var i = lane; i < in4; i += WORKGROUP_SIZE) {
        var w: array<vec4<f32>, OUTPUTS_PER_WORKGROUP>;
        for (var o = 0u; o < OUTPUTS_PER_WORKGROUP; o++) {
            w[o] = weight_vec4(w_start[o] + i);
        }
        for (var r = 0u; r < BATCH_ROWS; r++) {
            let x = input[x_start[r] + i];
            for (var o = 0u; o < OUTPUTS_PER_WORKGROUP; o++) {
                acc[r * OUTPUTS_PER_WORKGROUP + o] += dot(w[o], x);
            }
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
