// The retention output's per-head RMSNorm times the output gate, computed as the output
// projection reads its input (decode, one row): X is the retention output [in_dim = heads·V]
// (V = params.head_dim), and element e = h·V + c of the input is
//   X[e] / sqrt(mean_c(X[h·V + c]²) + eps) (⊙ w[c]) ⊙ silu(g[e])
// exactly as head_norm_gate.wgsl computes it (eps = params.norm_eps; the weight w when
// params.prologue = 1; g at params.gate_offset + row·params.gate_stride of `gate`). Every
// workgroup needs every head's 1/rms, so each computes them first (prepare_input): X is a few
// thousand floats, read from cache, against the workgroup's rows of W. Saves the head_norm_gate
// dispatch and its output's round trip.

@group(0) @binding(4) var<storage, read> norm_weight: array<f32>;
@group(0) @binding(5) var<storage, read> gate: array<f32>;

// Most heads a workgroup holds the 1/rms of (the recorder keeps the separate kernel above).
const MAX_HEADS: u32 = 256u;

// Four heads' partial sums of squares per invocation (a tree over WORKGROUP_SIZE, a power of two).
var<workgroup> head_partials: array<vec4<f32>, WORKGROUP_SIZE>;
var<workgroup> head_scale: array<f32, MAX_HEADS>;

fn input_element(e: u32) -> f32 {
    return input[e >> 2u][e & 3u];
}

// Square of element c of head h of row `row`, 0 past the last head.
fn square_at(row: u32, h: u32, c: u32) -> f32 {
    if h * params.head_dim >= params.in_dim {
        return 0.0;
    }
    let x = input_element(row * params.in_dim + h * params.head_dim + c);
    return x * x;
}

// head_scale[h] = 1/rms of head h, four heads per tree reduction. Called in uniform control flow.
fn prepare_input(lane: u32, row: u32) {
    let heads = params.in_dim / params.head_dim;
    for (var h0 = 0u; h0 < heads; h0 += 4u) {
        var sums = vec4<f32>(0.0);
        for (var c = lane; c < params.head_dim; c += WORKGROUP_SIZE) {
            sums += vec4<f32>(
                square_at(row, h0, c),
                square_at(row, h0 + 1u, c),
                square_at(row, h0 + 2u, c),
                square_at(row, h0 + 3u, c),
            );
        }
        head_partials[lane] = sums;
        workgroupBarrier();
        for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride >>= 1u) {
            if lane < stride {
                head_partials[lane] += head_partials[lane + stride];
            }
            workgroupBarrier();
        }
        // Lane 0 reads entry 0, which no other lane writes in the next round.
        if lane == 0u {
            let mean_squares = head_partials[0] / f32(params.head_dim);
            let scales = vec4<f32>(1.0) / sqrt(mean_squares + vec4<f32>(params.norm_eps));
            for (var j = 0u; j < 4u && h0 + j < heads; j++) {
                head_scale[h0 + j] = scales[j];
            }
        }
    }
    workgroupBarrier();
}

// Element e of row `row`'s input, x = X[e].
fn gated_element(row: u32, e: u32, x: f32) -> f32 {
    let h = e / params.head_dim;
    let g = gate[params.gate_offset + row * params.gate_stride + e];
    var y = x * head_scale[h];
    if params.prologue != 0u {
        y *= norm_weight[e - h * params.head_dim];
    }
    return y * silu(g);
}

fn input_vec4(row: u32, i: u32) -> vec4<f32> {
    let x = input[row * (params.in_dim / 4u) + i];
    let e = 4u * i;
    return vec4<f32>(
        gated_element(row, e, x.x),
        gated_element(row, e + 1u, x.y),
        gated_element(row, e + 2u, x.z),
        gated_element(row, e + 3u, x.w),
    );
}
