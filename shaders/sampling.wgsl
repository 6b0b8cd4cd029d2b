// Sampling the next token from one row of logits, in one workgroup, exactly as
// `retnet_model::sampling` does on the CPU (repetition penalty, greedy, temperature, top-k, top-p,
// the counter-based uniform draw, inverse CDF in token-id order), without sorting.
//
// Per-step state stays on the GPU, so the same dispatch with the same parameters is recorded step
// after step:
//   state[0]            index of the next draw (the `step` of `uniform(seed, step)`)
//   state[1]            tokens pushed into the history ring (kept below 2·window)
//   state[2], state[3]  reserved (0)
//   state[4 + j]        the history ring, `window` entries; the next token goes to
//                       `state[1] % window`, the valid entries are the first min(state[1], window)
// The chosen token is written to next_token[0] (the next step's embedding input) and to
// generated[draw % capacity] (for batched read-back). In a batch (grid (rows, 1, 1)) workgroup b
// samples row b: its logits at logits_offset + b·vocab, its state words from b·(4 + window), its
// id to next_token[b] and generated[b·capacity + draw % capacity].
//
// Exactness. The candidate set and greedy choice are decided on exact keys: the order-preserving
// u32 key of d = l − max (an f32 subtraction, as on the CPU; the CPU's f64 weights are a strictly
// increasing function of d). Weights w = exp(d / T) are rounded to fixed point (w · 2^31 in a u32)
// and summed in 64-bit integers (two u32), so every sum and comparison is exact and independent of
// the reduction order; only the f32 `exp` and that rounding separate them from the CPU's f64
// weights. The penalty's division is correctly rounded (WGSL's `/` need not be).

struct SampleParams {
    vocab: u32,
    logits_offset: u32,
    temperature: f32,
    top_k: u32,
    top_p: f32,
    repeat_penalty: f32,
    seed_lo: u32,
    seed_hi: u32,
    history_window: u32,
    capacity: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: SampleParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<u32>;
@group(0) @binding(3) var<storage, read_write> next_token: array<u32>;
@group(0) @binding(4) var<storage, read_write> generated: array<u32>;

// Must be a power of two (tree reductions).
override WORKGROUP_SIZE: u32 = 256u;

const HEADER: u32 = 4u;
const NONE: u32 = 0xffffffffu;
// key_of(0.0): the key of the largest logit's d.
const KEY_ZERO: u32 = 0x80000000u;
// A 2048-bit filter over token ids (id mod 2048) in front of the history lookup.
const BLOOM_WORDS: u32 = 64u;
// Entries of the sorted history table (the largest window), searched in eight unrolled steps.
const HISTORY_TABLE: u32 = 256u;

struct Search {
    lo: u32,
    hi: u32,
    target_lo: u32,
    target_hi: u32,
}

// The ring's valid entries in ring order (NONE elsewhere), then sorted ascending with the
// penalised logits alongside.
var<workgroup> ring_tok: array<u32, HISTORY_TABLE>;
var<workgroup> hist_tok: array<u32, HISTORY_TABLE>;
var<workgroup> hist_val: array<f32, HISTORY_TABLE>;
var<workgroup> bloom_bits: array<atomic<u32>, BLOOM_WORDS>;
var<workgroup> bloom: array<u32, BLOOM_WORDS>;
var<workgroup> red_a: array<vec4<u32>, WORKGROUP_SIZE>;
var<workgroup> red_b: array<vec4<u32>, WORKGROUP_SIZE>;
// F at the eight pivots of a search step (low and high words, pivots 0–3 then 4–7).
var<workgroup> pivot_lo: array<vec4<u32>, 2>;
var<workgroup> pivot_hi: array<vec4<u32>, 2>;
var<workgroup> search_state: Search;
var<workgroup> chosen: u32;

var<private> max_logit: f32;

// ---- integer helpers (u64 as vec2<u32>(low, high)) ----

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

fn ge64(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y > b.y || (a.y == b.y && a.x >= b.x);
}

fn gt64(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y > b.y || (a.y == b.y && a.x > b.x);
}

// The full 64-bit product of two u32.
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    return vec2<u32>((p00 & 0xffffu) | (mid << 16u), p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u));
}

// floor(m · t / 2^s) for m < 2^s (so the quotient fits 64 bits), and whether it was inexact (z).
fn mul_shift(t: vec2<u32>, m: u32, s: u32) -> vec3<u32> {
    let a = mul_wide(m, t.x);
    let b = mul_wide(m, t.y);
    let l1 = a.y + b.x;
    let l2 = b.y + select(0u, 1u, l1 < a.y);
    var limbs = array<u32, 5>(a.x, l1, l2, 0u, 0u);
    if s >= 96u {
        return vec3<u32>(0u, 0u, select(0u, 1u, (a.x | l1 | l2) != 0u));
    }
    let word = s / 32u;
    let bit = s % 32u;
    let q0 = (limbs[word] >> bit) | select(limbs[word + 1u] << (32u - bit), 0u, bit == 0u);
    let q1 = (limbs[word + 1u] >> bit) | select(limbs[word + 2u] << (32u - bit), 0u, bit == 0u);
    var below = limbs[word] & ((1u << bit) - 1u);
    for (var j = 0u; j < word; j++) {
        below |= limbs[j];
    }
    return vec3<u32>(q0, q1, select(0u, 1u, below != 0u));
}

// ---- floating point ----

// x / p correctly rounded to nearest even (as on the CPU), by long division of the significands;
// falls back to `/` for zeros, subnormals, infinities and NaN in or out.
fn div_rn(x: f32, p: f32) -> f32 {
    let bx = bitcast<u32>(x);
    let bp = bitcast<u32>(p);
    let ex = (bx >> 23u) & 0xffu;
    let ep = (bp >> 23u) & 0xffu;
    if ex == 0u || ep == 0u || ex == 255u || ep == 255u {
        return x / p;
    }
    var mx = (bx & 0x7fffffu) | 0x800000u;
    let mp = (bp & 0x7fffffu) | 0x800000u;
    var e = i32(ex) - i32(ep) + 127;
    if mx < mp {
        mx <<= 1u;
        e -= 1;
    }
    // mx / mp is in [1, 2): the leading one, then 23 fraction bits and a guard bit.
    var q = 1u;
    var r = mx - mp;
    for (var b = 0u; b < 24u; b++) {
        r <<= 1u;
        q <<= 1u;
        if r >= mp {
            r -= mp;
            q |= 1u;
        }
    }
    let guard = q & 1u;
    q >>= 1u;
    if guard == 1u && (r != 0u || (q & 1u) == 1u) {
        q += 1u;
    }
    if q == 0x1000000u {
        q >>= 1u;
        e += 1;
    }
    if e <= 0 || e >= 255 {
        return x / p;
    }
    return bitcast<f32>(((bx ^ bp) & 0x80000000u) | (u32(e) << 23u) | (q & 0x7fffffu));
}

// Clamped to the finite range, as on the CPU: a tiny penalty overflows a logit to infinity, and
// infinity − max would be NaN.
fn penalised(l: f32) -> f32 {
    var p = l * params.repeat_penalty;
    if l > 0.0 {
        p = div_rn(l, params.repeat_penalty);
    }
    // f32's largest finite value, as bits: a decimal literal for it is one rounding away from
    // overflowing, and Tint (WebGPU in Chromium) refuses the one that does.
    let largest = bitcast<f32>(0x7f7fffffu);
    return clamp(p, -largest, largest);
}

// A u32 whose order is the order of the floats (NaN aside).
fn key_of(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// exp(d / T) in fixed point, w · 2^31 (d ≤ 0, so w ≤ 1).
fn weight_fixed(d: f32) -> u32 {
    let w = min(exp(d / params.temperature), 1.0);
    return u32(round(w * 2147483648.0));
}

// The batch row this workgroup samples (its logits row, state words, next_token and generated
// entries); set at the entry point.
var<private> row: u32;

// The logit of token i after the repetition penalty. No loop: llvmpipe stops a shader after
// 65535 loop iterations in all, so the per-token work must not loop.
fn logit_at(i: u32) -> f32 {
    let l = logits[params.logits_offset + row * params.vocab + i];
    if ((bloom[(i >> 5u) % BLOOM_WORDS] >> (i & 31u)) & 1u) == 0u {
        return l;
    }
    // The last table entry ≤ i.
    var pos = select(0u, 128u, hist_tok[128] <= i);
    pos += select(0u, 64u, hist_tok[pos + 64u] <= i);
    pos += select(0u, 32u, hist_tok[pos + 32u] <= i);
    pos += select(0u, 16u, hist_tok[pos + 16u] <= i);
    pos += select(0u, 8u, hist_tok[pos + 8u] <= i);
    pos += select(0u, 4u, hist_tok[pos + 4u] <= i);
    pos += select(0u, 2u, hist_tok[pos + 2u] <= i);
    pos += select(0u, 1u, hist_tok[pos + 1u] <= i);
    if hist_tok[pos] == i {
        return hist_val[pos];
    }
    return l;
}

fn pcg_hash(input: u32) -> u32 {
    let s = input * 747796405u + 2891336453u;
    let word = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (word >> 22u) ^ word;
}

// The 24 bits of `uniform(seed, step)`: u = bits / 2^24.
fn uniform_bits(step: u32) -> u32 {
    let seed32 = params.seed_lo ^ params.seed_hi;
    return pcg_hash(pcg_hash(seed32) ^ pcg_hash(step + 0x9e3779b9u)) >> 8u;
}

// ---- workgroup reductions ----

// Sums (low, high) over the workgroup into red_a[0], red_b[0].
fn reduce64x4(lane: u32, lo: vec4<u32>, hi: vec4<u32>) {
    red_a[lane] = lo;
    red_b[lane] = hi;
    workgroupBarrier();
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride >>= 1u) {
        if lane < stride {
            let a = red_a[lane];
            let s = a + red_a[lane + stride];
            red_b[lane] = red_b[lane] + red_b[lane + stride] + select(vec4<u32>(0u), vec4<u32>(1u), s < a);
            red_a[lane] = s;
        }
        workgroupBarrier();
    }
}

// F(K) = Σ over tokens with key ≥ K of 1 (counts) or of the fixed-point weight, at eight pivots,
// into pivot_lo / pivot_hi.
fn eval_pivots(lane: u32, pa: vec4<u32>, pb: vec4<u32>, weighted: bool) {
    var lo_a = vec4<u32>(0u);
    var hi_a = vec4<u32>(0u);
    var lo_b = vec4<u32>(0u);
    var hi_b = vec4<u32>(0u);
    for (var i = lane; i < params.vocab; i += WORKGROUP_SIZE) {
        let d = logit_at(i) - max_logit;
        let k = vec4<u32>(key_of(d));
        var v = 1u;
        if weighted {
            v = weight_fixed(d);
        }
        let va = select(vec4<u32>(0u), vec4<u32>(v), k >= pa);
        lo_a += va;
        hi_a += select(vec4<u32>(0u), vec4<u32>(1u), lo_a < va);
        let vb = select(vec4<u32>(0u), vec4<u32>(v), k >= pb);
        lo_b += vb;
        hi_b += select(vec4<u32>(0u), vec4<u32>(1u), lo_b < vb);
    }
    reduce64x4(lane, lo_a, hi_a);
    if lane == 0u {
        pivot_lo[0] = red_a[0];
        pivot_hi[0] = red_b[0];
    }
    workgroupBarrier();
    reduce64x4(lane, lo_b, hi_b);
    if lane == 0u {
        pivot_lo[1] = red_a[0];
        pivot_hi[1] = red_b[0];
    }
    workgroupBarrier();
}

// The largest key K in [lo, KEY_ZERO] with F(K) ≥ target, given F(lo) ≥ target: nine-way
// bisection on the keys, eight pivots per pass over the logits.
fn search(lane: u32, lo: u32, goal: vec2<u32>, weighted: bool) -> u32 {
    if lane == 0u {
        search_state = Search(lo, KEY_ZERO, goal.x, goal.y);
    }
    var found = lo;
    loop {
        let s = workgroupUniformLoad(&search_state);
        if s.lo >= s.hi {
            found = s.lo;
            break;
        }
        let span = s.hi - s.lo;
        let step = span / 9u + 1u;
        let pa = vec4<u32>(s.lo) + min(vec4<u32>(1u, 2u, 3u, 4u) * step, vec4<u32>(span));
        let pb = vec4<u32>(s.lo) + min(vec4<u32>(5u, 6u, 7u, 8u) * step, vec4<u32>(span));
        eval_pivots(lane, pa, pb, weighted);
        if lane == 0u {
            let t = vec2<u32>(s.target_lo, s.target_hi);
            var new_lo = s.lo;
            var new_hi = pa.x - 1u;
            var next = s.hi + 1u; // pivot after the one taken, minus one is the new hi
            for (var j = 7; j >= 0; j--) {
                let g = u32(j) / 4u;
                let c = u32(j) % 4u;
                let f = vec2<u32>(pivot_lo[g][c], pivot_hi[g][c]);
                let p = select(pb[c], pa[c], g == 0u);
                if ge64(f, t) {
                    new_lo = p;
                    new_hi = next - 1u;
                    break;
                }
                next = p;
            }
            search_state = Search(new_lo, new_hi, s.target_lo, s.target_hi);
        }
    }
    return found;
}

// Inverse CDF over the candidates (key ≥ threshold) in token-id order: each invocation owns a
// contiguous slice; prefix sums over the slices find the one holding the target, which rescans.
fn draw(lane: u32, threshold: u32, step: u32) {
    let chunk = (params.vocab + WORKGROUP_SIZE - 1u) / WORKGROUP_SIZE;
    let start = min(lane * chunk, params.vocab);
    let end = min(start + chunk, params.vocab);
    var sum = vec2<u32>(0u);
    for (var i = start; i < end; i++) {
        let d = logit_at(i) - max_logit;
        if key_of(d) >= threshold {
            sum = add64(sum, vec2<u32>(weight_fixed(d), 0u));
        }
    }
    red_a[lane] = vec4<u32>(sum, 0u, 0u);
    workgroupBarrier();
    for (var offset = 1u; offset < WORKGROUP_SIZE; offset <<= 1u) {
        var before = vec2<u32>(0u);
        if lane >= offset {
            before = red_a[lane - offset].xy;
        }
        workgroupBarrier();
        if lane >= offset {
            red_a[lane] = vec4<u32>(add64(red_a[lane].xy, before), 0u, 0u);
        }
        workgroupBarrier();
    }
    let inclusive = red_a[lane].xy;
    var exclusive = vec2<u32>(0u);
    if lane > 0u {
        exclusive = red_a[lane - 1u].xy;
    }
    let total = red_a[WORKGROUP_SIZE - 1u].xy;
    // First candidate whose cumulative weight exceeds u · total, u = bits / 2^24: since the
    // cumulative weights are integers, exceeding floor(bits · total / 2^24) is the same.
    let goal = mul_shift(total, uniform_bits(step), 24u).xy;
    if ge64(goal, exclusive) && gt64(inclusive, goal) {
        var cumulative = exclusive;
        for (var i = start; i < end; i++) {
            let d = logit_at(i) - max_logit;
            if key_of(d) >= threshold {
                cumulative = add64(cumulative, vec2<u32>(weight_fixed(d), 0u));
                if gt64(cumulative, goal) {
                    chosen = i;
                    break;
                }
            }
        }
    }
}

// ceil(p · kept): the cumulative weight top-p must reach (p as the exact f32 value).
fn top_p_target(kept: vec2<u32>) -> vec2<u32> {
    let p = params.top_p;
    if !(p > 0.0) {
        return vec2<u32>(0u);
    }
    let bits = bitcast<u32>(p);
    let e = (bits >> 23u) & 0xffu;
    var m = bits & 0x7fffffu;
    var s = 149u;
    if e != 0u {
        m |= 0x800000u;
        s = 150u - e;
    }
    let q = mul_shift(kept, m, s);
    return add64(q.xy, vec2<u32>(q.z, 0u));
}

// Grid: (rows, 1, 1). One draw per row of a batch; see the top of the file for the buffers.
@compute @workgroup_size(WORKGROUP_SIZE)
fn sample_token(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    row = wid.x;
    let vocab = params.vocab;
    let window = min(params.history_window, HISTORY_TABLE);
    // This row's state words.
    let sb = row * (HEADER + window);
    let step = state[sb];
    let pushed = state[sb + 1u];

    // The history: the ring's valid entries (ids beyond the vocabulary dropped), sorted by rank
    // (ties by ring position, so duplicates stay, adjacent, with equal values) with their
    // penalised logits, and the filter of their ids.
    var valid = 0u;
    if params.repeat_penalty != 1.0 {
        valid = min(pushed, window);
    }
    for (var j = lane; j < HISTORY_TABLE; j += WORKGROUP_SIZE) {
        var t = NONE;
        if j < valid {
            t = state[sb + HEADER + j];
            if t >= vocab {
                t = NONE;
            }
        }
        ring_tok[j] = t;
    }
    for (var w = lane; w < BLOOM_WORDS; w += WORKGROUP_SIZE) {
        atomicStore(&bloom_bits[w], 0u);
    }
    storageBarrier();
    workgroupBarrier();
    for (var j = lane; j < HISTORY_TABLE; j += WORKGROUP_SIZE) {
        let t = ring_tok[j];
        // Entries past `valid` are NONE and keep their place; NONE entries within it go after
        // the real ids.
        var rank = j;
        var value = 0.0;
        if j < valid {
            rank = 0u;
            for (var k = 0u; k < valid; k++) {
                let u = ring_tok[k];
                rank += select(0u, 1u, u < t || (u == t && k < j));
            }
        }
        if t != NONE {
            value = penalised(logits[params.logits_offset + row * vocab + t]);
            atomicOr(&bloom_bits[(t >> 5u) % BLOOM_WORDS], 1u << (t & 31u));
        }
        hist_tok[rank] = t;
        hist_val[rank] = value;
    }
    workgroupBarrier();
    for (var w = lane; w < BLOOM_WORDS; w += WORKGROUP_SIZE) {
        bloom[w] = atomicLoad(&bloom_bits[w]);
    }
    workgroupBarrier();

    // Largest logit (lowest id among equals) and smallest.
    var best = 0.0;
    var best_i = NONE;
    var least = 0.0;
    for (var i = lane; i < vocab; i += WORKGROUP_SIZE) {
        let l = logit_at(i);
        if best_i == NONE {
            best = l;
            best_i = i;
            least = l;
        } else {
            if l > best {
                best = l;
                best_i = i;
            }
            least = min(least, l);
        }
    }
    red_a[lane] = vec4<u32>(bitcast<u32>(best), best_i, bitcast<u32>(least), 0u);
    workgroupBarrier();
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride >>= 1u) {
        if lane < stride {
            let a = red_a[lane];
            let b = red_a[lane + stride];
            if b.y != NONE {
                if a.y == NONE {
                    red_a[lane] = b;
                } else {
                    let fa = bitcast<f32>(a.x);
                    let fb = bitcast<f32>(b.x);
                    var r = a;
                    if fb > fa || (fb == fa && b.y < a.y) {
                        r.x = b.x;
                        r.y = b.y;
                    }
                    r.z = bitcast<u32>(min(bitcast<f32>(a.z), bitcast<f32>(b.z)));
                    red_a[lane] = r;
                }
            }
        }
        workgroupBarrier();
    }
    let top = red_a[0];
    max_logit = bitcast<f32>(top.x);
    if lane == 0u {
        chosen = select(top.y, 0u, top.y == NONE);
    }
    workgroupBarrier();

    if params.temperature != 0.0 && vocab > 1u {
        let key_min = key_of(bitcast<f32>(top.z) - max_logit);
        var threshold = 0u;
        if params.top_k > 0u && params.top_k < vocab {
            threshold = search(lane, key_min, vec2<u32>(params.top_k, 0u), false);
        }
        if params.top_p < 1.0 {
            let lo = max(threshold, key_min);
            eval_pivots(lane, vec4<u32>(lo), vec4<u32>(lo), true);
            let kept = vec2<u32>(pivot_lo[0].x, pivot_hi[0].x);
            threshold = search(lane, lo, top_p_target(kept), true);
        }
        draw(lane, threshold, step);
    }
    workgroupBarrier();

    if lane == 0u {
        let token = chosen;
        next_token[row] = token;
        if params.capacity > 0u {
            generated[row * params.capacity + step % params.capacity] = token;
        }
        if window > 0u {
            state[sb + HEADER + pushed % window] = token;
            var n = pushed + 1u;
            if n >= 2u * window {
                n -= window;
            }
            state[sb + 1u] = n;
        }
        state[sb] = step + 1u;
    }
}
