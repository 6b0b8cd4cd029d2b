// Tensor-core GEMM: Y[r, :] (= α·Y[r, :] +) X[x_row_start + r, :] · Wᵀ on cooperative matrices,
// for any shape. Preceded by linear_common.wgsl and one gemm_coop_tile*.wgsl file, which gives the
// tile side TILE and the tile types TileA, TileB (f16) and TileC (f32): the same body serves the
// 8×8 and the 16×16 tiles.
//
// A workgroup computes a BLOCK_M × BLOCK_N block of Y (8 × 8 tiles: 128 × 128 with 16×16 tiles,
// 64 × 64 with 8×8 ones) as SUB_BLOCKS sub-blocks of 4 × 4 tiles, one per subgroup. Along K it
// walks steps of K_STEP = 2 tiles: every invocation copies its share of the step's X rows
// (converted to f16 here, clamped to f16's range: no separate conversion pass) and W rows into
// workgroup memory, double-buffered (the next step is staged while the current one is multiplied,
// one barrier per step). Elements past the shape's edges are staged as zeros, so no tile reads
// out of bounds and cooperative operations stay in uniform control flow as they must.
//
// Blocks wholly inside Y are stored straight from the accumulators; blocks on an edge go tile by
// tile through a per-subgroup tile of workgroup memory and are written element by element with
// bounds checks. The workgroup has WORKGROUP_SIZE = SUB_BLOCKS × the adapter's subgroup size
// invocations; should the driver run wider subgroups (fewer of them), the sub-blocks are computed
// in several rounds, so any subgroup size gives the right result.
//
// Workgroups are visited in groups of GROUP_M block rows, column by column within a group, so
// that consecutive workgroups share their W columns and X rows in the cache.

@group(0) @binding(1) var<storage, read> weight: array<f16>;
@group(0) @binding(2) var<storage, read> input: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

override WORKGROUP_SIZE: u32 = 128u;

const SUBS_M: u32 = 2u;
const SUBS_N: u32 = 2u;
const SUB_BLOCKS: u32 = SUBS_M * SUBS_N;
// A sub-block's side: 4 tiles.
const SUB: u32 = 4u * TILE;
const BLOCK_M: u32 = SUBS_M * SUB;
const BLOCK_N: u32 = SUBS_N * SUB;
const K_STEP: u32 = 2u * TILE;
// Staged rows are K_STEP halves plus 8 (16 bytes): rows start in different memory banks, and
// every tile's start and stride stay 16-byte aligned as cooperative loads require.
const STRIDE: u32 = K_STEP + 8u;
const STAGE_A: u32 = BLOCK_M * STRIDE;
const STAGE_B: u32 = BLOCK_N * STRIDE;
const GROUP_M: u32 = 8u;
const F16_MAX: f32 = 65504.0;

// Two buffers each: X rows [BLOCK_M, STRIDE] and W rows [BLOCK_N, STRIDE].
var<workgroup> stage_a: array<f16, 2u * STAGE_A>;
var<workgroup> stage_b: array<f16, 2u * STAGE_B>;
// One TILE × TILE tile per subgroup for edge blocks.
var<workgroup> edge_tiles: array<f32, SUB_BLOCKS * TILE * TILE>;
var<workgroup> subgroup_count: u32;

// Copies K step [k0, k0 + K_STEP) of the block's X rows (as f16) and W rows into buffer `slot`.
fn stage(slot: u32, row_base: u32, col_base: u32, k0: u32, lid: u32) {
    let k_dim = params.in_dim;
    for (var i = lid; i < BLOCK_M * K_STEP; i += WORKGROUP_SIZE) {
        let r = i / K_STEP;
        let k = i % K_STEP;
        let row = row_base + r;
        var value = 0.0;
        if row < params.rows && k0 + k < k_dim {
            value = clamp(input[(params.x_row_start + row) * k_dim + k0 + k], -F16_MAX, F16_MAX);
        }
        stage_a[slot * STAGE_A + r * STRIDE + k] = f16(value);
    }
    for (var i = lid; i < BLOCK_N * K_STEP; i += WORKGROUP_SIZE) {
        let c = i / K_STEP;
        let k = i % K_STEP;
        let col = col_base + c;
        var value = f16(0.0);
        if col < params.out_dim && k0 + k < k_dim {
            value = weight[col * k_dim + k0 + k];
        }
        stage_b[slot * STAGE_B + c * STRIDE + k] = value;
    }
}

// α·Y of the tile at (row, col), for blocks wholly inside Y.
fn initial_tile(row: u32, col: u32) -> TileC {
    let index = output_index(row, col);
    return params.alpha * coopLoadT<TileC>(&output[index], params.y_stride);
}

// Writes one accumulator tile of an edge block: through the subgroup's tile of workgroup memory,
// then element by element inside Y (nothing if this subgroup's sub-block is a repeat, `!owned`).
fn store_bounded(tile: TileC, row0: u32, col0: u32, owned: bool, subgroup: u32, lane: u32, lanes: u32) {
    let at = subgroup * TILE * TILE;
    coopStoreT(tile, &edge_tiles[at], TILE);
    workgroupBarrier();
    if owned {
        for (var e = lane; e < TILE * TILE; e += lanes) {
            let row = row0 + e / TILE;
            let col = col0 + e % TILE;
            if row < params.rows && col < params.out_dim {
                store_output(output_index(row, col), edge_tiles[at + e]);
            }
        }
    }
    workgroupBarrier();
}

// Grid: (ceil(out_dim / BLOCK_N), ceil(rows / BLOCK_M)).
@compute @workgroup_size(WORKGROUP_SIZE)
fn gemm_coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
) {
    // The subgroup count is the same for the whole workgroup; loading it through workgroup memory
    // makes that visible to the uniformity analysis.
    if lid == 0u {
        subgroup_count = subgroups;
    }
    let count = workgroupUniformLoad(&subgroup_count);
    let n = params.out_dim;

    // Grouped order: GROUP_M block rows at a time, walked column by column.
    let blocks_m = (params.rows + BLOCK_M - 1u) / BLOCK_M;
    let blocks_n = (n + BLOCK_N - 1u) / BLOCK_N;
    let id = wid.y * groups.x + wid.x;
    let per_group = GROUP_M * blocks_n;
    let first_m = (id / per_group) * GROUP_M;
    let group_rows = min(blocks_m - first_m, GROUP_M);
    let row_base = (first_m + (id % per_group) % group_rows) * BLOCK_M;
    let col_base = ((id % per_group) / group_rows) * BLOCK_N;

    // Stored straight from the accumulators: the whole block inside Y, one sub-block per
    // subgroup, rows and the first column 16-byte aligned.
    let stride = params.y_stride;
    let direct = count == SUB_BLOCKS && row_base + BLOCK_M <= params.rows
        && col_base + BLOCK_N <= n && stride % 4u == 0u && params.y_col_start % 4u == 0u;
    let rounds = (SUB_BLOCKS + count - 1u) / count;
    let steps = (params.in_dim + K_STEP - 1u) / K_STEP;

    for (var round = 0u; round < rounds; round++) {
        let index = round * count + subgroup;
        let owned = index < SUB_BLOCKS;
        let sub = min(index, SUB_BLOCKS - 1u);
        let sub_row = (sub / SUBS_N) * SUB;
        let sub_col = (sub % SUBS_N) * SUB;
        let r0 = row_base + sub_row;
        let r1 = r0 + TILE;
        let r2 = r0 + 2u * TILE;
        let r3 = r0 + 3u * TILE;
        let c0 = col_base + sub_col;
        let c1 = c0 + TILE;
        let c2 = c0 + 2u * TILE;
        let c3 = c0 + 3u * TILE;

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

        stage(0u, row_base, col_base, 0u, lid);
        workgroupBarrier();
        for (var s = 0u; s < steps; s++) {
            let slot = s % 2u;
            if s + 1u < steps {
                stage(1u - slot, row_base, col_base, (s + 1u) * K_STEP, lid);
            }
            // Indices are bound with `let` before `&array[index]`: naga 30's SPIR-V writer does
            // not emit an index expression written inline in a cooperative load's pointer.
            // A: X rows, row-major. B = Wᵀ: W's rows are staged as they are, so column-major
            // loads give Wᵀ tiles.
            let a_base = slot * STAGE_A + sub_row * STRIDE;
            let b_base = slot * STAGE_B + sub_col * STRIDE;
            for (var kk = 0u; kk < K_STEP; kk += TILE) {
                let at_a0 = a_base + 0u * TILE * STRIDE + kk;
                let a0 = coopLoadT<TileA>(&stage_a[at_a0], STRIDE);
                let at_a1 = a_base + 1u * TILE * STRIDE + kk;
                let a1 = coopLoadT<TileA>(&stage_a[at_a1], STRIDE);
                let at_a2 = a_base + 2u * TILE * STRIDE + kk;
                let a2 = coopLoadT<TileA>(&stage_a[at_a2], STRIDE);
                let at_a3 = a_base + 3u * TILE * STRIDE + kk;
                let a3 = coopLoadT<TileA>(&stage_a[at_a3], STRIDE);
                let at_b0 = b_base + 0u * TILE * STRIDE + kk;
                let b0 = coopLoad<TileB>(&stage_b[at_b0], STRIDE);
                let at_b1 = b_base + 1u * TILE * STRIDE + kk;
                let b1 = coopLoad<TileB>(&stage_b[at_b1], STRIDE);
                let at_b2 = b_base + 2u * TILE * STRIDE + kk;
                let b2 = coopLoad<TileB>(&stage_b[at_b2], STRIDE);
                let at_b3 = b_base + 3u * TILE * STRIDE + kk;
                let b3 = coopLoad<TileB>(&stage_b[at_b3], STRIDE);
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
            workgroupBarrier();
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
            store_bounded(y00, r0, c0, owned, subgroup, lane, lanes);
            store_bounded(y01, r0, c1, owned, subgroup, lane, lanes);
            store_bounded(y02, r0, c2, owned, subgroup, lane, lanes);
            store_bounded(y03, r0, c3, owned, subgroup, lane, lanes);
            store_bounded(y10, r1, c0, owned, subgroup, lane, lanes);
            store_bounded(y11, r1, c1, owned, subgroup, lane, lanes);
            store_bounded(y12, r1, c2, owned, subgroup, lane, lanes);
            store_bounded(y13, r1, c3, owned, subgroup, lane, lanes);
            store_bounded(y20, r2, c0, owned, subgroup, lane, lanes);
            store_bounded(y21, r2, c1, owned, subgroup, lane, lanes);
            store_bounded(y22, r2, c2, owned, subgroup, lane, lanes);
            store_bounded(y23, r2, c3, owned, subgroup, lane, lanes);
            store_bounded(y30, r3, c0, owned, subgroup, lane, lanes);
            store_bounded(y31, r3, c1, owned, subgroup, lane, lanes);
            store_bounded(y32, r3, c2, owned, subgroup, lane, lanes);
            store_bounded(y33, r3, c3, owned, subgroup, lane, lanes);
        }
    }
}
