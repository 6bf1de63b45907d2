//! Plans [`ops::Activation`](qatc::ops::Activation): `hardsigmoid` and
//! `hardswish` exactly in integers, `sigmoid`, `swish` and `gelu` by a
//! lookup table over the integer input.
//!
//! Integer arithmetic emitted:
//! - `hardsigmoid(x) = clamp(x + 3, 0, 6) / 6` is affine then a clamp, so
//!   it is folded into the pending sum it reads, as BN is: every term's
//!   denominator times 6, the bias `(bias + 3) / 6`, and the interval
//!   `[0, 1]` as the clamp (`Rectify::Clamp`, an earlier ReLU's interval
//!   carried through the map). The quantizer after it requantizes the
//!   whole in one [`Requant`](super::Requant): fixed-point multipliers and
//!   bias, the clamp's ends rounded into its grid.
//! - `hardswish(x) = x * clamp(x + 3, 0, 6) / 6` of integers `q` at scale
//!   `s`, into the grid (gain `G`) of the quantizer after it, is
//!   piecewise polynomial in `q`: 0 for `q <= -3s`, `G q / s` for
//!   `q >= 3s`, `G q (q + 3s) / (6 s^2)` between. One
//!   [`HardSwishLayer`](super::HardSwishLayer) computes it with the three
//!   coefficients as integers over one shift, the breakpoints exact
//!   integers (`floor(-3s)`, `ceil(3s)`), the products exact (i64, or
//!   i128 where they may pass 2^62), one rounding as the plan's mode says
//!   and the quantizer's clamp. Each coefficient has its own binary point,
//!   the one that gives it the class format's full width (`G / (6 s^2)` is
//!   far smaller than the others: one binary point would keep few of its
//!   bits), and the products are aligned by exact left shifts. A hardswish
//!   that reaches its quantizer through average pooling (MobileNetV3's
//!   head: `hardswish -> adaptive_avgpool(1) -> flatten -> act`) is
//!   computed into a fine 24-bit grid instead (a power-of-two gain from its
//!   reach), which the pool averages and the quantizer requantizes.
//! - `sigmoid`, `swish` and `gelu` have no exact integer form: one
//!   [`LutLayer`](super::LutLayer) maps each integer of the input straight
//!   into the grid of the quantizer after it, `clamp(round(G f(q / s)))`
//!   with `f` in f64 (the `libm` crate: the same on every machine), stored
//!   as the integers where that value changes (a step function: at most
//!   one step per output level on each side of the function's minimum),
//!   found by bisection over the input range. Exact with respect to that
//!   f64 reference.
//! - Either reads integers: a pending sum (a BN's or a biased conv's
//!   output) is materialised first as 24-bit integers
//!   (`Builder::materialize_fine`: a power-of-two scale from its reach, a
//!   binary point of its own, so a BN's bias fits the format).
//!
//! Invariants: a hardsigmoid, or a sigmoid, swish or gelu, whose output
//! does not reach an activation quantizer (through shape-only ops, joins
//! or ReLUs), and a hardswish that reaches none through those and average
//! pooling, are an [`IntError::Unsupported`] naming the layer.

use super::builder::{pointwise_needs_quantizer, unsupported, Builder, Rectify, Value, Q};
use super::requant::Target;
use super::{HardSwishLayer, Layer, LutLayer, TensorId, TensorKind};
use crate::fixed::{Div, FixedFormat};
use crate::IntError;
use qatc::ir::{Node, Op, Quantizer};
use qatc::ops::{Activation, ActivationKind};

/// Where swish and gelu have their minimum (the one turn of each; sigmoid
/// increases everywhere): the root of the derivative, to f64 precision.
const SWISH_ARGMIN: f64 = -1.278_464_542_761_074;
const GELU_ARGMIN: f64 = -0.751_791_524_693_564_5;

/// `f(v)` in f64 for the functions with no exact integer form, with the
/// `libm` crate's `exp` and `erf` (pure Rust, the same result on every
/// machine). The float reference of [`LutLayer`](super::LutLayer).
pub fn smooth(function: ActivationKind, v: f64) -> f64 {
    match function {
        ActivationKind::Sigmoid => 1.0 / (1.0 + libm::exp(-v)),
        ActivationKind::Swish => v / (1.0 + libm::exp(-v)),
        ActivationKind::Gelu => 0.5 * v * (1.0 + libm::erf(v * std::f64::consts::FRAC_1_SQRT_2)),
        // Exact in integers, never tabulated; their float forms for
        // completeness.
        ActivationKind::HardSigmoid => ((v + 3.0).clamp(0.0, 6.0)) / 6.0,
        ActivationKind::HardSwish => v * ((v + 3.0).clamp(0.0, 6.0)) / 6.0,
    }
}

/// A step function's changes on `[a, b]` where it is monotone and takes
/// `va` at `a`, `vb` at `b`: every `q` in `(a, b]` with `out(q) !=
/// out(q - 1)`, ascending, by bisection (equal ends: constant between).
fn steps(out: &impl Fn(i64) -> i64, a: i64, b: i64, va: i64, vb: i64, acc: &mut Vec<i64>) {
    if va == vb || b <= a {
        return;
    }
    if b == a + 1 {
        acc.push(b);
        return;
    }
    let m = a + (b - a) / 2;
    let vm = out(m);
    steps(out, a, m, va, vm, acc);
    steps(out, m, b, vm, vb, acc);
}

impl Builder<'_> {
    /// An activation node.
    pub(super) fn activation(
        &mut self,
        n: &Node,
        values: &[Option<Value>],
        op: &Activation,
    ) -> Result<Value, IntError> {
        match op.function {
            ActivationKind::HardSigmoid => self.hardsigmoid(n, values),
            ActivationKind::HardSwish => self.hardswish(n, values),
            f @ (ActivationKind::Sigmoid | ActivationKind::Swish | ActivationKind::Gelu) => {
                if !self.followed_by_quantizer(n) {
                    let hard = if f == ActivationKind::Sigmoid {
                        "hardsigmoid"
                    } else {
                        "hardswish"
                    };
                    return Err(unsupported(
                        &n.name,
                        format!(
                            "`{}` has no exact integer form: the integer engine tabulates it into the grid of the activation quantizer after it, and no quantizer follows it here: add `act(...)` right after it, or use `{hard}` (piecewise linear, exact in integers)",
                            f.name()
                        ),
                    ));
                }
                let x = self.fine_integers(n, values)?;
                Ok(Value::Pointwise {
                    name: n.name.clone(),
                    function: f,
                    x,
                })
            }
        }
    }

    /// The input of node `n` as fine integers ([`Builder::fine`]).
    fn fine_integers(&mut self, n: &Node, values: &[Option<Value>]) -> Result<Q, IntError> {
        let v = self.value(values, n, 0)?.clone();
        self.fine(n, &v)
    }

    /// `clamp(x + 3, 0, 6) / 6` folded into the pending sum of `x`.
    fn hardsigmoid(&mut self, n: &Node, values: &[Option<Value>]) -> Result<Value, IntError> {
        if !self.followed_by_quantizer(n) {
            return Err(unsupported(
                &n.name,
                "hardsigmoid is computed in the integer grid of the activation quantizer after it, and no quantizer follows it here: add `act(...)` right after it (for a gate in [0, 1]: `act(bits, pact_fixed(1))`)",
            ));
        }
        let v = self.value(values, n, 0)?;
        let mut lin = self.lin_of(n, v)?;
        for term in &mut lin.terms {
            term.denom *= 6.0;
            // Not the seed's pooled fc input any more.
            term.pooled = false;
        }
        for b in &mut lin.bias {
            *b = (*b + 3.0) / 6.0;
        }
        for b in &mut lin.bias_f32 {
            *b = (*b + 3.0) / 6.0;
        }
        let (lo, hi) = lin.relu.interval();
        lin.relu = Rectify::Clamp {
            lo: ((lo + 3.0) / 6.0).max(0.0),
            hi: ((hi + 3.0) / 6.0).min(1.0),
        };
        Ok(Value::Lin(lin))
    }

    /// A hardswish: pending until the quantizer after it
    /// ([`Self::quantize_hardswish`]), or, where it reaches the quantizer
    /// through average pooling, computed now into a fine 24-bit grid.
    fn hardswish(&mut self, n: &Node, values: &[Option<Value>]) -> Result<Value, IntError> {
        let direct = self.followed_by_quantizer(n);
        if !direct && !self.pooled_into_quantizer(n) {
            return Err(pointwise_needs_quantizer(
                &n.name,
                ActivationKind::HardSwish,
            ));
        }
        let x = self.fine_integers(n, values)?;
        if direct {
            return Ok(Value::Pointwise {
                name: n.name.clone(),
                function: ActivationKind::HardSwish,
                x,
            });
        }
        // hardswish(v) lies in [-3/8, max(v, 0)]: the largest power-of-two
        // gain that keeps it within 24 bits.
        let limit = ((1i64 << 23) - 1) as f64;
        let reach = (x.lo.unsigned_abs().max(x.hi.unsigned_abs()) as f64 / x.scale).max(0.375);
        let gain = 2f64.powi((limit / reach).log2().floor().clamp(-60.0, 60.0) as i32);
        let t = Target {
            gain,
            scale: gain,
            lo: -(limit as i64),
            hi: limit as i64,
            bits: 24,
        };
        let fmt = self.format(n);
        Ok(Value::Q(self.quantize_hardswish(n, &x, &t, fmt)?))
    }

    /// Whether every use of node `n`'s output reaches an activation
    /// quantizer through average pooling (and flatten, dropout, identity)
    /// and at least one pool: a linear map of a fine grid that the
    /// quantizer requantizes.
    fn pooled_into_quantizer(&self, n: &Node) -> bool {
        fn walk(b: &Builder<'_>, n: &Node, pooled: bool) -> bool {
            if b.g.output == n.id {
                return false;
            }
            b.g.nodes
                .iter()
                .filter(|m| m.inputs.contains(&n.id))
                .all(|m| match &m.op {
                    Op::ActQuant(a) => pooled && a.quantizer != Quantizer::None && m.out_bit < 32,
                    Op::AvgPool(_) | Op::AdaptiveAvgPool(_) => walk(b, m, true),
                    Op::Dropout(_) | Op::Identity(_) | Op::Flatten(_) => walk(b, m, pooled),
                    _ => false,
                })
        }
        walk(self, n, false)
    }

    /// `function(x)` of integers `x` (sigmoid, swish, gelu) into the domain
    /// of the quantizer node `n` (target `t`): one [`LutLayer`].
    pub(super) fn quantize_lut(
        &mut self,
        n: &Node,
        x: &Q,
        function: ActivationKind,
        t: &Target,
    ) -> Result<Q, IntError> {
        let (s, g) = (x.scale, t.gain);
        if !(s.is_finite() && s > 0.0 && g.is_finite() && g > 0.0) {
            return Err(unsupported(
                &n.name,
                format!("{} from scale {s} into gain {g}: no table", function.name()),
            ));
        }
        let div = self.opts.rounding.div();
        let (lo, hi) = (t.lo, t.hi);
        let out = |q: i64| -> i64 {
            let y = g * smooth(function, q as f64 / s);
            let r = match div {
                Div::Trunc => y.trunc(),
                Div::Floor => y.floor(),
                Div::Nearest => y.round(),
            };
            (r as i64).clamp(lo, hi)
        };
        // Monotone pieces: sigmoid increases everywhere; swish and gelu
        // fall, then rise.
        let turn = match function {
            ActivationKind::Swish => Some(SWISH_ARGMIN),
            ActivationKind::Gelu => Some(GELU_ARGMIN),
            _ => None,
        };
        let mut pieces = vec![(x.lo, x.hi)];
        if let Some(m) = turn {
            let split = (m * s).floor();
            if split >= x.lo as f64 && split < x.hi as f64 {
                let split = split as i64;
                pieces = vec![(x.lo, split), (split + 1, x.hi)];
            }
        }
        let mut breaks = Vec::new();
        for (i, &(a, b)) in pieces.iter().enumerate() {
            if i > 0 && out(a) != out(a - 1) {
                breaks.push(a);
            }
            steps(&out, a, b, out(a), out(b), &mut breaks);
        }
        let mut values = vec![out(x.lo)];
        values.extend(breaks.iter().map(|&q| out(q)));
        Ok(self.pointwise_output(n, x, t, |output| {
            Layer::Lut(LutLayer {
                name: n.name.clone(),
                function: function.name().to_string(),
                input: x.t,
                output,
                scale: s,
                gain: g,
                div,
                breaks,
                values,
            })
        }))
    }

    /// The integers a pointwise layer writes into target `t`'s grid, one
    /// per integer of `x`, as node `n`'s value: the output tensor, and the
    /// layer `layer(output)` that computes it.
    fn pointwise_output(
        &mut self,
        n: &Node,
        x: &Q,
        t: &Target,
        layer: impl FnOnce(TensorId) -> Layer,
    ) -> Q {
        let shape = self.tensors[x.t].shape;
        let kind = TensorKind::Act {
            scale: t.scale,
            lo: t.lo,
            hi: t.hi,
            bits: t.bits,
        };
        let out = self.new_tensor(&n.name, shape, kind, false);
        self.layers.push(layer(out));
        self.node_tensors.insert(n.name.clone(), out);
        Q {
            t: out,
            scale: t.scale,
            lo: t.lo,
            hi: t.hi,
            pooled: false,
        }
    }

    /// `hardswish(x)` into the domain of the quantizer node `n` (target
    /// `t`, the class format `fmt`'s width for the coefficients).
    pub(super) fn quantize_hardswish(
        &mut self,
        n: &Node,
        x: &Q,
        t: &Target,
        fmt: FixedFormat,
    ) -> Result<Q, IntError> {
        let (s, g) = (x.scale, t.gain);
        let real = [g / (6.0 * s * s), g / (2.0 * s), g / s];
        if real.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(unsupported(
                &n.name,
                format!("hardswish coefficients {real:?} have no fixed-point form"),
            ));
        }
        // Each coefficient with the binary point that gives it the format's
        // full width, aligned on the largest by left shifts (exact).
        let room = ((1u64 << (fmt.bits.clamp(2, 32) - 1)) - 1) as f64;
        let frac = real.map(|v| (room / v).log2().floor().clamp(0.0, 96.0) as u32);
        let shift = frac.iter().copied().max().unwrap_or(0);
        let shl = frac.map(|f| shift - f);
        let c = [0, 1, 2].map(|i| (real[i] * 2f64.powi(frac[i] as i32)).round() as i64);
        let (neg, pos) = ((-3.0 * s).floor() as i64, (3.0 * s).ceil() as i64);
        // The largest sum before the shift: the middle piece for |q| below
        // the breakpoints, the linear one for every |q|.
        let qm = x.lo.unsigned_abs().max(x.hi.unsigned_abs()) as f64;
        let mid = qm.min(pos.max(-neg) as f64);
        if mid >= 2f64.powi(31) {
            return Err(unsupported(
                &n.name,
                format!(
                    "hardswish of integers up to {qm} at scale {s}: their squares pass 62 bits"
                ),
            ));
        }
        let at = |i: usize, v: f64| c[i].unsigned_abs() as f64 * v * 2f64.powi(shl[i] as i32);
        let worst = (at(0, mid * mid) + at(1, mid)).max(at(2, qm)) + 2f64.powi(shift as i32);
        if worst >= 2f64.powi(120) {
            return Err(unsupported(
                &n.name,
                "hardswish sums pass 120 bits (an input range or scale far beyond those of a quantized activation)",
            ));
        }
        let div = self.opts.rounding.div();
        Ok(self.pointwise_output(n, x, t, |output| {
            Layer::HardSwish(HardSwishLayer {
                name: n.name.clone(),
                input: x.t,
                output,
                neg,
                pos,
                c,
                shl,
                real,
                shift,
                div,
                lo: t.lo,
                hi: t.hi,
                wide: worst >= 4.0e18 || shift > 62,
            })
        }))
    }
}
