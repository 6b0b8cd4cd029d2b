//! The block-quantized weight formats, [`WeightFormat::Int8`] and [`WeightFormat::Q4`]: the one
//! encoder and decoder of their bytes. The GPU buffers are built with it (the runtime's
//! `WeightWriter`, while the weights stream in) and the CPU engines decode with it
//! (`retnet_model::quant`), so a quantized GPU kernel and the CPU compute with the same values;
//! `shaders/weights_int8.wgsl` and `shaders/weights_q4.wgsl` are the GPU's decoders of the same
//! layout. The format is written down in `docs/weight-formats.md`.
//!
//! In short: each row of a `[out, in]` matrix is cut into blocks of [`BLOCK`] values along the
//! input dimension (the last one zero-padded when `in % 32 != 0`); a block is stored in 32-bit
//! little-endian words, its parameters first:
//! - int8, 9 words: the f32 scale `s = max|w| / 127`, then 32 signed bytes `q = round(w / s)`
//!   (element j in byte j % 4 of word 1 + j / 4); `w ≈ q · s`.
//! - q4, 5 words: the f16 step `d` (low half) and the f16 minimum `m` (high half), then 32
//!   nibbles `q = round((w − m) / d)` in 0..=15 (element j in bits 4·(j % 8) of word 1 + j / 8);
//!   `w ≈ q · d + m`, where `q · d` is exact in f32, so the decoded value is rounded once.
//!
//! [`WeightFormat::Int8`]: crate::WeightFormat::Int8
//! [`WeightFormat::Q4`]: crate::WeightFormat::Q4

use half::f16;

/// Values per quantization block (along a row, i.e. the input dimension).
pub const BLOCK: usize = 32;

/// The two block formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// Symmetric 8-bit: one f32 scale per block, codes −127..=127.
    Int8,
    /// Asymmetric 4-bit: an f16 step and an f16 minimum per block, codes 0..=15.
    Q4,
}

/// The largest magnitude an f16 holds; q4's block parameters must fit it.
pub const F16_MAX: f32 = 65504.0;

impl QuantFormat {
    /// Both formats.
    pub const ALL: [QuantFormat; 2] = [QuantFormat::Int8, QuantFormat::Q4];

    /// 32-bit words per block: parameters, then codes.
    pub const fn block_words(self) -> usize {
        match self {
            QuantFormat::Int8 => 1 + BLOCK / 4,
            QuantFormat::Q4 => 1 + BLOCK / 8,
        }
    }

    /// Short name (`int8`, `q4`).
    pub const fn name(self) -> &'static str {
        match self {
            QuantFormat::Int8 => "int8",
            QuantFormat::Q4 => "q4",
        }
    }

    /// Blocks in a row of `row_len` values.
    pub const fn row_blocks(row_len: usize) -> usize {
        row_len.div_ceil(BLOCK)
    }

    /// Elements a row occupies in the buffer's index space (`row_len` rounded up to a whole
    /// block): the kernels' weight row stride.
    pub const fn row_stride(row_len: usize) -> usize {
        Self::row_blocks(row_len) * BLOCK
    }

    /// Words a row of `row_len` values takes.
    pub const fn row_words(self, row_len: usize) -> usize {
        Self::row_blocks(row_len) * self.block_words()
    }

    /// Appends the block of `values` (1 to [`BLOCK`] of them; a shorter block is the padded
    /// end of a row, whose missing codes are 0 and never read) to `out`.
    pub fn encode_block(self, values: &[f32], out: &mut Vec<u32>) {
        let values = values.get(..values.len().min(BLOCK)).unwrap_or(values);
        match self {
            QuantFormat::Int8 => encode_int8(values, out),
            QuantFormat::Q4 => encode_q4(values, out),
        }
    }

    /// Decodes one block (`words` holds at least [`QuantFormat::block_words`]) into `out`
    /// (its first `out.len()` ≤ [`BLOCK`] values).
    pub fn decode_block(self, words: &[u32], out: &mut [f32]) {
        let word = |k: usize| words.get(k).copied().unwrap_or(0);
        match self {
            QuantFormat::Int8 => {
                let scale = f32::from_bits(word(0));
                for (j, v) in out.iter_mut().enumerate().take(BLOCK) {
                    let byte = (word(1 + j / 4) >> (8 * (j % 4))) as u8 as i8;
                    *v = f32::from(byte) * scale;
                }
            }
            QuantFormat::Q4 => {
                let (step, min) = q4_parameters(word(0));
                for (j, v) in out.iter_mut().enumerate().take(BLOCK) {
                    let code = (word(1 + j / 8) >> (4 * (j % 8))) & 15;
                    // `code · step` is exact (4 × 11 significant bits), so this is the one
                    // rounding the GPU's `fma(q, d, m)` also makes, fused or not.
                    *v = code as f32 * step + min;
                }
            }
        }
    }

    /// Appends row `row` (any length ≥ 1) as [`QuantFormat::row_words`] words.
    pub fn encode_row(self, row: &[f32], out: &mut Vec<u32>) {
        for block in row.chunks(BLOCK) {
            self.encode_block(block, out);
        }
    }

    /// Decodes a row of `out.len()` values from its words.
    pub fn decode_row(self, words: &[u32], out: &mut [f32]) {
        let per_block = self.block_words();
        for (b, values) in out.chunks_mut(BLOCK).enumerate() {
            let block = words.get(b * per_block..).unwrap_or_default();
            self.decode_block(block, values);
        }
    }

    /// Replaces every row of `matrix` (rows of `row_len` values) by what the format stores of
    /// it: the values a kernel reading this format computes with. Used by the CPU engines.
    pub fn round_trip(self, matrix: &mut [f32], row_len: usize) {
        if row_len == 0 {
            return;
        }
        let mut words = Vec::with_capacity(self.row_words(row_len));
        for row in matrix.chunks_mut(row_len) {
            words.clear();
            self.encode_row(row, &mut words);
            self.decode_row(&words, row);
        }
    }

    /// The error bound of one decoded value of the block `words`: half its step (int8: the
    /// scale; q4: `d`). Round-to-nearest guarantees it, up to the f32 rounding of the decoded
    /// value itself.
    pub fn half_step(self, words: &[u32]) -> f32 {
        let first = words.first().copied().unwrap_or(0);
        match self {
            QuantFormat::Int8 => f32::from_bits(first) / 2.0,
            QuantFormat::Q4 => q4_parameters(first).0 / 2.0,
        }
    }
}

/// q4's `(d, m)` from a block's first word.
fn q4_parameters(word: u32) -> (f32, f32) {
    let step = f16::from_bits(word as u16).to_f32();
    let min = f16::from_bits((word >> 16) as u16).to_f32();
    (step, min)
}

fn encode_int8(values: &[f32], out: &mut Vec<u32>) {
    // `f32::max` ignores NaN: a NaN weight does not poison its block's scale (it is coded 0).
    let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    out.push(scale.to_bits());
    let mut words = [0u32; BLOCK / 4];
    // An all-zero block (or one whose scale underflows to 0) keeps scale 0 and codes 0.
    if scale > 0.0 && scale.is_finite() {
        for (j, &v) in values.iter().enumerate() {
            // `as` saturates and maps NaN to 0; the clamp keeps −128 unused (symmetric).
            let code = (v / scale).round().clamp(-127.0, 127.0) as i8;
            if let Some(w) = words.get_mut(j / 4) {
                *w |= u32::from(code as u8) << (8 * (j % 4));
            }
        }
    }
    out.extend_from_slice(&words);
}

fn encode_q4(values: &[f32], out: &mut Vec<u32>) {
    let (lo, hi) = values
        .iter()
        .filter(|v| !v.is_nan())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let (lo, hi) = if lo <= hi {
        (lo.clamp(-F16_MAX, F16_MAX), hi.clamp(-F16_MAX, F16_MAX))
    } else {
        (0.0, 0.0)
    };
    // m rounds down and d up, so that every value lies in [m, m + 15·d] and rounding to the
    // nearest code is off by at most d/2. A block of equal values that f16 holds gets d = 0.
    let min = f16_at_most(lo);
    let step = f16_at_least((hi - min.to_f32()) / 15.0);
    out.push(u32::from(step.to_bits()) | (u32::from(min.to_bits()) << 16));
    let (d, m) = (step.to_f32(), min.to_f32());
    let mut words = [0u32; BLOCK / 8];
    if d > 0.0 {
        for (j, &v) in values.iter().enumerate() {
            let code = ((v - m) / d).round().clamp(0.0, 15.0) as u32;
            if let Some(w) = words.get_mut(j / 8) {
                *w |= code << (4 * (j % 8));
            }
        }
    }
    out.extend_from_slice(&words);
}

/// The largest f16 ≤ `x` (`x` finite, within ±[`F16_MAX`]).
fn f16_at_most(x: f32) -> f16 {
    let h = f16::from_f32(x);
    if h.to_f32() <= x {
        h
    } else {
        f16_next_down(h)
    }
}

/// The smallest f16 ≥ `x` (`x` ≥ 0), at most [`F16_MAX`].
fn f16_at_least(x: f32) -> f16 {
    let h = f16::from_f32(x.min(F16_MAX));
    if h.to_f32() >= x || h == f16::MAX {
        h
    } else {
        f16_next_up(h)
    }
}

fn f16_next_down(h: f16) -> f16 {
    let bits = h.to_bits();
    if bits & 0x7fff == 0 {
        // ±0 → the smallest negative subnormal.
        f16::from_bits(0x8001)
    } else if bits & 0x8000 == 0 {
        f16::from_bits(bits - 1)
    } else {
        f16::from_bits(bits + 1)
    }
}

fn f16_next_up(h: f16) -> f16 {
    let bits = h.to_bits();
    if bits & 0x7fff == 0 {
        f16::from_bits(0x0001)
    } else if bits & 0x8000 == 0 {
        f16::from_bits(bits + 1)
    } else {
        f16::from_bits(bits - 1)
    }
}

/// Encodes a stream of values into quantized rows: values arrive in pieces of any size and any
/// boundary, a block is encoded once its 32 values (or the end of its row) are in, and the
/// partial block between two pieces is carried. Host memory: one block.
#[derive(Clone, Debug)]
pub struct RowEncoder {
    format: QuantFormat,
    row_len: usize,
    /// Values of the current row seen so far.
    in_row: usize,
    /// The current block's values.
    block: Vec<f32>,
}

impl RowEncoder {
    /// An encoder of rows of `row_len` (≥ 1) values.
    pub fn new(format: QuantFormat, row_len: usize) -> Self {
        Self {
            format,
            row_len: row_len.max(1),
            in_row: 0,
            block: Vec::with_capacity(BLOCK),
        }
    }

    /// Appends the words of every block `values` completes to `out`.
    pub fn push(&mut self, values: &[f32], out: &mut Vec<u32>) {
        for &v in values {
            self.block.push(v);
            self.in_row += 1;
            let row_done = self.in_row == self.row_len;
            if self.block.len() == BLOCK || row_done {
                self.format.encode_block(&self.block, out);
                self.block.clear();
            }
            if row_done {
                self.in_row = 0;
            }
        }
    }

    /// Whether the values pushed so far end on a whole row.
    pub fn at_row_end(&self) -> bool {
        self.in_row == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: the crate has no RNG dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A block of random values: a random magnitude (1e-6 .. 1e4), an offset for q4's
    /// asymmetric case, sometimes constant, sometimes with zeros.
    fn random_block(rng: &mut Rng) -> Vec<f32> {
        let n = 1 + rng.below(BLOCK);
        let magnitude = 10f32.powf(rng.unit() * 10.0 - 6.0);
        let offset = if rng.below(3) == 0 {
            magnitude * (rng.unit() * 8.0 - 4.0)
        } else {
            0.0
        };
        let constant = rng.below(8) == 0;
        let first = offset + magnitude * (2.0 * rng.unit() - 1.0);
        (0..n)
            .map(|_| match rng.below(16) {
                _ if constant => first,
                0 => 0.0,
                _ => offset + magnitude * (2.0 * rng.unit() - 1.0),
            })
            .collect()
    }

    #[test]
    fn round_trip_error_is_at_most_half_a_step() {
        let mut rng = Rng(15);
        for format in QuantFormat::ALL {
            for _ in 0..20_000 {
                let values = random_block(&mut rng);
                let mut words = Vec::new();
                format.encode_block(&values, &mut words);
                assert_eq!(words.len(), format.block_words());
                let mut decoded = vec![0.0; values.len()];
                format.decode_block(&words, &mut decoded);
                let bound = format.half_step(&words);
                for (&v, &d) in values.iter().zip(&decoded) {
                    // The decoded value is itself an f32: one rounding of |w| on top.
                    let slack = 2.0 * f32::EPSILON * v.abs().max(d.abs());
                    assert!(
                        (v - d).abs() <= bound + slack,
                        "{}: {v} decoded as {d}, bound {bound} (block {values:?})",
                        format.name()
                    );
                }
            }
        }
    }

    #[test]
    fn zero_and_constant_blocks_decode_exactly() {
        for format in QuantFormat::ALL {
            for values in [vec![0.0; BLOCK], vec![0.25; 7], vec![-3.0; BLOCK]] {
                let mut words = Vec::new();
                format.encode_block(&values, &mut words);
                let mut decoded = vec![f32::NAN; values.len()];
                format.decode_block(&words, &mut decoded);
                assert_eq!(decoded, values, "{}", format.name());
            }
        }
        // An all-zero block: scale 0 (int8), d = m = 0 (q4), every code 0.
        let mut words = Vec::new();
        QuantFormat::Q4.encode_block(&[0.0; BLOCK], &mut words);
        assert!(words.iter().all(|&w| w == 0));
    }

    #[test]
    fn int8_is_symmetric_and_uses_the_full_range() {
        let values: Vec<f32> = (0..BLOCK).map(|j| j as f32 - 16.0).collect();
        let mut words = Vec::new();
        QuantFormat::Int8.encode_block(&values, &mut words);
        assert_eq!(f32::from_bits(words[0]), 16.0 / 127.0);
        // Element 0 is −16 = −max: code −127 (0x81) in the low byte of word 1.
        assert_eq!(words[1] & 0xff, 0x81);
    }

    #[test]
    fn non_finite_and_out_of_range_values_do_not_panic() {
        for format in QuantFormat::ALL {
            let values = [f32::NAN, 1.0, f32::INFINITY, -1e30, 2.0];
            let mut words = Vec::new();
            format.encode_block(&values, &mut words);
            let mut decoded = [0.0; 5];
            format.decode_block(&words, &mut decoded);
        }
    }

    #[test]
    fn streamed_rows_equal_rows_encoded_whole() {
        let mut rng = Rng(7);
        for format in QuantFormat::ALL {
            for row_len in [1, 4, 31, 32, 33, 64, 100] {
                let rows = 3;
                let values: Vec<f32> = (0..rows * row_len).map(|_| rng.unit() - 0.5).collect();
                let mut whole = Vec::new();
                for row in values.chunks(row_len) {
                    format.encode_row(row, &mut whole);
                }
                assert_eq!(whole.len(), rows * format.row_words(row_len));
                let mut streamed = Vec::new();
                let mut encoder = RowEncoder::new(format, row_len);
                let mut rest = values.as_slice();
                while !rest.is_empty() {
                    let (piece, tail) = rest.split_at((1 + rng.below(50)).min(rest.len()));
                    encoder.push(piece, &mut streamed);
                    rest = tail;
                }
                assert!(encoder.at_row_end());
                assert_eq!(streamed, whole, "{} row_len {row_len}", format.name());
            }
        }
    }
}
