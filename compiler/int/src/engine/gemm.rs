//! im2col and the matrix products of grouped (not depthwise) and 1x1
//! convs: `out[m x p] = w[m x k] * col[k x p]` per group.
//!
//! - [`gemm`]: the plain product in any element type (i32, i64, f64), four
//!   output rows per pass; on x86-64 with AVX2 (detected at run time) the
//!   same Rust code compiled with AVX2 so the compiler vectorises it wider.
//! - [`gemm_madd`] and [`conv_im2col_madd`]: operands that fit in i16, on
//!   x86-64 with AVX2 only: `madd_kernel` multiplies i16 pairs and sums them
//!   into i32 (`vpmaddwd`, `vpaddd`), eight output rows x eight positions
//!   per pass, over an operand packed per block of eight positions
//!   (`packed_len`, packed by `pack_pairs` or, straight from the image, by
//!   `pack_group`) and weights laid out once per plan by [`madd_weights`].
//!   Without AVX2 they decline and the caller runs [`gemm`]. Given an
//!   `Epilogue` (a requantization fused into the conv, `fused.rs`), the
//!   kernel takes the largest |sum| and stores each row's sums requantized
//!   instead of the sums (no accumulator tensor, no separate pass).
//!
//! - With AVX-512 VNNI (`isa.rs`): `madd_kernel_vnni` and, for
//!   `direct.rs`, the same [`vnni_blocks`] (`vpdpwssd`, sixteen rows x two
//!   blocks of eight positions per pass); and the 8-bit form
//!   [`gemm_bytes`] (`vpdpbusd` on u8 operand quads, [`ByteWeights`]) for
//!   ungrouped 1x1 convs whose operands fit it.
//!
//! Integer sums do not depend on their order, so every path gives the same
//! results (the tests compare them with a naive conv).

use super::conv::Num;
use super::fused::Epilogue;
#[cfg(target_arch = "x86_64")]
use super::fused::{first_lanes, hmax_u32, Regs, FLOOR, NEAREST, TRUNC};
#[cfg(target_arch = "x86_64")]
use crate::fixed::Div;
use crate::plan::ConvLayer;

/// `out[m x p] = w[m x k] * col[k x p]`, four output rows per pass over a
/// column row so each input value is loaded once for four products.
#[inline(always)]
fn gemm_body<T: Num>(w: &[T], m: usize, k: usize, col: &[T], p: usize, out: &mut [T]) {
    let zero = T::default();
    if p == 1 {
        // One position (a fc layer): a dot product per row, summed in the
        // order of `k` as below (so f64 sums round alike); the compiler
        // vectorises the integer ones.
        for (o, a) in out[..m].iter_mut().enumerate() {
            let row = &w[o * k..(o + 1) * k];
            *a = row
                .iter()
                .zip(&col[..k])
                .fold(zero, |s, (&wv, &x)| s + wv * x);
        }
        return;
    }
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

dispatch!(gemm, gemm_avx2, gemm_body, (w: &[T], m: usize, k: usize, col: &[T], p: usize, out: &mut [T]));

/// [`gemm`] on operands that fit in i16, with AVX2's multiply-add of i16
/// pairs (`vpmaddwd`, 16 products per instruction): `col` is packed as
/// pairs of rows ([`packed_len`]), eight output rows share
/// each load. With `epi`, `out` gets the requantized values instead of
/// the sums (see [`madd_kernel`]). Returns false (nothing done) without
/// AVX2 or where the shapes do not match. (The tests' form: the engine
/// calls [`gemm_madd_with`].)
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_madd(
    wp: &[i32],
    m: usize,
    k: usize,
    col: &[i32],
    p: usize,
    out: &mut [i32],
    packed: &mut Vec<i16>,
    epi: Option<&mut Epilogue>,
) -> bool {
    gemm_madd_with(
        wp,
        None,
        m,
        k,
        Operand::Rows(col),
        p,
        Dst::Rows(out),
        packed,
        epi,
    )
}

/// The operand of [`gemm_madd_with`]: `k` rows of `p` values, or those rows
/// already in the [`packed_len`] layout (written so by the conv before,
/// [`Dst::Packed`]).
#[derive(Clone, Copy)]
pub(super) enum Operand<'a> {
    Rows(&'a [i32]),
    Packed(&'a [i16]),
    /// The rows as bytes `v + z` (`Dst::Bytes`), `z` the 8-bit operand's
    /// offset of the conv reading them; AMX only.
    Bytes(&'a [u8]),
}

/// An element of activation rows as the 8-bit kernels load them: i32
/// values, or bytes `v + z` (`Dst::Bytes`, `BIASED`).
pub(super) trait Stored: Copy {
    const BIASED: bool;

    /// The elements themselves where they are the bytes `v + z`; `None`
    /// for other elements.
    fn as_bytes(x: &[Self]) -> Option<&[u8]>;

    /// Sixteen consecutive elements from `p` into i32 lanes as stored
    /// (bytes zero-extended); lanes off `keep` 0.
    ///
    /// # Safety
    ///
    /// AVX-512 F and BW; the elements of the lanes in `keep` readable from
    /// `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self, keep: u16) -> std::arch::x86_64::__m512i;

    /// Sixteen positions of four rows (`stride` elements apart, from `p`)
    /// as the u8 quads of the 8-bit operand, where the elements are bytes
    /// `v + z` (interleaved as they are); `None` for other elements.
    ///
    /// # Safety
    ///
    /// AVX2 and AVX-512 F; sixteen elements readable from `p + t * stride`,
    /// `t < 4`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn quads16(p: *const Self, stride: usize) -> Option<std::arch::x86_64::__m512i> {
        let _ = (p, stride);
        None
    }

    /// [`Stored::load16`]'s values themselves: less `z` (every lane) where
    /// the elements are biased; lanes off `keep` 0.
    ///
    /// # Safety
    ///
    /// As [`Stored::load16`]'s.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn values16(
        p: *const Self,
        keep: u16,
        z: std::arch::x86_64::__m512i,
    ) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // SAFETY: the caller's.
        let v = unsafe { Self::load16(p, keep) };
        match Self::BIASED {
            // SAFETY: AVX-512 F, the caller's.
            true => unsafe { _mm512_maskz_sub_epi32(keep, v, z) },
            false => v,
        }
    }
}

impl Stored for i32 {
    const BIASED: bool = false;
    fn as_bytes(_: &[i32]) -> Option<&[u8]> {
        None
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const i32, keep: u16) -> std::arch::x86_64::__m512i {
        // SAFETY: the caller's (AVX-512 F; the lanes kept readable).
        unsafe { std::arch::x86_64::_mm512_maskz_loadu_epi32(keep, p) }
    }
}

impl Stored for u8 {
    const BIASED: bool = true;
    fn as_bytes(x: &[u8]) -> Option<&[u8]> {
        Some(x)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn quads16(p: *const u8, stride: usize) -> Option<std::arch::x86_64::__m512i> {
        use std::arch::x86_64::*;
        // SAFETY: the caller's (sixteen bytes of each of the four rows).
        let [x0, x1, x2, x3] = std::array::from_fn(|t| unsafe {
            _mm_loadu_si128(p.add(t * stride) as *const __m128i)
        });
        // Rows 0 and 1, 2 and 3 byte by byte, then those pairs word by word:
        // each dword the four rows' bytes at one position. SAFETY: AVX2 and
        // AVX-512 F (the caller's); registers only.
        unsafe {
            let (a, b) = (_mm_unpacklo_epi8(x0, x1), _mm_unpackhi_epi8(x0, x1));
            let (c, d) = (_mm_unpacklo_epi8(x2, x3), _mm_unpackhi_epi8(x2, x3));
            let lo = _mm256_set_m128i(_mm_unpackhi_epi16(a, c), _mm_unpacklo_epi16(a, c));
            let hi = _mm256_set_m128i(_mm_unpackhi_epi16(b, d), _mm_unpacklo_epi16(b, d));
            Some(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi))
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const u8, keep: u16) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // SAFETY: the caller's (AVX-512 F and BW; the bytes kept readable).
        unsafe {
            _mm512_cvtepu8_epi32(_mm512_castsi512_si128(_mm512_maskz_loadu_epi8(
                keep as u64,
                p as *const i8,
            )))
        }
    }
}

/// Where [`gemm_madd_with`] writes: `m` rows of `p` values, or (with an
/// epilogue) the requantized rows as the next 1x1 conv's operand, in the
/// [`packed_len`] layout of `m.div_ceil(2)` pairs (values in i16).
pub(super) enum Dst<'a> {
    Rows(&'a mut [i32]),
    Packed(&'a mut [i16]),
    /// The requantized rows as bytes `v + z` (every value in `-z..=255 -
    /// z`), the 8-bit operand of the next convs: written by the AMX
    /// kernel's one-term epilogue only ([`BlockOut::tile16`]).
    Bytes(&'a mut [u8], i32),
}

/// [`gemm_madd`] from either form of operand into either form of output
/// (`packed` is scratch for an operand of rows). With `bytes` (the same
/// weights' 8-bit form, where the operand fits it) and AVX-512 VNNI, the
/// operand is laid out as u8 quads and the product runs `vpdpbusd`
/// ([`gemm_bytes`]). Returns false (nothing done) without AVX2, where the
/// shapes do not match, or for a packed output without an epilogue.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_madd_with(
    wp: &[i32],
    bytes: Option<&ByteWeights>,
    m: usize,
    k: usize,
    col: Operand,
    p: usize,
    mut out: Dst,
    packed: &mut Vec<i16>,
    epi: Option<&mut Epilogue>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let kp = k.div_ceil(2);
        let shapes = wp.len() == madd_group_len(m, k)
            && match col {
                Operand::Rows(c) => c.len() >= k * p,
                Operand::Packed(c) => c.len() >= packed_len(kp, p),
                Operand::Bytes(c) => c.len() >= k * p,
            }
            && match &out {
                Dst::Rows(o) => o.len() >= m * p,
                Dst::Packed(o) => epi.is_some() && o.len() >= packed_len(m.div_ceil(2), p),
                Dst::Bytes(o, _) => epi.is_some() && o.len() >= m * p,
            }
            && epi.as_ref().is_none_or(|e| e.holds(m, p));
        // Bytes in or out: only the 8-bit form (AVX-512 VNNI, or AMX
        // tiles), and bytes out only from its one-term epilogue in i32
        // lanes (`BlockOut::tile16`, `BlockOut::rows16`).
        let narrow_in = matches!(col, Operand::Bytes(_));
        let narrow_out = matches!(out, Dst::Bytes(..));
        let eight = super::isa::avx512_vnni()
            && p > 1
            && bytes.is_some_and(|b| b.holds(m, k))
            && (!narrow_out || epi.as_ref().is_some_and(|e| e.second.is_none() && !e.wide));
        if (narrow_in || narrow_out) && !eight {
            return false;
        }
        if shapes && std::arch::is_x86_feature_detected!("avx2") {
            if let (1, Operand::Rows(x), Dst::Rows(out), None) = (p, col, &mut out, &epi) {
                // One position (a fc layer): one dot product per row.
                // SAFETY: AVX2 is present; `wp` is `madd_group_len(m, k)`,
                // `x` holds `k` values and `out` `m` (checked above).
                unsafe { madd_gemv(wp, m, k, x, out) };
                return true;
            }
            if let Some(bw) = bytes.filter(|b| super::isa::avx512_vnni() && b.holds(m, k) && p > 1)
            {
                // SAFETY: AVX-512 VNNI (and AVX2) present (`avx512_vnni`),
                // the shapes checked above and `bw` holds `m` rows of `k`.
                unsafe { gemm_bytes(bw, m, k, col, p, out, packed, epi) };
                return true;
            }
            let operand = match col {
                Operand::Rows(c) => {
                    size_packed(packed, kp, p);
                    // SAFETY: AVX2 is present (checked above); `pack_pairs`
                    // asserts its lengths.
                    unsafe { pack_pairs(c, k, p, packed) };
                    &packed[..]
                }
                Operand::Packed(c) => c,
                // Declined above (`tiles` takes them).
                Operand::Bytes(_) => return false,
            };
            // SAFETY: AVX2 is present, the operand holds `packed_len(kp,
            // p)`, `out` `m * p` values or `packed_len(m.div_ceil(2), p)`
            // pairs with an epilogue, and `epi` has `m` rows (checked
            // above): the kernel's `# Safety`.
            unsafe { madd_kernel(wp, m, k, operand, p, out, epi) };
            return true;
        }
    }
    let _ = (wp, m, k, col, p, out, packed, epi);
    false
}

/// The operand layout of [`madd_kernel`]: per block of eight positions, the
/// `kp` pairs of rows of k one after the other, each 16 i16 (position `i`
/// of the block at `2i`, row `2j` low, `2j + 1` high), so the kernel's loads
/// run through memory instead of striding `2p` (4 KiB on a 32 x 32 map).
pub(super) fn packed_len(kp: usize, p: usize) -> usize {
    p.div_ceil(8) * kp * 16
}

/// `k` rows of `p` values back out of the [`packed_len`] layout (the
/// inverse of [`pack_pairs`]) into `out` (`k * p` values).
pub(super) fn unpack_pairs(packed: &[i16], k: usize, p: usize, out: &mut [i32]) {
    let kp = k.div_ceil(2);
    for (r, row) in out.chunks_exact_mut(p).take(k).enumerate() {
        for (i, o) in row.iter_mut().enumerate() {
            *o = packed[((i / 8) * kp + r / 2) * 16 + 2 * (i % 8) + r % 2] as i32;
        }
    }
}

/// Sizes `packed` to [`packed_len`]`(kp, p)` and zeroes its last block
/// where `p` is not a multiple of 8: the packing writes every other value
/// (whole blocks, and the last block's positions below `p`), and the
/// positions past `p` must read 0 (the kernels' largest |sum| counts
/// them). No clearing of the rest: a buffer reused from a larger conv is
/// overwritten.
fn size_packed(packed: &mut Vec<i16>, kp: usize, p: usize) {
    packed.resize(packed_len(kp, p), 0);
    if !p.is_multiple_of(8) {
        packed[p / 8 * kp * 16..].fill(0);
    }
}

/// Positions `from..` (a multiple of 8) of rows `a` and `b` (`b` missing:
/// 0) of pair `j`, as i16, interleaved into their place in the blocks of the
/// [`packed_len`] layout; `packed`'s last block was zeroed
/// ([`size_packed`]), so the positions past `p` stay 0. (The scalar tail of [`pack_pairs`] and
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

/// The 8-bit form of one group's weights (`m` rows of `k`) for the AVX-512
/// VNNI kernel (`vpdpbusd`: u8 operand by s8 weight quads): per block of
/// eight rows `[k / 4][8]` i32, each the s8 quad `w[4j..4j + 4]` of a row
/// (byte `t` weight `4j + t`; past `k` and rows past `m` zero); the
/// operand's offset `z` (its u8 is the value plus `z`: 0 or 128,
/// `direct::byte_offset`) and per row `z` times its weight sum (wrapping
/// i32), which the kernel subtracts: the sums of the values.
pub(super) struct ByteWeights {
    pub(super) quads: Vec<i32>,
    /// The same weights as the AMX kernel's A tiles
    /// ([`super::amx::weight_tiles`]).
    pub(super) tiles: Vec<i8>,
    pub(super) comp: Vec<i32>,
    pub(super) z: i32,
}

impl ByteWeights {
    /// From `m` rows of `k` weights, each in `-128..=127`.
    pub(super) fn new(w: &[i32], m: usize, k: usize, z: i32) -> ByteWeights {
        let kq = k.div_ceil(4);
        let byte = |o: usize, i: usize| match o < m && i < k {
            true => w[o * k + i] as u8 as u32,
            false => 0,
        };
        let mut quads = Vec::with_capacity(m.div_ceil(MADD_ROWS) * MADD_ROWS * kq);
        for b in 0..m.div_ceil(MADD_ROWS) {
            for j in 0..kq {
                for r in 0..MADD_ROWS {
                    let o = b * MADD_ROWS + r;
                    let q = (0..4).fold(0, |q, t| q | byte(o, 4 * j + t) << (8 * t));
                    quads.push(q as i32);
                }
            }
        }
        let comp = w
            .chunks_exact(k.max(1))
            .take(m)
            .map(|r| (z as i64 * r.iter().map(|&x| x as i64).sum::<i64>()) as i32)
            .collect();
        let tiles = super::amx::weight_tiles(w, m, k);
        ByteWeights {
            quads,
            tiles,
            comp,
            z,
        }
    }

    /// Whether it holds `m` rows of `k`.
    pub(super) fn holds(&self, m: usize, k: usize) -> bool {
        self.comp.len() == m
            && self.quads.len() == m.div_ceil(MADD_ROWS) * MADD_ROWS * k.div_ceil(4)
            && self.tiles.len() == super::amx::weight_tiles_len(m, k)
    }
}

/// Positions `i..i + 8` of four rows (`None`: the value 0) as u8 quads:
/// byte `t` of word `j` is `rows[t][i + j] + z` (the values plus `z` in
/// `0..=255`).
///
/// # Safety
///
/// The CPU must support AVX2, and each row given must hold `i + 8`
/// values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn quad8(
    rows: &[Option<&[i32]>; 4],
    i: usize,
    z: i32,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let (zv, low) = (_mm256_set1_epi32(z), _mm256_set1_epi32(0xff));
    let mut w = _mm256_setzero_si256();
    for (t, r) in rows.iter().enumerate() {
        let v = match r {
            // SAFETY: the caller makes `r` hold `i + 8` values.
            Some(r) => _mm256_add_epi32(unsafe { _mm256_loadu_si256(r.as_ptr().add(i) as _) }, zv),
            None => zv,
        };
        let b = _mm256_and_si256(v, low);
        w = _mm256_or_si256(w, _mm256_sllv_epi32(b, _mm256_set1_epi32(8 * t as i32)));
    }
    w
}

/// Position `i` of four rows (`None`: the value 0) as one u8 quad, byte `t`
/// `rows[t][i] + z`, in the two i16 halves of its word: [`quad8`]'s lane,
/// for the positions past the last whole vector.
pub(super) fn quad_word(rows: &[Option<&[i32]>; 4], i: usize, z: i32) -> [i16; 2] {
    let w = (0..4).fold(0u32, |w, t| {
        let v = rows[t].map_or(0, |r| r[i]) + z;
        w | ((v as u32 & 0xff) << (8 * t))
    });
    [w as u16 as i16, (w >> 16) as u16 as i16]
}

/// Positions per block of [`gemm_bytes`]' operand layout (the AMX tiles'
/// and the VNNI kernel's alike).
const QUAD_BLOCK: usize = 16;

/// The length in i16 of [`gemm_bytes`]' operand layout: per block of
/// [`QUAD_BLOCK`] positions, `kstride` quads of rows, each 16 words (32
/// i16).
fn quads_len(kstride: usize, p: usize) -> usize {
    p.div_ceil(QUAD_BLOCK) * kstride * 2 * QUAD_BLOCK
}

/// `packed` as the [`quads_len`] layout where a packing writes every word
/// of quads `..kq` in the blocks of 8 positions up to `p`: only the rest
/// (the quads from `kq` on, and a last block's second half past `p`) is
/// set to `z` in each byte (the value 0), not the whole buffer.
fn size_quads_past(packed: &mut Vec<i16>, kstride: usize, p: usize, z: i32, kq: usize) {
    packed.resize(quads_len(kstride, p), 0);
    let zw = (z * 0x0101) as u16 as i16;
    for blk in 0..p.div_ceil(QUAD_BLOCK) {
        let from = quad_at(kstride, blk * QUAD_BLOCK, kq);
        let to = quad_at(kstride, blk * QUAD_BLOCK, kstride);
        packed[from..to].fill(zw);
    }
    for i in (p.div_ceil(8) * 8..p.div_ceil(QUAD_BLOCK) * QUAD_BLOCK).step_by(8) {
        for q in 0..kq {
            let at = quad_at(kstride, i, q);
            packed[at..at + 16].fill(zw);
        }
    }
}

/// Where quad `j` of positions `i..i + 8` (`i` a multiple of 8) starts in
/// the [`quads_len`]`(kstride, p)` layout, in i16.
fn quad_at(kstride: usize, i: usize, j: usize) -> usize {
    ((i / QUAD_BLOCK) * kstride + j) * 2 * QUAD_BLOCK + 2 * (i % QUAD_BLOCK)
}

/// The operand of [`gemm_bytes`]: `k` rows of `p` values as u8 quads of
/// rows (plus `z`) in the [`quads_len`]`(kstride, p)` layout (blocks of
/// 16 positions, which the AMX tiles and the VNNI kernel read alike), in
/// 512-bit registers, from i32 rows or bytes `v + z` ([`Stored`]): per sixteen
/// positions of a quad, its rows' values loaded (the last
/// block's lanes past `p`, and rows past `k`, masked to 0), shifted into
/// their bytes and added to the word of four `z` (each value plus `z` lies
/// in `0..=255`, the operand's range, so no byte carries into the next),
/// one store; the quads past `k.div_ceil(4)` hold `z` ([`size_quads_past`]).
///
/// # Safety
///
/// The CPU must support AVX-512 F and BW. The lengths are asserted (a short
/// slice panics); `kstride >= k.div_ceil(4)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
unsafe fn pack_quads16<T: Stored>(
    col: &[T],
    k: usize,
    p: usize,
    z: i32,
    kstride: usize,
    packed: &mut Vec<i16>,
) {
    use std::arch::x86_64::*;
    let kq = k.div_ceil(4);
    assert!(col.len() >= k * p && kstride >= kq);
    size_quads_past(packed, kstride, p, z, kq);
    let zq = _mm512_set1_epi32(z.wrapping_mul(0x0101_0101));
    let zv = _mm512_set1_epi32(z);
    for blk in 0..p.div_ceil(16) {
        let i = 16 * blk;
        let keep = ((1u32 << (p - i).min(16)) - 1) as __mmask16;
        for j in 0..kq {
            let at = quad_at(kstride, i, j);
            assert!(at + 32 <= packed.len());
            // Bytes `v + z` of a whole block of four rows: interleaved.
            if keep == 0xffff && 4 * j + 4 <= k {
                // SAFETY: positions `i..i + 16 <= p` of rows `4 j..4 j + 4
                // <= k` of `col` (`k * p` elements, asserted).
                let quads = unsafe { T::quads16(col.as_ptr().add(4 * j * p + i), p) };
                if let Some(w) = quads {
                    // SAFETY: the 32 i16 at `at` lie inside `packed`.
                    unsafe { _mm512_storeu_si512(packed.as_mut_ptr().add(at) as *mut _, w) };
                    continue;
                }
            }
            let mut w = zq;
            // Row `4 j + t`'s sixteen values (a row past `k`: none loaded,
            // the bytes stay `z`).
            let load = |t: usize| {
                let r = 4 * j + t;
                let m = if r < k { keep } else { 0 };
                // SAFETY: the lanes loaded are positions `i.. < p` of row
                // `r < k` of `col` (`k * p` values, asserted); with no lane
                // (a row past `k`) nothing is read.
                unsafe {
                    T::values16(
                        col.as_ptr()
                            .wrapping_add(r.min(k.saturating_sub(1)) * p + i),
                        m,
                        zv,
                    )
                }
            };
            w = _mm512_add_epi32(w, load(0));
            w = _mm512_add_epi32(w, _mm512_slli_epi32::<8>(load(1)));
            w = _mm512_add_epi32(w, _mm512_slli_epi32::<16>(load(2)));
            w = _mm512_add_epi32(w, _mm512_slli_epi32::<24>(load(3)));
            // SAFETY: the 32 i16 at `at` lie inside `packed` (asserted).
            unsafe { _mm512_storeu_si512(packed.as_mut_ptr().add(at) as *mut _, w) };
        }
    }
}

/// The [`packed_len`] layout of i16 pairs of `k` rows (`pk`, positions past
/// `p` zero) as [`pack_quads16`]' layout of u8 quads (plus `z`) in `packed`:
/// quad `q` is pairs `2q` and `2q + 1` (a missing last pair: `z`).
///
/// # Safety
///
/// The CPU must support AVX2. The lengths are asserted; `kstride >=
/// k.div_ceil(4)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quads_from_pairs(
    pk: &[i16],
    k: usize,
    p: usize,
    z: i32,
    kstride: usize,
    packed: &mut Vec<i16>,
) {
    use std::arch::x86_64::*;
    let (kp, kq) = (k.div_ceil(2), k.div_ceil(4));
    assert!(pk.len() >= packed_len(kp, p) && kstride >= kq);
    size_quads_past(packed, kstride, p, z, kq);
    let zv = _mm256_set1_epi16(z as i16);
    let bytes = _mm256_set1_epi32(0x00ff_00ff);
    // Per word: the low bytes of its two i16 halves as one 16-bit value.
    let two = |v: __m256i| {
        let v = _mm256_and_si256(_mm256_add_epi16(v, zv), bytes);
        _mm256_and_si256(
            _mm256_or_si256(v, _mm256_srli_epi32::<8>(v)),
            _mm256_set1_epi32(0xffff),
        )
    };
    for b in 0..p.div_ceil(8) {
        for q in 0..kq {
            let at = quad_at(kstride, 8 * b, q);
            assert!(at + 16 <= packed.len());
            // SAFETY: AVX2 is this function's own feature; pairs `2q` and
            // `2q + 1 < kp` of block `b` lie inside `pk` (asserted), and
            // the 16 i16 at `at` inside `packed` (asserted).
            unsafe {
                let a = _mm256_loadu_si256(pk.as_ptr().add((b * kp + 2 * q) * 16) as _);
                let c = match 2 * q + 1 < kp {
                    true => _mm256_loadu_si256(pk.as_ptr().add((b * kp + 2 * q + 1) * 16) as _),
                    false => _mm256_setzero_si256(),
                };
                let w = _mm256_or_si256(two(a), _mm256_slli_epi32::<16>(two(c)));
                _mm256_storeu_si256(packed.as_mut_ptr().add(at) as _, w);
            }
        }
    }
}

/// [`gemm_madd_with`] in the 8-bit form: the operand (rows, i16 pairs or
/// bytes) laid out as u8 quads in `packed` (blocks of 16 positions), then
/// with AMX the tile kernel ([`super::amx::gemm_tiles`]), else
/// [`vnni_blocks`] with `vpdpbusd` (each block's two halves of 8 positions
/// in one register); `bw.comp` subtracted. The same sums.
///
/// # Safety
///
/// The CPU must support AVX-512 F, BW and VNNI (and AVX2); the shapes as
/// [`gemm_madd_with`] checks them, and `bw.holds(m, k)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_bytes(
    bw: &ByteWeights,
    m: usize,
    k: usize,
    col: Operand,
    p: usize,
    out: Dst,
    packed: &mut Vec<i16>,
    epi: Option<&mut Epilogue>,
) {
    let kq = k.div_ceil(4);
    let amx = super::isa::amx();
    // Quads per block of sixteen positions (each quad of a block 64
    // bytes): the tiles read `tile_quads(k)`.
    let kstride = if amx { super::amx::tile_quads(k) } else { kq };
    // SAFETY: AVX-512 F and BW, and AVX2, are this function's features;
    // both assert their lengths.
    unsafe {
        match col {
            Operand::Rows(c) => pack_quads16(c, k, p, bw.z, kstride, packed),
            Operand::Packed(pk) => quads_from_pairs(pk, k, p, bw.z, kstride, packed),
            // The offset the same (`gemm_madd_with`).
            Operand::Bytes(c) => pack_quads16(c, k, p, bw.z, kstride, packed),
        }
    }
    // SAFETY: AVX2 is one of this function's features.
    let mut fin = unsafe { BlockOut::new(out, epi.as_deref(), p, m) };
    if amx {
        // With `z` 0 every correction is 0.
        let comp = (bw.z != 0).then_some(&bw.comp[..]);
        // SAFETY: AMX is permitted (`isa::amx`) with this function's
        // features; `packed` holds `quads_len(tile_quads(k), p)`, the
        // tiles `m` rows of `tile_quads(k)` quads, `fin` `m` rows of `p`.
        unsafe { super::amx::gemm_tiles(&bw.tiles, m, k, packed, p, comp, &mut fin) };
    } else {
        // Eight positions `8 b..8 b + 8` of quad `j` are half of the 64
        // bytes of quad `j` of block `b / 2` of sixteen: `quad_at(kq,
        // 8 b, j)` is `(b / 2 * kq + j) * 32 + b % 2 * 16` (in i16).
        // SAFETY: this function's features; `bw.quads` holds
        // `m.div_ceil(8)` blocks of `8 * kq`, each operand read (16 i16 at
        // `quad_at(kq, 8 b, j)`, `b < p.div_ceil(8)`, `j < kq`) lies
        // inside `packed` (`quads_len(kq, p)`), `fin` holds `m` rows
        // of `p`.
        unsafe {
            vnni_blocks(
                &bw.quads,
                kq,
                m,
                packed,
                p.div_ceil(8),
                |b| quad_at(kq, 8 * b, 0),
                (0..kq).map(|j| 32 * j),
                Some(&bw.comp),
                &mut fin,
            )
        };
    }
    // SAFETY: AVX2 is one of this function's features.
    let peak = unsafe { fin.peak() };
    if let Some(e) = epi {
        e.peak = e.peak.max(peak);
    }
}

/// Size of one group's weights in the [`madd_weights`] layout.
pub(super) fn madd_group_len(m: usize, k: usize) -> usize {
    m.div_ceil(MADD_ROWS) * MADD_ROWS * k.div_ceil(2)
}

/// Output rows (channels) per pass of [`madd_kernel`] and `direct_kernel`
/// (in `direct.rs`): eight accumulators, the input vector and a broadcast
/// stay in the sixteen AVX2 registers.
pub(super) const MADD_ROWS: usize = 8;

/// The weights of `groups` groups of `m` output rows of `k` as [`madd_kernel`]
/// reads them: per group, per block of eight output rows, `[kp][8]` i16
/// pairs in i32 lanes (low half `w[2j]`, high half `w[2j + 1]`; a missing
/// last odd weight and rows past `m` are 0).
pub(super) fn madd_weights(w: &[i32], groups: usize, m: usize, k: usize) -> Vec<i32> {
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
///
/// # Safety
///
/// The CPU must support AVX2, and `a` (and `b` where given) must be valid
/// for reading eight `i32` (no alignment needed).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn pair8(a: *const i32, b: Option<*const i32>) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 is this function's own feature; the caller makes `a` and
    // `b` valid for eight unaligned i32 reads.
    unsafe {
        let lo = _mm256_and_si256(_mm256_loadu_si256(a as _), _mm256_set1_epi32(0xffff));
        match b {
            Some(b) => _mm256_or_si256(lo, _mm256_slli_epi32(_mm256_loadu_si256(b as _), 16)),
            None => lo,
        }
    }
}

/// `col` (`k` rows of `p` i32) as i16 pairs of rows in the [`packed_len`]
/// layout (a missing last odd row is 0), whole blocks by [`pair8`].
///
/// # Safety
///
/// The CPU must support AVX2. The lengths are asserted (`col.len() >= k *
/// p`, `packed.len() >= packed_len(k.div_ceil(2), p)`): a short slice
/// panics.
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
            // SAFETY: AVX2 is this function's own feature; `blk * 8 + 8 <=
            // p` keeps the reads inside rows `a` and `b`, and the 16 i16
            // stored at `(blk * kp + j) * 16` lie inside `packed` (asserted
            // above).
            unsafe {
                let v = pair8(a.as_ptr().add(blk * 8), b.map(|b| b.as_ptr().add(blk * 8)));
                _mm256_storeu_si256(packed.as_mut_ptr().add((blk * kp + j) * 16) as _, v);
            }
        }
        pairs_into_blocks(a, b, |x| x as i16, full * 8, j, kp, packed);
    }
}

/// `out[m x p] = w[m x k] * col[k x p]` with `vpmaddwd`: `wp` is one
/// group's weights in the [`madd_weights`] layout, `packed` the operand in
/// the [`packed_len`] layout; eight output rows x eight positions per pass.
/// With `epi` (a fused requantization, `fused.rs`) the epilogue takes the
/// largest |sum| into `epi.peak` and stores each row's sums requantized
/// with `epi.rows[row]` (and its second term) instead of the sums; into a
/// [`Dst::Packed`] as i16 pairs of rows (positions past `p` zero).
///
/// # Safety
///
/// - The CPU must support AVX2.
/// - `packed.len() >= packed_len(k.div_ceil(2), p)`; `out` holds `m * p`
///   values ([`Dst::Rows`]) or `packed_len(m.div_ceil(2), p)` with `epi`
///   given ([`Dst::Packed`]); `epi`, where given, holds `m` rows of `p`
///   (`Epilogue::holds`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn madd_kernel(
    wp: &[i32],
    m: usize,
    k: usize,
    packed: &[i16],
    p: usize,
    out: Dst,
    epi: Option<&mut Epilogue>,
) {
    use std::arch::x86_64::*;
    if super::isa::avx512_vnni() {
        // SAFETY: the CPU has AVX-512 F, BW and VNNI (and AVX2): checked
        // by `avx512_vnni`; the rest of the contract is this function's.
        unsafe { madd_kernel_vnni(wp, m, k, packed, p, out, epi) };
        return;
    }
    let kp = k.div_ceil(2);
    // SAFETY: AVX2 is this function's own feature.
    let mut fin = unsafe { BlockOut::new(out, epi.as_deref(), p, m) };
    for o in (0..m).step_by(MADD_ROWS) {
        let rows = (m - o).min(MADD_ROWS);
        // This block of eight rows: `[kp][8]`, broadcasts at fixed offsets.
        let wb = &wp[o * kp..(o + MADD_ROWS) * kp];
        for b in 0..p.div_ceil(8) {
            // SAFETY: AVX2 is this function's own feature. Block `b` of
            // `packed` is `kp` x 16 i16 at `b * kp * 16`, inside
            // `packed_len(kp, p)` (the caller's length); the weights read are
            // `wb[j * 8 + r]`, `j < kp`, inside `wb` (`8 * kp`, a checked
            // slice); `finish` writes inside `out` (its `# Safety`, from the
            // caller's lengths).
            unsafe {
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
                fin.finish(&mut acc, o, rows, b);
            }
        }
    }
    // SAFETY: AVX2 is this function's own feature.
    let peak = unsafe { fin.peak() };
    if let Some(e) = epi {
        e.peak = e.peak.max(peak);
    }
}

/// [`madd_kernel`] with AVX-512 VNNI ([`vnni_blocks`] over the operand's
/// blocks of eight positions). The same sums.
///
/// # Safety
///
/// As [`madd_kernel`], and the CPU must support AVX-512 F, BW and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
unsafe fn madd_kernel_vnni(
    wp: &[i32],
    m: usize,
    k: usize,
    packed: &[i16],
    p: usize,
    out: Dst,
    epi: Option<&mut Epilogue>,
) {
    let kp = k.div_ceil(2);
    // SAFETY: AVX2 is one of this function's features.
    let mut fin = unsafe { BlockOut::new(out, epi.as_deref(), p, m) };
    // Block `b` of the operand: `kp` pairs of rows at `b * kp * 16`, pair
    // `j` 16 i16 further each.
    let at = |b: usize| b * kp * 16;
    // SAFETY: this function's features; the weights are `madd_group_len(m,
    // k)` of blocks of `8 * kp`, each operand block read (`at(b) + 16 j +
    // 16 <= packed_len(kp, p)`, `j < kp`, `b < p.div_ceil(8)`) inside
    // `packed`, and `fin` holds `m` rows of `p` (the caller's lengths).
    unsafe {
        vnni_blocks(
            wp,
            kp,
            m,
            packed,
            p.div_ceil(8),
            at,
            (0..kp).map(|j| 16 * j),
            None,
            &mut fin,
        )
    };
    // SAFETY: AVX2 is one of this function's features.
    let peak = unsafe { fin.peak() };
    if let Some(e) = epi {
        e.peak = e.peak.max(peak);
    }
}

/// The AVX-512 VNNI kernel of [`madd_kernel_vnni`] and `direct.rs`'s
/// `direct_kernel_vnni`: `m` output rows from weights `w` in blocks of
/// eight rows (`[n][8]` each, the [`madd_weights`] layout) over `blocks`
/// blocks of eight positions, block `g` reading its `n` steps' operand
/// vectors (16 i16: eight positions' pairs) at `at(g) + off` for each `off`
/// of `offs`. Per pass sixteen rows (two blocks of weights) x two blocks
/// of positions (one in each half of a 512-bit register), one `vpdpwssd`
/// per row and step (`vpmaddwd` and `vpaddd` in one instruction, twice as
/// wide); each half of each accumulator is then an eight-by-eight block as
/// the AVX2 kernels have it and goes through the same [`BlockOut::finish`].
///
/// # Safety
///
/// AVX-512 F, BW, VNNI; `w.len() >= m.div_ceil(8) * 8 * n`; `offs` yields
/// `n` offsets and for every `g < blocks` and `off` of them `at(g) + off +
/// 16 <= x.len()`; `fin` takes rows `< m` of blocks `< blocks`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn vnni_blocks<I: Iterator<Item = usize> + Clone>(
    w: &[i32],
    n: usize,
    m: usize,
    x: &[i16],
    blocks: usize,
    at: impl Fn(usize) -> usize,
    offs: I,
    comp: Option<&[i32]>,
    fin: &mut BlockOut,
) {
    // SAFETY: AVX-512 F is one of this function's features.
    let r16 = unsafe { fin.regs16() };
    let mut o = 0;
    while o < m {
        let two = m - o > MADD_ROWS;
        for g in (0..blocks).step_by(2) {
            // The upper half: the next block, or (the last block alone)
            // block `g` again, not used.
            let g1 = if g + 1 < blocks { g + 1 } else { g };
            let pass = VnniPass {
                w: w[o * n..].as_ptr(),
                n,
                x: (x[at(g)..].as_ptr(), x[at(g1)..].as_ptr()),
                o,
                g: (g, g1),
                m,
                comp,
                r16: r16.as_ref(),
            };
            // SAFETY: this function's features and its caller's bounds:
            // weight blocks `o / 8` and (with `two`, `o + 8 < m`) the next
            // inside `w`, every read at `at(g*) + off` inside `x`.
            unsafe {
                match (two, comp.is_some()) {
                    (true, false) => pass.run::<2, false, I>(offs.clone(), fin),
                    (false, false) => pass.run::<1, false, I>(offs.clone(), fin),
                    (true, true) => pass.run::<2, true, I>(offs.clone(), fin),
                    (false, true) => pass.run::<1, true, I>(offs.clone(), fin),
                }
            }
        }
        o += if two { 2 * MADD_ROWS } else { MADD_ROWS };
    }
}

/// One pass of [`vnni_blocks`]: rows from `o`, weights from `w` (`n` steps
/// per block of eight rows), operand blocks `g.0` and `g.1` read from `x.0`
/// and `x.1` (where `g.1 == g.0`, the upper half is not used).
#[cfg(target_arch = "x86_64")]
struct VnniPass<'a> {
    w: *const i32,
    n: usize,
    x: (*const i16, *const i16),
    o: usize,
    g: (usize, usize),
    m: usize,
    /// The 8-bit form's per-row `z * sum(w)`, subtracted from its sums.
    comp: Option<&'a [i32]>,
    /// The 512-bit epilogue, where it applies ([`BlockOut::regs16`]): by
    /// reference, not copied into every pass.
    r16: Option<&'a Regs16>,
}

#[cfg(target_arch = "x86_64")]
impl VnniPass<'_> {
    /// `RB` blocks of eight rows; `BYTES`: the 8-bit form (`vpdpbusd`, u8
    /// operand quads by s8 weight quads, the sums less `comp`).
    ///
    /// # Safety
    ///
    /// AVX-512 F, BW, VNNI; `RB` blocks of `8 * n` weights at `w`, and
    /// `x.* + off + 16` inside the operand for each `off` of `offs`; `fin`
    /// as in [`vnni_blocks`].
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn run<const RB: usize, const BYTES: bool, I: Iterator<Item = usize>>(
        &self,
        offs: I,
        fin: &mut BlockOut,
    ) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's bounds (see `# Safety`).
        unsafe {
            let mut acc = [[_mm512_setzero_si512(); MADD_ROWS]; RB];
            for (t, off) in offs.enumerate() {
                let lo = _mm256_loadu_si256(self.x.0.add(off) as *const __m256i);
                let hi = _mm256_loadu_si256(self.x.1.add(off) as *const __m256i);
                let xv = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                for (rb, accs) in acc.iter_mut().enumerate() {
                    let w = self.w.add((rb * self.n + t) * MADD_ROWS);
                    for (r, a) in accs.iter_mut().enumerate() {
                        let wr = _mm512_set1_epi32(*w.add(r));
                        *a = if BYTES {
                            _mm512_dpbusd_epi32(*a, xv, wr)
                        } else {
                            _mm512_dpwssd_epi32(*a, xv, wr)
                        };
                    }
                }
            }
            // The epilogue takes the sums by reference: a copy, so that
            // `acc` itself stays in registers through the loop (taking its
            // address had it zeroed and kept in memory).
            let mut sums = acc;
            for (rb, accs) in sums.iter_mut().enumerate() {
                let ob = self.o + rb * MADD_ROWS;
                let rows = (self.m - ob).min(MADD_ROWS);
                if let (true, Some(comp)) = (BYTES, self.comp) {
                    // The sums of the offset operand less `z * sum(w)`:
                    // the sums (exact modulo 2^32, and they fit i32).
                    for (r, a) in accs.iter_mut().enumerate().take(rows) {
                        *a = _mm512_sub_epi32(*a, _mm512_set1_epi32(comp[ob + r]));
                    }
                }
                fin.finish_pair(self.r16, accs, ob, rows, self.g);
            }
        }
    }
}

/// `$go!(DIV, CLAMP)` (a local macro of the caller's) with the rounding
/// and the clamp of `$rg` (a [`Regs16`]) as constants, one arm per pair:
/// the 512-bit epilogue's kernels take them as const generics.
macro_rules! by_rounding {
    ($rg:expr, $go:ident) => {{
        use $crate::engine::fused::{FLOOR, NEAREST, TRUNC};
        use $crate::engine::gemm::TRUNC_ADD;
        match ($rg.div(), $rg.clamp()) {
            (FLOOR, true) => $go!(FLOOR, true),
            (FLOOR, false) => $go!(FLOOR, false),
            (TRUNC, true) => $go!(TRUNC, true),
            (TRUNC, false) => $go!(TRUNC, false),
            (TRUNC_ADD, true) => $go!(TRUNC_ADD, true),
            (TRUNC_ADD, false) => $go!(TRUNC_ADD, false),
            (_, true) => $go!(NEAREST, true),
            (_, false) => $go!(NEAREST, false),
        }
    }};
}
pub(super) use by_rounding;

/// [`BlockOut::finish16`]'s constants in 512-bit registers.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Regs16 {
    /// The shift in every lane (`vpsravd`/`vpsrlvd`: one micro-op, where
    /// the shift by an `xmm` count takes two).
    count: std::arch::x86_64::__m512i,
    half: std::arch::x86_64::__m512i,
    /// `2^shift - 1`, where `shift <= 30` ([`TRUNC_ADD`]); else 0.
    below: std::arch::x86_64::__m512i,
    lo: std::arch::x86_64::__m512i,
    hi: std::arch::x86_64::__m512i,
    /// The rounding: [`FLOOR`], [`TRUNC`], [`TRUNC_ADD`] or [`NEAREST`].
    div: u8,
    clamp: bool,
    /// The i64 form ([`Epilogue::wide`]): the sums `x * m + b` in i64
    /// lanes, even and odd lanes apart, the quotients in i32.
    wide: bool,
    /// The i64 form's shift (at most 31, as `WideRound`'s), `2^shift - 1`
    /// and `2^(shift - 1)` in i64 lanes.
    count64: std::arch::x86_64::__m128i,
    mask64: std::arch::x86_64::__m512i,
    half64: std::arch::x86_64::__m512i,
}

#[cfg(target_arch = "x86_64")]
impl Regs16 {
    /// The constants of requantization `e` (its shift, output range,
    /// rounding, clamp, and whether it is the i64 form).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx2,avx512f")]
    pub(super) unsafe fn of(e: &Epilogue) -> Regs16 {
        // SAFETY: AVX-512 F, this function's own feature.
        unsafe { Regs16::new(e.shift, e.lo, e.hi, e.div, e.clamp, e.wide) }
    }

    /// The constants of a requantization: its shift, output range `[lo,
    /// hi]`, rounding, clamp, and whether it is the i64 form
    /// ([`Epilogue::wide`]).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx2,avx512f")]
    unsafe fn new(shift: u32, lo: i32, hi: i32, div: Div, clamp: bool, wide: bool) -> Regs16 {
        use std::arch::x86_64::*;
        Regs16 {
            count: _mm512_set1_epi32(shift as i32),
            half: _mm512_set1_epi32(if shift == 0 {
                0
            } else {
                1i32 << (shift.min(31) - 1)
            }),
            below: _mm512_set1_epi32(if shift <= 30 { (1 << shift) - 1 } else { 0 }),
            lo: _mm512_set1_epi32(lo),
            hi: _mm512_set1_epi32(hi),
            div: match div {
                // The shorter form of truncation where `2^shift - 1` fits.
                Div::Trunc if shift <= 30 => TRUNC_ADD,
                Div::Trunc => TRUNC,
                Div::Floor => FLOOR,
                Div::Nearest => NEAREST,
            },
            clamp,
            wide,
            count64: _mm_cvtsi32_si128(shift.min(31) as i32),
            mask64: _mm512_set1_epi64((1i64 << shift.min(31)) - 1),
            half64: _mm512_set1_epi64(match shift.min(31) {
                0 => 0,
                s => 1i64 << (s - 1),
            }),
        }
    }

    /// The i64 form of [`Regs16::scale`] and [`Regs16::round`] (without
    /// the clamp) on sixteen sums `x` already clamped to the channel's
    /// `[xlo, xhi]`: `x * m + b` in i64 lanes (`vpmuldq` of the even lanes,
    /// then of the odd ones shifted down), divided by `2^shift` in the
    /// rounding `DIV` (`self.div()`), the quotients (which fit i32,
    /// `wide_row_consts`) back in their i32 lanes: `WideRound::quotients8`
    /// in 512-bit registers. The low half of a logical shift is the
    /// arithmetic one's for shifts up to 32.
    #[target_feature(enable = "avx2,avx512f")]
    #[inline]
    pub(super) fn wide_quotients<const DIV: u8>(
        &self,
        x: std::arch::x86_64::__m512i,
        m: i32,
        b: i32,
    ) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        let (m, b) = (_mm512_set1_epi64(m as i64), _mm512_set1_epi64(b as i64));
        let zero = _mm512_setzero_si512();
        let quot = |v: __m512i| {
            let s = _mm512_add_epi64(_mm512_mul_epi32(v, m), b);
            match DIV {
                FLOOR => _mm512_srl_epi64(s, self.count64),
                TRUNC | TRUNC_ADD => {
                    let neg = _mm512_cmplt_epi64_mask(s, zero);
                    _mm512_srl_epi64(_mm512_mask_add_epi64(s, neg, s, self.mask64), self.count64)
                }
                _ => {
                    let neg = _mm512_cmplt_epi64_mask(s, zero);
                    let t = _mm512_srl_epi64(
                        _mm512_add_epi64(_mm512_abs_epi64(s), self.half64),
                        self.count64,
                    );
                    _mm512_mask_sub_epi64(t, neg, zero, t)
                }
            }
        };
        let even = quot(x);
        let odd = quot(_mm512_srli_epi64::<32>(x));
        _mm512_mask_blend_epi32(0xaaaa, even, _mm512_slli_epi64::<32>(odd))
    }

    /// The rounding ([`FLOOR`], [`TRUNC`], [`TRUNC_ADD`] or [`NEAREST`]),
    /// for the callers' dispatch to [`Regs16::round`].
    pub(super) fn div(&self) -> u8 {
        self.div
    }

    /// Whether the rounded values are clamped to `[lo, hi]`.
    pub(super) fn clamp(&self) -> bool {
        self.clamp
    }

    /// The first half of `Regs::one`'s arithmetic on sixteen sums of one
    /// row: clamped to `[xlo, xhi]`, then `x * m + b` in wrapping i32.
    #[target_feature(enable = "avx2,avx512f")]
    #[inline]
    pub(super) fn scale(
        a: std::arch::x86_64::__m512i,
        xlo: std::arch::x86_64::__m512i,
        xhi: std::arch::x86_64::__m512i,
        m: std::arch::x86_64::__m512i,
        b: std::arch::x86_64::__m512i,
    ) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        let x = _mm512_min_epi32(_mm512_max_epi32(a, xlo), xhi);
        _mm512_add_epi32(_mm512_mullo_epi32(x, m), b)
    }

    /// The second half: `s` divided by `2^shift` in the rounding `DIV`
    /// (which must be `self.div()`), then, with `CLAMP`, clamped to `[lo,
    /// hi]`.
    #[target_feature(enable = "avx2,avx512f")]
    #[inline]
    pub(super) fn round<const DIV: u8, const CLAMP: bool>(
        &self,
        s: std::arch::x86_64::__m512i,
    ) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        let zero = _mm512_setzero_si512();
        let neg = _mm512_cmplt_epi32_mask(s, zero);
        let q = match DIV {
            FLOOR => _mm512_srav_epi32(s, self.count),
            // |s| shifted, the sign restored (as `round8`'s `vpsignd`: a
            // zero stays zero).
            TRUNC => {
                let a = _mm512_srlv_epi32(_mm512_abs_epi32(s), self.count);
                _mm512_mask_sub_epi32(a, neg, zero, a)
            }
            // A negative sum plus `2^shift - 1`, then the floor shift: the
            // quotient rounded up, toward zero (no overflow: the sum is
            // negative and the addend below 2^31).
            TRUNC_ADD => {
                _mm512_srav_epi32(_mm512_mask_add_epi32(s, neg, s, self.below), self.count)
            }
            _ => {
                let a = _mm512_abs_epi32(s);
                let q = _mm512_srav_epi32(_mm512_add_epi32(a, self.half), self.count);
                _mm512_mask_sub_epi32(q, neg, zero, q)
            }
        };
        if CLAMP {
            _mm512_min_epi32(_mm512_max_epi32(q, self.lo), self.hi)
        } else {
            q
        }
    }
}

/// [`BlockOut::finish16`]'s truncation in three operations (a negative sum
/// plus `2^shift - 1`, shifted as the floor), where `shift <= 30`; the
/// same quotients as [`TRUNC`]'s four (|s| shifted, the sign restored).
#[cfg(target_arch = "x86_64")]
pub(super) const TRUNC_ADD: u8 = 3;

/// The sixteen i32 lanes of `v` (each in `0..=255`) as bytes, the lanes of
/// `keep` stored at `dst..dst + 16`: `vpmovdb` into a register, then a
/// masked byte store. (The memory form of `vpmovdb` is several times slower
/// on AMD Zen 4, and no faster elsewhere.)
///
/// # Safety
///
/// AVX-512 F and BW; the kept lanes' bytes lie in one allocation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
#[inline]
pub(super) unsafe fn store_bytes16(
    dst: *mut u8,
    keep: std::arch::x86_64::__mmask16,
    v: std::arch::x86_64::__m512i,
) {
    use std::arch::x86_64::*;
    // The 512-bit byte store (AVX-512 BW; the 128-bit one would need VL)
    // with only the low sixteen bytes kept.
    let b = _mm512_castsi128_si512(_mm512_cvtepi32_epi8(v));
    // SAFETY: the caller's (the kept bytes are writable).
    unsafe { _mm512_mask_storeu_epi8(dst as *mut i8, keep as __mmask64, b) }
}

/// One AMX tile of sums for [`BlockOut::tile16`]: row `r < rows` of
/// `tile` (16 i32 from `16 r`; with `n = 8` the first 8, repeated in the
/// high half) is channel `o + r`'s sums of blocks `g.0` and `g.1`, less
/// `comp[o + r]` where given.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct TileRows<'t> {
    pub tile: &'t [i32; 256],
    pub n: usize,
    pub o: usize,
    pub rows: usize,
    pub g: (usize, usize),
    pub comp: Option<&'t [i32]>,
}

/// Where [`madd_kernel`]'s blocks of eight rows x eight positions of sums
/// go: the fused requantization (where given), then the store into `out`.
#[cfg(target_arch = "x86_64")]
pub(super) struct BlockOut<'a, 'e> {
    out: Dst<'a>,
    regs: Option<Regs>,
    erows: &'e [super::fused::RowConsts],
    second: Option<super::fused::Second<'e>>,
    p: usize,
    /// The pairs of rows of a packed output.
    kp_out: usize,
    peak: std::arch::x86_64::__m256i,
    /// The requantization's shift, output range, rounding, clamp and
    /// whether it is the i64 form (one term, or in i32 lanes two with
    /// [`BlockOut::second`]), for [`BlockOut::finish16`].
    plain: Option<(u32, i32, i32, Div, bool, bool)>,
}

#[cfg(target_arch = "x86_64")]
impl<'a, 'e> BlockOut<'a, 'e> {
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn new(out: Dst<'a>, epi: Option<&'e Epilogue>, p: usize, m: usize) -> Self {
        BlockOut {
            out,
            // SAFETY: AVX2 is this function's own feature.
            regs: epi.map(|e| unsafe { Regs::new(e) }),
            erows: epi.map_or(&[][..], |e| e.rows),
            second: epi.and_then(|e| e.second),
            p,
            kp_out: m.div_ceil(2),
            peak: std::arch::x86_64::_mm256_setzero_si256(),
            plain: epi.map(|e| (e.shift, e.lo, e.hi, e.div, e.clamp, e.wide)),
        }
    }

    /// The 512-bit epilogue's constants, where [`BlockOut::finish16`]
    /// applies (a requantization in i32 lanes, of one term or two).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx2,avx512f")]
    pub(super) unsafe fn regs16(&self) -> Option<Regs16> {
        // SAFETY: AVX-512 F, this function's own feature.
        self.plain.map(|(shift, lo, hi, div, clamp, wide)| unsafe {
            Regs16::new(shift, lo, hi, div, clamp, wide)
        })
    }

    /// [`BlockOut::finish`] of two blocks of positions at once: `acc[r]`
    /// holds row `o + r`'s sums of block `g.0` (low half) and `g.1` (high
    /// half; where `g.1 == g.0` a copy of the low half, not stored). The
    /// largest |sum|, the requantization of `rg` (`Regs::one`'s arithmetic
    /// on sixteen lanes: clamp, `x * m + b` wrapping, the rounding shift,
    /// the clamp; with a second term `Regs::block2`'s: `y * m2` added
    /// before the shift, then always the clamp) and the store, rows or the
    /// next conv's pairs.
    ///
    /// # Safety
    ///
    /// AVX-512 F and BW; `rg` from [`BlockOut::regs16`]; `o + rows <= m`
    /// and the blocks `< p.div_ceil(8)`, as [`BlockOut::finish`].
    #[target_feature(enable = "avx2,avx512f,avx512bw")]
    pub(super) unsafe fn finish16(
        &mut self,
        rg: &Regs16,
        acc: &mut [std::arch::x86_64::__m512i; MADD_ROWS],
        o: usize,
        rows: usize,
        g: (usize, usize),
    ) {
        // The i64 form: one term, always clamped (`Epilogue::wide`).
        if rg.wide {
            match rg.div {
                FLOOR => self.rows16::<FLOOR, true, false, true>(rg, acc, o, rows, g),
                TRUNC | TRUNC_ADD => self.rows16::<TRUNC, true, false, true>(rg, acc, o, rows, g),
                _ => self.rows16::<NEAREST, true, false, true>(rg, acc, o, rows, g),
            }
            return;
        }
        // Two terms: always clamped.
        if self.second.is_some() {
            match rg.div {
                FLOOR => self.rows16::<FLOOR, true, true, false>(rg, acc, o, rows, g),
                TRUNC => self.rows16::<TRUNC, true, true, false>(rg, acc, o, rows, g),
                TRUNC_ADD => self.rows16::<TRUNC_ADD, true, true, false>(rg, acc, o, rows, g),
                _ => self.rows16::<NEAREST, true, true, false>(rg, acc, o, rows, g),
            }
            return;
        }
        macro_rules! go {
            ($div:ident, $clamp:literal) => {
                self.rows16::<$div, $clamp, false, false>(rg, acc, o, rows, g)
            };
        }
        by_rounding!(rg, go)
    }

    #[target_feature(enable = "avx2,avx512f,avx512bw")]
    #[inline]
    fn rows16<const DIV: u8, const CLAMP: bool, const TWO: bool, const WIDE: bool>(
        &mut self,
        rg: &Regs16,
        acc: &mut [std::arch::x86_64::__m512i; MADD_ROWS],
        o: usize,
        rows: usize,
        g: (usize, usize),
    ) {
        use std::arch::x86_64::*;
        let p = self.p;
        let i = 8 * g.0;
        // Lanes of positions below `p` (the high half only where it is a
        // block of its own).
        let n = if g.1 == g.0 { 8 } else { 16 }.min(p - i);
        let keep: __mmask16 = ((1u32 << n) - 1) as __mmask16;
        let mut peak = _mm512_setzero_si512();
        let zero = _mm512_setzero_si512();
        for (r, a) in acc.iter_mut().enumerate().take(rows) {
            peak = _mm512_max_epu32(peak, _mm512_abs_epi32(*a));
            let rc = &self.erows[o + r];
            if WIDE {
                let x = _mm512_min_epi32(
                    _mm512_max_epi32(*a, _mm512_set1_epi32(rc.xlo)),
                    _mm512_set1_epi32(rc.xhi),
                );
                let q = rg.wide_quotients::<DIV>(x, rc.m, rc.b);
                *a = _mm512_min_epi32(_mm512_max_epi32(q, rg.lo), rg.hi);
                continue;
            }
            let mut s = Regs16::scale(
                *a,
                _mm512_set1_epi32(rc.xlo),
                _mm512_set1_epi32(rc.xhi),
                _mm512_set1_epi32(rc.m),
                _mm512_set1_epi32(rc.b),
            );
            if let (true, Some(sec)) = (TWO, &self.second) {
                // SAFETY: the lanes kept lie at positions `i..i + n <= p`
                // of row `o + r < m` of `y` (`Epilogue::holds(m, p)`); the
                // others are not read.
                let y = unsafe {
                    _mm512_maskz_loadu_epi32(keep, sec.y.as_ptr().wrapping_add((o + r) * p + i))
                };
                s = _mm512_add_epi32(s, _mm512_mullo_epi32(y, _mm512_set1_epi32(sec.m2[o + r])));
            }
            *a = rg.round::<DIV, CLAMP>(s);
        }
        // The largest |sum| of the lanes in `p` (past it the sums are 0;
        // a copied high half repeats the low one).
        self.peak = _mm256_max_epu32(
            self.peak,
            _mm256_max_epu32(
                _mm512_castsi512_si256(peak),
                _mm512_extracti64x4_epi64::<1>(peak),
            ),
        );
        // SAFETY (the stores): the lanes kept lie at positions `i..i + n <=
        // p` of rows `o + r < m`, inside `out` (`m * p`); a packed output
        // writes pair `o / 2 + j` of blocks `g.0` and `g.1` (`< p.div_ceil(8)`),
        // inside `packed_len(kp_out, p)` (the caller's lengths).
        match &mut self.out {
            // One term in i32 lanes only (`gemm_madd_with`): the values in
            // `-z..=255 - z` (`fused::bytes_output`), stored as `v + z`.
            Dst::Bytes(out, z) => {
                let zv = _mm512_set1_epi32(*z);
                let dst = out.as_mut_ptr().wrapping_add(o * p + i);
                for (r, a) in acc.iter().enumerate().take(rows) {
                    let b = _mm512_add_epi32(*a, zv);
                    unsafe { store_bytes16(dst.wrapping_add(r * p), keep, b) };
                }
            }
            Dst::Rows(out) => {
                let dst = out.as_mut_ptr().wrapping_add(o * p + i);
                for (r, a) in acc.iter().enumerate().take(rows) {
                    unsafe { _mm512_mask_storeu_epi32(dst.wrapping_add(r * p), keep, *a) };
                }
            }
            Dst::Packed(pk) => {
                for j in 0..rows.div_ceil(2) {
                    // Row `2j` in the low i16 of each word, row `2j + 1`
                    // (or 0) in the high one (the values fit i16); lanes
                    // past `p` zero.
                    let hi = if 2 * j + 1 < rows {
                        _mm512_slli_epi32::<16>(acc[2 * j + 1])
                    } else {
                        zero
                    };
                    let v = _mm512_mask_blend_epi16(0xaaaa_aaaa, acc[2 * j], hi);
                    let v = if n == 16 {
                        v
                    } else {
                        _mm512_maskz_mov_epi32(keep, v)
                    };
                    let at = |b: usize| (b * self.kp_out + o / 2 + j) * 16;
                    unsafe {
                        _mm256_storeu_si256(
                            pk.as_mut_ptr().add(at(g.0)) as *mut __m256i,
                            _mm512_castsi512_si256(v),
                        );
                        if g.1 != g.0 {
                            _mm256_storeu_si256(
                                pk.as_mut_ptr().add(at(g.1)) as *mut __m256i,
                                _mm512_extracti64x4_epi64::<1>(v),
                            );
                        }
                    }
                }
            }
        }
    }

    /// One AMX tile of sums straight from memory (`t`, [`TileRows`]), where
    /// the epilogue is in i32 lanes (one term or two) into rows or bytes
    /// (not the i64 form, not a packed output; else false, nothing done).
    /// The same arithmetic as
    /// [`BlockOut::finish16`] (the largest |sum|, [`Regs16::scale`],
    /// [`Regs16::round`], the store of the lanes below `p`: i32, or the
    /// low byte of `v + z`), one row at a time with no array of registers
    /// between the load and the store.
    ///
    /// # Safety
    ///
    /// AVX-512 F and BW; `rg` from [`BlockOut::regs16`]; `t.o + t.rows <=
    /// m`, `t.rows <= 16`, the blocks `< p.div_ceil(8)` (`t.g.1 == t.g.0`
    /// or `t.g.0 + 1`), `t.comp` (where given) `>= t.o + t.rows` values.
    #[target_feature(enable = "avx2,avx512f,avx512bw")]
    #[inline]
    pub(super) unsafe fn tile16(&mut self, rg: &Regs16, t: &TileRows) -> bool {
        if rg.wide || matches!(self.out, Dst::Packed(_)) {
            return false;
        }
        let two = self.second.is_some();
        // Two terms: always clamped (as `finish16`).
        macro_rules! go {
            ($div:ident, $clamp:literal) => {
                // SAFETY (each arm): the caller's (this function's `# Safety`).
                match (t.comp.is_some(), two) {
                    (true, false) => unsafe { self.tile_rows::<$div, $clamp, true, false>(rg, t) },
                    (false, false) => unsafe {
                        self.tile_rows::<$div, $clamp, false, false>(rg, t)
                    },
                    (true, true) => unsafe { self.tile_rows::<$div, true, true, true>(rg, t) },
                    (false, true) => unsafe { self.tile_rows::<$div, true, false, true>(rg, t) },
                }
            };
        }
        by_rounding!(rg, go);
        true
    }

    /// [`BlockOut::tile16`]'s loop for one rounding, clamp, whether a
    /// correction is subtracted (`COMP`: `t.comp` is given) and whether
    /// there is a second term (`TWO`: `y * m2` added before the rounding,
    /// as in `finish16`).
    ///
    /// # Safety
    ///
    /// As [`BlockOut::tile16`], with `rows <= 16`.
    #[target_feature(enable = "avx2,avx512f,avx512bw")]
    #[inline]
    unsafe fn tile_rows<const DIV: u8, const CLAMP: bool, const COMP: bool, const TWO: bool>(
        &mut self,
        rg: &Regs16,
        t: &TileRows,
    ) {
        use std::arch::x86_64::*;
        let TileRows {
            tile,
            n,
            o,
            rows,
            g,
            comp,
        } = *t;
        let comp = comp.unwrap_or(&[]);
        let p = self.p;
        let i = 8 * g.0;
        let lanes = if g.1 == g.0 { 8 } else { 16 }.min(p - i);
        let keep: __mmask16 = ((1u32 << lanes) - 1) as __mmask16;
        // The rows, or their bytes plus the offset `z`.
        let (dst, dst8, z, len) = match &mut self.out {
            Dst::Rows(out) => (out.as_mut_ptr(), std::ptr::null_mut(), None, out.len()),
            Dst::Bytes(out, z) => (std::ptr::null_mut(), out.as_mut_ptr(), Some(*z), out.len()),
            Dst::Packed(_) => return,
        };
        let zv = _mm512_set1_epi32(z.unwrap_or(0));
        let rows = rows.min(16);
        assert!(o + rows <= self.erows.len() && (!COMP || comp.len() >= o + rows));
        assert!(rows == 0 || (o + rows - 1) * p + i + lanes <= len);
        let second = self.second.as_ref().filter(|_| TWO);
        assert!(second.is_none_or(|sec| sec.holds(o + rows, p)) && (!TWO || second.is_some()));
        let at = o * p + i;
        let mut peak = _mm512_setzero_si512();
        for (r, rc) in self.erows[o..o + rows].iter().enumerate() {
            let row = tile[16 * r..].as_ptr();
            // SAFETY: row `r < 16` of the tile: 16 aligned i32 (with `n = 8`
            // the first 8, repeated in the high half, which is not stored but
            // taken in the largest |sum| as `emit` does).
            let mut a = unsafe {
                match n {
                    16 => _mm512_load_si512(row as *const _),
                    _ => _mm512_broadcast_i64x4(_mm256_load_si256(row as *const __m256i)),
                }
            };
            if COMP {
                a = _mm512_sub_epi32(a, _mm512_set1_epi32(comp[o + r]));
            }
            peak = _mm512_max_epu32(peak, _mm512_abs_epi32(a));
            let mut s = Regs16::scale(
                a,
                _mm512_set1_epi32(rc.xlo),
                _mm512_set1_epi32(rc.xhi),
                _mm512_set1_epi32(rc.m),
                _mm512_set1_epi32(rc.b),
            );
            if let Some(sec) = second {
                // SAFETY: the lanes kept lie at positions `i..i + lanes <= p`
                // of row `o + r` of `y` (`holds`, asserted); the others are
                // not read.
                let y = unsafe {
                    _mm512_maskz_loadu_epi32(keep, sec.y.as_ptr().wrapping_add((o + r) * p + i))
                };
                s = _mm512_add_epi32(s, _mm512_mullo_epi32(y, _mm512_set1_epi32(sec.m2[o + r])));
            }
            let q = rg.round::<DIV, CLAMP>(s);
            // SAFETY: the lanes kept lie at positions `i..i + lanes <= p` of
            // row `o + r < m`, inside `out` (asserted).
            unsafe {
                match z {
                    None => _mm512_mask_storeu_epi32(dst.wrapping_add(at + r * p), keep, q),
                    Some(_) => {
                        store_bytes16(dst8.wrapping_add(at + r * p), keep, _mm512_add_epi32(q, zv))
                    }
                }
            }
        }
        self.peak = _mm256_max_epu32(
            self.peak,
            _mm256_max_epu32(
                _mm512_castsi512_si256(peak),
                _mm512_extracti64x4_epi64::<1>(peak),
            ),
        );
    }

    /// Rows `o..o + rows` (`rows <= 8`) of sums of blocks `g.0` (the low
    /// halves of `acc`) and `g.1` (the high halves; where `g.1 == g.0` not
    /// used): [`BlockOut::finish16`] where `rg` is given
    /// ([`BlockOut::regs16`]), else [`BlockOut::finish`] per half.
    ///
    /// # Safety
    ///
    /// AVX-512 F and BW; as [`BlockOut::finish16`].
    #[target_feature(enable = "avx2,avx512f,avx512bw")]
    #[inline]
    pub(super) unsafe fn finish_pair(
        &mut self,
        rg: Option<&Regs16>,
        acc: &mut [std::arch::x86_64::__m512i; MADD_ROWS],
        o: usize,
        rows: usize,
        g: (usize, usize),
    ) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's bounds (this function's `# Safety`).
        unsafe {
            if let Some(rg) = rg {
                // Both blocks' epilogue in 512-bit registers.
                self.finish16(rg, acc, o, rows, g);
                return;
            }
            let mut half: [__m256i; MADD_ROWS] =
                std::array::from_fn(|r| _mm512_castsi512_si256(acc[r]));
            self.finish(&mut half, o, rows, g.0);
            if g.1 != g.0 {
                let mut half: [__m256i; MADD_ROWS] =
                    std::array::from_fn(|r| _mm512_extracti64x4_epi64::<1>(acc[r]));
                self.finish(&mut half, o, rows, g.1);
            }
        }
    }

    /// The largest |sum| of the blocks so far (with an epilogue).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn peak(&self) -> u32 {
        // SAFETY: AVX2 is this function's own feature.
        unsafe { hmax_u32(self.peak) }
    }

    /// Rows `o..o + rows` (`rows <= 8`) x positions of block `b` of sums,
    /// `acc[r]` row `o + r`: requantized where there is an epilogue (the
    /// largest |sum| taken first; lanes past the positions hold 0), then
    /// stored.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2; `o + rows <= m` and `b < p.div_ceil(8)`,
    /// with `out` and the epilogue holding [`madd_kernel`]'s lengths.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn finish(
        &mut self,
        acc: &mut [std::arch::x86_64::__m256i; MADD_ROWS],
        o: usize,
        rows: usize,
        b: usize,
    ) {
        use std::arch::x86_64::*;
        let (p, i) = (self.p, b * 8);
        // SAFETY: AVX2 is this function's own feature; the stores write
        // `(o + r) * p + i..+8` with `o + r < m` and `i + 8 <= p` inside
        // `out` (`m * p`), the last partial block through `last` and checked
        // slices, a packed output pair `o / 2 + j` of block `b` inside
        // `packed_len(kp_out, p)` (the caller's lengths).
        unsafe {
            match (&self.regs, &self.second) {
                // The fused requantization: the largest |sum| (any lanes
                // past the positions hold 0), then each row's sums
                // requantized; a whole block of rows at once.
                (Some(rg), None) => rg.block(acc, rows, &self.erows[o..], &mut self.peak),
                // With a second term (rows `o..o + rows`, positions `i..`,
                // inside it: `Epilogue::holds(m, p)`).
                (Some(rg), Some(s)) => {
                    rg.block2(acc, rows, &self.erows[o..], s, o, i, &mut self.peak)
                }
                (None, _) => {}
            }
            match &mut self.out {
                // Never here (AVX-512 and AMX only, `tile16`).
                Dst::Bytes(..) => unreachable!("a bytes output in the AVX2 epilogue"),
                Dst::Packed(pk) => {
                    // Rows `o + 2j`, `o + 2j + 1` as pair `o / 2 + j` of
                    // block `b`; lanes past `p` and a missing last odd row
                    // zero.
                    let keep = first_lanes(p - i);
                    let low = _mm256_set1_epi32(0xffff);
                    for j in 0..rows.div_ceil(2) {
                        let lo = _mm256_and_si256(_mm256_and_si256(acc[2 * j], keep), low);
                        let hi = if 2 * j + 1 < rows {
                            _mm256_slli_epi32(_mm256_and_si256(acc[2 * j + 1], keep), 16)
                        } else {
                            _mm256_setzero_si256()
                        };
                        let at = (b * self.kp_out + o / 2 + j) * 16;
                        _mm256_storeu_si256(
                            pk.as_mut_ptr().add(at) as *mut __m256i,
                            _mm256_or_si256(lo, hi),
                        );
                    }
                }
                Dst::Rows(out) if i + 8 <= p => {
                    let dst = out.as_mut_ptr().add(o * p + i);
                    for (r, a) in acc.iter().enumerate().take(rows) {
                        _mm256_storeu_si256(dst.add(r * p) as *mut __m256i, *a);
                    }
                }
                Dst::Rows(out) => {
                    let mut last = [0i32; 8];
                    for (r, a) in acc.iter().enumerate().take(rows) {
                        _mm256_storeu_si256(last.as_mut_ptr() as *mut __m256i, *a);
                        out[(o + r) * p + i..(o + r + 1) * p].copy_from_slice(&last[..p - i]);
                    }
                }
            }
        }
    }
}

/// `out[m] = w[m x k] * x[k]` (one position, e.g. a fc layer) with
/// `vpmaddwd` on the [`madd_weights`] layout as it is: per block of eight
/// rows and pair `j` of inputs, the block's eight weight pairs (one load)
/// times the pair `(x[2j], x[2j + 1])` broadcast, so no lane is spent on
/// the seven missing positions of [`madd_kernel`]'s blocks. The same exact
/// pair sums (i16 operands, not both -2^15).
///
/// # Safety
///
/// The CPU must support AVX2; `wp.len() >= madd_group_len(m, k)`, `x.len()
/// >= k` and `out.len() >= m`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn madd_gemv(wp: &[i32], m: usize, k: usize, x: &[i32], out: &mut [i32]) {
    use std::arch::x86_64::*;
    let kp = k.div_ceil(2);
    assert!(wp.len() >= madd_group_len(m, k) && x.len() >= k && out.len() >= m);
    let pairs: Vec<i32> = (0..kp)
        .map(|j| {
            let hi = if 2 * j + 1 < k { x[2 * j + 1] } else { 0 };
            ((x[2 * j] as u16 as u32) | ((hi as u32) << 16)) as i32
        })
        .collect();
    for o in (0..m).step_by(MADD_ROWS) {
        let wb = &wp[o * kp..(o + MADD_ROWS) * kp];
        // Two sums, even and odd pairs, so consecutive adds do not wait.
        let (mut a0, mut a1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let mut j = 0;
        // SAFETY (the loads): pair `j < kp` of the block is `wb[8 j..8 j +
        // 8]`, inside `wb` (`8 kp`, a checked slice).
        while j + 2 <= kp {
            unsafe {
                let w0 = _mm256_loadu_si256(wb.as_ptr().add(8 * j) as *const __m256i);
                let w1 = _mm256_loadu_si256(wb.as_ptr().add(8 * j + 8) as *const __m256i);
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(w0, _mm256_set1_epi32(pairs[j])));
                a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(w1, _mm256_set1_epi32(pairs[j + 1])));
            }
            j += 2;
        }
        if j < kp {
            unsafe {
                let w0 = _mm256_loadu_si256(wb.as_ptr().add(8 * j) as *const __m256i);
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(w0, _mm256_set1_epi32(pairs[j])));
            }
        }
        let mut sums = [0i32; MADD_ROWS];
        // SAFETY: `sums` is 8 i32 (an unaligned store).
        unsafe { _mm256_storeu_si256(sums.as_mut_ptr() as *mut __m256i, _mm256_add_epi32(a0, a1)) };
        let rows = (m - o).min(MADD_ROWS);
        out[o..o + rows].copy_from_slice(&sums[..rows]);
    }
}

/// im2col of channels `c0..c0+cn` of a `[C, ih, iw]` image:
/// rows `(c, ky, kx)`, columns output positions.
#[allow(clippy::too_many_arguments)]
pub(super) fn im2col<T: Num>(
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
/// With `epi`, `out` gets the requantized values (see [`madd_kernel`]).
/// Returns false (nothing done) without AVX2 or where `pairs` is not the
/// layer's [`madd_weights`].
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_im2col_madd(
    l: &ConvLayer,
    input: &[i32],
    pairs: &[i32],
    packed: &mut Vec<i16>,
    rows: &mut Vec<i16>,
    out: &mut [i32],
    mut epi: Option<&mut Epilogue>,
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
        if pairs.len() != l.groups * per_group || epi.as_ref().is_some_and(|e| !e.holds(l.cout, p))
        {
            return false;
        }
        size_packed(packed, kp, p);
        rows.resize(2 * p, 0);
        for g in 0..l.groups {
            // SAFETY: AVX2 is present (checked above); `pack_group` asserts
            // its lengths.
            unsafe { pack_group(l, input, g, kk, kp, rows, packed) };
            // Group `g`'s rows of the fused requantization.
            let mut ge = epi.as_deref().map(|e| e.rows_from(g * cout_g));
            // SAFETY: AVX2 is present; `packed` was sized to
            // `packed_len(kp, p)`, group `g`'s output is a slice of
            // `cout_g * p` and `ge` has its `cout_g` rows (checked above):
            // the kernel's `# Safety`.
            unsafe {
                madd_kernel(
                    &pairs[g * per_group..(g + 1) * per_group],
                    cout_g,
                    kk,
                    packed,
                    p,
                    Dst::Rows(&mut out[g * cout_g * p..(g + 1) * cout_g * p]),
                    ge.as_mut(),
                )
            };
            if let (Some(e), Some(ge)) = (epi.as_deref_mut(), ge) {
                e.peak = e.peak.max(ge.peak);
            }
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (l, input, pairs, packed, rows, out, epi);
        false
    }
}

/// Whether `l` is a 2x2 conv of stride 2 without padding: its patches do
/// not overlap and each im2col row pair is two neighbouring values of one
/// input row, so [`pack_group`] packs it straight from the image and the
/// im2col kernel runs it (not `direct.rs`, whose per-tap layout costs more
/// there).
pub(super) fn patch2_conv(l: &ConvLayer) -> bool {
    l.kernel == 2 && l.stride == 2 && l.padding == 0
}

/// The im2col rows of group `g` as i16 pairs in the [`packed_len`] layout
/// (compiled with AVX2 so the row copies and conversions vectorise).
///
/// # Safety
///
/// The CPU must support AVX2. The lengths are asserted (`rows.len() >= 2 *
/// p`, `packed.len() >= packed_len(kp, p)`, `p` the layer's output
/// positions) or bounds-checked (`input`): a short slice panics.
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
    let [oh, ow] = l.out_hw;
    if k == 1 && l.stride == 2 && l.padding == 0 && ow % 8 == 0 && 2 * ow <= iw && 2 * oh <= ih + 1
    {
        // A 1x1 stride-2 conv (ResNet's downsampling shortcuts): the even
        // columns of the even rows, eight positions of a pair of channels
        // per block straight from the image (two loads and a permute per
        // channel, no im2col row).
        let evens = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
        let low = _mm256_set1_epi32(0xffff);
        for j in 0..kp {
            let ch = |h: usize| (2 * j + h < kk).then(|| (g * cin_g + 2 * j + h) * ih * iw);
            let (ca, cb) = (ch(0), ch(1));
            for oy in 0..oh {
                for ox in (0..ow).step_by(8) {
                    // Sixteen words from column `2 ox` of row `2 oy`: inside
                    // the channel (`2 ox + 16 <= 2 ow <= iw`, `2 oy < ih`),
                    // bounds-checked.
                    let at = 2 * oy * iw + 2 * ox;
                    let even8 = |base: usize| {
                        let src = &input[base + at..base + at + 16];
                        // SAFETY: AVX2 is this function's own feature;
                        // `src` holds 16 i32.
                        unsafe {
                            let v0 = _mm256_loadu_si256(src.as_ptr() as *const __m256i);
                            let v1 = _mm256_loadu_si256(src.as_ptr().add(8) as *const __m256i);
                            _mm256_permute2x128_si256::<0x20>(
                                _mm256_permutevar8x32_epi32(v0, evens),
                                _mm256_permutevar8x32_epi32(v1, evens),
                            )
                        }
                    };
                    let lo = ca.map_or(_mm256_setzero_si256(), |c| _mm256_and_si256(even8(c), low));
                    let hi = cb.map_or(_mm256_setzero_si256(), |c| {
                        _mm256_slli_epi32::<16>(even8(c))
                    });
                    let dst = &mut packed[((oy * ow + ox) / 8 * kp + j) * 16..][..16];
                    // SAFETY: `dst` holds 16 i16 (a checked slice).
                    unsafe {
                        _mm256_storeu_si256(
                            dst.as_mut_ptr() as *mut __m256i,
                            _mm256_or_si256(lo, hi),
                        )
                    };
                }
            }
        }
        return;
    }
    if patch2_conv(l) && ow % 8 == 0 && 2 * ow <= iw && 2 * oh <= ih {
        // A 2x2 stride-2 conv (ToyNet's downsampling): im2col row pair `j`
        // is channel `j / 2`'s taps `(ky, 0)` and `(ky, 1)`, `ky = j % 2`,
        // so each pair word is two neighbouring values of input row `2 oy
        // + ky`: eight words from sixteen values (their low halves picked
        // by a byte shuffle), no im2col row.
        let pick = _mm256_setr_epi8(
            0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9, 12, 13, -1,
            -1, -1, -1, -1, -1, -1, -1,
        );
        for j in 0..kp {
            let (c, ky) = (g * cin_g + j / 2, j % 2);
            let plane = &input[c * ih * iw..(c + 1) * ih * iw];
            for oy in 0..oh {
                let row = &plane[(2 * oy + ky) * iw..(2 * oy + ky + 1) * iw];
                for ox in (0..ow).step_by(8) {
                    // Sixteen values from column `2 ox` (`2 ox + 16 <= 2 ow
                    // <= iw`), bounds-checked.
                    let src = &row[2 * ox..2 * ox + 16];
                    let dst = &mut packed[((oy * ow + ox) / 8 * kp + j) * 16..][..16];
                    // SAFETY: AVX2 is this function's own feature; `src`
                    // holds 16 i32 and `dst` 16 i16 (checked slices).
                    unsafe {
                        let v0 = _mm256_loadu_si256(src.as_ptr() as *const __m256i);
                        let v1 = _mm256_loadu_si256(src.as_ptr().add(8) as *const __m256i);
                        // Per 128-bit lane: its two pair words in the low
                        // 64 bits; then words 0 1 | 4 5 | 2 3 | 6 7 in
                        // order.
                        let w = _mm256_unpacklo_epi64(
                            _mm256_shuffle_epi8(v0, pick),
                            _mm256_shuffle_epi8(v1, pick),
                        );
                        let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(w);
                        _mm256_storeu_si256(dst.as_mut_ptr() as *mut __m256i, w);
                    }
                }
            }
        }
        return;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fused::RowConsts;
    use crate::fixed::Div;

    /// Requantization constants that keep every sum as it is.
    fn identity_rows(m: usize) -> Vec<RowConsts> {
        vec![
            RowConsts {
                xlo: i32::MIN,
                xhi: i32::MAX,
                m: 1,
                b: 0,
            };
            m
        ]
    }

    /// An epilogue of `rows` that stores the sums and takes their largest
    /// |sum|.
    fn identity(rows: &[RowConsts]) -> Epilogue<'_> {
        Epilogue {
            rows,
            shift: 0,
            div: Div::Floor,
            lo: i32::MIN,
            hi: i32::MAX,
            clamp: false,
            second: None,
            wide: false,
            peak: 0,
        }
    }

    /// An operand buffer left dirty by a larger conv: the sums and, with an
    /// epilogue, the largest |sum| (which reads the last block's lanes past
    /// `p`) are those of a fresh one.
    #[test]
    fn a_dirty_operand_buffer_changes_neither_sums_nor_peak() {
        crate::engine::isa::on_each(a_dirty_operand_buffer_changes_neither_sums_nor_peak_body);
    }

    fn a_dirty_operand_buffer_changes_neither_sums_nor_peak_body() {
        let (m, k, p) = (8, 6, 13);
        let w: Vec<i32> = (0..m * k).map(|i| (i as i32 * 7 % 11) - 5).collect();
        let col: Vec<i32> = (0..k * p).map(|i| (i as i32 * 5 % 13) - 6).collect();
        let mut want = vec![0; m * p];
        gemm(&w, m, k, &col, p, &mut want);
        let peak = want.iter().map(|x| x.unsigned_abs()).max().unwrap();
        let wp = madd_weights(&w, 1, m, k);
        let rows = identity_rows(m);
        for mut packed in [Vec::new(), vec![i16::MAX; 1 << 12]] {
            let mut out = vec![0; m * p];
            let mut e = identity(&rows);
            if gemm_madd(&wp, m, k, &col, p, &mut out, &mut packed, Some(&mut e)) {
                assert_eq!(out, want);
                assert_eq!(e.peak, peak);
            }
        }
    }

    /// One position (the fc layers' shape, `madd_gemv`): the sums of the
    /// plain product, on every row count around the block of eight and
    /// odd lengths, with operands at the ends of i16.
    #[test]
    fn one_position_matches_gemm() {
        for (m, k) in [(1usize, 1usize), (8, 2), (10, 7), (17, 1280), (3, 5)] {
            let w: Vec<i32> = (0..m * k)
                .map(|i| match i % 5 {
                    0 => -32768,
                    1 => 32767,
                    _ => (i as i32 * 7919 % 65_535) - 32767,
                })
                .collect();
            // The sums stay inside i32 (as the plan guarantees).
            let top = (i32::MAX as usize / (k * 32768)).min(32767) as i32;
            let x: Vec<i32> = (0..k)
                .map(|i| {
                    if i % 3 == 0 {
                        top
                    } else {
                        (i as i32 * 104_729) % (2 * top + 1) - top
                    }
                })
                .collect();
            let mut want = vec![0; m];
            gemm(&w, m, k, &x, 1, &mut want);
            let mut got = vec![7; m];
            let wp = madd_weights(&w, 1, m, k);
            if gemm_madd(&wp, m, k, &x, 1, &mut got, &mut Vec::new(), None) {
                assert_eq!(got, want, "m {m} k {k}");
            }
        }
    }

    /// The 8-bit form (`gemm_bytes`: u8 quads by s8 quads, offset 0 or
    /// 128) against the plain product: operands of rows and of i16 pairs
    /// (a buffer of the conv before), outputs of rows and of pairs (the
    /// next conv's operand), with the epilogue's largest |sum|; row counts
    /// around the blocks of eight and sixteen, `k` not a multiple of four,
    /// positions not a multiple of eight, values at the ends of each range.
    /// Where the CPU lacks AVX-512 VNNI the 16-bit kernels run instead
    /// (the same sums).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn byte_operands_match_gemm() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        // The VNNI kernel, then (where the CPU has it) the AMX tiles.
        crate::engine::isa::on_each(byte_operands_match_gemm_body);
    }

    fn byte_operands_match_gemm_body() {
        let mut seed = 0x2545_f491_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for (m, k, p) in [
            (8, 4, 8),
            (5, 3, 9),
            (17, 13, 23),
            (24, 33, 16),
            (16, 8, 2),
            (9, 1, 64),
            (40, 96, 17),
            (33, 260, 50),
        ] {
            for (lo, hi, z) in [(-128, 127, 128), (0, 255, 0)] {
                let pick = |r: u32, a: i32, b: i32| match r % 4 {
                    0 => a,
                    1 => b,
                    _ => a + (r >> 3) as i32 % (b - a + 1),
                };
                let w: Vec<i32> = (0..m * k).map(|_| pick(next(), -128, 127)).collect();
                let col: Vec<i32> = (0..k * p).map(|_| pick(next(), lo, hi)).collect();
                let mut want = vec![0; m * p];
                gemm(&w, m, k, &col, p, &mut want);
                let peak = want.iter().map(|x| x.unsigned_abs()).max().unwrap();
                let (wp, bw) = (madd_weights(&w, 1, m, k), ByteWeights::new(&w, m, k, z));
                let rows = identity_rows(m);
                let mut pairs = Vec::new();
                size_packed(&mut pairs, k.div_ceil(2), p);
                // SAFETY: AVX2 is present (checked above); `pack_pairs`
                // asserts its lengths.
                unsafe { pack_pairs(&col, k, p, &mut pairs) };
                let tag = format!("m {m} k {k} p {p} z {z}");
                for packed_in in [false, true] {
                    // Rows without an epilogue (the sums as they are), rows
                    // and the next conv's pairs with one.
                    for (packed_out, with_epi) in [(false, false), (false, true), (true, true)] {
                        let operand = match packed_in {
                            true => Operand::Packed(&pairs),
                            false => Operand::Rows(&col),
                        };
                        let mut out = vec![7; m * p];
                        let mut pk = vec![7i16; packed_len(m.div_ceil(2), p)];
                        let dst = match packed_out {
                            true => Dst::Packed(&mut pk),
                            false => Dst::Rows(&mut out),
                        };
                        let mut e = identity(&rows);
                        let mut scratch = vec![-1i16; 1 << 12];
                        let ran = gemm_madd_with(
                            &wp,
                            Some(&bw),
                            m,
                            k,
                            operand,
                            p,
                            dst,
                            &mut scratch,
                            with_epi.then_some(&mut e),
                        );
                        assert!(ran, "{tag}");
                        if packed_out {
                            // The sums as i16 (the test's values fit).
                            unpack_pairs(&pk, m, p, &mut out);
                            let want16: Vec<i32> = want.iter().map(|&x| x as i16 as i32).collect();
                            assert_eq!(out, want16, "{tag} packed in {packed_in} out");
                        } else {
                            assert_eq!(out, want, "{tag} packed in {packed_in}");
                        }
                        if with_epi {
                            assert_eq!(
                                e.peak, peak,
                                "{tag} packed in {packed_in} out {packed_out}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_matches_naive() {
        crate::engine::isa::on_each(gemm_matches_naive_body);
    }

    fn gemm_matches_naive_body() {
        // Several positions, and one (the dot-product path), over blocks
        // of four rows and a remainder, with lengths that are not a
        // multiple of the vector width.
        for (m, k, p) in [(6, 5, 7), (6, 37, 1), (3, 1, 1)] {
            let w: Vec<i32> = (0..m * k).map(|i| (i as i32 * 7 % 11) - 5).collect();
            let col: Vec<i32> = (0..k * p).map(|i| (i as i32 * 5 % 13) - 6).collect();
            let mut out = vec![0; m * p];
            gemm(&w, m, k, &col, p, &mut out);
            for o in 0..m {
                for i in 0..p {
                    let want: i32 = (0..k).map(|kk| w[o * k + kk] * col[kk * p + i]).sum();
                    assert_eq!(out[o * p + i], want, "m {m} k {k} p {p}");
                }
            }
        }
    }
}
