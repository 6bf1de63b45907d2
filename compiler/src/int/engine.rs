//! The integer engine: runs an [`IntPlan`] on images, integers throughout.
//!
//! Input: a plan and float images (`[C, H, W]`, normalised as for training).
//! Output: per image the logits (dequantized once at the end) and the
//! integer accumulator they come from; per conv layer the largest
//! accumulator reached and, when an accumulator width is simulated, how
//! many values overflowed it.
//!
//! Invariants: activations are i32, accumulators i32 where the plan proves
//! 31 bits enough and i64 otherwise, requantization products i64 (i128
//! where the plan says they may pass 2^63; i32 where the row's own values
//! bound every sum below 2^31); no float arithmetic except where the plan
//! reads the float input (the first conv's float sum, rounded as the plan's
//! mode says, or a `QuantizeInput`) and the final dequantization.
//!
//! Kernels (x86-64 with AVX2, chosen at run time; every other case runs the
//! plain Rust loops, which are the reference the tests compare against):
//! - ungrouped k x k convs whose output rows are multiples of 8 wide, any
//!   stride: `direct_kernel` over a zero-padded, phase-split copy of the
//!   input as i16 channel pairs (`vpmaddwd`, 8 output channels x 8
//!   positions per pass, weights from `direct_weights`);
//! - 1x1 and other grouped/im2col convs: `madd_kernel` over an operand
//!   packed per block of 8 positions (`packed_len`), weights laid out once
//!   by `madd_weights`;
//! - depthwise convs: `depthwise_avx2_kernel` (`vpmulld`, all taps of 8
//!   outputs in one register) over a `Phased` copy of the channel;
//! - the float first conv: `gemm_f64` (no FMA, so bit for bit the plain
//!   loop and the C reference);
//! - requantization: one vectorised loop per rounding mode, in i32 or i64
//!   lanes (`requant_row_body`).
//!
//! The 16-bit kernels run only where the plan's bit-widths put operands in
//! i16 (and not both at -2^15).

// Per-channel loops index several parallel arrays at once.
#![allow(clippy::needless_range_loop)]

use super::fixed::{div_round, shift_round, shift_round_wide, Div, Rounding};
use super::plan::{
    ConvInput, ConvLayer, IntPlan, Layer, Pool, PoolKind, QuantizeInput, Requant, TensorId,
};
use super::IntError;
use serde::Serialize;

/// What happens to an accumulator that passes the simulated width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowMode {
    Saturate,
    Wrap,
}

/// Hardware simulation settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SimOptions {
    /// Accumulator width in bits (sign included); `None`: unlimited.
    pub acc_bits: Option<u32>,
    pub overflow: OverflowMode,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            acc_bits: None,
            overflow: OverflowMode::Saturate,
        }
    }
}

/// Accumulator statistics of one conv/linear layer.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AccStats {
    pub max_abs: i64,
    pub overflows: u64,
    pub values: u64,
}

/// One image's result.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageOutput {
    pub logits: Vec<f32>,
    /// The integers the logits are computed from (the first output term).
    pub acc: Vec<i64>,
}

/// An integer tensor at run time.
#[derive(Clone, Debug)]
pub enum Buf {
    I32(Vec<i32>),
    I64(Vec<i64>),
}

impl Buf {
    pub fn to_i64(&self) -> Vec<i64> {
        match self {
            Buf::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Buf::I64(v) => v.clone(),
        }
    }
    #[inline(always)]
    fn get(&self, i: usize) -> i64 {
        match self {
            Buf::I32(v) => v[i] as i64,
            Buf::I64(v) => v[i],
        }
    }
}

/// Scratch memory of one thread: a buffer per plan tensor and im2col space.
pub struct Workspace {
    bufs: Vec<Buf>,
    col32: Vec<i32>,
    col64: Vec<i64>,
    packed: Vec<i16>,
    packed2: Vec<i16>,
    rows: Vec<i16>,
    colf: Vec<f64>,
    outf: Vec<f64>,
    /// Per layer (index into `plan.layers`), conv layers only.
    pub stats: Vec<AccStats>,
}

impl Workspace {
    pub fn new(plan: &IntPlan) -> Workspace {
        let bufs = plan
            .tensors
            .iter()
            .map(|t| {
                if t.wide {
                    Buf::I64(vec![0; t.len()])
                } else {
                    Buf::I32(vec![0; t.len()])
                }
            })
            .collect();
        Workspace {
            bufs,
            col32: Vec::new(),
            col64: Vec::new(),
            packed: Vec::new(),
            packed2: Vec::new(),
            rows: Vec::new(),
            colf: Vec::new(),
            outf: Vec::new(),
            stats: vec![AccStats::default(); plan.layers.len()],
        }
    }

    /// A tensor's values after the last [`run_image`].
    pub fn tensor(&self, t: TensorId) -> Option<&Buf> {
        self.bufs.get(t)
    }
}

trait Num:
    Copy + Default + PartialEq + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
    /// A depthwise conv over a channel laid out by [`depthwise_body`]:
    /// `out[oy][ox] = sum w[ky][kx] * x[oy*s + ky][ox*s + kx]` (see
    /// [`Phased`]). i32 takes an AVX2 kernel where the CPU has one.
    fn depthwise_phased(d: &Phased<Self>, w: &[Self], k: usize, out: &mut [Self], ow: usize) {
        depthwise_from(d, w, k, out, ow, 0);
    }
}
impl Num for i32 {
    fn depthwise_phased(d: &Phased<i32>, w: &[i32], k: usize, out: &mut [i32], ow: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            if d.holds(k, out.len() / ow.max(1), ow)
                && w.len() >= k * k
                && std::arch::is_x86_feature_detected!("avx2")
            {
                // SAFETY: the CPU has AVX2 and the shapes are the kernel's
                // (both checked just above; see the bounds in the kernel).
                let done = unsafe { depthwise_avx2_kernel(d, w, k, out, ow) };
                depthwise_from(d, w, k, out, ow, done);
                return;
            }
        }
        depthwise_from(d, w, k, out, ow, 0);
    }
}
impl Num for i64 {}
impl Num for f64 {}

/// A zero-bordered channel split by column phase for stride `s`: the value
/// at padded row `r`, column `x` is `v[((x % s) * rows + r) * cols + x / s]`,
/// so an output row's taps at one `(ky, kx)` are consecutive values.
struct Phased<'a, T> {
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
    fn holds(&self, k: usize, oh: usize, ow: usize) -> bool {
        self.s >= 1
            && k >= 1
            && (k - 1) / self.s + ow <= self.cols
            && (oh.max(1) - 1) * self.s + k <= self.rows
            && self.v.len() >= self.s * self.rows * self.cols
    }
}

/// [`Num::depthwise_phased`] for the output columns `from..ow` of every row.
fn depthwise_from<T: Num>(d: &Phased<T>, w: &[T], k: usize, out: &mut [T], ow: usize, from: usize) {
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
/// each row it computed. Bounds: [`Phased::holds`] was checked, so for
/// `ox + 8 <= ow` (or 4) every tap's vector is inside its phase row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn depthwise_avx2_kernel(
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
         $oy:expr, $ox:expr) => {{
            let base = d.v.as_ptr().add($oy * d.s * d.cols + $ox);
            let mut acc = $zero();
            for (&off, &wt) in offs[..taps].iter().zip(&w[..taps]) {
                let x = $load(base.add(off) as *const $v);
                acc = $add(acc, $mul(x, $set1(wt)));
            }
            $store(out.as_mut_ptr().add($oy * ow + $ox) as *mut $v, acc);
        }};
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

/// `out[m x p] = w[m x k] * col[k x p]`, four output rows per pass over a
/// column row so each input value is loaded once for four products.
#[inline(always)]
fn gemm_body<T: Num>(w: &[T], m: usize, k: usize, col: &[T], p: usize, out: &mut [T]) {
    let zero = T::default();
    let mut o = 0;
    while o + 4 <= m {
        let (a0, rest) = out[o * p..(o + 4) * p].split_at_mut(p);
        let (a1, rest) = rest.split_at_mut(p);
        let (a2, a3) = rest.split_at_mut(p);
        a0.fill(zero);
        a1.fill(zero);
        a2.fill(zero);
        a3.fill(zero);
        for kk in 0..k {
            let (w0, w1, w2, w3) = (
                w[o * k + kk],
                w[(o + 1) * k + kk],
                w[(o + 2) * k + kk],
                w[(o + 3) * k + kk],
            );
            let row = &col[kk * p..(kk + 1) * p];
            for i in 0..p {
                let x = row[i];
                a0[i] = a0[i] + w0 * x;
                a1[i] = a1[i] + w1 * x;
                a2[i] = a2[i] + w2 * x;
                a3[i] = a3[i] + w3 * x;
            }
        }
        o += 4;
    }
    while o < m {
        let acc = &mut out[o * p..(o + 1) * p];
        acc.fill(zero);
        for kk in 0..k {
            let wv = w[o * k + kk];
            if wv == zero {
                continue;
            }
            for (a, &x) in acc.iter_mut().zip(&col[kk * p..(kk + 1) * p]) {
                *a = *a + wv * x;
            }
        }
        o += 1;
    }
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

macro_rules! dispatch {
    ($name:ident, $avx:ident, $body:ident, ($($arg:ident : $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx<T: Num>($($arg: $ty),*) {
            $body($($arg),*)
        }
        #[allow(clippy::too_many_arguments)]
        fn $name<T: Num>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked just above); the
                    // function is safe Rust compiled with AVX2 enabled.
                    unsafe { $avx($($arg),*) };
                    return;
                }
            }
            $body($($arg),*)
        }
    };
}

dispatch!(gemm, gemm_avx2, gemm_body, (w: &[T], m: usize, k: usize, col: &[T], p: usize, out: &mut [T]));
dispatch!(
    depthwise,
    depthwise_avx2,
    depthwise_body,
    (input: &[T], ih: usize, iw: usize, w: &[T], k: usize, stride: usize, pad: usize, out: &mut [T], oh: usize, ow: usize, padded: &mut Vec<T>)
);

/// [`gemm`] of a float conv (f64), in an AVX2 kernel where the CPU has
/// one: the same sums in the same order (`0 + w0 x0 + w1 x1 + ...`, each
/// product rounded, then each addition: no fused multiply-add), so the
/// results are bit for bit [`gemm`]'s and the C reference's.
fn gemm_f64(w: &[f64], m: usize, k: usize, col: &[f64], p: usize, out: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && w.len() >= m * k
            && col.len() >= k * p
            && out.len() >= m * p
        {
            // SAFETY: AVX2 is present and the slices hold the shapes
            // (checked just above).
            unsafe { gemm_f64_avx2(w, m, k, col, p, out) };
            return;
        }
    }
    gemm(w, m, k, col, p, out)
}

/// Four output rows x eight positions per pass (eight accumulators of four
/// f64); the last positions (under eight) in scalar code, same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemm_f64_avx2(w: &[f64], m: usize, k: usize, col: &[f64], p: usize, out: &mut [f64]) {
    use std::arch::x86_64::*;
    const R: usize = 4;
    let p8 = p / 8 * 8;
    for o in (0..m).step_by(R) {
        let rows = (m - o).min(R);
        // Rows past `m` repeat the last one (computed, not stored).
        let wr: [*const f64; R] =
            std::array::from_fn(|r| w.as_ptr().add((o + r.min(rows - 1)) * k));
        for i in (0..p8).step_by(8) {
            let mut acc = [[_mm256_setzero_pd(); 2]; R];
            let mut x = col.as_ptr().add(i);
            for kk in 0..k {
                let (x0, x1) = (_mm256_loadu_pd(x), _mm256_loadu_pd(x.add(4)));
                for (r, a) in acc.iter_mut().enumerate() {
                    let wv = _mm256_set1_pd(*wr[r].add(kk));
                    a[0] = _mm256_add_pd(a[0], _mm256_mul_pd(x0, wv));
                    a[1] = _mm256_add_pd(a[1], _mm256_mul_pd(x1, wv));
                }
                x = x.add(p);
            }
            for (r, a) in acc.iter().enumerate().take(rows) {
                let dst = out.as_mut_ptr().add((o + r) * p + i);
                _mm256_storeu_pd(dst, a[0]);
                _mm256_storeu_pd(dst.add(4), a[1]);
            }
        }
        for r in 0..rows {
            for i in p8..p {
                let mut s = 0.0;
                for kk in 0..k {
                    s += *wr[r].add(kk) * col[kk * p + i];
                }
                out[(o + r) * p + i] = s;
            }
        }
    }
}

/// [`gemm`] on operands that fit in i16, with AVX2's multiply-add of i16
/// pairs (`vpmaddwd`, 16 products per instruction): `col` is packed as
/// pairs of rows ([`packed_len`]), eight output rows share
/// each load. Returns false (nothing done) without AVX2.
fn gemm_madd(
    wp: &[i32],
    m: usize,
    k: usize,
    col: &[i32],
    p: usize,
    out: &mut [i32],
    packed: &mut Vec<i16>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let shapes = wp.len() == madd_group_len(m, k) && col.len() >= k * p && out.len() >= m * p;
        if shapes && std::arch::is_x86_feature_detected!("avx2") {
            let kp = k.div_ceil(2);
            packed.clear();
            packed.resize(packed_len(kp, p), 0);
            // SAFETY: AVX2 is present (checked above).
            unsafe { pack_pairs(col, k, p, packed) };
            // SAFETY: AVX2 is present (checked above); every index stays
            // inside the slices (see the bounds in `madd_kernel`).
            unsafe { madd_kernel(wp, m, k, packed, p, out) };
            return true;
        }
    }
    let _ = (wp, m, k, col, p, out, packed);
    false
}

/// The operand layout of [`madd_kernel`]: per block of eight positions, the
/// `kp` pairs of rows of k one after the other, each 16 i16 (position `i`
/// of the block at `2i`, row `2j` low, `2j + 1` high), so the kernel's loads
/// run through memory instead of striding `2p` (4 KiB on a 32 x 32 map).
fn packed_len(kp: usize, p: usize) -> usize {
    p.div_ceil(8) * kp * 16
}

/// Positions `from..` (a multiple of 8) of rows `a` and `b` (`b` missing:
/// 0) of pair `j`, as i16, interleaved into their place in the blocks of the
/// [`packed_len`] layout; `packed` was zeroed, so the positions past `p` of
/// the last block stay 0. (The scalar tail of [`pack_pairs`] and
/// [`pack_group`], which do whole blocks in AVX2 registers.)
fn pairs_into_blocks<T: Copy>(
    a: &[T],
    b: Option<&[T]>,
    to16: impl Fn(T) -> i16,
    from: usize,
    j: usize,
    kp: usize,
    packed: &mut [i16],
) {
    for i in from..a.len() {
        let at = ((i / 8) * kp + j) * 16 + 2 * (i % 8);
        packed[at] = to16(a[i]);
        packed[at + 1] = b.map_or(0, |b| to16(b[i]));
    }
}

/// Size of one group's weights in the [`madd_weights`] layout.
fn madd_group_len(m: usize, k: usize) -> usize {
    m.div_ceil(MADD_ROWS) * MADD_ROWS * k.div_ceil(2)
}

/// The weights of `groups` groups of `m` output rows of `k` as [`madd_kernel`]
/// reads them: per group, per block of eight output rows, `[kp][8]` i16
/// pairs in i32 lanes (low half `w[2j]`, high half `w[2j + 1]`; a missing
/// last odd weight and rows past `m` are 0).
fn madd_weights(w: &[i32], groups: usize, m: usize, k: usize) -> Vec<i32> {
    let kp = k.div_ceil(2);
    let mut v = Vec::with_capacity(groups * madd_group_len(m, k));
    for g in 0..groups {
        let wg = &w[g * m * k..(g + 1) * m * k];
        let at = |o: usize, i: usize| -> u32 {
            if o < m && i < k {
                wg[o * k + i] as i16 as u16 as u32
            } else {
                0
            }
        };
        for b in 0..m.div_ceil(MADD_ROWS) {
            for j in 0..kp {
                for r in 0..MADD_ROWS {
                    let o = b * MADD_ROWS + r;
                    v.push((at(o, 2 * j) | (at(o, 2 * j + 1) << 16)) as i32);
                }
            }
        }
    }
    v
}

/// Eight positions of rows `a` and `b` (`None`: 0) as interleaved i16
/// pairs: the low halves of `a` or'ed with `b` shifted up 16 bits, which is
/// the `as i16` of both. Reads `a[0..8]` and `b[0..8]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn pair8(a: *const i32, b: Option<*const i32>) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let lo = _mm256_and_si256(_mm256_loadu_si256(a as _), _mm256_set1_epi32(0xffff));
    match b {
        Some(b) => _mm256_or_si256(lo, _mm256_slli_epi32(_mm256_loadu_si256(b as _), 16)),
        None => lo,
    }
}

/// `col` (`k` rows of `p` i32) as i16 pairs of rows in the [`packed_len`]
/// layout (a missing last odd row is 0), whole blocks by [`pair8`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_pairs(col: &[i32], k: usize, p: usize, packed: &mut [i16]) {
    use std::arch::x86_64::*;
    let kp = k.div_ceil(2);
    let full = p / 8;
    assert!(col.len() >= k * p && packed.len() >= packed_len(kp, p));
    for j in 0..kp {
        let a = &col[2 * j * p..(2 * j + 1) * p];
        let b = (2 * j + 1 < k).then(|| &col[(2 * j + 1) * p..(2 * j + 2) * p]);
        for blk in 0..full {
            let v = pair8(a.as_ptr().add(blk * 8), b.map(|b| b.as_ptr().add(blk * 8)));
            _mm256_storeu_si256(packed.as_mut_ptr().add((blk * kp + j) * 16) as _, v);
        }
        pairs_into_blocks(a, b, |x| x as i16, full * 8, j, kp, packed);
    }
}

/// `out[m x p] = w[m x k] * col[k x p]` with `vpmaddwd`: `wp` is one
/// group's weights in the [`madd_weights`] layout, `packed` the operand in
/// the [`packed_len`] layout; eight output rows x eight positions per pass.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn madd_kernel(wp: &[i32], m: usize, k: usize, packed: &[i16], p: usize, out: &mut [i32]) {
    use std::arch::x86_64::*;
    let kp = k.div_ceil(2);
    for o in (0..m).step_by(MADD_ROWS) {
        let rows = (m - o).min(MADD_ROWS);
        // This block of eight rows: `[kp][8]`, broadcasts at fixed offsets.
        let wb = &wp[o * kp..(o + MADD_ROWS) * kp];
        for b in 0..p.div_ceil(8) {
            let mut acc = [_mm256_setzero_si256(); MADD_ROWS];
            // Block b: kp pairs of rows x 8 positions, 16 i16 each.
            let mut x = packed.as_ptr().add(b * kp * 16);
            let mut w = wb.as_ptr();
            for _ in 0..kp {
                let xv = _mm256_loadu_si256(x as *const __m256i);
                for (r, a) in acc.iter_mut().enumerate() {
                    let wr = _mm256_set1_epi32(*w.add(r));
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(xv, wr));
                }
                x = x.add(16);
                w = w.add(MADD_ROWS);
            }
            let i = b * 8;
            if i + 8 <= p {
                let dst = out.as_mut_ptr().add(o * p + i);
                for (r, a) in acc.iter().enumerate().take(rows) {
                    _mm256_storeu_si256(dst.add(r * p) as *mut __m256i, *a);
                }
            } else {
                let mut last = [0i32; 8];
                for (r, a) in acc.iter().enumerate().take(rows) {
                    _mm256_storeu_si256(last.as_mut_ptr() as *mut __m256i, *a);
                    out[(o + r) * p + i..(o + r + 1) * p].copy_from_slice(&last[..p - i]);
                }
            }
        }
    }
}

/// im2col of channels `c0..c0+cn` of a `[C, ih, iw]` image:
/// rows `(c, ky, kx)`, columns output positions.
#[allow(clippy::too_many_arguments)]
fn im2col<T: Num>(
    input: &[T],
    ih: usize,
    iw: usize,
    c0: usize,
    cn: usize,
    l: &ConvLayer,
    col: &mut Vec<T>,
) {
    let k = l.kernel;
    let p = l.out_hw[0] * l.out_hw[1];
    // Every element is written below: no need to clear first.
    col.resize(cn * k * k * p, T::default());
    for c in 0..cn {
        let plane = &input[(c0 + c) * ih * iw..(c0 + c + 1) * ih * iw];
        for ky in 0..k {
            for kx in 0..k {
                let r = (c * k + ky) * k + kx;
                im2col_row(
                    plane,
                    ih,
                    iw,
                    ky,
                    kx,
                    l,
                    &mut col[r * p..(r + 1) * p],
                    |x| x,
                );
            }
        }
    }
}

/// One im2col row, `(c, ky, kx)` of a `[C, ih, iw]` image, into `dst`
/// (one value per output position), converted with `conv`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn im2col_row<S: Copy, D: Copy + Default>(
    plane: &[S],
    ih: usize,
    iw: usize,
    ky: usize,
    kx: usize,
    l: &ConvLayer,
    dst: &mut [D],
    conv: impl Fn(S) -> D,
) {
    let (s, pad) = (l.stride, l.padding);
    let [oh, ow] = l.out_hw;
    let zero = D::default();
    let lo = pad.saturating_sub(kx).div_ceil(s).min(ow);
    let hi = (iw + pad).saturating_sub(kx).div_ceil(s).clamp(lo, ow);
    for oy in 0..oh {
        let d = &mut dst[oy * ow..(oy + 1) * ow];
        let iy = (oy * s + ky) as isize - pad as isize;
        if iy < 0 || iy >= ih as isize {
            d.fill(zero);
            continue;
        }
        let irow = &plane[iy as usize * iw..(iy as usize + 1) * iw];
        d[..lo].fill(zero);
        d[hi..].fill(zero);
        if s == 1 {
            let start = lo + kx - pad;
            for (o, &x) in d[lo..hi].iter_mut().zip(&irow[start..start + (hi - lo)]) {
                *o = conv(x);
            }
        } else {
            for (ox, o) in d.iter_mut().enumerate().take(hi).skip(lo) {
                *o = conv(irow[ox * s + kx - pad]);
            }
        }
    }
}

/// A grouped (not depthwise) conv with im2col straight into interleaved
/// i16 row pairs and the AVX2 multiply-add kernel: no i32 column matrix.
/// Returns false (nothing done) without AVX2.
#[allow(clippy::too_many_arguments)]
fn conv_im2col_madd(
    l: &ConvLayer,
    input: &[i32],
    pairs: &[i32],
    packed: &mut Vec<i16>,
    rows: &mut Vec<i16>,
    out: &mut [i32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return false;
        }
        let [oh, ow] = l.out_hw;
        let (p, k) = (oh * ow, l.kernel);
        let (cin_g, cout_g) = (l.cin / l.groups, l.cout / l.groups);
        let kk = cin_g * k * k;
        let kp = kk.div_ceil(2);
        let per_group = madd_group_len(cout_g, kk);
        if pairs.len() != l.groups * per_group {
            return false;
        }
        packed.clear();
        packed.resize(packed_len(kp, p), 0);
        rows.resize(2 * p, 0);
        for g in 0..l.groups {
            // SAFETY: AVX2 is present (checked above).
            unsafe { pack_group(l, input, g, kk, kp, rows, packed) };
            // SAFETY: AVX2 is present; `packed` holds kp rows of 2p values.
            unsafe {
                madd_kernel(
                    &pairs[g * per_group..(g + 1) * per_group],
                    cout_g,
                    kk,
                    packed,
                    p,
                    &mut out[g * cout_g * p..(g + 1) * cout_g * p],
                )
            };
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (l, input, pairs, packed, rows, out);
        false
    }
}

/// Convs the direct kernel takes: ungrouped, kernel over 1, and output rows
/// a multiple of 8 wide (its vectors run along a row; narrower maps go
/// through im2col, whose vectors run across rows). Any stride: a strided
/// conv's input is split into column phases.
fn direct_conv(l: &ConvLayer) -> bool {
    l.groups == 1 && l.stride >= 1 && l.kernel > 1 && l.out_hw[1] % 8 == 0
}

/// Output channels per pass of [`direct_kernel`]: eight accumulators, the
/// input vector and a broadcast stay in the sixteen AVX2 registers.
const MADD_ROWS: usize = 8;

/// The weights of a [`direct_conv`] laid out for [`direct_kernel`]:
/// `[cout / 8][cin / 2][k * k][8]`, each entry the pair of input channels
/// `(2c, 2c + 1)` at one tap as i16 halves of an i32 (low half the even
/// channel); channels past `cin` and rows past `cout` are zero. That is
/// [`madd_weights`] of each row reordered to `[cin / 2][k * k][2]`.
fn direct_weights(l: &ConvLayer) -> Vec<i32> {
    let (k2, cp) = (l.kernel * l.kernel, l.cin.div_ceil(2));
    let mut rows = vec![0i32; l.cout * cp * k2 * 2];
    for (o, row) in rows.chunks_exact_mut(cp * k2 * 2).enumerate() {
        for c in 0..l.cin {
            for t in 0..k2 {
                row[((c / 2) * k2 + t) * 2 + c % 2] = l.weights[(o * l.cin + c) * k2 + t];
            }
        }
    }
    madd_weights(&rows, 1, l.cout, cp * k2 * 2)
}

/// A k x k conv without im2col: the input is laid out once as zero-padded
/// planes of interleaved channel pairs (a strided conv's columns split by
/// phase), and each tap reads a shifted row of it (`vpmaddwd` on channel
/// pairs, eight output channels per load). Returns false (nothing done)
/// without AVX2.
fn conv_direct_madd(
    l: &ConvLayer,
    input: &[i32],
    dpairs: &[i32],
    padded: &mut Vec<i16>,
    out: &mut [i32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let (k, k2, cp) = (l.kernel, l.kernel * l.kernel, l.cin.div_ceil(2));
        let blocks = l.cout.div_ceil(MADD_ROWS);
        if !std::arch::is_x86_feature_detected!("avx2")
            || dpairs.len() != blocks * cp * k2 * MADD_ROWS
        {
            return false;
        }
        // Layout: `[cin/2][s][ph][cols]` channel pairs, padded column
        // `col * s + phase` of row `r` at `((c * s + phase) * ph + r) * cols + col`.
        let [ih, iw] = l.in_hw;
        let (s, pad) = (l.stride, l.padding);
        let (ph, cols) = (ih + 2 * pad, (iw + 2 * pad).div_ceil(s));
        padded.clear();
        padded.resize(cp * s * ph * cols * 2, 0);
        let plane = |c: usize| &input[c * ih * iw..(c + 1) * ih * iw];
        for c in 0..cp {
            let (a, b) = (plane(2 * c), (2 * c + 1 < l.cin).then(|| plane(2 * c + 1)));
            for y in 0..ih {
                let row = y * iw..(y + 1) * iw;
                if s == 1 {
                    let at = 2 * ((c * ph + y + pad) * cols + pad);
                    // SAFETY: AVX2 is present (checked above).
                    unsafe {
                        pair_rows(
                            &a[row.clone()],
                            b.map(|b| &b[row]),
                            &mut padded[at..at + 2 * iw],
                        )
                    };
                    continue;
                }
                for phase in 0..s {
                    let at = 2 * ((c * s + phase) * ph + y + pad) * cols;
                    let dst = &mut padded[at..at + 2 * cols];
                    for (col, d) in dst.chunks_exact_mut(2).enumerate() {
                        if let Some(x) = (col * s + phase).checked_sub(pad).filter(|&x| x < iw) {
                            d[0] = a[row.start + x] as i16;
                            d[1] = b.map_or(0, |b| b[row.start + x] as i16);
                        }
                    }
                }
            }
        }
        // Where tap (c, ky, kx) reads, relative to an output position's
        // top-left corner, in i16 units.
        let mut taps = Vec::with_capacity(cp * k2);
        for c in 0..cp {
            for ky in 0..k {
                for kx in 0..k {
                    taps.push(2 * (((c * s + kx % s) * ph + ky) * cols + kx / s));
                }
            }
        }
        // SAFETY: AVX2 is present (checked above); every read stays inside
        // `padded` and every write inside `out` (see the bounds in the kernel).
        unsafe { direct_kernel(l, dpairs, padded, s * cols, &taps, out) };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (l, input, dpairs, padded, out);
        false
    }
}

/// `out[2i] = a[i]`, `out[2i + 1] = b[i]` (0 without `b`) as i16: eight
/// positions at a time by [`pair8`], the rest one by one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pair_rows(a: &[i32], b: Option<&[i32]>, out: &mut [i16]) {
    use std::arch::x86_64::*;
    let n = a
        .len()
        .min(out.len() / 2)
        .min(b.map_or(usize::MAX, <[i32]>::len));
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        let v = pair8(a.as_ptr().add(i), b.map(|b| b.as_ptr().add(i)));
        _mm256_storeu_si256(out.as_mut_ptr().add(2 * i) as _, v);
    }
    for i in full..n {
        out[2 * i] = a[i] as i16;
        out[2 * i + 1] = b.map_or(0, |b| b[i] as i16);
    }
}

/// Eight output channels x eight positions of one output row per pass:
/// one load of the shifted input row per (channel pair, tap), then one
/// broadcast weight pair, `vpmaddwd` and `vpaddd` per output channel.
/// Output row `y` starts `y * row_step` pairs into its phase plane
/// (`row_step = s * cols`). Bounds: `ow = (pw - k) / s + 1`, so for
/// `i + 8 <= ow` the furthest tap reads row `(oh - 1) * s + k - 1 < ph` and
/// column `(k - 1) / s + i + 7 < cols` of the last phase of the last pair.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn direct_kernel(
    l: &ConvLayer,
    dpairs: &[i32],
    padded: &[i16],
    row_step: usize,
    taps: &[usize],
    out: &mut [i32],
) {
    use std::arch::x86_64::*;
    let [oh, ow] = l.out_hw;
    let p = oh * ow;
    let n = taps.len();
    for b in 0..l.cout.div_ceil(MADD_ROWS) {
        let rows = (l.cout - b * MADD_ROWS).min(MADD_ROWS);
        let wb = dpairs.as_ptr().add(b * n * MADD_ROWS);
        for y in 0..oh {
            for i in (0..ow).step_by(8) {
                let base = padded.as_ptr().add(2 * (y * row_step + i));
                let mut acc = [_mm256_setzero_si256(); MADD_ROWS];
                let mut w = wb;
                for &off in taps {
                    let x = _mm256_loadu_si256(base.add(off) as *const __m256i);
                    for (r, a) in acc.iter_mut().enumerate() {
                        let wr = _mm256_set1_epi32(*w.add(r));
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(x, wr));
                    }
                    w = w.add(MADD_ROWS);
                }
                let dst = out.as_mut_ptr().add(b * MADD_ROWS * p + y * ow + i);
                for (r, a) in acc.iter().enumerate().take(rows) {
                    _mm256_storeu_si256(dst.add(r * p) as *mut __m256i, *a);
                }
            }
        }
    }
}

/// The im2col rows of group `g` as i16 pairs in the [`packed_len`] layout
/// (compiled with AVX2 so the row copies and conversions vectorise).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_group(
    l: &ConvLayer,
    input: &[i32],
    g: usize,
    kk: usize,
    kp: usize,
    rows: &mut [i16],
    packed: &mut [i16],
) {
    use std::arch::x86_64::*;
    let [ih, iw] = l.in_hw;
    let p = l.out_hw[0] * l.out_hw[1];
    let k = l.kernel;
    let cin_g = l.cin / l.groups;
    assert!(rows.len() >= 2 * p && packed.len() >= packed_len(kp, p));
    for j in 0..kp {
        let (a, b) = rows.split_at_mut(p);
        for (h, dst) in [a, b].into_iter().enumerate() {
            let r = 2 * j + h;
            if r >= kk {
                dst.fill(0);
                continue;
            }
            let (c, ky, kx) = (r / (k * k), r / k % k, r % k);
            let ch = g * cin_g + c;
            im2col_row(
                &input[ch * ih * iw..(ch + 1) * ih * iw],
                ih,
                iw,
                ky,
                kx,
                l,
                dst,
                |x| x as i16,
            );
        }
        let (a, b) = (&rows[..p], &rows[p..]);
        for blk in 0..p / 8 {
            // SAFETY: AVX2 is this function's own feature; blocks below p / 8
            // read inside the rows and write inside `packed` (packed_len).
            unsafe {
                let lo = _mm256_cvtepu16_epi32(_mm_loadu_si128(a.as_ptr().add(blk * 8) as _));
                let hi = _mm256_cvtepu16_epi32(_mm_loadu_si128(b.as_ptr().add(blk * 8) as _));
                let v = _mm256_or_si256(lo, _mm256_slli_epi32(hi, 16));
                _mm256_storeu_si256(packed.as_mut_ptr().add((blk * kp + j) * 16) as _, v);
            }
        }
        pairs_into_blocks(a, Some(b), |x| x, p / 8 * 8, j, kp, packed);
    }
}

/// One conv over typed buffers (the input already converted to `T`).
/// `mm(w, m, k, col, p, out)` does the matrix products of grouped and 1x1
/// convolutions ([`gemm`], or [`gemm_madd`] on 16-bit operands).
/// The first argument is the group.
type MatMul<'a, T> = &'a mut dyn FnMut(usize, &[T], usize, usize, &[T], usize, &mut [T]);

fn conv_typed<T: Num>(
    l: &ConvLayer,
    input: &[T],
    w: &[T],
    col: &mut Vec<T>,
    out: &mut [T],
    mm: MatMul<T>,
) {
    let [ih, iw] = l.in_hw;
    let [oh, ow] = l.out_hw;
    let p = oh * ow;
    let cin_g = l.cin / l.groups;
    let cout_g = l.cout / l.groups;
    let kk = cin_g * l.kernel * l.kernel;
    if l.groups == l.cin && l.groups == l.cout {
        let k2 = l.kernel * l.kernel;
        for c in 0..l.cout {
            depthwise(
                &input[c * ih * iw..(c + 1) * ih * iw],
                ih,
                iw,
                &w[c * k2..(c + 1) * k2],
                l.kernel,
                l.stride,
                l.padding,
                &mut out[c * p..(c + 1) * p],
                oh,
                ow,
                col,
            );
        }
        return;
    }
    for g in 0..l.groups {
        let wg = &w[g * cout_g * kk..(g + 1) * cout_g * kk];
        let og = &mut out[g * cout_g * p..(g + 1) * cout_g * p];
        if l.kernel == 1 && l.stride == 1 && l.padding == 0 {
            mm(
                g,
                wg,
                cout_g,
                kk,
                &input[g * cin_g * p..(g + 1) * cin_g * p],
                p,
                og,
            );
        } else {
            im2col(input, ih, iw, g * cin_g, cin_g, l, col);
            mm(g, wg, cout_g, kk, col, p, og);
        }
    }
}

/// Weights converted once per plan to every width the engine computes in.
pub struct Weights {
    /// Per ungrouped k x k conv of the direct kernel: [`direct_weights`], for
    /// [`conv_direct_madd`].
    dpairs: Vec<Vec<i32>>,
    /// Per conv layer, per group, per output row: the weights as i16 pairs
    /// in i32 lanes (low half `w[2j]`, high half `w[2j+1]`) for [`gemm_madd`].
    pairs: Vec<Vec<i32>>,
    w32: Vec<Vec<i32>>,
    w64: Vec<Vec<i64>>,
    wf: Vec<Vec<f64>>,
}

impl Weights {
    pub fn new(plan: &IntPlan) -> Weights {
        let mut w = Weights {
            dpairs: Vec::new(),
            pairs: Vec::new(),
            w32: Vec::new(),
            w64: Vec::new(),
            wf: Vec::new(),
        };
        for layer in &plan.layers {
            // Each width only where `run_conv` computes in it: f64 for a conv
            // of the float input, i64 for one whose sums are stored wide,
            // i32 otherwise.
            let (a, b, c) = match layer {
                Layer::Conv(l) if l.input == ConvInput::Float => (
                    Vec::new(),
                    Vec::new(),
                    l.weights.iter().map(|&x| x as f64).collect(),
                ),
                Layer::Conv(l) if plan.tensors.get(l.output).is_some_and(|t| t.wide) => (
                    Vec::new(),
                    l.weights.iter().map(|&x| x as i64).collect(),
                    Vec::new(),
                ),
                Layer::Conv(l) => (l.weights.clone(), Vec::new(), Vec::new()),
                _ => (Vec::new(), Vec::new(), Vec::new()),
            };
            w.dpairs.push(match layer {
                Layer::Conv(l) if direct_conv(l) => direct_weights(l),
                _ => Vec::new(),
            });
            w.pairs.push(match layer {
                Layer::Conv(l) if l.groups != l.cin || l.groups != l.cout || l.groups == 1 => {
                    madd_weights(&l.weights, l.groups, l.cout / l.groups, l.fan_in)
                }
                _ => Vec::new(),
            });
            w.w32.push(a);
            w.w64.push(b);
            w.wf.push(c);
        }
        w
    }
}

/// A float conv's sums, rounded by `round`, into an integer buffer (with
/// AVX2 where the CPU has it, so `f64::round` is inlined, not a libm call).
fn round_into(out: &mut Buf, sums: &[f64], round: impl Fn(f64) -> i64) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(out: &mut Buf, sums: &[f64], round: impl Fn(f64) -> i64) {
            round_into_body(out, sums, round)
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { avx2(out, sums, round) };
            return;
        }
    }
    round_into_body(out, sums, round)
}

#[inline(always)]
fn round_into_body(out: &mut Buf, sums: &[f64], round: impl Fn(f64) -> i64) {
    match out {
        Buf::I64(v) => v.iter_mut().zip(sums).for_each(|(a, &x)| *a = round(x)),
        Buf::I32(v) => v
            .iter_mut()
            .zip(sums)
            .for_each(|(a, &x)| *a = round(x) as i32),
    }
}

fn run_conv(
    plan: &IntPlan,
    li: usize,
    l: &ConvLayer,
    image: &[f32],
    weights: &Weights,
    ws: &mut Workspace,
    sim: &SimOptions,
) {
    let mut out = std::mem::replace(&mut ws.bufs[l.output], Buf::I32(Vec::new()));
    match (l.input, &mut out) {
        (ConvInput::Float, out) => {
            let input: Vec<f64> = image.iter().map(|&x| x as f64).collect();
            let mut col = std::mem::take(&mut ws.colf);
            let mut o = std::mem::take(&mut ws.outf);
            o.resize(plan.tensors[l.output].len(), 0.0);
            conv_typed(
                l,
                &input,
                &weights.wf[li],
                &mut col,
                &mut o,
                &mut |_, w, m, k, c, p, o| gemm_f64(w, m, k, c, p, o),
            );
            let scale = l.float_scale;
            match plan.options.rounding {
                // The seed: `F.conv2d(...).long()` (`as` truncates).
                Rounding::Trunc => round_into(out, &o, |x| x as i64),
                Rounding::Nearest | Rounding::Scaled => {
                    round_into(out, &o, |x| (x * scale).round() as i64)
                }
            }
            ws.colf = col;
            ws.outf = o;
        }
        (ConvInput::Tensor(t), Buf::I32(o)) => {
            let mut col = std::mem::take(&mut ws.col32);
            let mut packed = std::mem::take(&mut ws.packed);
            // 16-bit operands (and not both at -2^15, whose pair sum would
            // pass 2^31) go through the AVX2 multiply-add of i16 pairs. The
            // input's width is that of its actual range (`in_bits`): a
            // 16-bit unsigned or seed-pooled activation does not fit i16.
            let fits16 = l.in_bits <= 16 && l.w_bits <= 16 && (l.in_bits < 16 || l.w_bits < 16);
            let pairs = &weights.pairs[li];
            let mut packed2 = std::mem::take(&mut ws.packed2);
            let mut fast =
                |g: usize, w: &[i32], m: usize, k: usize, c: &[i32], p: usize, out: &mut [i32]| {
                    let per_group = madd_group_len(m, k);
                    let wp = pairs.get(g * per_group..(g + 1) * per_group).unwrap_or(&[]);
                    if !(fits16
                        && wp.len() == per_group
                        && gemm_madd(wp, m, k, c, p, out, &mut packed))
                    {
                        gemm(w, m, k, c, p, out)
                    }
                };
            let depthwise = l.groups == l.cin && l.groups == l.cout;
            let pointwise = l.kernel == 1 && l.stride == 1 && l.padding == 0;
            let mut rows = std::mem::take(&mut ws.rows);
            let done = match &ws.bufs[t] {
                Buf::I32(input) if fits16 && direct_conv(l) => {
                    conv_direct_madd(l, input, &weights.dpairs[li], &mut packed2, o)
                }
                Buf::I32(input) if fits16 && !depthwise && !pointwise => {
                    conv_im2col_madd(l, input, pairs, &mut packed2, &mut rows, o)
                }
                _ => false,
            };
            ws.rows = rows;
            match &ws.bufs[t] {
                _ if done => {}
                Buf::I32(input) => conv_typed(l, input, &weights.w32[li], &mut col, o, &mut fast),
                Buf::I64(input) => {
                    let input: Vec<i32> = input.iter().map(|&x| x as i32).collect();
                    conv_typed(l, &input, &weights.w32[li], &mut col, o, &mut fast)
                }
            }
            ws.col32 = col;
            ws.packed = packed;
            ws.packed2 = packed2;
        }
        (ConvInput::Tensor(t), Buf::I64(o)) => {
            let mut col = std::mem::take(&mut ws.col64);
            let input: Vec<i64> = ws.bufs[t].to_i64();
            conv_typed(
                l,
                &input,
                &weights.w64[li],
                &mut col,
                o,
                &mut |_, w, m, k, c, p, o| gemm(w, m, k, c, p, o),
            );
            ws.col64 = col;
        }
    }
    // Statistics and the simulated accumulator width.
    let st = &mut ws.stats[li];
    let (min, max) = match sim.acc_bits {
        Some(b) if b < 64 => (-(1i64 << (b - 1)), (1i64 << (b - 1)) - 1),
        _ => (i64::MIN, i64::MAX),
    };
    let fast = sim.acc_bits.is_none();
    let mut apply = |x: i64| -> i64 {
        st.max_abs = st.max_abs.max(x.saturating_abs());
        if x < min || x > max {
            st.overflows += 1;
            match sim.overflow {
                OverflowMode::Saturate => x.clamp(min, max),
                OverflowMode::Wrap => {
                    let b = 64 - sim.acc_bits.unwrap_or(64);
                    (x << b) >> b
                }
            }
        } else {
            x
        }
    };
    match &mut out {
        Buf::I32(v) if fast => {
            // No width to simulate: only the largest value (vectorised).
            st.values += v.len() as u64;
            let m = max_abs(v);
            st.max_abs = st.max_abs.max(m as i64);
        }
        Buf::I32(v) => {
            st.values += v.len() as u64;
            for x in v.iter_mut() {
                *x = apply(*x as i64) as i32;
            }
        }
        Buf::I64(v) if fast => {
            st.values += v.len() as u64;
            let m = v.iter().fold(0u64, |m, &x| m.max(x.unsigned_abs()));
            st.max_abs = st.max_abs.max(m.min(i64::MAX as u64) as i64);
        }
        Buf::I64(v) => {
            st.values += v.len() as u64;
            for x in v.iter_mut() {
                *x = apply(*x);
            }
        }
    }
    ws.bufs[l.output] = out;
}

/// Largest |x| (vectorised; AVX2 where the CPU has it).
fn max_abs(v: &[i32]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(v: &[i32]) -> u32 {
        abs_peak(v)
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { avx2(v) };
        }
    }
    abs_peak(v)
}

/// Largest |x|, inlined into its caller (so vectorised with its features).
#[inline(always)]
fn abs_peak(v: &[i32]) -> u32 {
    v.iter().fold(0u32, |m, x| m.max(x.unsigned_abs()))
}

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
struct RowScale {
    m: i32,
    m2: i32,
    b: i64,
    shift: u32,
    div: Div,
    lo: i64,
    hi: i64,
}

/// One channel of a requantization with one term (`src2` empty) or two (a
/// residual add): `out = clamp(div(src * m + src2 * m2 + b, 2^shift), lo, hi)`,
/// the multipliers in 32 bits (always so for formats of at most 32 bits).
/// Computed in i32 where `max|src| * |m| + max|src2| * |m2| + |b| + 2^shift`
/// stays below 2^31 (then no sum, and no rounding offset added to one, can
/// pass i32), else in i64 (sign-extended 32x32 products); one loop per
/// rounding so none branches inside.
#[inline(always)]
fn requant_row_body(src: &[i32], src2: &[i32], q: &RowScale, out: &mut [i32]) {
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
    } else {
        requant_lanes::<i64>(src, src2, q, out)
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn requant_row_avx2(src: &[i32], src2: &[i32], q: &RowScale, out: &mut [i32]) {
    requant_row_body(src, src2, q, out)
}

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

fn run_requant(plan: &IntPlan, r: &Requant, ws: &mut Workspace) {
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
    } else if let ([t0], [src]) = (r.terms.as_slice(), srcs.as_slice()) {
        // One term: a channel whose values and multiplier fit in 32 bits
        // takes the 32-bit path (a float conv's sums are stored wide, since
        // its input has no integer bound, but usually fit).
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
    } else if let ([t0, t1], [Buf::I32(a), Buf::I32(b2)]) = (r.terms.as_slice(), srcs.as_slice()) {
        for ch in 0..c {
            let o = &mut out[ch * p..(ch + 1) * p];
            let (sa, sb) = (&a[ch * p..(ch + 1) * p], &b2[ch * p..(ch + 1) * p]);
            match (i32::try_from(t0.mult[ch]), i32::try_from(t1.mult[ch])) {
                (Ok(m0), Ok(m1)) => {
                    let b = r.bias[ch];
                    requant_row(
                        sa,
                        sb,
                        &RowScale {
                            m: m0,
                            m2: m1,
                            b,
                            shift,
                            div,
                            lo,
                            hi,
                        },
                        o,
                    )
                }
                _ => {
                    for i in 0..p {
                        let s =
                            sa[i] as i64 * t0.mult[ch] + sb[i] as i64 * t1.mult[ch] + r.bias[ch];
                        o[i] = shift_round(s, shift, div).clamp(lo, hi) as i32;
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

fn run_pool(plan: &IntPlan, l: &Pool, ws: &mut Workspace) {
    let [c, ih, iw] = plan.tensors[l.input].shape;
    let [_, oh, ow] = plan.tensors[l.output].shape;
    let mut out = match std::mem::replace(&mut ws.bufs[l.output], Buf::I32(Vec::new())) {
        Buf::I32(v) => v,
        Buf::I64(v) => v.into_iter().map(|x| x as i32).collect(),
    };
    let src = &ws.bufs[l.input];
    for ch in 0..c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (y0, y1, x0, x1, pad) = match l.kind {
                    PoolKind::Avg { kernel, stride } => (
                        oy * stride,
                        oy * stride + kernel,
                        ox * stride,
                        ox * stride + kernel,
                        0,
                    ),
                    PoolKind::Max {
                        kernel,
                        stride,
                        padding,
                    } => (
                        oy * stride,
                        oy * stride + kernel,
                        ox * stride,
                        ox * stride + kernel,
                        padding,
                    ),
                    PoolKind::Adaptive { .. } => (
                        oy * ih / oh,
                        ((oy + 1) * ih).div_ceil(oh),
                        ox * iw / ow,
                        ((ox + 1) * iw).div_ceil(ow),
                        0,
                    ),
                };
                // The window's rows and columns inside the image (padding
                // counts for nothing, not even in the average's divisor).
                let (ya, yb) = (y0.max(pad) - pad, y1.min(ih + pad).saturating_sub(pad));
                let (xa, xb) = (x0.max(pad) - pad, x1.min(iw + pad).saturating_sub(pad));
                let n = (yb.saturating_sub(ya) * xb.saturating_sub(xa)) as i64;
                let (mut sum, mut best) = (0i64, i64::MIN);
                for y in ya..yb {
                    let row = (ch * ih + y) * iw;
                    match src {
                        Buf::I32(v) => pool_row(&v[row + xa..row + xb], &mut sum, &mut best),
                        Buf::I64(v) => pool_row(&v[row + xa..row + xb], &mut sum, &mut best),
                    }
                }
                let v = match l.kind {
                    PoolKind::Max { .. } => best,
                    _ if l.sum_only => sum,
                    _ => div_round(sum, n.max(1), l.div),
                };
                out[(ch * oh + oy) * ow + ox] = v as i32;
            }
        }
    }
    ws.bufs[l.output] = Buf::I32(out);
}

/// Adds a row of a pooling window to its sum and maximum.
#[inline(always)]
fn pool_row<T: Copy + Into<i64>>(row: &[T], sum: &mut i64, best: &mut i64) {
    for &v in row {
        let v: i64 = v.into();
        *sum += v;
        *best = (*best).max(v);
    }
}

fn run_quantize_input(q: &QuantizeInput, image: &[f32], ws: &mut Workspace) {
    if let Buf::I32(out) = &mut ws.bufs[q.output] {
        for (o, &x) in out.iter_mut().zip(image) {
            *o = ((x * q.pre).clamp(q.clip_lo, q.clip_hi) * q.gain).round_ties_even() as i32;
        }
    }
}

/// Runs one image (`[C, H, W]` floats) through the plan.
pub fn run_image(
    plan: &IntPlan,
    weights: &Weights,
    image: &[f32],
    ws: &mut Workspace,
    sim: &SimOptions,
) -> Result<ImageOutput, IntError> {
    if image.len() != plan.input_len() {
        return Err(IntError::BadInput {
            expected: plan.input_shape.to_vec(),
            got: image.len(),
        });
    }
    for (li, layer) in plan.layers.iter().enumerate() {
        match layer {
            Layer::QuantizeInput(q) => run_quantize_input(q, image, ws),
            Layer::Conv(l) => run_conv(plan, li, l, image, weights, ws, sim),
            Layer::Requant(r) => run_requant(plan, r, ws),
            Layer::Pool(p) => run_pool(plan, p, ws),
        }
    }
    let o = &plan.output;
    let classes = o.classes;
    let mut logits = vec![0f32; classes];
    let mut exact = vec![0f64; classes];
    let mut acc = vec![0i64; classes];
    let trunc = plan.options.rounding == Rounding::Trunc;
    for (ti, (src, k)) in o.terms.iter().enumerate() {
        let buf = &ws.bufs[*src];
        // The seed's fc multiplies its integers in float32 (`F.linear`):
        // under `trunc` its sums are recomputed in that arithmetic.
        let linear = plan.seed_linear(ti);
        for c in 0..classes {
            let v = buf.get(c);
            if ti == 0 {
                acc[c] = v;
            }
            // The seed: `(q_x * 1.0) * re_scale`, then `+= bias`, in float32;
            // otherwise summed in f64 and rounded once.
            let v32 = match linear {
                Some((_, l, input)) => {
                    let x = &ws.bufs[input];
                    let row = &l.weights[c * l.cin..(c + 1) * l.cin];
                    seed_linear_f32(l.cin, |i| x.get(i), |i| row[i])
                }
                None => v as f32,
            };
            logits[c] += v32 * o.terms_f32[ti][c];
            exact[c] += v as f64 * k[c];
        }
    }
    for c in 0..classes {
        if trunc {
            logits[c] += o.bias_f32[c];
        } else {
            logits[c] = (exact[c] + o.bias[c]) as f32;
        }
    }
    Ok(ImageOutput { logits, acc })
}

/// `sum_i x(i) * w(i)` as the seed's float32 fc computes it (PyTorch's CPU
/// `F.linear` on float copies of the integers): four partial sums over
/// `i mod 4`, each accumulated in order with fused multiply-adds, combined
/// as `(s0 + s2) + (s1 + s3)`. Where every partial sum stays below 2^24
/// this is the exact sum; beyond, it reproduces the seed's roundings (the
/// order was determined on the golden sets: it is the only one among the
/// sequential, blocked and 4- to 64-lane orders tried that gives every fc
/// sum of every set, including the 11 of seed3 whose rounding depends on
/// the order).
pub fn seed_linear_f32(n: usize, x: impl Fn(usize) -> i64, w: impl Fn(usize) -> i32) -> f32 {
    let mut s = [0f32; 4];
    for i in 0..n {
        s[i % 4] = (x(i) as f32).mul_add(w(i) as f32, s[i % 4]);
    }
    (s[0] + s[2]) + (s[1] + s[3])
}

/// Index of the largest logit (the first on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive() {
        let (m, k, p) = (6, 5, 7);
        let w: Vec<i32> = (0..m * k).map(|i| (i as i32 * 7 % 11) - 5).collect();
        let col: Vec<i32> = (0..k * p).map(|i| (i as i32 * 5 % 13) - 6).collect();
        let mut out = vec![0; m * p];
        gemm(&w, m, k, &col, p, &mut out);
        for o in 0..m {
            for i in 0..p {
                let want: i32 = (0..k).map(|kk| w[o * k + kk] * col[kk * p + i]).sum();
                assert_eq!(out[o * p + i], want);
            }
        }
    }

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
                for shift in [0, 1, 7, 16, 30] {
                    let (lo, hi) = (-(1i64 << 40), 1i64 << 40);
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
                            let want =
                                shift_round(s, shift, div).clamp(i32::MIN as i64, i32::MAX as i64);
                            assert_eq!(o as i64, want, "{div:?} shift {shift} m {m} two {two}");
                        }
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn row_pairs_are_the_as_i16_of_both_rows() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        for n in 0..20 {
            let a: Vec<i32> = (0..n as i32).map(|i| i * 40_503 - 300_000).collect();
            let b: Vec<i32> = (0..n as i32).map(|i| 70_000 - i * 9_001).collect();
            for with_b in [false, true] {
                let mut out = vec![7i16; 2 * n];
                // SAFETY: AVX2 is present (checked above).
                unsafe { pair_rows(&a, with_b.then_some(&b[..]), &mut out) };
                for i in 0..n {
                    assert_eq!(out[2 * i], a[i] as i16, "n {n} i {i}");
                    assert_eq!(out[2 * i + 1], if with_b { b[i] as i16 } else { 0 });
                }
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

    fn naive_conv(l: &ConvLayer, input: &[i32]) -> Vec<i32> {
        let [ih, iw] = l.in_hw;
        let [oh, ow] = l.out_hw;
        let (cin_g, cout_g, k) = (l.cin / l.groups, l.cout / l.groups, l.kernel);
        let mut out = vec![0; l.cout * oh * ow];
        for o in 0..l.cout {
            let g = o / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0;
                    for c in 0..cin_g {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * l.stride + ky) as isize - l.padding as isize;
                                let ix = (ox * l.stride + kx) as isize - l.padding as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < ih && (ix as usize) < iw {
                                    acc += l.weights[((o * cin_g + c) * k + ky) * k + kx]
                                        * input[((g * cin_g + c) * ih + iy as usize) * iw
                                            + ix as usize];
                                }
                            }
                        }
                    }
                    out[(o * oh + oy) * ow + ox] = acc;
                }
            }
        }
        out
    }

    fn test_plan() -> IntPlan {
        IntPlan {
            model: String::new(),
            profile: String::new(),
            options: Default::default(),
            input_shape: [0; 3],
            tensors: vec![],
            layers: vec![],
            output: crate::int::plan::OutputLayer {
                terms: vec![],
                bias: vec![],
                terms_f32: vec![],
                bias_f32: vec![],
                classes: 0,
                seed_linear: vec![],
            },
            node_tensors: Default::default(),
            clips: Default::default(),
            saturated: vec![],
            folded: vec![],
        }
    }

    #[test]
    fn grouped_strided_padded_conv_matches_naive() {
        for (cin, cout, k, stride, pad, groups) in [
            (4, 6, 3, 2, 1, 2),
            (3, 5, 3, 1, 1, 1),
            (4, 4, 2, 2, 0, 1),
            (6, 9, 1, 1, 0, 3),
            (5, 16, 3, 2, 1, 1),
            (6, 10, 3, 1, 1, 1),
            (2, 3, 5, 1, 2, 1),
            (4, 8, 3, 1, 0, 1),
            (16, 17, 3, 1, 1, 1),
        ] {
            let (ih, iw) = (7, 16);
            let oh = (ih + 2 * pad - k) / stride + 1;
            let ow = (iw + 2 * pad - k) / stride + 1;
            let fan_in = cin / groups * k * k;
            let weights: Vec<i32> = (0..cout * fan_in)
                .map(|i| (i as i32 * 37 % 255) - 127)
                .collect();
            let l = ConvLayer {
                name: "t".into(),
                input: ConvInput::Tensor(0),
                output: 1,
                cin,
                cout,
                kernel: k,
                stride,
                padding: pad,
                groups,
                in_hw: [ih, iw],
                out_hw: [oh, ow],
                weights: weights.clone(),
                w_bits: 8,
                w_scale: 127.0,
                a_bits: 8,
                in_bits: 8,
                float_scale: 1.0,
                fan_in,
                worst_bits: None,
                worst_bits_weights: None,
            };
            let input: Vec<i32> = (0..cin * ih * iw)
                .map(|i| (i as i32 * 53 % 255) - 128)
                .collect();
            let want = naive_conv(&l, &input);
            let mut col = Vec::new();
            let mut out = vec![0; want.len()];
            conv_typed(
                &l,
                &input,
                &weights,
                &mut col,
                &mut out,
                &mut |_, w, m, k, c, p, o| gemm(w, m, k, c, p, o),
            );
            assert_eq!(
                out, want,
                "plain {cin} {cout} k{k} s{stride} p{pad} g{groups}"
            );
            // The 16-bit multiply-add path, with its weight pairs.
            let pairs = madd_weights(&weights, groups, cout / groups, fan_in);
            let mut packed = Vec::new();
            let mut out2 = vec![0; want.len()];
            conv_typed(
                &l,
                &input,
                &weights,
                &mut col,
                &mut out2,
                &mut |g, w, m, k, c, p, o| {
                    let per_group = madd_group_len(m, k);
                    if !gemm_madd(
                        &pairs[g * per_group..(g + 1) * per_group],
                        m,
                        k,
                        c,
                        p,
                        o,
                        &mut packed,
                    ) {
                        gemm(w, m, k, c, p, o)
                    }
                },
            );
            assert_eq!(
                out2, want,
                "madd {cin} {cout} k{k} s{stride} p{pad} g{groups}"
            );
            // im2col straight into i16 pairs (what non-1x1 convs take).
            let mut out3 = vec![0; want.len()];
            let (mut p2, mut rows) = (Vec::new(), Vec::new());
            if direct_conv(&l) {
                let w = Weights::new(&IntPlan {
                    layers: vec![Layer::Conv(l.clone())],
                    ..test_plan()
                });
                let mut out4 = vec![0; want.len()];
                let mut padded = Vec::new();
                let ran = conv_direct_madd(&l, &input, &w.dpairs[0], &mut padded, &mut out4);
                if ran {
                    assert_eq!(out4, want, "direct {cin} {cout} k{k} p{pad}");
                }
                #[cfg(target_arch = "x86_64")]
                assert!(
                    ran || !std::arch::is_x86_feature_detected!("avx2"),
                    "direct kernel refused"
                );
            }
            if conv_im2col_madd(&l, &input, &pairs, &mut p2, &mut rows, &mut out3) {
                assert_eq!(
                    out3, want,
                    "fused {cin} {cout} k{k} s{stride} p{pad} g{groups}"
                );
            }
        }
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    }
}
