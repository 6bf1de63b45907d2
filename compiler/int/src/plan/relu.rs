//! Plans [`ops::Relu`](qatc::ops::Relu) and [`ops::Relu6`](qatc::ops::Relu6).
//!
//! Integer arithmetic emitted: none of its own. A ReLU is a clamp, and it
//! is kept on the pending sum it reads ([`Rectify`]) until the next
//! requantization takes it as its clamp's bounds: `lo = max(lo, 0)`, and
//! for ReLU6 `hi = min(hi, 6 * gain)` (truncated under `trunc`, as the
//! seed, rounded otherwise). A ReLU6 stays a ReLU6 under a later ReLU; on a
//! clamped interval (`Rectify::Clamp`, a hardsigmoid) the interval is
//! narrowed. On a pending concat each part is rectified.
//!
//! Invariants: a ReLU on the float input is an
//! [`IntError::Unsupported`]. A rectified sum that no quantizer closes is
//! clamped where a conv or pool materialises it (`Builder::integers`) and
//! rejected by a BN, an add or the logits.

use super::builder::{Builder, Rectify, Value};
use crate::IntError;
use qatc::ir::Node;

impl Builder<'_> {
    /// A ReLU (`rectify`: [`Rectify::Relu`]) or ReLU6
    /// ([`Rectify::Relu6`]) node.
    pub(super) fn relu(
        &self,
        n: &Node,
        values: &[Option<Value>],
        rectify: Rectify,
    ) -> Result<Value, IntError> {
        let v = self.value(values, n, 0)?;
        self.rectified(n, v, rectify)
    }

    /// `v` with the clamp of `rectify` on it; a pending concat's parts each.
    fn rectified(&self, n: &Node, v: &Value, rectify: Rectify) -> Result<Value, IntError> {
        if let Value::Concat { name, parts } = v {
            let parts = parts
                .iter()
                .map(|p| self.rectified(n, p, rectify))
                .collect::<Result<_, _>>()?;
            return Ok(Value::Concat {
                name: name.clone(),
                parts,
            });
        }
        let mut lin = self.lin_of(n, v)?;
        lin.relu = match (rectify, lin.relu) {
            // A hardsigmoid's interval (or one seen through an affine map).
            (_, Rectify::Clamp { lo, hi }) => Rectify::Clamp {
                lo: lo.max(0.0),
                hi: if rectify == Rectify::Relu6 {
                    hi.min(6.0)
                } else {
                    hi
                },
            },
            (Rectify::Relu6, _) | (_, Rectify::Relu6) => Rectify::Relu6,
            _ => Rectify::Relu,
        };
        Ok(Value::Lin(lin))
    }
}
