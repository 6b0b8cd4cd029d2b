// Chunkwise retention over all `tokens` of one call, continuing from the state in `state` and
// leaving the state after the last token there. For a chunk of length L starting at local token s,
// with S the state before it, token i of the chunk gets
//   P = γ^(i+1) q_i S + Σ_{j ≤ i} γ^(i−j) (q_i · k_j) v_j,
// then S ← γ^L S + Σ_{j<L} γ^(L−1−j) k_jᵀ v_j.
// The chunks are walked sequentially inside one dispatch: each workgroup owns one head and a
// COLUMNS-wide slice of the value columns, and that slice of S depends only on the same columns of
// v, so workgroups never need each other. The state stays in the storage buffer (K·COLUMNS floats
// are too many for workgroup memory when K is large).

@group(0) @binding(5) var<storage, read_write> state: array<f32>;
@group(0) @binding(6) var<storage, read_write> output: array<f32>;

override CHUNK_SIZE: u32 = 32u;
// Value columns per workgroup.
override COLUMNS: u32 = 64u;
override WORKGROUP_SIZE: u32 = 256u;

// Decay-masked scores of the current chunk: [i][j] = γ^(i−j) (q_i · k_j) for j ≤ i, else 0.
var<workgroup> scores: array<f32, CHUNK_SIZE * CHUNK_SIZE>;
var<workgroup> v_chunk: array<f32, CHUNK_SIZE * COLUMNS>;
// γ^0 .. γ^CHUNK_SIZE.
var<workgroup> decay_powers: array<f32, CHUNK_SIZE + 1u>;

// Grid: (ceil(value_dim / COLUMNS), query_heads).
@compute @workgroup_size(WORKGROUP_SIZE)
fn retention_chunkwise(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let head = wid.y;
    let kv_head = kv_head_of(head);
    let first_column = wid.x * COLUMNS;
    let columns = min(COLUMNS, params.value_dim - first_column);
    let key_dim = params.key_dim;
    let log_gamma = log_decay[head];

    for (var i = lane; i <= CHUNK_SIZE; i += WORKGROUP_SIZE) {
        decay_powers[i] = exp(f32(i) * log_gamma);
    }
    workgroupBarrier();

    for (var start = 0u; start < params.tokens; start += CHUNK_SIZE) {
        let len = min(CHUNK_SIZE, params.tokens - start);

        // Intra-chunk scores (QKᵀ ⊙ D) and this workgroup's columns of v.
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

        // Outputs: cross-chunk term from the carried state plus the intra-chunk term.
        for (var e = lane; e < len * COLUMNS; e += WORKGROUP_SIZE) {
            let i = e / COLUMNS;
            let c = e % COLUMNS;
            if c < columns {
                var cross = 0.0;
                for (var r = 0u; r < key_dim; r++) {
                    cross = fma(q_at(start + i, head, r), state[state_index(head, r, first_column + c)], cross);
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
        // Every read of S above must finish before S is overwritten below.
        storageBarrier();

        // State update; each invocation owns the entries it writes. γ^L − 1 rather than γ^L:
        // see decay_state.
        let chunk_decay = decay_minus_one(f32(len) * log_gamma);
        for (var e = lane; e < key_dim * COLUMNS; e += WORKGROUP_SIZE) {
            let r = e / COLUMNS;
            let c = e % COLUMNS;
            if c < columns {
                var update = 0.0;
                for (var j = 0u; j < len; j++) {
                    update = fma(decay_powers[len - 1u - j] * k_at(start + j, kv_head, r), v_chunk[j * COLUMNS + c], update);
                }
                let index = state_index(head, r, first_column + c);
                state[index] = decay_state(chunk_decay, state[index], update);
            }
        }
        // The next chunk reads S written by other invocations and overwrites scores and v_chunk.
        storageBarrier();
        workgroupBarrier();
    }
}
