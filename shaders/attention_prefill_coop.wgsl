// Tiled prefill on cooperative matrices (tensor cores), joined after a gemm_coop_tile*.wgsl file
// (TILE, TileA, TileB, TileC), coop_split.wgsl and attention_common.wgsl: the same attention as
// attention_prefill.wgsl — online softmax, no T×T buffer — with the two products per key block,
// S = Q·Kᵀ and O += P·V, as cooperative-matrix multiply-adds.
//
// Precision: each f32 operand x is split into f16 hi ≈ x and lo = f16(x − hi), and each
// product is hi·hi + hi·lo + lo·hi accumulated in f32 (the lo·lo term is below f32's rounding of
// the sum): scores and outputs come out as accurate as the f32 kernel's, where plain f16
// operands would perturb every softmax weight by ~|score|·2⁻¹⁰. Operands are clamped to f16's
// range first.
//
// One workgroup is one subgroup (WORKGROUP_SIZE = the adapter's subgroup size) and computes
// BQ = 2·TILE queries of one head, walking the keys they see in blocks of BK = 2·TILE. Q (scaled,
// split) stays in workgroup memory; per key block, K and V are staged split, S is multiplied
// into workgroup memory, each query row's running maximum and sum are updated by the lanes
// (masking keys outside its window), P = exp(S − max) is written split, O (f32, in workgroup
// memory) is rescaled by the correction and P·V added on the tensor cores. Rows past the
// queries and dims past head_dim are staged as zeros, so every tile is whole and cooperative
// operations stay in uniform control flow. HEAD_DIM_PAD (an override: the head dim rounded up
// to a tile) sizes the arrays.

override WORKGROUP_SIZE: u32 = 32u;
override HEAD_DIM_PAD: u32 = 16u;

const BQ: u32 = 2u * TILE;
const BK: u32 = 2u * TILE;

var<workgroup> q_hi: array<f16, BQ * HEAD_DIM_PAD>;
var<workgroup> q_lo: array<f16, BQ * HEAD_DIM_PAD>;
var<workgroup> k_hi: array<f16, BK * HEAD_DIM_PAD>;
var<workgroup> k_lo: array<f16, BK * HEAD_DIM_PAD>;
var<workgroup> v_hi: array<f16, BK * HEAD_DIM_PAD>;
var<workgroup> v_lo: array<f16, BK * HEAD_DIM_PAD>;
var<workgroup> p_hi: array<f16, BQ * BK>;
var<workgroup> p_lo: array<f16, BQ * BK>;
var<workgroup> s_tile: array<f32, BQ * BK>;
var<workgroup> o_acc: array<f32, BQ * HEAD_DIM_PAD>;
var<workgroup> row_max: array<f32, BQ>;
var<workgroup> row_sum: array<f32, BQ>;

// Grid: (ceil(queries / BQ), heads).
@compute @workgroup_size(WORKGROUP_SIZE)
fn attention_prefill_coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let head = wid.y;
    let dim = params.head_dim;
    let kv_head = head / (params.heads / params.kv_heads);
    let kv_width = params.kv_heads * dim;
    let q0 = wid.x * BQ;
    let first_query = params.start_pos + q0;
    let last_query = params.start_pos + min(params.queries, q0 + BQ) - 1u;

    for (var i = lid; i < BQ * HEAD_DIM_PAD; i += WORKGROUP_SIZE) {
        let r = i / HEAD_DIM_PAD;
        let d = i % HEAD_DIM_PAD;
        var x = 0.0;
        if q0 + r < params.queries && d < dim {
            x = q[params.q_offset + (q0 + r) * params.q_stride + head * dim + d] * params.scale;
        }
        let parts = split(x);
        q_hi[i] = parts.x;
        q_lo[i] = parts.y;
        o_acc[i] = 0.0;
    }
    for (var r = lid; r < BQ; r += WORKGROUP_SIZE) {
        row_max[r] = NO_MAX;
        row_sum[r] = 0.0;
    }
    workgroupBarrier();

    let k_tiles = HEAD_DIM_PAD / TILE;
    for (var start = first_key(first_query); start <= last_query; start += BK) {
        // Stage keys start..start+BK (zeros past the last query: they are masked below).
        for (var i = lid; i < BK * HEAD_DIM_PAD; i += WORKGROUP_SIZE) {
            let j = i / HEAD_DIM_PAD;
            let d = i % HEAD_DIM_PAD;
            var k = 0.0;
            var v = 0.0;
            if start + j <= last_query && d < dim {
                let at = key_at(start + j, kv_head, d);
                k = cache[at];
                v = cache[at + kv_width];
            }
            let k_parts = split(k);
            k_hi[i] = k_parts.x;
            k_lo[i] = k_parts.y;
            let v_parts = split(v);
            v_hi[i] = v_parts.x;
            v_lo[i] = v_parts.y;
        }
        workgroupBarrier();

        // S = Q·Kᵀ: K's rows staged as they are, so column-major loads give Kᵀ tiles.
        for (var ti = 0u; ti < BQ / TILE; ti++) {
            for (var tj = 0u; tj < BK / TILE; tj++) {
                var acc: TileC;
                for (var kt = 0u; kt < k_tiles; kt++) {
                    let at_q = ti * TILE * HEAD_DIM_PAD + kt * TILE;
                    let at_k = tj * TILE * HEAD_DIM_PAD + kt * TILE;
                    let a_hi = coopLoadT<TileA>(&q_hi[at_q], HEAD_DIM_PAD);
                    let a_lo = coopLoadT<TileA>(&q_lo[at_q], HEAD_DIM_PAD);
                    let b_hi = coopLoad<TileB>(&k_hi[at_k], HEAD_DIM_PAD);
                    let b_lo = coopLoad<TileB>(&k_lo[at_k], HEAD_DIM_PAD);
                    acc = coopMultiplyAdd(a_hi, b_hi, acc);
                    acc = coopMultiplyAdd(a_hi, b_lo, acc);
                    acc = coopMultiplyAdd(a_lo, b_hi, acc);
                }
                let at_s = ti * TILE * BK + tj * TILE;
                coopStoreT(acc, &s_tile[at_s], BK);
            }
        }
        workgroupBarrier();

        // Online softmax, one query row per lane: new maximum, correction, P = exp(S − max).
        for (var r = lid; r < BQ; r += WORKGROUP_SIZE) {
            let p = params.start_pos + q0 + r;
            let valid_row = q0 + r < params.queries;
            let lo = first_key(p);
            var block_max = NO_MAX;
            for (var j = 0u; j < BK; j++) {
                let m = start + j;
                if valid_row && m >= lo && m <= p {
                    block_max = max(block_max, s_tile[r * BK + j]);
                }
            }
            let old_max = row_max[r];
            let new_max = max(old_max, block_max);
            let correction = exp(old_max - new_max);
            var sum = 0.0;
            for (var j = 0u; j < BK; j++) {
                let m = start + j;
                var w = 0.0;
                if valid_row && m >= lo && m <= p {
                    w = exp(s_tile[r * BK + j] - new_max);
                }
                sum += w;
                let w_parts = split(w);
                p_hi[r * BK + j] = w_parts.x;
                p_lo[r * BK + j] = w_parts.y;
            }
            row_max[r] = new_max;
            row_sum[r] = row_sum[r] * correction + sum;
            for (var d = 0u; d < HEAD_DIM_PAD; d++) {
                o_acc[r * HEAD_DIM_PAD + d] *= correction;
            }
        }
        workgroupBarrier();

        // O += P·V: V's rows (keys) staged row-major are B's rows.
        for (var ti = 0u; ti < BQ / TILE; ti++) {
            for (var td = 0u; td < k_tiles; td++) {
                let at_o = ti * TILE * HEAD_DIM_PAD + td * TILE;
                var acc = coopLoadT<TileC>(&o_acc[at_o], HEAD_DIM_PAD);
                for (var kt = 0u; kt < BK / TILE; kt++) {
                    let at_p = ti * TILE * BK + kt * TILE;
                    let at_v = kt * TILE * HEAD_DIM_PAD + td * TILE;
                    let a_hi = coopLoadT<TileA>(&p_hi[at_p], BK);
                    let a_lo = coopLoadT<TileA>(&p_lo[at_p], BK);
                    let b_hi = coopLoadT<TileB>(&v_hi[at_v], HEAD_DIM_PAD);
                    let b_lo = coopLoadT<TileB>(&v_lo[at_v], HEAD_DIM_PAD);
                    acc = coopMultiplyAdd(a_hi, b_hi, acc);
                    acc = coopMultiplyAdd(a_hi, b_lo, acc);
                    acc = coopMultiplyAdd(a_lo, b_hi, acc);
                }
                coopStoreT(acc, &o_acc[at_o], HEAD_DIM_PAD);
            }
        }
        workgroupBarrier();
    }

    for (var i = lid; i < BQ * HEAD_DIM_PAD; i += WORKGROUP_SIZE) {
        let r = i / HEAD_DIM_PAD;
        let d = i % HEAD_DIM_PAD;
        if q0 + r < params.queries && d < dim {
            out[params.out_offset + (q0 + r) * params.out_stride + head * dim + d] =
                o_acc[i] / row_sum[r];
        }
    }
}
