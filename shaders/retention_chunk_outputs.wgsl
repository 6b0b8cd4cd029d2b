// Chunk-parallel retention, pass 2: every chunk's outputs at once, from the state before it
// (passes 1a and 1b, retention_chunk_updates.wgsl and retention_chunk_scan.wgsl). Token i of a
// chunk, with S the state before the chunk, gets
//   P_i = γ^(i+1) q_i S + Σ_{j ≤ i} γ^(i−j) (q_i · k_j) v_j.
// Each workgroup owns one chunk (at most 64 tokens), one head and 64 value columns. Both q·kᵀ and
// q·S are small matrix products, computed as in matmul.wgsl: K is walked in slices of 16 staged
// in workgroup memory, and each of the 256 invocations keeps a 4 × 4 tile of scores and of
// outputs (rows ty + 16m, columns tx + 16n) in vec4 registers.

// [chunks, query_heads, K, V].
@group(0) @binding(5) var<storage, read> chunk_states: array<f32>;
@group(0) @binding(6) var<storage, read_write> output: array<f32>;

// At most 64 (four rows of 16 invocations).
override CHUNK_SIZE: u32 = 64u;
const COLUMNS: u32 = 64u;
const SLICE: u32 = 16u;
// Rows of the q and k slices padded by one against bank conflicts.
const SLICE_STRIDE: u32 = 17u;

var<workgroup> q_slice: array<f32, CHUNK_SIZE * SLICE_STRIDE>;
var<workgroup> k_slice: array<f32, CHUNK_SIZE * SLICE_STRIDE>;
var<workgroup> s_slice: array<f32, SLICE * COLUMNS>;
// Decay-masked scores: [i][j] = γ^(i−j) (q_i · k_j) for j ≤ i < len, else 0.
var<workgroup> scores: array<f32, CHUNK_SIZE * CHUNK_SIZE>;
var<workgroup> v_chunk: array<f32, CHUNK_SIZE * COLUMNS>;

fn masked_score(i: u32, j: u32, len: u32, log_gamma: f32, value: f32) -> f32 {
    if i < len && j <= i {
        return value * exp(f32(i - j) * log_gamma);
    }
    return 0.0;
}

// Grid: (ceil(value_dim / 64), chunks, query_heads).
@compute @workgroup_size(256)
fn retention_chunk_outputs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let head = wid.z;
    let kv_head = kv_head_of(head);
    let start = wid.y * CHUNK_SIZE;
    let len = min(CHUNK_SIZE, params.tokens - start);
    let first_column = wid.x * COLUMNS;
    let columns = min(COLUMNS, params.value_dim - first_column);
    let key_dim = params.key_dim;
    let log_gamma = log_decay[head];
    let state_base = wid.y * params.query_heads * key_dim * params.value_dim;
    let tx = lane % 16u;
    let ty = lane / 16u;

    // Scores (rows ty + 16m, columns tx + 16n) and the cross-chunk term q·S (rows ty + 16m,
    // value columns tx + 16n), accumulated over slices of K.
    var score0 = vec4<f32>(0.0);
    var score1 = vec4<f32>(0.0);
    var score2 = vec4<f32>(0.0);
    var score3 = vec4<f32>(0.0);
    var cross0 = vec4<f32>(0.0);
    var cross1 = vec4<f32>(0.0);
    var cross2 = vec4<f32>(0.0);
    var cross3 = vec4<f32>(0.0);
    for (var r0 = 0u; r0 < key_dim; r0 += SLICE) {
        for (var e = lane; e < CHUNK_SIZE * SLICE; e += 256u) {
            let i = e / SLICE;
            let r = r0 + e % SLICE;
            var qv = 0.0;
            var kv = 0.0;
            if i < len && r < key_dim {
                qv = q_at(start + i, head, r);
                kv = k_at(start + i, kv_head, r);
            }
            q_slice[i * SLICE_STRIDE + e % SLICE] = qv;
            k_slice[i * SLICE_STRIDE + e % SLICE] = kv;
        }
        for (var e = lane; e < SLICE * COLUMNS; e += 256u) {
            let r = r0 + e / COLUMNS;
            let c = e % COLUMNS;
            var value = 0.0;
            if r < key_dim && c < columns {
                value = chunk_states[state_base + state_index(head, r, first_column + c)];
            }
            s_slice[e] = value;
        }
        workgroupBarrier();
        for (var rr = 0u; rr < SLICE; rr++) {
            let q = vec4<f32>(
                q_row(ty, rr),
                q_row(ty + 16u, rr),
                q_row(ty + 32u, rr),
                q_row(ty + 48u, rr),
            );
            let k = vec4<f32>(k_row(tx, rr), k_row(tx + 16u, rr), k_row(tx + 32u, rr), k_row(tx + 48u, rr));
            let s = vec4<f32>(
                s_slice[rr * COLUMNS + tx],
                s_slice[rr * COLUMNS + tx + 16u],
                s_slice[rr * COLUMNS + tx + 32u],
                s_slice[rr * COLUMNS + tx + 48u],
            );
            score0 = fma(vec4<f32>(q.x), k, score0);
            score1 = fma(vec4<f32>(q.y), k, score1);
            score2 = fma(vec4<f32>(q.z), k, score2);
            score3 = fma(vec4<f32>(q.w), k, score3);
            cross0 = fma(vec4<f32>(q.x), s, cross0);
            cross1 = fma(vec4<f32>(q.y), s, cross1);
            cross2 = fma(vec4<f32>(q.z), s, cross2);
            cross3 = fma(vec4<f32>(q.w), s, cross3);
        }
        workgroupBarrier();
    }

    store_scores(ty, tx, len, log_gamma, score0);
    store_scores(ty + 16u, tx, len, log_gamma, score1);
    store_scores(ty + 32u, tx, len, log_gamma, score2);
    store_scores(ty + 48u, tx, len, log_gamma, score3);
    for (var e = lane; e < CHUNK_SIZE * COLUMNS; e += 256u) {
        let j = e / COLUMNS;
        let c = e % COLUMNS;
        var value = 0.0;
        if j < len && c < columns {
            value = v_at(start + j, kv_head, first_column + c);
        }
        v_chunk[e] = value;
    }
    workgroupBarrier();

    finish_row(ty, tx, start, len, head, first_column, columns, log_gamma, cross0);
    finish_row(ty + 16u, tx, start, len, head, first_column, columns, log_gamma, cross1);
    finish_row(ty + 32u, tx, start, len, head, first_column, columns, log_gamma, cross2);
    finish_row(ty + 48u, tx, start, len, head, first_column, columns, log_gamma, cross3);
}

fn q_row(i: u32, r: u32) -> f32 {
    if i < CHUNK_SIZE {
        return q_slice[i * SLICE_STRIDE + r];
    }
    return 0.0;
}

fn k_row(j: u32, r: u32) -> f32 {
    if j < CHUNK_SIZE {
        return k_slice[j * SLICE_STRIDE + r];
    }
    return 0.0;
}

// Scores of row i, columns tx, tx + 16, tx + 32, tx + 48.
fn store_scores(i: u32, tx: u32, len: u32, log_gamma: f32, values: vec4<f32>) {
    if i >= CHUNK_SIZE {
        return;
    }
    for (var n = 0u; n < 4u; n++) {
        let j = tx + 16u * n;
        if j < CHUNK_SIZE {
            scores[i * CHUNK_SIZE + j] = masked_score(i, j, len, log_gamma, values[n]);
        }
    }
}

// Output row i, value columns tx + 16n: γ^(i+1)·(q_i S) plus the intra-chunk sum, scaled.
fn finish_row(
    i: u32,
    tx: u32,
    start: u32,
    len: u32,
    head: u32,
    first_column: u32,
    columns: u32,
    log_gamma: f32,
    cross: vec4<f32>,
) {
    if i >= len {
        return;
    }
    var intra = vec4<f32>(0.0);
    for (var j = 0u; j <= i; j++) {
        let score = scores[i * CHUNK_SIZE + j];
        let v = vec4<f32>(
            v_chunk[j * COLUMNS + tx],
            v_chunk[j * COLUMNS + tx + 16u],
            v_chunk[j * COLUMNS + tx + 32u],
            v_chunk[j * COLUMNS + tx + 48u],
        );
        intra = fma(vec4<f32>(score), v, intra);
    }
    let value = exp(f32(i + 1u) * log_gamma) * cross + intra;
    let scale = output_scale(log_gamma, params.start_pos + start + i);
    for (var n = 0u; n < 4u; n++) {
        let c = tx + 16u * n;
        if c < columns {
            output[output_index(start + i, head, first_column + c)] = value[n] * scale;
        }
    }
}
