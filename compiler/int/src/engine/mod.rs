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
//! - depthwise convs: with 16-bit operands `depthwise_madd` (`vpmaddwd` on
//!   row pairs: two taps of 8 outputs per instruction, a layout whose
//!   zero borders are written once per layer), else
//!   `depthwise_avx2_kernel` (`vpmulld`, all taps of 8 outputs in one
//!   register) over a `Phased` copy of the channel;
//! - the float first conv: `gemm_f64` (no FMA, so bit for bit the plain
//!   loop and the C reference);
//! - requantization: one vectorised loop per rounding mode, in i32 or i64
//!   lanes (`requant_row_body`).
//!
//! The 16-bit kernels run only where the plan's bit-widths put operands in
//! i16 (and not both at -2^15).
//!
//! Files, one per kernel family (this one: the public types, the weights
//! converted once per plan, and the layer loop [`run_image`]):
//! - `conv.rs`: a conv layer: the element types (`Num`), the choice among
//!   the kernel families below, the accumulator statistics and simulated
//!   width;
//! - `gemm.rs`: im2col and the matrix products of grouped and 1x1 convs
//!   (plain `gemm`, the AVX2 `vpmaddwd` kernel on i16 pairs);
//! - `direct.rs`: the direct 16-bit k x k kernel (AVX2, no im2col);
//! - `depthwise.rs`: depthwise convs (AVX2 `vpmaddwd` kernel on i16 row
//!   pairs, `vpmulld` kernel on i32);
//! - `float_stem.rs`: the float first conv in f64 (AVX2, no FMA);
//! - `requant.rs`: requantization (AVX2-compiled i32/i64 lanes);
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
//! call.

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
mod depthwise;
mod direct;
mod float_stem;
mod gemm;
mod linear;
mod pointwise;
mod pool;
mod requant;

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

/// Weights converted once per plan to every width the engine computes in.
pub struct Weights {
    /// Per ungrouped k x k conv of the direct kernel:
    /// [`direct_weights`](direct::direct_weights), for
    /// [`conv_direct_madd`](direct::conv_direct_madd).
    dpairs: Vec<Vec<i32>>,
    /// Per conv layer, per group, per output row: the weights as i16 pairs
    /// in i32 lanes (low half `w[2j]`, high half `w[2j+1]`) for
    /// [`gemm_madd`](gemm::gemm_madd).
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
                Layer::Conv(l) if direct::direct_conv(l) => direct::direct_weights(l),
                _ => Vec::new(),
            });
            w.pairs.push(match layer {
                Layer::Conv(l) if l.groups != l.cin || l.groups != l.cout || l.groups == 1 => {
                    gemm::madd_weights(&l.weights, l.groups, l.cout / l.groups, l.fan_in)
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
            Layer::Conv(l) => conv::run_conv(plan, li, l, image, weights, ws, sim),
            Layer::Requant(r) => requant::run_requant(plan, r, ws),
            Layer::Pool(p) => pool::run_pool(plan, p, ws),
            Layer::Channels(c) => channels::run_channels(plan, c, ws),
            Layer::Concat(c) => channels::run_concat(plan, c, ws),
            Layer::Mul(m) => pointwise::run_mul(plan, m, ws),
            Layer::HardSwish(h) => pointwise::run_hardswish(h, ws),
            Layer::Lut(l) => pointwise::run_lut(l, ws),
        }
    }
    Ok(linear::run_output(plan, ws))
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
