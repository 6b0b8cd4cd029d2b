// Split decode and its merge (joined after attention_common.wgsl).

var<workgroup> query: array<f32, TILE_VALUES>;
var<workgroup> scores: array<f32, WG>;
var<workgroup> reduce: array<f32, WG>;

// Reduces reduce[0..64] to reduce[0] (maximum when `take_max`, else sum); every invocation
// calls it.
fn reduce_workgroup(lid: u32, take_max: bool) {
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lid < stride) {
            let a = reduce[lid];
            let b = reduce[lid + stride];
            reduce[lid] = select(a + b, max(a, b), take_max);
        }
    }
    workgroupBarrier();
}

// Decode, one query (queries = 1, at start_pos) against a long cache: grid (splits, heads).
// Workgroup (s, h) takes keys lo + s·keys_per_split .. (at most keys_per_split of them), 64 at a
// time: invocation i scores key i of the batch, the workgroup reduces the batch's maximum and
// sum, and invocation i accumulates dims i, i + 64, … over the batch. Writes its running
// maximum, sum and weighted sums to `partial`; attention_decode_combine merges the splits.
@compute @workgroup_size(64)
fn attention_decode_split(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let split = wid.x;
    let head = wid.y;
    let dim = params.head_dim;
    let kv_head = head / (params.heads / params.kv_heads);
    let kv_width = params.kv_heads * dim;
    let p = params.start_pos;
    let lo = first_key(p);
    let begin = lo + split * params.keys_per_split;
    let end = min(p + 1u, begin + params.keys_per_split);

    let q_base = params.q_offset + head * dim;
    for (var d = lid; d < dim; d += WG) {
        query[d] = q[q_base + d] * params.scale;
    }
    var acc: array<f32, 32>; // dims lid + 64·i, i < ceil(head_dim / 64) ≤ 32
    for (var i = 0u; i < 32u; i++) {
        acc[i] = 0.0;
    }
    var running_max = NO_MAX;
    var total = 0.0;
    workgroupBarrier();

    for (var start = begin; start < end; start += WG) {
        let count = min(WG, end - start);
        var s = NO_MAX;
        if (lid < count) {
            s = 0.0;
            let at = key_at(start + lid, kv_head, 0u);
            for (var d = 0u; d < dim; d++) {
                s += query[d] * cache[at + d];
            }
        }
        scores[lid] = s;
        reduce[lid] = s;
        reduce_workgroup(lid, true);
        let new_max = max(running_max, reduce[0]);
        workgroupBarrier();
        let weight = select(0.0, exp(s - new_max), lid < count);
        scores[lid] = weight;
        reduce[lid] = weight;
        reduce_workgroup(lid, false);
        let correction = exp(running_max - new_max);
        total = total * correction + reduce[0];
        running_max = new_max;
        for (var i = 0u; i * WG + lid < dim; i++) {
            let d = i * WG + lid;
            var sum = 0.0;
            for (var j = 0u; j < count; j++) {
                sum += scores[j] * cache[key_at(start + j, kv_head, d) + kv_width];
            }
            acc[i] = acc[i] * correction + sum;
        }
        workgroupBarrier();
    }
    let stride = dim + 2u;
    let base = (head * params.splits + split) * stride;
    if (lid == 0u) {
        partial[base] = running_max;
        partial[base + 1u] = total;
    }
    for (var i = 0u; i * WG + lid < dim; i++) {
        partial[base + 2u + i * WG + lid] = acc[i];
    }
}

// Merges the splits of each head: grid (heads). Invocation i writes dims i, i + 64, ….
@compute @workgroup_size(64)
fn attention_decode_combine(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let head = wid.x;
    let dim = params.head_dim;
    let stride = dim + 2u;
    let first = head * params.splits * stride;
    var overall = NO_MAX;
    for (var s = 0u; s < params.splits; s++) {
        // A split with no keys (never produced: splits cover lo..p exactly) keeps NO_MAX.
        overall = max(overall, partial[first + s * stride]);
    }
    var total = 0.0;
    for (var s = 0u; s < params.splits; s++) {
        let at = first + s * stride;
        total += exp(partial[at] - overall) * partial[at + 1u];
    }
    for (var d = lid; d < dim; d += WG) {
        var sum = 0.0;
        for (var s = 0u; s < params.splits; s++) {
            let at = first + s * stride;
            sum += exp(partial[at] - overall) * partial[at + 2u + d];
        }
        out[params.out_offset + head * dim + d] = sum / total;
    }
}
