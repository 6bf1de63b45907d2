//! Depthwise convs on 8-bit operands read through a byte table (AVX-512
//! VBMI and VNNI): `vpermi2b` picks, for sixteen output positions and four
//! taps, the sixty-four input bytes of one channel, and one `vpdpbusd`
//! sums those four taps into the sixteen positions' i32 lanes.
//!
//! Each vector of sixteen consecutive output positions (in the flattened
//! `oh x ow` map, across rows) reads a *window* of its channel's input
//! rows: the rows its taps reach, at most 128 bytes, loaded straight from
//! the channel's bytes `v + z` (the producer's `gemm::Dst::Bytes`, or the
//! i32 rows narrowed once per channel) as two 64-byte registers, the table
//! of `vpermi2b`. Per vector and per quad of taps `q` (the taps in their
//! row-major order, four at a time, zero weights past the kernel) the
//! geometry holds the 64 indexes into the window (lane `i`, byte `j`: the
//! input of tap `4 q + j` for position `16 v + i`) and a mask of the bytes
//! that lie in the input: the others (the padding) keep their index, which
//! is the offset `z` itself (`vpermi2b` with the index as merge source),
//! so the padding reads the value 0 as the quad layout's border does, and
//! [`DwBytes`](super::depthwise_bytes::DwBytes) corrects the sums by `z *
//! sum(w)`. No layout is written: per channel and vector, two loads, one
//! `vpermi2b` and one `vpdpbusd` per quad of taps (three for a 3 x 3
//! kernel), the requantization in the registers, one store.
//!
//! The geometry is any stride, padding and kernel up to 8 x 8 whose
//! windows fit 128 bytes: MobileNetV2's and ToyNet's depthwise convs (maps
//! up to 32 wide) all do. Each product of a u8 and an s8 byte and their
//! sum in i32 are exact and an integer sum does not depend on the order of
//! its terms, so the sums equal every other path's.

use super::depthwise::ConvShape;
#[cfg(target_arch = "x86_64")]
use super::depthwise_bytes::Sink16;
#[cfg(target_arch = "x86_64")]
use super::gemm::{store_bytes16, Stored};

/// Largest kernel side (sixteen quads of taps).
const MAX_K: usize = 8;

/// Bytes a window may span: the two registers of the table.
const WINDOW: usize = 128;

/// One vector's window: where it starts in the channel's bytes, and the
/// byte masks of its two 64-byte loads (the window's length: no byte past
/// it is read).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Window {
    start: usize,
    lo: u64,
    hi: u64,
}

/// The geometry of one depthwise conv on the table: per vector its window,
/// per vector and quad of taps the indexes and the mask of the bytes that
/// lie in the input.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct TableGeom {
    shape: ConvShape,
    /// Quads of taps: `ceil(k * k / 4)`.
    nq: usize,
    windows: Vec<Window>,
    /// Per vector, per quad: 64 indexes into the window (or `z` where the
    /// tap falls in the padding or past the kernel or the map).
    index: Vec<[u8; 64]>,
    /// Per vector, per quad: the bytes read from the window.
    inside: Vec<u64>,
}

impl TableGeom {
    /// The table geometry of a depthwise conv of `shape` on operands offset
    /// by `z` (0 or 128), or `None` where the kernel is over 8 x 8 or a
    /// window passes 128 bytes.
    pub(super) fn new(shape: ConvShape, z: i32) -> Option<TableGeom> {
        let ConvShape {
            ih,
            iw,
            k,
            s,
            pad,
            oh,
            ow,
        } = shape;
        if k > MAX_K || !(0..=255).contains(&z) {
            return None;
        }
        let (p, k2) = (oh * ow, k * k);
        let nq = k2.div_ceil(4);
        let nv = p.div_ceil(16);
        // Input row `oy s + ky - pad` (may be outside `0..ih`).
        let row = |oy: usize, ky: usize| (oy * s + ky) as isize - pad as isize;
        let mut windows = Vec::with_capacity(nv);
        let mut index = Vec::with_capacity(nv * nq);
        let mut inside = Vec::with_capacity(nv * nq);
        for v in 0..nv {
            let positions = 16 * v..(16 * v + 16).min(p);
            // The input rows the vector's taps reach.
            let (first, last) = (positions.start / ow, (positions.end - 1) / ow);
            let r0 = row(first, 0).max(0) as usize;
            let r1 = row(last, k - 1).min(ih as isize - 1);
            let len = if r1 < r0 as isize {
                0
            } else {
                (r1 as usize + 1 - r0) * iw
            };
            if len > WINDOW {
                return None;
            }
            let bits = |n: usize| if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
            windows.push(Window {
                start: r0 * iw,
                lo: bits(len.min(64)),
                hi: bits(len.saturating_sub(64)),
            });
            for q in 0..nq {
                let mut idx = [z as u8; 64];
                let mut mask = 0u64;
                for (i, pos) in positions.clone().enumerate() {
                    let (oy, ox) = (pos / ow, pos % ow);
                    for j in 0..4 {
                        let t = 4 * q + j;
                        if t >= k2 {
                            continue;
                        }
                        let (iy, ix) = (row(oy, t / k), (ox * s + t % k) as isize - pad as isize);
                        if (0..ih as isize).contains(&iy) && (0..iw as isize).contains(&ix) {
                            let at = (iy as usize - r0) * iw + ix as usize;
                            debug_assert!(at < len);
                            idx[4 * i + j] = at as u8;
                            mask |= 1 << (4 * i + j);
                        }
                    }
                }
                index.push(idx);
                inside.push(mask);
            }
        }
        Some(TableGeom {
            shape,
            nq,
            windows,
            index,
            inside,
        })
    }

    /// The conv's shape.
    pub(super) fn shape(&self) -> ConvShape {
        self.shape
    }

    /// Quads of taps (weight words per channel).
    pub(super) fn quads(&self) -> usize {
        self.nq
    }

    /// Output positions.
    pub(super) fn p(&self) -> usize {
        self.shape.oh * self.shape.ow
    }

    /// Per channel of `k x k` weights `w` (each in `-128..=127`), the
    /// weight words: byte `j` of word `q` the tap `4 q + j` (row-major),
    /// zero past the kernel.
    pub(super) fn weights(&self, w: &[i32], c: usize) -> Vec<i32> {
        let k2 = self.shape.k * self.shape.k;
        let mut words = Vec::with_capacity(c * self.nq);
        for wc in w.chunks_exact(k2).take(c) {
            for quad in wc.chunks(4) {
                let word = quad
                    .iter()
                    .enumerate()
                    .fold(0u32, |word, (j, &x)| word | (x as u8 as u32) << (8 * j));
                words.push(word as i32);
            }
        }
        words
    }
}

/// A layer's operands on the table: the geometry, per channel the weight
/// words ([`TableGeom::weights`]) and `z * sum(w)`, the offset `z`.
#[cfg(target_arch = "x86_64")]
pub(super) struct TableLayer<'a> {
    pub g: &'a TableGeom,
    pub taps: &'a [i32],
    pub comp: &'a [i32],
    pub z: i32,
}

#[cfg(target_arch = "x86_64")]
impl TableLayer<'_> {
    /// `c` channels of `input` (bytes `v + z`, or i32 rows narrowed to
    /// bytes a channel at a time in `scratch`'s words) through the table:
    /// per vector of sixteen positions the window's two loads, per quad of
    /// taps one `vpermi2b` (the padding's bytes keep their index, `z`) and
    /// one `vpdpbusd` from the sums' start `-z * sum(w)`; each vector
    /// requantized with `req` (the layer's constants and rows;
    /// `DIV` and `CLAMP` theirs) or stored as sums, into `dst` (`p` values
    /// per channel), or with `BYTES` as the bytes `v + z8` into `dst8`; the
    /// largest |sum| of each lane into `peak`.
    ///
    /// # Safety
    ///
    /// AVX-512 F, BW, VBMI and VNNI; `input` holds `c` channels of `ih *
    /// iw`, `taps` and `comp` `c` channels' worth, `dst` (`dst8` with
    /// `BYTES`, and every requantized value plus `z8` in `0..=255`) and
    /// `req`'s rows `c` channels.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vbmi,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn run<const DIV: u8, const CLAMP: bool, T: Stored, const BYTES: bool>(
        &self,
        input: &[T],
        c: usize,
        dst: &mut [i32],
        dst8: &mut [u8],
        z8: i32,
        scratch: &mut Vec<i32>,
        req: Option<(&super::gemm::Regs16, &[super::fused::RowConsts])>,
        peak: &mut std::arch::x86_64::__m512i,
    ) {
        use std::arch::x86_64::*;
        let g = self.g;
        let (hw, p, nq) = (g.shape.ih * g.shape.iw, g.p(), g.nq);
        // The peak in a register for the layer.
        let mut pk = *peak;
        let zv8 = _mm512_set1_epi32(z8);
        // The rows narrowed to bytes, a channel at a time (in i32 words of
        // the scratch: no other allocation).
        let narrowed = match T::as_bytes(&input[..0]) {
            Some(_) => 0,
            None => hw.div_ceil(4),
        };
        scratch.clear();
        scratch.resize(narrowed, 0);
        for ch in 0..c {
            let x = &input[ch * hw..(ch + 1) * hw];
            let bytes: &[u8] = match T::as_bytes(x) {
                Some(b) => b,
                None => {
                    // SAFETY: the scratch's `4 * narrowed >= hw` bytes.
                    let b = unsafe {
                        std::slice::from_raw_parts_mut(
                            scratch.as_mut_ptr() as *mut u8,
                            4 * narrowed,
                        )
                    };
                    // SAFETY: AVX-512 F and BW; both hold `hw`.
                    unsafe { narrow(x, self.z, b, hw) };
                    b
                }
            };
            // SAFETY: AVX-512 F, this function's.
            // (A `match`, not `Option::map`: the closure's call was not
            // inlined, and cost a tenth of the layer on 4 x 4 maps.)
            #[allow(clippy::manual_map)]
            let chreq = match req {
                Some((rg, rows)) => Some((rg, &rows[ch])),
                None => None,
            };
            let sink = unsafe { Sink16::new(chreq) };
            let init = _mm512_set1_epi32(self.comp[ch].wrapping_neg());
            let w = &self.taps[ch * nq..(ch + 1) * nq];
            let (rows, bytes8) = match BYTES {
                false => (&mut dst[ch * p..(ch + 1) * p], &mut [][..]),
                true => (&mut [][..], &mut dst8[ch * p..(ch + 1) * p]),
            };
            let per_vector = g.index.chunks_exact(nq).zip(g.inside.chunks_exact(nq));
            for (v, (win, (index, inside))) in g.windows.iter().zip(per_vector).enumerate() {
                let at = bytes.as_ptr().wrapping_add(win.start);
                // SAFETY: the masked bytes are the window's, inside the
                // channel's `hw` (`TableGeom::new`); the others are not
                // read.
                let (a, b) = unsafe {
                    (
                        _mm512_maskz_loadu_epi8(win.lo, at as *const i8),
                        _mm512_maskz_loadu_epi8(win.hi, at.wrapping_add(64) as *const i8),
                    )
                };
                // Four taps per `vpermi2b` and `vpdpbusd`.
                let mut acc = init;
                for ((idx, &lanes), &wq) in index.iter().zip(inside).zip(w) {
                    // SAFETY: 64 bytes of the index entry.
                    let idx = unsafe { _mm512_loadu_si512(idx.as_ptr() as *const _) };
                    let d = _mm512_mask2_permutex2var_epi8(a, idx, lanes, b);
                    acc = _mm512_dpbusd_epi32(acc, d, _mm512_set1_epi32(wq));
                }
                // SAFETY: AVX-512 F, BW (this function's); the channel's
                // destination holds `p` values.
                unsafe {
                    match BYTES {
                        false => sink.put::<DIV, CLAMP>(acc, v, p, rows, &mut pk),
                        true => {
                            let (r, keep) = sink.value::<DIV, CLAMP>(acc, v, p, &mut pk);
                            store_bytes16(
                                bytes8.as_mut_ptr().add(16 * v),
                                keep,
                                _mm512_add_epi32(r, zv8),
                            );
                        }
                    }
                };
            }
        }
        *peak = pk;
    }
}

/// Narrows `n` elements `x` (values in `-z..=255 - z`, or bytes `v + z`
/// already) to the bytes `v + z` in `dst`.
///
/// # Safety
///
/// AVX-512 F and BW; `x` and `dst` hold `n` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
#[inline]
unsafe fn narrow<T: Stored>(x: &[T], z: i32, dst: &mut [u8], n: usize) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() >= n && dst.len() >= n);
    let zv = _mm512_set1_epi32(if T::BIASED { 0 } else { z });
    let mut i = 0;
    while i < n {
        let keep = ((1u32 << (n - i).min(16)) - 1) as __mmask16;
        // SAFETY: the kept lanes are elements `i..n` of both slices.
        unsafe {
            let v = T::load16(x.as_ptr().add(i), keep);
            store_bytes16(dst.as_mut_ptr().add(i), keep, _mm512_add_epi32(v, zv));
        }
        i += 16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every index of a tap inside the input names its input byte, in the
    /// window; every other keeps `z`; the windows never reach past the map.
    #[test]
    fn indexes_name_the_taps_inputs() {
        let mut taken = 0;
        for (ih, iw, k, s, pad) in [
            (8, 8, 3, 1, 1),
            (8, 8, 3, 2, 1),
            (4, 4, 3, 1, 1),
            (16, 16, 3, 2, 1),
            (32, 32, 3, 1, 1),
            (5, 7, 5, 2, 2),
            (3, 3, 3, 1, 0),
            (2, 2, 3, 1, 2),
            (64, 64, 3, 1, 1),
        ] {
            let oh = (ih + 2 * pad - k) / s + 1;
            let ow = (iw + 2 * pad - k) / s + 1;
            let shape = ConvShape::new(ih, iw, k, s, pad, oh, ow).unwrap();
            let Some(g) = TableGeom::new(shape, 128) else {
                assert!(iw * 3 > WINDOW, "{ih}x{iw} declined");
                continue;
            };
            taken += 1;
            for (v, win) in g.windows.iter().enumerate() {
                let len = (win.lo.count_ones() + win.hi.count_ones()) as usize;
                assert!(win.start + len <= ih * iw);
                for q in 0..g.nq {
                    let (idx, mask) = (&g.index[v * g.nq + q], g.inside[v * g.nq + q]);
                    for lane in 0..64 {
                        let (pos, t) = (16 * v + lane / 4, 4 * q + lane % 4);
                        let tap = (pos < oh * ow && t < k * k).then(|| {
                            let iy = (pos / ow * s + t / k) as isize - pad as isize;
                            let ix = (pos % ow * s + t % k) as isize - pad as isize;
                            (iy, ix)
                        });
                        match tap {
                            Some((iy, ix))
                                if (0..ih as isize).contains(&iy)
                                    && (0..iw as isize).contains(&ix) =>
                            {
                                assert!(mask >> lane & 1 == 1);
                                let at = win.start + idx[lane] as usize;
                                assert!((idx[lane] as usize) < len);
                                assert_eq!(at, iy as usize * iw + ix as usize);
                            }
                            _ => {
                                assert!(mask >> lane & 1 == 0);
                                assert_eq!(idx[lane], 128);
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(taken, 8);
    }
}
