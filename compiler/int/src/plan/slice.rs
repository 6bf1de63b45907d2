//! Plans [`ops::Slice`](qatc::ops::Slice), one part of a channel split:
//! channels `start .. start + len` of its input.
//!
//! Integer arithmetic emitted: none. Integers are copied by a
//! [`Channels`](super::Channels) layer (same scale and range); a pending
//! sum stays pending with each term reading those channels of its source
//! (one [`Channels`](super::Channels) layer per term), so the next
//! quantizer requantizes exactly what it would have (`Builder::gather`).
//!
//! Invariants: a range outside the input's channels, the float input or a
//! concat of several scales with no quantizer after it is an
//! [`IntError::Unsupported`] naming the layer.

use super::builder::{Builder, Value};
use crate::IntError;
use qatc::ir::Node;
use qatc::ops::Slice;

impl Builder<'_> {
    /// A slice node: its input's channels `start .. start + len`.
    pub(super) fn slice(
        &mut self,
        n: &Node,
        values: &[Option<Value>],
        op: &Slice,
    ) -> Result<Value, IntError> {
        let v = self.value(values, n, 0)?.clone();
        let (start, len) = (op.start.max(0) as usize, op.len.max(0) as usize);
        let from: Vec<usize> = (start..start + len).collect();
        self.gather(n, &v, &from)
    }
}
