//! The planner's state and the machinery every op's planning shares.
//!
//! [`Builder`] holds the plan under construction (tensors, layers, the
//! node -> tensor map, clipping values, saturated and folded constants).
//! Between quantizers an IR node's output is a [`Value`]: the float input,
//! integers in a known domain ([`Q`]), a pending per-channel sum of
//! integer tensors ([`Lin`]) that the next quantizer requantizes
//! (`super::requant`), or a value only a following quantizer can compute
//! (a concat of several scales, a hardswish or sigmoid:
//! [`Value::Concat`], [`Value::Pointwise`]). Here: the constants in their fixed-point format
//! ([`Builder::fixed`], saturation recorded), the views of a value every
//! op needs ([`Builder::lin_of`], [`Builder::integers`],
//! [`Builder::materialize_wide`], [`Builder::materialize_fine`]), channel
//! gathers of any value ([`Builder::gather`]: split, shuffle), whether a
//! node reaches a quantizer ([`Builder::followed_by_quantizer`]) and the
//! dequantized output layer.
//!
//! Invariants: a [`Lin`] has at least one term, each with one multiplier
//! per channel; a [`Q`]'s tensor is in [`Builder::tensors`]; a pending
//! concat or pointwise function that reaches anything but a quantizer is an
//! [`IntError::Unsupported`] naming it.

use super::requant::Target;
use super::weights::bits_of;
use super::{
    Channels, ConvInput, ConvLayer, Layer, OutputLayer, PlanOptions, TensorId, TensorInfo,
    TensorKind,
};
use crate::checkpoint::Checkpoint;
use crate::fixed::{fixed_nearest, fixed_seed, FixedFormat, Rounding};
use crate::IntError;
use qatc::ir::{Graph, Node, Op, Quantizer};
use qatc::ops::ActivationKind;
use std::collections::BTreeMap;

/// A ReLU or ReLU6 not yet applied: the clamp the next requantization
/// takes. `Clamp` is any other interval of the pending sum's real value
/// (a hardsigmoid's `[0, 1]`, a ReLU seen through an affine map).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Rectify {
    None,
    Relu,
    Relu6,
    Clamp { lo: f64, hi: f64 },
}

impl Rectify {
    /// The interval the value is clamped to (infinite ends: none).
    pub(super) fn interval(self) -> (f64, f64) {
        match self {
            Rectify::None => (f64::NEG_INFINITY, f64::INFINITY),
            Rectify::Relu => (0.0, f64::INFINITY),
            Rectify::Relu6 => (0.0, 6.0),
            Rectify::Clamp { lo, hi } => (lo, hi),
        }
    }
}

/// An integer tensor with its domain.
#[derive(Clone, Debug)]
pub(super) struct Q {
    pub(super) t: TensorId,
    pub(super) scale: f64,
    pub(super) lo: i64,
    pub(super) hi: i64,
    /// Averaged by a pool since its last requantization (the seed rescales
    /// such a tensor with a floor division).
    pub(super) pooled: bool,
}

/// One term of a pending sum: real = `k[c] * int / denom`.
#[derive(Clone, Debug)]
pub(super) struct Term {
    pub(super) src: TensorId,
    /// `scale_a * scale_w` (accumulators) or the activation scale.
    pub(super) denom: f64,
    /// The seed divides by `tensor(1.0) * scale_w` for the float stem:
    /// `reciprocal() * x` in float32.
    pub(super) recip_f32: bool,
    pub(super) k: Vec<f64>,
    /// The BN factor as the seed computes it in float32 (None: no BN).
    pub(super) k_f32: Option<Vec<f32>>,
    pub(super) pooled: bool,
    /// Largest |int| the source can hold.
    pub(super) bound: f64,
}

/// A pending per-channel sum: `sum_t k_t[c] * int_t / denom_t + bias[c]`,
/// rectified by `relu`.
#[derive(Clone, Debug)]
pub(super) struct Lin {
    pub(super) terms: Vec<Term>,
    pub(super) bias: Vec<f64>,
    pub(super) bias_f32: Vec<f32>,
    pub(super) relu: Rectify,
    pub(super) channels: usize,
}

/// What an IR node's output is at plan time.
#[derive(Clone, Debug)]
pub(super) enum Value {
    Float,
    Q(Q),
    Lin(Lin),
    /// A concat whose inputs are not integers of one scale: each part is
    /// requantized into the grid of the quantizer that follows
    /// (`quantize_concat`), then the parts are put side by side. `name`:
    /// the concat node. Parts are `Q` or `Lin`, or `Pointwise`.
    Concat {
        name: String,
        parts: Vec<Value>,
    },
    /// `function(x)` of integers `x` (a hardswish, or a function with no
    /// exact integer form), computed in the grid of the quantizer that
    /// follows (`super::activation`). `name`: the node.
    Pointwise {
        name: String,
        function: ActivationKind,
        x: Q,
    },
}

/// The error for a concat of several scales that reaches a layer other
/// than a quantizer.
pub(super) fn concat_needs_quantizer(name: &str) -> IntError {
    unsupported(
        name,
        "its inputs are not integers of one scale (different quantizers, or pending sums) and no activation quantizer follows it: add `quantize_concat(bits)` to the rules (one quantizer after each concat, into whose grid every input is requantized)",
    )
}

/// The error for an activation function computed in the grid of the
/// quantizer after it (`function`) that reaches a layer other than a
/// quantizer.
pub(super) fn pointwise_needs_quantizer(name: &str, function: ActivationKind) -> IntError {
    unsupported(
        name,
        format!(
            "{} is computed in the integer grid of the activation quantizer after it, and no quantizer follows it here: add `act(...)` right after it",
            function.name()
        ),
    )
}

/// The plan under construction: its tensors and layers so far, and what
/// the checkpoint and options give it.
pub(super) struct Builder<'a> {
    pub(super) g: &'a Graph,
    pub(super) ck: &'a Checkpoint,
    pub(super) opts: PlanOptions,
    pub(super) tensors: Vec<TensorInfo>,
    pub(super) layers: Vec<Layer>,
    pub(super) node_tensors: BTreeMap<String, TensorId>,
    pub(super) clips: BTreeMap<String, f32>,
    pub(super) saturated: std::cell::RefCell<Vec<String>>,
    pub(super) folded: Vec<String>,
}

pub(super) fn unsupported(layer: &str, reason: impl Into<String>) -> IntError {
    IntError::Unsupported {
        layer: layer.to_string(),
        reason: reason.into(),
    }
}

pub(super) fn shape3(n: &[i64]) -> [usize; 3] {
    match n {
        [c, h, w] => [*c as usize, *h as usize, *w as usize],
        [f] => [*f as usize, 1, 1],
        _ => [0, 0, 0],
    }
}

impl<'a> Builder<'a> {
    pub(super) fn new(g: &'a Graph, ck: &'a Checkpoint, opts: PlanOptions) -> Builder<'a> {
        Builder {
            g,
            ck,
            opts,
            tensors: Vec::new(),
            layers: Vec::new(),
            node_tensors: BTreeMap::new(),
            clips: BTreeMap::new(),
            saturated: Default::default(),
            folded: Vec::new(),
        }
    }

    pub(super) fn new_tensor(
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

    pub(super) fn format(&self, n: &Node) -> FixedFormat {
        self.opts.formats.of(self.g.slots[n.slot].kind)
    }

    /// Whether [`Self::fixed`] represents the constant without clamping.
    pub(super) fn fits(&self, nearest: bool, v32: f32, v64: f64, fmt: FixedFormat) -> bool {
        if nearest {
            fixed_nearest(v64, fmt, false).is_ok()
        } else {
            fixed_seed(v32, fmt, false).is_ok()
        }
    }

    /// A constant in format `fmt`: rounded once from its exact value
    /// `v64` (`nearest`: `nearest` and `scaled` plans, per-layer binary
    /// points), or as the seed computes it from its float32 value `v32`
    /// (`trunc`); clamped and recorded with `saturate_constants`, else an
    /// error naming the layer when its integer part does not fit.
    pub(super) fn fixed(
        &self,
        nearest: bool,
        layer: &str,
        what: &str,
        v32: f32,
        v64: f64,
        fmt: FixedFormat,
    ) -> Result<i64, IntError> {
        if !self.fits(nearest, v32, v64, fmt) && self.opts.saturate_constants {
            self.saturated
                .borrow_mut()
                .push(format!("{layer}: {what} {v64} -> {fmt}"));
        }
        let r = if nearest {
            fixed_nearest(v64, fmt, self.opts.saturate_constants)
        } else {
            fixed_seed(v32, fmt, self.opts.saturate_constants)
        };
        r.map_err(|o| IntError::FormatOverflow {
            layer: layer.to_string(),
            what: what.to_string(),
            value: o.value,
            format: fmt,
        })
    }

    pub(super) fn value<'v>(
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

    pub(super) fn lin_of(&self, n: &Node, v: &Value) -> Result<Lin, IntError> {
        match v {
            Value::Concat { name, .. } => Err(concat_needs_quantizer(name)),
            Value::Pointwise { name, function, .. } => {
                Err(pointwise_needs_quantizer(name, *function))
            }
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

    /// An unquantized activation (a pending sum after a ReLU) as 16-bit
    /// integers: at the power-of-two scale that puts the largest value it
    /// can reach at most at 2^15 - 1 (and its constants within the format),
    /// clamped there. For a float stem that assumes inputs within
    /// [`FLOAT_INPUT_BOUND`](super::FLOAT_INPUT_BOUND); larger ones saturate. 16-bit operands let the
    /// next conv use the engine's 16-bit kernels.
    pub(super) fn materialize_wide(&mut self, n: &Node, lin: &Lin) -> Result<Q, IntError> {
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

    /// A pending sum as integers fine enough to take a nonlinear function
    /// of (a hardswish, a sigmoid): at the power-of-two scale that puts the largest
    /// value it can reach at most at 2^23 - 1 (24-bit integers; for a
    /// float stem that assumes inputs within
    /// [`FLOAT_INPUT_BOUND`](super::FLOAT_INPUT_BOUND), larger ones
    /// saturate), its constants exact values rounded once with a binary
    /// point placed for this requantization (so that a BN's bias, large in
    /// these fine steps, fits the format's width).
    pub(super) fn materialize_fine(&mut self, n: &Node, lin: &Lin) -> Result<Q, IntError> {
        let limit = ((1i64 << 23) - 1) as f64;
        let mut reach = 0f64;
        for ch in 0..lin.channels {
            reach = reach.max(lin.bias[ch].abs() + self.channel_reach(lin, ch, true));
        }
        let gain = if reach > 0.0 && reach.is_finite() {
            2f64.powi((limit / reach).log2().floor().clamp(-60.0, 60.0) as i32)
        } else {
            1.0
        };
        let t = Target {
            gain,
            scale: gain,
            lo: -(limit as i64),
            hi: limit as i64,
            bits: 24,
        };
        let mut node = n.clone();
        node.name = format!("{}.int", n.name);
        let fmt = self.format(n);
        self.requant_at(&node, lin, &t, fmt, true)
    }

    /// Integers fine enough to take a nonlinear function of, to pool or to
    /// multiply: integers as they are, a pending sum materialised at 24
    /// bits ([`Self::materialize_fine`]: at its first term's scale a BN's
    /// bias need not fit the format).
    pub(super) fn fine(&mut self, n: &Node, v: &Value) -> Result<Q, IntError> {
        match v {
            Value::Lin(lin) => {
                let lin = lin.clone();
                self.materialize_fine(n, &lin)
            }
            v => self.integers(n, v),
        }
    }

    /// Integers for a layer that needs them: a pending sum is materialised
    /// at the scale of its first term, clamped to the BN bits.
    pub(super) fn integers(&mut self, n: &Node, v: &Value) -> Result<Q, IntError> {
        match v {
            Value::Concat { name, .. } => Err(concat_needs_quantizer(name)),
            Value::Pointwise { name, function, .. } => {
                Err(pointwise_needs_quantizer(name, *function))
            }
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
                    let mut reach = rq
                        .bias
                        .iter()
                        .map(|b| b.unsigned_abs() as f64)
                        .fold(0.0, f64::max);
                    for (term, lt) in rq.terms.iter().zip(&lin.terms) {
                        let m = term
                            .mult
                            .iter()
                            .map(|m| m.unsigned_abs() as f64)
                            .fold(0.0, f64::max);
                        reach += m * lt.bound;
                    }
                    let reach = reach / 2f64.powi(rq.shift as i32) + 1.0;
                    if reach < limit as f64 {
                        let reach = reach.ceil() as i64;
                        rq.lo = rq.lo.max(-reach);
                        rq.hi = rq.hi.min(reach);
                        q.lo = rq.lo;
                        q.hi = rq.hi;
                        if let TensorKind::Act { lo, hi, bits: b, .. } =
                            &mut self.tensors[q.t].kind
                        {
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

    /// Channels of a value (0 for the float input).
    pub(super) fn channels_of(&self, v: &Value) -> usize {
        match v {
            Value::Float => 0,
            Value::Q(q) => self.tensors[q.t].shape[0],
            Value::Pointwise { x, .. } => self.tensors[x.t].shape[0],
            Value::Lin(l) => l.channels,
            Value::Concat { parts, .. } => parts.iter().map(|p| self.channels_of(p)).sum(),
        }
    }

    /// A [`Channels`] layer: tensor `src`'s channels `from` (in that order),
    /// in a new tensor of the same kind.
    fn gather_tensor(&mut self, n: &Node, src: TensorId, from: &[usize]) -> TensorId {
        let info = self.tensors[src].clone();
        let shape = [from.len(), info.shape[1], info.shape[2]];
        let out = self.new_tensor(&n.name, shape, info.kind, info.wide);
        self.layers.push(Layer::Channels(Channels {
            name: n.name.clone(),
            input: src,
            output: out,
            from: from.to_vec(),
        }));
        out
    }

    /// Channels `from` of a value, in that order (a split's part, a channel
    /// shuffle): integers are copied by a [`Channels`] layer; a pending sum
    /// stays pending, each term reading the same channels of its source
    /// (exact: the next quantizer requantizes as it would have); a
    /// pointwise function stays pending over the chosen channels of its input.
    pub(super) fn gather(
        &mut self,
        n: &Node,
        v: &Value,
        from: &[usize],
    ) -> Result<Value, IntError> {
        let c = self.channels_of(v);
        if from.iter().any(|&j| j >= c) {
            return Err(unsupported(
                &n.name,
                format!("picks channels beyond its input's {c}"),
            ));
        }
        let pick_q = |me: &mut Self, q: &Q| {
            let t = me.gather_tensor(n, q.t, from);
            me.node_tensors.insert(n.name.clone(), t);
            Q { t, ..q.clone() }
        };
        Ok(match v {
            Value::Float => {
                return Err(unsupported(
                    &n.name,
                    "reads the float input directly; only a conv or linear layer can (or quantize the input with an act)",
                ))
            }
            Value::Concat { name, .. } => return Err(concat_needs_quantizer(name)),
            Value::Q(q) => Value::Q(pick_q(self, q)),
            Value::Pointwise { name, function, x } => Value::Pointwise {
                name: name.clone(),
                function: *function,
                x: pick_q(self, x),
            },
            Value::Lin(lin) => {
                let mut out = Lin {
                    terms: Vec::with_capacity(lin.terms.len()),
                    bias: from.iter().map(|&j| lin.bias[j]).collect(),
                    bias_f32: from.iter().map(|&j| lin.bias_f32[j]).collect(),
                    relu: lin.relu,
                    channels: from.len(),
                };
                for term in &lin.terms {
                    let src = self.gather_tensor(n, term.src, from);
                    out.terms.push(Term {
                        src,
                        k: from.iter().map(|&j| term.k[j]).collect(),
                        k_f32: term
                            .k_f32
                            .as_ref()
                            .map(|k| from.iter().map(|&j| k[j]).collect()),
                        ..term.clone()
                    });
                }
                Value::Lin(out)
            }
        })
    }

    /// Whether every use of node `n`'s output reaches an activation
    /// quantizer (one that quantizes: not the identity or 32 bits) through
    /// ops that only move, join or clamp values. A hardsigmoid, hardswish or
    /// lookup-table function is computed in that quantizer's grid.
    pub(super) fn followed_by_quantizer(&self, n: &Node) -> bool {
        if self.g.output == n.id {
            return false;
        }
        self.g
            .nodes
            .iter()
            .filter(|m| m.inputs.contains(&n.id))
            .all(|m| match &m.op {
                Op::ActQuant(a) => a.quantizer != Quantizer::None && m.out_bit < 32,
                Op::Dropout(_)
                | Op::Identity(_)
                | Op::Flatten(_)
                | Op::Relu(_)
                | Op::Relu6(_)
                | Op::Concat(_)
                | Op::Slice(_)
                | Op::Shuffle(_) => self.followed_by_quantizer(m),
                _ => false,
            })
    }

    /// `[C, H, W]` of the graph input.
    pub(super) fn g_input_shape(&self) -> [usize; 3] {
        self.g
            .nodes
            .iter()
            .find(|n| matches!(n.op, Op::Input(_)))
            .map(|n| shape3(&n.out_shape.0))
            .unwrap_or([0, 0, 0])
    }

    /// The logits: the output node's value, a pending sum, dequantized
    /// ([`OutputLayer`]).
    pub(super) fn output(&mut self, v: &Value) -> Result<OutputLayer, IntError> {
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
