// W16 = f16(W[first_row ..+ rows, :]) for an int8 or q4 weight matrix: the B operand of gemm_coop_direct.wgsl, so that
// block-format weights prefill on the tensor cores too. Preceded by weights_int8.wgsl or
// weights_q4.wgsl (`weight` at binding 1, `weight_vec4`). W is [.., in_dim] with the format's
// row stride (whole blocks); W16 is [rows, in_dim] f16, dense. Values are decoded to
// f32 exactly as the matvec and matmul kernels decode them, then rounded once to f16 (clamped to
// its finite range). Four elements per invocation (in_dim % 4 == 0).

struct DequantParams {
    rows: u32,
    in_dim: u32,
    weight_stride: u32,
    first_row: u32,
}

@group(0) @binding(0) var<uniform> params: DequantParams;
@group(0) @binding(2) var<storage, read_write> output: array<vec4<f16>>;

const F16_MAX: f32 = 65504.0;

// Grid: (ceil(in_dim / 4 / 64), rows).
@compute @workgroup_size(64)
fn dequantize_to_half(@builtin(global_invocation_id) gid: vec3<u32>) {
    let quads = params.in_dim / 4u;
    let q = gid.x;
    let row = gid.y;
    if q >= quads || row >= params.rows {
        return;
    }
    let value = weight_vec4(((params.first_row + row) * params.weight_stride) / 4u + q);
    output[row * quads + q] = vec4<f16>(clamp(value, vec4(-F16_MAX), vec4(F16_MAX)));
}
