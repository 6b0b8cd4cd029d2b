//! Kernels of the fast CPU engine ([`crate::FastCpuModel`]): weight matrices packed in panels
//! for SIMD, and matrix–vector / matrix–matrix products with f32 accumulation spread over
//! rayon's threads.
//!
//! A [`PackedMatrix`] stores `W [rows, cols]` (PyTorch layout, `y = x Wᵀ`) as panels of
//! [`PANEL`] rows: panel `p` holds, column after column, the 32 weights of rows `32p..32p+32`
//! (rows past the end are zero). A product walks one panel with 32 independent f32
//! accumulators — one per output row, four 8-lane vectors — so no horizontal sums are needed
//! and the loop vectorizes with any SIMD width.
//!
//! Elements are stored in the narrowest of f16, bf16 and f32 that holds every weight exactly
//! (checkpoints in f16 or bf16 stay that size: half the memory traffic of f32, which is what
//! a batch-1 decode step is bound by). Conversion to f32 is exact in every format.
//!
//! Every output is `Σ_c x[c]·w[c]` accumulated in f32 in column order, a multiply then an add
//! (never a fused multiply-add), so the x86 SIMD path (AVX2 + F16C, chosen at run time) and the
//! portable path (any target: wasm32, aarch64, x86 without AVX2) give bit-identical results,
//! and so do a decode step ([`PackedMatrix::matvec`]) and a prefill row
//! ([`PackedMatrix::matmul`]).

use rayon::prelude::*;

/// Rows per panel: four 8-lane f32 vectors of accumulators.
pub const PANEL: usize = 32;

/// Token rows computed together by [`PackedMatrix::matmul`] (each weight loaded once per block).
const ROW_BLOCK: usize = 4;

/// How a matrix's weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementFormat {
    /// IEEE half precision.
    F16,
    /// bfloat16 (the top half of an f32).
    Bf16,
    /// Single precision.
    F32,
}

#[derive(Clone, Debug)]
enum Elements {
    F16(Vec<u16>),
    Bf16(Vec<u16>),
    F32(Vec<f32>),
}

/// A weight matrix packed in panels of [`PANEL`] rows (see the module docs).
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    elements: Elements,
}

/// Exact f16 → f32 without hardware support: the 15 magnitude bits moved into an f32's place
/// and rebiased by one multiplication by 2^112 (exact for normal and subnormal halves alike),
/// then the sign. Finite halves only (packing refuses others).
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let magnitude = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits(0x7780_0000);
    f32::from_bits(magnitude.to_bits() | ((h & 0x8000) << 16))
}

#[inline(always)]
fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// The f16 bits of `v` if f16 holds it exactly (finite values only).
fn exact_f16(v: f32) -> Option<u16> {
    let h = half::f16::from_f32(v);
    (v.is_finite() && h.to_f32().to_bits() == v.to_bits()).then_some(h.to_bits())
}

/// The bf16 bits of `v` if bf16 holds it exactly.
fn exact_bf16(v: f32) -> Option<u16> {
    let bits = v.to_bits();
    (bits & 0xffff == 0).then_some((bits >> 16) as u16)
}

impl PackedMatrix {
    /// Packs the rows of `parts` one after another (all with `cols` columns, row-major
    /// `[rows, cols]` each), in the narrowest exact format.
    ///
    /// # Panics
    ///
    /// If a part's length is not a multiple of `cols` (`cols` must be > 0).
    pub fn stack(parts: &[&[f32]], cols: usize) -> Self {
        let rows: usize = parts.iter().map(|p| p.len() / cols).sum();
        let row = |r: usize| -> &[f32] {
            let mut r = r;
            for part in parts {
                let n = part.len() / cols;
                if r < n {
                    return part.get(r * cols..(r + 1) * cols).unwrap_or_default();
                }
                r -= n;
            }
            &[]
        };
        let values = || parts.iter().flat_map(|p| p.iter().copied());
        let panels = rows.div_ceil(PANEL);
        // Panel p, column c, lane l ← W[32p + l][c].
        let packed = |convert: &dyn Fn(f32) -> u16| -> Vec<u16> {
            let mut out = vec![0u16; panels * cols * PANEL];
            for (p, panel) in out.chunks_exact_mut(cols * PANEL).enumerate() {
                for l in 0..PANEL.min(rows.saturating_sub(p * PANEL)) {
                    for (c, &w) in row(p * PANEL + l).iter().enumerate() {
                        if let Some(slot) = panel.get_mut(c * PANEL + l) {
                            *slot = convert(w);
                        }
                    }
                }
            }
            out
        };
        let elements = if values().all(|v| exact_f16(v).is_some()) {
            Elements::F16(packed(&|v| exact_f16(v).unwrap_or(0)))
        } else if values().all(|v| exact_bf16(v).is_some()) {
            Elements::Bf16(packed(&|v| exact_bf16(v).unwrap_or(0)))
        } else {
            let mut out = vec![0f32; panels * cols * PANEL];
            for (p, panel) in out.chunks_exact_mut(cols * PANEL).enumerate() {
                for l in 0..PANEL.min(rows.saturating_sub(p * PANEL)) {
                    for (c, &w) in row(p * PANEL + l).iter().enumerate() {
                        if let Some(slot) = panel.get_mut(c * PANEL + l) {
                            *slot = w;
                        }
                    }
                }
            }
            Elements::F32(out)
        };
        Self {
            rows,
            cols,
            elements,
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The storage format chosen at packing.
    pub fn format(&self) -> ElementFormat {
        match self.elements {
            Elements::F16(_) => ElementFormat::F16,
            Elements::Bf16(_) => ElementFormat::Bf16,
            Elements::F32(_) => ElementFormat::F32,
        }
    }

    /// Bytes of weight storage.
    pub fn bytes(&self) -> usize {
        match &self.elements {
            Elements::F16(v) | Elements::Bf16(v) => v.len() * 2,
            Elements::F32(v) => v.len() * 4,
        }
    }

    /// Panels per parallel task: about four tasks per thread, so that a thread that the OS
    /// preempts leaves work for the others to steal.
    fn panels_per_task(&self) -> usize {
        let panels = self.rows.div_ceil(PANEL);
        panels.div_ceil(4 * rayon::current_num_threads()).max(1)
    }

    /// `y = W x` for one input row: `x` has `cols` values, `y` `rows`.
    ///
    /// # Panics
    ///
    /// If `x` or `y` is shorter than the matrix needs.
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) {
        let x = x.get(..self.cols).unwrap_or_else(|| short("x"));
        let y = y.get_mut(..self.rows).unwrap_or_else(|| short("y"));
        let per_task = self.panels_per_task();
        let stride = self.cols * PANEL;
        y.par_chunks_mut(per_task * PANEL)
            .enumerate()
            .for_each(|(task, y)| {
                for (i, y) in y.chunks_mut(PANEL).enumerate() {
                    let panel = (task * per_task + i) * stride;
                    let mut acc = [0f32; PANEL];
                    match &self.elements {
                        Elements::F16(w) => panel_f16(x, slice(w, panel, stride), &mut acc),
                        Elements::Bf16(w) => panel_bf16(x, slice(w, panel, stride), &mut acc),
                        Elements::F32(w) => panel_f32(x, slice(w, panel, stride), &mut acc),
                    }
                    for (out, a) in y.iter_mut().zip(acc) {
                        *out = a;
                    }
                }
            });
    }

    /// `Y = X Wᵀ` for `n` input rows: `x` is `[n, cols]`, `y` `[n, rows]`, both row-major.
    /// Row `r` of the result is bit-identical to `matvec` of row `r`.
    ///
    /// # Panics
    ///
    /// If `x` or `y` is shorter than the shapes need.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        if n == 1 {
            return self.matvec(x, y);
        }
        let (rows, cols) = (self.rows, self.cols);
        let x = x.get(..n * cols).unwrap_or_else(|| short("x"));
        let y = y.get_mut(..n * rows).unwrap_or_else(|| short("y"));
        // Tasks own blocks of token rows (disjoint rows of y) and walk every panel, which they
        // convert to f32 once per block of rows.
        let threads = rayon::current_num_threads();
        let per_task = n.div_ceil(threads).div_ceil(ROW_BLOCK).max(1) * ROW_BLOCK;
        y.par_chunks_mut(per_task * rows)
            .zip(x.par_chunks(per_task * cols))
            .for_each(|(y, x)| {
                let mut panel_f32 = vec![0f32; cols * PANEL];
                for p in 0..rows.div_ceil(PANEL) {
                    let stride = cols * PANEL;
                    match &self.elements {
                        Elements::F16(w) => {
                            convert_f16(slice(w, p * stride, stride), &mut panel_f32)
                        }
                        Elements::Bf16(w) => {
                            for (o, &h) in panel_f32.iter_mut().zip(slice(w, p * stride, stride)) {
                                *o = bf16_to_f32(h);
                            }
                        }
                        Elements::F32(w) => panel_f32.copy_from_slice(slice(w, p * stride, stride)),
                    }
                    let width = PANEL.min(rows - p * PANEL);
                    let mut x_blocks = x.chunks(ROW_BLOCK * cols);
                    for y_block in y.chunks_mut(ROW_BLOCK * rows) {
                        let Some(x_block) = x_blocks.next() else {
                            break;
                        };
                        rows_times_panel(
                            x_block,
                            cols,
                            &panel_f32,
                            y_block,
                            rows,
                            p * PANEL,
                            width,
                        );
                    }
                }
            });
    }
}

#[cold]
fn short(what: &str) -> ! {
    #[allow(clippy::panic)] // a caller bug (buffers sized from the config), not user input
    {
        panic!("PackedMatrix: `{what}` is shorter than the matrix needs")
    }
}

fn slice<T>(v: &[T], start: usize, len: usize) -> &[T] {
    v.get(start..start + len).unwrap_or_else(|| short("panel"))
}

/// Up to [`ROW_BLOCK`] token rows times one f32 panel: `y[r][first + l] = Σ_c x[r][c]·panel[c][l]`.
fn rows_times_panel(
    x: &[f32],
    cols: usize,
    panel: &[f32],
    y: &mut [f32],
    rows: usize,
    first: usize,
    width: usize,
) {
    let n = x.len() / cols;
    let mut acc = [[0f32; PANEL]; ROW_BLOCK];
    if n == ROW_BLOCK {
        block_f32(x, cols, panel, &mut acc);
    } else {
        for (acc, x) in acc.iter_mut().zip(x.chunks_exact(cols)) {
            panel_f32(x, panel, acc);
        }
    }
    for (acc, y) in acc.iter().zip(y.chunks_mut(rows)) {
        if let Some(out) = y.get_mut(first..first + width) {
            out.copy_from_slice(acc.get(..width).unwrap_or_default());
        }
    }
}

// ---- the panel loops: portable versions, and the same code compiled for AVX2 ----

#[inline(always)]
fn panel_generic<T: Copy>(x: &[f32], w: &[T], acc: &mut [f32; PANEL], to_f32: impl Fn(T) -> f32) {
    for (&xc, wc) in x.iter().zip(w.chunks_exact(PANEL)) {
        for (a, &wl) in acc.iter_mut().zip(wc) {
            *a += xc * to_f32(wl);
        }
    }
}

#[inline(always)]
fn block_generic(x: &[f32], cols: usize, w: &[f32], acc: &mut [[f32; PANEL]; ROW_BLOCK]) {
    let (x0, rest) = x.split_at(cols);
    let (x1, rest) = rest.split_at(cols);
    let (x2, x3) = rest.split_at(cols);
    let [a0, a1, a2, a3] = acc;
    for ((((wc, &c0), &c1), &c2), &c3) in w.chunks_exact(PANEL).zip(x0).zip(x1).zip(x2).zip(x3) {
        let lanes = a0
            .iter_mut()
            .zip(a1.iter_mut())
            .zip(a2.iter_mut())
            .zip(a3.iter_mut());
        for ((((a0, a1), a2), a3), &wl) in lanes.zip(wc) {
            *a0 += c0 * wl;
            *a1 += c1 * wl;
            *a2 += c2 * wl;
            *a3 += c3 * wl;
        }
    }
}

fn panel_f32(x: &[f32], w: &[f32], acc: &mut [f32; PANEL]) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: `available` checked that this CPU has AVX2 and F16C.
        return unsafe { x86::panel_f32(x, w, acc) };
    }
    panel_generic(x, w, acc, |v| v);
}

fn panel_bf16(x: &[f32], w: &[u16], acc: &mut [f32; PANEL]) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: as above.
        return unsafe { x86::panel_bf16(x, w, acc) };
    }
    panel_generic(x, w, acc, bf16_to_f32);
}

fn panel_f16(x: &[f32], w: &[u16], acc: &mut [f32; PANEL]) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: as above.
        return unsafe { x86::panel_f16(x, w, acc) };
    }
    panel_f16_portable(x, w, acc);
}

fn panel_f16_portable(x: &[f32], w: &[u16], acc: &mut [f32; PANEL]) {
    panel_generic(x, w, acc, f16_to_f32);
}

fn block_f32(x: &[f32], cols: usize, w: &[f32], acc: &mut [[f32; PANEL]; ROW_BLOCK]) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: as above.
        return unsafe { x86::block_f32(x, cols, w, acc) };
    }
    block_generic(x, cols, w, acc);
}

fn convert_f16(w: &[u16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: as above.
        return unsafe { x86::convert_f16(w, out) };
    }
    for (o, &h) in out.iter_mut().zip(w) {
        *o = f16_to_f32(h);
    }
}

/// Runs `f` with AVX2 enabled where the CPU has it (the closure's loops are compiled twice), so
/// that the engine's other vector loops (retention, norms) vectorize 8 wide too.
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: as above.
        return unsafe { x86::with_avx2(f) };
    }
    f()
}

/// The same loops compiled for AVX2, and the F16C conversion, chosen at run time. Each function
/// computes exactly what its portable twin computes (same operations, same order).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{block_generic, panel_generic, PANEL, ROW_BLOCK};
    use std::arch::x86_64::*;

    /// Whether this CPU has AVX2 and F16C (std caches the detection).
    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c")
    }

    /// # Safety
    /// The CPU must have AVX2 and F16C ([`available`]).
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// # Safety
    /// As [`with_avx2`].
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn panel_f32(x: &[f32], w: &[f32], acc: &mut [f32; PANEL]) {
        panel_generic(x, w, acc, |v| v);
    }

    /// # Safety
    /// As [`with_avx2`].
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn panel_bf16(x: &[f32], w: &[u16], acc: &mut [f32; PANEL]) {
        panel_generic(x, w, acc, super::bf16_to_f32);
    }

    /// # Safety
    /// As [`with_avx2`].
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn block_f32(
        x: &[f32],
        cols: usize,
        w: &[f32],
        acc: &mut [[f32; PANEL]; ROW_BLOCK],
    ) {
        block_generic(x, cols, w, acc);
    }

    /// `acc[l] += x[c] · f32(w[c][l])` with the hardware conversion (VCVTPH2PS, exact).
    ///
    /// # Safety
    /// As [`with_avx2`].
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn panel_f16(x: &[f32], w: &[u16], acc: &mut [f32; PANEL]) {
        let [a0, a1, a2, a3] = acc_lanes(acc);
        let (mut a0, mut a1, mut a2, mut a3) = (a0, a1, a2, a3);
        for (&xc, wc) in x.iter().zip(w.chunks_exact(PANEL)) {
            let xv = _mm256_set1_ps(xc);
            // SAFETY: `wc` holds exactly PANEL = 32 u16, four unaligned 16-byte loads.
            let p = wc.as_ptr().cast::<__m128i>();
            let (w0, w1, w2, w3) = unsafe {
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(p)),
                    _mm256_cvtph_ps(_mm_loadu_si128(p.add(1))),
                    _mm256_cvtph_ps(_mm_loadu_si128(p.add(2))),
                    _mm256_cvtph_ps(_mm_loadu_si128(p.add(3))),
                )
            };
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(xv, w0));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(xv, w1));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(xv, w2));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(xv, w3));
        }
        store_lanes(acc, [a0, a1, a2, a3]);
    }

    /// # Safety
    /// As [`with_avx2`].
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn convert_f16(w: &[u16], out: &mut [f32]) {
        let mut ws = w.chunks_exact(8);
        let mut os = out.chunks_exact_mut(8);
        for (wc, oc) in (&mut ws).zip(&mut os) {
            // SAFETY: both chunks hold exactly 8 elements (16 and 32 bytes), unaligned access.
            unsafe {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(wc.as_ptr().cast::<__m128i>()));
                _mm256_storeu_ps(oc.as_mut_ptr(), v);
            }
        }
        for (o, &h) in os.into_remainder().iter_mut().zip(ws.remainder()) {
            *o = super::f16_to_f32(h);
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    unsafe fn acc_lanes(acc: &[f32; PANEL]) -> [__m256; 4] {
        let mut lanes = acc.chunks_exact(8);
        let mut next = || {
            // SAFETY: each chunk holds exactly 8 f32 (32 bytes), unaligned load.
            lanes.next().map_or_else(
                || _mm256_setzero_ps(),
                |c| unsafe { _mm256_loadu_ps(c.as_ptr()) },
            )
        };
        [next(), next(), next(), next()]
    }

    #[target_feature(enable = "avx2,f16c")]
    unsafe fn store_lanes(acc: &mut [f32; PANEL], lanes: [__m256; 4]) {
        for (c, v) in acc.chunks_exact_mut(8).zip(lanes) {
            // SAFETY: each chunk holds exactly 8 f32 (32 bytes), unaligned store.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), v) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    fn reference(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f64> {
        (0..rows)
            .map(|r| {
                (0..cols)
                    .map(|c| w[r * cols + c] as f64 * x[c] as f64)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn f16_conversion_is_exact_for_every_finite_half() {
        for bits in 0..=u16::MAX {
            let h = half::f16::from_bits(bits);
            if h.is_finite() {
                assert_eq!(
                    f16_to_f32(bits).to_bits(),
                    h.to_f32().to_bits(),
                    "{bits:#x}"
                );
            }
        }
        let all: Vec<u16> = (0..=u16::MAX)
            .filter(|&b| half::f16::from_bits(b).is_finite())
            .collect();
        let mut out = vec![0f32; all.len()];
        convert_f16(&all, &mut out);
        for (&b, &o) in all.iter().zip(&out) {
            assert_eq!(o.to_bits(), half::f16::from_bits(b).to_f32().to_bits());
        }
    }

    #[test]
    fn products_match_f64_and_simd_matches_portable_bit_for_bit() {
        for &(rows, cols, format) in &[
            (1usize, 1usize, ElementFormat::F32),
            (37, 19, ElementFormat::F16),
            (64, 48, ElementFormat::Bf16),
            (100, 256, ElementFormat::F16),
            (33, 7, ElementFormat::F32),
        ] {
            let mut w = values(rows * cols, rows as u64);
            for v in &mut w {
                *v = match format {
                    ElementFormat::F16 => half::f16::from_f32(*v).to_f32(),
                    // Beyond f16's range, so that bf16 is the narrowest exact format.
                    ElementFormat::Bf16 => half::bf16::from_f32(*v * 1e6).to_f32(),
                    ElementFormat::F32 => *v,
                };
            }
            let (top, bottom) = w.split_at(rows / 2 * cols);
            let m = PackedMatrix::stack(&[top, bottom], cols);
            if format != ElementFormat::F32 || rows > 1 {
                assert_eq!(m.format(), format, "{rows}x{cols}");
            }
            for n in [1usize, 2, 4, 5, 9] {
                let x = values(n * cols, 7 + n as u64);
                let mut y = vec![f32::NAN; n * rows];
                m.matmul(&x, n, &mut y);
                for r in 0..n {
                    let xr = &x[r * cols..][..cols];
                    let want = reference(&w, rows, cols, xr);
                    let mut one = vec![f32::NAN; rows];
                    m.matvec(xr, &mut one);
                    let mut portable = vec![0f32; rows];
                    for (p, chunk) in portable.chunks_mut(PANEL).enumerate() {
                        let mut acc = [0f32; PANEL];
                        let stride = cols * PANEL;
                        match &m.elements {
                            Elements::F16(e) => {
                                panel_f16_portable(xr, &e[p * stride..][..stride], &mut acc)
                            }
                            Elements::Bf16(e) => {
                                panel_generic(xr, &e[p * stride..][..stride], &mut acc, bf16_to_f32)
                            }
                            Elements::F32(e) => {
                                panel_generic(xr, &e[p * stride..][..stride], &mut acc, |v| v)
                            }
                        }
                        chunk.copy_from_slice(&acc[..chunk.len()]);
                    }
                    for o in 0..rows {
                        let got = y[r * rows + o];
                        // Sequential f32 summation: |error| ≤ n·u·Σ|x_c·w_c| (u = 2^-24).
                        let magnitude: f64 = (0..cols)
                            .map(|c| (xr[c] as f64 * w[o * cols + c] as f64).abs())
                            .sum();
                        let bound = cols as f64 * f32::EPSILON as f64 * magnitude;
                        assert!(
                            (got as f64 - want[o]).abs() <= bound,
                            "{rows}x{cols} n={n}: {got} vs {}",
                            want[o]
                        );
                        assert_eq!(got.to_bits(), one[o].to_bits(), "matmul row = matvec");
                        assert_eq!(got.to_bits(), portable[o].to_bits(), "SIMD = portable");
                    }
                }
            }
        }
    }

    #[test]
    fn non_finite_or_inexact_weights_stay_f32() {
        let m = PackedMatrix::stack(&[&[1.0, f32::INFINITY]], 2);
        assert_eq!(m.format(), ElementFormat::Bf16); // inf is exact in bf16
        let m = PackedMatrix::stack(&[&[1.0, 0.1]], 2);
        assert_eq!(m.format(), ElementFormat::F32);
        let m = PackedMatrix::stack(&[&[1.0, 0.5, -2.0]], 3);
        assert_eq!(m.format(), ElementFormat::F16);
    }
}
