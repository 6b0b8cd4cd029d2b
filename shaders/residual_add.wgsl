// Residual update x ← alpha·x + r over `count` elements (alpha = (2·layers)^¼ with deepnorm).

struct ResidualAddParams {
    count: u32,
    alpha: f32,
    // Workgroups along x in the grid; the grid is 2-D because one dimension is capped at 65535.
    groups_x: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: ResidualAddParams;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> residual: array<f32>;

override WORKGROUP_SIZE: u32 = 256u;

// Grid: (groups_x, ceil(ceil(count / WORKGROUP_SIZE) / groups_x)).
@compute @workgroup_size(WORKGROUP_SIZE)
fn residual_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let i = (wid.y * params.groups_x + wid.x) * WORKGROUP_SIZE + lane;
    if i < params.count {
        x[i] = params.alpha * x[i] + residual[i];
    }
}
