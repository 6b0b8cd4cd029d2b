// The FFN's input projection of a batch with its RMSNorm and its gating fused (batched decode;
// needs SUBGROUP), after activation.wgsl, matvec_input_norm.wgsl, matvec_batch_common.wgsl and
// matvec_batch_subgroup.wgsl. W is act|lin, [out_dim = 2F, in_dim]: rows [0, F) give a, rows
// [F, 2F) give b, and the output is the F-wide Y[r, j] = act(a_j) · b_j of the normed row
//   a_j = (x ⊙ g / rms(x)) · W[j],  b_j = (x ⊙ g / rms(x)) · W[F + j],
// with act = silu (params.prologue = 0) or exact gelu (1), as matvec_batch_norm_subgroup.wgsl
// followed by gated_activation.wgsl computes it. Each workgroup takes gated columns j, j + 1 for
// BATCH_ROWS rows: its four weight rows are j, j + 1, F + j, F + j + 1, so a and b of a column
// meet in the workgroup and the gating is its epilogue. Saves gated_activation's dispatch and
// the 2F-wide act|lin round trip; ffn_down then reads Y as it is.

// The workgroup's products after the norm: sum s (row s / 4, weight row s % 4, as in
// matvec_batch_common.wgsl) at s.
var<workgroup> normed_sums: array<f32, SUMS>;

// Grid: (ceil(F / 2), ceil(rows / BATCH_ROWS)), F = out_dim / 2.
@compute @workgroup_size(WORKGROUP_SIZE)
fn matvec_batch_norm_gated_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
) {
    if lane == 0u {
        subgroup_count = subgroups;
    }
    let count = workgroupUniformLoad(&subgroup_count);
    let half = params.out_dim / 2u;
    let first_column = wid.x * 2u;
    let first_row = wid.y * BATCH_ROWS;
    // Past the last column (F odd) the last one is computed again and not stored.
    let a0 = min(first_column, half - 1u);
    let a1 = min(first_column + 1u, half - 1u);
    let weight_rows = vec4<u32>(a0, a1, half + a0, half + a1);
    let partials = matvec_batch_partial_sums_of(lane, weight_rows, first_row);
    let total = reduce_batch(partials, true, count, lane, subgroup, subgroup_lane);
    if lane < SUMS {
        let inverse_rms = 1.0 / sqrt(total.y / f32(params.in_dim) + params.norm_eps);
        normed_sums[lane] = total.x * inverse_rms;
    }
    workgroupBarrier();
    // Invocation 2r + c: row first_row + r, column first_column + c.
    if lane < 2u * BATCH_ROWS {
        let r = lane / 2u;
        let c = lane % 2u;
        let a = normed_sums[4u * r + c];
        let b = normed_sums[4u * r + 2u + c];
        let row = first_row + r;
        let column = first_column + c;
        if row < params.rows && column < half {
            var activated = silu(a);
            if params.prologue != 0u {
                activated = gelu(a);
            }
            store_output(output_index(row, column), activated * b);
        }
    }
}
