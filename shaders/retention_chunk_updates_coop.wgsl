// Chunk-parallel retention, pass 1a, on cooperative matrices (tensor cores): each chunk's own
// contribution to the state, as retention_chunk_updates.wgsl,
//   U_c = Σ_{j < L} γ^(L−1−j) k_jᵀ v_j   (L: the chunk's length),
// as one product (decayed K)ᵀ·V per chunk. Joined after a gemm_coop_tile*.wgsl file, coop_split.wgsl and
// retention_common.wgsl. Operands split into f16 hi + lo and multiplied hi·hi + hi·lo + lo·hi
// in f32 (as attention_prefill_coop.wgsl), so the update is as accurate as the f32 kernel's.
//
// One workgroup is one subgroup and owns a BLOCK × BLOCK tile of [K, V] (BLOCK = 32) for one
// chunk (CHUNK_SIZE ≤ 32 tokens, padded to CHUNK_PAD) and head: the chunk's keys (times their
// decay) and values are staged whole, each output tile is TILE × TILE accumulators over the
// chunk, written through workgroup memory with bounds checks (K and V need not be multiples of
// the tile).

// [chunks, query_heads, K, V].
@group(0) @binding(6) var<storage, read_write> chunk_states: array<f32>;

override WORKGROUP_SIZE: u32 = 32u;
override CHUNK_SIZE: u32 = 32u;
// CHUNK_SIZE rounded up to a multiple of TILE.
override CHUNK_PAD: u32 = 32u;
const BLOCK: u32 = 32u;

// γ^(L−1−j) k_j[r0 + r], token-major: [CHUNK_PAD, BLOCK]; read column-major as (decayed K)ᵀ.
var<workgroup> k_hi: array<f16, CHUNK_PAD * BLOCK>;
var<workgroup> k_lo: array<f16, CHUNK_PAD * BLOCK>;
// v_j[c0 + c]: [CHUNK_PAD, BLOCK].
var<workgroup> v_hi: array<f16, CHUNK_PAD * BLOCK>;
var<workgroup> v_lo: array<f16, CHUNK_PAD * BLOCK>;
var<workgroup> block_out: array<f32, BLOCK * BLOCK>;

// Grid: (ceil(K / BLOCK) · ceil(V / BLOCK), chunks, query_heads).
@compute @workgroup_size(WORKGROUP_SIZE)
fn retention_chunk_updates_coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let head = wid.z;
    let kv_head = kv_head_of(head);
    let chunk = wid.y;
    let start = chunk * CHUNK_SIZE;
    let len = min(CHUNK_SIZE, params.tokens - start);
    let column_blocks = (params.value_dim + BLOCK - 1u) / BLOCK;
    let r0 = (wid.x / column_blocks) * BLOCK;
    let c0 = (wid.x % column_blocks) * BLOCK;
    let log_gamma = log_decay[head];

    for (var e = lane; e < CHUNK_PAD * BLOCK; e += WORKGROUP_SIZE) {
        let j = e / BLOCK;
        let x = e % BLOCK;
        var kv = 0.0;
        var vv = 0.0;
        if j < len {
            if r0 + x < params.key_dim {
                kv = exp(f32(len - 1u - j) * log_gamma) * k_at(start + j, kv_head, r0 + x);
            }
            if c0 + x < params.value_dim {
                vv = v_at(start + j, kv_head, c0 + x);
            }
        }
        let ks = split(kv);
        k_hi[e] = ks.x;
        k_lo[e] = ks.y;
        let vs = split(vv);
        v_hi[e] = vs.x;
        v_lo[e] = vs.y;
    }
    workgroupBarrier();

    for (var tr = 0u; tr < BLOCK / TILE; tr++) {
        for (var tc = 0u; tc < BLOCK / TILE; tc++) {
            var acc: TileC;
            for (var jt = 0u; jt < CHUNK_PAD / TILE; jt++) {
                let at_k = jt * TILE * BLOCK + tr * TILE;
                let at_v = jt * TILE * BLOCK + tc * TILE;
                let a_hi = coopLoad<TileA>(&k_hi[at_k], BLOCK);
                let a_lo = coopLoad<TileA>(&k_lo[at_k], BLOCK);
                let b_hi = coopLoadT<TileB>(&v_hi[at_v], BLOCK);
                let b_lo = coopLoadT<TileB>(&v_lo[at_v], BLOCK);
                acc = coopMultiplyAdd(a_hi, b_hi, acc);
                acc = coopMultiplyAdd(a_hi, b_lo, acc);
                acc = coopMultiplyAdd(a_lo, b_hi, acc);
            }
            coopStoreT(acc, &block_out[tr * TILE * BLOCK + tc * TILE], BLOCK);
        }
    }
    workgroupBarrier();

    let base = chunk * params.query_heads * params.key_dim * params.value_dim;
    for (var e = lane; e < BLOCK * BLOCK; e += WORKGROUP_SIZE) {
        let r = r0 + e / BLOCK;
        let c = c0 + e % BLOCK;
        if r < params.key_dim && c < params.value_dim {
            chunk_states[base + state_index(head, r, c)] = block_out[e];
        }
    }
}
