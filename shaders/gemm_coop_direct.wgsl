// Tensor-core GEMM with every operand loaded straight from storage: Y[r, :] (= α·Y[r, :] +)
// X16[r, :] · Wᵀ on cooperative matrices. Preceded by linear_common.wgsl and one
// gemm_coop_tile*.wgsl file (TILE, TileA, TileB, TileC), as gemm_coop.wgsl is.
//
// Why a second GEMM: on NVIDIA's 16×16 tiles (H200, driver 580) gemm_coop.wgsl's products come
// out wrong as soon as an operand is read from workgroup memory in that kernel, while tiles read
// from storage are exact (docs/perf-notes.md, "The 16×16 gemm-coop on the H200"). Here no operand
// touches workgroup memory: the L1 cache shares each tile between the subgroups that read it.
//
// X16 is X in f16, made by to_f16.wgsl: [padded rows, in_dim], rows past `rows` zero, padded to
// whole blocks of BLOCK_M rows, so every A tile is inside it. W is [out_dim, in_dim] f16; the
// runtime only selects this kernel where in_dim and out_dim are multiples of TILE, so every B
// tile is inside a row range of W and 16-byte aligned. Tile columns of an edge block past
// out_dim are clamped onto the last tile of W (their products are computed and dropped), so no
// load leaves the buffer and cooperative operations stay in uniform control flow.
//
// A workgroup computes a BLOCK_M × BLOCK_N block of Y (8 × 8 tiles) as 2 × 2 sub-blocks of 4 × 4
// tiles, one per subgroup, walking K one tile at a time. Blocks wholly inside Y are stored
// straight from the accumulators; blocks on an edge go tile by tile through a tile of the
// `edge` storage buffer (a cooperative store to storage, as the full blocks' stores) and are
// written element by element with bounds checks. Workgroup memory is not used for this either:
// on the H200 a cooperative store to workgroup memory read back element by element came out
// wrong (verify at 49f0e51), as operands loaded from it did in gemm_coop.wgsl. Wider subgroups
// than the workgroup was sized for run the sub-blocks in rounds; workgroups are visited in
// groups of GROUP_M block rows.
//
// `edge` holds SUB_BLOCKS tiles per edge block: slot `bn` for the blocks of the last block row,
// slot `blocks_n + bm` for the other blocks of the last block column; when Y's stride or first
// column is not 4-aligned (every block goes through `edge`), slot `bm · blocks_n + bn`. Its
// length is gemm_coop_direct_edge_bytes on the host.

@group(0) @binding(1) var<storage, read> weight: array<f16>;
@group(0) @binding(2) var<storage, read> input: array<f16>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;
@group(0) @binding(4) var<storage, read_write> edge: array<f32>;

override WORKGROUP_SIZE: u32 = 128u;

const SUBS_M: u32 = 2u;
const SUBS_N: u32 = 2u;
const SUB_BLOCKS: u32 = SUBS_M * SUBS_N;
const SUB: u32 = 4u * TILE;
const BLOCK_M: u32 = SUBS_M * SUB;
const BLOCK_N: u32 = SUBS_N * SUB;
const GROUP_M: u32 = 8u;

var<workgroup> subgroup_count: u32;

// α·Y of the tile at (row, col), for blocks wholly inside Y.
fn initial_tile(row: u32, col: u32) -> TileC {
    let index = output_index(row, col);
    return params.alpha * coopLoadT<TileC>(&output[index], params.y_stride);
}

// The first column of W a tile starting at output column `col` reads: `col` itself, or for a
// tile wholly past out_dim the last tile of W.
fn weight_column(col: u32) -> u32 {
    return min(col, params.out_dim - TILE);
}

// Writes one accumulator tile of an edge block: into sub-block `sub`'s tile of the block's
// `edge` slot (at `at`), then element by element inside Y (nothing if this subgroup's sub-block
// is a repeat, `!owned`; a repeat stores the same values to the same tile, as it computed the
// same products).
fn store_bounded(tile: TileC, row0: u32, col0: u32, owned: bool, at: u32, lane: u32, lanes: u32) {
    coopStoreT(tile, &edge[at], TILE);
    storageBarrier();
    if owned {
        for (var e = lane; e < TILE * TILE; e += lanes) {
            let row = row0 + e / TILE;
            let col = col0 + e % TILE;
            if row < params.rows && col < params.out_dim {
                store_output(output_index(row, col), edge[at + e]);
            }
        }
    }
    storageBarrier();
}

// Grid: (ceil(out_dim / BLOCK_N), ceil(rows / BLOCK_M)).
@compute @workgroup_size(WORKGROUP_SIZE)
fn gemm_coop_direct(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
) {
    if lid == 0u {
        subgroup_count = subgroups;
    }
    let count = workgroupUniformLoad(&subgroup_count);
    let n = params.out_dim;
    let k_dim = params.in_dim;

    let blocks_m = (params.rows + BLOCK_M - 1u) / BLOCK_M;
    let blocks_n = (n + BLOCK_N - 1u) / BLOCK_N;
    let id = wid.y * groups.x + wid.x;
    let per_group = GROUP_M * blocks_n;
    let first_m = (id / per_group) * GROUP_M;
    let group_rows = min(blocks_m - first_m, GROUP_M);
    let row_base = (first_m + (id % per_group) % group_rows) * BLOCK_M;
    let col_base = ((id % per_group) / group_rows) * BLOCK_N;

    let stride = params.y_stride;
    // Without repeated sub-blocks (the subgroup count divides SUB_BLOCKS, as it does when the
    // device runs the subgroup size the workgroup was sized for) an inner block stores straight
    // from its accumulators; a repeat must not (it would read α·Y after its owner stored it).
    let no_repeats = SUB_BLOCKS % count == 0u;
    let aligned = stride % 4u == 0u && params.y_col_start % 4u == 0u;
    let direct = no_repeats && aligned && row_base + BLOCK_M <= params.rows
        && col_base + BLOCK_N <= n;
    let rounds = (SUB_BLOCKS + count - 1u) / count;
    let bm = row_base / BLOCK_M;
    let bn = col_base / BLOCK_N;
    var slot = bm * blocks_n + bn;
    if aligned && no_repeats {
        slot = select(blocks_n + bm, bn, bm == blocks_m - 1u);
    }

    for (var round = 0u; round < rounds; round++) {
        let index = round * count + subgroup;
        let owned = index < SUB_BLOCKS;
        let sub = min(index, SUB_BLOCKS - 1u);
        let at = (slot * SUB_BLOCKS + sub) * TILE * TILE;
        let r0 = row_base + (sub / SUBS_N) * SUB;
        let r1 = r0 + TILE;
        let r2 = r0 + 2u * TILE;
        let r3 = r0 + 3u * TILE;
        let c0 = col_base + (sub % SUBS_N) * SUB;
        let c1 = c0 + TILE;
        let c2 = c0 + 2u * TILE;
        let c3 = c0 + 3u * TILE;
        // Rows of W each B tile starts at (clamped on the edge; see weight_column).
        let w0 = weight_column(c0) * k_dim;
        let w1 = weight_column(c1) * k_dim;
        let w2 = weight_column(c2) * k_dim;
        let w3 = weight_column(c3) * k_dim;
        let x0 = r0 * k_dim;
        let x1 = r1 * k_dim;
        let x2 = r2 * k_dim;
        let x3 = r3 * k_dim;

        var y00: TileC;
        var y01: TileC;
        var y02: TileC;
        var y03: TileC;
        var y10: TileC;
        var y11: TileC;
        var y12: TileC;
        var y13: TileC;
        var y20: TileC;
        var y21: TileC;
        var y22: TileC;
        var y23: TileC;
        var y30: TileC;
        var y31: TileC;
        var y32: TileC;
        var y33: TileC;
        if direct && params.accumulate != 0u {
            y00 = initial_tile(r0, c0);
            y01 = initial_tile(r0, c1);
            y02 = initial_tile(r0, c2);
            y03 = initial_tile(r0, c3);
            y10 = initial_tile(r1, c0);
            y11 = initial_tile(r1, c1);
            y12 = initial_tile(r1, c2);
            y13 = initial_tile(r1, c3);
            y20 = initial_tile(r2, c0);
            y21 = initial_tile(r2, c1);
            y22 = initial_tile(r2, c2);
            y23 = initial_tile(r2, c3);
            y30 = initial_tile(r3, c0);
            y31 = initial_tile(r3, c1);
            y32 = initial_tile(r3, c2);
            y33 = initial_tile(r3, c3);
        }

        for (var k = 0u; k < k_dim; k += TILE) {
            // Indices are bound with `let` before `&buffer[index]`: naga 30's SPIR-V writer does
            // not emit an index expression written inline in a cooperative load's pointer.
            // A: rows of X16, row-major. B = Wᵀ: column-major loads of W's rows give Wᵀ tiles.
            let at_a0 = x0 + k;
            let a0 = coopLoadT<TileA>(&input[at_a0], k_dim);
            let at_a1 = x1 + k;
            let a1 = coopLoadT<TileA>(&input[at_a1], k_dim);
            let at_a2 = x2 + k;
            let a2 = coopLoadT<TileA>(&input[at_a2], k_dim);
            let at_a3 = x3 + k;
            let a3 = coopLoadT<TileA>(&input[at_a3], k_dim);
            let at_b0 = w0 + k;
            let b0 = coopLoad<TileB>(&weight[at_b0], k_dim);
            let at_b1 = w1 + k;
            let b1 = coopLoad<TileB>(&weight[at_b1], k_dim);
            let at_b2 = w2 + k;
            let b2 = coopLoad<TileB>(&weight[at_b2], k_dim);
            let at_b3 = w3 + k;
            let b3 = coopLoad<TileB>(&weight[at_b3], k_dim);
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

        if direct {
            let at_y00 = output_index(r0, c0);
            coopStoreT(y00, &output[at_y00], stride);
            let at_y01 = output_index(r0, c1);
            coopStoreT(y01, &output[at_y01], stride);
            let at_y02 = output_index(r0, c2);
            coopStoreT(y02, &output[at_y02], stride);
            let at_y03 = output_index(r0, c3);
            coopStoreT(y03, &output[at_y03], stride);
            let at_y10 = output_index(r1, c0);
            coopStoreT(y10, &output[at_y10], stride);
            let at_y11 = output_index(r1, c1);
            coopStoreT(y11, &output[at_y11], stride);
            let at_y12 = output_index(r1, c2);
            coopStoreT(y12, &output[at_y12], stride);
            let at_y13 = output_index(r1, c3);
            coopStoreT(y13, &output[at_y13], stride);
            let at_y20 = output_index(r2, c0);
            coopStoreT(y20, &output[at_y20], stride);
            let at_y21 = output_index(r2, c1);
            coopStoreT(y21, &output[at_y21], stride);
            let at_y22 = output_index(r2, c2);
            coopStoreT(y22, &output[at_y22], stride);
            let at_y23 = output_index(r2, c3);
            coopStoreT(y23, &output[at_y23], stride);
            let at_y30 = output_index(r3, c0);
            coopStoreT(y30, &output[at_y30], stride);
            let at_y31 = output_index(r3, c1);
            coopStoreT(y31, &output[at_y31], stride);
            let at_y32 = output_index(r3, c2);
            coopStoreT(y32, &output[at_y32], stride);
            let at_y33 = output_index(r3, c3);
            coopStoreT(y33, &output[at_y33], stride);
        } else {
            store_bounded(y00, r0, c0, owned, at, lane, lanes);
            store_bounded(y01, r0, c1, owned, at, lane, lanes);
            store_bounded(y02, r0, c2, owned, at, lane, lanes);
            store_bounded(y03, r0, c3, owned, at, lane, lanes);
            store_bounded(y10, r1, c0, owned, at, lane, lanes);
            store_bounded(y11, r1, c1, owned, at, lane, lanes);
            store_bounded(y12, r1, c2, owned, at, lane, lanes);
            store_bounded(y13, r1, c3, owned, at, lane, lanes);
            store_bounded(y20, r2, c0, owned, at, lane, lanes);
            store_bounded(y21, r2, c1, owned, at, lane, lanes);
            store_bounded(y22, r2, c2, owned, at, lane, lanes);
            store_bounded(y23, r2, c3, owned, at, lane, lanes);
            store_bounded(y30, r3, c0, owned, at, lane, lanes);
            store_bounded(y31, r3, c1, owned, at, lane, lanes);
            store_bounded(y32, r3, c2, owned, at, lane, lanes);
            store_bounded(y33, r3, c3, owned, at, lane, lanes);
        }
    }
}
