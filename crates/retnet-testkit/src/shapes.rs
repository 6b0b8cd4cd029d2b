//! The shapes every kernel is tested at, written once: `cargo test` (the runtime's kernel tests)
//! runs [`Set::Quick`] of each table, `cargo xtask verify --quick` the same [`Set::Quick`], and
//! `cargo xtask verify` [`Set::Full`] (the quick cases and the rest). Each side keeps its own
//! data, checks and tolerances; only the shapes are shared. Cases that make sense on one side
//! only (row blocks, batched bit-equality, llvmpipe's loop limit) stay with that side.
//!
//! Edge cases kept on purpose: widths of 1, odd sizes, sizes that are not multiples of the
//! kernels' tiles or workgroups, grouped heads, K ≠ V, γ = 1.

use crate::reference;
use retnet_runtime::kernels::linear::LinearParams;

/// Which cases of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Set {
    /// A small representative subset (CI: 2 cores, lavapipe).
    Quick,
    /// Every case, the quick ones first.
    Full,
}

/// The quick cases, then the others in the full set.
fn pick<T>(set: Set, quick: Vec<T>, more: Vec<T>) -> Vec<T> {
    let mut all = quick;
    if set == Set::Full {
        all.extend(more);
    }
    all
}

/// Embedding gather: `tokens` ids from a `vocab × dim` table, times `scale`.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingShape {
    pub vocab: usize,
    pub dim: usize,
    pub tokens: usize,
    pub scale: f32,
}

/// A width of 1, widths that are not multiples of the 256-wide workgroup, torchscale's sqrt(d)
/// scale, a 32k vocabulary.
pub fn embedding(set: Set) -> Vec<EmbeddingShape> {
    let e = |vocab, dim, tokens, scale| EmbeddingShape {
        vocab,
        dim,
        tokens,
        scale,
    };
    pick(
        set,
        vec![e(37, 19, 5, 1.7), e(1000, 1027, 16, (1027f32).sqrt())],
        vec![e(50, 1, 3, 1.0), e(32000, 256, 64, 16.0)],
    )
}

/// RMSNorm over `rows` rows of `dim`.
#[derive(Clone, Copy, Debug)]
pub struct RmsNormShape {
    pub rows: usize,
    pub dim: usize,
    pub eps: f32,
}

/// Width 1, odd widths, more than one pass of the 256-wide workgroup; two values of eps.
pub fn rms_norm(set: Set) -> Vec<RmsNormShape> {
    let quick = [(1, 1), (3, 7), (2, 300), (4, 1000), (2, 4097)];
    let more = [(64, 2048), (5, 8191)];
    let with_eps = |shapes: &[(usize, usize)], first: usize| {
        shapes
            .iter()
            .enumerate()
            .map(|(i, &(rows, dim))| RmsNormShape {
                rows,
                dim,
                eps: if (first + i) % 2 == 0 { 1e-5 } else { 1e-6 },
            })
            .collect()
    };
    pick(set, with_eps(&quick, 0), with_eps(&more, quick.len()))
}

/// One linear-layer case: its parameters and what it is about (empty for a plain shape).
#[derive(Clone, Copy, Debug)]
pub struct LinearShape {
    pub params: LinearParams,
    pub what: &'static str,
}

fn plain(shapes: &[(u32, u32, u32)]) -> Vec<LinearShape> {
    shapes
        .iter()
        .map(|&(rows, in_dim, out_dim)| LinearShape {
            params: LinearParams::new(rows, in_dim, out_dim),
            what: "",
        })
        .collect()
}

/// Y = αY + X[x_row_start..]·Wᵀ.
fn fused(rows: u32, in_dim: u32, out_dim: u32, x_row_start: u32, alpha: f32) -> LinearShape {
    LinearShape {
        params: LinearParams {
            x_row_start,
            accumulate: Some(alpha),
            ..LinearParams::new(rows, in_dim, out_dim)
        },
        what: "residual fused",
    }
}

/// The tiled matmul: 64×64 output tiles with 16-wide K slices; every shape but (3, 256, 64) has
/// partial tiles, (64, 4096, 64) is a long reduction.
pub fn matmul(set: Set) -> Vec<LinearShape> {
    let mut quick = plain(&[(1, 7, 5), (5, 33, 17), (70, 65, 130), (3, 256, 64)]);
    quick.push(fused(4, 20, 9, 2, 1.5));
    let more = plain(&[
        (257, 129, 65),
        (128, 1024, 300),
        (300, 512, 515),
        (64, 4096, 64),
    ]);
    pick(set, quick, more)
}

/// The matvec (in_dim % 4 == 0): 4 outputs per workgroup, so odd out_dim leaves a partial one;
/// the last token of a prefill with the residual fused; the logits head against a 32k vocabulary.
pub fn matvec(set: Set) -> Vec<LinearShape> {
    let mut quick = plain(&[
        (1, 4, 1),
        (1, 8, 5),
        (1, 64, 33),
        (3, 260, 70),
        (1, 1024, 9),
    ]);
    quick.push(fused(1, 12, 7, 4, 0.5));
    let mut more = plain(&[(4, 4096, 130), (1, 2048, 515)]);
    more.push(LinearShape {
        params: LinearParams {
            x_row_start: 6,
            ..LinearParams::new(1, 512, 32003)
        },
        what: "logits head",
    });
    pick(set, quick, more)
}

/// The batched matvec: 8 rows per workgroup, so 2, 8, 9 and 21 rows cover a partial block, one
/// whole block, and blocks after the first.
pub fn matvec_batch(set: Set) -> Vec<LinearShape> {
    // 1028 inputs: two strides per iteration and a last odd one for each invocation (257 vec4s).
    let mut quick = plain(&[(2, 12, 5), (8, 256, 70), (9, 64, 33), (3, 1028, 9)]);
    quick.push(fused(10, 16, 9, 3, 0.5));
    pick(set, quick, plain(&[(21, 1024, 130), (32, 2048, 515)]))
}

/// Rotary over `heads` heads of `head_dim` for `tokens` tokens from `start_pos`.
#[derive(Clone, Copy, Debug)]
pub struct RotaryShape {
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub start_pos: usize,
}

/// K = 2 (one pair), K not a multiple of 4, large positions where unreduced GPU sin/cos would
/// lose every digit, and positions past 411,774 where the reduction's k·(2π high part) is no
/// longer exact without splitting k.
pub fn rotary(set: Set) -> Vec<RotaryShape> {
    let r = |tokens, heads, head_dim, start_pos| RotaryShape {
        tokens,
        heads,
        head_dim,
        start_pos,
    };
    pick(
        set,
        vec![
            r(5, 3, 10, 0),
            r(5, 3, 10, 1),
            r(5, 3, 10, 5000),
            r(3, 8, 64, 100_000),
            r(3, 2, 4, 1_000_000),
        ],
        vec![r(4, 1, 2, 1), r(33, 12, 128, 4000), r(2, 2, 256, 65_000)],
    )
}

/// The per-head norm and gate over `heads` heads of `value_dim`.
#[derive(Clone, Copy, Debug)]
pub struct HeadNormGateShape {
    pub tokens: usize,
    pub heads: usize,
    pub value_dim: usize,
}

/// V = 300 and 1000 exceed the 128-wide workgroup, V = 432 is torchscale's preset.
pub fn head_norm_gate(set: Set) -> Vec<HeadNormGateShape> {
    let h = |tokens, heads, value_dim| HeadNormGateShape {
        tokens,
        heads,
        value_dim,
    };
    pick(
        set,
        vec![h(1, 1, 5), h(3, 3, 67), h(2, 2, 300)],
        vec![h(4, 8, 432), h(17, 2, 1000)],
    )
}

/// The gated activation act(a)·l over `tokens` rows of `width`.
#[derive(Clone, Copy, Debug)]
pub struct GatedActivationShape {
    pub tokens: usize,
    pub width: usize,
}

/// An odd width over a workgroup; width 1; a real FFN width.
pub fn gated_activation(set: Set) -> Vec<GatedActivationShape> {
    let g = |tokens, width| GatedActivationShape { tokens, width };
    pick(set, vec![g(3, 301)], vec![g(1, 1), g(17, 2816)])
}

/// The decay of each head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decay {
    /// γ_h = 1 − 2^(−5−h), the peers' formula.
    Peers,
    /// γ = 1 exactly for every head (heads ≥ 20 of large models): no decay, the state is a
    /// running sum over the whole context.
    One,
    /// Cycling through 1 − 2^-5, 1, 1 − 2^-8 and 1 − 2^-24 (log γ ≈ −6e-8, where a naive
    /// (1 − γ^(n+1))/(1 − γ) loses every digit).
    Mixed,
}

impl Decay {
    /// log γ of each of `heads` heads, in f32.
    pub fn log_decays(self, heads: usize) -> Vec<f32> {
        (0..heads)
            .map(|h| match self {
                Decay::Peers => reference::log_decay_f32(h),
                Decay::One => 0.0,
                Decay::Mixed => [
                    reference::log_decay_f32(0),
                    0.0,
                    reference::log_decay_f32(3),
                ]
                .get(h % 4)
                .copied()
                .unwrap_or_else(|| reference::log_decay_f32(19)),
            })
            .collect()
    }

    pub fn label(self) -> &'static str {
        match self {
            Decay::Peers => "γ=1-2^(-5-h)",
            Decay::One => "γ=1",
            Decay::Mixed => "γ mixed incl. 1 and 1-2^-24",
        }
    }
}

/// One retention problem: every form, at these chunk sizes; `scale`: with the ÷sqrt(c_n) scale
/// (a side that checks both settings may ignore it).
#[derive(Clone, Copy, Debug)]
pub struct RetentionShape {
    pub tokens: usize,
    pub query_heads: usize,
    pub kv_heads: usize,
    pub key_dim: usize,
    pub value_dim: usize,
    pub decay: Decay,
    pub chunk_sizes: &'static [u32],
    pub scale: bool,
}

/// One token and one head (every form degenerates to k·v·q); grouped heads with K ≠ V and many
/// partial chunks; odd widths (K = 33 is not a multiple of the 16-wide tiles, V = 67 spans two
/// column tiles); V above 256 and 8 query heads on one kv head with γ = 1; long contexts
/// (T = 4096, full set only: llvmpipe's loop limit and the position-dependent tolerance are
/// verify's).
pub fn retention(set: Set) -> Vec<RetentionShape> {
    #[allow(clippy::too_many_arguments)]
    fn r(
        tokens: usize,
        query_heads: usize,
        kv_heads: usize,
        key_dim: usize,
        value_dim: usize,
        decay: Decay,
        chunk_sizes: &'static [u32],
        scale: bool,
    ) -> RetentionShape {
        RetentionShape {
            tokens,
            query_heads,
            kv_heads,
            key_dim,
            value_dim,
            decay,
            chunk_sizes,
            scale,
        }
    }
    use Decay::{Mixed, One, Peers};
    pick(
        set,
        vec![
            r(1, 1, 1, 8, 8, Peers, &[1, 16], false),
            r(17, 4, 2, 12, 20, Mixed, &[1, 7, 16, 32], true),
            r(100, 4, 2, 12, 20, Mixed, &[16, 32], false),
            r(40, 2, 1, 33, 67, Peers, &[16], true),
            r(100, 2, 1, 33, 67, Peers, &[16, 64, 32], false),
            r(20, 1, 1, 16, 300, Peers, &[8], true),
        ],
        vec![
            r(1, 1, 1, 8, 8, Peers, &[16], true),
            r(2, 2, 2, 4, 3, Mixed, &[1, 32], true),
            r(17, 4, 2, 12, 20, Mixed, &[7, 16], false),
            r(100, 2, 1, 33, 67, Peers, &[48, 1], true),
            r(515, 8, 1, 16, 300, One, &[32, 64, 48], true),
            r(4096, 4, 2, 12, 20, Mixed, &[16, 64, 7], true),
            r(4096, 4, 2, 12, 20, Mixed, &[32, 48], false),
            r(4096, 2, 2, 33, 67, One, &[16, 64, 32], false),
            r(4096, 2, 1, 64, 48, Peers, &[16, 64, 32], true),
        ],
    )
}
