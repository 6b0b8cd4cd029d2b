// f32 rows to f16 for the tensor-core matmul (needs `shader-f16`): out[r, :] = f16(x[x_row_start +
// r, :]) for r < rows, zero for rows up to padded_rows (so padded tiles multiply zeros). Values
// are clamped to ±65504, f16's largest finite value, rather than becoming infinities.

struct ToF16Params {
    rows: u32,
    padded_rows: u32,
    // Columns; a multiple of 4.
    dim: u32,
    x_row_start: u32,
}

@group(0) @binding(0) var<uniform> params: ToF16Params;
@group(0) @binding(1) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> output: array<vec4<f16>>;

const F16_MAX: f32 = 65504.0;

// Grid: (ceil(dim / 4 / 64), padded_rows).
@compute @workgroup_size(64)
fn convert_to_half(@builtin(global_invocation_id) gid: vec3<u32>) {
    let dim4 = params.dim / 4u;
    let i = gid.x;
    let row = gid.y;
    if i >= dim4 || row >= params.padded_rows {
        return;
    }
    var value = vec4<f32>(0.0);
    if row < params.rows {
        value = clamp(input[(params.x_row_start + row) * dim4 + i], vec4<f32>(-F16_MAX), vec4<f32>(F16_MAX));
    }
    output[row * dim4 + i] = vec4<f16>(value);
}
