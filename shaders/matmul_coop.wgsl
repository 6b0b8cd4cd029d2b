// Tensor-core matmul: Y[r, :] (= α·Y[r, :] +) X16[r, :] · Wᵀ with cooperative matrices (16×16×16,
// f16 inputs, f32 accumulators). Preceded by linear_common.wgsl; the runtime checks the shape
// (in_dim and out_dim multiples of 64) and pads X16 and Y to whole blocks of BLOCK_ROWS rows, so
// no tile needs a bounds check: cooperative loads and stores must stay in uniform control flow.
//
// A workgroup is 4 subgroups of 32 (the runtime only selects this kernel where subgroups are 32
// wide); each subgroup owns a 64 × 64 block of Y as 4 × 4 accumulator tiles, loading its A and B
// tiles straight from storage (the L1 cache shares them between the subgroups that read them).
// Subgroups are stacked along rows: the workgroup covers BLOCK_ROWS × 64.

@group(0) @binding(1) var<storage, read> weight: array<f16>;
// X converted to f16 by to_f16.wgsl, [padded rows, in_dim], rows past `rows` zero.
@group(0) @binding(2) var<storage, read> input: array<f16>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

const BLOCK_ROWS: u32 = 256u;

// Tile (i, j) of the subgroup's block: its initial value, α·Y or zero.
fn initial_tile(row: u32, col: u32) -> coop_mat16x16<f32, C> {
    let index = row * params.out_dim + col;
    var tile: coop_mat16x16<f32, C>;
    if params.accumulate != 0u {
        tile = params.alpha * coopLoadT<coop_mat16x16<f32, C>>(&output[index], params.out_dim);
    }
    return tile;
}

// Grid: (out_dim / 64, padded rows / BLOCK_ROWS).
@compute @workgroup_size(128)
fn matmul_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_id) subgroup: u32) {
    let n = params.out_dim;
    let k_dim = params.in_dim;
    let row0 = wid.y * BLOCK_ROWS + subgroup * 64u;
    let col0 = wid.x * 64u;
    let r1 = row0 + 16u;
    let r2 = row0 + 32u;
    let r3 = row0 + 48u;
    let c1 = col0 + 16u;
    let c2 = col0 + 32u;
    let c3 = col0 + 48u;

    var y00 = initial_tile(row0, col0);
    var y01 = initial_tile(row0, c1);
    var y02 = initial_tile(row0, c2);
    var y03 = initial_tile(row0, c3);
    var y10 = initial_tile(r1, col0);
    var y11 = initial_tile(r1, c1);
    var y12 = initial_tile(r1, c2);
    var y13 = initial_tile(r1, c3);
    var y20 = initial_tile(r2, col0);
    var y21 = initial_tile(r2, c1);
    var y22 = initial_tile(r2, c2);
    var y23 = initial_tile(r2, c3);
    var y30 = initial_tile(r3, col0);
    var y31 = initial_tile(r3, c1);
    var y32 = initial_tile(r3, c2);
    var y33 = initial_tile(r3, c3);

    for (var k = 0u; k < k_dim; k += 16u) {
        // Indices are bound with `let` before `&buffer[index]`: naga 30's SPIR-V writer does not
        // emit an index expression written inline in a cooperative load's or store's pointer.
        // A: rows of X16, row-major. B = Wᵀ: W is [out, in] row-major, so column-major loads of
        // W give Wᵀ tiles.
        let at_a0 = row0 * k_dim + k;
        let a0 = coopLoadT<coop_mat16x16<f16, A>>(&input[at_a0], k_dim);
        let at_a1 = r1 * k_dim + k;
        let a1 = coopLoadT<coop_mat16x16<f16, A>>(&input[at_a1], k_dim);
        let at_a2 = r2 * k_dim + k;
        let a2 = coopLoadT<coop_mat16x16<f16, A>>(&input[at_a2], k_dim);
        let at_a3 = r3 * k_dim + k;
        let a3 = coopLoadT<coop_mat16x16<f16, A>>(&input[at_a3], k_dim);
        let at_b0 = col0 * k_dim + k;
        let b0 = coopLoad<coop_mat16x16<f16, B>>(&weight[at_b0], k_dim);
        let at_b1 = c1 * k_dim + k;
        let b1 = coopLoad<coop_mat16x16<f16, B>>(&weight[at_b1], k_dim);
        let at_b2 = c2 * k_dim + k;
        let b2 = coopLoad<coop_mat16x16<f16, B>>(&weight[at_b2], k_dim);
        let at_b3 = c3 * k_dim + k;
        let b3 = coopLoad<coop_mat16x16<f16, B>>(&weight[at_b3], k_dim);
        y00 = coopMultiplyAdd(a0, b0, y00);
        y01 = coopMultiplyAdd(a0, b1, y01);
        y02 = coopMultiplyAdd(a0, b2, y02);
        y03 = coopMultiplyAdd(a0, b3, y03);
        y10 = coopMultiplyAdd(a1, b0, y10);
        y11 = coopMultiplyAdd(a1, b1, y11);
        y12 = coopMultiplyAdd(a1, b2, y12);
        y13 = coopMultiplyAdd(a1, b3, y13);
        y20 = coopMultiplyAdd(a2, b0, y20);
        y21 = coopMultiplyAdd(a2, b1, y21);
        y22 = coopMultiplyAdd(a2, b2, y22);
        y23 = coopMultiplyAdd(a2, b3, y23);
        y30 = coopMultiplyAdd(a3, b0, y30);
        y31 = coopMultiplyAdd(a3, b1, y31);
        y32 = coopMultiplyAdd(a3, b2, y32);
        y33 = coopMultiplyAdd(a3, b3, y33);
    }

    let at_y00 = row0 * n + col0;
    coopStoreT(y00, &output[at_y00], n);
    let at_y01 = row0 * n + c1;
    coopStoreT(y01, &output[at_y01], n);
    let at_y02 = row0 * n + c2;
    coopStoreT(y02, &output[at_y02], n);
    let at_y03 = row0 * n + c3;
    coopStoreT(y03, &output[at_y03], n);
    let at_y10 = r1 * n + col0;
    coopStoreT(y10, &output[at_y10], n);
    let at_y11 = r1 * n + c1;
    coopStoreT(y11, &output[at_y11], n);
    let at_y12 = r1 * n + c2;
    coopStoreT(y12, &output[at_y12], n);
    let at_y13 = r1 * n + c3;
    coopStoreT(y13, &output[at_y13], n);
    let at_y20 = r2 * n + col0;
    coopStoreT(y20, &output[at_y20], n);
    let at_y21 = r2 * n + c1;
    coopStoreT(y21, &output[at_y21], n);
    let at_y22 = r2 * n + c2;
    coopStoreT(y22, &output[at_y22], n);
    let at_y23 = r2 * n + c3;
    coopStoreT(y23, &output[at_y23], n);
    let at_y30 = r3 * n + col0;
    coopStoreT(y30, &output[at_y30], n);
    let at_y31 = r3 * n + c1;
    coopStoreT(y31, &output[at_y31], n);
    let at_y32 = r3 * n + c2;
    coopStoreT(y32, &output[at_y32], n);
    let at_y33 = r3 * n + c3;
    coopStoreT(y33, &output[at_y33], n);
}
