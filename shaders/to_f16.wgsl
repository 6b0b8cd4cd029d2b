// X16 = f16(X[x_row_start + r, :]) for r < rows, zero for rows ≤ r < padded_rows: the input of
// gemm_coop_direct.wgsl. Values are clamped to f16's finite range (±65504), as gemm_coop.wgsl's
// staging does, so a large activation saturates rather than becoming infinite. Four elements per
// invocation (dim % 4 == 0).

struct ToF16Params {
    rows: u32,
    padded_rows: u32,
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
    let quads = params.dim / 4u;
    let q = gid.x;
    let row = gid.y;
    if q >= quads || row >= params.padded_rows {
        return;
    }
    var value = vec4<f32>(0.0);
    if row < params.rows {
        value = clamp(input[(params.x_row_start + row) * quads + q], vec4(-F16_MAX), vec4(F16_MAX));
    }
    output[row * quads + q] = vec4<f16>(value);
}
