// Chunk-parallel retention, pass 1a: each chunk's own contribution to the state,
//   U_c = Σ_{j < L} γ^(L−1−j) k_jᵀ v_j   (L: the chunk's length),
// for every chunk at once, written to chunk_states[c] (pass 1b, retention_chunk_scan.wgsl, turns
// these into the state before each chunk). A small matrix product per chunk: each workgroup owns
// a 64 × 64 tile of [K, V] for one chunk and head, walks the chunk's tokens in slices of 16 staged
// in workgroup memory, and each of its 256 invocations keeps a 4 × 4 tile in vec4 registers
// (rows ty + 16m, columns tx + 16n).

// [chunks, query_heads, K, V].
@group(0) @binding(6) var<storage, read_write> chunk_states: array<f32>;

override CHUNK_SIZE: u32 = 64u;
const TILE: u32 = 64u;
const SLICE: u32 = 16u;

// γ^(L−1−j) k_j[r0 + r] and v_j[c0 + c] for a slice of 16 tokens.
var<workgroup> k_slice: array<f32, SLICE * TILE>;
var<workgroup> v_slice: array<f32, SLICE * TILE>;

// Grid: (ceil(K / 64) · ceil(V / 64), chunks, query_heads).
@compute @workgroup_size(256)
fn retention_chunk_updates(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let head = wid.z;
    let kv_head = kv_head_of(head);
    let chunk = wid.y;
    let start = chunk * CHUNK_SIZE;
    let len = min(CHUNK_SIZE, params.tokens - start);
    let column_tiles = (params.value_dim + TILE - 1u) / TILE;
    let r0 = (wid.x / column_tiles) * TILE;
    let c0 = (wid.x % column_tiles) * TILE;
    let log_gamma = log_decay[head];
    let tx = lane % 16u;
    let ty = lane / 16u;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var j0 = 0u; j0 < len; j0 += SLICE) {
        for (var e = lane; e < SLICE * TILE; e += 256u) {
            let j = j0 + e / TILE;
            let x = e % TILE;
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
            k_slice[e] = kv;
            v_slice[e] = vv;
        }
        workgroupBarrier();
        for (var jj = 0u; jj < SLICE; jj++) {
            let base = jj * TILE;
            let v = vec4<f32>(v_slice[base + tx], v_slice[base + tx + 16u], v_slice[base + tx + 32u], v_slice[base + tx + 48u]);
            acc0 = fma(vec4<f32>(k_slice[base + ty]), v, acc0);
            acc1 = fma(vec4<f32>(k_slice[base + ty + 16u]), v, acc1);
            acc2 = fma(vec4<f32>(k_slice[base + ty + 32u]), v, acc2);
            acc3 = fma(vec4<f32>(k_slice[base + ty + 48u]), v, acc3);
        }
        workgroupBarrier();
    }
    let base = chunk * params.query_heads * params.key_dim * params.value_dim;
    store_update(base, head, r0 + ty, c0 + tx, acc0);
    store_update(base, head, r0 + ty + 16u, c0 + tx, acc1);
    store_update(base, head, r0 + ty + 32u, c0 + tx, acc2);
    store_update(base, head, r0 + ty + 48u, c0 + tx, acc3);
}

// Row r, columns c, c + 16, c + 32, c + 48 of the chunk's update.
fn store_update(base: u32, head: u32, r: u32, c: u32, values: vec4<f32>) {
    if r >= params.key_dim {
        return;
    }
    for (var n = 0u; n < 4u; n++) {
        let column = c + 16u * n;
        if column < params.value_dim {
            chunk_states[base + state_index(head, r, column)] = values[n];
        }
    }
}
