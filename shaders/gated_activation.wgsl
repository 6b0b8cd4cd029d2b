// FFN gating: out[t, i] = act(a[t, i]) ⊙ l[t, i], act = silu or exact (erf) gelu. a and l are
// row-strided with offsets so both can be column ranges of one fused projection output.

struct GatedActivationParams {
    tokens: u32,
    width: u32,
    act_offset: u32,
    act_stride: u32,
    linear_offset: u32,
    linear_stride: u32,
    out_offset: u32,
    out_stride: u32,
}

@group(0) @binding(0) var<uniform> params: GatedActivationParams;
@group(0) @binding(1) var<storage, read> act_input: array<f32>;
@group(0) @binding(2) var<storage, read> linear_input: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

override WORKGROUP_SIZE: u32 = 256u;

// Grid: (ceil(width / WORKGROUP_SIZE), tokens).
@compute @workgroup_size(WORKGROUP_SIZE)
fn silu_gate(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if i >= params.width || t >= params.tokens {
        return;
    }
    let a = act_input[params.act_offset + t * params.act_stride + i];
    let l = linear_input[params.linear_offset + t * params.linear_stride + i];
    output[params.out_offset + t * params.out_stride + i] = silu(a) * l;
}

// Grid: (ceil(width / WORKGROUP_SIZE), tokens).
@compute @workgroup_size(WORKGROUP_SIZE)
fn gelu_gate(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if i >= params.width || t >= params.tokens {
        return;
    }
    let a = act_input[params.act_offset + t * params.act_stride + i];
    let l = linear_input[params.linear_offset + t * params.linear_stride + i];
    output[params.out_offset + t * params.out_stride + i] = gelu(a) * l;
}
