//! The direct 16-bit kernel: ungrouped k x k convs (k > 1) whose output
//! rows are a multiple of 8 wide, any stride, without im2col.
//!
//! The input is laid out once per layer as zero-padded planes of
//! interleaved channel pairs as i16 (a strided conv's columns split by
//! phase), the weights once per plan ([`direct_weights`]); then each tap
//! reads a shifted row of the planes. On x86-64 with AVX2 (detected at run
//! time) [`direct_kernel`] computes eight output channels x eight positions
//! per pass with `vpmaddwd` (i16 pairs multiplied and summed into i32) and
//! `vpaddd`. Without AVX2 [`conv_direct_madd`] declines and the layer takes
//! the im2col path of [`super::gemm`] (the same sums: integer sums do not
//! depend on their order).
//!
//! Used only where the plan's bit-widths put both operands in i16 and not
//! both at -2^15 (so no pair sum passes 2^31).
//!
//! Given an `Epilogue` (a requantization fused into the conv, `fused.rs`),
//! the kernel takes the largest |sum| of each block and stores each
//! channel's sums requantized instead of the sums.

use super::fused::Epilogue;
use super::gemm::{madd_weights, ByteWeights, MADD_ROWS};
#[cfg(target_arch = "x86_64")]
use super::gemm::{pair8, quad8, quad_word, vnni_blocks, BlockOut, Dst};
use crate::plan::ConvLayer;

/// Convs the direct kernel takes: ungrouped, kernel over 1, and output rows
/// a multiple of 8 wide (its vectors run along a row; narrower maps go
/// through im2col, whose vectors run across rows). Any stride: a strided
/// conv's input is split into column phases. Not 2x2 stride-2 patches
/// (`gemm::patch2_conv`), which im2col packs straight from the image.
pub(super) fn direct_conv(l: &ConvLayer) -> bool {
    l.groups == 1
        && l.stride >= 1
        && l.kernel > 1
        && l.out_hw[1].is_multiple_of(8)
        && !super::gemm::patch2_conv(l)
}

/// The weights of a [`direct_conv`] laid out for [`direct_kernel`]:
/// `[cout / 8][cin / 2][k * k][8]`, each entry the pair of input channels
/// `(2c, 2c + 1)` at one tap as i16 halves of an i32 (low half the even
/// channel); channels past `cin` and rows past `cout` are zero. That is
/// [`madd_weights`] of each row reordered to `[cin / 2][k * k][2]`.
pub(super) fn direct_weights(l: &ConvLayer) -> Vec<i32> {
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

/// What the direct kernels read of a [`direct_conv`]'s weights: the i16
/// pairs of [`direct_weights`] and, where the operands fit 8 bits
/// ([`byte_offset`]), the u8 x s8 form of the AVX-512 VNNI kernel.
pub(super) struct DirectWeights {
    pub(super) pairs: Vec<i32>,
    pub(super) bytes: Option<ByteWeights>,
    /// With `bytes`: the same weights as AMX tiles.
    pub(super) tiles: Option<super::amx::DirectTiles>,
}

impl DirectWeights {
    pub(super) fn new(l: &ConvLayer) -> DirectWeights {
        DirectWeights {
            tiles: byte_offset(l).map(|_| super::amx::DirectTiles::new(l)),
            pairs: direct_weights(l),
            // The rows reordered as `[cin / 4][k * k][4]` (channels past
            // `cin` zero): quad `(c, t)` is channels `4c..4c + 4` at tap `t`.
            bytes: byte_offset(l).map(|z| {
                let (k2, cq) = (l.kernel * l.kernel, l.cin.div_ceil(4));
                let mut rows = vec![0i32; l.cout * cq * k2 * 4];
                for (o, row) in rows.chunks_exact_mut(cq * k2 * 4).enumerate() {
                    for c in 0..l.cin {
                        for t in 0..k2 {
                            row[((c / 4) * k2 + t) * 4 + c % 4] =
                                l.weights[(o * l.cin + c) * k2 + t];
                        }
                    }
                }
                ByteWeights::new(&rows, l.cout, cq * k2 * 4, z)
            }),
        }
    }
}

/// Where a conv's input and weights fit the 8-bit kernel (`vpdpbusd`: u8
/// operands by s8 weights): every weight in `-128..=127` and the input's
/// range (`in_range`) inside `0..=255` (offset 0) or `-128..=127` (offset
/// 128: the operand is the value plus 128, and the conv of that operand
/// less 128 times each row's weight sum is the conv); `None` elsewhere.
pub(super) fn byte_offset(l: &ConvLayer) -> Option<i32> {
    let [lo, hi] = l.in_range;
    if l.input == crate::plan::ConvInput::Float
        || !l.weights.iter().all(|w| (-128..=127).contains(w))
    {
        return None;
    }
    if lo >= 0 && hi <= 255 {
        Some(0)
    } else if lo >= -128 && hi <= 127 {
        Some(128)
    } else {
        None
    }
}

/// A k x k conv without im2col: the input is laid out once as zero-padded
/// planes of interleaved channel pairs (a strided conv's columns split by
/// phase), and each tap reads a shifted row of it (`vpmaddwd` on channel
/// pairs, eight output channels per load). Where the operands fit 8 bits
/// and the CPU has AVX-512 VNNI, the planes hold channel quads as u8
/// (offset by `z`, the border `z` too: the value 0) and the kernel takes
/// `vpdpbusd`. With `epi`, `out` gets the requantized values (see
/// [`direct_kernel`]). Returns false (nothing done) without AVX2, or where
/// the shapes are not the kernel's (never so for a [`direct_conv`] of a
/// plan: see the check before the kernel).
pub(super) fn conv_direct_madd(
    l: &ConvLayer,
    input: &[i32],
    dw: &DirectWeights,
    padded: &mut Vec<i16>,
    out: &mut [i32],
    epi: Option<&mut Epilogue>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // The 8-bit form where it applies; `per` channels in each word.
        let bytes = dw.bytes.as_ref().filter(|_| super::isa::avx512_vnni());
        let (per, wv) = bytes.map_or((2, &dw.pairs), |b| (4, &b.quads));
        let (k, k2, cp) = (l.kernel, l.kernel * l.kernel, l.cin.div_ceil(per));
        let blocks = l.cout.div_ceil(MADD_ROWS);
        if !std::arch::is_x86_feature_detected!("avx2")
            || wv.len() != blocks * cp * k2 * MADD_ROWS
            || bytes.is_some_and(|b| b.comp.len() != l.cout)
        {
            return false;
        }
        let [ih, iw] = l.in_hw;
        let (s, pad) = (l.stride, l.padding);
        let (ph, cols) = (ih + 2 * pad, (iw + 2 * pad).div_ceil(s));
        // The kernel's bounds (its `# Safety`): whole vectors of eight along
        // each output row, every tap inside the padded planes, every store
        // inside `out`. Always so for a plan's direct convs (`out_hw` is
        // `(in + 2 pad - k) / s + 1`); anything else is left to im2col.
        let [oh, ow] = l.out_hw;
        if k == 0
            || ow % 8 != 0
            || (oh.max(1) - 1) * s + k > ph
            || (k - 1) / s + ow > cols
            || out.len() < l.cout * oh * ow
            || epi.as_ref().is_some_and(|e| !e.holds(l.cout, oh * ow))
        {
            return false;
        }
        // The AMX tiles read whole chunks of quads: the planes past `cp`
        // they read are allocated (and hold the border value), and 16 rows
        // of slack past the end.
        let tiles = dw
            .tiles
            .as_ref()
            .filter(|_| bytes.is_some() && super::isa::amx());
        let planes = tiles.map_or(cp, |t| t.planes.max(cp));
        // Layout: `[ph][s][planes][cols]` words of channels: padded column
        // `col * s + phase` of padded row `r` of channel group `c` at
        // `word(c, phase, r, col)`, so the groups of one row and phase are
        // `cols` words apart (an AMX tile's rows), and output row `y` starts
        // `y * row_step` words after row 0.
        let word = |c: usize, phase: usize, r: usize, col: usize| {
            ((r * s + phase) * planes + c) * cols + col
        };
        let row_step = s * s * planes * cols;
        padded.clear();
        // The border: the value 0 (`z` in every byte of the 8-bit form).
        let zero = bytes.map_or(0, |b| (b.z * 0x0101) as u16 as i16);
        let slack = if tiles.is_some() { 16 * cols } else { 0 };
        padded.resize((planes * s * ph * cols + slack) * 2, zero);
        let plane = |c: usize| (c < l.cin).then(|| &input[c * ih * iw..(c + 1) * ih * iw]);
        // Per phase, the columns that hold an input value: padded column
        // `col * s + phase` is input column `col * s + phase - pad`, inside
        // `0..iw` for `col` in `lo..hi`.
        let spans: Vec<(usize, usize)> = (0..s)
            .map(|phase| {
                let lo = pad.saturating_sub(phase).div_ceil(s);
                let hi = (iw + pad).saturating_sub(phase).div_ceil(s).clamp(lo, cols);
                (lo, hi)
            })
            .collect();
        // One input row as pairs, split by phase from there (stride > 1).
        let mut pairs = vec![0i16; if s == 1 { 0 } else { 2 * iw }];
        for c in 0..cp {
            let chans: [Option<&[i32]>; 4] = std::array::from_fn(|j| plane(per * c + j));
            for y in 0..ih {
                let row = y * iw..(y + 1) * iw;
                let at = 2 * word(c, 0, y + pad, pad);
                let dst = if s == 1 {
                    &mut padded[at..at + 2 * iw]
                } else {
                    &mut pairs[..]
                };
                // Written out: `chans.map` was left a call per row (not
                // inlined), 2 % of ResNet20's profile.
                let cut = |j: usize| chans[j].map(|ch| &ch[row.clone()]);
                let rows = [cut(0), cut(1), cut(2), cut(3)];
                // SAFETY: AVX2 is present (checked above); `pair_rows` and
                // `quad_rows` bound themselves by the slices' lengths.
                match (bytes, rows) {
                    (Some(b), rows) => unsafe { quad_rows(rows, b.z, dst) },
                    (None, [Some(a), b, ..]) => unsafe { pair_rows(a, b, dst) },
                    (None, _) => {}
                }
                if s == 1 {
                    continue;
                }
                let at = |phase: usize, lo: usize| 2 * word(c, phase, y + pad, lo);
                if let [(lo0, hi0), (lo1, hi1)] = spans[..] {
                    // Stride 2: the even and odd words of the row go to the
                    // two phases (phase `p` starts at word `2 lo_p + p - pad`:
                    // one of them at `xa`, the other at `xa + 1`).
                    let x = ((2 * lo0).checked_sub(pad), (2 * lo1 + 1).checked_sub(pad));
                    if let (true, (Some(x0), Some(x1))) = (lo0 < hi0 && lo1 < hi1, x) {
                        let (a0, a1) = (at(0, lo0), at(1, lo1));
                        let (left, right) = padded.split_at_mut(a1);
                        let d0 = &mut left[a0..a0 + 2 * (hi0 - lo0)];
                        let d1 = &mut right[..2 * (hi1 - lo1)];
                        let (xa, da, db) = if x0 < x1 { (x0, d0, d1) } else { (x1, d1, d0) };
                        // SAFETY: AVX2 is present (checked above); the
                        // function bounds itself by the slices.
                        unsafe { deinterleave_words(&pairs, xa, da, db) };
                        continue;
                    }
                }
                for (phase, &(lo, hi)) in spans.iter().enumerate().filter(|(_, s)| s.0 < s.1) {
                    let at = at(phase, lo);
                    let x0 = lo * s + phase - pad;
                    let dst = padded[at..at + 2 * (hi - lo)].chunks_exact_mut(2);
                    for (d, src) in dst.zip(pairs[2 * x0..].chunks(2 * s)) {
                        d.copy_from_slice(&src[..2]);
                    }
                }
            }
        }
        if let (Some(t), Some(b)) = (tiles, bytes) {
            // Where each tap of the tiles reads, in words, its row `j` `j *
            // cols` words further: with stride 1 the taps are the kernel's
            // columns `kx` and row `j` is quad `j % cp` of kernel row `j /
            // cp` (`word(c, 0, ky, kx)` is `(ky * cp + c) * cols + kx`);
            // otherwise the taps are `(ky, kx)` and row `j` quad `j`.
            let taps: Vec<usize> = match s {
                1 => (0..k).collect(),
                _ => (0..k2)
                    .map(|t| word(0, t % k % s, t / k, t % k / s))
                    .collect(),
            };
            // SAFETY: AMX is permitted (`isa::amx`) and AVX-512 and AVX2
            // present; `t` is this conv's ([`DirectWeights::new`]); for
            // every output row `y < oh`, tile of positions `i..i + n <= ow`,
            // tap and row `j < t.jpad`, the words read `y * row_step + i +
            // off + j * cols..+n` lie inside `padded` (`(oh - 1) * s + k <=
            // ph`, `(k - 1) / s + ow <= cols`, checked above; with stride 1
            // rows past `k * cp` reach at most 16 rows into the slack, with
            // more the planes past `cp` are allocated); `comp` has `cout`
            // values and `fin` `cout` rows of `oh * ow`.
            unsafe {
                let mut fin = BlockOut::new(Dst::Rows(out), epi.as_deref(), oh * ow, l.cout);
                super::amx::direct_tiles(
                    t,
                    l.cout,
                    [oh, ow],
                    padded,
                    row_step,
                    &taps,
                    cols,
                    (b.z != 0).then_some(&b.comp[..]),
                    &mut fin,
                );
                let peak = fin.peak();
                if let Some(e) = epi {
                    e.peak = e.peak.max(peak);
                }
            }
            return true;
        }
        // Where tap (c, ky, kx) reads, relative to an output position's
        // top-left corner, in i16 units.
        let mut taps = Vec::with_capacity(cp * k2);
        for c in 0..cp {
            for ky in 0..k {
                for kx in 0..k {
                    taps.push(2 * word(c, kx % s, ky, kx / s));
                }
            }
        }
        // SAFETY: AVX2 is present, the weights have `blocks * taps.len() *
        // 8` values, rows are whole vectors of 8, `out` holds `cout * oh *
        // ow` and `(oh - 1) * s + k <= ph`, `(k - 1) / s + ow <= cols` (all
        // checked above), so every tap of `taps` reads inside `padded`
        // (`planes * s * ph * cols` words), and `epi` has `cout` rows: the
        // kernel's `# Safety`; for the 8-bit form AVX-512 VNNI is present
        // (`avx512_vnni`) and `comp` has `cout` values (checked above).
        unsafe {
            match bytes {
                Some(b) => {
                    direct_kernel_vnni(l, wv, Some(&b.comp), padded, row_step, &taps, out, epi)
                }
                None => direct_kernel(l, wv, padded, row_step, &taps, out, epi),
            }
        };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (l, input, dw, padded, out, epi);
        false
    }
}

/// Words (pairs of i16) `xa, xa + 2, ...` of `src` into `da` and `xa + 1,
/// xa + 3, ...` into `db`, as many as each holds (`da.len() / 2`,
/// `db.len() / 2` words): eight source words per AVX2 permute, the rest one
/// by one.
///
/// # Safety
///
/// The CPU must support AVX2. Any lengths are safe: the vector loop runs
/// only where the eight source words and both four-word stores are inside
/// the slices, and the rest are checked slices (a source too short for
/// the words asked for panics).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn deinterleave_words(src: &[i16], xa: usize, da: &mut [i16], db: &mut [i16]) {
    use std::arch::x86_64::*;
    let (na, nb, words) = (da.len() / 2, db.len() / 2, src.len() / 2);
    let split = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    let mut j = 0;
    while j + 4 <= na.min(nb) && xa + 2 * j + 8 <= words {
        // SAFETY: AVX2 is this function's own feature; the load reads
        // words `xa + 2j .. + 8` of `src` and the stores write words `j ..
        // j + 4` of `da` and `db`, all inside (the loop's condition).
        unsafe {
            let v = _mm256_loadu_si256(src.as_ptr().add(2 * (xa + 2 * j)) as *const __m256i);
            let v = _mm256_permutevar8x32_epi32(v, split);
            _mm_storeu_si128(da.as_mut_ptr().add(2 * j) as _, _mm256_castsi256_si128(v));
            _mm_storeu_si128(
                db.as_mut_ptr().add(2 * j) as _,
                _mm256_extracti128_si256::<1>(v),
            );
        }
        j += 4;
    }
    for (n, d, x) in [(na, &mut *da, xa), (nb, &mut *db, xa + 1)] {
        for jj in j..n {
            let at = 2 * (x + 2 * jj);
            d[2 * jj..2 * jj + 2].copy_from_slice(&src[at..at + 2]);
        }
    }
}

/// `out[2i] = a[i]`, `out[2i + 1] = b[i]` (0 without `b`) as i16: eight
/// positions at a time by [`pair8`], the rest one by one, for the first
/// `min(a.len(), b.len(), out.len() / 2)` positions.
///
/// # Safety
///
/// The CPU must support AVX2. Any lengths are safe (the function bounds
/// itself by them).
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
        // SAFETY: AVX2 is this function's own feature; `i + 8 <= n` puts
        // the reads inside `a` and `b` and the 16 i16 written inside `out`.
        unsafe {
            let v = pair8(a.as_ptr().add(i), b.map(|b| b.as_ptr().add(i)));
            _mm256_storeu_si256(out.as_mut_ptr().add(2 * i) as _, v);
        }
    }
    for i in full..n {
        out[2 * i] = a[i] as i16;
        out[2 * i + 1] = b.map_or(0, |b| b[i] as i16);
    }
}

/// `out` as words (i16 pairs) of four channels' u8 bytes: word `i` holds
/// `rows[j][i] + z` in byte `j` (`z` where `rows[j]` is missing), for the
/// first `min(rows' lengths, out.len() / 2)` positions; eight at a time by
/// [`quad8`], the rest one by one. The values plus `z` must lie in
/// `0..=255`.
///
/// # Safety
///
/// The CPU must support AVX2. Any lengths are safe (the function bounds
/// itself by them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quad_rows(rows: [Option<&[i32]>; 4], z: i32, out: &mut [i16]) {
    use std::arch::x86_64::*;
    let n = rows
        .iter()
        .flatten()
        .map(|r| r.len())
        .fold(out.len() / 2, usize::min);
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        // SAFETY: AVX2 is this function's own feature; `i + 8 <= n` puts
        // the reads inside each row and the 8 words written inside `out`.
        unsafe {
            let w = quad8(&rows, i, z);
            _mm256_storeu_si256(out.as_mut_ptr().add(2 * i) as _, w);
        }
    }
    for i in full..n {
        out[2 * i..2 * i + 2].copy_from_slice(&quad_word(&rows, i, z));
    }
}

/// Eight output channels x eight positions of one output row per pass:
/// one load of the shifted input row per (channel pair, tap), then one
/// broadcast weight pair, `vpmaddwd` and `vpaddd` per output channel.
/// Output row `y` starts `y * row_step` pairs after row 0 (`row_step = s *
/// s * planes * cols`, [`conv_direct_madd`]'s layout). Bounds: `ow = (pw - k) / s + 1`, so for
/// `i + 8 <= ow` the furthest tap reads row `(oh - 1) * s + k - 1 < ph` and
/// column `(k - 1) / s + i + 7 < cols` of the last phase of the last pair.
/// With `epi` (a fused requantization, `fused.rs`) the epilogue takes the
/// largest |sum| into `epi.peak` and stores each channel's sums
/// requantized with `epi.rows[channel]` (and its second term) instead of
/// the sums.
///
/// # Safety
///
/// - The CPU must support AVX2.
/// - `l.out_hw[1]` (`ow`) is a multiple of 8 and
///   `out.len() >= l.cout * oh * ow`.
/// - `dpairs.len() >= l.cout.div_ceil(8) * taps.len() * 8`; `epi`, where
///   given, holds `l.cout` rows of `oh * ow` (`Epilogue::holds`).
/// - For every output row `y < oh`, every `i < ow` that is a multiple of 8
///   and every `off` in `taps`, `2 * (y * row_step + i) + off + 16 <=
///   padded.len()` (so for the layout [`conv_direct_madd`] builds:
///   `(oh - 1) * s + k <= ph` and `(k - 1) / s + ow <= cols`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn direct_kernel(
    l: &ConvLayer,
    dpairs: &[i32],
    padded: &[i16],
    row_step: usize,
    taps: &[usize],
    out: &mut [i32],
    epi: Option<&mut Epilogue>,
) {
    use std::arch::x86_64::*;
    if super::isa::avx512_vnni() {
        // SAFETY: the CPU has AVX-512 F, BW and VNNI (and AVX2): checked
        // by `avx512_vnni`; the rest of the contract is this function's.
        unsafe { direct_kernel_vnni(l, dpairs, None, padded, row_step, taps, out, epi) };
        return;
    }
    let [oh, ow] = l.out_hw;
    let n = taps.len();
    // SAFETY: AVX2 is this function's own feature.
    let mut fin = unsafe { BlockOut::new(Dst::Rows(out), epi.as_deref(), oh * ow, l.cout) };
    for b in 0..l.cout.div_ceil(MADD_ROWS) {
        let rows = (l.cout - b * MADD_ROWS).min(MADD_ROWS);
        // SAFETY: block `b` of `dpairs` (`taps.len() * 8` values) lies
        // inside it (the caller's length).
        let wb = unsafe { dpairs.as_ptr().add(b * n * MADD_ROWS) };
        for y in 0..oh {
            for i in (0..ow).step_by(8) {
                // SAFETY: AVX2 is this function's own feature; each load
                // reads 16 i16 at `2 * (y * row_step + i) + off`, inside
                // `padded`, and each weight `wb[t * 8 + r]` inside block
                // `b` (the caller's bounds); `finish` gets rows `< cout` of
                // the whole block of positions `y * ow + i..+8` (`ow` a
                // multiple of 8), inside `out` (`cout * oh * ow` values).
                unsafe {
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
                    fin.finish(&mut acc, b * MADD_ROWS, rows, (y * ow + i) / 8);
                }
            }
        }
    }
    // SAFETY: AVX2 is this function's own feature.
    let peak = unsafe { fin.peak() };
    if let Some(e) = epi {
        e.peak = e.peak.max(peak);
    }
}

/// [`direct_kernel`] with AVX-512 VNNI ([`vnni_blocks`] over the output's
/// blocks of eight positions, row by row: two blocks per pass are the next
/// eight of the row or of the next row). The same sums. With `comp`, the
/// 8-bit form: `dpairs` are [`ByteWeights`]' quads, `padded` holds u8
/// channel quads, and `comp` is subtracted from each row's sums.
///
/// # Safety
///
/// As [`direct_kernel`], and the CPU must support AVX-512 F, BW and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn direct_kernel_vnni(
    l: &ConvLayer,
    dpairs: &[i32],
    comp: Option<&[i32]>,
    padded: &[i16],
    row_step: usize,
    taps: &[usize],
    out: &mut [i32],
    epi: Option<&mut Epilogue>,
) {
    let [oh, ow] = l.out_hw;
    // SAFETY: AVX2 is one of this function's features.
    let mut fin = unsafe { BlockOut::new(Dst::Rows(out), epi.as_deref(), oh * ow, l.cout) };
    // Block `g` is positions `8 g..8 g + 8` of the output (`ow` a multiple
    // of 8): row `y = 8 g / ow` from `i = 8 g % ow`, read from `2 * (y *
    // row_step + i)` plus each tap's offset.
    let at = |g: usize| 2 * ((8 * g / ow) * row_step + 8 * g % ow);
    // SAFETY: this function's features; `dpairs` holds `cout.div_ceil(8)`
    // blocks of `8 * taps.len()`, every read at `at(g) + off` lies inside
    // `padded` and `fin` holds `cout` rows of `oh * ow` (the caller's
    // bounds, as in `direct_kernel`).
    unsafe {
        vnni_blocks(
            dpairs,
            taps.len(),
            l.cout,
            padded,
            oh * ow / 8,
            at,
            taps.iter().copied(),
            comp,
            &mut fin,
        )
    };
    // SAFETY: AVX2 is one of this function's features.
    let peak = unsafe { fin.peak() };
    if let Some(e) = epi {
        e.peak = e.peak.max(peak);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
