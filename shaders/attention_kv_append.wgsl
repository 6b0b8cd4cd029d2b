// Writes a span's keys and values (already projected, biased, normed and rotated) into an
// attention layer's cache: position m = start_pos + n goes to slot m % ring, keys of all kv
// heads then their values (the layout attention_common.wgsl describes).

struct KvAppendParams {
    tokens: u32,
    // kv_heads · head_dim.
    kv_width: u32,
    start_pos: u32,
    ring: u32,
    // Token n's keys start at k_offset + n·k_stride, its values at v_offset + n·v_stride.
    k_stride: u32,
    k_offset: u32,
    v_stride: u32,
    v_offset: u32,
}

@group(0) @binding(0) var<uniform> params: KvAppendParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> cache: array<f32>;

override WORKGROUP_SIZE: u32 = 64u;

// Grid: (ceil(kv_width / WORKGROUP_SIZE), tokens).
@compute @workgroup_size(WORKGROUP_SIZE)
fn attention_kv_append(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let n = gid.y;
    if (i >= params.kv_width || n >= params.tokens) {
        return;
    }
    let slot = ((params.start_pos + n) % params.ring) * 2u * params.kv_width;
    cache[slot + i] = src[params.k_offset + n * params.k_stride + i];
    cache[slot + params.kv_width + i] = src[params.v_offset + n * params.v_stride + i];
}
