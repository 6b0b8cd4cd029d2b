// Batched recurrent retention (decode of many sessions in one dispatch): row b of q, k, v and the
// output is one token of its own sequence, at absolute position positions[b] (for the c_n scale),
// whose state is slot slots[b] of a pool laid out [slot, query_heads, K, V] f32. `tokens` is the
// number of rows B; start_pos is not used. Per row, the same fused step as
// retention_recurrent.wgsl, in the same order of operations (so a row gives the same bits as the
// unbatched kernel run on that sequence alone):
//   S ← γ S + kᵀ v;  P = q S,
// each state entry read once and written once, rows walked in rounds with (q̂, k̂) staged in
// workgroup memory (retention_recurrent_rows.wgsl, shared with the unbatched kernel). Two rows
// must not name the same slot.

@group(0) @binding(5) var<storage, read> positions: array<u32>;
@group(0) @binding(6) var<storage, read> slots: array<u32>;
@group(0) @binding(7) var<storage, read_write> state: array<f32>;
@group(0) @binding(8) var<storage, read_write> output: array<f32>;

// Value columns per workgroup (one per invocation along x).
override COLUMNS: u32 = 32u;
// Invocations per column (along y).
override SLICES: u32 = 8u;

var<workgroup> partial_sums: array<f32, COLUMNS * SLICES>;

// Grid: (ceil(value_dim / COLUMNS), query_heads, rows).
@compute @workgroup_size(COLUMNS, SLICES)
fn retention_recurrent_batched(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) index: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let head = wid.y;
    let row = wid.z;
    let kv_head = kv_head_of(head);
    let column = wid.x * COLUMNS + lid.x;
    let slice = lid.y;
    let log_gamma = log_decay[head];
    let decay = decay_minus_one(log_gamma);
    let row_in_range = row < params.tokens;
    let in_range = column < params.value_dim && row_in_range;
    // Start of this row's state for this head: the pool slot, then [H, K, V] as in state_index.
    let slot_base = slots[row] * params.query_heads * params.key_dim * params.value_dim;
    let base = slot_base + state_index(head, 0u, column);

    var v_value = 0.0;
    if in_range {
        v_value = value_at(row, kv_head, column);
    }
    var acc = 0.0;
    // Barriers in uniform control flow: the round loop's bounds come from params only.
    for (var r0 = 0u; r0 < params.key_dim; r0 += COLUMNS * SLICES) {
        if row_in_range {
            stage_round(row, head, kv_head, r0, index, positions[row]);
        }
        workgroupBarrier();
        if in_range {
            acc = round_rows(base, r0, slice, decay, v_value, acc);
        }
        workgroupBarrier();
    }
    partial_sums[slice * COLUMNS + lid.x] = acc;
    workgroupBarrier();
    if slice == 0u && in_range {
        var sum = 0.0;
        for (var i = 0u; i < SLICES; i++) {
            sum += partial_sums[i * COLUMNS + lid.x];
        }
        output[output_index(row, head, column)] = sum * output_scale(log_gamma, positions[row]);
    }
}
