// The row walk of the recurrent kernels (retention_recurrent.wgsl, retention_recurrent_batched.wgsl,
// which declare COLUMNS, SLICES and `state`), shared so that the four recurrent kernels update a
// state entry and sum q·S in the same order of operations.
//
// The K rows of S are taken in rounds of COLUMNS × SLICES rows. Per round, each invocation stages
// (q̂_r, k̂_r) of one row in workgroup memory (stage_round: one rotation per row per workgroup,
// not one per value column), a barrier, then each invocation updates its rows of the round
// reading them from there (round_rows), and a barrier before the next round overwrites them.
// round_rows walks its rows in groups of 4 with the four state loads first, so that no load
// waits behind a store to the same buffer: one DRAM round trip per group, not per row.

// (q̂, k̂) of the current round's rows: row r0 + i at i.
var<workgroup> round_qk: array<vec2<f32>, COLUMNS * SLICES>;

// Stages (q̂, k̂) of row r0 + index of `token` (index: the local invocation index). Every
// invocation of the workgroup calls it, then a barrier.
fn stage_round(token: u32, head: u32, kv_head: u32, r0: u32, index: u32, position: u32) {
    let r = r0 + index;
    if r < params.key_dim {
        round_qk[index] = query_key(token, head, kv_head, r, position);
    }
}

// One invocation's rows of the round starting at r0: r0 + slice, r0 + slice + SLICES, …, in
// increasing order, the state entry of row r at base + r·V:
//   S ← γ S + k̂ᵀ v;  acc += q̂ S,
// returning acc. Four named registers (not a private array, which NVIDIA's compiler put in local
// memory, 3× slower) hold a group's state entries between its loads and its stores.
fn round_rows(base: u32, r0: u32, slice: u32, decay: f32, v_value: f32, acc_in: f32) -> f32 {
    var acc = acc_in;
    let rows = min(COLUMNS * SLICES, params.key_dim - r0);
    let step = SLICES * params.value_dim;
    var i = slice;
    for (; i + 3u * SLICES < rows; i += 4u * SLICES) {
        let x0 = base + (r0 + i) * params.value_dim;
        let x1 = x0 + step;
        let x2 = x1 + step;
        let x3 = x2 + step;
        let s0 = state[x0];
        let s1 = state[x1];
        let s2 = state[x2];
        let s3 = state[x3];
        let qk0 = round_qk[i];
        let qk1 = round_qk[i + SLICES];
        let qk2 = round_qk[i + 2u * SLICES];
        let qk3 = round_qk[i + 3u * SLICES];
        let n0 = decay_state(decay, s0, qk0.y * v_value);
        let n1 = decay_state(decay, s1, qk1.y * v_value);
        let n2 = decay_state(decay, s2, qk2.y * v_value);
        let n3 = decay_state(decay, s3, qk3.y * v_value);
        state[x0] = n0;
        state[x1] = n1;
        state[x2] = n2;
        state[x3] = n3;
        acc = fma(qk0.x, n0, acc);
        acc = fma(qk1.x, n1, acc);
        acc = fma(qk2.x, n2, acc);
        acc = fma(qk3.x, n3, acc);
    }
    for (; i < rows; i += SLICES) {
        let x = base + (r0 + i) * params.value_dim;
        let qk = round_qk[i];
        let s = decay_state(decay, state[x], qk.y * v_value);
        state[x] = s;
        acc = fma(qk.x, s, acc);
    }
    return acc;
}
