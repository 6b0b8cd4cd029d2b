// Embedding gather: output[t, :] = table[token_ids[t], :] · scale.
// Preceded by one of the weights_*.wgsl files, which binds the table at binding 1.
// A table split by rows into several buffers is gathered once per part: the bound buffer holds
// rows [first_row, first_row + rows) of the table, and tokens outside them are left to the other
// parts.

struct EmbeddingParams {
    tokens: u32,
    dim: u32,
    scale: f32,
    first_row: u32,
    rows: u32,
    // Elements per row of the table as the weight accessors index it (dim, or whole blocks of
    // 32 for the block formats).
    weight_stride: u32,
    _pad2: u32,
    _pad3: u32,
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
    let id = token_ids[token];
    // Wrapping: an id below first_row becomes a huge row, skipped with those past the part.
    let row = id - params.first_row;
    if row >= params.rows {
        return;
    }
    output[token * params.dim + column] = weight_at(row * params.weight_stride + column) * params.scale;
}
