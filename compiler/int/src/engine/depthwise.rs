//! Depthwise convs (one input channel per output channel): each channel is
//! copied once into a zero-bordered, phase-split layout ([`Phased`]) so that
//! every tap of an output row reads consecutive values, then
//! - on x86-64 with AVX2 (detected at run time), for i32:
//!   [`depthwise_avx2_kernel`], eight outputs of a row per vector (`vpmulld`,
//!   `vpaddd`; a last four in SSE lanes), all taps summed in one register;
//! - otherwise, and for the columns the kernel leaves, i64 and f64:
//!   [`depthwise_from`], the plain loop (the reference of the tests).
//!
//! An integer sum does not depend on the order of its terms, so both give
//! the same results (the tests compare them).

use super::conv::Num;

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

dispatch!(
    depthwise,
    depthwise_avx2,
    depthwise_body,
    (input: &[T], ih: usize, iw: usize, w: &[T], k: usize, stride: usize, pad: usize, out: &mut [T], oh: usize, ow: usize, padded: &mut Vec<T>)
);

#[cfg(test)]
mod tests {
    use super::*;

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
