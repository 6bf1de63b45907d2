//! Depthwise convs with the channels in the vector lanes (x86-64 AVX2,
//! operands in i16: `fits16` in `conv.rs`), for small maps where the
//! per-channel layouts of [`super::depthwise`] cost more than the taps.
//!
//! Per block of 8 channels the zero-padded input is laid out channels-last
//! as *column pairs*: one 8-lane vector per padded pixel `(y, x)`, lane `c`
//! the i32 word holding `v[c][y][x]` (low i16) and `v[c][y][x + 1]` (high
//! i16, zero past the last column): per 8 consecutive input positions of
//! each of the 8 channels one load of the values and one (masked) of their
//! right neighbours, a `vpblendw` into pair words, an 8 x 8 transpose, and
//! one store per pixel (the layout's border stays zero for the whole
//! layer; a pixel of column 0 also writes the pair left of it, `(0,
//! v[c][y][0])`, where there is padding). Then one `vpmaddwd` of such a
//! vector with the block's weight pair `(w[c][ky][kx], w[c][ky][kx + 1])`
//! (zero high half past the kernel; the weights of 8 channels loaded 8
//! taps at a time and transposed) sums two taps of 8 channels (a 3 x 3
//! kernel: six `vpmaddwd` per output pixel of 8 channels), all taps of a
//! pixel in one register. Eight output positions (consecutive in the
//! flattened `oh x ow` map, across rows) are then transposed 8 x 8 in
//! registers so that each channel's 8 positions are one vector store into
//! the NCHW output (a masked store for the last positions, fewer than 8).
//!
//! With a fused requantization (`run_conv_fused`) the accumulators are
//! requantized in the lanes before the transpose, with per-lane (per
//! channel) constants: the arithmetic of `Regs::one` in `fused.rs` (clamp
//! to `[xlo, xhi]`, `x * m + b` in wrapping i32, the rounding shift, the
//! clamp to `[lo, hi]`), and the largest |accumulator| goes into the
//! epilogue's `peak` (a two-term requantization, whose second term this
//! path does not read, is declined); the requantized values go into the
//! NCHW rows or, as `depthwise.rs` does, into the next 1x1 convs' operand
//! (`DwOut::Packed`: after the transpose, two channels' vectors make one
//! pair word per position). The pair sums are exact for i16 operands not both
//! -2^15 and the i32 sum of the taps does not depend on their order, so
//! the sums are those of every other path.
//!
//! Used (`depthwise16`, [`takes_lanes`]) for outputs of at most 8 x 8
//! positions, where it is faster than `depthwise_madd` (MobileNetV2's 8 x 8
//! and 4 x 4 layers about 1.3x and 2.5x); larger maps keep the
//! per-channel layouts.

use super::depthwise::{ConvShape, DwOut};
use super::fused::Epilogue;
#[cfg(target_arch = "x86_64")]
use super::fused::{round8, FLOOR, NEAREST, TRUNC};
#[cfg(target_arch = "x86_64")]
use super::gemm::packed_len;
use crate::fixed::Div;

/// Most tap pairs per pixel (kernels up to 7 x 7: 7 rows of 4 pairs).
const MAX_GROUPS: usize = 28;

/// Output maps of at most this many positions take the lanes path (the
/// per-channel path of `depthwise.rs` is as fast or faster on larger ones:
/// measured on MobileNetV2's fused 3 x 3 layers on a Zen 3 with `qatc int
/// bench --layers`, the lanes path wins clearly at 4 x 4 and 8 x 8
/// outputs, ties at 16 x 16 stride 1, and loses at 16 x 16 stride 2 and
/// 32 x 32).
const MAX_POSITIONS: usize = 8 * 8;

/// The geometry of one depthwise conv on the lanes path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct LanesGeom {
    shape: ConvShape,
    /// Padded rows and columns.
    ph: usize,
    pw: usize,
    /// Tap pairs: `k` rows of `k.div_ceil(2)` pairs `(2 j, 2 j + 1)`.
    groups: usize,
}

impl LanesGeom {
    /// The geometry of a depthwise conv of `shape`, or `None` where `k` is
    /// over 7 or a channel's offsets pass i32.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(shape: ConvShape) -> Option<LanesGeom> {
        let ConvShape { ih, iw, k, pad, .. } = shape;
        let (ph, pw) = (ih + 2 * pad, iw + 2 * pad);
        let groups = k * k.div_ceil(2);
        let ok = groups <= MAX_GROUPS && 8 * ih * iw < i32::MAX as usize;
        ok.then_some(LanesGeom {
            shape,
            ph,
            pw,
            groups,
        })
    }

    /// Words of the column-pair layout of one block (8 per padded pixel).
    fn len(&self) -> usize {
        8 * self.ph * self.pw
    }

    /// Where tap pair `g` of output `(0, 0)` reads, in pixels of the
    /// layout: row `g / pairs`, column `2 (g % pairs)`.
    fn offset(&self, g: usize) -> usize {
        let pairs = self.shape.k.div_ceil(2);
        (g / pairs) * self.pw + 2 * (g % pairs)
    }

    /// Where output position `q` (`oy * ow + ox`) reads its tap `(0, 0)`.
    fn base(&self, q: usize) -> usize {
        let (oy, ox) = (q / self.shape.ow, q % self.shape.ow);
        oy * self.shape.s * self.pw + ox * self.shape.s
    }
}

/// Whether a depthwise conv with an `oh x ow` output takes the lanes path
/// (`depthwise16`): where it is the faster one, and not with a two-term
/// fused requantization or one in i64 sums (`declined`), which it does
/// not compute.
pub(super) fn takes_lanes(oh: usize, ow: usize, declined: bool) -> bool {
    oh * ow <= MAX_POSITIONS && !declined
}

/// A whole depthwise layer (`c` channels of `ih x iw`, `k x k`, `stride`,
/// `pad`, to `oh x ow`) with the channels in the lanes: the accumulators
/// into `out` (`epi` `None`), or with `epi` their requantization (and the
/// largest |accumulator| into `epi.peak`). `scratch` holds the layout.
/// Returns false (and computes nothing) without AVX2, for shapes it does
/// not take, or where the slices are too short; the caller then runs
/// another path.
///
/// The caller guarantees that the input values and the weights fit i16 and
/// are not both -2^15 (`fits16` in `conv.rs`), so each pair sum is exact.
#[allow(clippy::too_many_arguments)]
pub(super) fn depthwise_lanes(
    input: &[i32],
    c: usize,
    ih: usize,
    iw: usize,
    w: &[i32],
    k: usize,
    stride: usize,
    pad: usize,
    out: DwOut,
    oh: usize,
    ow: usize,
    scratch: &mut Vec<i32>,
    epi: Option<&mut Epilogue>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let Some(g) = ConvShape::new(ih, iw, k, stride, pad, oh, ow).and_then(LanesGeom::new)
        else {
            return false;
        };
        if !std::arch::is_x86_feature_detected!("avx2")
            || c == 0
            || input.len() < c * ih * iw
            || w.len() < c * k * k
            || !match &out {
                DwOut::Rows(out) => out.len() >= c * oh * ow,
                DwOut::Packed(pk) => {
                    epi.is_some() && pk.len() >= packed_len(c.div_ceil(2), oh * ow)
                }
            }
            || epi
                .as_ref()
                .is_some_and(|e| e.rows.len() < c || e.second.is_some() || e.wide)
        {
            return false;
        }
        scratch.clear();
        scratch.resize(g.len(), 0);
        let mode = match &epi {
            None => 0,
            Some(e) => {
                let d = match e.div {
                    Div::Floor => 0,
                    Div::Trunc => 1,
                    Div::Nearest => 2,
                };
                1 + 2 * d + e.clamp as u8
            }
        };
        // SAFETY (every arm): the CPU has AVX2, `g` is this conv's
        // geometry, `input`, `w`, `out` (and `epi.rows`) hold `c` channels
        // and `scratch` `g.len()` zeros (all checked or made just above).
        macro_rules! go {
            ($n:expr) => {
                match mode {
                    0 => unsafe { layer::<$n, 0>(&g, input, c, w, out, scratch, epi) },
                    1 => unsafe { layer::<$n, 1>(&g, input, c, w, out, scratch, epi) },
                    2 => unsafe { layer::<$n, 2>(&g, input, c, w, out, scratch, epi) },
                    3 => unsafe { layer::<$n, 3>(&g, input, c, w, out, scratch, epi) },
                    4 => unsafe { layer::<$n, 4>(&g, input, c, w, out, scratch, epi) },
                    5 => unsafe { layer::<$n, 5>(&g, input, c, w, out, scratch, epi) },
                    _ => unsafe { layer::<$n, 6>(&g, input, c, w, out, scratch, epi) },
                }
            };
        }
        match g.groups {
            6 => go!(6),
            15 => go!(15),
            _ => go!(0),
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (
            input, c, ih, iw, w, k, stride, pad, out, oh, ow, scratch, epi,
        );
        false
    }
}

/// Per-lane (per-channel) requantization constants of a block, and the
/// shared shift, rounding offset and output range.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct LaneConsts {
    xlo: std::arch::x86_64::__m256i,
    xhi: std::arch::x86_64::__m256i,
    m: std::arch::x86_64::__m256i,
    b: std::arch::x86_64::__m256i,
    count: std::arch::x86_64::__m128i,
    half: std::arch::x86_64::__m256i,
    lo: std::arch::x86_64::__m256i,
    hi: std::arch::x86_64::__m256i,
}

/// The accumulators `acc` of 8 channels requantized with their lanes'
/// constants (`MODE` `1 + 2 d + clamp`, `d` 0 floor, 1 trunc, 2 nearest):
/// `Regs::one` of `fused.rs` with per-lane `xlo`, `xhi`, `m`, `b`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn finish<const MODE: u8>(
    acc: std::arch::x86_64::__m256i,
    k: &LaneConsts,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let x = _mm256_min_epi32(_mm256_max_epi32(acc, k.xlo), k.xhi);
    let s = _mm256_add_epi32(_mm256_mullo_epi32(x, k.m), k.b);
    let q = match (MODE - 1) / 2 {
        0 => round8::<FLOOR>(s, k.count, k.half),
        1 => round8::<TRUNC>(s, k.count, k.half),
        _ => round8::<NEAREST>(s, k.count, k.half),
    };
    if (MODE - 1) % 2 == 1 {
        _mm256_min_epi32(_mm256_max_epi32(q, k.lo), k.hi)
    } else {
        q
    }
}

/// Transposes 8 x 8 i32: afterwards lane `j` of `v[i]` is the old lane `i`
/// of `v[j]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn transpose8(v: &mut [std::arch::x86_64::__m256i; 8]) {
    use std::arch::x86_64::*;
    let t0 = _mm256_unpacklo_epi32(v[0], v[1]);
    let t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    let t2 = _mm256_unpacklo_epi32(v[2], v[3]);
    let t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    let t4 = _mm256_unpacklo_epi32(v[4], v[5]);
    let t5 = _mm256_unpackhi_epi32(v[4], v[5]);
    let t6 = _mm256_unpacklo_epi32(v[6], v[7]);
    let t7 = _mm256_unpackhi_epi32(v[6], v[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    v[0] = _mm256_permute2x128_si256::<0x20>(u0, u4);
    v[1] = _mm256_permute2x128_si256::<0x20>(u1, u5);
    v[2] = _mm256_permute2x128_si256::<0x20>(u2, u6);
    v[3] = _mm256_permute2x128_si256::<0x20>(u3, u7);
    v[4] = _mm256_permute2x128_si256::<0x31>(u0, u4);
    v[5] = _mm256_permute2x128_si256::<0x31>(u1, u5);
    v[6] = _mm256_permute2x128_si256::<0x31>(u2, u6);
    v[7] = _mm256_permute2x128_si256::<0x31>(u3, u7);
}

/// The layer on the lanes path: `N` tap pairs (0: `g.groups`, read at run
/// time), `MODE` 0 (store the accumulators) or [`finish`]'s requantization.
///
/// # Safety
///
/// - The CPU must support AVX2.
/// - `g` is [`LanesGeom::new`]'s geometry of this conv, `N` is 0 or
///   `g.groups`; `input`, `w` and `out` hold `c >= 1` channels (`c * ih *
///   iw`, `c * k * k`, `c * oh * ow`), `buf.len() >= g.len()` with its
///   words zero, and where `MODE != 0` `epi` is `Some` with `rows.len() >=
///   c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn layer<const N: usize, const MODE: u8>(
    g: &LanesGeom,
    input: &[i32],
    c: usize,
    w: &[i32],
    out: DwOut,
    buf: &mut [i32],
    epi: Option<&mut Epilogue>,
) {
    use std::arch::x86_64::*;
    let n = if N == 0 { g.groups } else { N };
    let (ih, iw, k, pad, pw) = (g.shape.ih, g.shape.iw, g.shape.k, g.shape.pad, g.pw);
    let (plane, p, k2, pairs) = (ih * iw, g.shape.oh * g.shape.ow, k * k, k.div_ceil(2));
    assert!(
        n == g.groups
            && n <= MAX_GROUPS
            && c >= 1
            && input.len() >= c * plane
            && w.len() >= c * k2
            && match &out {
                DwOut::Rows(out) => out.len() >= c * p,
                DwOut::Packed(pk) => MODE != 0 && pk.len() >= packed_len(c.div_ceil(2), p),
            }
            && k2 <= 56
            && buf.len() >= g.len()
    );
    let mut offs = [0usize; MAX_GROUPS];
    for (i, o) in offs.iter_mut().enumerate().take(n) {
        *o = 8 * g.offset(i);
    }
    // Where each position reads, in multiples of 8 (the last repeated).
    let bases: Vec<usize> = (0..p.div_ceil(8) * 8)
        .map(|q| 8 * g.base(q.min(p - 1)))
        .collect();
    let zero = _mm256_setzero_si256();
    let mut consts = LaneConsts {
        xlo: zero,
        xhi: zero,
        m: zero,
        b: zero,
        count: _mm_setzero_si128(),
        half: zero,
        lo: zero,
        hi: zero,
    };
    let mut rows: &[super::fused::RowConsts] = &[];
    if let Some(e) = &epi {
        let half = if e.shift == 0 {
            0
        } else {
            1i32 << (e.shift.min(31) - 1)
        };
        consts.count = _mm_cvtsi32_si128(e.shift as i32);
        consts.half = _mm256_set1_epi32(half);
        consts.lo = _mm256_set1_epi32(e.lo);
        consts.hi = _mm256_set1_epi32(e.hi);
        rows = e.rows;
    }
    assert!(MODE == 0 || rows.len() >= c);
    let mut peak = zero;
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((p % 8) as i32), lane);
    let in_tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((plane % 8) as i32), lane);
    // Per input position `q`: where its column pair goes in the layout
    // (`8 ((y + pad) pw + x + pad)`, bit 0 set where `x == 0`), and per 8
    // positions the lanes whose right neighbour `x + 1` is in the row.
    let lay: Vec<usize> = (0..plane)
        .map(|q| (8 * ((q / iw + pad) * pw + q % iw + pad)) | (q % iw == 0) as usize)
        .collect();
    let right: Vec<__m256i> = (0..plane.div_ceil(8))
        .map(|i| {
            let mut m = [0i32; 8];
            for (j, v) in m.iter_mut().enumerate() {
                let q = 8 * i + j;
                *v = -((q < plane && q % iw + 1 < iw) as i32);
            }
            // SAFETY: `m` is 8 i32 (an unaligned load).
            unsafe { _mm256_loadu_si256(m.as_ptr() as *const __m256i) }
        })
        .collect();
    let src = buf.as_mut_ptr();
    // The output: rows, or the operand's pairs of channels (`kp` per block).
    let (rows_out, packed_out) = match out {
        DwOut::Rows(out) => (out.as_mut_ptr(), None),
        DwOut::Packed(pk) => (std::ptr::null_mut(), Some(pk.as_mut_ptr())),
    };
    let kp = c.div_ceil(2);
    let low = _mm256_set1_epi32(0xffff);
    let mut wv = [zero; MAX_GROUPS];
    let mut taps = [zero; 56];
    for c0 in (0..c).step_by(8) {
        let nc = (c - c0).min(8);
        // Lane `l` is channel `c0 + l`; a missing channel of the last block
        // repeats the block's last one (input and weights: the same sums,
        // never stored).
        let chan = |l: usize| c0 + l.min(nc - 1);
        // The block's layout: per 8 input positions `q..q + 8` of each
        // channel the column pairs (the value at `q + j`, low i16, and its
        // right neighbour in the row, high i16, zero at the row's end),
        // transposed to pixels of 8 channels and stored at their padded
        // place (and shifted into the low-half-zero pair left of column 0
        // where `pad >= 1`); the other pairs stay zero from the caller.
        for q in (0..plane).step_by(8) {
            let mut v = [zero; 8];
            let nb = right[q / 8];
            for (l, x) in v.iter_mut().enumerate() {
                // SAFETY: positions `q..q + 8` of channel `chan(l) < c`, the
                // ones at or past `plane` masked off (masked lanes are not
                // read), and their right neighbours `q + j + 1` where `nb`
                // (`q + j + 1 < plane`): inside `input`.
                unsafe {
                    let at = input.as_ptr().add(chan(l) * plane + q);
                    let a = if q + 8 <= plane {
                        _mm256_loadu_si256(at as *const __m256i)
                    } else {
                        _mm256_maskload_epi32(at, in_tail)
                    };
                    let b = _mm256_maskload_epi32(at.add(1), nb);
                    *x = _mm256_blend_epi16::<0b1010_1010>(a, _mm256_slli_epi32::<16>(b));
                }
            }
            transpose8(&mut v);
            for (x, &to) in v.iter().zip(&lay[q..plane.min(q + 8)]) {
                // SAFETY: the pixel `(y + pad, x + pad)` of an input
                // position, and where `x == 0` and `pad >= 1` the one left of
                // it: inside `buf` (`g.len()` words).
                unsafe {
                    let at = src.add(to & !1);
                    _mm256_storeu_si256(at as *mut __m256i, *x);
                    if pad >= 1 && to & 1 == 1 {
                        let left = _mm256_slli_epi32::<16>(*x);
                        _mm256_storeu_si256(at.sub(8) as *mut __m256i, left);
                    }
                }
            }
        }
        // The block's weights: `taps[t]` lane `l` is tap `t` of channel
        // `chan(l)` (8 taps of the 8 channels loaded, transposed), then the
        // pairs `(w[ky][kx], w[ky][kx + 1])` (high half zero past the row).
        for t0 in (0..k2).step_by(8) {
            let cnt = (k2 - t0).min(8);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt as i32), lane);
            let mut v = [zero; 8];
            for (l, x) in v.iter_mut().enumerate() {
                // SAFETY: taps `t0..t0 + cnt <= k2` of channel `chan(l) <
                // c` (the others masked off, not read): inside `w`.
                *x = unsafe { _mm256_maskload_epi32(w.as_ptr().add(chan(l) * k2 + t0), mask) };
            }
            transpose8(&mut v);
            taps[t0..t0 + cnt].copy_from_slice(&v[..cnt]);
        }
        for (i, v) in wv.iter_mut().enumerate().take(n) {
            let (ky, kx) = (i / pairs, 2 * (i % pairs));
            let lo = taps[ky * k + kx];
            let hi = if kx + 1 < k {
                _mm256_slli_epi32::<16>(taps[ky * k + kx + 1])
            } else {
                zero
            };
            *v = _mm256_blend_epi16::<0b1010_1010>(lo, hi);
        }
        if MODE != 0 {
            let mut lanes = [[0i32; 8]; 4];
            for (l, rc) in rows[c0..c0 + nc].iter().enumerate() {
                lanes[0][l] = rc.xlo;
                lanes[1][l] = rc.xhi;
                lanes[2][l] = rc.m;
                lanes[3][l] = rc.b;
            }
            // SAFETY: each `lanes[i]` is 8 i32 (unaligned loads).
            unsafe {
                consts.xlo = _mm256_loadu_si256(lanes[0].as_ptr() as *const __m256i);
                consts.xhi = _mm256_loadu_si256(lanes[1].as_ptr() as *const __m256i);
                consts.m = _mm256_loadu_si256(lanes[2].as_ptr() as *const __m256i);
                consts.b = _mm256_loadu_si256(lanes[3].as_ptr() as *const __m256i);
            }
        }
        let mut q = 0;
        while q < p {
            let m = (p - q).min(8);
            // All taps of positions `q..q + 8` (past `p`: the last
            // position again), tap pair by tap pair.
            let at = &bases[q..q + 8];
            let mut acc = [zero; 8];
            for (&o, &wg) in offs[..n].iter().zip(&wv[..n]) {
                for (a, &b) in acc.iter_mut().zip(at) {
                    // SAFETY: the position's taps read pixels `(oy s + ky,
                    // ox s + kx)` with `oy s + ky <= (oh - 1) s + k - 1 <
                    // ph` and likewise `< pw` (`LanesGeom::new`): inside
                    // `buf`.
                    let x = unsafe { _mm256_loadu_si256(src.add(b + o) as *const __m256i) };
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(x, wg));
                }
            }
            if MODE != 0 {
                for a in acc.iter_mut() {
                    // Lanes of missing channels repeat the block's last
                    // channel, those of positions past `p` the last
                    // position: no new |sum|.
                    peak = _mm256_max_epu32(peak, _mm256_abs_epi32(*a));
                    *a = finish::<MODE>(*a, &consts);
                }
            }
            transpose8(&mut acc);
            match packed_out {
                None => {
                    for (l, a) in acc.iter().enumerate().take(nc) {
                        // SAFETY: channel `c0 + l < c`, positions `q..q + m
                        // <= p`: inside `out` (`c * p` words); masked lanes
                        // write nothing.
                        unsafe {
                            let to = rows_out.add((c0 + l) * p + q);
                            if m == 8 {
                                _mm256_storeu_si256(to as *mut __m256i, *a);
                            } else {
                                _mm256_maskstore_epi32(to, tail, *a);
                            }
                        }
                    }
                }
                Some(pk) => {
                    // Channels `c0 + 2j`, `c0 + 2j + 1` as pair `c0 / 2 + j`
                    // of block `q / 8`, in i16 (the requantized values fit:
                    // `packs_output`); positions past `p` and a missing last
                    // odd channel 0.
                    let keep = if m == 8 { _mm256_set1_epi32(-1) } else { tail };
                    for j in 0..nc.div_ceil(2) {
                        let lo = _mm256_and_si256(_mm256_and_si256(acc[2 * j], keep), low);
                        let hi = if 2 * j + 1 < nc {
                            _mm256_slli_epi32::<16>(_mm256_and_si256(acc[2 * j + 1], keep))
                        } else {
                            zero
                        };
                        // SAFETY: pair `c0 / 2 + j < kp` (`c0 + 2 j < c`)
                        // of block `q / 8 < p.div_ceil(8)`: 16 i16 inside
                        // `packed_len(kp, p)` (asserted above).
                        unsafe {
                            let to = pk.add((q / 8 * kp + c0 / 2 + j) * 16);
                            _mm256_storeu_si256(to as *mut __m256i, _mm256_or_si256(lo, hi));
                        }
                    }
                }
            }
            q += 8;
        }
    }
    if let Some(e) = epi {
        // SAFETY: AVX2 (this function's own feature).
        e.peak = e.peak.max(unsafe { super::fused::hmax_u32(peak) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::depthwise::tests::{
        assert_fused_matches, cutting_rows, epilogue_cases, naive,
    };

    fn avx2() -> bool {
        cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("avx2")
    }

    /// A small deterministic generator.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    /// Inputs and weights of `c` channels: value set `set` (0: small
    /// random, 1: i16 edges against -2^15 weights, 2: -2^15 inputs against
    /// odd weights up to 2^15 - 1, 3: u8 inputs).
    fn values(set: usize, n: usize, rng: &mut Rng) -> Vec<i32> {
        (0..n)
            .map(|i| match set {
                0 => (rng.next() % 255) as i32 - 127,
                1 => [32767, -32767][(rng.next() % 2) as usize],
                2 => [-32768, 32767, 0][(i + rng.next() as usize % 2) % 3],
                _ => (rng.next() % 256) as i32,
            })
            .collect()
    }

    /// A packed output ([`DwOut::Packed`], `c` channels of `p` positions)
    /// against the rows `want`: the same values, and 0 in every word past
    /// `p` or past the last channel.
    fn assert_packed(pk: &[i16], c: usize, p: usize, want: &[i32], what: &str) {
        let mut rows = vec![0; c * p];
        crate::engine::gemm::unpack_pairs(pk, c, p, &mut rows);
        assert_eq!(rows, want, "{what}: packed");
        let kp = c.div_ceil(2);
        for (i, &v) in pk.iter().enumerate() {
            let (blk, j, lane) = (i / (kp * 16), i / 16 % kp, i % 16);
            if blk * 8 + lane / 2 >= p || 2 * j + lane % 2 >= c {
                assert_eq!(v, 0, "{what}: padding word {i}");
            }
        }
    }

    /// The lanes kernel against the definition: maps 1 to 20 wide (non
    /// square), strides 1 and 2 (and 3), paddings 0 to k/2, kernels 1, 2,
    /// 3, 5 and 7, channel counts 1, 7, 8, 9 and 17, i16 edge values
    /// (never -2^15 against -2^15).
    #[test]
    fn depthwise_lanes_matches_naive() {
        if !avx2() {
            return;
        }
        let mut rng = Rng(7);
        let mut scratch = vec![3; 5];
        let mut runs = 0;
        for iw in [1usize, 2, 3, 4, 5, 7, 8, 9, 13, 16, 20] {
            for ih in [1usize, 2, 4, 5, 8, 11] {
                for k in [1usize, 2, 3, 5, 7] {
                    for pad in 0..=k / 2 {
                        for s in [1usize, 2, 3] {
                            if ih + 2 * pad < k || iw + 2 * pad < k || (s == 3 && k != 3) {
                                continue;
                            }
                            let oh = (ih + 2 * pad - k) / s + 1;
                            let ow = (iw + 2 * pad - k) / s + 1;
                            let c = [1usize, 7, 8, 9, 17][runs % 5];
                            let set = (runs / 5) % 4;
                            let (x, wset) = match set {
                                1 => (1, 2),
                                2 => (2, 1),
                                v => (v, v),
                            };
                            let input = values(x, c * ih * iw, &mut rng);
                            let mut w = values(wset, c * k * k, &mut rng);
                            if set == 1 {
                                // Weights -2^15 against inputs ±(2^15 - 1).
                                for (i, v) in w.iter_mut().enumerate() {
                                    if i % 3 == 0 {
                                        *v = -32768;
                                    }
                                }
                            }
                            if set == 2 {
                                // Inputs -2^15 against weights ±(2^15 - 1).
                                for v in w.iter_mut() {
                                    *v = if *v == -32768 { 32767 } else { -32767 };
                                }
                            }
                            let mut want = vec![];
                            for ch in 0..c {
                                let xs: Vec<i64> = input[ch * ih * iw..(ch + 1) * ih * iw]
                                    .iter()
                                    .map(|&v| v as i64)
                                    .collect();
                                let ws: Vec<i64> = w[ch * k * k..(ch + 1) * k * k]
                                    .iter()
                                    .map(|&v| v as i64)
                                    .collect();
                                want.extend(
                                    naive(&xs, ih, iw, &ws, k, s, pad, oh, ow)
                                        .iter()
                                        .map(|&v| v as i32),
                                );
                            }
                            let mut out = vec![i32::MIN; c * oh * ow + 3];
                            let done = depthwise_lanes(
                                &input,
                                c,
                                ih,
                                iw,
                                &w,
                                k,
                                s,
                                pad,
                                DwOut::Rows(&mut out),
                                oh,
                                ow,
                                &mut scratch,
                                None,
                            );
                            let what = format!("ih {ih} iw {iw} k {k} s {s} pad {pad} c {c}");
                            assert!(done, "{what}: not taken");
                            assert_eq!(&out[..c * oh * ow], &want[..], "{what}");
                            assert_eq!(&out[c * oh * ow..], &[i32::MIN; 3], "{what}: past");
                            runs += 1;
                        }
                    }
                }
            }
        }
        assert!(runs >= 1000, "{runs}");
    }

    /// The fused form against [`requant_clamped`] on the same sums, for
    /// every rounding and clamp setting, with constants whose clamp ranges
    /// cut the sums on both sides, and the statistics (largest |sum|).
    #[test]
    fn fused_lanes_match_requant_clamped() {
        if !avx2() {
            return;
        }
        let mut rng = Rng(11);
        let mut scratch = vec![];
        let (mut runs, mut packed) = (0, 0);
        for &(ih, iw, k, s, pad) in &[
            (4usize, 4usize, 3usize, 1usize, 1usize),
            (8, 8, 3, 1, 1),
            (8, 8, 3, 2, 1),
            (7, 5, 3, 2, 0),
            (3, 9, 5, 1, 2),
            (1, 1, 1, 1, 0),
            (6, 10, 5, 2, 2),
        ] {
            let oh = (ih + 2 * pad - k) / s + 1;
            let ow = (iw + 2 * pad - k) / s + 1;
            let p = oh * ow;
            for c in [1usize, 7, 8, 9, 17] {
                let input = values(0, c * ih * iw, &mut rng);
                let w = values(0, c * k * k, &mut rng);
                let mut sums = vec![0; c * p];
                assert!(depthwise_lanes(
                    &input,
                    c,
                    ih,
                    iw,
                    &w,
                    k,
                    s,
                    pad,
                    DwOut::Rows(&mut sums),
                    oh,
                    ow,
                    &mut scratch,
                    None
                ));
                let big = sums.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as i32;
                let rows = cutting_rows(c, big, || rng.next() as i32);
                for (e, what) in epilogue_cases(&rows, &[0, 1, 7, 12], None) {
                    let what = format!("ih {ih} iw {iw} k {k} s {s} c {c} {what}");
                    let mut run = |out: DwOut, e: &mut Epilogue| {
                        depthwise_lanes(
                            &input,
                            c,
                            ih,
                            iw,
                            &w,
                            k,
                            s,
                            pad,
                            out,
                            oh,
                            ow,
                            &mut scratch,
                            Some(e),
                        )
                    };
                    let want = assert_fused_matches(&sums, p, &e, &what, |got, e| {
                        run(DwOut::Rows(got), e)
                    });
                    if e.clamp {
                        // Values in i16: as the next 1x1 convs' operand,
                        // into a dirty buffer.
                        let mut pk = vec![i16::MIN; packed_len(c.div_ceil(2), p)];
                        assert_fused_matches(&sums, p, &e, &what, |got, e| {
                            let ran = run(DwOut::Packed(&mut pk), e);
                            crate::engine::gemm::unpack_pairs(&pk, c, p, got);
                            ran
                        });
                        // And every word past `p` or the last channel 0.
                        assert_packed(&pk, c, p, &want, &what);
                        packed += 1;
                    }
                    runs += 1;
                }
            }
        }
        assert!(runs >= 800 && 2 * packed == runs, "{runs} {packed}");
    }
}
