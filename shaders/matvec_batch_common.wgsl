// Matrix-vector products for a batch of rows (batched decode, short prompts): like
// matvec_common.wgsl, but each workgroup computes OUTPUTS_PER_WORKGROUP outputs for BATCH_ROWS rows
// at once, so every weight is read from memory once per BATCH_ROWS rows instead of once per row.
// Rows past `rows` reread the last row (not stored). The partial sums are reduced by
// matvec_batch_workgroup.wgsl or matvec_batch_subgroup.wgsl. Requires in_dim % 4 == 0. The input
// comes through `input_vec4` (matvec_input.wgsl, or act(a)·b: matvec_input_act_lin.wgsl).

@group(0) @binding(2) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

// Private arrays cannot be sized by overrides, so these are consts. Eight outputs per workgroup:
// every workgroup reads its BATCH_ROWS input rows in full, so the outputs it computes from them
// set how often the inputs are re-read (with 4, the 8 f32 rows cost 4× the f16 weights in cache
// traffic; docs/perf-notes.md, stop 26).
const OUTPUTS_PER_WORKGROUP: u32 = 8u;
const BATCH_ROWS: u32 = 8u;
const SUMS: u32 = OUTPUTS_PER_WORKGROUP * BATCH_ROWS;
// Accumulator vec4s: entry 2r holds outputs 0–3 of row r, entry 2r + 1 outputs 4–7, so sum
// s = 4·entry + component is row s / OUTPUTS_PER_WORKGROUP, output s % OUTPUTS_PER_WORKGROUP.
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

// Named accumulators of one invocation (see BatchPartials): `pN` holds entry N of the sums. A
// struct of named fields, not an array: with a private array indexed in a loop, the H100's
// compiler kept them in local memory (10 ms for a batch-8 step of retnet_xl).
struct BatchAccumulators {
    p0: vec4<f32>, p1: vec4<f32>, p2: vec4<f32>, p3: vec4<f32>,
    p4: vec4<f32>, p5: vec4<f32>, p6: vec4<f32>, p7: vec4<f32>,
    p8: vec4<f32>, p9: vec4<f32>, p10: vec4<f32>, p11: vec4<f32>,
    p12: vec4<f32>, p13: vec4<f32>, p14: vec4<f32>, p15: vec4<f32>,
    squares_low: vec4<f32>,
    squares_high: vec4<f32>,
}

// The eight weight rows' vec4s at one input position.
struct WeightColumn {
    a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>,
    e: vec4<f32>, f: vec4<f32>, g: vec4<f32>, h: vec4<f32>,
}

// First elements (in vec4s) of the workgroup's weight rows and first vec4s of its input rows;
// past the last output or row the last one is read again (cheaper than a branch; not stored).
struct BatchOperands {
    w0: u32, w1: u32, w2: u32, w3: u32, w4: u32, w5: u32, w6: u32, w7: u32,
    x0: u32, x1: u32, x2: u32, x3: u32, x4: u32, x5: u32, x6: u32, x7: u32,
}

fn weight_column(o: BatchOperands, i: u32) -> WeightColumn {
    return WeightColumn(
        weight_vec4(o.w0 + i), weight_vec4(o.w1 + i), weight_vec4(o.w2 + i), weight_vec4(o.w3 + i),
        weight_vec4(o.w4 + i), weight_vec4(o.w5 + i), weight_vec4(o.w6 + i), weight_vec4(o.w7 + i),
    );
}

// Adds input vec4 `i` of the eight rows times the weight column to the accumulators, row by row
// (the order of operations every variant of this kernel keeps).
fn accumulate(acc: ptr<function, BatchAccumulators>, o: BatchOperands, i: u32, w: WeightColumn) {
    let scale = input_weight(i);
    let raw0 = input_vec4(o.x0, i);
    (*acc).squares_low.x = add_squares((*acc).squares_low.x, raw0);
    let y0 = raw0 * scale;
    (*acc).p0 += dots(w.a, w.b, w.c, w.d, y0);
    (*acc).p1 += dots(w.e, w.f, w.g, w.h, y0);
    let raw1 = input_vec4(o.x1, i);
    (*acc).squares_low.y = add_squares((*acc).squares_low.y, raw1);
    let y1 = raw1 * scale;
    (*acc).p2 += dots(w.a, w.b, w.c, w.d, y1);
    (*acc).p3 += dots(w.e, w.f, w.g, w.h, y1);
    let raw2 = input_vec4(o.x2, i);
    (*acc).squares_low.z = add_squares((*acc).squares_low.z, raw2);
    let y2 = raw2 * scale;
    (*acc).p4 += dots(w.a, w.b, w.c, w.d, y2);
    (*acc).p5 += dots(w.e, w.f, w.g, w.h, y2);
    let raw3 = input_vec4(o.x3, i);
    (*acc).squares_low.w = add_squares((*acc).squares_low.w, raw3);
    let y3 = raw3 * scale;
    (*acc).p6 += dots(w.a, w.b, w.c, w.d, y3);
    (*acc).p7 += dots(w.e, w.f, w.g, w.h, y3);
    let raw4 = input_vec4(o.x4, i);
    (*acc).squares_high.x = add_squares((*acc).squares_high.x, raw4);
    let y4 = raw4 * scale;
    (*acc).p8 += dots(w.a, w.b, w.c, w.d, y4);
    (*acc).p9 += dots(w.e, w.f, w.g, w.h, y4);
    let raw5 = input_vec4(o.x5, i);
    (*acc).squares_high.y = add_squares((*acc).squares_high.y, raw5);
    let y5 = raw5 * scale;
    (*acc).p10 += dots(w.a, w.b, w.c, w.d, y5);
    (*acc).p11 += dots(w.e, w.f, w.g, w.h, y5);
    let raw6 = input_vec4(o.x6, i);
    (*acc).squares_high.z = add_squares((*acc).squares_high.z, raw6);
    let y6 = raw6 * scale;
    (*acc).p12 += dots(w.a, w.b, w.c, w.d, y6);
    (*acc).p13 += dots(w.e, w.f, w.g, w.h, y6);
    let raw7 = input_vec4(o.x7, i);
    (*acc).squares_high.w = add_squares((*acc).squares_high.w, raw7);
    let y7 = raw7 * scale;
    (*acc).p14 += dots(w.a, w.b, w.c, w.d, y7);
    (*acc).p15 += dots(w.e, w.f, w.g, w.h, y7);
}

// Partial sums of (x ⊙ input_weight) · w over this invocation's input positions i = lane,
// lane + WORKGROUP_SIZE, …, in that order. Two positions per iteration, both weight columns
// loaded before either is used: with in_dim = 2 048 an invocation has only four positions, and
// one column's 8 loads at a time left the kernel waiting on memory latency (0.8 TB/s on the
// H200, docs/perf-notes.md, stop 27). The order of the additions is the one-at-a-time order.
fn matvec_batch_partial_sums(lane: u32, first_output: u32, first_row: u32) -> BatchPartials {
    let in4 = params.in_dim / 4u;
    let stride4 = params.weight_stride / 4u;
    let last_output = params.out_dim - 1u;
    let last_row = params.rows - 1u;
    let o = BatchOperands(
        min(first_output, last_output) * stride4,
        min(first_output + 1u, last_output) * stride4,
        min(first_output + 2u, last_output) * stride4,
        min(first_output + 3u, last_output) * stride4,
        min(first_output + 4u, last_output) * stride4,
        min(first_output + 5u, last_output) * stride4,
        min(first_output + 6u, last_output) * stride4,
        min(first_output + 7u, last_output) * stride4,
        params.x_row_start + min(first_row, last_row),
        params.x_row_start + min(first_row + 1u, last_row),
        params.x_row_start + min(first_row + 2u, last_row),
        params.x_row_start + min(first_row + 3u, last_row),
        params.x_row_start + min(first_row + 4u, last_row),
        params.x_row_start + min(first_row + 5u, last_row),
        params.x_row_start + min(first_row + 6u, last_row),
        params.x_row_start + min(first_row + 7u, last_row),
    );
    let zero = vec4<f32>(0.0);
    var acc = BatchAccumulators(
        zero, zero, zero, zero, zero, zero, zero, zero,
        zero, zero, zero, zero, zero, zero, zero, zero,
        zero, zero,
    );
    var i = lane;
    for (; i + WORKGROUP_SIZE < in4; i += 2u * WORKGROUP_SIZE) {
        let first = weight_column(o, i);
        let second = weight_column(o, i + WORKGROUP_SIZE);
        accumulate(&acc, o, i, first);
        accumulate(&acc, o, i + WORKGROUP_SIZE, second);
    }
    if i < in4 {
        accumulate(&acc, o, i, weight_column(o, i));
    }
    let sums = array<vec4<f32>, ENTRIES>(
        acc.p0, acc.p1, acc.p2, acc.p3, acc.p4, acc.p5, acc.p6, acc.p7,
        acc.p8, acc.p9, acc.p10, acc.p11, acc.p12, acc.p13, acc.p14, acc.p15,
    );
    return BatchPartials(sums, acc.squares_low, acc.squares_high);
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
