//! Plans [`ops::Add`](qatc::ops::Add), the residual add.
//!
//! Integer arithmetic emitted: none of its own. Both operands are viewed
//! as pending sums (an integer tensor is the sum of one term) and
//! concatenated: their terms, and their biases added per channel. The next
//! quantizer requantizes the whole sum in one [`Requant`](super::Requant),
//! which is how the identity path is rescaled to the main path's domain.
//!
//! Invariants: adding a ReLU output that no quantizer closed, tensors of
//! different channel counts, or the float input is an
//! [`IntError::Unsupported`].

use super::builder::{unsupported, Builder, Rectify, Value};
use crate::IntError;
use qatc::ir::Node;

impl Builder<'_> {
    /// An add node: `inputs[0]` (main path) plus `inputs[1]` (shortcut).
    pub(super) fn add(&mut self, n: &Node, values: &[Option<Value>]) -> Result<Value, IntError> {
        let l = self.value(values, n, 0)?;
        let r = self.value(values, n, 1)?;
        let mut a = self.lin_of(n, l)?;
        let c = self.lin_of(n, r)?;
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
        Ok(Value::Lin(a))
    }
}
