// q, k and v as the recurrent kernels read them when q and k arrive raw from the q|k|v|g
// projection: rotary applied as they are read (rotary_angle.wgsl, the same arithmetic as
// rotary.wgsl), and q scaled by params.q_scale, so decode needs no rotary dispatches. q, k and v
// are column ranges of one buffer, `qkv` (the offsets and strides of RetentionParams index it);
// bindings 1–3 are not used, which keeps the batched kernel within 8 storage buffers.

@group(0) @binding(9) var<storage, read> qkv: array<f32>;
// The angle of each pair, [key_dim / 2].
@group(0) @binding(10) var<storage, read> theta: array<f32>;

// 0: torchscale's pairs (2i, 2i+1); 1: fla's halves (i, i + K/2).
override ROTARY_HALVES: u32 = 0u;

// Element r of the head starting at `head_start`, rotated by `cs` (cos, sin): the first of a
// pair is a·cos − b·sin, the second b·cos + a·sin, written as rotary.wgsl writes them.
fn rotated(head_start: u32, r: u32, cs: vec2<f32>) -> f32 {
    let half_dim = params.key_dim / 2u;
    var second: bool;
    var partner: u32;
    if ROTARY_HALVES != 0u {
        second = r >= half_dim;
        partner = select(r + half_dim, r - half_dim, second);
    } else {
        second = (r & 1u) == 1u;
        partner = r ^ 1u;
    }
    let x = qkv[head_start + r];
    let y = qkv[head_start + partner];
    return select(x * cs.x - y * cs.y, x * cs.x + y * cs.y, second);
}

// (q̂_r, k̂_r) of query head `head` and key/value head `kv_head` of row `token` at absolute
// position `position`: both turn by the same angle, so it is computed once.
fn query_key(token: u32, head: u32, kv_head: u32, r: u32, position: u32) -> vec2<f32> {
    var pair = r / 2u;
    if ROTARY_HALVES != 0u {
        pair = r % (params.key_dim / 2u);
    }
    let cs = rotation(position, theta[pair]);
    let q_start = params.q_offset + token * params.q_stride + head * params.key_dim;
    let k_start = params.k_offset + token * params.k_stride + kv_head * params.key_dim;
    return vec2<f32>(rotated(q_start, r, cs) * params.q_scale, rotated(k_start, r, cs));
}

fn value_at(token: u32, kv_head: u32, column: u32) -> f32 {
    return qkv[params.v_offset + token * params.v_stride + kv_head * params.value_dim + column];
}
