//! The float stem: the first conv, of the float input, in f64, and the
//! rounding of its sums into the integer accumulator buffer.
//!
//! - [`gemm_f64`]: on x86-64 with AVX2 (detected at run time)
//!   `gemm_f64_avx2`, four output rows x eight positions per pass with
//!   separate `vmulpd` and `vaddpd` (no FMA), else the plain [`gemm`]: the
//!   same sums in the same order, so bit for bit the same results (and the
//!   C reference's).
//! - [`conv_float_direct`]: ungrouped stride-1 convs (every seed stem)
//!   without im2col, where every weight is an integer of at most 29 bits
//!   (the plan's weights are): the image converted to f64 once into a
//!   zero-bordered copy, then `direct_f64_avx2` (AVX2 + FMA), four output
//!   rows x eight positions of an output row per pass, reading each tap's
//!   eight inputs straight from that copy; the taps in im2col's order
//!   (channel, then ky, then kx). Each `x * w` of an f32 input (24
//!   significant bits) and such a weight is exact in f64, so one `vfmadd`
//!   per tap rounds exactly as the product then the sum: the sums are bit
//!   for bit those of [`gemm_f64`] over im2col (the tests compare them).
//!   With AVX-512 (`isa.rs`) `direct_f64_avx512`, sixteen positions per
//!   pass in 512-bit registers and masked lanes for a row's last ones, the
//!   same operations per lane. Other convs and weights, and CPUs without
//!   AVX2, take im2col and [`gemm_f64`].
//! - [`round_into`]: the sums truncated or rounded as the plan's mode says
//!   (AVX2: four per vector, exact), stored as i32 where every one fits
//!   (else i64), so what follows takes its 32-bit paths.

use super::gemm::gemm;
use super::Buf;
use crate::plan::ConvLayer;

/// The float conv `l` of `image` (`[cin, ih, iw]` f32) into `out` (`[cout,
/// oh, ow]` f64 sums) without im2col, where `l` is ungrouped with stride 1
/// and the CPU has AVX2; returns false (nothing done) otherwise. `padded`
/// is scratch space (the image as f64 with its zero border).
pub(super) fn conv_float_direct(
    l: &ConvLayer,
    image: &[f32],
    w: &[f64],
    padded: &mut Vec<f64>,
    out: &mut [f64],
) -> bool {
    let [ih, iw] = l.in_hw;
    let [oh, ow] = l.out_hw;
    let (k, pad) = (l.kernel, l.padding);
    let (rows, cols) = (ih + 2 * pad, iw + 2 * pad);
    let fits = l.groups == 1
        && l.stride == 1
        && k >= 1
        && oh + k - 1 == rows
        && ow + k - 1 == cols
        && image.len() == l.cin * ih * iw
        && w.len() == l.cout * l.cin * k * k
        && out.len() == l.cout * oh * ow
        && w.iter().all(|&v| exact_factor(v));
    #[cfg(target_arch = "x86_64")]
    {
        if fits
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            padded.clear();
            padded.resize(l.cin * rows * cols, 0.0);
            for (c, plane) in image.chunks_exact(ih * iw).enumerate() {
                for (y, row) in plane.chunks_exact(iw).enumerate() {
                    let at = (c * rows + y + pad) * cols + pad;
                    for (d, &x) in padded[at..at + iw].iter_mut().zip(row) {
                        *d = x as f64;
                    }
                }
            }
            let d = DirectF64 {
                cin: l.cin,
                k,
                rows,
                cols,
                cout: l.cout,
                oh,
                ow,
            };
            // SAFETY: AVX2 and FMA are present (and AVX-512 F where
            // `avx512_vnni` says so); `padded` holds `cin * rows * cols`
            // values, `w` `cout * cin * k * k`, `out` `cout * oh * ow`, and
            // `oh + k - 1 == rows`, `ow + k - 1 == cols` (all checked or
            // sized just above): the kernels' `# Safety`.
            unsafe {
                if super::isa::avx512_vnni() {
                    direct_f64_avx512(&d, padded, w, out)
                } else {
                    direct_f64_avx2(&d, padded, w, out)
                }
            };
            return true;
        }
    }
    let _ = (fits, image, w, padded, out, rows, cols, oh, ow);
    false
}

/// Whether `w` is an integer of at most 29 bits: then its product with any
/// f32 (24 significant bits) is exact in f64 (53), so a fused multiply-add
/// `fma(x, w, s)` rounds exactly as `s + x * w` with the product rounded
/// first, and the direct kernels may use one.
fn exact_factor(w: f64) -> bool {
    w.fract() == 0.0 && w.abs() < (1u64 << 29) as f64
}

/// The shape of [`direct_f64_avx2`]'s conv: `cin` planes of `rows x cols`
/// (zero border included) into `cout` planes of `oh x ow`, `k x k` taps,
/// stride 1.
#[cfg(target_arch = "x86_64")]
struct DirectF64 {
    cin: usize,
    k: usize,
    rows: usize,
    cols: usize,
    cout: usize,
    oh: usize,
    ow: usize,
}

#[cfg(target_arch = "x86_64")]
impl DirectF64 {
    /// Where tap `t` of output (0, 0) reads in the zero-bordered copy, in
    /// im2col's order `(c, ky, kx)`.
    fn tap_offsets(&self) -> Vec<usize> {
        let (k, rows, cols) = (self.k, self.rows, self.cols);
        (0..self.cin * k * k)
            .map(|t| {
                let (c, ky, kx) = (t / (k * k), t / k % k, t % k);
                (c * rows + ky) * cols + kx
            })
            .collect()
    }
}

/// Four output rows x eight positions of one output row per pass (eight
/// accumulators of four f64), the taps in im2col's order `(c, ky, kx)`,
/// one fused multiply-add per tap, which the weights' [`exact_factor`]
/// makes [`gemm_f64`]'s product-then-sum bit for bit. The last positions
/// of a row (under eight) in scalar code, same order.
///
/// # Safety
///
/// - The CPU must support AVX2 and FMA.
/// - Every weight passes [`exact_factor`] (else the sums may differ from
///   [`gemm_f64`]'s in the last bit: not unsafe, but wrong).
/// - `x.len() >= cin * rows * cols`, `w.len() >= cout * cin * k * k`,
///   `out.len() >= cout * oh * ow`, `oh + k - 1 <= rows` and
///   `ow + k - 1 <= cols`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn direct_f64_avx2(d: &DirectF64, x: &[f64], w: &[f64], out: &mut [f64]) {
    use std::arch::x86_64::*;
    const R: usize = 4;
    let &DirectF64 {
        cin,
        k,
        cols,
        cout,
        oh,
        ow,
        ..
    } = d;
    let taps = cin * k * k;
    let p = oh * ow;
    let ow8 = ow / 8 * 8;
    let offs = d.tap_offsets();
    for o in (0..cout).step_by(R) {
        let n = (cout - o).min(R);
        // Rows past `cout` repeat the last one (computed, not stored).
        let wr: [&[f64]; R] =
            std::array::from_fn(|r| &w[(o + r.min(n - 1)) * taps..(o + r.min(n - 1) + 1) * taps]);
        for oy in 0..oh {
            for ox in (0..ow8).step_by(8) {
                // SAFETY: AVX2 is this function's own feature. Tap `t` of
                // outputs `ox..ox + 8` of row `oy` reads `offs[t] + oy * cols
                // + ox..+8`: with `c < cin`, `oy + ky < oh + k - 1 <= rows`
                // and `ox + 8 + kx <= ow + k - 1 <= cols`, inside `x`
                // (`cin * rows * cols`); the stores write `(o + r) * p + oy
                // * ow + ox..+8`, `o + r < cout`, `ox + 8 <= ow`, inside
                // `out` (`cout * oh * ow`).
                unsafe {
                    let base = x.as_ptr().add(oy * cols + ox);
                    let mut acc = [[_mm256_setzero_pd(); 2]; R];
                    for (t, &off) in offs.iter().enumerate() {
                        let (x0, x1) = (
                            _mm256_loadu_pd(base.add(off)),
                            _mm256_loadu_pd(base.add(off + 4)),
                        );
                        for (a, wr) in acc.iter_mut().zip(&wr) {
                            let wv = _mm256_set1_pd(*wr.get_unchecked(t));
                            a[0] = _mm256_fmadd_pd(x0, wv, a[0]);
                            a[1] = _mm256_fmadd_pd(x1, wv, a[1]);
                        }
                    }
                    for (r, a) in acc.iter().enumerate().take(n) {
                        let dst = out.as_mut_ptr().add((o + r) * p + oy * ow + ox);
                        _mm256_storeu_pd(dst, a[0]);
                        _mm256_storeu_pd(dst.add(4), a[1]);
                    }
                }
            }
            for r in 0..n {
                for ox in ow8..ow {
                    let mut s = 0.0;
                    for (&off, &wt) in offs.iter().zip(wr[r]) {
                        s += wt * x[off + oy * cols + ox];
                    }
                    out[(o + r) * p + oy * ow + ox] = s;
                }
            }
        }
    }
}

/// [`direct_f64_avx2`] in 512-bit registers: four output rows x sixteen
/// positions of one output row per pass (eight accumulators of eight f64),
/// the last positions of a row (under sixteen) in masked lanes, so no
/// scalar tail. The same products and additions in the same order per
/// lane: bit for bit the same sums.
///
/// # Safety
///
/// As [`direct_f64_avx2`], and the CPU must support AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn direct_f64_avx512(d: &DirectF64, x: &[f64], w: &[f64], out: &mut [f64]) {
    use std::arch::x86_64::*;
    const R: usize = 4;
    let &DirectF64 {
        cin,
        k,
        cols,
        cout,
        oh,
        ow,
        ..
    } = d;
    let taps = cin * k * k;
    let p = oh * ow;
    let offs = d.tap_offsets();
    // Lanes of positions `ox + j` below `ow`.
    let lanes = |n: usize| -> __mmask8 { ((1u32 << n.min(8)) - 1) as __mmask8 };
    for o in (0..cout).step_by(R) {
        let n = (cout - o).min(R);
        // Rows past `cout` repeat the last one (computed, not stored).
        let wr: [&[f64]; R] =
            std::array::from_fn(|r| &w[(o + r.min(n - 1)) * taps..(o + r.min(n - 1) + 1) * taps]);
        for oy in 0..oh {
            for ox in (0..ow).step_by(16) {
                let (m0, m1) = (lanes(ow - ox), lanes((ow - ox).saturating_sub(8)));
                // SAFETY: AVX-512 F is one of this function's features.
                // Tap `t` of the lanes kept by `m0`, `m1` (outputs below
                // `ow`) of row `oy` reads `offs[t] + oy * cols + ox + j`, `j
                // < ow - ox`: inside `x` as in `direct_f64_avx2`; masked-off
                // lanes are neither read nor written (the pointers to them
                // are formed with `wrapping_add`); the stores write the kept
                // lanes of `(o + r) * p + oy * ow + ox..`, inside `out`.
                unsafe {
                    let base = x.as_ptr().wrapping_add(oy * cols + ox);
                    let mut acc = [[_mm512_setzero_pd(); 2]; R];
                    for (t, &off) in offs.iter().enumerate() {
                        let (x0, x1) = (
                            _mm512_maskz_loadu_pd(m0, base.wrapping_add(off)),
                            _mm512_maskz_loadu_pd(m1, base.wrapping_add(off + 8)),
                        );
                        for (a, wr) in acc.iter_mut().zip(&wr) {
                            let wv = _mm512_set1_pd(*wr.get_unchecked(t));
                            a[0] = _mm512_fmadd_pd(x0, wv, a[0]);
                            a[1] = _mm512_fmadd_pd(x1, wv, a[1]);
                        }
                    }
                    for (r, a) in acc.iter().enumerate().take(n) {
                        let dst = out.as_mut_ptr().wrapping_add((o + r) * p + oy * ow + ox);
                        _mm512_mask_storeu_pd(dst, m0, a[0]);
                        _mm512_mask_storeu_pd(dst.wrapping_add(8), m1, a[1]);
                    }
                }
            }
        }
    }
}

/// [`gemm`] of a float conv (f64), in an AVX2 kernel where the CPU has
/// one: the same sums in the same order (`0 + w0 x0 + w1 x1 + ...`, each
/// product rounded, then each addition: no fused multiply-add), so the
/// results are bit for bit [`gemm`]'s and the C reference's.
pub(super) fn gemm_f64(w: &[f64], m: usize, k: usize, col: &[f64], p: usize, out: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && w.len() >= m * k
            && col.len() >= k * p
            && out.len() >= m * p
        {
            // SAFETY: AVX2 is present and `w`, `col`, `out` hold `m * k`,
            // `k * p`, `m * p` values (checked just above): the kernel's
            // `# Safety`.
            unsafe { gemm_f64_avx2(w, m, k, col, p, out) };
            return;
        }
    }
    gemm(w, m, k, col, p, out)
}

/// Four output rows x eight positions per pass (eight accumulators of four
/// f64); the last positions (under eight) in scalar code, same order.
///
/// # Safety
///
/// - The CPU must support AVX2.
/// - `w.len() >= m * k`, `col.len() >= k * p` and `out.len() >= m * p`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemm_f64_avx2(w: &[f64], m: usize, k: usize, col: &[f64], p: usize, out: &mut [f64]) {
    use std::arch::x86_64::*;
    const R: usize = 4;
    let p8 = p / 8 * 8;
    for o in (0..m).step_by(R) {
        let rows = (m - o).min(R);
        // Rows past `m` repeat the last one (computed, not stored).
        // SAFETY: row `o + min(r, rows - 1) < m` starts inside `w`
        // (`m * k` values, the caller's length).
        let wr: [*const f64; R] =
            unsafe { std::array::from_fn(|r| w.as_ptr().add((o + r.min(rows - 1)) * k)) };
        for i in (0..p8).step_by(8) {
            // SAFETY: AVX2 is this function's own feature. The weights read
            // are `wr[r] + kk`, `kk < k`, inside their row of `w`; `x` is
            // `col + kk * p + i` at each load of 8 values, `i + 8 <= p`,
            // inside row `kk < k` of `col` (`k * p`); the stores write
            // `(o + r) * p + i..+8`, `o + r < m`, inside `out` (`m * p`).
            // (`x` steps with `wrapping_add`: past the last row it may point
            // beyond `col`, and is never read there.)
            unsafe {
                let mut acc = [[_mm256_setzero_pd(); 2]; R];
                let mut x = col.as_ptr().add(i);
                for kk in 0..k {
                    let (x0, x1) = (_mm256_loadu_pd(x), _mm256_loadu_pd(x.add(4)));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let wv = _mm256_set1_pd(*wr[r].add(kk));
                        a[0] = _mm256_add_pd(a[0], _mm256_mul_pd(x0, wv));
                        a[1] = _mm256_add_pd(a[1], _mm256_mul_pd(x1, wv));
                    }
                    x = x.wrapping_add(p);
                }
                for (r, a) in acc.iter().enumerate().take(rows) {
                    let dst = out.as_mut_ptr().add((o + r) * p + i);
                    _mm256_storeu_pd(dst, a[0]);
                    _mm256_storeu_pd(dst.add(4), a[1]);
                }
            }
        }
        for r in 0..rows {
            for i in p8..p {
                let mut s = 0.0;
                for kk in 0..k {
                    // SAFETY: `wr[r] + kk`, `kk < k`, is inside row
                    // `o + r < m` of `w` (`m * k` values).
                    s += unsafe { *wr[r].add(kk) } * col[kk * p + i];
                }
                out[(o + r) * p + i] = s;
            }
        }
    }
}

/// How a float conv's sums become integers: `Trunc`, `x as i64` (the
/// seed's `.long()`); `Nearest(scale)`, `(x * scale).round() as i64`
/// (halves away from zero).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum StemRound {
    Trunc,
    Nearest(f64),
}

impl StemRound {
    /// One sum, in plain Rust (the reference of the vector path).
    #[inline(always)]
    fn apply(self, x: f64) -> i64 {
        match self {
            StemRound::Trunc => x as i64,
            StemRound::Nearest(scale) => (x * scale).round() as i64,
        }
    }
}

/// A float conv's sums, rounded as `mode` says, into `out`, stored as i32
/// where every rounded sum fits (then the statistics and the
/// requantization that follow take their 32-bit paths) and as i64
/// otherwise: `out` becomes `Buf::I32` or `Buf::I64` accordingly, its
/// other-width vector kept in `spare32`/`spare64` for the next image. The
/// values are the same either way.
pub(super) fn round_into(
    out: &mut Buf,
    sums: &[f64],
    mode: StemRound,
    spare32: &mut Vec<i32>,
    spare64: &mut Vec<i64>,
) {
    let n = sums.len();
    let mut v32 = match out {
        Buf::I32(v) => std::mem::take(v),
        Buf::I64(v) => {
            *spare64 = std::mem::take(v);
            std::mem::take(spare32)
        }
    };
    v32.resize(n, 0);
    if round_i32(&mut v32, sums, mode) {
        *out = Buf::I32(v32);
        return;
    }
    *spare32 = v32;
    let mut v64 = std::mem::take(spare64);
    v64.resize(n, 0);
    for (a, &x) in v64.iter_mut().zip(sums) {
        *a = mode.apply(x);
    }
    *out = Buf::I64(v64);
}

/// `out[i] = mode.apply(sums[i])` where every value fits i32; returns
/// false (`out` partly written) where one does not.
fn round_i32(out: &mut [i32], sums: &[f64], mode: StemRound) -> bool {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above); the kernel
            // reads and writes within the slices it is given.
            match unsafe { round_i32_avx2(out, sums, mode) } {
                Some(d) => done = d,
                None => return false,
            }
        }
    }
    for (a, &x) in out[done..].iter_mut().zip(&sums[done..]) {
        match i32::try_from(mode.apply(x)) {
            Ok(v) => *a = v,
            Err(_) => return false,
        }
    }
    true
}

/// [`round_i32`] four sums at a time: `t` = the sum (times the scale)
/// truncated (`vroundpd` toward zero, exact); for `Nearest` one step away
/// from zero where `|v - t| >= 0.5` (`v - t` is exact: `t` is `v` without
/// its fraction); then `vcvttpd2dq` where every `t` lies in
/// `[-2^31, 2^31 - 1]` (NaN compares false: out of range). This is
/// `mode.apply` exactly: `as i64` truncates, `f64::round` rounds halves
/// away from zero. Returns how many leading values it wrote (a multiple of
/// four), or `None` when one is out of range.
///
/// # Safety
///
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn round_i32_avx2(out: &mut [i32], sums: &[f64], mode: StemRound) -> Option<usize> {
    use std::arch::x86_64::*;
    let n = out.len().min(sums.len()) / 4 * 4;
    let (scale, nearest) = match mode {
        StemRound::Trunc => (1.0, false),
        StemRound::Nearest(s) => (s, true),
    };
    let (vs, half, one) = (
        _mm256_set1_pd(scale),
        _mm256_set1_pd(0.5),
        _mm256_set1_pd(1.0),
    );
    let (lo, hi) = (
        _mm256_set1_pd(i32::MIN as f64),
        _mm256_set1_pd(i32::MAX as f64),
    );
    let sign = _mm256_set1_pd(-0.0);
    for i in (0..n).step_by(4) {
        // SAFETY: AVX2 is this function's own feature; `i + 4 <= n` is
        // within both slices.
        unsafe {
            let mut v = _mm256_loadu_pd(sums.as_ptr().add(i));
            if nearest {
                v = _mm256_mul_pd(v, vs);
            }
            let mut t = _mm256_round_pd(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            if nearest {
                let frac = _mm256_andnot_pd(sign, _mm256_sub_pd(v, t));
                let up = _mm256_cmp_pd(frac, half, _CMP_GE_OQ);
                let step = _mm256_or_pd(_mm256_and_pd(v, sign), one);
                t = _mm256_add_pd(t, _mm256_and_pd(up, step));
            }
            let ok = _mm256_and_pd(
                _mm256_cmp_pd(t, lo, _CMP_GE_OQ),
                _mm256_cmp_pd(t, hi, _CMP_LE_OQ),
            );
            if _mm256_movemask_pd(ok) != 0b1111 {
                return None;
            }
            _mm_storeu_si128(
                out.as_mut_ptr().add(i) as *mut __m128i,
                _mm256_cvttpd_epi32(t),
            );
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conv::testing::layer;
    use crate::engine::gemm::im2col;
    use crate::plan::ConvInput;

    /// The rounding of the float sums is `StemRound::apply` on every value
    /// (halves, the ends of i32, NaN, infinities, sums past i32), stored as
    /// i32 exactly when every value fits.
    #[test]
    fn rounded_sums_are_apply_and_i32_only_where_all_fit() {
        let edge = [
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            0.49999999999999994,
            -0.49999999999999994,
            2147483647.0,
            2147483647.4,
            -2147483648.0,
            -2147483648.9,
            1e15 + 0.5,
            4503599627370497.0,
        ];
        let random: Vec<f64> = (0..203)
            .map(|i| ((i * 7919 % 2001) as f64 - 1000.0) / 8.0 + (i % 3) as f64 / 3.0)
            .collect();
        for mode in [
            StemRound::Trunc,
            StemRound::Nearest(1.0),
            StemRound::Nearest(256.0),
            StemRound::Nearest(0.3),
        ] {
            for extra in [
                None,
                Some(2147483648.0),
                Some(-2147483649.0),
                Some(f64::NAN),
                Some(f64::INFINITY),
            ] {
                let mut sums: Vec<f64> = random.iter().chain(&edge).copied().collect();
                if let Some(x) = extra {
                    sums.insert(57, x);
                }
                let want: Vec<i64> = sums.iter().map(|&x| mode.apply(x)).collect();
                let fits = want.iter().all(|&v| i32::try_from(v).is_ok());
                for start in [Buf::I32(vec![5; 3]), Buf::I64(vec![7; 300])] {
                    let mut out = start;
                    let (mut s32, mut s64) = (Vec::new(), Vec::new());
                    round_into(&mut out, &sums, mode, &mut s32, &mut s64);
                    assert_eq!(matches!(out, Buf::I32(_)), fits, "{mode:?} {extra:?}");
                    assert_eq!(out.to_i64(), want, "{mode:?} {extra:?}");
                }
            }
        }
    }

    /// The direct float conv gives bit for bit the sums of im2col and the
    /// plain GEMM, on maps whose rows are and are not multiples of 8 wide,
    /// with and without padding, for row counts that are and are not
    /// multiples of four.
    #[test]
    fn direct_float_conv_is_bit_for_bit_im2col_and_gemm() {
        crate::engine::isa::on_each(direct_float_conv_is_bit_for_bit_im2col_and_gemm_body);
    }

    fn direct_float_conv_is_bit_for_bit_im2col_and_gemm_body() {
        for (cin, cout, k, pad, ih, iw) in [
            (3, 16, 3, 1, 32, 32),
            (3, 6, 3, 1, 9, 13),
            (2, 5, 5, 2, 7, 21),
            (1, 3, 1, 0, 4, 11),
            (3, 4, 3, 0, 10, 10),
            (3, 7, 3, 1, 5, 40),
        ] {
            let mut l = layer(cin, cout, k, 1, pad, 1, [ih, iw], Vec::new());
            l.input = ConvInput::Float;
            (l.a_bits, l.in_bits) = (32, 32);
            let [oh, ow] = l.out_hw;
            // Inputs with full f32 mantissas over six orders of magnitude
            // and integer weights up to 2^15 (the plan's widest): the sums
            // round in f64.
            let image: Vec<f32> = (0..cin * ih * iw)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 3.1 * 10f32.powi(i as i32 % 7 - 3))
                .collect();
            let w: Vec<f64> = (0..cout * cin * k * k)
                .map(|i| (i * 7919 % 65521) as f64 - 32760.0)
                .collect();
            let input: Vec<f64> = image.iter().map(|&x| x as f64).collect();
            let mut col = Vec::new();
            im2col(&input, ih, iw, 0, cin, &l, &mut col);
            let mut want = vec![0.0; cout * oh * ow];
            gemm(&w, cout, cin * k * k, &col, oh * ow, &mut want);
            let (mut got, mut padded) = (vec![1.0; cout * oh * ow], Vec::new());
            if !conv_float_direct(&l, &image, &w, &mut padded, &mut got) {
                // No AVX2 here: nothing to compare.
                continue;
            }
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&got),
                bits(&want),
                "{cin}->{cout} k{k} pad{pad} {ih}x{iw}"
            );
            // The order of the additions shows in some sum (else the test
            // could not tell a kernel that reorders them).
            let reversed = |o: usize| {
                let (c, pos) = (o / (oh * ow), o % (oh * ow));
                let row = &w[c * cin * k * k..(c + 1) * cin * k * k];
                (0..cin * k * k)
                    .rev()
                    .fold(0.0, |s, t| s + row[t] * col[t * oh * ow + pos])
            };
            if cin * k * k > 2 {
                assert!(
                    (0..want.len()).any(|o| reversed(o) != want[o]),
                    "{cin}->{cout} k{k}: no sum depends on the order"
                );
            }
            // A weight that is not an integer of at most 29 bits (its
            // products may round) leaves the conv to im2col.
            for bad in [0.5, (1u64 << 29) as f64] {
                let mut w2 = w.clone();
                w2[w.len() / 2] = bad;
                assert!(!conv_float_direct(&l, &image, &w2, &mut padded, &mut got));
            }
        }
    }

    #[test]
    fn float_gemm_kernel_is_bit_for_bit_the_plain_one() {
        let (m, k, p) = (6, 27, 37);
        let w: Vec<f64> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 7.0)
            .collect();
        let col: Vec<f64> = (0..k * p)
            .map(|i| ((i * 53 % 97) as f64 - 48.0) / 3.1)
            .collect();
        let (mut a, mut b) = (vec![0.0; m * p], vec![1.0; m * p]);
        gemm(&w, m, k, &col, p, &mut a);
        gemm_f64(&w, m, k, &col, p, &mut b);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
    }
}
