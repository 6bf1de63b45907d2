//! Plans [`ops::Mul`](qatc::ops::Mul), the element-wise product of a map
//! (`inputs[0]`) and a gate (`inputs[1]`: the map's shape, or `C x 1 x 1`
//! broadcast over the positions, as squeeze-excitation).
//!
//! Integer arithmetic emitted: one [`MulLayer`](super::MulLayer), the
//! exact product of the two integer tensors (`x / s_x * g / s_g =
//! (x * g) / (s_x * s_g)`): integers at the product of the scales, their
//! range the products of the ranges' ends. Nothing is rounded here; the
//! quantizer after the product (the `quantize_gate` rule) requantizes it
//! as it does a conv's accumulator (one [`Requant`](super::Requant) term of
//! denominator `s_x * s_g`). A pending sum as an operand is materialised
//! first as 24-bit integers (`Builder::materialize_fine`).
//!
//! Invariants: a gate that is not integers (the float input; a hardsigmoid
//! or sigmoid with no quantizer is refused where it is planned), shapes that do
//! not match, or products beyond 62 bits are an [`IntError::Unsupported`]
//! naming the layer.

use super::builder::{unsupported, Builder, Value, Q};
use super::weights::signed_bits;
use super::{Layer, MulLayer, TensorKind};
use crate::IntError;
use qatc::ir::Node;

impl Builder<'_> {
    /// A mul node: map times gate.
    pub(super) fn mul(&mut self, n: &Node, values: &[Option<Value>]) -> Result<Value, IntError> {
        let xv = self.value(values, n, 0)?.clone();
        let gv = self.value(values, n, 1)?.clone();
        if matches!(gv, Value::Float) {
            return Err(unsupported(
                &n.name,
                "its gate is the float input, not integers: quantize the gate (`act(...)`)",
            ));
        }
        let x = self.fine(n, &xv)?;
        // The gate, if a pending sum, is materialised under its own name.
        let mut gate_node = n.clone();
        gate_node.name = format!("{}.gate", n.name);
        let g = self.fine(&gate_node, &gv)?;
        let (xs, gs) = (self.tensors[x.t].shape, self.tensors[g.t].shape);
        let broadcast = gs != xs;
        if gs[0] != xs[0] || (broadcast && (gs[1], gs[2]) != (1, 1)) {
            return Err(unsupported(
                &n.name,
                format!(
                    "multiplies {xs:?} by {gs:?}: the gate must be the map's shape or C x 1 x 1"
                ),
            ));
        }
        let ends = [
            x.lo as i128 * g.lo as i128,
            x.lo as i128 * g.hi as i128,
            x.hi as i128 * g.lo as i128,
            x.hi as i128 * g.hi as i128,
        ];
        let (lo, hi) = (
            ends.iter().copied().min().unwrap_or(0),
            ends.iter().copied().max().unwrap_or(0),
        );
        let limit = 1i128 << 62;
        if lo < -limit || hi > limit {
            return Err(unsupported(
                &n.name,
                format!(
                    "the product of [{}, {}] and [{}, {}] passes 62 bits",
                    x.lo, x.hi, g.lo, g.hi
                ),
            ));
        }
        let (lo, hi) = (lo as i64, hi as i64);
        let scale = x.scale * g.scale;
        let wide = lo < i32::MIN as i64 || hi > i32::MAX as i64;
        let out = self.new_tensor(
            &n.name,
            xs,
            TensorKind::Act {
                scale,
                lo,
                hi,
                bits: signed_bits(lo, hi),
            },
            wide,
        );
        self.layers.push(Layer::Mul(MulLayer {
            name: n.name.clone(),
            input: x.t,
            gate: g.t,
            output: out,
            broadcast,
        }));
        self.node_tensors.insert(n.name.clone(), out);
        Ok(Value::Q(Q {
            t: out,
            scale,
            lo,
            hi,
            pooled: false,
        }))
    }
}
