//! Requantization: `out = clamp(div(sum_t src_t * m_t + b, 2^shift), lo,
//! hi)` per channel, for one term (a conv's accumulator) or several (a
//! residual add).
//!
//! - one or two i32 terms: [`requant_rows`], every channel in one call,
//!   each row (32-bit multipliers) one loop per rounding mode (`Div`) in
//!   i32 lanes where the row's own values bound every sum below 2^31, else
//!   i64 lanes; on x86-64 with AVX2 (detected at run time) the same Rust
//!   code compiled with AVX2, so the compiler vectorises it (8 or 4 lanes
//!   per vector), and where the bound keeps every quotient inside i32
//!   (sums below `2^(31 + shift)`: a 16-bit head after its conv) the i64
//!   sums written out in AVX2 instead (`requant_wide_avx2`: `vpmuldq` on
//!   even and odd lanes, the quotient in the low halves); a channel whose
//!   multipliers pass 32 bits exactly in i64;
//! - sums that may pass 2^63 (`Requant::wide`): plain i128 loops;
//! - rows of fewer than 8 values (a pooled `[C, 1, 1]`): one scalar i64
//!   loop over every channel (a vector loop's set-up per row cost more
//!   than its values);
//! - anything else (more terms, 64-bit sources or multipliers): plain i64
//!   rows, one term at a time.
//!
//! Every path computes the exact sum and the same rounding
//! (`fixed::shift_round`), so the results do not depend on the path.
//!
//! With `Workspace::fuse_requant` on, a one-term requantization of the
//! conv just before it is done by that conv instead (`fused.rs`: clamped
//! i32 sums in the kernels' epilogue) and this pass does not run for it;
//! likewise a two-term one runs as `fused.rs`'s `run_requant2` (i32 lanes
//! on a clamped accumulator) where that applies. This file stays the
//! reference both are tested against, and runs everything else.

use super::conv::abs_peak;
use super::{Buf, Workspace};
use crate::fixed::{shift_round, shift_round_wide, Div};
use crate::plan::{IntPlan, Requant};

/// The integer a requantization computes its sums in: i64 always holds
/// them (multipliers of at most 32 bits times 32-bit sources); i32 does
/// where the row's values bound them (8 lanes per AVX2 vector instead of 4,
/// and native min/max).
trait Lane:
    Copy
    + Ord
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::BitAnd<Output = Self>
    + std::ops::BitXor<Output = Self>
    + std::ops::Shr<u32, Output = Self>
{
    const BITS: u32;
    fn from_i32(x: i32) -> Self;
    /// `x` where it fits (the caller checked).
    fn from_i64(x: i64) -> Self;
    fn to_i32(self) -> i32;
}

impl Lane for i32 {
    const BITS: u32 = 32;
    fn from_i32(x: i32) -> i32 {
        x
    }
    fn from_i64(x: i64) -> i32 {
        x as i32
    }
    fn to_i32(self) -> i32 {
        self
    }
}

impl Lane for i64 {
    const BITS: u32 = 64;
    fn from_i32(x: i32) -> i64 {
        x as i64
    }
    fn from_i64(x: i64) -> i64 {
        x
    }
    fn to_i32(self) -> i32 {
        self as i32
    }
}

/// The constants of one channel of a requantization (see
/// [`requant_row_body`]).
#[derive(Clone, Copy)]
pub(super) struct RowScale {
    pub m: i32,
    pub m2: i32,
    pub b: i64,
    pub shift: u32,
    pub div: Div,
    pub lo: i64,
    pub hi: i64,
}

/// One channel of a requantization with one term (`src2` empty) or two (a
/// residual add): `out = clamp(div(src * m + src2 * m2 + b, 2^shift), lo, hi)`,
/// the multipliers in 32 bits (always so for formats of at most 32 bits).
/// Computed in i32 where `max|src| * |m| + max|src2| * |m2| + |b| + 2^shift`
/// stays below 2^31 (then no sum, and no rounding offset added to one, can
/// pass i32), else in i64 (sign-extended 32x32 products); one loop per
/// rounding so none branches inside.
#[inline(always)]
pub(super) fn requant_row_body(src: &[i32], src2: &[i32], q: &RowScale, out: &mut [i32]) {
    let RowScale {
        m, m2, b, shift, ..
    } = *q;
    // Saturating: two 2^31 x 2^31 products would pass i64 (then i64 lanes).
    let term = |v: &[i32], m: i32| (abs_peak(v) as i64).saturating_mul((m as i64).abs());
    let mut bound = term(src, m)
        .saturating_add(b.saturating_abs())
        .saturating_add(1i64 << shift.min(40));
    if !src2.is_empty() {
        bound = bound.saturating_add(term(src2, m2));
    }
    if bound < 1 << 31 && shift < 31 {
        requant_lanes::<i32>(src, src2, q, out)
    } else if shift <= 31 && bound < 1 << (31 + shift) {
        requant_i32_results(src, src2, q, out)
    } else {
        requant_lanes::<i64>(src, src2, q, out)
    }
}

/// [`requant_lanes`]`::<i64>` where every sum `s` is below `2^(31 +
/// shift)` in magnitude, so every quotient fits i32: on x86-64 with AVX2
/// (detected at run time) [`requant_wide_avx2`] for the whole vectors and
/// the generic loop for the last values, else the generic loop.
#[inline(always)]
fn requant_i32_results(src: &[i32], src2: &[i32], q: &RowScale, out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let n = out.len().min(src.len());
        let n = if src2.is_empty() {
            n
        } else {
            n.min(src2.len())
        };
        let whole = n / 8 * 8;
        if whole > 0 && std::arch::is_x86_feature_detected!("avx2") {
            let y = (!src2.is_empty()).then(|| &src2[..whole]);
            // SAFETY: the CPU has AVX2 (checked just above); `src`, `y` and
            // `out` hold `whole` values, a multiple of 8; the caller bounds
            // every sum below `2^(31 + shift)`, `shift <= 31`.
            unsafe { requant_wide_avx2(&src[..whole], y, q, &mut out[..whole]) };
            let rest2 = if src2.is_empty() {
                &[][..]
            } else {
                &src2[whole..n]
            };
            requant_lanes::<i64>(&src[whole..n], rest2, q, &mut out[whole..n]);
            return;
        }
    }
    requant_lanes::<i64>(src, src2, q, out)
}

/// Sums in i64 lanes, quotients in i32 (the compiler's own vectorisation
/// of the i64 loop emulates each 64-bit multiply, arithmetic shift and
/// comparison with several operations): per 8 values the products of the
/// even and of the odd lanes (`vpmuldq`, exact i64 products of i32 values
/// and a 32-bit multiplier), the bias added in i64, the rounding of
/// `fixed::shift_round` on the 64-bit sums (trunc: `2^shift - 1` added to
/// the negative ones; nearest: `|s| + 2^(shift - 1)`, the sign restored
/// after the shift), a logical shift whose low 32 bits are the quotient
/// (it fits i32: `|s| < 2^(31 + shift)`, whatever the shift puts above),
/// the odd lanes' quotients moved up beside the even ones, and the clamp
/// to `[lo, hi]` in i32.
///
/// # Safety
///
/// The CPU must support AVX2; `src.len()` is a multiple of 8, `out` and
/// `src2` (where given) hold at least as many values; `q.shift <= 31` and
/// every sum `src * m + src2 * m2 + b` is below `2^(31 + shift)` in
/// magnitude (else the results are wrong, not unsafe).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn requant_wide_avx2(src: &[i32], src2: Option<&[i32]>, q: &RowScale, out: &mut [i32]) {
    use std::arch::x86_64::*;
    let n = src.len();
    assert!(
        n.is_multiple_of(8) && out.len() >= n && src2.is_none_or(|y| y.len() >= n) && q.shift <= 31
    );
    let w = WideRound::new(q.m, q.m2, q.b, q.shift);
    let lo = _mm256_set1_epi32(q.lo.max(i32::MIN as i64) as i32);
    let hi = _mm256_set1_epi32(q.hi.min(i32::MAX as i64) as i32);
    macro_rules! rows {
        ($div:expr) => {
            for i in (0..n).step_by(8) {
                // SAFETY: values `i..i + 8 <= n` of `src`, `src2` and `out`
                // (asserted above).
                unsafe {
                    let x = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
                    let y = src2.map(|y| _mm256_loadu_si256(y.as_ptr().add(i) as *const __m256i));
                    let r =
                        _mm256_min_epi32(_mm256_max_epi32(w.quotients8::<{ $div }>(x, y), lo), hi);
                    _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, r);
                }
            }
        };
    }
    match q.div {
        Div::Floor => rows!(0),
        Div::Trunc => rows!(1),
        Div::Nearest => rows!(2),
    }
}

/// The constants of [`requant_wide_avx2`] (and of the fused epilogue's
/// i64 form, `fused.rs`) in registers: the multipliers and bias of a
/// channel, the shift, and the rounding offsets.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct WideRound {
    m: std::arch::x86_64::__m256i,
    m2: std::arch::x86_64::__m256i,
    b: std::arch::x86_64::__m256i,
    count: std::arch::x86_64::__m128i,
    mask: std::arch::x86_64::__m256i,
    half: std::arch::x86_64::__m256i,
}

#[cfg(target_arch = "x86_64")]
impl WideRound {
    /// A channel's multipliers `m` (of the first term) and `m2`, its bias
    /// `b`, and the shift (at most 31).
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) fn new(m: i32, m2: i32, b: i64, shift: u32) -> WideRound {
        use std::arch::x86_64::*;
        WideRound {
            m: _mm256_set1_epi64x(m as i64),
            m2: _mm256_set1_epi64x(m2 as i64),
            b: _mm256_set1_epi64x(b),
            count: _mm_cvtsi64_si128(shift as i64),
            mask: _mm256_set1_epi64x((1i64 << shift) - 1),
            half: _mm256_set1_epi64x(if shift == 0 { 0 } else { 1i64 << (shift - 1) }),
        }
    }

    /// The same shift and rounding with another channel's `m` and `b`.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) fn channel(&self, m: i32, b: i64) -> WideRound {
        use std::arch::x86_64::*;
        WideRound {
            m: _mm256_set1_epi64x(m as i64),
            b: _mm256_set1_epi64x(b),
            ..*self
        }
    }

    /// The quotients of the sums of eight values `x` (and `y`), in i32
    /// lanes, not clamped: even lanes in the low halves as they are, odd
    /// ones shifted down (`vpmuldq` reads only the low halves), the odd
    /// quotients moved back up beside the even ones. Exact where every
    /// sum is below `2^(31 + shift)` (with the rounding offset).
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) fn quotients8<const DIV: u8>(
        &self,
        x: std::arch::x86_64::__m256i,
        y: Option<std::arch::x86_64::__m256i>,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        let even = self.quotients::<DIV>(x, y);
        let odd = self.quotients::<DIV>(
            _mm256_srli_epi64::<32>(x),
            y.map(|y| _mm256_srli_epi64::<32>(y)),
        );
        _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd))
    }

    /// The quotients of the four sums of the low halves of `x` (and `y`)
    /// in the low halves of the lanes (`DIV`: 0 floor, 1 trunc, 2
    /// nearest); a method with its own feature so that it inlines into the
    /// kernel.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn quotients<const DIV: u8>(
        &self,
        x: std::arch::x86_64::__m256i,
        y: Option<std::arch::x86_64::__m256i>,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        let mut s = _mm256_add_epi64(_mm256_mul_epi32(x, self.m), self.b);
        if let Some(y) = y {
            s = _mm256_add_epi64(s, _mm256_mul_epi32(y, self.m2));
        }
        match DIV {
            0 => _mm256_srl_epi64(s, self.count),
            1 => {
                let neg = _mm256_cmpgt_epi64(_mm256_setzero_si256(), s);
                let t = _mm256_add_epi64(s, _mm256_and_si256(neg, self.mask));
                _mm256_srl_epi64(t, self.count)
            }
            _ => {
                let neg = _mm256_cmpgt_epi64(_mm256_setzero_si256(), s);
                let a = _mm256_sub_epi64(_mm256_xor_si256(s, neg), neg);
                let t = _mm256_srl_epi64(_mm256_add_epi64(a, self.half), self.count);
                _mm256_sub_epi64(_mm256_xor_si256(t, neg), neg)
            }
        }
    }
}

#[inline(always)]
fn requant_lanes<T: Lane>(src: &[i32], src2: &[i32], q: &RowScale, out: &mut [i32]) {
    let RowScale { shift, div, .. } = *q;
    let (m, m2, b) = (T::from_i32(q.m), T::from_i32(q.m2), T::from_i64(q.b));
    let (lo, hi) = (q.lo.max(i32::MIN as i64), q.hi.min(i32::MAX as i64));
    let (lo, hi) = (T::from_i64(lo), T::from_i64(hi));
    let zero = T::from_i32(0);
    let mask = if shift == 0 {
        zero
    } else {
        T::from_i64((1i64 << shift) - 1)
    };
    let half = if shift == 0 {
        zero
    } else {
        T::from_i64(1i64 << (shift - 1))
    };
    let sign = T::BITS - 1;
    let n = out.len().min(src.len());
    let (out, src) = (&mut out[..n], &src[..n]);
    if src2.is_empty() {
        match div {
            Div::Trunc => {
                for (o, &x) in out.iter_mut().zip(src) {
                    let s = T::from_i32(x) * m + b;
                    *o = ((s + ((s >> sign) & mask)) >> shift).clamp(lo, hi).to_i32();
                }
            }
            Div::Floor => {
                for (o, &x) in out.iter_mut().zip(src) {
                    *o = ((T::from_i32(x) * m + b) >> shift).clamp(lo, hi).to_i32();
                }
            }
            Div::Nearest => {
                for (o, &x) in out.iter_mut().zip(src) {
                    let s = T::from_i32(x) * m + b;
                    // Halves away from zero: round |s|, restore the sign.
                    let neg = s >> sign;
                    let a = (s ^ neg) - neg;
                    let q = (a + half) >> shift;
                    *o = ((q ^ neg) - neg).clamp(lo, hi).to_i32();
                }
            }
        }
        return;
    }
    let n = n.min(src2.len());
    let (out, src, src2) = (&mut out[..n], &src[..n], &src2[..n]);
    match div {
        Div::Trunc => {
            for i in 0..n {
                let s = T::from_i32(src[i]) * m + T::from_i32(src2[i]) * m2 + b;
                out[i] = ((s + ((s >> sign) & mask)) >> shift).clamp(lo, hi).to_i32();
            }
        }
        Div::Floor => {
            for i in 0..n {
                let s = T::from_i32(src[i]) * m + T::from_i32(src2[i]) * m2 + b;
                out[i] = (s >> shift).clamp(lo, hi).to_i32();
            }
        }
        Div::Nearest => {
            for i in 0..n {
                let s = T::from_i32(src[i]) * m + T::from_i32(src2[i]) * m2 + b;
                let neg = s >> sign;
                let a = (s ^ neg) - neg;
                let q = (a + half) >> shift;
                out[i] = ((q ^ neg) - neg).clamp(lo, hi).to_i32();
            }
        }
    }
}

/// [`requant_row_body`] compiled with AVX2.
///
/// # Safety
///
/// The CPU must support AVX2 (the body is safe Rust).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn requant_row_avx2(src: &[i32], src2: &[i32], q: &RowScale, out: &mut [i32]) {
    requant_row_body(src, src2, q, out)
}

/// [`requant_row_body`], compiled with AVX2 where the CPU has it.
fn requant_row(src: &[i32], src2: &[i32], q: &RowScale, out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { requant_row_avx2(src, src2, q, out) };
            return;
        }
    }
    requant_row_body(src, src2, q, out)
}

/// The one or two terms of `r` as (source, multipliers) where every
/// source is `len` i32 values.
fn i32_terms<'a>(
    r: &'a Requant,
    srcs: &[&'a Buf],
    len: usize,
) -> Option<Vec<(&'a [i32], &'a [i64])>> {
    if !(1..=2).contains(&r.terms.len()) {
        return None;
    }
    r.terms
        .iter()
        .zip(srcs)
        .map(|(t, src)| match src {
            Buf::I32(v) if v.len() >= len => Some((v.as_slice(), t.mult.as_slice())),
            _ => None,
        })
        .collect()
}

/// Rows of `p` values of one or two i32 terms (source, multipliers), one
/// per channel of `bias` (`q` gives the shift, rounding and clamp; a
/// channel whose multipliers pass 32 bits is summed exactly in i64), in
/// one call compiled with AVX2 where the CPU has it: the per-row set-up of
/// [`requant_row_body`] is inlined rather than a call and a feature check
/// per channel (ToyNet's 16-bit head: 512 rows of 64; MobileNetV2's
/// pre-pooling head: 1280 rows of 16).
fn requant_rows(terms: &[(&[i32], &[i64])], bias: &[i64], p: usize, q: &RowScale, out: &mut [i32]) {
    #[inline(always)]
    fn body(terms: &[(&[i32], &[i64])], bias: &[i64], p: usize, q: &RowScale, out: &mut [i32]) {
        let [(a, ma), rest @ ..] = terms else {
            return;
        };
        for (ch, (o, &b)) in out.chunks_exact_mut(p).zip(bias).enumerate() {
            let row = ch * p..(ch + 1) * p;
            let (src2, m2) = match rest {
                [(y, my)] => (&y[row.clone()], my[ch]),
                _ => (&[][..], 0),
            };
            let src = &a[row];
            match (i32::try_from(ma[ch]), i32::try_from(m2)) {
                (Ok(m), Ok(m2)) => requant_row_body(src, src2, &RowScale { m, m2, b, ..*q }, o),
                _ => {
                    for (i, o) in o.iter_mut().enumerate() {
                        let y = src2.get(i).map_or(0, |&y| y as i64 * m2);
                        let s = src[i] as i64 * ma[ch] + y + b;
                        *o = shift_round(s, q.shift, q.div).clamp(q.lo, q.hi) as i32;
                    }
                }
            }
        }
    }
    // AVX-512: i64 lanes multiply with `vpmullq`, which AVX2 lacks.
    super::isa::vectorised!(body(
        terms: &[(&[i32], &[i64])],
        bias: &[i64],
        p: usize,
        q: &RowScale,
        out: &mut [i32],
    ))
}

/// Rows shorter than this take one exact scalar loop over all channels.
const SMALL_ROWS: usize = 8;

/// Runs a requantization layer on the workspace's buffers.
pub(super) fn run_requant(plan: &IntPlan, r: &Requant, ws: &mut Workspace) {
    let mut out = match std::mem::replace(&mut ws.bufs[r.output], Buf::I32(Vec::new())) {
        Buf::I32(v) => v,
        Buf::I64(v) => v.into_iter().map(|x| x as i32).collect(),
    };
    let c = r.bias.len();
    let p = plan.tensors[r.output].len() / c.max(1);
    let srcs: Vec<&Buf> = r.terms.iter().map(|t| &ws.bufs[t.src]).collect();
    let (shift, div, lo, hi) = (r.shift, r.div, r.lo, r.hi);
    if r.wide {
        for ch in 0..c {
            for i in 0..p {
                let idx = ch * p + i;
                let mut s = r.bias[ch] as i128;
                for (t, src) in r.terms.iter().zip(&srcs) {
                    s += src.get(idx) as i128 * t.mult[ch] as i128;
                }
                out[idx] = shift_round_wide(s, shift, div).clamp(lo, hi) as i32;
            }
        }
    } else if p < SMALL_ROWS {
        // Rows of a few values (after global pooling: one per channel): the
        // exact i64 sum per value, without a vector loop's set-up per row.
        for ch in 0..c {
            for i in 0..p {
                let idx = ch * p + i;
                let mut s = r.bias[ch];
                for (t, src) in r.terms.iter().zip(&srcs) {
                    s += src.get(idx) * t.mult[ch];
                }
                out[idx] = shift_round(s, shift, div).clamp(lo, hi) as i32;
            }
        }
    } else if let Some(terms) = i32_terms(r, &srcs, c * p) {
        let q = RowScale {
            m: 0,
            m2: 0,
            b: 0,
            shift,
            div,
            lo,
            hi,
        };
        requant_rows(&terms, &r.bias, p, &q, &mut out);
    } else if let ([t0], [src]) = (r.terms.as_slice(), srcs.as_slice()) {
        // One term of i64 sums (a float conv's, stored wide since its input
        // has no integer bound): a channel whose values and multiplier fit
        // in 32 bits (the usual case) takes the 32-bit path.
        let mut row = Vec::new();
        for ch in 0..c {
            let o = &mut out[ch * p..(ch + 1) * p];
            let (m, b) = (t0.mult[ch], r.bias[ch]);
            let s32: Option<&[i32]> = match src {
                Buf::I32(v) => Some(&v[ch * p..(ch + 1) * p]),
                Buf::I64(v) => {
                    let s = &v[ch * p..(ch + 1) * p];
                    s.iter().all(|&x| i32::try_from(x).is_ok()).then(|| {
                        row.clear();
                        row.extend(s.iter().map(|&x| x as i32));
                        row.as_slice()
                    })
                }
            };
            match (i32::try_from(m), s32) {
                (Ok(m), Some(s)) => {
                    let q = RowScale {
                        m,
                        m2: 0,
                        b,
                        shift,
                        div,
                        lo,
                        hi,
                    };
                    requant_row(s, &[], &q, o)
                }
                _ => {
                    for (i, o) in o.iter_mut().enumerate() {
                        let x = src.get(ch * p + i);
                        *o = shift_round(x * m + b, shift, div).clamp(lo, hi) as i32;
                    }
                }
            }
        }
    } else {
        // Any number of terms, 64-bit sources or multipliers: each channel's
        // sums built one term at a time in an i64 row.
        let mut acc = vec![0i64; p];
        for ch in 0..c {
            acc.fill(r.bias[ch]);
            for (t, src) in r.terms.iter().zip(&srcs) {
                let (m, row) = (t.mult[ch], ch * p..(ch + 1) * p);
                match src {
                    Buf::I32(v) => acc
                        .iter_mut()
                        .zip(&v[row])
                        .for_each(|(a, &x)| *a += x as i64 * m),
                    Buf::I64(v) => acc.iter_mut().zip(&v[row]).for_each(|(a, &x)| *a += x * m),
                }
            }
            for (o, &s) in out[ch * p..(ch + 1) * p].iter_mut().zip(&acc) {
                *o = shift_round(s, shift, div).clamp(lo, hi) as i32;
            }
        }
    }
    ws.bufs[r.output] = Buf::I32(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requantization_rows_match_shift_round_in_both_lane_widths() {
        // Small values (i32 lanes) and values whose sums pass 2^31 (i64).
        for (scale, m, m2, b) in [
            (100i64, 1_000, -700, 12_345),
            (1 << 20, 3_000, 2_000, -(1 << 20)),
            (1 << 30, i32::MAX, i32::MIN + 1, i64::from(i32::MAX)),
        ] {
            let src: Vec<i32> = (0..37i64)
                .map(|i| (((i * 7919) % 201 - 100) * scale / 100) as i32)
                .collect();
            let src2: Vec<i32> = (0..37i64)
                .map(|i| (((i * 104729) % 199 - 99) * scale / 99) as i32)
                .collect();
            for div in [Div::Trunc, Div::Floor, Div::Nearest] {
                for (shift, (lo, hi)) in [0, 1, 7, 16, 30, 40, 62].into_iter().flat_map(|sh| {
                    [(-(1i64 << 40), 1i64 << 40), (0, 8_388_607), (-128, 127)].map(|c| (sh, c))
                }) {
                    let q = RowScale {
                        m,
                        m2,
                        b,
                        shift,
                        div,
                        lo,
                        hi,
                    };
                    for two in [false, true] {
                        let s2: &[i32] = if two { &src2 } else { &[] };
                        let mut out = vec![0; src.len()];
                        requant_row(&src, s2, &q, &mut out);
                        for (i, &o) in out.iter().enumerate() {
                            let y = if two { src2[i] as i64 * m2 as i64 } else { 0 };
                            let s = src[i] as i64 * m as i64 + y + b;
                            let want = shift_round(s, shift, div)
                                .clamp(lo.max(i32::MIN as i64), hi.min(i32::MAX as i64));
                            assert_eq!(
                                o as i64, want,
                                "{div:?} shift {shift} m {m} two {two} [{lo}, {hi}]"
                            );
                        }
                    }
                }
            }
        }
    }
}
