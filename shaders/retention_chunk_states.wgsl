// Chunk-parallel retention, pass 1 of 2: the state before each chunk of CHUNK_SIZE tokens,
//   chunk_states[c] = S before token c·CHUNK_SIZE,
// continuing from `state` and leaving the state after the last token there. Every state entry
// (head, row, column) is independent of the others, so the pass is parallel over all H·K·V
// entries and walks the tokens one by one with the recurrent update S ← γ S + k_r v_c (the same
// arithmetic as decoding, so prefill and decode agree to the bit on the state). Each invocation
// owns ROWS rows of one column: each v value it loads serves ROWS entries. Every loop over the
// rows has the constant bound ROWS (with a guard inside), so the compiler can unroll it and keep
// the rows in registers: a loop bounded at run time makes `s` a private array in local memory.

@group(0) @binding(5) var<storage, read_write> state: array<f32>;
// [chunks, query_heads, K, V].
@group(0) @binding(6) var<storage, read_write> chunk_states: array<f32>;

override CHUNK_SIZE: u32 = 64u;
// Value columns per workgroup (one per invocation).
override COLUMNS: u32 = 64u;
// A private array cannot be sized by an override.
const ROWS: u32 = 8u;

// Grid: (ceil(value_dim / COLUMNS), ceil(key_dim / ROWS), query_heads).
@compute @workgroup_size(COLUMNS)
fn retention_chunk_states(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let head = wid.z;
    let kv_head = kv_head_of(head);
    let column = wid.x * COLUMNS + lid.x;
    let first_row = wid.y * ROWS;
    if column >= params.value_dim {
        return;
    }
    let rows = min(ROWS, params.key_dim - first_row);
    let decay = decay_minus_one(log_decay[head]);
    let state_len = params.query_heads * params.key_dim * params.value_dim;
    var s: array<f32, ROWS>;
    for (var i = 0u; i < ROWS; i++) {
        if i < rows {
            s[i] = state[state_index(head, first_row + i, column)];
        }
    }
    for (var t = 0u; t < params.tokens; t++) {
        if t % CHUNK_SIZE == 0u {
            let base = (t / CHUNK_SIZE) * state_len;
            for (var i = 0u; i < ROWS; i++) {
                if i < rows {
                    chunk_states[base + state_index(head, first_row + i, column)] = s[i];
                }
            }
        }
        let v_value = v_at(t, kv_head, column);
        for (var i = 0u; i < ROWS; i++) {
            s[i] = decay_state(decay, s[i], k_at(t, kv_head, min(first_row + i, params.key_dim - 1u)) * v_value);
        }
    }
    for (var i = 0u; i < ROWS; i++) {
        if i < rows {
            state[state_index(head, first_row + i, column)] = s[i];
        }
    }
}
