//! Depthwise convs on 8-bit operands with AVX-512 VNNI: the input as u8
//! *row quads*, so that one `vpdpbusd` sums four kernel rows of one kernel
//! column for sixteen outputs.
//!
//! Each channel is laid out, per column phase `φ < s` (the stride), as
//! rows of `ow` i32 words: word `x'` of quad row `y'` holds, in its byte
//! `j`, the value at padded row `s y' + j`, input column `s x' + φ`, plus
//! the offset `z` (the border rows hold `z`: the value 0; [`DwBytes`]
//! corrects the sums by `z * sum(w)`, as the 1x1 kernels do). The weights
//! are words of the same form, byte `j` the tap `(4 q + j, kx)` (zero past
//! the kernel). Output position `p = y ow + x` then reads, for kernel
//! column `kx` and quad `q`, the word at `p + (4 q / s) ow + d` of phase
//! `(kx - pad) mod s`, with `d = floor((kx - pad) / s)`: the same offset
//! for every position, so sixteen consecutive positions (across rows,
//! whatever the width) are one unaligned load, and a 3 x 3 kernel costs
//! three `vpdpbusd` per sixteen outputs. A tap whose column falls outside
//! the input (the horizontal padding, which the layout does not hold: its
//! rows are exactly `ow` words) is masked off per lane: the lane keeps its
//! sum (`z` = 0), or reads the word of `z` bytes (`z` = 128), from a mask
//! table per layer. This needs each phase's columns to number `ow`
//! ("same" padding, [`QuadGeom::new`]); other geometries keep the 16-bit
//! paths of [`super::depthwise`].
//!
//! The sums are requantized in the registers (the 512-bit epilogue's
//! arithmetic, [`Regs16`]) and stored into the channel's output row.
//! `depthwise16` runs it on the maps the lanes kernel (`depthwise_lanes.rs`)
//! does not take (which are also the only ones whose output the plan hands
//! on as the next 1x1 convs' 16-bit operand, `DwOut::Packed`): per channel
//! it pays a layout, a call and a reduction, which on MobileNetV2's 4 x 4
//! layers cost more than the lanes kernel's eight channels per vector
//! (0.028-0.033 against 0.020 ms per layer), while on 16 x 16 and 32 x 32
//! maps it runs in about 0.7x to 0.8x the time of the row-pair kernel
//! (`qatc int bench --layers`, the same sitting). Each product of a u8 and an
//! s8 byte and their sum in i32 are exact, and an integer sum does not
//! depend on the order of its terms: the sums equal every other path's.

use super::depthwise::ConvShape;
use super::depthwise_lanes::takes_lanes;
use super::depthwise_table::TableGeom;
use super::fused::Epilogue;
use super::gemm::Stored;
use crate::plan::ConvLayer;

/// Largest kernel: two quads of kernel rows.
const MAX_K: usize = 8;

/// Words before each phase's rows (reads reach `pad / s` words before a
/// row's first) and after its last (a last vector's lanes past the map,
/// and its taps' offsets).
const FRONT: usize = 16;
const BACK: usize = 48;

/// Words of layouts made before their channels are summed (at least two
/// channels' worth): 16 KiB, a third of a 48 KiB L1.
const CHUNK_WORDS: usize = 4096;

/// A depthwise conv's weights in the 8-bit form of the kernel that runs
/// it (the quad layout, or the byte table of `depthwise_table.rs` where
/// the CPU has AVX-512 VBMI and the geometry's windows fit it); per channel
/// `z * sum(w)`; and the conv's geometry (made once per plan).
#[derive(Clone, Debug)]
pub(super) struct DwBytes {
    comp: Vec<i32>,
    /// The operand's offset: 0 (inputs in `0..=255`) or 128 (in
    /// `-128..=127`).
    z: i32,
    form: Form,
}

/// The weights and geometry of one of the two 8-bit kernels.
#[derive(Clone, Debug)]
enum Form {
    /// Per channel, per quad of kernel rows `q`, per kernel column `kx`,
    /// the bytes `w[4 q + j][kx]` (`j < 4`, zero past the kernel) as one
    /// word; the geometry and its lane masks ([`QuadGeom::masks`]).
    Quads {
        quads: Vec<i32>,
        geom: QuadGeom,
        masks: Vec<u16>,
    },
    /// Per channel its [`TableGeom::weights`] words; the geometry.
    Table { taps: Vec<i32>, geom: TableGeom },
}

/// The geometry an 8-bit depthwise kernel runs a conv in.
enum Geom {
    Quads(QuadGeom),
    Table(TableGeom),
}

impl DwBytes {
    /// The operand's offset (`z`).
    pub(super) fn offset(&self) -> i32 {
        self.z
    }

    /// Whether the byte table runs it (else the quad layout).
    pub(super) fn table(&self) -> bool {
        matches!(self.form, Form::Table { .. })
    }

    /// The operand word of four offsets (four bytes of the value 0).
    fn zq(&self) -> i32 {
        self.z.wrapping_mul(0x0101_0101)
    }

    /// The conv's shape.
    fn shape(&self) -> ConvShape {
        match &self.form {
            Form::Quads { geom, .. } => geom.shape,
            Form::Table { geom, .. } => geom.shape(),
        }
    }

    /// For a depthwise conv whose operands fit 8 bits
    /// ([`byte_offset`](super::direct::byte_offset)) and whose geometry
    /// one of the kernels takes ([`DwBytes::geometry`]); `None` otherwise.
    pub(super) fn new(l: &ConvLayer) -> Option<DwBytes> {
        let (geom, z) = DwBytes::geometry(l)?;
        Some(DwBytes::from_weights(&l.weights, l.cout, z, geom))
    }

    /// The offset `z` of the operand where `depthwise16` runs conv `l` on
    /// an 8-bit kernel (reading bytes `v + z`, `gemm::Dst::Bytes`): the
    /// byte table wherever it takes the conv, the quad layout on the maps
    /// the lanes kernel does not take; `None` elsewhere.
    pub(super) fn runs(l: &ConvLayer) -> Option<i32> {
        let [oh, ow] = l.out_hw;
        match DwBytes::geometry(l)? {
            (Geom::Table(_), z) => Some(z),
            (Geom::Quads(_), z) => (!takes_lanes(oh, ow, false)).then_some(z),
        }
    }

    /// Whether the byte table runs conv `l` ([`DwBytes::geometry`]; its
    /// weights not converted).
    pub(super) fn in_table(l: &ConvLayer) -> bool {
        matches!(DwBytes::geometry(l), Some((Geom::Table(_), _)))
    }

    /// The geometry of a depthwise conv whose operands fit 8 bits, and the
    /// operand's offset: the byte table where the CPU has AVX-512 VBMI
    /// ([`isa::avx512_vbmi`](super::isa::avx512_vbmi)) and its windows fit
    /// ([`TableGeom::new`]), else the quad layout ([`QuadGeom::new`]).
    fn geometry(l: &ConvLayer) -> Option<(Geom, i32)> {
        let depthwise = l.groups == l.cin && l.groups == l.cout;
        let k = l.kernel;
        if !depthwise || l.weights.len() != l.cout * k * k {
            return None;
        }
        let [ih, iw] = l.in_hw;
        let [oh, ow] = l.out_hw;
        let shape = ConvShape::new(ih, iw, k, l.stride, l.padding, oh, ow)?;
        let z = super::direct::byte_offset(l)?;
        let table = super::isa::avx512_vbmi()
            .then(|| TableGeom::new(shape, z))
            .flatten();
        match table {
            Some(t) => Some((Geom::Table(t), z)),
            None => Some((Geom::Quads(QuadGeom::new(shape)?), z)),
        }
    }

    /// From `c` channels of `k x k` weights (`geom`'s kernel), each in
    /// `-128..=127`, for an operand offset by `z`.
    fn from_weights(w: &[i32], c: usize, z: i32, geom: Geom) -> DwBytes {
        let k2 = match &geom {
            Geom::Quads(g) => g.shape.k * g.shape.k,
            Geom::Table(g) => g.shape().k * g.shape().k,
        };
        let comp = w
            .chunks_exact(k2)
            .take(c)
            .map(|r| (z as i64 * r.iter().map(|&x| x as i64).sum::<i64>()) as i32)
            .collect();
        let form = match geom {
            Geom::Quads(geom) => {
                let (k, nq) = (geom.shape.k, geom.nq);
                let mut quads = Vec::with_capacity(c * nq * k);
                for wc in w.chunks_exact(k2).take(c) {
                    for q in 0..nq {
                        for kx in 0..k {
                            let word = (0..4).filter(|j| 4 * q + j < k).fold(0u32, |word, j| {
                                word | (wc[(4 * q + j) * k + kx] as u8 as u32) << (8 * j)
                            });
                            quads.push(word as i32);
                        }
                    }
                }
                Form::Quads {
                    quads,
                    masks: geom.masks(),
                    geom,
                }
            }
            Geom::Table(geom) => Form::Table {
                taps: geom.weights(w, c),
                geom,
            },
        };
        DwBytes { comp, z, form }
    }
}

/// The geometry of one depthwise conv on the quad layout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct QuadGeom {
    shape: ConvShape,
    /// Quads of kernel rows.
    nq: usize,
    /// Quad rows per phase: `oh + 4 (nq - 1) / s`.
    qrows: usize,
    /// Words per phase: `FRONT + qrows * ow + BACK`.
    plane: usize,
}

impl QuadGeom {
    /// The layout of a depthwise conv of `shape`, where the stride is 1 or
    /// 2 and each column phase holds `ow` input columns; `None` elsewhere.
    pub(super) fn new(shape: ConvShape) -> Option<QuadGeom> {
        let ConvShape {
            ih,
            iw,
            k,
            s,
            pad,
            oh,
            ow,
        } = shape;
        let ok = (s == 1 || s == 2)
            && k <= MAX_K
            && pad < FRONT
            && (0..s).all(|phase| iw > phase && (iw - phase).div_ceil(s) == ow)
            && 16 * ih * iw < i32::MAX as usize;
        if !ok {
            return None;
        }
        let nq = k.div_ceil(4);
        let qrows = oh + 4 * (nq - 1) / s;
        Some(QuadGeom {
            shape,
            nq,
            qrows,
            plane: FRONT + qrows * ow + BACK,
        })
    }

    /// Output positions.
    fn p(&self) -> usize {
        self.shape.oh * self.shape.ow
    }

    /// Vectors of sixteen positions.
    fn vectors(&self) -> usize {
        self.p().div_ceil(16)
    }

    /// Words of the layout (every phase).
    fn len(&self) -> usize {
        self.shape.s * self.plane
    }

    /// Tap `(q, kx)`'s word offset from a vector's first position.
    fn offset(&self, q: usize, kx: usize) -> usize {
        let (s, pad) = (self.shape.s as isize, self.shape.pad as isize);
        let e = kx as isize - pad;
        let (phase, d) = (e.rem_euclid(s) as usize, e.div_euclid(s));
        let at = (phase * self.plane + FRONT + (4 * q / self.shape.s) * self.shape.ow) as isize + d;
        at as usize
    }

    /// Per vector, per kernel column: the lanes whose position is in the
    /// map and whose tap column lies inside the input.
    fn masks(&self) -> Vec<u16> {
        let (k, ow) = (self.shape.k, self.shape.ow);
        let nv = self.vectors();
        let mut masks = vec![0u16; nv * k];
        // Per kernel column, the map's positions as bits (16 per vector):
        // each row's columns `x` with `0 <= s x + kx - pad < iw`.
        let mut bits = vec![0u16; nv];
        for kx in 0..k {
            bits.fill(0);
            let cols = (0..ow).filter(|&x| {
                let col = (self.shape.s * x + kx) as isize - self.shape.pad as isize;
                col >= 0 && (col as usize) < self.shape.iw
            });
            let (Some(first), Some(last)) = (cols.clone().next(), cols.clone().next_back()) else {
                continue;
            };
            for y in 0..self.shape.oh {
                for pos in y * ow + first..=y * ow + last {
                    bits[pos / 16] |= 1 << (pos % 16);
                }
            }
            for (v, &b) in bits.iter().enumerate() {
                masks[v * k + kx] = b;
            }
        }
        masks
    }
}

/// A depthwise layer's input: i32 rows, or the rows as bytes `v + z`
/// (`gemm::Dst::Bytes`, `z` the layer's offset, `DwBytes::z`).
#[derive(Clone, Copy)]
pub(super) enum DwIn<'a> {
    Rows(&'a [i32]),
    Bytes(&'a [u8]),
}

/// Where a depthwise layer on 8-bit operands puts its values: i32 rows, or
/// (the byte table only, with a fused requantization whose values `v` fit
/// `-z..=255 - z`) the rows as bytes `v + z`, as `gemm::Dst::Bytes` does
/// for the 1x1 convs that read them.
pub(super) enum DwDst<'a> {
    Rows(&'a mut [i32]),
    Bytes(&'a mut [u8], i32),
}

/// A depthwise layer (`c` channels of `ih x iw`, `k x k`, `stride`, `pad`)
/// on the 8-bit weights `wb`, into `out` (`oh x ow` per channel), with the
/// fused requantization `epi` where given (one term in i32 lanes). Returns
/// false (nothing computed) where it does not apply: no AVX-512 VNNI
/// (`isa::avx512_vnni`), not `wb`'s geometry, a second term or a wide
/// requantization, bytes out of the quad layout or without a
/// requantization, or slices too short; the caller then
/// takes the 16-bit paths. The input's values must lie in `wb`'s range
/// (`byte_offset` of the layer's `in_range`).
#[allow(clippy::too_many_arguments)]
pub(super) fn depthwise_bytes(
    input: DwIn,
    c: usize,
    ih: usize,
    iw: usize,
    wb: &DwBytes,
    k: usize,
    stride: usize,
    pad: usize,
    out: DwDst,
    oh: usize,
    ow: usize,
    scratch: &mut Vec<i32>,
    epi: Option<&mut Epilogue>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if ConvShape::new(ih, iw, k, stride, pad, oh, ow) != Some(wb.shape()) {
            return false;
        }
        let p = oh * ow;
        let weights = match &wb.form {
            Form::Quads { quads, geom, .. } => quads.len() >= c * geom.nq * k,
            Form::Table { taps, geom } => {
                super::isa::avx512_vbmi() && taps.len() >= c * geom.quads()
            }
        };
        let room = match &out {
            DwDst::Rows(o) => o.len() >= c * p,
            DwDst::Bytes(o, _) => o.len() >= c * p && wb.table() && epi.is_some(),
        };
        if !super::isa::avx512_vnni()
            || !weights
            || !room
            || wb.comp.len() < c
            || match input {
                DwIn::Rows(x) => x.len(),
                DwIn::Bytes(x) => x.len(),
            } < c * ih * iw
            || epi
                .as_ref()
                .is_some_and(|e| e.second.is_some() || e.wide || !e.holds(c, p))
        {
            return false;
        }
        // SAFETY: AVX-512 F, BW and VNNI (`isa::avx512_vnni`, checked
        // above), VBMI for the table (`isa::avx512_vbmi`); `wb` is this
        // conv's geometry and the slices hold `c` channels (checked above).
        unsafe {
            match input {
                DwIn::Rows(x) => layer(x, c, wb, out, scratch, epi),
                DwIn::Bytes(x) => layer(x, c, wb, out, scratch, epi),
            }
        };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (
            input, c, ih, iw, wb, k, stride, pad, out, oh, ow, scratch, epi,
        );
        false
    }
}

/// The channel loop of [`depthwise_bytes`], by the form of `wb`: per
/// channel its sums (the quad layout's rows rewritten first, a chunk of
/// channels at a time; the table reads the bytes, the rows narrowed to
/// bytes first), requantized (or stored) per vector.
///
/// # Safety
///
/// AVX-512 F, BW and VNNI, and VBMI for the table; `input`, `wb` and `out`
/// hold `c` channels of `wb`'s geometry, `epi` (if any) `c` rows of its
/// positions and one term in i32 lanes (checked by [`depthwise_bytes`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
unsafe fn layer<T: Stored>(
    input: &[T],
    c: usize,
    wb: &DwBytes,
    out: DwDst,
    scratch: &mut Vec<i32>,
    epi: Option<&mut Epilogue>,
) {
    use super::fused::FLOOR;
    use super::gemm::Regs16;
    let rg = epi.as_deref().map(|e| {
        // SAFETY: AVX-512 F, this function's own feature.
        unsafe { Regs16::of(e) }
    });
    let req = rg.as_ref().zip(epi.as_deref().map(|e| e.rows));
    // SAFETY (the runs): as this function's.
    macro_rules! go {
        ($div:ident, $clamp:literal) => {
            unsafe { run::<$div, $clamp, T>(input, c, wb, out, scratch, req) }
        };
    }
    let peak = match &rg {
        Some(rg) => super::gemm::by_rounding!(rg, go),
        None => go!(FLOOR, false),
    };
    if let Some(e) = epi {
        e.peak = e.peak.max(peak);
    }
}

/// [`layer`] in the rounding `DIV` and `CLAMP` of `req` (the layer's
/// constants and rows), or the sums stored where `req` is `None`. Returns
/// the largest |sum|.
///
/// # Safety
///
/// As [`layer`]'s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
unsafe fn run<const DIV: u8, const CLAMP: bool, T: Stored>(
    input: &[T],
    c: usize,
    wb: &DwBytes,
    out: DwDst,
    scratch: &mut Vec<i32>,
    req: Option<(&super::gemm::Regs16, &[super::fused::RowConsts])>,
) -> u32 {
    use std::arch::x86_64::*;
    let mut peak = _mm512_setzero_si512();
    match &wb.form {
        Form::Quads { quads, geom, masks } => {
            let DwDst::Rows(out) = out else {
                // Declined by `depthwise_bytes`.
                return 0;
            };
            let g = geom;
            let (taps, len) = (g.nq * g.shape.k, g.len());
            // Channels laid out before any is summed: a tap's load spans
            // words of several of the layout's stores, which cannot be
            // forwarded from the store buffer, so its stores should be done
            // by then (one channel at a time ran MobileNetV2's small layers
            // at half the speed).
            let chunk = (CHUNK_WORDS / len).clamp(2, c.max(2));
            scratch.clear();
            scratch.resize(chunk * len, wb.zq());
            let mut offs = [0usize; 2 * MAX_K];
            for (t, o) in offs.iter_mut().enumerate().take(taps) {
                *o = g.offset(t / g.shape.k, t % g.shape.k);
            }
            let l = Layer {
                g,
                input,
                c,
                wb,
                quads,
                masks,
                offs: &offs[..taps],
                chunk,
            };
            // SAFETY: as this function's; `scratch` is `chunk` layouts,
            // `out` holds `c * p` values.
            unsafe { l.run::<DIV, CLAMP>(scratch, req, out, &mut peak) };
        }
        Form::Table { taps, geom } => {
            let l = super::depthwise_table::TableLayer {
                g: geom,
                taps,
                comp: &wb.comp,
                z: wb.z,
            };
            // SAFETY: as this function's, VBMI checked by
            // `depthwise_bytes`.
            unsafe {
                match out {
                    DwDst::Rows(o) => l.run::<DIV, CLAMP, T, false>(
                        input,
                        c,
                        o,
                        &mut [],
                        0,
                        scratch,
                        req,
                        &mut peak,
                    ),
                    DwDst::Bytes(o, z) => l.run::<DIV, CLAMP, T, true>(
                        input,
                        c,
                        &mut [],
                        o,
                        z,
                        scratch,
                        req,
                        &mut peak,
                    ),
                }
            };
        }
    }
    _mm512_reduce_max_epu32(peak)
}

/// A layer's operands for [`Layer::run`].
#[cfg(target_arch = "x86_64")]
struct Layer<'a, T> {
    g: &'a QuadGeom,
    input: &'a [T],
    c: usize,
    wb: &'a DwBytes,
    /// The form's weight words and lane masks.
    quads: &'a [i32],
    masks: &'a [u16],
    /// Per tap `(q, kx)`: [`QuadGeom::offset`].
    offs: &'a [usize],
    /// Channels laid out before any is summed.
    chunk: usize,
}

#[cfg(target_arch = "x86_64")]
impl<T: Stored> Layer<'_, T> {
    /// Per chunk of channels, each one's layout filled, then each one
    /// summed and requantized with `req` (the layer's constants and rows;
    /// `DIV` and `CLAMP` theirs) or stored as sums, into `dst` (`p` values
    /// per channel); the largest |sum| of each lane into `peak`.
    ///
    /// # Safety
    ///
    /// AVX-512 F, BW and VNNI; `layouts` holds `chunk` of the geometry's
    /// layouts (filled with the offset's words), `dst` and `req`'s rows `c`
    /// channels, the operands those of [`layer`]'s `# Safety`.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
    unsafe fn run<const DIV: u8, const CLAMP: bool>(
        &self,
        layouts: &mut [i32],
        req: Option<(&super::gemm::Regs16, &[super::fused::RowConsts])>,
        dst: &mut [i32],
        peak: &mut std::arch::x86_64::__m512i,
    ) {
        let (g, wb) = (self.g, self.wb);
        let (p, len, taps) = (g.p(), g.len(), self.offs.len());
        for c0 in (0..self.c).step_by(self.chunk) {
            let chs = c0..(c0 + self.chunk).min(self.c);
            for (ch, layout) in chs.clone().zip(layouts.chunks_exact_mut(len)) {
                let x =
                    &self.input[ch * g.shape.ih * g.shape.iw..(ch + 1) * g.shape.ih * g.shape.iw];
                // SAFETY: AVX-512 F and BW; `layout` is `g.len()` words.
                unsafe { fill(g, x, wb.z, layout) };
            }
            for (ch, layout) in chs.zip(layouts.chunks_exact(len)) {
                let t = Taps {
                    offs: self.offs,
                    w: &self.quads[ch * taps..(ch + 1) * taps],
                    comp: wb.comp[ch],
                    zq: (wb.z != 0).then_some(wb.zq()),
                };
                // SAFETY: AVX-512 F, this function's.
                let sink = unsafe { Sink16::new(req.map(|(rg, rows)| (rg, &rows[ch]))) };
                // SAFETY: as this function's; `layout` holds the channel,
                // `dst`'s slice is `p` words, the masks `g.vectors() * k`
                // entries.
                unsafe {
                    channel::<DIV, CLAMP>(
                        g,
                        layout,
                        &t,
                        self.masks,
                        &sink,
                        &mut dst[ch * p..(ch + 1) * p],
                        peak,
                    )
                };
            }
        }
    }
}

/// One channel's taps: per `(q, kx)` its word offset and weight quad, the
/// correction `z * sum(w)`, and the offset's word where `z` is not 0.
#[cfg(target_arch = "x86_64")]
struct Taps<'a> {
    offs: &'a [usize],
    w: &'a [i32],
    comp: i32,
    zq: Option<i32>,
}

/// One channel `x` (`ih x iw`) into the quad layout: every word of every
/// phase's quad rows rewritten; the words around the rows keep the
/// offset's word they were filled with.
///
/// A quad row is the one `s` rows below it shifted up by `8 s` bits, with
/// the new rows' bytes added below: walking the padded rows upwards, each
/// row costs one load, one shift and one add per sixteen words (`(v + z)`
/// where the row is input, `z` where it is padding), and every `s`-th
/// is stored.
///
/// # Safety
///
/// AVX-512 F and BW; `layout` is `g.len()` words, `x` `g.shape.ih * g.shape.iw`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
unsafe fn fill<T: Stored>(g: &QuadGeom, x: &[T], z: i32, layout: &mut [i32]) {
    debug_assert!(layout.len() >= g.len() && x.len() >= g.shape.ih * g.shape.iw);
    // SAFETY: as this function's.
    unsafe {
        match (g.shape.s, z) {
            (1, 0) => fill_rows::<1, true, T>(g, x, z, layout),
            (1, _) => fill_rows::<1, false, T>(g, x, z, layout),
            (_, 0) => fill_rows::<2, true, T>(g, x, z, layout),
            (_, _) => fill_rows::<2, false, T>(g, x, z, layout),
        }
    }
}

/// [`fill`] for stride `S`, offset 0 where `Z0` (no add of the offset).
///
/// # Safety
///
/// As [`fill`]'s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
#[inline]
unsafe fn fill_rows<const S: usize, const Z0: bool, T: Stored>(
    g: &QuadGeom,
    x: &[T],
    z: i32,
    layout: &mut [i32],
) {
    use std::arch::x86_64::*;
    let (ow, iw) = (g.shape.ow, g.shape.iw);
    let zv = _mm512_set1_epi32(z);
    // The highest padded row a quad row reaches.
    let top = S * (g.qrows - 1) + 3;
    for phase in 0..S {
        let idx = _mm512_add_epi32(
            _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0),
            _mm512_set1_epi32(phase as i32),
        );
        let dst = layout.as_mut_ptr().wrapping_add(phase * g.plane + FRONT);
        let mut x0 = 0;
        while x0 < ow {
            let n = (ow - x0).min(16);
            let keep = ((1u32 << n) - 1) as __mmask16;
            // Stride 2: input columns `2 x0 ..` in two loads.
            let left = iw.saturating_sub(2 * x0);
            let m0 = ((1u64 << left.min(16)) - 1) as __mmask16;
            let m1 = ((1u64 << left.saturating_sub(16).min(16)) - 1) as __mmask16;
            let mut q = _mm512_set1_epi32(z.wrapping_mul(0x0101_0101));
            for r in (0..=top).rev() {
                let v = if r >= g.shape.pad && r - g.shape.pad < g.shape.ih {
                    let row = x.as_ptr().wrapping_add((r - g.shape.pad) * iw);
                    // SAFETY: the lanes loaded are columns below `iw` of
                    // input row `r - pad` (masked); the others are not read.
                    let v = unsafe {
                        if S == 1 {
                            T::load16(row.wrapping_add(x0), keep)
                        } else {
                            let lo = T::load16(row.wrapping_add(2 * x0), m0);
                            let hi = T::load16(row.wrapping_add(2 * x0 + 16), m1);
                            _mm512_permutex2var_epi32(lo, idx, hi)
                        }
                    };
                    if Z0 || T::BIASED {
                        v
                    } else {
                        _mm512_add_epi32(v, zv)
                    }
                } else {
                    zv
                };
                q = _mm512_add_epi32(_mm512_slli_epi32::<8>(q), v);
                if r % S == 0 && r / S < g.qrows {
                    // SAFETY: words `x0..x0 + n` of quad row `r / S`, inside
                    // the phase's rows (`n <= ow - x0`).
                    unsafe {
                        _mm512_mask_storeu_epi32(dst.wrapping_add((r / S) * ow + x0), keep, q)
                    };
                }
            }
            x0 += 16;
        }
    }
}

/// One channel's sums from the quad layout, sixteen positions per vector
/// (`vpdpbusd` per tap, lanes masked where the tap's column lies outside
/// the input), requantized (or stored) by `sink` into `dst` (`g.p()`
/// values); the largest |sum| of each lane into `peak`.
///
/// # Safety
///
/// AVX-512 F, BW and VNNI; `layout` is [`fill`]'s of this channel, `masks`
/// [`QuadGeom::masks`], `t` this channel's taps, `dst` `g.p()` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn channel<const DIV: u8, const CLAMP: bool>(
    g: &QuadGeom,
    layout: &[i32],
    t: &Taps,
    masks: &[u16],
    sink: &Sink16,
    dst: &mut [i32],
    peak: &mut std::arch::x86_64::__m512i,
) {
    use std::arch::x86_64::*;
    let (p, k) = (g.p(), g.shape.k);
    debug_assert!(dst.len() >= p && masks.len() >= g.vectors() * k && layout.len() >= g.len());
    let init = _mm512_set1_epi32(t.comp.wrapping_neg());
    let zq = _mm512_set1_epi32(t.zq.unwrap_or(0));
    for v in 0..g.vectors() {
        let mut acc = init;
        let at = layout.as_ptr().wrapping_add(16 * v);
        let vm = &masks[v * k..(v + 1) * k];
        for q in 0..g.nq {
            for (kx, &lanes) in vm.iter().enumerate() {
                let i = q * k + kx;
                // SAFETY: the sixteen words from `16 v + offs[i]` lie inside
                // the layout (`FRONT` before the rows, `BACK` after them
                // cover the offsets and the last vector's lanes past the
                // map).
                let data = unsafe { _mm512_loadu_si512(at.wrapping_add(t.offs[i]) as *const _) };
                acc = match t.zq {
                    None => _mm512_mask_dpbusd_epi32(acc, lanes, data, _mm512_set1_epi32(t.w[i])),
                    Some(_) => _mm512_dpbusd_epi32(
                        acc,
                        _mm512_mask_blend_epi32(lanes, zq, data),
                        _mm512_set1_epi32(t.w[i]),
                    ),
                };
            }
        }
        // SAFETY: AVX-512 F (this function's); `dst` holds `p` values.
        unsafe { sink.put::<DIV, CLAMP>(acc, v, p, dst, peak) };
    }
}

/// Where a depthwise kernel puts a channel's vectors of sixteen sums: the
/// channel's requantization constants in registers (and the layer's
/// rounding), or none (the sums stored as they are).
#[cfg(target_arch = "x86_64")]
pub(super) struct Sink16<'a> {
    rg: Option<&'a super::gemm::Regs16>,
    xlo: std::arch::x86_64::__m512i,
    xhi: std::arch::x86_64::__m512i,
    m: std::arch::x86_64::__m512i,
    b: std::arch::x86_64::__m512i,
}

#[cfg(target_arch = "x86_64")]
impl<'a> Sink16<'a> {
    /// For one channel: the layer's rounding and the channel's constants.
    ///
    /// # Safety
    ///
    /// AVX-512 F.
    #[target_feature(enable = "avx2,avx512f")]
    #[inline]
    pub(super) unsafe fn new(
        req: Option<(&'a super::gemm::Regs16, &super::fused::RowConsts)>,
    ) -> Sink16<'a> {
        use std::arch::x86_64::*;
        let (rg, (xlo, xhi, m, b)) = match req {
            Some((rg, rc)) => (Some(rg), (rc.xlo, rc.xhi, rc.m, rc.b)),
            None => (None, (0, 0, 0, 0)),
        };
        Sink16 {
            rg,
            xlo: _mm512_set1_epi32(xlo),
            xhi: _mm512_set1_epi32(xhi),
            m: _mm512_set1_epi32(m),
            b: _mm512_set1_epi32(b),
        }
    }

    /// Vector `v` of a channel's sums (`acc`, positions `16 v ..` of `p`):
    /// its largest |sum| per lane into `peak` (lanes past the map
    /// excluded), then requantized in `DIV` and `CLAMP` (the layer's) or as
    /// they are; returned with the lanes of the map.
    ///
    /// # Safety
    ///
    /// AVX-512 F; `16 v < p`.
    #[target_feature(enable = "avx2,avx512f")]
    #[inline]
    pub(super) unsafe fn value<const DIV: u8, const CLAMP: bool>(
        &self,
        acc: std::arch::x86_64::__m512i,
        v: usize,
        p: usize,
        peak: &mut std::arch::x86_64::__m512i,
    ) -> (std::arch::x86_64::__m512i, std::arch::x86_64::__mmask16) {
        use super::gemm::Regs16;
        use std::arch::x86_64::*;
        let n = (p - 16 * v).min(16);
        let keep = ((1u32 << n) - 1) as __mmask16;
        *peak = _mm512_mask_max_epu32(*peak, keep, *peak, _mm512_abs_epi32(acc));
        let r = match self.rg {
            Some(rg) => {
                rg.round::<DIV, CLAMP>(Regs16::scale(acc, self.xlo, self.xhi, self.m, self.b))
            }
            None => acc,
        };
        (r, keep)
    }

    /// [`Sink16::value`] stored into `dst` (positions `16 v ..`).
    ///
    /// # Safety
    ///
    /// AVX-512 F; `dst` holds `p` values, `16 v < p`.
    #[target_feature(enable = "avx2,avx512f")]
    #[inline]
    pub(super) unsafe fn put<const DIV: u8, const CLAMP: bool>(
        &self,
        acc: std::arch::x86_64::__m512i,
        v: usize,
        p: usize,
        dst: &mut [i32],
        peak: &mut std::arch::x86_64::__m512i,
    ) {
        use std::arch::x86_64::*;
        // SAFETY: AVX-512 F, this function's.
        let (r, keep) = unsafe { self.value::<DIV, CLAMP>(acc, v, p, peak) };
        // SAFETY: positions `16 v ..` kept, below `p`, of `dst`.
        unsafe { _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(16 * v), keep, r) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::depthwise::tests::{
        assert_fused_matches, cutting_rows, epilogue_cases, naive,
    };
    use crate::engine::isa::{with_level, Level};

    fn avx512() -> bool {
        cfg!(target_arch = "x86_64")
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }

    /// A 3 x 3 "same" conv of a 4 x 4 map.
    fn tiny() -> Geom {
        Geom::Quads(
            ConvShape::new(4, 4, 3, 1, 1, 4, 4)
                .and_then(QuadGeom::new)
                .expect("a quad geometry"),
        )
    }

    /// The geometry of `shape` in the quad layout, or (`table`) the byte
    /// table for operands offset by `z`, where that one takes it.
    fn geom_of(table: bool, shape: Option<ConvShape>, z: i32) -> Option<Geom> {
        match table {
            false => shape.and_then(QuadGeom::new).map(Geom::Quads),
            true => shape.and_then(|s| TableGeom::new(s, z)).map(Geom::Table),
        }
    }

    /// The rows `x` as the bytes `v + z` a producer writes.
    fn as_bytes(x: &[i32], z: i32) -> Vec<u8> {
        x.iter()
            .map(|&v| u8::try_from(v + z).expect("a byte"))
            .collect()
    }

    /// `c` channels of the definition's sums.
    #[allow(clippy::too_many_arguments)]
    fn want(
        input: &[i32],
        c: usize,
        ih: usize,
        iw: usize,
        w: &[i32],
        k: usize,
        s: usize,
        pad: usize,
    ) -> (Vec<i32>, usize, usize) {
        let oh = (ih + 2 * pad - k) / s + 1;
        let ow = (iw + 2 * pad - k) / s + 1;
        let mut sums = vec![];
        for ch in 0..c {
            let x: Vec<i64> = input[ch * ih * iw..(ch + 1) * ih * iw]
                .iter()
                .map(|&v| v as i64)
                .collect();
            let wc: Vec<i64> = w[ch * k * k..(ch + 1) * k * k]
                .iter()
                .map(|&v| v as i64)
                .collect();
            sums.extend(
                naive(&x, ih, iw, &wc, k, s, pad, oh, ow)
                    .into_iter()
                    .map(|v| v as i32),
            );
        }
        (sums, oh, ow)
    }

    /// The shapes of "same" convs (and a few the layout declines).
    fn shapes() -> Vec<(usize, usize, usize, usize, usize)> {
        let mut shapes = vec![];
        for iw in [1usize, 2, 3, 4, 5, 7, 8, 12, 16, 17, 24, 32, 33, 48] {
            for ih in [1usize, 2, 3, 4, 7, 8, 9] {
                for (s, k, pad) in [
                    (1, 3, 1),
                    (2, 3, 1),
                    (1, 5, 2),
                    (2, 5, 2),
                    (1, 1, 0),
                    (2, 1, 0),
                    (1, 7, 3),
                    (2, 7, 3),
                    (1, 3, 0),
                    (2, 3, 0),
                ] {
                    if ih + 2 * pad >= k && iw + 2 * pad >= k {
                        shapes.push((ih, iw, s, k, pad));
                    }
                }
            }
        }
        shapes
    }

    /// Both 8-bit kernels (the quad layout, the byte table) against the
    /// definition: both offsets (inputs in `0..=255` and in `-128..=127`,
    /// with their edges), weights with the edges -128 and 127, kernels 1 to
    /// 7, strides 1 and 2, maps 1 to 48 wide, the input as rows and as
    /// bytes; the geometries each takes run (and only those: the others
    /// decline).
    #[test]
    fn byte_kernels_match_naive() {
        if !avx512() {
            return;
        }
        let c = 3;
        let mut scratch = vec![7; 5];
        for table in [false, true] {
            let (mut taken, mut declined) = (0, 0);
            with_level(Level::Avx512, || {
                for (ih, iw, s, k, pad) in shapes() {
                    for (z, gen) in [
                        (0, (|i: usize| (i * 37 % 256) as i32) as fn(usize) -> i32),
                        (0, |i| {
                            if i % 3 == 0 {
                                255
                            } else {
                                (i % 2) as i32 * 255
                            }
                        }),
                        (128, |i| (i * 53 % 256) as i32 - 128),
                        (128, |i| if i % 2 == 0 { -128 } else { 127 }),
                    ] {
                        let input: Vec<i32> = (0..c * ih * iw).map(gen).collect();
                        let w: Vec<i32> = (0..c * k * k)
                            .map(|i| match i % 7 {
                                0 => -128,
                                1 => 127,
                                _ => (i * 11 % 255) as i32 - 127,
                            })
                            .collect();
                        let (sums, oh, ow) = want(&input, c, ih, iw, &w, k, s, pad);
                        let what =
                            format!("table {table} ih {ih} iw {iw} s {s} k {k} pad {pad} z {z}");
                        // Weights of another geometry where the layout
                        // declines this one: the kernel must decline them.
                        let geom = geom_of(table, ConvShape::new(ih, iw, k, s, pad, oh, ow), z);
                        let ok = geom.is_some();
                        let wb = DwBytes::from_weights(&w, c, z, geom.unwrap_or_else(tiny));
                        let bytes = as_bytes(&input, z);
                        for input in [DwIn::Rows(&input), DwIn::Bytes(&bytes)] {
                            let mut out = vec![i32::MIN; c * oh * ow];
                            let ran = depthwise_bytes(
                                input,
                                c,
                                ih,
                                iw,
                                &wb,
                                k,
                                s,
                                pad,
                                DwDst::Rows(&mut out),
                                oh,
                                ow,
                                &mut scratch,
                                None,
                            );
                            assert_eq!(ran, ok, "{what}");
                            if !ran {
                                declined += 1;
                                continue;
                            }
                            taken += 1;
                            assert_eq!(out, sums, "{what}");
                        }
                    }
                }
            });
            assert!(
                taken >= 600 && declined >= 100,
                "table {table}: {taken} taken, {declined} declined"
            );
        }
        // Below AVX-512 both decline.
        let w = vec![1; 9];
        let shape = ConvShape::new(4, 4, 3, 1, 1, 4, 4);
        for geom in [tiny(), geom_of(true, shape, 0).expect("a table")] {
            let wb = DwBytes::from_weights(&w, 1, 0, geom);
            let mut out = vec![0; 16];
            let ran = with_level(Level::Avx2, || {
                depthwise_bytes(
                    DwIn::Rows(&[1; 16]),
                    1,
                    4,
                    4,
                    &wb,
                    3,
                    1,
                    1,
                    DwDst::Rows(&mut out),
                    4,
                    4,
                    &mut scratch,
                    None,
                )
            });
            assert!(!ran);
        }
    }

    /// The fused requantization against `requant_clamped` on the kernel's
    /// own sums: every rounding, with and without the clamp, shifts that
    /// take each form of truncation, constants whose clamp ranges cut the
    /// sums on both sides, and the largest |sum| (lanes past the map
    /// excluded); rows and packed outputs.
    #[test]
    fn byte_kernels_fused_match_requant_clamped() {
        if !avx512() {
            return;
        }
        let (mut runs, mut bytes8) = (0, 0);
        let mut scratch = Vec::new();
        with_level(Level::Avx512, || {
            for (table, &(ih, iw, k, s, pad, z)) in [false, true].into_iter().flat_map(|t| {
                [
                    (16usize, 16usize, 3usize, 1usize, 1usize, 0),
                    (8, 8, 3, 1, 1, 128),
                    (4, 4, 3, 1, 1, 0),
                    (5, 3, 3, 1, 1, 0),
                    (16, 16, 3, 2, 1, 0),
                    (32, 16, 5, 2, 2, 128),
                    (9, 11, 5, 1, 2, 0),
                    // Five channels in chunks of three layouts.
                    (32, 32, 3, 1, 1, 128),
                ]
                .iter()
                .map(move |g| (t, g))
            }) {
                let c = 5;
                let input: Vec<i32> = (0..c * ih * iw)
                    .map(|i| (i as i32 * 53) % 256 - z)
                    .collect();
                let w: Vec<i32> = (0..c * k * k)
                    .map(|i| (i as i32 * 37 % 255) - 127)
                    .collect();
                let (sums, oh, ow) = want(&input, c, ih, iw, &w, k, s, pad);
                let geom = geom_of(table, ConvShape::new(ih, iw, k, s, pad, oh, ow), z)
                    .expect("a geometry");
                let wb = DwBytes::from_weights(&w, c, z, geom);
                let p = oh * ow;
                let big = sums.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as i32;
                let mut n = 0;
                let rows = cutting_rows(c, big, || {
                    n += 911;
                    n
                });
                for (e, what) in epilogue_cases(&rows, &[0, 9, 31], None) {
                    let what = format!("table {table} ih {ih} iw {iw} k {k} s {s} z {z} {what}");
                    let want = assert_fused_matches(&sums, p, &e, &what, |got, e| {
                        depthwise_bytes(
                            DwIn::Rows(&input),
                            c,
                            ih,
                            iw,
                            &wb,
                            k,
                            s,
                            pad,
                            DwDst::Rows(got),
                            oh,
                            ow,
                            &mut scratch,
                            Some(e),
                        )
                    });
                    runs += 1;
                    // The table's bytes `v + z8`, where the values fit a
                    // byte with an offset (the quad layout declines bytes).
                    let (lo, hi) = want.iter().fold((0, 0), |(l, h), &v| (v.min(l), v.max(h)));
                    let z8 = match (lo, hi) {
                        (0.., ..=255) => 0,
                        (-128.., ..=127) => 128,
                        _ => continue,
                    };
                    let mut bytes = vec![7u8; c * p];
                    let mut e8 = e.rows_from(0);
                    let ran = depthwise_bytes(
                        DwIn::Rows(&input),
                        c,
                        ih,
                        iw,
                        &wb,
                        k,
                        s,
                        pad,
                        DwDst::Bytes(&mut bytes, z8),
                        oh,
                        ow,
                        &mut scratch,
                        Some(&mut e8),
                    );
                    assert_eq!(ran, table, "{what}: bytes");
                    if ran {
                        let got: Vec<i32> = bytes.iter().map(|&b| b as i32 - z8).collect();
                        assert_eq!(got, want, "{what}: bytes");
                        bytes8 += 1;
                    }
                }
            }
        });
        assert_eq!(runs, 2 * 8 * 18);
        assert!(bytes8 >= 20, "{bytes8} byte outputs");
    }
}
