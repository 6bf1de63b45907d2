//! Plans [`ops::Activation`](qatc::ops::Activation): `hardsigmoid` and
//! `hardswish` exactly in integers, `sigmoid`, `swish` and `gelu` refused.
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
//!   bits), and the products are aligned by exact left shifts. A pending
//!   sum (a BN's output) is materialised first as 24-bit integers
//!   (`Builder::materialize_fine`: a power-of-two scale from its reach, a
//!   binary point of its own, so a BN's bias fits the format).
//! - `sigmoid`, `swish` and `gelu` have no exact integer form; a lookup
//!   table over the quantized input is future work. They are refused,
//!   naming the layer and the hard variant to use instead.
//!
//! Invariants: a hardsigmoid or hardswish whose output does not reach an
//! activation quantizer (through shape-only ops, joins or ReLUs) is an
//! [`IntError::Unsupported`] naming the layer, as is every smooth
//! activation.

use super::builder::{hardswish_needs_quantizer, unsupported, Builder, Rectify, Value, Q};
use super::requant::Target;
use super::{HardSwishLayer, Layer, TensorKind};
use crate::fixed::{Div, FixedFormat, Rounding};
use crate::IntError;
use qatc::ir::Node;
use qatc::ops::{Activation, ActivationKind};

impl Builder<'_> {
    /// An activation node.
    pub(super) fn activation(
        &mut self,
        n: &Node,
        values: &[Option<Value>],
        op: &Activation,
    ) -> Result<Value, IntError> {
        let hard = match op.function {
            ActivationKind::HardSigmoid => return self.hardsigmoid(n, values),
            ActivationKind::HardSwish => return self.hardswish(n, values),
            ActivationKind::Sigmoid => "hardsigmoid",
            ActivationKind::Swish | ActivationKind::Gelu => "hardswish",
        };
        Err(unsupported(
            &n.name,
            format!(
                "`{}` has no exact integer form and the integer engine has no lookup table for it yet: use `{hard}` (piecewise linear, exact in integers) and retrain, or evaluate with fake quantization",
                op.function.name()
            ),
        ))
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
    /// ([`Self::quantize_hardswish`]).
    fn hardswish(&mut self, n: &Node, values: &[Option<Value>]) -> Result<Value, IntError> {
        if !self.followed_by_quantizer(n) {
            return Err(hardswish_needs_quantizer(&n.name));
        }
        let x = match self.value(values, n, 0)? {
            Value::Lin(lin) => {
                let lin = lin.clone();
                self.materialize_fine(n, &lin)?
            }
            v => {
                let v = v.clone();
                self.integers(n, &v)?
            }
        };
        Ok(Value::HardSwish {
            name: n.name.clone(),
            x,
        })
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
        let div = match self.opts.rounding {
            Rounding::Trunc => Div::Trunc,
            Rounding::Nearest | Rounding::Scaled => Div::Nearest,
        };
        let shape = self.tensors[x.t].shape;
        let out = self.new_tensor(
            &n.name,
            shape,
            TensorKind::Act {
                scale: t.scale,
                lo: t.lo,
                hi: t.hi,
                bits: t.bits,
            },
            false,
        );
        self.layers.push(Layer::HardSwish(HardSwishLayer {
            name: n.name.clone(),
            input: x.t,
            output: out,
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
        }));
        self.node_tensors.insert(n.name.clone(), out);
        Ok(Q {
            t: out,
            scale: t.scale,
            lo: t.lo,
            hi: t.hi,
            pooled: false,
        })
    }
}
