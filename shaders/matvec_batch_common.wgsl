// Matrix-vector products for a batch of rows (batched decode, short prompts): like
// matvec_common.wgsl, but each workgroup computes OUTPUTS_PER_WORKGROUP outputs for BATCH_ROWS rows
// at once, so every weight is read from memory once per BATCH_ROWS rows instead of once per row.
// Rows past `rows` reread the last row (not stored). The partial sums are reduced by
// matvec_batch_workgroup.wgsl or matvec_batch_subgroup.wgsl. Requires in_dim % 4 == 0. The input
// comes through `input_vec4` (matvec_input.wgsl, or act(a)·b: matvec_input_act_lin.wgsl).

@group(0) @binding(2) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

// Private arrays cannot be sized by overrides, so these are consts. Four outputs per workgroup:
// every workgroup reads its BATCH_ROWS input rows in full (the 8 f32 rows cost 4× the f16
// weights in cache traffic), but eight outputs' 64 accumulators cost registers, hence resident
// warps, and measured slower on the H200 (docs/perf-notes.md, stop 27).
const OUTPUTS_PER_WORKGROUP: u32 = 4u;
const BATCH_ROWS: u32 = 8u;
const SUMS: u32 = OUTPUTS_PER_WORKGROUP * BATCH_ROWS;
// Accumulator vec4s: entry r holds outputs 0–3 of row r, so sum s = 4·entry + component is row
// s / OUTPUTS_PER_WORKGROUP, output s % OUTPUTS_PER_WORKGROUP.
const ENTRIES: u32 = SUMS / 4u;
override WORKGROUP_SIZE: u32 = 128u;

// One invocation's partial sums: the products (see ENTRIES) and, for a fused RMSNorm, the sums
// of squares of its share of the eight input rows (rows 0–3, 4–7; the other kernels leave them
// unused and the compiler drops them).
struct BatchPartials {
    sums: array<vec4<f32>, ENTRIES>,
    squares_low: vec4<f32>,
    squares_high: vec4<f32>,
}

// x · x added to `acc`, one fma per component (in order).
fn add_squares(acc: f32, x: vec4<f32>) -> f32 {
    return fma(x.w, x.w, fma(x.z, x.z, fma(x.y, x.y, fma(x.x, x.x, acc))));
}

// Partial sums of (x ⊙ input_weight) · w. The accumulators are written out by hand: with a
// private array indexed in a loop, the H100's compiler kept them in local memory (10 ms for a
// batch-8 step of retnet_xl).
fn matvec_batch_partial_sums(lane: u32, first_output: u32, first_row: u32) -> BatchPartials {
    let last_output = params.out_dim - 1u;
    let weight_rows = vec4<u32>(
        min(first_output, last_output),
        min(first_output + 1u, last_output),
        min(first_output + 2u, last_output),
        min(first_output + 3u, last_output),
    );
    return matvec_batch_partial_sums_of(lane, weight_rows, first_row);
}

// The same for any four rows of W (matvec_batch_norm_gated_subgroup.wgsl pairs rows of the two
// halves of act|lin).
fn matvec_batch_partial_sums_of(lane: u32, weight_rows: vec4<u32>, first_row: u32) -> BatchPartials {
    let in4 = params.in_dim / 4u;
    let stride4 = params.weight_stride / 4u;
    let last_row = params.rows - 1u;
    let w0 = weight_rows.x * stride4;
    let w1 = weight_rows.y * stride4;
    let w2 = weight_rows.z * stride4;
    let w3 = weight_rows.w * stride4;
    let x0 = params.x_row_start + min(first_row + 0u, last_row);
    let x1 = params.x_row_start + min(first_row + 1u, last_row);
    let x2 = params.x_row_start + min(first_row + 2u, last_row);
    let x3 = params.x_row_start + min(first_row + 3u, last_row);
    let x4 = params.x_row_start + min(first_row + 4u, last_row);
    let x5 = params.x_row_start + min(first_row + 5u, last_row);
    let x6 = params.x_row_start + min(first_row + 6u, last_row);
    let x7 = params.x_row_start + min(first_row + 7u, last_row);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    var squares_low = vec4<f32>(0.0);
    var squares_high = vec4<f32>(0.0);
    for (var i = lane; i < in4; i += WORKGROUP_SIZE) {
        let a = weight_vec4(w0 + i);
        let b = weight_vec4(w1 + i);
        let c = weight_vec4(w2 + i);
        let d = weight_vec4(w3 + i);
        let scale = input_weight(i);
        let raw0 = input_vec4(x0, i);
        squares_low.x = add_squares(squares_low.x, raw0);
        let y0 = raw0 * scale;
        acc0 += dots(a, b, c, d, y0);
        let raw1 = input_vec4(x1, i);
        squares_low.y = add_squares(squares_low.y, raw1);
        let y1 = raw1 * scale;
        acc1 += dots(a, b, c, d, y1);
        let raw2 = input_vec4(x2, i);
        squares_low.z = add_squares(squares_low.z, raw2);
        let y2 = raw2 * scale;
        acc2 += dots(a, b, c, d, y2);
        let raw3 = input_vec4(x3, i);
        squares_low.w = add_squares(squares_low.w, raw3);
        let y3 = raw3 * scale;
        acc3 += dots(a, b, c, d, y3);
        let raw4 = input_vec4(x4, i);
        squares_high.x = add_squares(squares_high.x, raw4);
        let y4 = raw4 * scale;
        acc4 += dots(a, b, c, d, y4);
        let raw5 = input_vec4(x5, i);
        squares_high.y = add_squares(squares_high.y, raw5);
        let y5 = raw5 * scale;
        acc5 += dots(a, b, c, d, y5);
        let raw6 = input_vec4(x6, i);
        squares_high.z = add_squares(squares_high.z, raw6);
        let y6 = raw6 * scale;
        acc6 += dots(a, b, c, d, y6);
        let raw7 = input_vec4(x7, i);
        squares_high.w = add_squares(squares_high.w, raw7);
        let y7 = raw7 * scale;
        acc7 += dots(a, b, c, d, y7);
    }
    let sums = array<vec4<f32>, ENTRIES>(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7);
    return BatchPartials(sums, squares_low, squares_high);
}

fn dots(a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>, x: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(a, x), dot(b, x), dot(c, x), dot(d, x));
}

// Stores sum `s` (row s / OUTPUTS_PER_WORKGROUP, output s % OUTPUTS_PER_WORKGROUP) if in range.
fn store_batch_sum(s: u32, first_output: u32, first_row: u32, value: f32) {
    let row = first_row + s / OUTPUTS_PER_WORKGROUP;
    let column = first_output + s % OUTPUTS_PER_WORKGROUP;
    if row < params.rows && column < params.out_dim {
        store_output(output_index(row, column), value);
    }
}
