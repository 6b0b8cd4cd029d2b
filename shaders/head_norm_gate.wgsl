// Per-head RMSNorm of the retention output over its V values, times the output gate:
//   out[t, h·V + c] = o[t, h, c] / sqrt(mean_c(o²) + eps) (⊙ w[c]) ⊙ silu(g[t, h·V + c]).
// One workgroup per (head, token). Input, gate and output are row-strided with offsets so g can
// be a column range of a fused projection output.

struct HeadNormGateParams {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    eps: f32,
    input_offset: u32,
    input_stride: u32,
    gate_offset: u32,
    gate_stride: u32,
    out_offset: u32,
    out_stride: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: HeadNormGateParams;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read> gate: array<f32>;
@group(0) @binding(3) var<storage, read> norm_weight: array<f32>;
@group(0) @binding(4) var<storage, read_write> output: array<f32>;

// Must be a power of two (tree reduction).
override WORKGROUP_SIZE: u32 = 128u;

var<workgroup> partial_sums: array<f32, WORKGROUP_SIZE>;

fn inverse_rms(input_start: u32, lane: u32) -> f32 {
    var sum = 0.0;
    for (var c = lane; c < params.head_dim; c += WORKGROUP_SIZE) {
        let x = input[input_start + c];
        sum += x * x;
    }
    partial_sums[lane] = sum;
    workgroupBarrier();
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride >>= 1u) {
        if lane < stride {
            partial_sums[lane] += partial_sums[lane + stride];
        }
        workgroupBarrier();
    }
    return 1.0 / sqrt(partial_sums[0] / f32(params.head_dim) + params.eps);
}

// Grid: (heads, tokens).
@compute @workgroup_size(WORKGROUP_SIZE)
fn head_norm_gate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let column0 = wid.x * params.head_dim;
    let token = wid.y;
    let input_start = params.input_offset + token * params.input_stride + column0;
    let gate_start = params.gate_offset + token * params.gate_stride + column0;
    let out_start = params.out_offset + token * params.out_stride + column0;
    let scale = inverse_rms(input_start, lane);
    for (var c = lane; c < params.head_dim; c += WORKGROUP_SIZE) {
        output[out_start + c] = input[input_start + c] * scale * norm_weight[c] * silu(gate[gate_start + c]);
    }
}

// Grid: (heads, tokens).
@compute @workgroup_size(WORKGROUP_SIZE)
fn head_norm_gate_unweighted(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let column0 = wid.x * params.head_dim;
    let token = wid.y;
    let input_start = params.input_offset + token * params.input_stride + column0;
    let gate_start = params.gate_offset + token * params.gate_stride + column0;
    let out_start = params.out_offset + token * params.out_stride + column0;
    let scale = inverse_rms(input_start, lane);
    for (var c = lane; c < params.head_dim; c += WORKGROUP_SIZE) {
        output[out_start + c] = input[input_start + c] * scale * silu(gate[gate_start + c]);
    }
}
