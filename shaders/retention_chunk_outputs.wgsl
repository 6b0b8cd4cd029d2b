// Chunk-parallel retention, pass 2 of 2: every chunk's outputs at once, from the state before it
// (pass 1, retention_chunk_states.wgsl). Token i of a chunk starting at local token s, with S the
// state before the chunk, gets
//   P = γ^(i+1) q_i S + Σ_{j ≤ i} γ^(i−j) (q_i · k_j) v_j.
// Each workgroup owns one chunk, one head and a COLUMNS-wide slice of the value columns.

// [chunks, query_heads, K, V].
@group(0) @binding(5) var<storage, read> chunk_states: array<f32>;
@group(0) @binding(6) var<storage, read_write> output: array<f32>;

override CHUNK_SIZE: u32 = 32u;
// Value columns per workgroup.
override COLUMNS: u32 = 64u;
override WORKGROUP_SIZE: u32 = 256u;

// Decay-masked scores of the chunk: [i][j] = γ^(i−j) (q_i · k_j) for j ≤ i, else 0.
var<workgroup> scores: array<f32, CHUNK_SIZE * CHUNK_SIZE>;
var<workgroup> v_chunk: array<f32, CHUNK_SIZE * COLUMNS>;
// γ^0 .. γ^CHUNK_SIZE.
var<workgroup> decay_powers: array<f32, CHUNK_SIZE + 1u>;

// Grid: (ceil(value_dim / COLUMNS), chunks, query_heads).
@compute @workgroup_size(WORKGROUP_SIZE)
fn retention_chunk_outputs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let head = wid.z;
    let kv_head = kv_head_of(head);
    let chunk = wid.y;
    let start = chunk * CHUNK_SIZE;
    let len = min(CHUNK_SIZE, params.tokens - start);
    let first_column = wid.x * COLUMNS;
    let columns = min(COLUMNS, params.value_dim - first_column);
    let key_dim = params.key_dim;
    let log_gamma = log_decay[head];
    let state_base = chunk * params.query_heads * key_dim * params.value_dim;

    for (var i = lane; i <= CHUNK_SIZE; i += WORKGROUP_SIZE) {
        decay_powers[i] = exp(f32(i) * log_gamma);
    }
    workgroupBarrier();
    for (var e = lane; e < CHUNK_SIZE * CHUNK_SIZE; e += WORKGROUP_SIZE) {
        let i = e / CHUNK_SIZE;
        let j = e % CHUNK_SIZE;
        var value = 0.0;
        if i < len && j <= i {
            var dot_qk = 0.0;
            for (var r = 0u; r < key_dim; r++) {
                dot_qk = fma(q_at(start + i, head, r), k_at(start + j, kv_head, r), dot_qk);
            }
            value = dot_qk * decay_powers[i - j];
        }
        scores[e] = value;
    }
    for (var e = lane; e < CHUNK_SIZE * COLUMNS; e += WORKGROUP_SIZE) {
        let j = e / COLUMNS;
        let c = e % COLUMNS;
        var value = 0.0;
        if j < len && c < columns {
            value = v_at(start + j, kv_head, first_column + c);
        }
        v_chunk[e] = value;
    }
    workgroupBarrier();

    for (var e = lane; e < len * COLUMNS; e += WORKGROUP_SIZE) {
        let i = e / COLUMNS;
        let c = e % COLUMNS;
        if c < columns {
            var cross = 0.0;
            for (var r = 0u; r < key_dim; r++) {
                cross = fma(q_at(start + i, head, r), chunk_states[state_base + state_index(head, r, first_column + c)], cross);
            }
            var intra = 0.0;
            for (var j = 0u; j <= i; j++) {
                intra = fma(scores[i * CHUNK_SIZE + j], v_chunk[j * COLUMNS + c], intra);
            }
            let value = decay_powers[i + 1u] * cross + intra;
            let position = params.start_pos + start + i;
            output[output_index(start + i, head, first_column + c)] = value * output_scale(log_gamma, position);
        }
    }
}
