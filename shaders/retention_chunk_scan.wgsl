// Chunk-parallel retention, pass 1b: turns each chunk's update U_c (pass 1a,
// retention_chunk_updates.wgsl) into the state before the chunk, in place,
//   chunk_states[c] ← S;  S ← γ^L S + U_c   (L: the chunk's length),
// starting from `state` and leaving the state after the last chunk there. Parallel over every
// state entry; each walks the chunks in order (a few dozen steps for a span).

@group(0) @binding(5) var<storage, read_write> state: array<f32>;
// [chunks, query_heads, K, V].
@group(0) @binding(6) var<storage, read_write> chunk_states: array<f32>;

override CHUNK_SIZE: u32 = 64u;
const COLUMNS: u32 = 64u;

// Grid: (ceil(value_dim / 64), key_dim, query_heads).
@compute @workgroup_size(COLUMNS)
fn retention_chunk_scan(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let head = wid.z;
    let column = wid.x * COLUMNS + lid.x;
    if column >= params.value_dim {
        return;
    }
    let index = state_index(head, wid.y, column);
    let state_len = params.query_heads * params.key_dim * params.value_dim;
    let log_gamma = log_decay[head];
    let chunks = (params.tokens + CHUNK_SIZE - 1u) / CHUNK_SIZE;
    // γ^L − 1 for a whole chunk and for the last one (see decay_state).
    let full = decay_minus_one(f32(CHUNK_SIZE) * log_gamma);
    let last = decay_minus_one(f32(params.tokens - (chunks - 1u) * CHUNK_SIZE) * log_gamma);
    var s = state[index];
    for (var c = 0u; c < chunks; c++) {
        let at = c * state_len + index;
        let update = chunk_states[at];
        chunk_states[at] = s;
        s = decay_state(select(full, last, c + 1u == chunks), s, update);
    }
    state[index] = s;
}
