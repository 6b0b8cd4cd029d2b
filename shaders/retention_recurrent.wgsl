// Recurrent retention, one token after another (decode: tokens = 1):
//   S ← γ S + kᵀ v;  P = q S,
// fused so that each state entry is read once and written once per token. Each value column is
// shared by SLICES invocations, each owning every SLICES-th row of S; their partial q·S sums are
// added through workgroup memory. The rows are walked in rounds of COLUMNS × SLICES with (q̂, k̂)
// staged in workgroup memory and the state loads of 4 rows before their stores
// (retention_recurrent_rows.wgsl, shared with the batched kernel).

@group(0) @binding(5) var<storage, read_write> state: array<f32>;
@group(0) @binding(6) var<storage, read_write> output: array<f32>;

// Value columns per workgroup (one per invocation along x).
override COLUMNS: u32 = 8u;
// Invocations per column (along y).
override SLICES: u32 = 32u;

var<workgroup> partial_sums: array<f32, COLUMNS * SLICES>;

// Grid: (ceil(value_dim / COLUMNS), query_heads).
@compute @workgroup_size(COLUMNS, SLICES)
fn retention_recurrent(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) index: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let head = wid.y;
    let kv_head = kv_head_of(head);
    let column = wid.x * COLUMNS + lid.x;
    let slice = lid.y;
    let log_gamma = log_decay[head];
    let decay = decay_minus_one(log_gamma);
    let in_range = column < params.value_dim;
    let base = state_index(head, 0u, column);

    for (var t = 0u; t < params.tokens; t++) {
        let position = params.start_pos + t;
        var v_value = 0.0;
        if in_range {
            v_value = value_at(t, kv_head, column);
        }
        var acc = 0.0;
        // Barriers in uniform control flow: the round loop's bounds come from params only.
        for (var r0 = 0u; r0 < params.key_dim; r0 += COLUMNS * SLICES) {
            stage_round(t, head, kv_head, r0, index, position);
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
            output[output_index(t, head, column)] = sum * output_scale(log_gamma, position);
        }
        workgroupBarrier();
    }
}
