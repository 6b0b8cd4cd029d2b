// Shared by the three retention forms (retention_parallel.wgsl, retention_chunkwise.wgsl,
// retention_recurrent.wgsl). q and k arrive rotated and scaled. Per query head h:
//   P_n = Σ_{m ≤ n} γ_h^(n−m) (q_n · k_m) v_m,   S_n = γ_h S_{n−1} + k_nᵀ v_n,   P_n = q_n S_n,
// optionally divided by sqrt(c_n), c_n = Σ_{i=0..n} γ_h^i (torchscale). Query head h reads
// key/value head h / (query_heads / kv_heads). The state S is [query_heads, K, V] f32.
// q, k, v and the output live at (offset + token·stride + head·dim) so they can be column ranges
// of one fused projection output.

struct RetentionParams {
    tokens: u32,
    query_heads: u32,
    kv_heads: u32,
    key_dim: u32,
    value_dim: u32,
    // Absolute position of token 0 (for the c_n scale).
    start_pos: u32,
    q_offset: u32,
    q_stride: u32,
    k_offset: u32,
    k_stride: u32,
    v_offset: u32,
    v_stride: u32,
    out_offset: u32,
    out_stride: u32,
    // 1: divide P_n by sqrt(c_n) (torchscale); 0: plain P_n (fla).
    scale_by_decay_sum: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: RetentionParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
// log γ per query head; 0 means γ = 1 exactly (no decay).
@group(0) @binding(4) var<storage, read> log_decay: array<f32>;

fn q_at(token: u32, head: u32, i: u32) -> f32 {
    return q[params.q_offset + token * params.q_stride + head * params.key_dim + i];
}

fn k_at(token: u32, kv_head: u32, i: u32) -> f32 {
    return k[params.k_offset + token * params.k_stride + kv_head * params.key_dim + i];
}

fn v_at(token: u32, kv_head: u32, column: u32) -> f32 {
    return v[params.v_offset + token * params.v_stride + kv_head * params.value_dim + column];
}

fn output_index(token: u32, head: u32, column: u32) -> u32 {
    return params.out_offset + token * params.out_stride + head * params.value_dim + column;
}

fn kv_head_of(query_head: u32) -> u32 {
    return query_head / (params.query_heads / params.kv_heads);
}

fn state_index(head: u32, row: u32, column: u32) -> u32 {
    return (head * params.key_dim + row) * params.value_dim + column;
}

// exp(x) − 1 without the cancellation of exp(x) − 1.0 near 0: γ = 1 − 2^-24 (head 19) has
// log γ ≈ −6e-8, for which exp(log γ) − 1 keeps no correct digit in f32. Taylor to x^9 below
// |x| = 0.5 (truncation < 0.5^10/10! ≈ 3e-10 relative); above, exp(x) − 1 loses < 2 ulp.
fn expm1_accurate(x: f32) -> f32 {
    if abs(x) < 0.5 {
        var term = x;
        var sum = x;
        for (var i = 2; i <= 9; i++) {
            term *= x / f32(i);
            sum += term;
        }
        return sum;
    }
    return exp(x) - 1.0;
}

// Factor applied to P at absolute position n: 1, or 1/sqrt(c_n) with
// c_n = Σ_{i=0..n} γ^i = (1 − γ^(n+1)) / (1 − γ) = n + 1 when γ = 1.
fn output_scale(log_gamma: f32, position: u32) -> f32 {
    if params.scale_by_decay_sum == 0u {
        return 1.0;
    }
    var decay_sum = f32(position + 1u);
    if log_gamma != 0.0 {
        decay_sum = expm1_accurate(f32(position + 1u) * log_gamma) / expm1_accurate(log_gamma);
    }
    return 1.0 / sqrt(decay_sum);
}
