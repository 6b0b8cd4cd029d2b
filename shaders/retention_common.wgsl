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
    // K^-½, applied to q by the kernels that rotate q and k themselves (retention_qk_rotary.wgsl).
    q_scale: f32,
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

// γ^n − 1 from x = n·log γ: what the state update needs to full precision (decay_state).
fn decay_minus_one(x: f32) -> f32 {
    return expm1_accurate(x);
}

// The decayed state plus an update, S·γ^n + u, written S + ((γ^n − 1)·S + u). With γ^n itself
// as an f32 factor, a γ within a few 2^-24 of 1 (log γ = −3e-5 for head 10 of the peers'
// formula) is rounded to the nearest multiple of 2^-24, which misstates 1 − γ by up to 2^-24
// relative to 3e-5, i.e. 0.2%, and that error compounds over the ~1/(1 − γ) tokens a term
// survives. γ − 1 = expm1(log γ) keeps 24 significant bits of 1 − γ. For γ = 1 (log γ = 0)
// this is S + u, the same bits as before.
//
// Shader compilers treat float arithmetic as reassociable unless told otherwise: Mesa's NIR turns
// s + fma(d, s, u) into fma(d, s, s + u), which rounds s + u to S's grid first and then adds d·s
// (under one ulp of S for heads 16–19) by rounding again: the decay comes out a whole ulp per
// token, not its value. Measured on llvmpipe: head 19's state drifted linearly, 3e-5 relative
// after 2,000 tokens. `opaque` keeps the sum in the written order.
fn decay_state(factor_minus_one: f32, s: f32, update: f32) -> f32 {
    let change = fma(factor_minus_one, s, update);
    return s + opaque(change);
}

// x, through a condition the compiler cannot decide (no call has 2^32 − 1 tokens), so that no
// algebraic rewrite reaches across it.
fn opaque(x: f32) -> f32 {
    return select(x, 0.0, params.tokens == 0xffffffffu);
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
