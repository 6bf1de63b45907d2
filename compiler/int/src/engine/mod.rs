//! The integer engine: runs an [`IntPlan`] on images, integers throughout.
//!
//! Input: a plan and float images (`[C, H, W]`, normalised as for training).
//! Output: per image the logits (dequantized once at the end) and the
//! integer accumulator they come from; per conv layer the largest
//! accumulator reached and, when an accumulator width is simulated, how
//! many values overflowed it.
//!
//! Invariants: activations are i32 (kept between two fused convs as i16
//! pairs or bytes where every reader takes them: see the kernels below),
//! accumulators i32 where the plan proves
//! 31 bits enough and i64 otherwise (the float conv's rounded sums, which
//! no plan bounds: i32 for an image whose sums all fit, i64 otherwise),
//! requantization products i64 (i128
//! where the plan says they may pass 2^63; i32 where the row's own values
//! bound every sum below 2^31); no float arithmetic except where the plan
//! reads the float input (the first conv's float sum, rounded as the plan's
//! mode says, or a `QuantizeInput`) and the final dequantization.
//!
//! Kernels (x86-64 with AVX2, chosen at run time; every other case runs the
//! plain Rust loops, which are the reference the tests compare against):
//! - ungrouped k x k convs whose output rows are multiples of 8 wide, any
//!   stride (but 2x2 stride-2 patches, which im2col packs straight from
//!   the image): `direct_kernel` over a zero-padded, phase-split copy of
//!   the input as i16 channel pairs (`vpmaddwd`, 8 output channels x 8
//!   positions per pass, weights from `direct_weights`);
//! - 1x1 and other grouped/im2col convs: `madd_kernel` over an operand
//!   packed per block of 8 positions (`packed_len`), weights laid out once
//!   by `madd_weights`; a conv of one position (a fc layer) `madd_gemv`,
//!   one dot product per row;
//! - depthwise convs: with 16-bit operands `depthwise_madd` (`vpmaddwd` on
//!   row pairs: two taps of 8 outputs per instruction, a layout whose
//!   zero borders are written once per layer), else
//!   `depthwise_avx2_kernel` (`vpmulld`, all taps of 8 outputs in one
//!   register) over a `Phased` copy of the channel;
//! - the float first conv: `direct_f64_avx2` straight from a zero-bordered
//!   f64 copy of the image where it is ungrouped with stride 1 (fused
//!   multiply-adds, exact there: integer weights times f32 inputs), else
//!   im2col and `gemm_f64` (no FMA); both with the taps in im2col's order,
//!   so bit for bit the plain loop and the C reference;
//! - requantization: one vectorised loop per rounding mode, in i32 lanes,
//!   i64 sums with i32 quotients (`requant_wide_avx2`) or i64 lanes
//!   (`requant_row_body`);
//! - a requantization fused into the conv before it (`fused.rs`, only where
//!   the workspace asks for it: [`Workspace::fuse_requant`], and no
//!   accumulator width is simulated): in the epilogue of `madd_kernel` and
//!   `direct_kernel` (clamp, multiplier, bias, shift and clamp per output
//!   channel on eight accumulators in a register, exact in i32 lanes, or
//!   in i64 sums where only the quotients fit i32: `FusedRequant::wide`), or
//!   for other convs (depthwise, wide operands) one pass per channel over
//!   the freshly computed row (`requant_clamped`); with the same switch a
//!   two-term requantization (a residual add) runs in i32 lanes with its
//!   accumulator clamped to where it still changes the result
//!   (`run_requant2`), where `requant.rs` would take i64 lanes.
//!
//! Where the CPU has AVX-512 F, BW and VNNI (`isa.rs`, detected at run
//! time; `QATC_INT_ISA=avx2` keeps AVX2), `madd_kernel` and `direct_kernel`
//! take their VNNI form (`gemm::vnni_blocks`: sixteen rows x sixteen
//! positions per pass in 512-bit registers, `vpdpwssd` on the same i16
//! pairs), and where every weight fits s8 and the input's range
//! (`ConvLayer::in_range`) fits u8 or s8 (`direct::byte_offset`) the 8-bit
//! form: the operand as u8 quads (offset by 128 for signed inputs),
//! `vpdpbusd` with s8 weight quads, and 128 times each row's weight sum
//! subtracted (`gemm::ByteWeights`), for direct convs and ungrouped 1x1
//! convs, and for depthwise convs: where the CPU has AVX-512 VBMI too and
//! the rows each sixteen outputs reach fit 128 bytes, any stride, padding
//! and kernel up to 8 x 8 (`depthwise_table.rs`: `vpermi2b` picks four
//! taps' input bytes for sixteen outputs from the channel's bytes, one
//! `vpdpbusd` sums them, no layout written), else those of "same" geometry,
//! stride 1 or 2, whose maps are over 8 x 8 (`depthwise_bytes.rs`: the
//! input as u8 row quads, one `vpdpbusd` per kernel column for sixteen
//! outputs); both requantize in the registers. Each block of sums then goes through the 512-bit epilogue
//! (`BlockOut::finish16`: one- and two-term requantizations in i32 lanes,
//! and the i64 form of one term). Where the CPU also has AMX-INT8
//! and the OS grants the tile state (`isa.rs`, `amx.rs`), those 8-bit
//! convs run as tiles instead (`tdpbsud`: sixteen channels x sixteen
//! positions of sums per tile, the same operand bytes and correction),
//! through the same epilogue, one tile row at a time from memory
//! (`BlockOut::tile16`). An 8-bit 1x1 conv (VNNI or AMX) whose readers all
//! take 8-bit operands with one offset `z` (ungrouped 1x1 convs, depthwise
//! convs an 8-bit kernel runs: `fused::bytes_output`) writes its
//! requantized output as bytes `v + z` instead of i32 rows
//! (`gemm::Dst::Bytes`, a quarter of the stores), which its readers lay out
//! straight from (`Workspace::acts8`; a reader that declines them restores
//! the rows). Both 8-bit 1x1 forms read the same operand layout, blocks of
//! sixteen positions (`gemm::pack_quads16`).
//!
//! The 16-bit kernels run only where the plan's bit-widths put operands in
//! i16 (and not both at -2^15).
//!
//! Files, one per kernel family (this one: the public types, the weights
//! converted once per plan, and the layer loop [`run_image`], which skips
//! a requantization its conv did):
//! - `conv.rs`: a conv layer: the element types (`Num`), the choice among
//!   the kernel families below, the accumulator statistics and simulated
//!   width;
//! - `gemm.rs`: im2col and the matrix products of grouped and 1x1 convs
//!   (plain `gemm`, the AVX2 `vpmaddwd` kernel on i16 pairs);
//! - `direct.rs`: the direct 16-bit k x k kernel (AVX2, no im2col);
//! - `depthwise.rs`: depthwise convs (AVX2 `vpmaddwd` kernel on i16 row
//!   pairs, `vpmulld` kernel on i32);
//! - `depthwise_lanes.rs`: depthwise convs of small maps with the channels
//!   in the vector lanes (AVX2, i16);
//! - `depthwise_bytes.rs`: depthwise convs on 8-bit operands (AVX-512
//!   VNNI): the weights' 8-bit forms, the layer loop, the u8 row quads;
//! - `depthwise_table.rs`: the byte table of the 8-bit depthwise convs
//!   (AVX-512 VBMI `vpermi2b`);
//! - `float_stem.rs`: the float first conv in f64 (direct or im2col, AVX2,
//!   the same sums as the plain loop);
//! - `requant.rs`: requantization (AVX2-compiled i32/i64 lanes);
//! - `isa.rs`: whether the AVX-512 VNNI and AMX forms run;
//! - `amx.rs`: the AMX-INT8 tile kernels of the 8-bit 1x1 and direct convs;
//! - `fused.rs`: which conv takes the requantization after it into its
//!   epilogue (`plan_fusion`, per plan), the exact i32 form it computes
//!   there, and the post-pass of the convs whose kernel has no epilogue;
//! - `pool.rs`: average, max and adaptive pooling;
//! - `channels.rs`: channel gathers (split, shuffle) and concatenation;
//! - `pointwise.rs`: the gating product and hardswish;
//! - `linear.rs`: the output layer's dequantization and the seed's float32
//!   linear sum ([`seed_linear_f32`]).
//!
//! Unsafe code: only the AVX2 kernels, each an `unsafe fn` compiled with
//! `#[target_feature(enable = "avx2")]` whose `# Safety` section states what
//! its callers must check (AVX2 present, slice lengths); the callers check
//! it with `is_x86_feature_detected!` and explicit shape tests next to the
//! call. The AMX kernels (`amx.rs`) are written in `asm!` and state the
//! same way what their callers check (`isa::amx`, the tile bounds), and
//! `amx::permitted` makes one `arch_prctl` system call.

// Per-channel loops index several parallel arrays at once.
#![allow(clippy::needless_range_loop)]

/// `$name`: `$body` (a safe, `#[inline(always)]` generic function), run as
/// `$avx`, a copy compiled with AVX2, where the CPU has AVX2, else as is.
/// Both compute exactly the same (the same Rust code; AVX2 only lets the
/// compiler use wider registers).
macro_rules! dispatch {
    ($name:ident, $avx:ident, $body:ident, ($($arg:ident : $ty:ty),*)) => {
        /// The body compiled with AVX2 enabled.
        ///
        /// # Safety
        ///
        /// The CPU must support AVX2. Nothing else: the body is safe Rust.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx<T: Num>($($arg: $ty),*) {
            $body($($arg),*)
        }
        #[allow(clippy::too_many_arguments)]
        pub(super) fn $name<T: Num>($($arg: $ty),*) {
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

mod channels;
mod conv;
/// The conv layers and plans of the unit tests (also the plan's).
#[cfg(test)]
pub(crate) use conv::testing;
mod amx;
mod depthwise;
mod depthwise_bytes;
mod depthwise_lanes;
mod depthwise_table;
mod direct;
mod float_stem;
mod fused;
mod gemm;
mod isa;
mod linear;
mod pointwise;
mod pool;
mod requant;

pub use isa::kernels;
pub use linear::seed_linear_f32;
pub use pointwise::hardswish_int;

use super::plan::{ConvInput, IntPlan, Layer, QuantizeInput, TensorId};
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
    /// The float conv's output in the width it is not stored in now
    /// (`float_stem::round_into`).
    spare32: Vec<i32>,
    spare64: Vec<i64>,
    /// Per layer (index into `plan.layers`), conv layers only.
    pub stats: Vec<AccStats>,
    /// With [`Workspace::time_layers`]: nanoseconds spent in each layer of
    /// `plan.layers`, then one more entry for the output layer, summed over
    /// every [`run_image`] since; empty otherwise (nothing timed).
    layer_ns: Vec<u64>,
    /// Per tensor: not written by the last [`run_image`] (the accumulator
    /// of a conv whose requantization was fused into it, or an activation
    /// written only in `acts16`).
    stale: Vec<bool>,
    /// Per tensor: the activation as the 16-bit operand of the 1x1 convs
    /// that read it (`gemm::Dst::Packed`), where a fused conv wrote it so
    /// (`FusedRequant::packed`); empty for every other tensor.
    acts16: Vec<Vec<i16>>,
    /// Per tensor: the activation as bytes `v + z8[t]` (`gemm::Dst::Bytes`),
    /// where a fused conv wrote it so (`FusedRequant::bytes`); empty for
    /// every other tensor.
    acts8: Vec<Vec<u8>>,
    z8: Vec<i32>,
    /// Whether [`run_image`] fuses requantizations into convs (see
    /// [`Workspace::fuse_requant`]).
    fuse: bool,
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
            spare32: Vec::new(),
            spare64: Vec::new(),
            stats: vec![AccStats::default(); plan.layers.len()],
            layer_ns: Vec::new(),
            stale: vec![false; plan.tensors.len()],
            acts16: vec![Vec::new(); plan.tensors.len()],
            acts8: vec![Vec::new(); plan.tensors.len()],
            z8: vec![0; plan.tensors.len()],
            fuse: false,
        }
    }

    /// Times every layer from now on (a clock read before and after each
    /// layer: for profiles, not for the throughput figures).
    pub fn time_layers(&mut self, plan: &IntPlan) {
        self.layer_ns = vec![0; plan.layers.len() + 1];
    }

    /// Nanoseconds per layer of `plan.layers` and, last, the output layer,
    /// summed over the images run since [`Workspace::time_layers`] (empty
    /// without it).
    pub fn layer_ns(&self) -> &[u64] {
        &self.layer_ns
    }

    /// Fuse each conv's requantization into the conv where the plan allows
    /// it (`fused.rs`: a conv of integers followed by a requantization of
    /// its accumulator, which nothing else reads) and no accumulator width
    /// is simulated. Same logits and statistics, faster; but those convs'
    /// accumulator tensors are not written, nor the activations that only
    /// 1x1 convs read (kept in their operand layout): [`Workspace::tensor`]
    /// has none for them. Off by default
    /// (every tensor kept, as tests that read accumulators need); `evaluate`
    /// and `qatc int bench` turn it on.
    pub fn fuse_requant(&mut self, on: bool) {
        self.fuse = on;
    }

    /// An activation that the last [`run_image`] kept only as the operand
    /// of the 1x1 convs reading it (so [`Workspace::tensor`] has none), as
    /// rows again; `None` for any other tensor.
    pub fn unpacked(&self, plan: &IntPlan, t: TensorId) -> Option<Buf> {
        let [c, h, w] = plan.tensors.get(t)?.shape;
        if self.stale.get(t) != Some(&true) {
            return None;
        }
        let mut rows = vec![0; c * h * w];
        if !self.unpack_into(t, c, h * w, &mut rows) {
            return None;
        }
        Some(Buf::I32(rows))
    }

    /// Tensor `t`'s `c` rows of `p` values from the form a fused conv wrote
    /// instead of rows (bytes or 16-bit pairs) into `rows`; false (nothing
    /// written) where it has neither.
    pub(super) fn unpack_into(&self, t: TensorId, c: usize, p: usize, rows: &mut [i32]) -> bool {
        if let Some(b) = self.acts8.get(t).filter(|v| v.len() >= c * p) {
            let z = self.z8[t];
            for (o, &x) in rows.iter_mut().zip(&b[..c * p]) {
                *o = x as i32 - z;
            }
            true
        } else if let Some(pk) = self.acts16.get(t).filter(|v| !v.is_empty()) {
            gemm::unpack_pairs(pk, c, p, rows);
            true
        } else {
            false
        }
    }

    /// A tensor's values after the last [`run_image`]; `None` for an
    /// accumulator that a fused requantization did not write, or an
    /// activation kept only as a 1x1 conv's operand.
    pub fn tensor(&self, t: TensorId) -> Option<&Buf> {
        if self.stale.get(t) == Some(&true) {
            return None;
        }
        self.bufs.get(t)
    }
}

/// Weights converted once per plan to every width the engine computes in.
pub struct Weights {
    /// Per ungrouped k x k conv of the direct kernel:
    /// [`DirectWeights`](direct::DirectWeights), for
    /// [`conv_direct_madd`](direct::conv_direct_madd).
    dpairs: Vec<direct::DirectWeights>,
    /// Per conv layer, per group, per output row: the weights as i16 pairs
    /// in i32 lanes (low half `w[2j]`, high half `w[2j+1]`) for
    /// [`gemm_madd`](gemm::gemm_madd).
    pairs: Vec<Vec<i32>>,
    /// Per ungrouped 1x1 conv whose operands fit 8 bits
    /// ([`byte_offset`](direct::byte_offset)): its weights' 8-bit form, for
    /// [`gemm_madd_with`](gemm::gemm_madd_with) on AVX-512 VNNI.
    bytes: Vec<Option<gemm::ByteWeights>>,
    /// Per depthwise conv whose operands fit 8 bits: its weights' 8-bit
    /// form, for [`depthwise_bytes`](depthwise_bytes::depthwise_bytes) on
    /// AVX-512 VNNI.
    dw_bytes: Vec<Option<depthwise_bytes::DwBytes>>,
    w32: Vec<Vec<i32>>,
    w64: Vec<Vec<i64>>,
    wf: Vec<Vec<f64>>,
    /// Per layer: the requantization a conv can do in its epilogue
    /// ([`fused::plan_fusion`]).
    fused: Vec<Option<fused::FusedRequant>>,
}

impl Weights {
    /// The requantization layer that conv layer `li` does in its own
    /// epilogue when a workspace fuses them ([`Workspace::fuse_requant`])
    /// and no accumulator width is simulated; `None` if it does none.
    pub fn fused_requant(&self, li: usize) -> Option<usize> {
        self.fused.get(li)?.as_ref().map(|f| f.requant)
    }

    pub fn new(plan: &IntPlan) -> Weights {
        let mut w = Weights {
            dpairs: Vec::new(),
            pairs: Vec::new(),
            bytes: Vec::new(),
            dw_bytes: Vec::new(),
            w32: Vec::new(),
            w64: Vec::new(),
            wf: Vec::new(),
            fused: (0..plan.layers.len())
                .map(|li| fused::plan_fusion(plan, li))
                .collect(),
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
                Layer::Conv(l) if direct::direct_conv(l) => direct::DirectWeights::new(l),
                _ => direct::DirectWeights {
                    pairs: Vec::new(),
                    bytes: None,
                    tiles: None,
                },
            });
            w.pairs.push(match layer {
                Layer::Conv(l) if l.groups != l.cin || l.groups != l.cout || l.groups == 1 => {
                    gemm::madd_weights(&l.weights, l.groups, l.cout / l.groups, l.fan_in)
                }
                _ => Vec::new(),
            });
            w.bytes.push(match layer {
                Layer::Conv(l)
                    if l.groups == 1 && l.kernel == 1 && l.stride == 1 && l.padding == 0 =>
                {
                    direct::byte_offset(l)
                        .map(|z| gemm::ByteWeights::new(&l.weights, l.cout, l.cin, z))
                }
                _ => None,
            });
            w.dw_bytes.push(match layer {
                Layer::Conv(l) => depthwise_bytes::DwBytes::new(l),
                _ => None,
            });
            w.w32.push(a);
            w.w64.push(b);
            w.wf.push(c);
        }
        w
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
    // The layer a conv did with its own (a fused requantization).
    let mut done = None;
    if ws.layer_ns.is_empty() {
        for (li, layer) in plan.layers.iter().enumerate() {
            if done != Some(li) {
                done = run_layer(plan, li, layer, image, weights, ws, sim);
            }
        }
        return Ok(linear::run_output(plan, ws));
    }
    for (li, layer) in plan.layers.iter().enumerate() {
        if done != Some(li) {
            let t = std::time::Instant::now();
            done = run_layer(plan, li, layer, image, weights, ws, sim);
            ws.layer_ns[li] += t.elapsed().as_nanos() as u64;
        }
    }
    let t = std::time::Instant::now();
    let out = linear::run_output(plan, ws);
    ws.layer_ns[plan.layers.len()] += t.elapsed().as_nanos() as u64;
    Ok(out)
}

/// Runs layer `li` (`layer`) of `plan` on the workspace's buffers; returns
/// the index of a later layer it did too (the requantization fused into a
/// conv).
fn run_layer(
    plan: &IntPlan,
    li: usize,
    layer: &Layer,
    image: &[f32],
    weights: &Weights,
    ws: &mut Workspace,
    sim: &SimOptions,
) -> Option<usize> {
    match layer {
        Layer::QuantizeInput(q) => run_quantize_input(q, image, ws),
        Layer::Conv(l) => return run_conv_layer(plan, li, l, image, weights, ws, sim),
        Layer::Requant(r) => run_requant_layer(plan, r, ws),
        Layer::Pool(p) => pool::run_pool(plan, p, ws),
        Layer::Channels(c) => channels::run_channels(plan, c, ws),
        Layer::Concat(c) => channels::run_concat(plan, c, ws),
        Layer::Mul(m) => pointwise::run_mul(plan, m, ws),
        Layer::HardSwish(h) => pointwise::run_hardswish(h, ws),
        Layer::Lut(l) => pointwise::run_lut(l, ws),
    }
    // Written now (a fused conv before may have left it unwritten, or
    // written only as an operand, on an earlier image).
    if let Some(s) = ws.stale.get_mut(layer.output()) {
        *s = false;
    }
    None
}

/// Runs conv layer `li`, fused with the requantization after it where the
/// workspace asks for fusion, the plan allows it and no accumulator width
/// is simulated; returns the index of that requantization when it did it.
fn run_conv_layer(
    plan: &IntPlan,
    li: usize,
    l: &super::plan::ConvLayer,
    image: &[f32],
    weights: &Weights,
    ws: &mut Workspace,
    sim: &SimOptions,
) -> Option<usize> {
    match weights.fused.get(li) {
        Some(Some(f)) if ws.fuse && sim.acc_bits.is_none() && f.ready(plan, &ws.bufs) => {
            conv::run_conv_fused(plan, li, l, image, weights, ws, f);
            Some(f.requant)
        }
        _ => {
            conv::run_conv(plan, li, l, image, weights, ws, sim);
            None
        }
    }
}

/// Runs a requantization layer: a two-term one in i32 lanes
/// (`fused::run_requant2`) where the workspace fuses requantizations and
/// it applies, else as `requant.rs` computes it.
fn run_requant_layer(plan: &IntPlan, r: &super::plan::Requant, ws: &mut Workspace) {
    if !(ws.fuse && fused::run_requant2(plan, r, ws)) {
        requant::run_requant(plan, r, ws)
    }
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
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    }
}
