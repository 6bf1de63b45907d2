//! Plans [`ops::ActQuant`](qatc::ops::ActQuant), the activation
//! quantizers: where a pending sum becomes integers again.
//!
//! Integer arithmetic emitted, by what the quantizer reads:
//! - a pending sum (conv/linear accumulators, BN, bias, residual add,
//!   ReLU): one [`Requant`](super::Requant) into the quantizer's domain
//!   (`Builder::requant`: fixed-point multipliers and bias, a shift, a
//!   clamp);
//! - a pending concat (inputs of different scales): each input
//!   requantized into the quantizer's domain, then joined
//!   (`Builder::quantize_concat`);
//! - a pending hardswish: one [`HardSwishLayer`](super::HardSwishLayer)
//!   into the quantizer's domain (`Builder::quantize_hardswish`); a
//!   pending sigmoid, swish or gelu: one [`LutLayer`](super::LutLayer)
//!   (`Builder::quantize_lut`);
//! - the float graph input: one [`QuantizeInput`],
//!   `q = round_even(clamp(x * pre, clip_lo, clip_hi) * gain)` in float32
//!   as the fake quantizer computes it;
//! - an identity (`Quantizer::None` or 32 bits): nothing, except that a
//!   rectified pending sum is materialised once as 16-bit integers
//!   (`Builder::materialize_wide`) so that every consumer reads integers
//!   (a pending concat or hardswish stays pending).
//!
//! Invariants: a bad clipping value or a quantizer with no integer form is
//! an [`IntError`]; the clipping values read are recorded in
//! [`IntPlan::clips`](super::IntPlan::clips).

use super::builder::{Builder, Rectify, Value, Q};
use super::requant::Target;
use super::{Layer, QuantizeInput, TensorKind};
use crate::fixed::FixedFormat;
use crate::IntError;
use qatc::ir::{Node, Quantizer};
use qatc::ops::{ActQuant, ActivationKind};

impl Builder<'_> {
    /// An activation quantizer node.
    pub(super) fn act_quant(
        &mut self,
        n: &Node,
        values: &[Option<Value>],
        op: &ActQuant,
    ) -> Result<Value, IntError> {
        let v = self.value(values, n, 0)?;
        let quantizer = &op.quantizer;
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
        let fmt = self.format(n);
        Ok(Value::Q(self.quantize_value(n, v, &t, fmt)?))
    }

    /// Any value but the float input into the domain of the quantizer node
    /// `n` (target `t`): a pending sum (or integers, a sum of one term) by
    /// one requantization, a pending concat part by part, a hardswish by
    /// its own layer.
    pub(super) fn quantize_value(
        &mut self,
        n: &Node,
        v: &Value,
        t: &Target,
        fmt: FixedFormat,
    ) -> Result<Q, IntError> {
        match v {
            Value::Concat { parts, .. } => self.quantize_concat(n, parts, t, fmt),
            Value::Pointwise {
                function: ActivationKind::HardSwish,
                x,
                ..
            } => self.quantize_hardswish(n, x, t, fmt),
            Value::Pointwise { function, x, .. } => self.quantize_lut(n, x, *function, t),
            _ => {
                let lin = self.lin_of(n, v)?;
                self.requant(n, &lin, t, fmt)
            }
        }
    }
}
