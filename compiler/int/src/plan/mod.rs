//! The integer plan: a lowered graph and its trained values turned into
//! integer layers.
//!
//! Input: an [`ir::Graph`](qatc::ir::Graph) (one spec and profile), a
//! [`Checkpoint`] with its variables, and [`PlanOptions`] (rounding mode,
//! fixed-point formats per layer class). Output: an [`IntPlan`], a list of
//! [`Layer`]s over integer tensors that [`super::engine`] runs and
//! [`super::export`] writes out.
//!
//! How a graph becomes integer layers (the seed's section 5, generalised):
//! - Every activation quantizer defines an integer domain: value = `q / scale`
//!   with `q` in `[lo, hi]` (mPACT: `scale = (2^(b-1)-1)/alpha`, signed;
//!   PACT: `(2^b-1)/alpha`, unsigned; DoReFa: `2^b-1` with the `0.1` folded
//!   into the multiplier that feeds it).
//! - Between quantizers the graph is linear per channel: conv/linear sums
//!   (integer accumulators), BN, conv biases and residual adds are kept as a
//!   pending sum of terms `k_c * int + bias_c`, ReLU/ReLU6 as clamps. At the
//!   next quantizer the sum becomes one [`Requant`]: each term's `k_c * scale_out`
//!   and the bias as `fixed<bits, int_bits>` integers, a shift by the
//!   fraction bits, a clamp. That is how BN is absorbed, how a residual add
//!   rescales its identity, and how the fc input is rescaled after pooling.
//! - Where a layer needs integers and the value is still pending (a BN in
//!   front of a conv, as in ToyNet's downsampling path), the sum is
//!   materialised at its own input scale, clamped to the BN bits.
//! - The graph input is float unless a quantizer reads it; then the first
//!   conv or linear reads floats and its accumulator is rounded to an
//!   integer (the seed's float stem, `scale_a = 1`).
//! - The output is dequantized once: logits = `k * acc + bias` (float).
//!
//! Invariants: every layer's integer ranges are known at plan time; a
//! constant that does not fit its format, a float activation or float
//! weights inside the integer part, an unknown op combination, or a missing
//! tensor is an [`IntError`] naming the layer, never a panic. With
//! [`Rounding::Trunc`] the constants are computed in float32 exactly as the
//! seed's PyTorch code computes them, so the plan is bit exact with the
//! seed's `INTforward`.
//!
//! Layout: one module per op, as in [`qatc::ops`], each an `impl Builder`
//! with the op's planning method, dispatched in [`build`]'s node loop:
//! `conv` (conv, dwconv, linear), `batch_norm`, `relu` (ReLU, ReLU6),
//! `act_quant`, `add`, `pool` (avg, max, adaptive avg), `slice` (a split's
//! parts), `shuffle`, `concat`, `mul` (gating), `activation` (hardsigmoid,
//! hardswish; sigmoid, swish and gelu by lookup table); flatten, dropout, identity
//! and the input need no planning. The machinery they share: `builder` (the
//! planner's state, the values it tracks, materialisation, the output
//! layer), `requant` (a pending sum into a quantizer's domain) and
//! `weights` (weights as integers, integer widths). `schedule` then moves
//! residual shortcuts before the last layer of their main path. The types
//! here are the plan itself, what the engine and the exporters read.

mod act_quant;
mod activation;
mod add;
mod batch_norm;
mod builder;
mod concat;
mod conv;
mod mul;
mod pool;
mod relu;
mod requant;
mod schedule;
mod shuffle;
mod slice;
mod weights;

pub use activation::smooth;
pub use weights::{
    signed_bits, weight_fixed, weight_int, FLOAT_INPUT_BOUND, FLOAT_STEM_WEIGHT_BITS,
};

use super::checkpoint::Checkpoint;
use super::fixed::{Div, FixedFormat, Rounding};
use super::IntError;
use builder::{unsupported, Builder, Rectify, Value};
use qatc::ir::{Graph, Op, SlotKind};
use serde::Serialize;
use std::collections::BTreeMap;

/// Index of a tensor in [`IntPlan::tensors`].
pub type TensorId = usize;

/// Fixed-point formats per layer class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Formats {
    pub stem: FixedFormat,
    pub block: FixedFormat,
    pub head: FixedFormat,
    pub fc: FixedFormat,
    /// Materialised BN in front of a conv (ToyNet's downsampling `norm`);
    /// `None`: the format of its layer class.
    pub bn: Option<FixedFormat>,
}

impl Default for Formats {
    /// The seed's: `fixed<32,16>` for stem, head and the fc rescale,
    /// `fixed<32,10>` in the blocks (their BN too).
    fn default() -> Formats {
        Formats {
            stem: FixedFormat::new(32, 16),
            block: FixedFormat::new(32, 10),
            head: FixedFormat::new(32, 16),
            fc: FixedFormat::new(32, 16),
            bn: None,
        }
    }
}

impl Formats {
    pub fn of(&self, kind: SlotKind) -> FixedFormat {
        match kind {
            SlotKind::Stem => self.stem,
            SlotKind::Block => self.block,
            SlotKind::Head => self.head,
            SlotKind::Fc => self.fc,
        }
    }
}

/// What a plan is built with.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PlanOptions {
    pub rounding: Rounding,
    pub formats: Formats,
    /// Clamp constants whose integer part does not fit their format (as the
    /// seed does) instead of failing; `qatc int sweep` uses it.
    pub saturate_constants: bool,
}

impl Default for PlanOptions {
    fn default() -> PlanOptions {
        PlanOptions {
            rounding: Rounding::Trunc,
            formats: Formats::default(),
            saturate_constants: false,
        }
    }
}

/// What a tensor holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TensorKind {
    /// An activation: value = `q / scale`, `q` in `[lo, hi]` (`bits` wide).
    Act {
        scale: f64,
        lo: i64,
        hi: i64,
        bits: u32,
    },
    /// A conv/linear accumulator: value = `acc / scale` (before BN).
    Acc { scale: f64 },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorInfo {
    /// The IR node it belongs to.
    pub name: String,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    #[serde(flatten)]
    pub kind: TensorKind,
    /// Stored as i64 (accumulators that may pass 31 bits).
    pub wide: bool,
}

impl TensorInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a conv reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvInput {
    /// The float graph input (the accumulator is rounded to an integer).
    Float,
    Tensor(TensorId),
}

/// A convolution or linear layer (linear = 1x1 conv on `[F, 1, 1]`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConvLayer {
    pub name: String,
    pub input: ConvInput,
    pub output: TensorId,
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
    pub in_hw: [usize; 2],
    pub out_hw: [usize; 2],
    /// `[cout, cin/groups, k, k]`.
    pub weights: Vec<i32>,
    pub w_bits: u32,
    /// Integer weight = real weight * `w_scale`.
    pub w_scale: f64,
    /// Bits of the activations read (32: float input).
    pub a_bits: u32,
    /// Signed width of the integers actually read (their `[lo, hi]`; 32 for
    /// the float input): the operand width the kernels may use. It exceeds
    /// `a_bits` for unsigned (PACT, DoReFa) activations and for the seed's
    /// pooled fc input, clamped to `[-2^(b-1), 2^(b-1)]`.
    pub in_bits: u32,
    /// The integers read lie in `[in_range[0], in_range[1]]` (the float
    /// input: the i32 range): where that is inside `0..=255` or
    /// `-128..=127`, the 8-bit kernels may read them as u8 (offset by 128).
    pub in_range: [i64; 2],
    /// Float input only: the sum is scaled by this before rounding to an
    /// integer (1 under `trunc`, as the seed; under `nearest`, a power of two
    /// that keeps the sum to about 2^-15 of its real value: 2^8 over 8-bit
    /// weights, 1 over 16-bit fixed-point ones).
    pub float_scale: f64,
    /// Terms summed per output (`cin/groups * k * k`).
    pub fan_in: usize,
    /// Worst-case accumulator width (sign included) from the bit-widths alone.
    pub worst_bits: Option<u32>,
    /// Worst case from the actual weights and the input's integer range.
    pub worst_bits_weights: Option<u32>,
}

/// One term of a requantization: `mult[c] * src[c, ..]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequantTerm {
    pub src: TensorId,
    pub mult: Vec<i64>,
    /// The real multiplier each fixed-point `mult` stands for.
    pub real: Vec<f64>,
}

/// `out = clamp(round_div(sum_t mult_t * src_t + bias, 2^shift), lo, hi)`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Requant {
    pub name: String,
    pub terms: Vec<RequantTerm>,
    pub bias: Vec<i64>,
    pub bias_real: Vec<f64>,
    pub format: FixedFormat,
    pub shift: u32,
    pub div: Div,
    pub lo: i64,
    pub hi: i64,
    pub output: TensorId,
    /// Products may pass 2^63: computed in i128.
    pub wide: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PoolKind {
    Avg {
        kernel: usize,
        stride: usize,
    },
    Max {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    /// Adaptive average pooling to `size x size`.
    Adaptive {
        size: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pool {
    pub name: String,
    pub kind: PoolKind,
    pub input: TensorId,
    pub output: TensorId,
    pub div: Div,
    /// Averages are the window sums, the output scale multiplied by the
    /// window size instead (`nearest`, equal windows): no precision lost.
    pub sum_only: bool,
}

/// Float input to integers: `q = round_even(clamp(x * pre, clip_lo, clip_hi) * gain)`,
/// in float32 as the fake quantizer computes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuantizeInput {
    pub name: String,
    pub pre: f32,
    pub clip_lo: f32,
    pub clip_hi: f32,
    pub gain: f32,
    pub output: TensorId,
}

/// Channels of a tensor in a new order (a split's part, a channel
/// shuffle): output channel `j` is input channel `from[j]`, every position.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Channels {
    pub name: String,
    pub input: TensorId,
    pub output: TensorId,
    pub from: Vec<usize>,
}

/// Tensors of one spatial size side by side along the channels, in order
/// (a concat of integers of one scale).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConcatLayer {
    pub name: String,
    pub inputs: Vec<TensorId>,
    pub output: TensorId,
}

/// The exact product `input * gate` of two integer tensors (a gating
/// multiply): the gate is `[C, H, W]` as the input, or `[C, 1, 1]`
/// broadcast over the positions (`broadcast`). Output scale: the product
/// of the two scales; the quantizer after it requantizes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MulLayer {
    pub name: String,
    pub input: TensorId,
    pub gate: TensorId,
    pub output: TensorId,
    pub broadcast: bool,
}

/// `hardswish` of integers `q` into a quantizer's grid, piecewise, with
/// `c = [a2, a1, a0]` and their left shifts `shl` (each coefficient has
/// its own binary point, `shift - shl[i]` fraction bits):
/// `q <= neg`: 0; `q >= pos`: `div((a0 * q) << shl[2], 2^shift)`; between:
/// `div(((a2 * q * q) << shl[0]) + ((a1 * q) << shl[1]), 2^shift)`; then
/// clamped to `[lo, hi]`. With input scale `s` and the quantizer's gain
/// `G`: `neg = floor(-3s)`, `pos = ceil(3s)`, `a2 = G / (6 s^2)`,
/// `a1 = G / (2 s)`, `a0 = G / s` (`real`: these exact values).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HardSwishLayer {
    pub name: String,
    pub input: TensorId,
    pub output: TensorId,
    pub neg: i64,
    pub pos: i64,
    /// `[a2, a1, a0]` as integers.
    pub c: [i64; 3],
    pub shl: [u32; 3],
    /// The exact `[a2, a1, a0]`.
    pub real: [f64; 3],
    pub shift: u32,
    pub div: Div,
    pub lo: i64,
    pub hi: i64,
    /// The sums may pass 2^62 (or the shift 62): computed in i128.
    pub wide: bool,
}

/// A function with no exact integer form (`sigmoid`, `swish`, `gelu`) of
/// integers `q` at scale `scale` into a quantizer's grid (gain `gain`), as
/// a step function of `q`: the output is `values[i]`, `i` the number of
/// `breaks` at or below `q` (`breaks` ascending, one more value than
/// breaks). The table holds, for every integer `q` the input can hold,
/// `clamp(round(gain * f(q / scale)), lo, hi)`: `f` evaluated in f64 with
/// the `libm` crate's `exp` / `erf` (pure Rust: the same table on every
/// machine), rounded as `div` rounds a quotient (`trunc`: toward zero;
/// `nearest`: halves away from zero), clamped to the quantizer's range.
/// That is the float reference the integer model is exact with respect to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LutLayer {
    pub name: String,
    /// `sigmoid`, `swish` or `gelu`.
    pub function: String,
    pub input: TensorId,
    pub output: TensorId,
    pub scale: f64,
    pub gain: f64,
    pub div: Div,
    pub breaks: Vec<i64>,
    pub values: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "layer", rename_all = "snake_case")]
pub enum Layer {
    QuantizeInput(QuantizeInput),
    Conv(ConvLayer),
    Requant(Requant),
    Pool(Pool),
    Channels(Channels),
    Concat(ConcatLayer),
    Mul(MulLayer),
    HardSwish(HardSwishLayer),
    Lut(LutLayer),
}

impl Layer {
    pub fn name(&self) -> &str {
        match self {
            Layer::QuantizeInput(l) => &l.name,
            Layer::Conv(l) => &l.name,
            Layer::Requant(l) => &l.name,
            Layer::Pool(l) => &l.name,
            Layer::Channels(l) => &l.name,
            Layer::Concat(l) => &l.name,
            Layer::Mul(l) => &l.name,
            Layer::HardSwish(l) => &l.name,
            Layer::Lut(l) => &l.name,
        }
    }

    /// The tensors the layer reads.
    pub fn inputs(&self) -> Vec<TensorId> {
        match self {
            Layer::QuantizeInput(_) => vec![],
            Layer::Conv(l) => match l.input {
                ConvInput::Tensor(t) => vec![t],
                ConvInput::Float => vec![],
            },
            Layer::Requant(r) => r.terms.iter().map(|t| t.src).collect(),
            Layer::Pool(p) => vec![p.input],
            Layer::Channels(c) => vec![c.input],
            Layer::Concat(c) => c.inputs.clone(),
            Layer::Mul(m) => vec![m.input, m.gate],
            Layer::HardSwish(h) => vec![h.input],
            Layer::Lut(l) => vec![l.input],
        }
    }

    /// The tensor the layer writes.
    pub fn output(&self) -> TensorId {
        match self {
            Layer::QuantizeInput(l) => l.output,
            Layer::Conv(l) => l.output,
            Layer::Requant(l) => l.output,
            Layer::Pool(l) => l.output,
            Layer::Channels(l) => l.output,
            Layer::Concat(l) => l.output,
            Layer::Mul(l) => l.output,
            Layer::HardSwish(l) => l.output,
            Layer::Lut(l) => l.output,
        }
    }
}

/// The logits: `sum_t k_t[c] * src_t[c] + bias[c]`, in float32 with the
/// seed's operation order under `trunc`, in f64 otherwise.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutputLayer {
    pub terms: Vec<(TensorId, Vec<f64>)>,
    pub bias: Vec<f64>,
    pub terms_f32: Vec<Vec<f32>>,
    pub bias_f32: Vec<f32>,
    pub classes: usize,
    /// Per term, under `trunc`: the index in [`IntPlan::layers`] of the
    /// linear layer (a 1x1 conv over `[F, 1, 1]` integers) that computes it,
    /// whose sums are taken as the seed's float32 `F.linear` computes them
    /// (`engine::seed_linear_f32`); `None` elsewhere.
    pub seed_linear: Vec<Option<usize>>,
}

/// A whole model as integer layers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IntPlan {
    pub model: String,
    pub profile: String,
    pub options: PlanOptions,
    /// `[C, H, W]` of one input image.
    pub input_shape: [usize; 3],
    pub tensors: Vec<TensorInfo>,
    pub layers: Vec<Layer>,
    pub output: OutputLayer,
    /// IR node name -> the integer tensor holding its value.
    pub node_tensors: BTreeMap<String, TensorId>,
    /// Clipping values (alpha) of the quantizers, by IR node name.
    pub clips: BTreeMap<String, f32>,
    /// Constants clamped to their format (only with `saturate_constants`):
    /// `layer: what value -> format`.
    pub saturated: Vec<String>,
    /// Channels whose constants do not fit their format but whose output is
    /// the same clamp bound for every input the layer can get (see
    /// `Builder::requant`): they output that constant (multipliers 0, the
    /// bias the bound). `layer: channel c -> value (why)`.
    pub folded: Vec<String>,
}

impl IntPlan {
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// The linear layer whose float32 sums output term `ti` takes as the
    /// seed computes them ([`OutputLayer::seed_linear`]): its index, the
    /// layer and its input tensor.
    pub fn seed_linear(&self, ti: usize) -> Option<(usize, &ConvLayer, TensorId)> {
        let li = self.output.seed_linear.get(ti).copied().flatten()?;
        match self.layers.get(li) {
            Some(Layer::Conv(c)) => match c.input {
                ConvInput::Tensor(t) => Some((li, c, t)),
                ConvInput::Float => None,
            },
            _ => None,
        }
    }

    /// The tensor of an IR node (`stem.act_quant_out`).
    pub fn tensor_of(&self, node: &str) -> Option<TensorId> {
        self.node_tensors.get(node).copied()
    }
}

/// Builds the integer plan of `g` with the values of `ck`.
pub fn build(g: &Graph, ck: &Checkpoint, opts: PlanOptions) -> Result<IntPlan, IntError> {
    for f in [
        opts.formats.stem,
        opts.formats.block,
        opts.formats.head,
        opts.formats.fc,
    ]
    .into_iter()
    .chain(opts.formats.bn)
    {
        f.validate()
            .map_err(|reason| IntError::Options { reason })?;
    }
    let mut b = Builder::new(g, ck, opts);
    let mut values: Vec<Option<Value>> = vec![None; g.nodes.len()];
    for n in &g.nodes {
        let v = match &n.op {
            Op::Input(_) => Value::Float,
            Op::Conv(c) => b.conv(n, &values, c)?,
            Op::Linear(l) => b.linear(n, &values, l)?,
            Op::BatchNorm(_) => b.batch_norm(n, &values)?,
            Op::Relu(_) => b.relu(n, &values, Rectify::Relu)?,
            Op::Relu6(_) => b.relu(n, &values, Rectify::Relu6)?,
            Op::ActQuant(a) => b.act_quant(n, &values, a)?,
            Op::Add(_) => b.add(n, &values)?,
            Op::AvgPool(p) => b.avg_pool(n, &values, p)?,
            Op::MaxPool(p) => b.max_pool(n, &values, p)?,
            Op::AdaptiveAvgPool(p) => b.adaptive_avg_pool(n, &values, p)?,
            // A view: the same values.
            Op::Flatten(_) => b.value(&values, n, 0)?.clone(),
            // The identity in inference.
            Op::Dropout(_) | Op::Identity(_) => b.value(&values, n, 0)?.clone(),
            Op::Concat(_) => b.concat(n, &values)?,
            Op::Slice(s) => b.slice(n, &values, s)?,
            Op::Shuffle(s) => b.shuffle(n, &values, s)?,
            Op::Mul(_) => b.mul(n, &values)?,
            Op::Activation(a) => b.activation(n, &values, a)?,
        };
        values[n.id] = Some(v);
    }
    let out_value = values
        .get(g.output)
        .and_then(|v| v.clone())
        .ok_or_else(|| unsupported("output", "the graph has no output value"))?;
    schedule::hoist_shortcuts(&mut b.layers);
    let output = b.output(&out_value)?;
    Ok(IntPlan {
        model: g.model.clone(),
        profile: g.profile.clone(),
        options: opts,
        input_shape: b.g_input_shape(),
        tensors: b.tensors,
        layers: b.layers,
        output,
        node_tensors: b.node_tensors,
        clips: b.clips,
        saturated: b.saturated.into_inner(),
        folded: b.folded,
    })
}
