// RMSNorm over rows: y = x / sqrt(mean(x²) + eps) ⊙ w (w optional). One workgroup per row.

struct RmsNormParams {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: RmsNormParams;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read> norm_weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

// Must be a power of two (tree reduction).
override WORKGROUP_SIZE: u32 = 256u;

var<workgroup> partial_sums: array<f32, WORKGROUP_SIZE>;

fn inverse_rms(row_start: u32, lane: u32) -> f32 {
    var sum = 0.0;
    for (var i = lane; i < params.dim; i += WORKGROUP_SIZE) {
        let x = input[row_start + i];
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
    return 1.0 / sqrt(partial_sums[0] / f32(params.dim) + params.eps);
}

// Grid: (rows, 1, 1).
@compute @workgroup_size(WORKGROUP_SIZE)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let row_start = wid.x * params.dim;
    let scale = inverse_rms(row_start, lane);
    for (var i = lane; i < params.dim; i += WORKGROUP_SIZE) {
        output[row_start + i] = input[row_start + i] * scale * norm_weight[i];
    }
}
