// Shared by matmul.wgsl and matvec*.wgsl: Y[r, :] (= α·Y[r, :] +) X[x_row_start + r, :] · Wᵀ
// with W stored [out_dim, in_dim] (PyTorch's layout). Preceded by a weights_*.wgsl file.

struct LinearParams {
    // Rows of Y (tokens).
    rows: u32,
    in_dim: u32,
    out_dim: u32,
    // First row of X to read (lets the logits head read only the last token of a prefill).
    x_row_start: u32,
    // 0: Y = X·Wᵀ. 1: Y = alpha·Y + X·Wᵀ (the residual add fused into the output projection).
    accumulate: u32,
    alpha: f32,
    // RMSNorm epsilon of matvec_norm_subgroup.wgsl (unused elsewhere).
    norm_eps: f32,
    // Where output o of row r goes: Y[r * y_stride + y_col_start + o]. A matrix split by rows
    // into several buffers runs once per part, each writing its columns of the one Y.
    y_col_start: u32,
    y_stride: u32,
    // Elements per row of W as the weight accessors index it: in_dim, or for the block formats
    // (weights_int8.wgsl, weights_q4.wgsl) in_dim rounded up to a whole block of 32.
    weight_stride: u32,
    // The input stages fused into a decode matvec (matvec_input_*.wgsl; unused elsewhere):
    // matvec_input_head_gate.wgsl's V and where its gate g is, and a variant switch (head gate:
    // 1 = the norm has a weight; act·lin: 0 = silu, 1 = gelu).
    head_dim: u32,
    gate_offset: u32,
    gate_stride: u32,
    prologue: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: LinearParams;

// Index in Y of output `column` (0 ≤ column < out_dim) of row `row`.
fn output_index(row: u32, column: u32) -> u32 {
    return row * params.y_stride + params.y_col_start + column;
}

fn store_output(index: u32, value: f32) {
    if params.accumulate != 0u {
        output[index] = params.alpha * output[index] + value;
    } else {
        output[index] = value;
    }
}
