//! Depthwise convs (one input channel per output channel).
//!
//! On 8-bit operands with AVX-512 VNNI the kernels of
//! [`super::depthwise_bytes`] run them (the byte table of
//! [`super::depthwise_table`] where the CPU has VBMI); else small outputs
//! (at most 8 x 8 positions) with 16-bit operands go through
//! [`super::depthwise_lanes`] (channels in the vector lanes); the paths
//! here take the others.
//!
//! Where the operands fit i16 (`fits16` in `conv.rs`), a whole layer goes
//! through [`depthwise_madd`] (x86-64 with AVX2, detected at run time):
//! each channel is written into a layout of *row pairs*, one i32 word per
//! column holding the padded values of rows `r` (low i16) and `r + 1`
//! (high i16), so that one `vpmaddwd` of such words with a broadcast pair
//! of weights (taps `(ky, kx)` and `(ky + 1, kx)`) sums two taps of eight
//! outputs (a 3 x 3 kernel: six `vpmaddwd` per eight outputs, the last
//! row's pair weight zero in its high half). The layout's buffer is zeroed
//! once per layer and only the words holding input values are rewritten
//! per channel (the borders stay zero), so no channel pays a clear. Three
//! layouts:
//! - [`FlatGeom`] (stride 1, "same" padding, rows 4 or a multiple of 8
//!   wide): no border columns, pair rows back to back, so 8 consecutive
//!   outputs (a block of a row, or two rows of a 4 wide map) are one
//!   vector; a tap that would read a border column reads a word of the
//!   neighbouring row with weight zero in that lane (per-lane masked weight
//!   vectors for the first, middle and last vector of a row);
//! - [`Flat2Geom`] (stride 2, "same" padding, even maps, output rows 4 or a
//!   multiple of 8 wide): the same with each pair row split into its even
//!   and odd columns;
//! - [`PairGeom`] (any other stride, padding or width): zero-bordered pair
//!   rows split by column phase, 8 outputs of a row per vector with a
//!   masked store for the last columns (4 columns of two rows for outputs
//!   at most 4 wide).
//!
//! With a requantization fused into the conv (`run_conv_fused`), each
//! channel's sums go into a one-channel buffer and are requantized from
//! there into the output rows (`fused::requant_channel`, the arithmetic of
//! the post-pass `requant_clamped`) while they are in L1: no accumulator
//! tensor, no requantization pass. [`depthwise16`] picks between these
//! paths and the lanes kernel.
//!
//! Otherwise (wider operands, no AVX2) each channel is copied into a
//! zero-bordered, phase-split layout ([`Phased`]) so that every tap of an
//! output row reads consecutive values, then
//! - on x86-64 with AVX2, for i32: [`depthwise_avx2_kernel`], eight outputs
//!   of a row per vector (`vpmulld`, `vpaddd`; a last four in SSE lanes),
//!   all taps summed in one register;
//! - otherwise, and for the columns the kernel leaves, i64 and f64:
//!   [`depthwise_from`], the plain loop (the reference of the tests).
//!
//! An integer sum does not depend on the order of its terms, and a pair sum
//! of `vpmaddwd` is exact for i16 operands not both -2^15, so every path
//! gives the same results (the tests compare them with the definition).

use super::conv::Num;
use super::depthwise_bytes::{depthwise_bytes, DwBytes};
use super::depthwise_lanes::{depthwise_lanes, takes_lanes};
use super::fused::{requant_channel, Epilogue};

/// A zero-bordered channel split by column phase for stride `s`: the value
/// at padded row `r`, column `x` is `v[((x % s) * rows + r) * cols + x / s]`,
/// so an output row's taps at one `(ky, kx)` are consecutive values.
pub(super) struct Phased<'a, T> {
    v: &'a [T],
    s: usize,
    rows: usize,
    cols: usize,
}

impl<T> Phased<'_, T> {
    /// Where tap `(ky, kx)` of output `(oy, ox)` reads.
    #[inline(always)]
    fn at(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> usize {
        ((kx % self.s) * self.rows + oy * self.s + ky) * self.cols + kx / self.s + ox
    }

    /// Whether every tap of an `oh x ow` output with a `k x k` kernel reads
    /// inside `v` and inside its phase row: `(k-1)/s + ow <= cols` and
    /// `(oh-1)*s + k <= rows` (true for the layout of [`depthwise_body`]).
    pub(super) fn holds(&self, k: usize, oh: usize, ow: usize) -> bool {
        self.s >= 1
            && k >= 1
            && (k - 1) / self.s + ow <= self.cols
            && (oh.max(1) - 1) * self.s + k <= self.rows
            && self.v.len() >= self.s * self.rows * self.cols
    }
}

/// [`Num::depthwise_phased`] for the output columns `from..ow` of every row.
pub(super) fn depthwise_from<T: Num>(
    d: &Phased<T>,
    w: &[T],
    k: usize,
    out: &mut [T],
    ow: usize,
    from: usize,
) {
    if from >= ow {
        return;
    }
    // Tap offsets relative to output (oy, ox), computed once (no division
    // per tap): `at(oy, ox, ky, kx) = at(0, 0, ky, kx) + oy * s * cols + ox`.
    let offs: Vec<usize> = (0..k * k).map(|t| d.at(0, 0, t / k, t % k)).collect();
    for (oy, orow) in out.chunks_exact_mut(ow).enumerate() {
        for (ox, o) in orow.iter_mut().enumerate().skip(from) {
            let base = oy * d.s * d.cols + ox;
            let mut s = T::default();
            for (&off, &wt) in offs.iter().zip(w) {
                s = s + wt * d.v[base + off];
            }
            *o = s;
        }
    }
}

/// Eight outputs of a row at a time (then four), summed over all taps in
/// one register (`vpmulld`, `vpaddd`). Returns how many leading columns of
/// each row it computed (0 for kernels of over 8 x 8 taps). Bounds: with
/// [`Phased::holds`] true, for `ox + 8 <= ow` (or 4) every tap's vector is
/// inside its phase row, and every store inside `out`.
///
/// # Safety
///
/// - The CPU must support AVX2.
/// - `d.holds(k, out.len() / ow, ow)` must be true (every tap of every
///   output reads inside `d.v`), and `w.len() >= k * k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn depthwise_avx2_kernel(
    d: &Phased<i32>,
    w: &[i32],
    k: usize,
    out: &mut [i32],
    ow: usize,
) -> usize {
    use std::arch::x86_64::*;
    let oh = out.len() / ow.max(1);
    let ow8 = ow / 8 * 8;
    // A last group of four columns (maps 4 or 12 wide) in SSE lanes.
    let ow4 = if ow - ow8 >= 4 { ow8 + 4 } else { ow8 };
    // Where each tap reads relative to output (oy, 0) (up to 8 x 8 taps).
    const MAX_TAPS: usize = 64;
    let taps = k * k;
    if taps > MAX_TAPS {
        return 0;
    }
    let mut offs = [0usize; MAX_TAPS];
    for (t, o) in offs.iter_mut().enumerate().take(taps) {
        *o = d.at(0, 0, t / k, t % k);
    }
    // One vector of output columns `ox..` of row `oy`, summed over all taps.
    macro_rules! taps {
        ($v:ty, $zero:ident, $load:ident, $set1:ident, $mul:ident, $add:ident, $store:ident,
         $oy:expr, $ox:expr) => {
            // SAFETY: AVX2 is this function's own feature; the caller's
            // `d.holds(k, oh, ow)` puts every tap of outputs `ox..ox + 8`
            // (or 4) of row `oy` inside `d.v`, and `oy * ow + ox + 8 <=
            // oh * ow <= out.len()` (or 4) puts the store inside `out`.
            unsafe {
                let base = d.v.as_ptr().add($oy * d.s * d.cols + $ox);
                let mut acc = $zero();
                for (&off, &wt) in offs[..taps].iter().zip(&w[..taps]) {
                    let x = $load(base.add(off) as *const $v);
                    acc = $add(acc, $mul(x, $set1(wt)));
                }
                $store(out.as_mut_ptr().add($oy * ow + $ox) as *mut $v, acc);
            }
        };
    }
    for oy in 0..oh {
        for ox in (0..ow8).step_by(8) {
            taps!(
                __m256i,
                _mm256_setzero_si256,
                _mm256_loadu_si256,
                _mm256_set1_epi32,
                _mm256_mullo_epi32,
                _mm256_add_epi32,
                _mm256_storeu_si256,
                oy,
                ox
            );
        }
        if ow4 > ow8 {
            taps!(
                __m128i,
                _mm_setzero_si128,
                _mm_loadu_si128,
                _mm_set1_epi32,
                _mm_mullo_epi32,
                _mm_add_epi32,
                _mm_storeu_si128,
                oy,
                ow8
            );
        }
    }
    ow4
}

/// Depthwise conv of one channel: `out[oh x ow] = sum w[ky,kx] * in[...]`.
/// The channel is first copied into `padded` with its zero border, its
/// columns split by phase for the stride ([`Phased`]), so no tap needs
/// edge cases and every tap of an output row reads consecutive values.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn depthwise_body<T: Num>(
    input: &[T],
    ih: usize,
    iw: usize,
    w: &[T],
    k: usize,
    stride: usize,
    pad: usize,
    out: &mut [T],
    oh: usize,
    ow: usize,
    padded: &mut Vec<T>,
) {
    let (rows, s) = (ih + 2 * pad, stride.max(1));
    let cols = (iw + 2 * pad).div_ceil(s);
    padded.clear();
    padded.resize(s * rows * cols, T::default());
    for (y, row) in input.chunks_exact(iw).take(ih).enumerate() {
        if s == 1 {
            padded[(y + pad) * cols + pad..(y + pad) * cols + pad + iw].copy_from_slice(row);
        } else {
            for phase in 0..s {
                let at = (phase * rows + y + pad) * cols;
                let dst = &mut padded[at..at + cols];
                // Padded column c * s + phase is input column c * s + phase - pad.
                for (c, d) in dst.iter_mut().enumerate() {
                    if let Some(&v) = (c * s + phase).checked_sub(pad).and_then(|x| row.get(x)) {
                        *d = v;
                    }
                }
            }
        }
    }
    let d = Phased {
        v: padded,
        s,
        rows,
        cols,
    };
    T::depthwise_phased(&d, w, k, &mut out[..oh * ow], ow);
}

/// Geometry of the row-pair layout of [`depthwise_madd`] for one channel:
/// `s` phases of `rows` pair rows of `cols` words each. The word at phase
/// `p`, pair row `r`, column `c` holds the padded values at rows `r` (low
/// i16) and `r + 1` (high i16; zero past the last row) of padded column
/// `c * s + p`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct PairGeom {
    pub s: usize,
    pub rows: usize,
    pub cols: usize,
    /// Tap groups `(gy, kx)`: taps `(2 gy, kx)` and `(2 gy + 1, kx)`.
    pub groups: usize,
}

/// The most tap groups [`depthwise_madd`] takes (kernels up to 7 x 7).
const MAX_GROUPS: usize = 28;

/// The shape of a `k x k` (`k >= 1`), stride `s` (at least 1), padding
/// `pad` conv of an `ih x iw` map (not empty) to `oh x ow`, which the
/// kernel fits once padded: what every depthwise layout starts from
/// ([`ConvShape::new`] checks it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ConvShape {
    pub ih: usize,
    pub iw: usize,
    pub k: usize,
    pub s: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvShape {
    /// The shape, where `oh x ow` is that conv's output; else `None`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        ih: usize,
        iw: usize,
        k: usize,
        s: usize,
        pad: usize,
        oh: usize,
        ow: usize,
    ) -> Option<ConvShape> {
        let (ph, pw) = (ih + 2 * pad, iw + 2 * pad);
        let ok = k >= 1
            && s >= 1
            && ih >= 1
            && iw >= 1
            && k <= ph
            && k <= pw
            && oh == (ph - k) / s + 1
            && ow == (pw - k) / s + 1;
        ok.then_some(ConvShape {
            ih,
            iw,
            k,
            s,
            pad,
            oh,
            ow,
        })
    }
}

impl PairGeom {
    /// The layout for a `k x k`, stride `stride`, padding `pad` depthwise
    /// conv of an `ih x iw` map to `oh x ow`, or `None` where the shapes do
    /// not match or `k` is over 7. Its columns cover every vector the
    /// kernel loads: 8 (or 4, for outputs at most 4 wide) output columns
    /// past each row's start, whatever the row's width.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        ih: usize,
        iw: usize,
        k: usize,
        stride: usize,
        pad: usize,
        oh: usize,
        ow: usize,
    ) -> Option<PairGeom> {
        let s = stride.max(1);
        let (rows, width) = (ih + 2 * pad, iw + 2 * pad);
        let groups = k.div_ceil(2) * k;
        if groups > MAX_GROUPS || ConvShape::new(ih, iw, k, s, pad, oh, ow).is_none() {
            return None;
        }
        let lanes = if ow <= 4 { 4 } else { ow.div_ceil(8) * 8 };
        let cols = width.div_ceil(s).max((k - 1) / s + lanes);
        Some(PairGeom {
            s,
            rows,
            cols,
            groups,
        })
    }

    fn len(&self) -> usize {
        self.s * self.rows * self.cols
    }

    /// Where tap group `g` of output `(0, 0)` reads: the group's first row
    /// `2 (g / k)`, its column `g % k` in its phase.
    fn offset(&self, g: usize, k: usize) -> usize {
        let (gy, kx) = (g / k, g % k);
        ((kx % self.s) * self.rows + 2 * gy) * self.cols + kx / self.s
    }
}

/// The weight words of one channel's tap groups: group `(gy, kx)` is taps
/// `(2 gy, kx)` (low i16) and `(2 gy + 1, kx)` (high i16, zero past the
/// kernel), so one `vpmaddwd` of a pair-row word sums both taps.
#[inline(always)]
fn pair_weights(w: &[i32], k: usize, out: &mut [i32; MAX_GROUPS]) {
    for gy in 0..k.div_ceil(2) {
        for kx in 0..k {
            let lo = w[2 * gy * k + kx] as u16 as u32;
            let hi = if 2 * gy + 1 < k {
                w[(2 * gy + 1) * k + kx] as u16 as u32
            } else {
                0
            };
            out[gy * k + kx] = (lo | hi << 16) as i32;
        }
    }
}

/// Where each phase's input values go in its rows of the row-pair layout:
/// `(c0, x0, n)`: phase row columns `c0..c0 + n` hold input columns `x0,
/// x0 + s, ...` (padded column `c * s + phase` is input column `c * s +
/// phase - pad`). Computed once per layer.
fn phase_spans(iw: usize, pad: usize, s: usize) -> Vec<(usize, usize, usize)> {
    (0..s)
        .map(|phase| {
            let c0 = pad.saturating_sub(phase).div_ceil(s);
            let x0 = c0 * s + phase - pad;
            (c0, x0, iw.saturating_sub(x0).div_ceil(s))
        })
        .collect()
}

/// Writes channel `x` (`ih x iw`, values in i16) into its row-pair layout
/// `buf` (of [`PairGeom::len`] words, zeroed once per layer): only the words
/// that hold an input value (`spans`: [`phase_spans`]; `zeros`: `iw`
/// zeros). The others (border columns, pair rows that hold only padding)
/// are never written, so they stay zero for every channel of the layer.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pair_layout(
    x: &[i32],
    ih: usize,
    iw: usize,
    pad: usize,
    g: &PairGeom,
    spans: &[(usize, usize, usize)],
    zeros: &[i32],
    buf: &mut [i32],
) {
    #[inline(always)]
    fn word(lo: i32, hi: i32) -> i32 {
        ((lo as u16 as u32) | ((hi as u32) << 16)) as i32
    }
    /// `dst[i] = word(a[s * i], b[s * i])`.
    #[inline(always)]
    fn fill<const S: usize>(dst: &mut [i32], a: &[i32], b: &[i32], s: usize) {
        let s = if S == 0 { s } else { S };
        for (d, (ca, cb)) in dst.iter_mut().zip(a.chunks(s).zip(b.chunks(s))) {
            *d = word(ca[0], cb[0]);
        }
    }
    // Padded row `y` of the input (`zeros` where it is padding).
    let row = |y: usize| match y.checked_sub(pad) {
        Some(y) if y < ih => &x[y * iw..(y + 1) * iw],
        _ => &zeros[..iw],
    };
    // Pair row r holds padded rows r and r + 1: input rows r - pad and
    // r + 1 - pad; only pair rows pad - 1 ..= pad + ih - 1 hold any.
    for r in pad.saturating_sub(1)..(pad + ih).min(g.rows) {
        let (a, b) = (row(r), row(r + 1));
        for (phase, &(c0, x0, n)) in spans.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let at = (phase * g.rows + r) * g.cols + c0;
            let dst = &mut buf[at..at + n];
            match g.s {
                1 => fill::<1>(dst, &a[x0..], &b[x0..], 1),
                2 => fill::<2>(dst, &a[x0..], &b[x0..], 2),
                s => fill::<0>(dst, &a[x0..], &b[x0..], s),
            }
        }
    }
}

/// The AVX2 `vpmaddwd` kernel of one channel over its row-pair layout
/// `buf`: per vector, 8 outputs of a row (a masked store for the last
/// columns), or for outputs at most 4 wide, 4 columns of two rows (the
/// two halves loaded from the two rows); each tap group one `vpmaddwd` of
/// the pair-row words with the group's weight word broadcast, summed in
/// one register (`vpaddd`).
///
/// # Safety
///
/// - The CPU must support AVX2.
/// - `g` must be [`PairGeom::new`]'s layout for this conv's `k`, `oh`,
///   `ow`, `buf.len() >= g.len()`, `offs` its [`PairGeom::offset`]s (`g.groups`
///   of them), `wv.len() >= g.groups`, and `out.len() >= oh * ow`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn depthwise_madd_kernel(
    g: &PairGeom,
    buf: &[i32],
    offs: &[usize],
    wv: &[i32],
    out: &mut [i32],
    oh: usize,
    ow: usize,
) {
    use std::arch::x86_64::*;
    let n = g.groups;
    let (src, dst) = (buf.as_ptr(), out.as_mut_ptr());
    let row_step = g.s * g.cols;
    // The sum over the `n` tap groups of the vector `$load` read at the
    // group's offset `$o`.
    macro_rules! sum {
        ($n:expr, $o:ident => $load:expr) => {{
            let mut acc = _mm256_setzero_si256();
            for i in 0..$n {
                let $o = *offs.get_unchecked(i);
                let x = $load;
                let w = _mm256_set1_epi32(*wv.get_unchecked(i));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, w));
            }
            acc
        }};
    }
    // The whole channel for `n` groups (a constant where inlined below).
    macro_rules! channel {
        ($n:expr) => {
            // SAFETY (all loads and stores): `PairGeom::new` made every
            // phase row `cols >= (k - 1) / s + 8` words (4 where `ow <= 4`)
            // and the rows hold every tap of every output row, so each
            // vector below (8 words from `oy * s * cols + ox + offs[i]`,
            // `ox + 8 <= ow` rounded up to 8; or 4 words of rows `oy` and
            // `oy + 1 < oh`) is inside `buf`; every store writes only
            // outputs `< oh * ow <= out.len()` (masked lanes write
            // nothing).
            if ow <= 4 {
                let lane = _mm_setr_epi32(0, 1, 2, 3);
                let mask = _mm_cmpgt_epi32(_mm_set1_epi32(ow as i32), lane);
                let mut oy = 0;
                while oy < oh {
                    let lo = src.add(oy * row_step);
                    let hi = if oy + 1 < oh { lo.add(row_step) } else { lo };
                    let acc = sum!($n, o => _mm256_loadu2_m128i(
                        hi.add(o) as *const __m128i,
                        lo.add(o) as *const __m128i
                    ));
                    if ow == 4 && oy + 1 < oh {
                        _mm256_storeu_si256(dst.add(oy * 4) as *mut __m256i, acc);
                    } else {
                        _mm_maskstore_epi32(dst.add(oy * ow), mask, _mm256_castsi256_si128(acc));
                        if oy + 1 < oh {
                            _mm_maskstore_epi32(
                                dst.add((oy + 1) * ow),
                                mask,
                                _mm256_extracti128_si256::<1>(acc),
                            );
                        }
                    }
                    oy += 2;
                }
            } else {
                let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((ow % 8) as i32), lane);
                for oy in 0..oh {
                    let base = src.add(oy * row_step);
                    let o = dst.add(oy * ow);
                    let mut ox = 0;
                    while ox + 8 <= ow {
                        let acc = sum!($n, f => _mm256_loadu_si256(
                            base.add(ox + f) as *const __m256i
                        ));
                        _mm256_storeu_si256(o.add(ox) as *mut __m256i, acc);
                        ox += 8;
                    }
                    if ox < ow {
                        let acc = sum!($n, f => _mm256_loadu_si256(
                            base.add(ox + f) as *const __m256i
                        ));
                        _mm256_maskstore_epi32(o.add(ox), tail, acc);
                    }
                }
            }
        };
    }
    // SAFETY: see `channel!` (bounds) and this function's `# Safety`.
    unsafe {
        match n {
            6 => channel!(6),
            15 => channel!(15),
            _ => channel!(n),
        }
    }
}

/// The flat row-pair layout of a stride-1, "same" padded depthwise conv
/// (`k` odd, `pad = (k - 1) / 2`, output as large as the input) whose rows
/// are 4 or a multiple of 8 wide (and whose map is a multiple of 8): no
/// border columns and no phases, pair row `R` (padded rows `R`, `R + 1`)
/// at words `pad + R * iw ..`, so the whole pair layout of a channel is
/// three flat loops and every 8 consecutive outputs (one block of a row, or
/// two rows 4 wide) are one vector. A tap that would read a border column
/// reads a word of the neighbouring row instead, and its weight is zero in
/// that lane (`lane_masks`), so it adds nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct FlatGeom {
    pub ih: usize,
    pub iw: usize,
    pub k: usize,
    pub pad: usize,
    pub groups: usize,
}

impl FlatGeom {
    /// The flat layout of this conv, or `None` where it does not apply.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        ih: usize,
        iw: usize,
        k: usize,
        stride: usize,
        pad: usize,
        oh: usize,
        ow: usize,
    ) -> Option<FlatGeom> {
        let groups = k.div_ceil(2) * k;
        (stride == 1
            && k % 2 == 1
            && groups <= MAX_GROUPS
            && pad == (k - 1) / 2
            && (oh, ow) == (ih, iw)
            && ih >= 1
            && (iw.is_multiple_of(8) || iw == 4)
            && (ih * iw).is_multiple_of(8)
            && pad < 8)
            .then_some(FlatGeom {
                ih,
                iw,
                k,
                pad,
                groups,
            })
    }

    /// Words of the layout: `pad` words of slack at each end around
    /// `ih + 2 pad` pair rows.
    fn len(&self) -> usize {
        2 * self.pad + (self.ih + 2 * self.pad) * self.iw
    }

    /// Vectors per row (a vector of a 4 wide map holds two rows).
    fn per_row(&self) -> usize {
        (self.iw / 8).max(1)
    }

    /// Lane masks (all ones: the tap reads inside the row) of the first,
    /// middle and last vector of a row, per tap group.
    fn lane_masks(&self) -> [[[i32; 8]; MAX_GROUPS]; 3] {
        let mut m = [[[0; 8]; MAX_GROUPS]; 3];
        let bases = [0, 8, self.iw.saturating_sub(8)];
        for (cls, &base) in bases.iter().enumerate() {
            for g in 0..self.groups {
                let kx = g % self.k;
                for l in 0..8 {
                    let col = (base + l) % self.iw + kx;
                    let inside = col >= self.pad && col < self.iw + self.pad;
                    m[cls][g][l] = if inside { -1 } else { 0 };
                }
            }
        }
        m
    }
}

/// `dst[j] = a[j]` (low i16) `| b[j] << 16` (high i16) for every `j <
/// dst.len()`, 8 words per AVX2 vector (`vpslld`, `vpblendw`), the last 4
/// in SSE lanes, the rest (fewer than 4) one by one.
///
/// # Safety
///
/// The CPU must support AVX2 (the lengths are checked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn pair_words(dst: &mut [i32], a: &[i32], b: &[i32]) {
    use std::arch::x86_64::*;
    let n = dst.len();
    assert!(a.len() >= n && b.len() >= n);
    let (pa, pb, pd) = (a.as_ptr(), b.as_ptr(), dst.as_mut_ptr());
    let mut j = 0;
    // SAFETY: every vector covers words `j..j + 8` (or 4) `<= n`, inside
    // `a`, `b` and `dst` (asserted just above).
    unsafe {
        while j + 8 <= n {
            let lo = _mm256_loadu_si256(pa.add(j) as *const __m256i);
            let hi = _mm256_slli_epi32::<16>(_mm256_loadu_si256(pb.add(j) as *const __m256i));
            let w = _mm256_blend_epi16::<0b1010_1010>(lo, hi);
            _mm256_storeu_si256(pd.add(j) as *mut __m256i, w);
            j += 8;
        }
        if j + 4 <= n {
            let lo = _mm_loadu_si128(pa.add(j) as *const __m128i);
            let hi = _mm_slli_epi32::<16>(_mm_loadu_si128(pb.add(j) as *const __m128i));
            _mm_storeu_si128(
                pd.add(j) as *mut __m128i,
                _mm_blend_epi16::<0b1010_1010>(lo, hi),
            );
            j += 4;
        }
    }
    for j in j..n {
        dst[j] = ((a[j] as u16 as u32) | ((b[j] as u32) << 16)) as i32;
    }
}

/// [`pair_words`] of `a`, `b` with their even columns written to `even`,
/// their odd ones to `odd` (`even[j]`: columns `2 j`, `odd[j]`: `2 j + 1`),
/// 16 columns per pair of AVX2 vectors (`vpermd` then `vperm2i128`), then
/// 8; rows whose width is not a multiple of 8 one by one.
///
/// # Safety
///
/// The CPU must support AVX2 (the lengths are checked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn pair_words_split(even: &mut [i32], odd: &mut [i32], a: &[i32], b: &[i32]) {
    use std::arch::x86_64::*;
    let n = 2 * even.len();
    assert!(odd.len() == even.len() && a.len() >= n && b.len() >= n);
    let word = |j: usize| ((a[j] as u16 as u32) | ((b[j] as u32) << 16)) as i32;
    if !n.is_multiple_of(8) {
        for j in 0..n / 2 {
            even[j] = word(2 * j);
            odd[j] = word(2 * j + 1);
        }
        return;
    }
    let (pa, pb, pe, po) = (a.as_ptr(), b.as_ptr(), even.as_mut_ptr(), odd.as_mut_ptr());
    // SAFETY: column vectors `j..j + 8` (or 16) `<= n` are inside `a` and
    // `b`, their halves `j / 2..` inside `even` and `odd` (asserted above).
    unsafe {
        // Eight words of columns `j..j + 8`, evens in the low 128 bits.
        let split = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
        let words = |j: usize| {
            let lo = _mm256_loadu_si256(pa.add(j) as *const __m256i);
            let hi = _mm256_slli_epi32::<16>(_mm256_loadu_si256(pb.add(j) as *const __m256i));
            _mm256_permutevar8x32_epi32(_mm256_blend_epi16::<0b1010_1010>(lo, hi), split)
        };
        let mut j = 0;
        while j + 16 <= n {
            let (p0, p1) = (words(j), words(j + 8));
            let e = _mm256_permute2x128_si256::<0x20>(p0, p1);
            let o = _mm256_permute2x128_si256::<0x31>(p0, p1);
            _mm256_storeu_si256(pe.add(j / 2) as *mut __m256i, e);
            _mm256_storeu_si256(po.add(j / 2) as *mut __m256i, o);
            j += 16;
        }
        if j + 8 <= n {
            let p0 = words(j);
            _mm_storeu_si128(pe.add(j / 2) as *mut __m128i, _mm256_castsi256_si128(p0));
            _mm_storeu_si128(
                po.add(j / 2) as *mut __m128i,
                _mm256_extracti128_si256::<1>(p0),
            );
        }
    }
}

/// Writes channel `x` (`ih x iw`, values in i16) into its flat row-pair
/// layout `buf` ([`FlatGeom::len`] words, zeroed once per layer): pair rows
/// `pad - 1` (only its high halves), `pad ..= pad + ih - 2` (both) and
/// `pad + ih - 1` (only its low halves), each a flat [`pair_words`]
/// (`zeros`: `iw` zeros). The other words stay zero.
///
/// # Safety
///
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn flat_layout(x: &[i32], f: &FlatGeom, zeros: &[i32], buf: &mut [i32]) {
    let (ih, iw, pad) = (f.ih, f.iw, f.pad);
    let x = &x[..ih * iw];
    let at = |r: usize| pad + r * iw;
    let both = (ih - 1) * iw;
    // SAFETY (the three calls): the CPU has AVX2 (this function's own
    // feature, and its caller's `# Safety`).
    unsafe {
        pair_words(&mut buf[at(pad)..at(pad) + both], x, &x[iw..]);
        if pad >= 1 {
            pair_words(&mut buf[at(pad - 1)..at(pad - 1) + iw], zeros, x);
        }
        pair_words(
            &mut buf[at(pad + ih - 1)..at(pad + ih - 1) + iw],
            &x[both..],
            zeros,
        );
    }
}

/// The AVX2 `vpmaddwd` kernel of one channel over its flat layout `buf`:
/// 8 consecutive outputs per vector, each tap group one `vpmaddwd` with the
/// group's weight word in the lanes whose tap reads inside the row (`wv`:
/// per vector class, first/middle/last of a row, and group; zero in the
/// others), summed in one register.
///
/// # Safety
///
/// - The CPU must support AVX2.
/// - `f` comes from [`FlatGeom::new`], `buf.len() >= f.len()` and
///   `out.len() >= f.ih * f.iw`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn depthwise_flat_kernel(
    f: &FlatGeom,
    buf: &[i32],
    wv: &[[std::arch::x86_64::__m256i; MAX_GROUPS]; 3],
    out: &mut [i32],
) {
    use std::arch::x86_64::*;
    let (src, dst) = (buf.as_ptr(), out.as_mut_ptr());
    let per_row = f.per_row();
    let rows = f.ih * f.iw / (8 * per_row);
    // `$k`: the kernel size (a constant where inlined below, so the group
    // offsets `2 gy iw + kx` are too, up to the multiple of `iw`).
    macro_rules! channel {
        ($k:expr) => {{
            let n = $k.div_ceil(2) * $k;
            for r in 0..rows {
                for b in 0..per_row {
                    let cls = if b == 0 {
                        0
                    } else if b + 1 == per_row {
                        2
                    } else {
                        1
                    };
                    let i = (r * per_row + b) * 8;
                    let w = &wv[cls];
                    // SAFETY: group `(gy, kx)` of outputs `i..i + 8`
                    // (`i + 8 <= ih * iw`) reads words `i + 2 gy iw + kx ..
                    // + 8`, the last at most `ih * iw - 1 + (k - 1) * iw + k
                    // - 1 < 2 pad + (ih + 2 pad) * iw = f.len()` (`k - 1 =
                    // 2 pad`); the store writes outputs `i..i + 8 <= ih * iw
                    // <= out.len()`.
                    unsafe {
                        let mut acc = _mm256_setzero_si256();
                        for g in 0..n {
                            let off = (g / $k) * 2 * f.iw + g % $k;
                            let x = _mm256_loadu_si256(src.add(i + off) as *const __m256i);
                            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, *w.get_unchecked(g)));
                        }
                        _mm256_storeu_si256(dst.add(i) as *mut __m256i, acc);
                    }
                }
            }
        }};
    }
    match f.k {
        3 => channel!(3usize),
        5 => channel!(5usize),
        k => channel!(k),
    }
}

/// The channel loop of [`depthwise_madd`] on the flat layout.
///
/// # Safety
///
/// The CPU must support AVX2; `f` is `FlatGeom::new`'s layout of this
/// conv, `input`, `w` and `out` hold `c` channels (checked by
/// [`depthwise_madd`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn depthwise_flat_layer(
    f: &FlatGeom,
    input: &[i32],
    c: usize,
    w: &[i32],
    out: &mut [i32],
    scratch: &mut Vec<i32>,
    epi: Option<&mut Epilogue>,
) {
    use std::arch::x86_64::*;
    let (p, k2) = (f.ih * f.iw, f.k * f.k);
    let (scratch, mut sink) = Sink::with_layout(scratch, f.len(), out, epi, p);
    let zeros = vec![0; f.iw];
    // The lane masks as vectors, and the vector classes a row uses (first
    // only, first and last, or all three).
    let masks = f.lane_masks().map(|m| {
        // SAFETY: each `m[g]` is 8 i32 (an unaligned load).
        m.map(|v| unsafe { _mm256_loadu_si256(v.as_ptr() as *const __m256i) })
    });
    let used: &[usize] = match f.per_row() {
        1 => &[0],
        2 => &[0, 2],
        _ => &[0, 1, 2],
    };
    let mut words = [0i32; MAX_GROUPS];
    let mut wv = [[_mm256_setzero_si256(); MAX_GROUPS]; 3];
    for ch in 0..c {
        // SAFETY: the CPU has AVX2 (this function's own feature).
        unsafe { flat_layout(&input[ch * p..(ch + 1) * p], f, &zeros, scratch) };
        pair_weights(&w[ch * k2..(ch + 1) * k2], f.k, &mut words);
        for &cls in used {
            for g in 0..f.groups {
                wv[cls][g] = _mm256_and_si256(_mm256_set1_epi32(words[g]), masks[cls][g]);
            }
        }
        // SAFETY: AVX2 (this function's own feature); `scratch` holds
        // `f.len()` words, the sink's target the channel's `ih * iw`
        // outputs (`out[ch * p..]`, the caller checked `out.len() >= c *
        // ih * iw`, or the sink's own row of `p`): the kernel's `# Safety`.
        unsafe { depthwise_flat_kernel(f, scratch, &wv, sink.target(ch, p)) };
        sink.finish(ch, p);
    }
}

/// The flat row-pair layout of a stride-2 depthwise conv with "same"
/// padding (`k` odd up to 5, `pad = (k - 1) / 2`, even `ih x iw` to
/// `ih / 2 x iw / 2`) whose output rows are 4 or a multiple of 8 wide:
/// pair row `R` (padded rows `R`, `R + 1`) at words `pad + R * iw ..`, its
/// even input columns first, then its odd ones (`iw / 2` words each), so
/// the taps of 8 consecutive outputs of a row read 8 consecutive words;
/// as in [`FlatGeom`], a tap that would read a border column reads another
/// word and has weight zero in that lane.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Flat2Geom {
    pub ih: usize,
    pub iw: usize,
    pub k: usize,
    pub pad: usize,
    pub groups: usize,
}

impl Flat2Geom {
    /// The layout of this conv, or `None` where it does not apply.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        ih: usize,
        iw: usize,
        k: usize,
        stride: usize,
        pad: usize,
        oh: usize,
        ow: usize,
    ) -> Option<Flat2Geom> {
        (stride == 2
            && k % 2 == 1
            && k <= 5
            && pad == (k - 1) / 2
            && ih.is_multiple_of(2)
            && iw.is_multiple_of(2)
            && (oh, ow) == (ih / 2, iw / 2)
            && oh >= 1
            && (ow.is_multiple_of(8) || (ow == 4 && oh.is_multiple_of(2))))
        .then_some(Flat2Geom {
            ih,
            iw,
            k,
            pad,
            groups: k.div_ceil(2) * k,
        })
    }

    /// Words of the layout: `pad` words of slack at each end around
    /// `ih + 2 pad` pair rows.
    fn len(&self) -> usize {
        2 * self.pad + (self.ih + 2 * self.pad) * self.iw
    }

    /// Tap column `kx` of output column `ox` is input column `2 ox + kx -
    /// pad`: word `ox + d` of phase `phase` (0: even columns, 1: odd).
    fn column(&self, kx: usize) -> (usize, isize) {
        let rel = kx as isize - self.pad as isize;
        (rel.rem_euclid(2) as usize, rel.div_euclid(2))
    }

    /// Where tap group `g` of output `(0, 0)` reads (output `(oy, ox)`
    /// reads `offset + 2 oy iw + ox`); `d >= -1` for `k <= 5`, within the
    /// `pad >= 1` words of slack (`d = 0` for `k = 1`).
    fn offset(&self, g: usize) -> usize {
        let (gy, kx) = (g / self.k, g % self.k);
        let (phase, d) = self.column(kx);
        ((self.pad + 2 * gy * self.iw + phase * (self.iw / 2)) as isize + d) as usize
    }

    /// Lane masks of the first, middle and last vector of an output row
    /// (for rows 4 wide: two rows), per tap group: all ones where the tap
    /// reads inside the input row.
    fn lane_masks(&self) -> [[[i32; 8]; MAX_GROUPS]; 3] {
        let ow = self.iw / 2;
        let mut m = [[[0; 8]; MAX_GROUPS]; 3];
        let bases = [0, 8, ow.saturating_sub(8)];
        for (cls, &base) in bases.iter().enumerate() {
            for g in 0..self.groups {
                let (_, d) = self.column(g % self.k);
                for l in 0..8 {
                    let col = ((base + l) % ow) as isize + d;
                    m[cls][g][l] = if col >= 0 && col < ow as isize { -1 } else { 0 };
                }
            }
        }
        m
    }
}

/// Writes channel `x` into its [`Flat2Geom`] layout `buf` (zeroed once per
/// layer): the words of the even pair rows among `pad - 1 ..= pad + ih -
/// 1` that hold input values ([`pair_words_split`]); the others stay zero.
/// Only even pair rows are read: output row `oy`'s tap group `g` reads
/// pair row `2 (oy + g / k)` (the stride), so the odd ones, half the
/// layout, are not written.
///
/// # Safety
///
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn flat2_layout(x: &[i32], f: &Flat2Geom, zeros: &[i32], buf: &mut [i32]) {
    let (ih, iw, pad) = (f.ih, f.iw, f.pad);
    let half = iw / 2;
    let row = |y: usize| match y.checked_sub(pad) {
        Some(y) if y < ih => &x[y * iw..(y + 1) * iw],
        _ => &zeros[..iw],
    };
    for r in (pad.saturating_sub(1)..pad + ih).filter(|r| r % 2 == 0) {
        let (a, b) = (row(r), row(r + 1));
        let at = pad + r * iw;
        let (even, odd) = buf[at..at + 2 * half].split_at_mut(half);
        // SAFETY: the CPU has AVX2 (this function's own feature).
        unsafe { pair_words_split(even, odd, a, b) };
    }
}

/// The AVX2 `vpmaddwd` kernel of one channel over its [`Flat2Geom`] layout:
/// 8 outputs of a row per vector (or 4 of two rows, the halves loaded from
/// the two rows' pair rows), each tap group one `vpmaddwd` with the lane
/// masked weight words `wv` (per vector class and group).
///
/// # Safety
///
/// - The CPU must support AVX2.
/// - `f` comes from [`Flat2Geom::new`], `buf.len() >= f.len()`, `offs` are
///   `f`'s [`Flat2Geom::offset`]s (`f.groups` of them) and `out.len() >=
///   f.ih * f.iw / 4`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn depthwise_flat2_kernel(
    f: &Flat2Geom,
    buf: &[i32],
    offs: &[usize],
    wv: &[[std::arch::x86_64::__m256i; MAX_GROUPS]; 3],
    out: &mut [i32],
) {
    use std::arch::x86_64::*;
    let (src, dst) = (buf.as_ptr(), out.as_mut_ptr());
    let (oh, ow, iw) = (f.ih / 2, f.iw / 2, f.iw);
    // SAFETY (all loads and stores): output `(oy, ox)`'s group `g` reads
    // word `offs[g] + 2 oy iw + ox`: at least `pad - 1 >= 0` words of
    // slack in (`pad >= 1` where `d = -1`), and for the last output of a
    // row (`ox = ow - 1`) at most `pad + (2 oy + k - 1) iw + iw / 2 + ow
    // <= pad + (ih + 2 pad - 1) iw < f.len()`; rows 4 wide load two rows
    // `oy`, `oy + 1 < oh` (`oh` even). Stores write outputs `< oh * ow <=
    // out.len()`.
    macro_rules! channel {
        ($n:expr) => {
            if ow == 4 {
                for oy in (0..oh).step_by(2) {
                    let lo = src.add(2 * oy * iw);
                    let hi = lo.add(2 * iw);
                    let mut acc = _mm256_setzero_si256();
                    for g in 0..$n {
                        let o = *offs.get_unchecked(g);
                        let x = _mm256_loadu2_m128i(
                            hi.add(o) as *const __m128i,
                            lo.add(o) as *const __m128i,
                        );
                        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, wv[0][g]));
                    }
                    _mm256_storeu_si256(dst.add(oy * 4) as *mut __m256i, acc);
                }
            } else {
                let per_row = ow / 8;
                for oy in 0..oh {
                    let base = src.add(2 * oy * iw);
                    for b in 0..per_row {
                        let cls = if b == 0 {
                            0
                        } else if b + 1 == per_row {
                            2
                        } else {
                            1
                        };
                        let mut acc = _mm256_setzero_si256();
                        for g in 0..$n {
                            let o = *offs.get_unchecked(g) + 8 * b;
                            let x = _mm256_loadu_si256(base.add(o) as *const __m256i);
                            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, wv[cls][g]));
                        }
                        _mm256_storeu_si256(dst.add(oy * ow + 8 * b) as *mut __m256i, acc);
                    }
                }
            }
        };
    }
    // SAFETY: see the bounds above and this function's `# Safety`.
    unsafe {
        match f.groups {
            6 => channel!(6),
            15 => channel!(15),
            n => channel!(n),
        }
    }
}

/// The channel loop of [`depthwise_madd`] on the [`Flat2Geom`] layout.
///
/// # Safety
///
/// The CPU must support AVX2; `f` is `Flat2Geom::new`'s layout of this
/// conv, `input`, `w` and `out` hold `c` channels (checked by
/// [`depthwise_madd`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn depthwise_flat2_layer(
    f: &Flat2Geom,
    input: &[i32],
    c: usize,
    w: &[i32],
    out: &mut [i32],
    scratch: &mut Vec<i32>,
    epi: Option<&mut Epilogue>,
) {
    use std::arch::x86_64::*;
    let (p, q, k2) = (f.ih * f.iw, f.ih * f.iw / 4, f.k * f.k);
    let (scratch, mut sink) = Sink::with_layout(scratch, f.len(), out, epi, q);
    let mut offs = [0usize; MAX_GROUPS];
    for (g, o) in offs.iter_mut().enumerate().take(f.groups) {
        *o = f.offset(g);
    }
    // The lane masks as vectors, and the vector classes a row uses (first
    // only, first and last, or all three).
    let masks = f.lane_masks().map(|m| {
        // SAFETY: each `m[g]` is 8 i32 (an unaligned load).
        m.map(|v| unsafe { _mm256_loadu_si256(v.as_ptr() as *const __m256i) })
    });
    let used: &[usize] = match (f.iw / 2 / 8).max(1) {
        1 => &[0],
        2 => &[0, 2],
        _ => &[0, 1, 2],
    };
    let zeros = vec![0; f.iw];
    let mut words = [0i32; MAX_GROUPS];
    let mut wv = [[_mm256_setzero_si256(); MAX_GROUPS]; 3];
    for ch in 0..c {
        // SAFETY: the CPU has AVX2 (this function's own feature).
        unsafe { flat2_layout(&input[ch * p..(ch + 1) * p], f, &zeros, scratch) };
        pair_weights(&w[ch * k2..(ch + 1) * k2], f.k, &mut words);
        for &cls in used {
            for g in 0..f.groups {
                wv[cls][g] = _mm256_and_si256(_mm256_set1_epi32(words[g]), masks[cls][g]);
            }
        }
        // SAFETY: AVX2 (this function's own feature); `scratch` holds
        // `f.len()` words, `offs` the groups' offsets, the sink's target the
        // channel's `ih * iw / 4` outputs (`out[ch * q..]`, the caller
        // checked `out.len() >= c * oh * ow`, or the sink's own row of `q`):
        // the kernel's `# Safety`.
        unsafe { depthwise_flat2_kernel(f, scratch, &offs[..f.groups], &wv, sink.target(ch, q)) };
        sink.finish(ch, q);
    }
}

/// Where a depthwise layer writes: `c` rows of `oh * ow` values, or (a
/// fused requantization whose readers are all 1x1 convs with 16-bit
/// operands, `FusedRequant::packed`; the lanes kernel only) the readers'
/// operand in the `gemm::packed_len` layout of `c.div_ceil(2)` pairs,
/// values in i16.
pub(super) enum DwOut<'o> {
    Rows(&'o mut [i32]),
    Packed(&'o mut [i16]),
}

impl DwOut<'_> {
    fn reborrow(&mut self) -> DwOut<'_> {
        match self {
            DwOut::Rows(out) => DwOut::Rows(out),
            DwOut::Packed(pk) => DwOut::Packed(pk),
        }
    }
}

/// A depthwise layer on 16-bit operands on the path that suits its shape:
/// on 8-bit operands (`bytes`, the layer's weights in that form) the byte
/// table of [`depthwise_bytes`] wherever it takes the layer; else channels
/// in the lanes ([`depthwise_lanes`]) where [`takes_lanes`], else the quad
/// rows of [`depthwise_bytes`] where it takes the layer, else (and where
/// those decline) [`depthwise_madd`]. A packed output only the lanes kernel
/// writes: from per-channel rows each channel pair's words lie a whole
/// block apart in the layout, and those strided stores cost more than the
/// reader's own packing (ToyNet's 16 x 16 depthwise layers 0.008 -> 0.010
/// ms for 0.001 ms saved in the next conv, measured). Returns false
/// (nothing computed) where no path takes it; the caller then runs another.
#[allow(clippy::too_many_arguments)]
pub(super) fn depthwise16(
    input: &[i32],
    c: usize,
    ih: usize,
    iw: usize,
    w: &[i32],
    bytes: Option<&DwBytes>,
    k: usize,
    stride: usize,
    pad: usize,
    mut out: DwOut,
    oh: usize,
    ow: usize,
    scratch: &mut Vec<i32>,
    mut epi: Option<&mut Epilogue>,
) -> bool {
    // The lanes kernel declines a second term and the i64 form.
    let lanes = takes_lanes(
        oh,
        ow,
        epi.as_ref().is_some_and(|e| e.second.is_some() || e.wide),
    );
    // The 8-bit kernels: the byte table wherever it takes the conv, the
    // quad layout on the maps the lanes kernel does not take (on those its
    // cost per channel is more than the lanes kernel's per eight). The plan
    // asks for a packed output only where neither runs.
    if let (Some(wb), DwOut::Rows(o)) = (bytes, &mut out) {
        if (wb.table() || !lanes)
            && depthwise_bytes(
                super::depthwise_bytes::DwIn::Rows(input),
                c,
                ih,
                iw,
                wb,
                k,
                stride,
                pad,
                super::depthwise_bytes::DwDst::Rows(o),
                oh,
                ow,
                scratch,
                epi.as_deref_mut(),
            )
        {
            return true;
        }
    }
    let ran = lanes
        && depthwise_lanes(
            input,
            c,
            ih,
            iw,
            w,
            k,
            stride,
            pad,
            out.reborrow(),
            oh,
            ow,
            scratch,
            epi.as_deref_mut(),
        );
    match out {
        _ if ran => true,
        DwOut::Rows(out) => depthwise_madd(
            input, c, ih, iw, w, k, stride, pad, out, oh, ow, scratch, epi,
        ),
        DwOut::Packed(_) => false,
    }
}

/// Where the row-pair layers put each channel's sums: straight into `out`
/// (the accumulators), or, with a fused requantization, into one channel's
/// buffer first and from there requantized into `out` while they are in L1
/// (no accumulator tensor, no separate pass over it).
struct Sink<'o, 'e, 'a> {
    out: &'o mut [i32],
    epi: Option<&'e mut Epilogue<'a>>,
    row: &'o mut [i32],
    /// Requantize in 512-bit registers (`isa::avx512_vnni`).
    wide: bool,
}

impl<'o, 'e, 'a> Sink<'o, 'e, 'a> {
    /// The layer's `scratch` as its layout of `len` zeroed words (returned)
    /// and, with a fused requantization, the sink's channel row of `p`
    /// after it: one buffer, no allocation per layer.
    fn with_layout(
        scratch: &'o mut Vec<i32>,
        len: usize,
        out: &'o mut [i32],
        epi: Option<&'e mut Epilogue<'a>>,
        p: usize,
    ) -> (&'o mut [i32], Self) {
        scratch.clear();
        scratch.resize(len + if epi.is_some() { p } else { 0 }, 0);
        let (layout, row) = scratch.split_at_mut(len);
        let wide = super::isa::avx512_vnni();
        (
            layout,
            Sink {
                out,
                epi,
                row,
                wide,
            },
        )
    }

    /// Where the kernel writes channel `ch`'s `p` sums.
    #[inline(always)]
    fn target(&mut self, ch: usize, p: usize) -> &mut [i32] {
        if self.epi.is_some() {
            &mut self.row[..p]
        } else {
            &mut self.out[ch * p..(ch + 1) * p]
        }
    }

    /// Channel `ch`'s sums done: requantized into `out` where fused.
    #[inline(always)]
    fn finish(&mut self, ch: usize, p: usize) {
        if let Some(e) = self.epi.as_deref_mut() {
            let (src, dst) = (&self.row[..p], &mut self.out[ch * p..(ch + 1) * p]);
            #[cfg(target_arch = "x86_64")]
            if self.wide {
                // SAFETY: the CPU has AVX-512 F and BW (`isa::avx512_vnni`,
                // checked when the sink was made); the function is safe
                // Rust compiled with them.
                unsafe { requant_channel_512(src, ch, e, dst) };
                return;
            }
            requant_channel(src, ch, e, dst);
        }
    }
}

/// [`requant_channel`] compiled with AVX-512 (its loops in sixteen lanes).
///
/// # Safety
///
/// The CPU must support AVX-512 F and BW (and AVX2). Nothing else: the
/// body is safe Rust.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
unsafe fn requant_channel_512(src: &[i32], c: usize, e: &mut Epilogue, dst: &mut [i32]) {
    requant_channel(src, c, e, dst);
}

/// A whole depthwise layer (`c` channels, `k x k`, `stride`, `pad`) on i16
/// operands with the AVX2 `vpmaddwd` kernel: each channel is written into
/// a row-pair layout ([`PairGeom`]; `scratch` zeroed once for the layer,
/// only the words holding input values rewritten per channel), then
/// [`depthwise_madd_kernel`] sums two taps per `vpmaddwd`. Returns false
/// (and computes nothing) without AVX2 or for shapes it does not take
/// (kernels over 7 x 7); the caller then runs [`depthwise`].
///
/// The caller guarantees that the input values and the weights fit i16 and
/// are not both -2^15 (`fits16` in `conv.rs`), so each pair sum is exact.
#[allow(clippy::too_many_arguments)]
pub(super) fn depthwise_madd(
    input: &[i32],
    c: usize,
    ih: usize,
    iw: usize,
    w: &[i32],
    k: usize,
    stride: usize,
    pad: usize,
    out: &mut [i32],
    oh: usize,
    ow: usize,
    scratch: &mut Vec<i32>,
    epi: Option<&mut Epilogue>,
) -> bool {
    depthwise_madd_with(
        input, c, ih, iw, w, k, stride, pad, out, oh, ow, scratch, true, epi,
    )
}

/// [`depthwise_madd`], on the flat layout ([`FlatGeom`]) only where `flat`
/// (the tests run both layouts on the same shapes).
#[allow(clippy::too_many_arguments)]
pub(super) fn depthwise_madd_with(
    input: &[i32],
    c: usize,
    ih: usize,
    iw: usize,
    w: &[i32],
    k: usize,
    stride: usize,
    pad: usize,
    out: &mut [i32],
    oh: usize,
    ow: usize,
    scratch: &mut Vec<i32>,
    flat: bool,
    epi: Option<&mut Epilogue>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::arch::is_x86_feature_detected!("avx2")
            || input.len() < c * ih * iw
            || w.len() < c * k * k
            || out.len() < c * oh * ow
            || epi.as_ref().is_some_and(|e| !e.holds(c, oh * ow))
        {
            return false;
        }
        if let Some(f) = FlatGeom::new(ih, iw, k, stride, pad, oh, ow).filter(|_| flat) {
            // SAFETY: the CPU has AVX2, `input`, `w` and `out` hold `c`
            // channels (checked just above), `f` is this conv's layout.
            unsafe { depthwise_flat_layer(&f, input, c, w, out, scratch, epi) };
            return true;
        }
        if let Some(f) = Flat2Geom::new(ih, iw, k, stride, pad, oh, ow).filter(|_| flat) {
            // SAFETY: the CPU has AVX2, `input`, `w` and `out` hold `c`
            // channels (checked above), `f` is this conv's layout.
            unsafe { depthwise_flat2_layer(&f, input, c, w, out, scratch, epi) };
            return true;
        }
        let Some(g) = PairGeom::new(ih, iw, k, stride, pad, oh, ow) else {
            return false;
        };
        // SAFETY: the CPU has AVX2 and the slices hold `c` channels
        // (checked above), `g` is this conv's layout.
        unsafe { depthwise_madd_layer(&g, input, c, ih, iw, w, k, pad, out, oh, ow, scratch, epi) };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (
            input, c, ih, iw, w, k, stride, pad, out, oh, ow, scratch, flat, epi,
        );
        false
    }
}

/// The channel loop of [`depthwise_madd`] (compiled with AVX2, so the
/// layout loops are vectorised too).
///
/// # Safety
///
/// The CPU must support AVX2; `g` is `PairGeom::new`'s layout of this conv,
/// `input`, `w` and `out` hold `c` channels (checked by [`depthwise_madd`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise_madd_layer(
    g: &PairGeom,
    input: &[i32],
    c: usize,
    ih: usize,
    iw: usize,
    w: &[i32],
    k: usize,
    pad: usize,
    out: &mut [i32],
    oh: usize,
    ow: usize,
    scratch: &mut Vec<i32>,
    epi: Option<&mut Epilogue>,
) {
    let (p, k2) = (oh * ow, k * k);
    let (scratch, mut sink) = Sink::with_layout(scratch, g.len(), out, epi, p);
    let mut offs = [0usize; MAX_GROUPS];
    for (i, o) in offs.iter_mut().enumerate().take(g.groups) {
        *o = g.offset(i, k);
    }
    let mut wv = [0i32; MAX_GROUPS];
    let spans = phase_spans(iw, pad, g.s);
    let zeros = vec![0; iw];
    for ch in 0..c {
        let x = &input[ch * ih * iw..(ch + 1) * ih * iw];
        pair_layout(x, ih, iw, pad, g, &spans, &zeros, scratch);
        pair_weights(&w[ch * k2..(ch + 1) * k2], k, &mut wv);
        // SAFETY: AVX2 (this function's own feature); `g` is the conv's
        // layout, `scratch` its `g.len()` words, `offs`/`wv` its groups,
        // and the sink's target holds `oh * ow` outputs (`out[ch * p..]`,
        // the caller checked `out.len() >= c * oh * ow`, or the sink's own
        // row of `p`): the kernel's `# Safety`.
        unsafe {
            depthwise_madd_kernel(
                g,
                scratch,
                &offs[..g.groups],
                &wv,
                sink.target(ch, p),
                oh,
                ow,
            )
        };
        sink.finish(ch, p);
    }
}

dispatch!(
    depthwise,
    depthwise_avx2,
    depthwise_body,
    (input: &[T], ih: usize, iw: usize, w: &[T], k: usize, stride: usize, pad: usize, out: &mut [T], oh: usize, ow: usize, padded: &mut Vec<T>)
);

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::engine::fused::{requant_clamped, RowConsts, Second};
    use crate::fixed::Div;

    /// The plain depthwise sum, straight from the definition.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::engine) fn naive(
        input: &[i64],
        ih: usize,
        iw: usize,
        w: &[i64],
        k: usize,
        stride: usize,
        pad: usize,
        oh: usize,
        ow: usize,
    ) -> Vec<i64> {
        let mut out = vec![0; oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut want = 0;
                for ky in 0..k {
                    for kx in 0..k {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < ih && (ix as usize) < iw {
                            want += w[ky * k + kx] * input[iy as usize * iw + ix as usize];
                        }
                    }
                }
                out[oy * ow + ox] = want;
            }
        }
        out
    }

    /// The 16-bit kernels ([`depthwise_madd`], flat and row-pair layouts) on
    /// several channels at once, against the definition: strides 1 and 2,
    /// kernels 1, 3, 5 and 7, with and without padding, maps 1 to 33 wide,
    /// and i16 edge values (2^15 - 1, -2^15 + 1 against weights up to
    /// -2^15, and u8 inputs up to 255).
    #[test]
    fn depthwise_madd_matches_naive() {
        if !cfg!(target_arch = "x86_64") || !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut scratch = vec![7; 3];
        let mut shapes = vec![];
        for iw in [1usize, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 17, 24, 32, 33, 48] {
            for ih in [1usize, 2, 3, 4, 5, 6, 8, 9] {
                for (s, k, p) in [
                    (1, 3, 1),
                    (2, 3, 1),
                    (1, 3, 0),
                    (2, 3, 0),
                    (1, 5, 2),
                    (2, 5, 2),
                    (1, 1, 0),
                    (2, 1, 0),
                    (1, 7, 3),
                    (3, 3, 1),
                    (1, 2, 0),
                    (1, 3, 2),
                ] {
                    if ih + 2 * p >= k && iw + 2 * p >= k {
                        shapes.push((ih, iw, s, k, p));
                    }
                }
            }
        }
        // Values: (input, weight) generators, the last ones the edges.
        type Gen = fn(usize) -> i64;
        let gens: [(Gen, Gen); 4] = [
            (
                |i| (i as i64 * 37 % 255) - 127,
                |i| (i as i64 * 11 % 255) - 128,
            ),
            (
                |i| if i % 3 == 0 { 32767 } else { -32767 },
                |i| if i % 2 == 0 { 127 } else { -128 },
            ),
            (
                |i| (i as i64 * 53) % 256,
                |i| if i % 2 == 0 { -32768 } else { 32767 },
            ),
            (|i| if i % 2 == 0 { 255 } else { 0 }, |_| -32768),
        ];
        let c = 3;
        let (mut runs, mut flats, mut flat2s) = (0, 0, 0);
        for &(ih, iw, s, k, p) in &shapes {
            let oh = (ih + 2 * p - k) / s + 1;
            let ow = (iw + 2 * p - k) / s + 1;
            for (gi, &(gx, gw)) in gens.iter().enumerate() {
                let input: Vec<i64> = (0..c * ih * iw).map(gx).collect();
                let w: Vec<i64> = (0..c * k * k).map(|i| gw(i + gi)).collect();
                let mut want = vec![];
                for ch in 0..c {
                    want.extend(naive(
                        &input[ch * ih * iw..(ch + 1) * ih * iw],
                        ih,
                        iw,
                        &w[ch * k * k..(ch + 1) * k * k],
                        k,
                        s,
                        p,
                        oh,
                        ow,
                    ));
                }
                let want: Vec<i32> = want.iter().map(|&x| x as i32).collect();
                let input: Vec<i32> = input.iter().map(|&x| x as i32).collect();
                let w: Vec<i32> = w.iter().map(|&x| x as i32).collect();
                for flat in [true, false] {
                    let mut out = vec![i32::MIN; c * oh * ow];
                    let done = depthwise_madd_with(
                        &input,
                        c,
                        ih,
                        iw,
                        &w,
                        k,
                        s,
                        p,
                        &mut out,
                        oh,
                        ow,
                        &mut scratch,
                        flat,
                        None,
                    );
                    let what = format!("ih {ih} iw {iw} s {s} k {k} p {p} values {gi} flat {flat}");
                    assert!(done, "{what}: not taken");
                    assert_eq!(out, want, "{what}");
                    runs += 1;
                    flats += (flat && FlatGeom::new(ih, iw, k, s, p, oh, ow).is_some()) as usize;
                    flat2s += (flat && Flat2Geom::new(ih, iw, k, s, p, oh, ow).is_some()) as usize;
                }
            }
        }
        // Both layouts ran on many shapes.
        assert!(
            flats >= 100 && flat2s >= 20 && runs >= 1000,
            "{flats} flat, {flat2s} stride-2 flat of {runs}"
        );
    }

    /// Per-channel constants whose pre-clamp ranges cut sums of magnitude
    /// up to `big` on both sides (by channel: a narrow range, a wide one,
    /// the non-negative side), multipliers positive, negative and zero,
    /// varied by `r()` (non-negative).
    pub(in crate::engine) fn cutting_rows(
        c: usize,
        big: i32,
        mut r: impl FnMut() -> i32,
    ) -> Vec<RowConsts> {
        (0..c)
            .map(|ch| {
                let r = r();
                let (xlo, xhi) = match ch % 3 {
                    0 => (-big / 2, big / 3),
                    1 => (-(1 << 20), 1 << 20),
                    _ => (0, big),
                };
                RowConsts {
                    xlo,
                    xhi,
                    m: [(r % 300) + 1, -((r % 300) + 1), 0][ch % 3],
                    b: r % 5000 - 2500,
                }
            })
            .collect()
    }

    /// The epilogues the fused kernels are tested with: every rounding,
    /// with and without the output clamp (without it no value may leave
    /// `[lo, hi]`, as `needs_clamp` plans), each of `shifts`, with `second`
    /// as the second term; each with its description.
    pub(in crate::engine) fn epilogue_cases<'a>(
        rows: &'a [RowConsts],
        shifts: &[u32],
        second: Option<Second<'a>>,
    ) -> Vec<(Epilogue<'a>, String)> {
        let mut cases = Vec::new();
        for div in [Div::Floor, Div::Trunc, Div::Nearest] {
            for clamp in [true, false] {
                for &shift in shifts {
                    let e = Epilogue {
                        rows,
                        shift,
                        div,
                        lo: if clamp { -100 } else { i32::MIN },
                        hi: if clamp { 90 } else { i32::MAX },
                        clamp,
                        second,
                        wide: false,
                        peak: 0,
                    };
                    let what = format!(
                        "{div:?} clamp {clamp} shift {shift} second {}",
                        second.is_some()
                    );
                    cases.push((e, what));
                }
            }
        }
        cases
    }

    /// A fused kernel (`run`: `sums.len()` values into its slice, the
    /// requantization `e` applied) against [`requant_clamped`] on `sums`
    /// (`p` per channel): the same values, and the same largest |sum| into
    /// a peak that starts at 5. Returns the values.
    pub(in crate::engine) fn assert_fused_matches<'a>(
        sums: &[i32],
        p: usize,
        e: &Epilogue<'a>,
        what: &str,
        run: impl FnOnce(&mut [i32], &mut Epilogue<'a>) -> bool,
    ) -> Vec<i32> {
        let (mut want_e, mut got_e) = (e.rows_from(0), e.rows_from(0));
        want_e.peak = 5;
        got_e.peak = 5;
        let mut want = vec![0; sums.len()];
        requant_clamped(sums, p, &mut want_e, &mut want);
        let mut got = vec![i32::MIN; sums.len()];
        assert!(run(&mut got, &mut got_e), "{what}: not taken");
        assert_eq!(got, want, "{what}");
        assert_eq!(got_e.peak, want_e.peak, "{what}: peak");
        want
    }

    /// The fused requantization of the row-pair layers (flat, stride-2
    /// flat, row pairs) against [`requant_clamped`] on the sums the same
    /// layer writes unfused: every rounding, with and without the clamp,
    /// constants whose clamp ranges cut the sums on both sides, a second
    /// term (a residual add), and the largest |sum|.
    #[test]
    fn fused_requantization_matches_requant_clamped() {
        if !(cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("avx2")) {
            return;
        }
        let mut runs = 0;
        let mut scratch = vec![7; 3];
        // (ih, iw, k, stride, pad): flat, stride-2 flat, row pairs.
        for &(ih, iw, k, s, pad) in &[
            (16usize, 16usize, 3usize, 1usize, 1usize),
            (8, 4, 3, 1, 1),
            (16, 16, 3, 2, 1),
            (32, 16, 5, 2, 2),
            (9, 11, 3, 1, 1),
            (7, 5, 3, 2, 0),
        ] {
            let oh = (ih + 2 * pad - k) / s + 1;
            let ow = (iw + 2 * pad - k) / s + 1;
            let p = oh * ow;
            let c = 5;
            let input: Vec<i32> = (0..c * ih * iw).map(|i| (i as i32 * 53) % 256).collect();
            let w: Vec<i32> = (0..c * k * k)
                .map(|i| (i as i32 * 37 % 255) - 127)
                .collect();
            for flat in [true, false] {
                let mut sums = vec![0; c * p];
                let args = (ih, iw, k, s, pad, oh, ow);
                let run = |out: &mut [i32], scratch: &mut Vec<i32>, e: Option<&mut Epilogue>| {
                    let (ih, iw, k, s, pad, oh, ow) = args;
                    depthwise_madd_with(
                        &input, c, ih, iw, &w, k, s, pad, out, oh, ow, scratch, flat, e,
                    )
                };
                assert!(run(&mut sums, &mut scratch, None));
                let big = sums.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as i32;
                let mut n = 0;
                let rows = cutting_rows(c, big, || {
                    n += 911;
                    n
                });
                let y: Vec<i32> = (0..c * p).map(|i| (i as i32 * 29) % 201 - 100).collect();
                let m2: Vec<i32> = (0..c as i32).map(|ch| 3 * ch - 5).collect();
                for second in [None, Some(Second { y: &y, m2: &m2, p })] {
                    for (e, what) in epilogue_cases(&rows, &[9], second) {
                        let what = format!("ih {ih} iw {iw} k {k} s {s} flat {flat} {what}");
                        assert_fused_matches(&sums, p, &e, &what, |got, e| {
                            run(got, &mut scratch, Some(e))
                        });
                        runs += 1;
                    }
                }
            }
        }
        assert_eq!(runs, 6 * 2 * 12);
    }

    #[test]
    fn depthwise_matches_naive_with_stride_and_padding() {
        let mut padded = Vec::new();
        for (stride, k, pad, iw) in [19usize, 12, 4].into_iter().flat_map(|iw| {
            [
                (1, 3, 1),
                (2, 3, 1),
                (1, 3, 0),
                (2, 5, 2),
                (3, 2, 0),
                (1, 1, 0),
                (1, 5, 2),
            ]
            .map(|(s, k, p)| (s, k, p, iw))
        }) {
            let ih = 5;
            let oh = (ih + 2 * pad - k) / stride + 1;
            let ow = (iw + 2 * pad - k) / stride + 1;
            let input: Vec<i64> = (0..ih * iw).map(|i| (i as i64 * 3 % 7) - 3).collect();
            let w: Vec<i64> = (0..k * k).map(|i| i as i64 - 4).collect();
            let mut out = vec![0; oh * ow];
            depthwise(
                &input,
                ih,
                iw,
                &w,
                k,
                stride,
                pad,
                &mut out,
                oh,
                ow,
                &mut padded,
            );
            // The i32 path (AVX2 kernel where the CPU has it) agrees.
            let input32: Vec<i32> = input.iter().map(|&x| x as i32).collect();
            let w32: Vec<i32> = w.iter().map(|&x| x as i32).collect();
            let (mut out32, mut padded32) = (vec![0; oh * ow], Vec::new());
            depthwise(
                &input32,
                ih,
                iw,
                &w32,
                k,
                stride,
                pad,
                &mut out32,
                oh,
                ow,
                &mut padded32,
            );
            let want32: Vec<i32> = out.iter().map(|&x| x as i32).collect();
            assert_eq!(out32, want32, "i32 stride {stride} k {k} pad {pad}");
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut want = 0;
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * stride + ky) as isize - pad as isize;
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < ih && (ix as usize) < iw {
                                want += w[ky * k + kx] * input[iy as usize * iw + ix as usize];
                            }
                        }
                    }
                    assert_eq!(out[oy * ow + ox], want, "stride {stride} at {oy},{ox}");
                }
            }
        }
    }
}
