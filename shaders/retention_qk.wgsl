// q, k and v as the recurrent kernels read them when q and k arrive rotated and scaled (by the
// rotary kernel): straight from their bindings. retention_qk_rotary.wgsl is the variant that
// rotates them itself.

// (q_r, k_r) of query head `head` and key/value head `kv_head` of row `token`, element r.
fn query_key(token: u32, head: u32, kv_head: u32, r: u32, position: u32) -> vec2<f32> {
    return vec2<f32>(q_at(token, head, r), k_at(token, kv_head, r));
}

fn value_at(token: u32, kv_head: u32, column: u32) -> f32 {
    return v_at(token, kv_head, column);
}
