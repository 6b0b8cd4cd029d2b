// Tensor-core matmul for few rows (batched decode): Y[r, :] (= α·Y[r, :] +) X16[r, :] · Wᵀ with
// cooperative matrices (16×16×16, f16 inputs, f32 accumulators), one 16-row block of Y per
// workgroup, so every weight is read once per 16 rows. Preceded by linear_common.wgsl; the
// runtime checks the shape (in_dim a multiple of 16, out_dim of 256) and pads X16 and Y to whole
// blocks of 16 rows, so no tile needs a bounds check (cooperative loads and stores must stay in
// uniform control flow). A workgroup is 4 subgroups of 32 side by side along the columns, each
// owning 16 × 64 of Y as four accumulator tiles.

@group(0) @binding(1) var<storage, read> weight: array<f16>;
// X converted to f16 by to_f16.wgsl, [padded rows, in_dim], rows past `rows` zero.
@group(0) @binding(2) var<storage, read> input: array<f16>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

// Tile (row, col) of Y before the products: α·Y or zero.
fn initial_thin_tile(row: u32, col: u32) -> coop_mat16x16<f32, C> {
    let index = row * params.out_dim + col;
    var tile: coop_mat16x16<f32, C>;
    if params.accumulate != 0u {
        tile = params.alpha * coopLoadT<coop_mat16x16<f32, C>>(&output[index], params.out_dim);
    }
    return tile;
}

// Grid: (out_dim / 256, padded rows / 16).
@compute @workgroup_size(128)
fn matmul_coop_thin(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_id) subgroup: u32) {
    let n = params.out_dim;
    let k_dim = params.in_dim;
    let row0 = wid.y * 16u;
    let col0 = wid.x * 256u + subgroup * 64u;
    let c1 = col0 + 16u;
    let c2 = col0 + 32u;
    let c3 = col0 + 48u;
    var y0 = initial_thin_tile(row0, col0);
    var y1 = initial_thin_tile(row0, c1);
    var y2 = initial_thin_tile(row0, c2);
    var y3 = initial_thin_tile(row0, c3);
    for (var k = 0u; k < k_dim; k += 16u) {
        // Indices bound with `let` first: naga 30's SPIR-V writer does not emit an index written
        // inline in a cooperative load's or store's pointer.
        let at_a = row0 * k_dim + k;
        let a = coopLoadT<coop_mat16x16<f16, A>>(&input[at_a], k_dim);
        let at_b0 = col0 * k_dim + k;
        let b0 = coopLoad<coop_mat16x16<f16, B>>(&weight[at_b0], k_dim);
        let at_b1 = c1 * k_dim + k;
        let b1 = coopLoad<coop_mat16x16<f16, B>>(&weight[at_b1], k_dim);
        let at_b2 = c2 * k_dim + k;
        let b2 = coopLoad<coop_mat16x16<f16, B>>(&weight[at_b2], k_dim);
        let at_b3 = c3 * k_dim + k;
        let b3 = coopLoad<coop_mat16x16<f16, B>>(&weight[at_b3], k_dim);
        y0 = coopMultiplyAdd(a, b0, y0);
        y1 = coopMultiplyAdd(a, b1, y1);
        y2 = coopMultiplyAdd(a, b2, y2);
        y3 = coopMultiplyAdd(a, b3, y3);
    }
    let at_y0 = row0 * n + col0;
    coopStoreT(y0, &output[at_y0], n);
    let at_y1 = row0 * n + c1;
    coopStoreT(y1, &output[at_y1], n);
    let at_y2 = row0 * n + c2;
    coopStoreT(y2, &output[at_y2], n);
    let at_y3 = row0 * n + c3;
    coopStoreT(y3, &output[at_y3], n);
}
