// Chunk-parallel retention, pass 2, on cooperative matrices (tensor cores): the same outputs as
// retention_chunk_outputs.wgsl,
//   P_i = γ^(i+1) q_i S + Σ_{j ≤ i} γ^(i−j) (q_i · k_j) v_j,
// with the three products — scores Q·Kᵀ, the cross-chunk term Q·S and the intra-chunk sum
// (masked, decayed scores)·V — as cooperative-matrix multiply-adds. Joined after a
// gemm_coop_tile*.wgsl file (TILE, TileA, TileB, TileC), coop_split.wgsl and retention_common.wgsl.
//
// Precision as attention_prefill_coop.wgsl: every operand split into f16 hi + lo, each product
// hi·hi + hi·lo + lo·hi in f32, so the outputs are as accurate as the f32 kernel's (f16 alone
// would lose ~3 digits). The decay factors are f32 scalars applied between the products.
//
// One workgroup is one subgroup (WORKGROUP_SIZE = the adapter's subgroup size) and owns one
// chunk (CHUNK_SIZE ≤ 32 tokens, padded to CHUNK_PAD, a multiple of the tile), one head and
// COLUMNS = 32 value columns. K is walked in slices of 2·TILE staged in workgroup memory; the
// scores and the cross term accumulate in workgroup memory between slices. Rows past the chunk,
// key dims past K and columns past V are staged as zeros, so every tile is whole.

// [chunks, query_heads, K, V].
@group(0) @binding(5) var<storage, read> chunk_states: array<f32>;
@group(0) @binding(6) var<storage, read_write> output: array<f32>;

override WORKGROUP_SIZE: u32 = 32u;
override CHUNK_SIZE: u32 = 32u;
// CHUNK_SIZE rounded up to a multiple of TILE.
override CHUNK_PAD: u32 = 32u;
const COLUMNS: u32 = 32u;
const SLICE: u32 = 2u * TILE;

var<workgroup> q_hi: array<f16, CHUNK_PAD * SLICE>;
var<workgroup> q_lo: array<f16, CHUNK_PAD * SLICE>;
var<workgroup> k_hi: array<f16, CHUNK_PAD * SLICE>;
var<workgroup> k_lo: array<f16, CHUNK_PAD * SLICE>;
var<workgroup> s_hi: array<f16, SLICE * COLUMNS>;
var<workgroup> s_lo: array<f16, SLICE * COLUMNS>;
// Scores Q·Kᵀ [CHUNK_PAD, CHUNK_PAD]; after the masking, the intra-chunk sum [CHUNK_PAD, COLUMNS]
// (as many values when CHUNK_PAD ≤ COLUMNS, which CHUNK_SIZE ≤ 32 ensures).
var<workgroup> scores: array<f32, CHUNK_PAD * COLUMNS>;
// Q·S [CHUNK_PAD, COLUMNS].
var<workgroup> cross_term: array<f32, CHUNK_PAD * COLUMNS>;
var<workgroup> p_hi: array<f16, CHUNK_PAD * CHUNK_PAD>;
var<workgroup> p_lo: array<f16, CHUNK_PAD * CHUNK_PAD>;
var<workgroup> v_hi: array<f16, CHUNK_PAD * COLUMNS>;
var<workgroup> v_lo: array<f16, CHUNK_PAD * COLUMNS>;

// Grid: (ceil(value_dim / COLUMNS), chunks, query_heads).
@compute @workgroup_size(WORKGROUP_SIZE)
fn retention_chunk_outputs_coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let head = wid.z;
    let kv_head = kv_head_of(head);
    let start = wid.y * CHUNK_SIZE;
    let len = min(CHUNK_SIZE, params.tokens - start);
    let first_column = wid.x * COLUMNS;
    let key_dim = params.key_dim;
    let log_gamma = log_decay[head];
    let state_base = wid.y * params.query_heads * key_dim * params.value_dim;
    let row_tiles = CHUNK_PAD / TILE;

    for (var e = lane; e < CHUNK_PAD * COLUMNS; e += WORKGROUP_SIZE) {
        scores[e] = 0.0;
        cross_term[e] = 0.0;
    }
    workgroupBarrier();

    for (var r0 = 0u; r0 < key_dim; r0 += SLICE) {
        for (var e = lane; e < CHUNK_PAD * SLICE; e += WORKGROUP_SIZE) {
            let i = e / SLICE;
            let r = r0 + e % SLICE;
            var qv = 0.0;
            var kv = 0.0;
            if i < len && r < key_dim {
                qv = q_at(start + i, head, r);
                kv = k_at(start + i, kv_head, r);
            }
            let qs = split(qv);
            q_hi[e] = qs.x;
            q_lo[e] = qs.y;
            let ks = split(kv);
            k_hi[e] = ks.x;
            k_lo[e] = ks.y;
        }
        for (var e = lane; e < SLICE * COLUMNS; e += WORKGROUP_SIZE) {
            let r = r0 + e / COLUMNS;
            let c = first_column + e % COLUMNS;
            var value = 0.0;
            if r < key_dim && c < params.value_dim {
                value = chunk_states[state_base + state_index(head, r, c)];
            }
            let ss = split(value);
            s_hi[e] = ss.x;
            s_lo[e] = ss.y;
        }
        workgroupBarrier();
        for (var ti = 0u; ti < row_tiles; ti++) {
            // Scores: K's rows staged as they are, so column-major loads give Kᵀ tiles.
            for (var tj = 0u; tj < row_tiles; tj++) {
                let at = ti * TILE * CHUNK_PAD + tj * TILE;
                var acc = coopLoadT<TileC>(&scores[at], CHUNK_PAD);
                for (var kk = 0u; kk < SLICE; kk += TILE) {
                    let at_q = ti * TILE * SLICE + kk;
                    let at_k = tj * TILE * SLICE + kk;
                    let a_hi = coopLoadT<TileA>(&q_hi[at_q], SLICE);
                    let a_lo = coopLoadT<TileA>(&q_lo[at_q], SLICE);
                    let b_hi = coopLoad<TileB>(&k_hi[at_k], SLICE);
                    let b_lo = coopLoad<TileB>(&k_lo[at_k], SLICE);
                    acc = coopMultiplyAdd(a_hi, b_hi, acc);
                    acc = coopMultiplyAdd(a_hi, b_lo, acc);
                    acc = coopMultiplyAdd(a_lo, b_hi, acc);
                }
                coopStoreT(acc, &scores[at], CHUNK_PAD);
            }
            // The cross term: S's rows (key dims) are B's rows.
            for (var tc = 0u; tc < COLUMNS / TILE; tc++) {
                let at = ti * TILE * COLUMNS + tc * TILE;
                var acc = coopLoadT<TileC>(&cross_term[at], COLUMNS);
                for (var kk = 0u; kk < SLICE; kk += TILE) {
                    let at_q = ti * TILE * SLICE + kk;
                    let at_s = kk * COLUMNS + tc * TILE;
                    let a_hi = coopLoadT<TileA>(&q_hi[at_q], SLICE);
                    let a_lo = coopLoadT<TileA>(&q_lo[at_q], SLICE);
                    let b_hi = coopLoadT<TileB>(&s_hi[at_s], COLUMNS);
                    let b_lo = coopLoadT<TileB>(&s_lo[at_s], COLUMNS);
                    acc = coopMultiplyAdd(a_hi, b_hi, acc);
                    acc = coopMultiplyAdd(a_hi, b_lo, acc);
                    acc = coopMultiplyAdd(a_lo, b_hi, acc);
                }
                coopStoreT(acc, &cross_term[at], COLUMNS);
            }
        }
        workgroupBarrier();
    }

    // Masked, decayed scores γ^(i−j) (q_i · k_j) for j ≤ i < len, and the chunk's values.
    for (var e = lane; e < CHUNK_PAD * CHUNK_PAD; e += WORKGROUP_SIZE) {
        let i = e / CHUNK_PAD;
        let j = e % CHUNK_PAD;
        var w = 0.0;
        if i < len && j <= i {
            w = scores[e] * exp(f32(i - j) * log_gamma);
        }
        let ws = split(w);
        p_hi[e] = ws.x;
        p_lo[e] = ws.y;
    }
    for (var e = lane; e < CHUNK_PAD * COLUMNS; e += WORKGROUP_SIZE) {
        let j = e / COLUMNS;
        let c = first_column + e % COLUMNS;
        var value = 0.0;
        if j < len && c < params.value_dim {
            value = v_at(start + j, kv_head, c);
        }
        let vs = split(value);
        v_hi[e] = vs.x;
        v_lo[e] = vs.y;
    }
    workgroupBarrier();

    // The intra-chunk sum into `scores` (no longer needed as scores).
    for (var ti = 0u; ti < row_tiles; ti++) {
        for (var tc = 0u; tc < COLUMNS / TILE; tc++) {
            var acc: TileC;
            for (var kt = 0u; kt < row_tiles; kt++) {
                let at_p = ti * TILE * CHUNK_PAD + kt * TILE;
                let at_v = kt * TILE * COLUMNS + tc * TILE;
                let a_hi = coopLoadT<TileA>(&p_hi[at_p], CHUNK_PAD);
                let a_lo = coopLoadT<TileA>(&p_lo[at_p], CHUNK_PAD);
                let b_hi = coopLoadT<TileB>(&v_hi[at_v], COLUMNS);
                let b_lo = coopLoadT<TileB>(&v_lo[at_v], COLUMNS);
                acc = coopMultiplyAdd(a_hi, b_hi, acc);
                acc = coopMultiplyAdd(a_hi, b_lo, acc);
                acc = coopMultiplyAdd(a_lo, b_hi, acc);
            }
            coopStoreT(acc, &scores[ti * TILE * COLUMNS + tc * TILE], COLUMNS);
        }
    }
    workgroupBarrier();

    for (var e = lane; e < CHUNK_PAD * COLUMNS; e += WORKGROUP_SIZE) {
        let i = e / COLUMNS;
        let c = first_column + e % COLUMNS;
        if i < len && c < params.value_dim {
            let value = exp(f32(i + 1u) * log_gamma) * cross_term[e] + scores[e];
            let scale = output_scale(log_gamma, params.start_pos + start + i);
            output[output_index(start + i, head, c)] = value * scale;
        }
    }
}
