// Parallel retention: P = (Q Kᵀ ⊙ D) V with D_nm = γ^(n−m) for m ≤ n, computed on the fly per
// BLOCK×BLOCK tile of (query, key) pairs: no T×T buffer, memory O(T·V). Starts from a zero state
// and leaves the state buffer alone (use the chunkwise form to obtain the final state).
// Each workgroup: BLOCK queries of one head × BLOCK·COLUMNS_PER_INVOCATION value columns; the
// score tile is recomputed for each column tile.

// Queries and keys per tile; the workgroup is BLOCK × BLOCK invocations.
override BLOCK: u32 = 16u;
// A private array cannot be sized by an override, so this is a const.
const COLUMNS_PER_INVOCATION: u32 = 4u;

@group(0) @binding(6) var<storage, read_write> output: array<f32>;

var<workgroup> q_tile: array<f32, BLOCK * (BLOCK + 1u)>;
var<workgroup> k_tile: array<f32, BLOCK * (BLOCK + 1u)>;
var<workgroup> scores: array<f32, BLOCK * BLOCK>;
var<workgroup> v_tile: array<f32, BLOCK * BLOCK * COLUMNS_PER_INVOCATION>;

// Grid: (ceil(tokens / BLOCK), query_heads, ceil(value_dim / (BLOCK·COLUMNS_PER_INVOCATION))).
@compute @workgroup_size(BLOCK, BLOCK)
fn retention_parallel(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let row = lid.y;
    let col = lid.x;
    let head = wid.y;
    let kv_head = kv_head_of(head);
    let tokens = params.tokens;
    let key_dim = params.key_dim;
    let tile_columns = BLOCK * COLUMNS_PER_INVOCATION;
    let first_query = wid.x * BLOCK;
    let first_column = wid.z * tile_columns;
    let log_gamma = log_decay[head];
    let n = first_query + row;
    let stride = BLOCK + 1u;

    var acc: array<f32, COLUMNS_PER_INVOCATION>;
    // Causal: keys past this block's last query contribute nothing.
    let key_end = min(first_query + BLOCK, tokens);
    for (var first_key = 0u; first_key < key_end; first_key += BLOCK) {
        // Invocation (row, col) computes the score of query n with key first_key + col.
        var score = 0.0;
        for (var k0 = 0u; k0 < key_dim; k0 += BLOCK) {
            var q_value = 0.0;
            var k_value = 0.0;
            if first_query + row < tokens && k0 + col < key_dim {
                q_value = q_at(first_query + row, head, k0 + col);
            }
            if first_key + row < tokens && k0 + col < key_dim {
                k_value = k_at(first_key + row, kv_head, k0 + col);
            }
            q_tile[row * stride + col] = q_value;
            k_tile[row * stride + col] = k_value;
            workgroupBarrier();
            for (var i = 0u; i < BLOCK; i++) {
                score = fma(q_tile[row * stride + i], k_tile[col * stride + i], score);
            }
            workgroupBarrier();
        }
        let m = first_key + col;
        var masked = 0.0;
        if m <= n && n < tokens {
            // decay_mask: γ^(n−m); exactly 1 when log γ = 0.
            masked = score * exp(f32(n - m) * log_gamma);
        }
        scores[row * BLOCK + col] = masked;
        for (var e = lane; e < BLOCK * tile_columns; e += BLOCK * BLOCK) {
            let key_row = e / tile_columns;
            let column = first_column + e % tile_columns;
            var value = 0.0;
            if first_key + key_row < tokens && column < params.value_dim {
                value = v_at(first_key + key_row, kv_head, column);
            }
            v_tile[e] = value;
        }
        workgroupBarrier();
        for (var j = 0u; j < BLOCK; j++) {
            let weight = scores[row * BLOCK + j];
            for (var c = 0u; c < COLUMNS_PER_INVOCATION; c++) {
                acc[c] = fma(weight, v_tile[j * tile_columns + col + c * BLOCK], acc[c]);
            }
        }
        workgroupBarrier();
    }
    if n < tokens {
        let scale = output_scale(log_gamma, params.start_pos + n);
        for (var c = 0u; c < COLUMNS_PER_INVOCATION; c++) {
            let column = first_column + col + c * BLOCK;
            if column < params.value_dim {
                output[output_index(n, head, column)] = acc[c] * scale;
            }
        }
    }
}
