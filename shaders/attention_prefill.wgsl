// Tiled prefill (joined after attention_common.wgsl).

var<workgroup> tile_k: array<f32, TILE_VALUES>;
var<workgroup> tile_v: array<f32, TILE_VALUES>;

// Prefill: grid (ceil(queries / 64), heads). Invocation i of workgroup (t, h) is query 64t + i
// of head h; the workgroup walks the keys its queries can see, a tile at a time.
@compute @workgroup_size(64)
fn attention_prefill(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let head = wid.y;
    let dim = params.head_dim;
    let kv_head = head / (params.heads / params.kv_heads);
    let kv_width = params.kv_heads * dim;
    let n = wid.x * WG + lid;
    let in_range = n < params.queries;
    let p = params.start_pos + n;
    let first_query = params.start_pos + wid.x * WG;
    let last_query = params.start_pos + min(params.queries, wid.x * WG + WG) - 1u;
    let keys_per_tile = min(WG, TILE_VALUES / dim);

    var qv: array<f32, MAX_HEAD_DIM>;
    var acc: array<f32, MAX_HEAD_DIM>;
    if (in_range) {
        let base = params.q_offset + n * params.q_stride + head * dim;
        for (var d = 0u; d < dim; d++) {
            qv[d] = q[base + d] * params.scale;
            acc[d] = 0.0;
        }
    }
    var running_max = NO_MAX;
    var total = 0.0;
    let lo = first_key(p);

    for (var start = first_key(first_query); start <= last_query; start += keys_per_tile) {
        let count = min(keys_per_tile, last_query + 1u - start);
        for (var i = lid; i < count * dim; i += WG) {
            let at = key_at(start + i / dim, kv_head, i % dim);
            tile_k[i] = cache[at];
            tile_v[i] = cache[at + kv_width];
        }
        workgroupBarrier();
        if (in_range) {
            for (var j = 0u; j < count; j++) {
                let m = start + j;
                if (m < lo || m > p) {
                    continue;
                }
                var s = 0.0;
                for (var d = 0u; d < dim; d++) {
                    s += qv[d] * tile_k[j * dim + d];
                }
                let new_max = max(running_max, s);
                let correction = exp(running_max - new_max);
                let weight = exp(s - new_max);
                total = total * correction + weight;
                for (var d = 0u; d < dim; d++) {
                    acc[d] = acc[d] * correction + weight * tile_v[j * dim + d];
                }
                running_max = new_max;
            }
        }
        workgroupBarrier();
    }
    if (in_range) {
        let base = params.out_offset + n * params.out_stride + head * dim;
        for (var d = 0u; d < dim; d++) {
            out[base + d] = acc[d] / total;
        }
    }
}

