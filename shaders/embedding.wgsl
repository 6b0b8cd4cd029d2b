// Embedding gather: output[t, :] = table[token_ids[t], :] · scale.
// Preceded by one of the weights_*.wgsl files, which binds the table at binding 1.

struct EmbeddingParams {
    tokens: u32,
    dim: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: EmbeddingParams;
@group(0) @binding(2) var<storage, read> token_ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

override WORKGROUP_SIZE: u32 = 256u;

// Grid: (ceil(dim / WORKGROUP_SIZE), tokens).
@compute @workgroup_size(WORKGROUP_SIZE)
fn embedding_gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let column = gid.x;
    let token = gid.y;
    if column >= params.dim || token >= params.tokens {
        return;
    }
    let row = token_ids[token];
    output[token * params.dim + column] = weight_at(row * params.dim + column) * params.scale;
}
