// The retention output's per-head RMSNorm times the output gate, computed as the output
// projection reads its input (decode, one row): X is the retention output [in_dim = heads·V]
// (V = params.head_dim), and element e = h·V + c of the input is
//   X[e] / sqrt(mean_c(X[h·V + c]²) + eps) (⊙ w[c]) ⊙ silu(g[e])
// exactly as head_norm_gate.wgsl computes it (eps = params.norm_eps; the weight w when
// params.prologue = 1; g at params.gate_offset + row·params.gate_stride of `gate`). Every
// workgroup needs every head's 1/rms, so each computes them first into `head_scale`
// (prepare_input, in matvec_head_gate_tree.wgsl for the portable kernel or
// matvec_head_gate_subgroup.wgsl): X is a few thousand floats, read from cache, against the
// workgroup's rows of W. Saves the head_norm_gate dispatch and its output's round trip.

@group(0) @binding(4) var<storage, read> norm_weight: array<f32>;
@group(0) @binding(5) var<storage, read> gate: array<f32>;

// Most heads a workgroup holds the 1/rms of (the recorder keeps the separate kernel above).
const MAX_HEADS: u32 = 256u;

// 1/rms of each head of the row, written by prepare_input.
var<workgroup> head_scale: array<f32, MAX_HEADS>;

fn input_element(e: u32) -> f32 {
    return input[e >> 2u][e & 3u];
}

// Element e of row `row`'s input, x = X[e], in head h.
fn gated_element(row: u32, e: u32, h: u32, x: f32) -> f32 {
    let g = gate[params.gate_offset + row * params.gate_stride + e];
    var y = x * head_scale[h];
    if params.prologue != 0u {
        y *= norm_weight[e - h * params.head_dim];
    }
    return y * silu(g);
}

// The head of element e + j (j < 4) given the head h of element e: one division per vec4, not
// one per element (heads of 4 or more elements; a shorter head divides for every element).
fn head_of(e: u32, j: u32, h: u32) -> u32 {
    if params.head_dim < 4u {
        return (e + j) / params.head_dim;
    }
    return select(h, h + 1u, e + j >= (h + 1u) * params.head_dim);
}

fn input_vec4(row: u32, i: u32) -> vec4<f32> {
    let x = input[row * (params.in_dim / 4u) + i];
    let e = 4u * i;
    let h = e / params.head_dim;
    return vec4<f32>(
        gated_element(row, e, h, x.x),
        gated_element(row, e + 1u, head_of(e, 1u, h), x.y),
        gated_element(row, e + 2u, head_of(e, 2u, h), x.z),
        gated_element(row, e + 3u, head_of(e, 3u, h), x.w),
    );
}
