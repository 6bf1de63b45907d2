//! The integer plan: a lowered graph and its trained values turned into
//! integer layers.
//!
//! Input: an [`ir::Graph`](crate::ir::Graph) (one spec and profile), a
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

// Per-channel loops index several parallel arrays at once.
#![allow(clippy::needless_range_loop)]

use super::checkpoint::Checkpoint;
use super::fixed::{fixed_nearest, fixed_seed, Div, FixedFormat, Rounding};
use super::IntError;
use crate::ir::{Graph, Node, Op, Quantizer, SlotKind, WeightQuant};
use serde::Serialize;
use std::collections::BTreeMap;

/// Index of a tensor in [`IntPlan::tensors`].
pub type TensorId = usize;

/// BN epsilon of every model (the seed's PyTorch default).
const BN_EPS: f32 = 1e-5;

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

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "layer", rename_all = "snake_case")]
pub enum Layer {
    QuantizeInput(QuantizeInput),
    Conv(ConvLayer),
    Requant(Requant),
    Pool(Pool),
}

impl Layer {
    pub fn name(&self) -> &str {
        match self {
            Layer::QuantizeInput(l) => &l.name,
            Layer::Conv(l) => &l.name,
            Layer::Requant(l) => &l.name,
            Layer::Pool(l) => &l.name,
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

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rectify {
    None,
    Relu,
    Relu6,
}

/// An integer tensor with its domain.
#[derive(Clone, Debug)]
struct Q {
    t: TensorId,
    scale: f64,
    lo: i64,
    hi: i64,
    /// Averaged by a pool since its last requantization (the seed rescales
    /// such a tensor with a floor division).
    pooled: bool,
}

/// One term of a pending sum: real = `k[c] * int / denom`.
#[derive(Clone, Debug)]
struct Term {
    src: TensorId,
    /// `scale_a * scale_w` (accumulators) or the activation scale.
    denom: f64,
    /// The seed divides by `tensor(1.0) * scale_w` for the float stem:
    /// `reciprocal() * x` in float32.
    recip_f32: bool,
    k: Vec<f64>,
    /// The BN factor as the seed computes it in float32 (None: no BN).
    k_f32: Option<Vec<f32>>,
    pooled: bool,
    /// Largest |int| the source can hold.
    bound: f64,
}

#[derive(Clone, Debug)]
struct Lin {
    terms: Vec<Term>,
    bias: Vec<f64>,
    bias_f32: Vec<f32>,
    relu: Rectify,
    channels: usize,
}

#[derive(Clone, Debug)]
enum Value {
    Float,
    Q(Q),
    Lin(Lin),
}

/// Where a quantizer sends values: `q = clamp(round(x * gain))`, value `q / scale`.
struct Target {
    gain: f64,
    scale: f64,
    lo: i64,
    hi: i64,
    bits: u32,
}

struct Builder<'a> {
    g: &'a Graph,
    ck: &'a Checkpoint,
    opts: PlanOptions,
    tensors: Vec<TensorInfo>,
    layers: Vec<Layer>,
    node_tensors: BTreeMap<String, TensorId>,
    clips: BTreeMap<String, f32>,
    saturated: std::cell::RefCell<Vec<String>>,
    folded: Vec<String>,
}

fn unsupported(layer: &str, reason: impl Into<String>) -> IntError {
    IntError::Unsupported {
        layer: layer.to_string(),
        reason: reason.into(),
    }
}

fn shape3(n: &[i64]) -> [usize; 3] {
    match n {
        [c, h, w] => [*c as usize, *h as usize, *w as usize],
        [f] => [*f as usize, 1, 1],
        _ => [0, 0, 0],
    }
}

/// The smallest signed width `n` with `-2^(n-1) <= lo` and `hi < 2^(n-1)`.
pub fn signed_bits(lo: i64, hi: i64) -> u32 {
    (1..64)
        .find(|&n| lo >= -(1i64 << (n - 1)) && hi < (1i64 << (n - 1)))
        .unwrap_or(64)
}

fn bits_of(x: f64) -> u32 {
    // Signed width holding |x|.
    if x < 1.0 {
        1
    } else {
        (x.log2().floor() as u32) + 2
    }
}

/// The magnitude up to which the integer pipeline sizes the values of a
/// float stem (normalised images: CIFAR-10's lie within 2.8); larger inputs
/// are not an error, the stem's materialised output saturates.
pub const FLOAT_INPUT_BOUND: f64 = 8.0;

/// Bits of the fixed-point numbers that hold a float stem's weights (a
/// first conv with 32-bit weights that reads the float input).
pub const FLOAT_STEM_WEIGHT_BITS: u32 = 16;

/// Float weights as `bits`-bit fixed-point integers, one power-of-two scale
/// per tensor: `w ~ q / 2^f` with the largest `f` that keeps every `|q|`
/// within `2^(bits-1) - 1` (nearest rounding). Returns `(q, 2^f)`. The
/// relative error of the largest weight is at most `2^-(bits-1)`.
pub fn weight_fixed(w: &[f32], bits: u32) -> (Vec<i32>, f64) {
    let limit = ((1i64 << (bits - 1)) - 1) as f64;
    let max = w.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let f = if max > 0.0 && max.is_finite() {
        (limit / max).log2().floor() as i32
    } else {
        0
    };
    let scale = 2f64.powi(f);
    let q = w
        .iter()
        .map(|&x| ((x as f64) * scale).round().clamp(-limit, limit) as i32)
        .collect();
    (q, scale)
}

/// The seed's `weight_int`: `t = tanh(w) / max|tanh(w)|`,
/// `q = clamp(round(t * (2^(b-1)-1)))`, in float32; 2-bit weights take
/// `sign(t)` as the fake quantizer does, 1-bit ones `sign(w)` with scale
/// `1 / mean|w|`. Returns the integers and their scale.
pub fn weight_int(w: &[f32], bits: u32) -> (Vec<i32>, f64) {
    if bits == 1 {
        let mean = w.iter().map(|x| x.abs() as f64).sum::<f64>() / w.len().max(1) as f64;
        let q = w.iter().map(|&x| if x >= 0.0 { 1 } else { -1 }).collect();
        return (q, if mean > 0.0 { 1.0 / mean } else { 1.0 });
    }
    let t: Vec<f32> = w.iter().map(|&x| (x as f64).tanh() as f32).collect();
    let max = t.iter().fold(0f32, |m, x| m.max(x.abs()));
    let max = if max > 0.0 { max } else { 1.0 };
    if bits == 2 {
        let q = t
            .iter()
            .map(|&x| {
                let v = x / max;
                if v > 0.0 {
                    1
                } else if v < 0.0 {
                    -1
                } else {
                    0
                }
            })
            .collect();
        return (q, 1.0);
    }
    let n = ((1i64 << (bits - 1)) - 1) as f32;
    let q = t
        .iter()
        .map(|&x| ((x / max) * n).round_ties_even().clamp(-n - 1.0, n) as i32)
        .collect();
    (q, n as f64)
}

impl<'a> Builder<'a> {
    fn new_tensor(
        &mut self,
        name: &str,
        shape: [usize; 3],
        kind: TensorKind,
        wide: bool,
    ) -> TensorId {
        self.tensors.push(TensorInfo {
            name: name.to_string(),
            shape,
            kind,
            wide,
        });
        self.tensors.len() - 1
    }

    fn format(&self, n: &Node) -> FixedFormat {
        self.opts.formats.of(self.g.slots[n.slot].kind)
    }

    /// Whether [`Self::fixed`] represents the constant without clamping.
    fn fits(&self, v32: f32, v64: f64, fmt: FixedFormat) -> bool {
        match self.opts.rounding {
            Rounding::Trunc => fixed_seed(v32, fmt, false).is_ok(),
            Rounding::Nearest | Rounding::Scaled => fixed_nearest(v64, fmt, false).is_ok(),
        }
    }

    fn fixed(
        &self,
        layer: &str,
        what: &str,
        v32: f32,
        v64: f64,
        fmt: FixedFormat,
    ) -> Result<i64, IntError> {
        if !self.fits(v32, v64, fmt) && self.opts.saturate_constants {
            self.saturated
                .borrow_mut()
                .push(format!("{layer}: {what} {v64} -> {fmt}"));
        }
        let r = match self.opts.rounding {
            Rounding::Trunc => fixed_seed(v32, fmt, self.opts.saturate_constants),
            Rounding::Nearest | Rounding::Scaled => {
                fixed_nearest(v64, fmt, self.opts.saturate_constants)
            }
        };
        r.map_err(|o| IntError::FormatOverflow {
            layer: layer.to_string(),
            what: what.to_string(),
            value: o.value,
            format: fmt,
        })
    }

    fn value<'v>(
        &self,
        values: &'v [Option<Value>],
        n: &Node,
        i: usize,
    ) -> Result<&'v Value, IntError> {
        n.inputs
            .get(i)
            .and_then(|&id| values.get(id))
            .and_then(|v| v.as_ref())
            .ok_or_else(|| unsupported(&n.name, "its input has no integer value"))
    }

    fn lin_of(&self, n: &Node, v: &Value) -> Result<Lin, IntError> {
        match v {
            Value::Float => Err(unsupported(
                &n.name,
                "reads the float input directly; only a conv or linear layer can (or quantize the input with an act)",
            )),
            Value::Lin(l) => Ok(l.clone()),
            Value::Q(q) => {
                let c = self.tensors[q.t].shape[0];
                Ok(Lin {
                    terms: vec![Term {
                        src: q.t,
                        denom: q.scale,
                        recip_f32: false,
                        k: vec![1.0; c],
                        k_f32: None,
                        pooled: q.pooled,
                        bound: q.lo.unsigned_abs().max(q.hi.unsigned_abs()) as f64,
                    }],
                    bias: vec![0.0; c],
                    bias_f32: vec![0.0; c],
                    relu: Rectify::None,
                    channels: c,
                })
            }
        }
    }

    /// The quantizer's integer domain.
    fn target(&mut self, n: &Node, q: &Quantizer) -> Result<Target, IntError> {
        let b = n.out_bit;
        let alpha = |me: &mut Self| -> Result<f64, IntError> {
            let a = me.ck.scalar(&format!("{}.alpha", n.name))?;
            me.clips.insert(n.name.clone(), a);
            if a.is_nan() || a <= 0.0 {
                return Err(IntError::BadClip {
                    layer: n.name.clone(),
                    alpha: a as f64,
                });
            }
            Ok(a as f64)
        };
        let trunc = self.opts.rounding == Rounding::Trunc;
        Ok(match q {
            Quantizer::Mpact { .. } => {
                if b < 2 {
                    return Err(unsupported(&n.name, "mPACT needs at least 2 bits"));
                }
                let a = alpha(self)?;
                let r = (1i64 << (b - 1)) - 1;
                let s = r as f64 / a;
                Target {
                    gain: s,
                    scale: s,
                    // The seed clamps to [-r-1, r]; the fake quantizer to [-r, r].
                    lo: if trunc { -r - 1 } else { -r },
                    hi: r,
                    bits: b,
                }
            }
            Quantizer::Pact { .. } => {
                let a = alpha(self)?;
                let r = (1i64 << b) - 1;
                let s = r as f64 / a;
                Target {
                    gain: s,
                    scale: s,
                    lo: 0,
                    hi: r,
                    bits: b,
                }
            }
            Quantizer::PactFixed { scale } => {
                let r = (1i64 << b) - 1;
                let s = r as f64 / scale;
                Target {
                    gain: s,
                    scale: s,
                    lo: 0,
                    hi: r,
                    bits: b,
                }
            }
            Quantizer::Dorefa => {
                if b < 2 {
                    return Err(unsupported(
                        &n.name,
                        "1-bit DoReFa activations (sign) have no integer form here",
                    ));
                }
                let r = (1i64 << b) - 1;
                Target {
                    gain: 0.1 * r as f64,
                    scale: r as f64,
                    lo: 0,
                    hi: r,
                    bits: b,
                }
            }
            Quantizer::None => unreachable!("identity handled by the caller"),
        })
    }

    /// Turns a pending sum into integers in `t`'s domain.
    fn requant(
        &mut self,
        n: &Node,
        lin: &Lin,
        t: &Target,
        fmt: FixedFormat,
    ) -> Result<Q, IntError> {
        let trunc = self.opts.rounding == Rounding::Trunc;
        let c = lin.channels;
        // `scaled`: the binary point that gives the largest constant the
        // format's full width.
        let fmt = if self.opts.rounding == Rounding::Scaled {
            let mut maxv = 0f64;
            for term in &lin.terms {
                for ch in 0..c {
                    maxv = maxv.max((t.gain / term.denom * term.k[ch]).abs());
                }
            }
            for ch in 0..c {
                maxv = maxv.max((t.gain * lin.bias[ch]).abs());
            }
            let room = ((1u64 << (fmt.bits - 1)) - 1) as f64;
            let frac = if maxv > 0.0 {
                (room / maxv).log2().floor().clamp(0.0, 56.0) as u32
            } else {
                fmt.frac()
            };
            // `frac` fraction bits; the integer part is what is left of the
            // width, at least one bit (the constants fit the width by the
            // choice of `frac`).
            let int_bits = fmt.bits.saturating_sub(frac).max(1);
            FixedFormat::new(frac + int_bits, int_bits)
        } else {
            fmt
        };
        let (mut lo, mut hi) = (t.lo, t.hi);
        match lin.relu {
            Rectify::None => {}
            Rectify::Relu => lo = lo.max(0),
            Rectify::Relu6 => {
                lo = lo.max(0);
                let six = 6.0 * t.gain;
                hi = hi.min(if trunc { six.trunc() } else { six.round() } as i64);
            }
        }
        // A term's multiplier and the bias of channel `ch`, as (f32, f64):
        // the seed's float32 computation and the exact value.
        let mult_of = |term: &Term, ch: usize| -> (f32, f64) {
            let r32 = if term.recip_f32 {
                (1.0f32 / term.denom as f32) * t.gain as f32
            } else {
                (t.gain / term.denom) as f32
            };
            let m32 = term.k_f32.as_ref().map_or(r32, |k| r32 * k[ch]);
            (m32, t.gain / term.denom * term.k[ch])
        };
        let bias_of = |ch: usize| (t.gain as f32 * lin.bias_f32[ch], t.gain * lin.bias[ch]);
        // A channel whose output is the same clamp bound for every input the
        // layer can get (its real pre-clamp value, bias plus the multipliers
        // times the accumulators' worst-case bounds, stays more than one
        // step beyond `lo` or `hi`) is a constant. Where its constants do
        // not fit the format (a channel that batch norm scaled by a
        // near-zero variance: huge multiplier and bias), it is folded into
        // that constant instead of failing: exact, since the fake-quant
        // model outputs the same bound there. Not with
        // `saturate_constants`, which keeps the seed's clamped constants.
        let fold: Vec<Option<i64>> = (0..c)
            .map(|ch| {
                if self.opts.saturate_constants {
                    return None;
                }
                let reach = t.gain * self.channel_reach(lin, ch, false);
                let (b32, b) = bias_of(ch);
                let value = if !reach.is_finite() || !b.is_finite() {
                    None
                } else if b + reach < lo as f64 - 1.0 {
                    Some(lo)
                } else if b - reach > hi as f64 + 1.0 {
                    Some(hi)
                } else {
                    None
                }?;
                let all_fit = self.fits(b32, b, fmt)
                    && lin.terms.iter().all(|term| {
                        let (m32, m64) = mult_of(term, ch);
                        self.fits(m32, m64, fmt)
                    });
                (!all_fit).then_some(value)
            })
            .collect();
        for (ch, v) in fold.iter().enumerate() {
            if let Some(v) = v {
                self.folded.push(format!(
                    "{}: channel {ch} -> {v} (constants beyond {fmt}; the output is {v} for every input)",
                    n.name
                ));
            }
        }
        let mut terms = Vec::new();
        let mut worst = 0f64;
        for term in &lin.terms {
            let mut mult = Vec::with_capacity(c);
            let mut real = Vec::with_capacity(c);
            let mut mmax = 0f64;
            for ch in 0..c {
                let (m32, m64) = mult_of(term, ch);
                let m = match fold[ch] {
                    Some(_) => 0,
                    None => self.fixed(&n.name, "multiplier", m32, m64, fmt)?,
                };
                mmax = mmax.max(m.unsigned_abs() as f64);
                mult.push(m);
                real.push(m64);
            }
            worst += mmax * term.bound;
            terms.push(RequantTerm {
                src: term.src,
                mult,
                real,
            });
        }
        let mut bias = Vec::with_capacity(c);
        let mut bias_real = Vec::with_capacity(c);
        for ch in 0..c {
            let (b32, b64) = bias_of(ch);
            let b = match fold[ch] {
                // The bound itself, at the binary point.
                Some(v) => v << fmt.frac(),
                None => self.fixed(&n.name, "bias", b32, b64, fmt)?,
            };
            worst += b.unsigned_abs() as f64;
            bias.push(b);
            bias_real.push(b64);
        }
        let mut div = if trunc { Div::Trunc } else { Div::Nearest };
        // The seed rescales the pooled features with a floor division and
        // clamps them to [-2^(b-1), 2^(b-1)] (ToyNet's `INTforward`).
        if trunc && lin.terms.len() == 1 && lin.terms[0].pooled && lin.terms[0].k_f32.is_none() {
            div = Div::Floor;
            hi += 1;
        }
        let shape = self.tensors[lin.terms[0].src].shape;
        let out = self.new_tensor(
            &n.name,
            [c, shape[1], shape[2]],
            TensorKind::Act {
                scale: t.scale,
                lo,
                hi,
                bits: t.bits,
            },
            false,
        );
        self.layers.push(Layer::Requant(Requant {
            name: n.name.clone(),
            terms,
            bias,
            bias_real,
            format: fmt,
            shift: fmt.frac(),
            div,
            lo,
            hi,
            output: out,
            wide: worst >= 4.0e18,
        }));
        self.node_tensors.insert(n.name.clone(), out);
        Ok(Q {
            t: out,
            scale: t.scale,
            lo,
            hi,
            pooled: false,
        })
    }

    /// How far a term's accumulator reaches in channel `ch`: its
    /// worst-case bound, or for the accumulator of a conv that reads the
    /// float input (whose bound is unknown), the weights' row sum times
    /// [`FLOAT_INPUT_BOUND`].
    fn term_reach(&self, term: &Term, ch: usize) -> f64 {
        if term.bound < 2f64.powi(40) {
            return term.bound;
        }
        self.layers
            .iter()
            .find_map(|l| match l {
                Layer::Conv(c) if c.output == term.src && matches!(c.input, ConvInput::Float) => {
                    let per = c.weights.len() / c.cout.max(1);
                    let row = &c.weights[ch * per..(ch + 1) * per];
                    let sum: f64 = row.iter().map(|w| w.unsigned_abs() as f64).sum();
                    Some(sum * FLOAT_INPUT_BOUND * c.float_scale)
                }
                _ => None,
            })
            .unwrap_or(term.bound)
    }

    /// How far the pending sum of channel `ch` can move from its bias, in
    /// real units: the sum over its terms of |multiplier| times the
    /// accumulator's worst-case bound, or with `sizing` times
    /// [`Self::term_reach`] (which assumes float inputs within
    /// [`FLOAT_INPUT_BOUND`]: for choosing a scale, never for a proof).
    fn channel_reach(&self, lin: &Lin, ch: usize, sizing: bool) -> f64 {
        lin.terms
            .iter()
            .map(|term| {
                let bound = if sizing {
                    self.term_reach(term, ch)
                } else {
                    term.bound
                };
                (term.k[ch] / term.denom).abs() * bound
            })
            .sum()
    }

    /// An unquantized activation (a pending sum after a ReLU) as 16-bit
    /// integers: at the power-of-two scale that puts the largest value it
    /// can reach at most at 2^15 - 1 (and its constants within the format),
    /// clamped there. For a float stem that assumes inputs within
    /// [`FLOAT_INPUT_BOUND`]; larger ones saturate. 16-bit operands let the
    /// next conv use the engine's 16-bit kernels.
    fn materialize_wide(&mut self, n: &Node, lin: &Lin) -> Result<Q, IntError> {
        let limit = 32767f64;
        let fmt = self.format(n);
        let room = 2f64.powi(fmt.int_bits as i32 - 1);
        let (mut reach, mut largest) = (0f64, 0f64);
        for ch in 0..lin.channels {
            reach = reach.max(lin.bias[ch].abs() + self.channel_reach(lin, ch, true));
            largest = lin
                .terms
                .iter()
                .map(|term| (term.k[ch] / term.denom).abs())
                .fold(largest.max(lin.bias[ch].abs()), f64::max);
        }
        let mut gain = if reach > 0.0 && reach.is_finite() {
            2f64.powi((limit / reach).log2().floor() as i32)
        } else {
            1.0
        };
        if largest > 0.0 && largest.is_finite() && gain * largest >= room {
            gain = 2f64.powi((room / largest).log2().floor() as i32 - 1);
        }
        let t = Target {
            gain,
            scale: gain,
            lo: -(limit as i64),
            hi: limit as i64,
            bits: 16,
        };
        let mut node = n.clone();
        node.name = format!("{}.int", n.name);
        self.requant(&node, lin, &t, fmt)
    }

    /// Integers for a layer that needs them: a pending sum is materialised
    /// at the scale of its first term, clamped to the BN bits.
    fn integers(&mut self, n: &Node, v: &Value) -> Result<Q, IntError> {
        match v {
            Value::Q(q) => Ok(q.clone()),
            Value::Float => Err(unsupported(
                &n.name,
                "reads the float input directly; only a conv or linear layer can (or quantize the input with an act)",
            )),
            Value::Lin(lin) => {
                let bits = self.g.bn_bits.clamp(2, 32);
                let r = (1i64 << (bits - 1)) - 1;
                let s = lin.terms[0].denom;
                let fmt = self
                    .opts
                    .formats
                    .bn
                    .unwrap_or_else(|| self.format(n));
                let t = Target {
                    gain: s,
                    scale: s,
                    lo: -r - 1,
                    hi: r,
                    bits,
                };
                let name = format!("{}.int", n.name);
                let mut node = n.clone();
                node.name = name;
                let mut q = self.requant(&node, lin, &t, fmt)?;
                let limit = r;
                // The values reach at most (sum |mult| * |src| + |bias|) / 2^shift:
                // narrowing the range to that changes no value, and lets the
                // next conv use 16-bit operands and 32-bit accumulators.
                if let Some(Layer::Requant(rq)) = self.layers.last_mut() {
                    let r = rq;
                    let mut reach = r.bias.iter().map(|b| b.unsigned_abs() as f64).fold(0.0, f64::max);
                    for (term, lt) in r.terms.iter().zip(&lin.terms) {
                        let m = term.mult.iter().map(|m| m.unsigned_abs() as f64).fold(0.0, f64::max);
                        reach += m * lt.bound;
                    }
                    let reach = reach / 2f64.powi(r.shift as i32) + 1.0;
                    if reach < limit as f64 {
                        let reach = reach.ceil() as i64;
                        r.lo = r.lo.max(-reach);
                        r.hi = r.hi.min(reach);
                        q.lo = r.lo;
                        q.hi = r.hi;
                        if let TensorKind::Act { lo, hi, bits: b, .. } = &mut self.tensors[q.t].kind {
                            *lo = q.lo;
                            *hi = q.hi;
                            *b = bits_of(reach as f64);
                        }
                    }
                }
                Ok(q)
            }
        }
    }

    fn conv(
        &mut self,
        n: &Node,
        v: &Value,
        geometry: (usize, usize, usize, usize, usize),
        bias: bool,
    ) -> Result<Value, IntError> {
        let (cout, kernel, stride, padding, groups) = geometry;
        let (input, a_bits, in_bits, mut denom_a, bound) = match v {
            Value::Float => (ConvInput::Float, 32, 32, 1.0, None),
            other => {
                let q = self.integers(n, other)?;
                let bits = match &self.tensors[q.t].kind {
                    TensorKind::Act { bits, .. } => *bits,
                    TensorKind::Acc { .. } => 32,
                };
                (
                    ConvInput::Tensor(q.t),
                    bits,
                    signed_bits(q.lo, q.hi),
                    q.scale,
                    Some(q.lo.unsigned_abs().max(q.hi.unsigned_abs()) as f64),
                )
            }
        };
        let w_bits = n.w_bit.unwrap_or(32);
        let float_weights = self.g.weight_quant == WeightQuant::None || w_bits >= 32;
        // Float weights are allowed where the input is float too (a stem
        // kept wide, as ResNet20's `w8a8`): the layer already computes in
        // floating point, so its weights become fixed-point numbers.
        if float_weights && !matches!(input, ConvInput::Float) {
            return Err(unsupported(
                &n.name,
                format!("its weights are float ({w_bits} bit); the integer pipeline needs quantized weights (at most 16 bits) except in a layer that reads the float input"),
            ));
        }
        let wname = format!("{}.weight", n.name);
        let (weights, w_scale, w_bits) = if float_weights {
            let (q, scale) = weight_fixed(self.ck.get(&wname)?, FLOAT_STEM_WEIGHT_BITS);
            (q, scale, FLOAT_STEM_WEIGHT_BITS)
        } else {
            let (q, scale) = weight_int(self.ck.get(&wname)?, w_bits);
            (q, scale, w_bits)
        };
        // The float input's sum: truncated to an integer by the seed
        // (`trunc`); otherwise kept to a resolution of about 2^-15 of its
        // real value, i.e. 8 fraction bits over 8-bit weights (scale 127)
        // and none over 16-bit fixed-point ones (2^15): more would only
        // shrink the requantization's multipliers to a few significant bits.
        let float_scale = match self.opts.rounding {
            Rounding::Trunc => 1.0,
            Rounding::Nearest | Rounding::Scaled => {
                2f64.powi((15.0 - w_scale.log2()).round().clamp(0.0, 8.0) as i32)
            }
        };
        if matches!(input, ConvInput::Float) {
            denom_a = float_scale;
        }
        let in_shape = shape3(&n.in_shape.0);
        let out_shape = shape3(&n.out_shape.0);
        let cin = in_shape[0];
        let fan_in = cin / groups.max(1) * kernel * kernel;
        let worst_bits = if a_bits < 32 {
            Some(bits_of(
                fan_in as f64 * 2f64.powi(a_bits as i32 - 1) * 2f64.powi(w_bits as i32 - 1),
            ))
        } else {
            None
        };
        let worst_bits_weights = bound.map(|b| {
            let per_out = fan_in.max(1);
            weights
                .chunks(per_out)
                .map(|row| bits_of(row.iter().map(|w| w.unsigned_abs() as f64).sum::<f64>() * b))
                .max()
                .unwrap_or(1)
        });
        let acc_bound = match (worst_bits_weights, input) {
            (Some(wb), _) => 2f64.powi(wb as i32 - 1),
            (None, _) => 2f64.powi(40),
        };
        let wide = worst_bits_weights.is_none_or(|b| b > 31);
        let denom = denom_a * w_scale;
        let out = self.new_tensor(&n.name, out_shape, TensorKind::Acc { scale: denom }, wide);
        self.layers.push(Layer::Conv(ConvLayer {
            name: n.name.clone(),
            input,
            output: out,
            cin,
            cout,
            kernel,
            stride,
            padding,
            groups,
            in_hw: [in_shape[1], in_shape[2]],
            out_hw: [out_shape[1], out_shape[2]],
            weights,
            w_bits,
            w_scale,
            a_bits,
            in_bits,
            float_scale: if matches!(input, ConvInput::Float) {
                float_scale
            } else {
                1.0
            },
            fan_in,
            worst_bits,
            worst_bits_weights,
        }));
        let mut b64 = vec![0.0; cout];
        let mut b32 = vec![0.0f32; cout];
        if bias {
            let b = self.ck.get(&format!("{}.bias", n.name))?;
            for (ch, &x) in b.iter().enumerate().take(cout) {
                b64[ch] = x as f64;
                b32[ch] = x;
            }
        }
        Ok(Value::Lin(Lin {
            terms: vec![Term {
                src: out,
                denom,
                recip_f32: matches!(input, ConvInput::Float),
                k: vec![1.0; cout],
                k_f32: None,
                pooled: false,
                bound: acc_bound,
            }],
            bias: b64,
            bias_f32: b32,
            relu: Rectify::None,
            channels: cout,
        }))
    }

    fn batch_norm(&mut self, n: &Node, v: &Value) -> Result<Value, IntError> {
        let mut lin = self.lin_of(n, v)?;
        if lin.relu != Rectify::None {
            return Err(unsupported(
                &n.name,
                "BN after a ReLU without a quantizer between them",
            ));
        }
        let get = |p: &str| self.ck.get(&format!("{}.{p}", n.name));
        let (gamma, beta, mean, var) = (
            get("weight")?,
            get("bias")?,
            get("running_mean")?,
            get("running_var")?,
        );
        let c = lin.channels;
        let mut w64 = vec![0.0; c];
        let mut w32 = vec![0.0f32; c];
        let mut b64 = vec![0.0; c];
        let mut b32 = vec![0.0f32; c];
        // The float32 standard deviations the seed's constants come from:
        // the checkpoint's where it carries them, else (under `trunc`)
        // libtorch's square root as the seed's PyTorch computed it, else IEEE.
        let var_eps: Vec<f32> = var.iter().take(c).map(|v| v + BN_EPS).collect();
        let std32: Vec<f32> = match self.ck.bn_std.get(&n.name).filter(|s| s.len() == c) {
            Some(s) => s.clone(),
            None if self.opts.rounding == Rounding::Trunc => super::seed_sqrt::sqrt_f32(&var_eps),
            None => var_eps.iter().map(|v| v.sqrt()).collect(),
        };
        for ch in 0..c {
            // As the seed: gamma.div(sqrt(var + eps)), beta - gamma.mul(mean).div(sqrt(var + eps)).
            let std32 = std32[ch];
            w32[ch] = gamma[ch] / std32;
            b32[ch] = beta[ch] - (gamma[ch] * mean[ch]) / std32;
            let std64 = (var[ch] as f64 + BN_EPS as f64).sqrt();
            w64[ch] = gamma[ch] as f64 / std64;
            b64[ch] = beta[ch] as f64 - gamma[ch] as f64 * mean[ch] as f64 / std64;
        }
        for term in &mut lin.terms {
            for ch in 0..c {
                term.k[ch] *= w64[ch];
            }
            term.k_f32 = Some(match &term.k_f32 {
                Some(k) => k.iter().zip(&w32).map(|(a, b)| a * b).collect(),
                None => w32.clone(),
            });
        }
        for ch in 0..c {
            lin.bias[ch] = lin.bias[ch] * w64[ch] + b64[ch];
            lin.bias_f32[ch] = lin.bias_f32[ch] * w32[ch] + b32[ch];
        }
        Ok(Value::Lin(lin))
    }

    fn pool(&mut self, n: &Node, v: &Value, kind: PoolKind) -> Result<Value, IntError> {
        let q = self.integers(n, v)?;
        let info = self.tensors[q.t].clone();
        let out_shape = shape3(&n.out_shape.0);
        let averaging = !matches!(kind, PoolKind::Max { .. });
        let div = match self.opts.rounding {
            Rounding::Trunc => Div::Trunc,
            Rounding::Nearest | Rounding::Scaled => Div::Nearest,
        };
        // Window size when every window has the same (and no padding).
        let window = match kind {
            PoolKind::Avg { kernel, .. } => Some(kernel * kernel),
            PoolKind::Adaptive { size }
                if size > 0 && info.shape[1] % size == 0 && info.shape[2] % size == 0 =>
            {
                Some((info.shape[1] / size) * (info.shape[2] / size))
            }
            _ => None,
        };
        // `nearest` keeps the sums (the next requantization divides, with
        // its own rounding); `trunc` divides as the seed does.
        let sum_only = !self.opts.rounding.is_trunc() && window.is_some();
        let (mut kind_out, mut q_out) = (info.kind.clone(), q.clone());
        if let (
            true,
            Some(a),
            TensorKind::Act {
                scale,
                lo,
                hi,
                bits,
            },
        ) = (sum_only, window, &info.kind)
        {
            let a = a as i64;
            kind_out = TensorKind::Act {
                scale: scale * a as f64,
                lo: lo * a,
                hi: hi * a,
                bits: bits + bits_of(a as f64) - 1,
            };
            q_out.scale = scale * a as f64;
            q_out.lo = lo * a;
            q_out.hi = hi * a;
        }
        let out = self.new_tensor(&n.name, out_shape, kind_out, false);
        self.layers.push(Layer::Pool(Pool {
            name: n.name.clone(),
            kind,
            input: q.t,
            output: out,
            div,
            sum_only,
        }));
        self.node_tensors.insert(n.name.clone(), out);
        Ok(Value::Q(Q {
            t: out,
            pooled: q.pooled || averaging,
            ..q_out
        }))
    }

    fn act(&mut self, n: &Node, v: &Value, quantizer: &Quantizer) -> Result<Value, IntError> {
        if *quantizer == Quantizer::None || n.out_bit >= 32 {
            if matches!(quantizer, Quantizer::Pact { .. } | Quantizer::Mpact { .. }) {
                if let Ok(a) = self.ck.scalar(&format!("{}.alpha", n.name)) {
                    self.clips.insert(n.name.clone(), a);
                }
            }
            // An unquantized (32-bit) activation after a ReLU, such as
            // ResNet20 `w8a8`'s float stem output, which feeds both a conv and
            // a residual add: materialised once as wide integers at the
            // scale of its sum, so that every consumer reads integers.
            if let Value::Lin(lin) = v {
                if lin.relu != Rectify::None {
                    return Ok(Value::Q(self.materialize_wide(n, lin)?));
                }
            }
            return Ok(v.clone());
        }
        let t = self.target(n, quantizer)?;
        if let Value::Float = v {
            let (pre, clip_lo, clip_hi, gain) = match quantizer {
                Quantizer::Dorefa => (0.1f32, 0.0, 1.0, t.scale as f32),
                Quantizer::Mpact { .. } => {
                    let a = self.clips[&n.name];
                    let k = ((1i64 << (t.bits - 1)) - 1) as f32;
                    (1.0, -a.abs(), a.abs(), (1.0 / a) * k)
                }
                Quantizer::Pact { .. } => {
                    let a = self.clips[&n.name];
                    (1.0, 0.0, a, (1.0 / a) * t.hi as f32)
                }
                Quantizer::PactFixed { scale } => (1.0, 0.0, *scale as f32, t.gain as f32),
                Quantizer::None => unreachable!(),
            };
            let out = self.new_tensor(
                &n.name,
                self.g_input_shape(),
                TensorKind::Act {
                    scale: t.scale,
                    lo: t.lo,
                    hi: t.hi,
                    bits: t.bits,
                },
                false,
            );
            self.layers.push(Layer::QuantizeInput(QuantizeInput {
                name: n.name.clone(),
                pre,
                clip_lo,
                clip_hi,
                gain,
                output: out,
            }));
            self.node_tensors.insert(n.name.clone(), out);
            return Ok(Value::Q(Q {
                t: out,
                scale: t.scale,
                lo: t.lo,
                hi: t.hi,
                pooled: false,
            }));
        }
        let lin = self.lin_of(n, v)?;
        let fmt = self.format(n);
        Ok(Value::Q(self.requant(n, &lin, &t, fmt)?))
    }

    fn g_input_shape(&self) -> [usize; 3] {
        self.g
            .nodes
            .iter()
            .find(|n| matches!(n.op, Op::Input))
            .map(|n| shape3(&n.out_shape.0))
            .unwrap_or([0, 0, 0])
    }

    fn output(&mut self, v: &Value) -> Result<OutputLayer, IntError> {
        let classes = self.g.classes.max(0) as usize;
        let name = self
            .g
            .nodes
            .get(self.g.output)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let lin = match v {
            Value::Float => return Err(unsupported(&name, "the output is the float input")),
            other => {
                let n = &self.g.nodes[self.g.output];
                self.lin_of(n, other)?
            }
        };
        if lin.relu != Rectify::None {
            return Err(unsupported(
                &name,
                "a ReLU on the logits without a quantizer",
            ));
        }
        let mut terms = Vec::new();
        let mut terms_f32 = Vec::new();
        for t in &lin.terms {
            let k: Vec<f64> = t.k.iter().map(|k| k / t.denom).collect();
            // The seed: `re_scale = tensor(1.0) / (scale_a * scale_w)` in float32.
            let r32 = 1.0f32 / t.denom as f32;
            let k32 = match &t.k_f32 {
                Some(kk) => kk.iter().map(|x| r32 * x).collect(),
                None => vec![r32; lin.channels],
            };
            terms.push((t.src, k));
            terms_f32.push(k32);
        }
        let seed_linear = terms
            .iter()
            .map(|(src, _)| {
                let trunc = self.opts.rounding == Rounding::Trunc;
                self.layers
                    .iter()
                    .position(|l| matches!(l, Layer::Conv(c) if trunc && is_linear_of(c, *src)))
            })
            .collect();
        Ok(OutputLayer {
            terms,
            bias: lin.bias.clone(),
            terms_f32,
            bias_f32: lin.bias_f32.clone(),
            classes,
            seed_linear,
        })
    }
}

/// Whether `c` is a linear layer (a 1x1 conv over `[F, 1, 1]` integers)
/// that computes tensor `src`.
fn is_linear_of(c: &ConvLayer, src: TensorId) -> bool {
    c.output == src
        && c.kernel == 1
        && c.groups == 1
        && c.in_hw == [1, 1]
        && c.out_hw == [1, 1]
        && matches!(c.input, ConvInput::Tensor(_))
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
    let mut b = Builder {
        g,
        ck,
        opts,
        tensors: Vec::new(),
        layers: Vec::new(),
        node_tensors: BTreeMap::new(),
        clips: BTreeMap::new(),
        saturated: Default::default(),
        folded: Vec::new(),
    };
    let mut values: Vec<Option<Value>> = vec![None; g.nodes.len()];
    for n in &g.nodes {
        let v = match &n.op {
            Op::Input => Value::Float,
            Op::Conv {
                out,
                kernel,
                stride,
                padding,
                groups,
                bias,
            } => {
                let v = b.value(&values, n, 0)?.clone();
                let geo = (
                    *out as usize,
                    *kernel as usize,
                    *stride as usize,
                    *padding as usize,
                    (*groups).max(1) as usize,
                );
                b.conv(n, &v, geo, *bias)?
            }
            Op::Linear { out, bias } => {
                let v = b.value(&values, n, 0)?.clone();
                b.conv(n, &v, (*out as usize, 1, 1, 0, 1), *bias)?
            }
            Op::BatchNorm => {
                let v = b.value(&values, n, 0)?.clone();
                b.batch_norm(n, &v)?
            }
            Op::Relu | Op::Relu6 => {
                let v = b.value(&values, n, 0)?.clone();
                let mut lin = b.lin_of(n, &v)?;
                lin.relu = match (&n.op, lin.relu) {
                    (Op::Relu6, _) | (_, Rectify::Relu6) => Rectify::Relu6,
                    _ => Rectify::Relu,
                };
                Value::Lin(lin)
            }
            Op::ActQuant { quantizer } => {
                let v = b.value(&values, n, 0)?.clone();
                b.act(n, &v, quantizer)?
            }
            Op::Add => {
                let l = b.value(&values, n, 0)?.clone();
                let r = b.value(&values, n, 1)?.clone();
                let mut a = b.lin_of(n, &l)?;
                let c = b.lin_of(n, &r)?;
                if a.relu != Rectify::None || c.relu != Rectify::None {
                    return Err(unsupported(
                        &n.name,
                        "adds a ReLU output that no quantizer closed",
                    ));
                }
                if a.channels != c.channels {
                    return Err(unsupported(
                        &n.name,
                        "adds tensors of different channel counts",
                    ));
                }
                a.terms.extend(c.terms);
                for ch in 0..a.channels {
                    a.bias[ch] += c.bias[ch];
                    a.bias_f32[ch] += c.bias_f32[ch];
                }
                Value::Lin(a)
            }
            Op::AvgPool { kernel, stride, .. } => {
                let v = b.value(&values, n, 0)?.clone();
                b.pool(
                    n,
                    &v,
                    PoolKind::Avg {
                        kernel: *kernel as usize,
                        stride: *stride as usize,
                    },
                )?
            }
            Op::MaxPool {
                kernel,
                stride,
                padding,
            } => {
                let v = b.value(&values, n, 0)?.clone();
                b.pool(
                    n,
                    &v,
                    PoolKind::Max {
                        kernel: *kernel as usize,
                        stride: *stride as usize,
                        padding: *padding as usize,
                    },
                )?
            }
            Op::AdaptiveAvgPool { size } => {
                let v = b.value(&values, n, 0)?.clone();
                b.pool(
                    n,
                    &v,
                    PoolKind::Adaptive {
                        size: *size as usize,
                    },
                )?
            }
            Op::Flatten => b.value(&values, n, 0)?.clone(),
        };
        values[n.id] = Some(v);
    }
    let out_value = values
        .get(g.output)
        .and_then(|v| v.clone())
        .ok_or_else(|| unsupported("output", "the graph has no output value"))?;
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
