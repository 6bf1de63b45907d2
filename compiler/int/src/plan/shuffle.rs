//! Plans [`ops::Shuffle`](qatc::ops::Shuffle), the channel shuffle of
//! ShuffleNet: with `m = C / groups`, output channel `j` is input channel
//! `(j % groups) * m + j / groups`.
//!
//! Integer arithmetic emitted: none. A permutation of the channels, planned
//! as a split's part is (`Builder::gather`): integers are copied by a
//! [`Channels`](super::Channels) layer, a pending sum stays pending over
//! the permuted channels of its sources.
//!
//! Invariants: groups that do not divide the channels, the float input or
//! a concat of several scales with no quantizer after it is an
//! [`IntError::Unsupported`] naming the layer.

use super::builder::{unsupported, Builder, Value};
use crate::IntError;
use qatc::ir::Node;
use qatc::ops::Shuffle;

/// The input channel of each output channel.
pub(super) fn shuffle_order(channels: usize, groups: usize) -> Vec<usize> {
    let m = channels / groups.max(1);
    (0..channels)
        .map(|j| (j % groups) * m + j / groups)
        .collect()
}

impl Builder<'_> {
    /// A channel shuffle node.
    pub(super) fn shuffle(
        &mut self,
        n: &Node,
        values: &[Option<Value>],
        op: &Shuffle,
    ) -> Result<Value, IntError> {
        let v = self.value(values, n, 0)?.clone();
        let c = self.channels_of(&v);
        let groups = op.groups.max(1) as usize;
        if !c.is_multiple_of(groups) {
            return Err(unsupported(
                &n.name,
                format!("shuffles {c} channels in {groups} groups"),
            ));
        }
        self.gather(n, &v, &shuffle_order(c, groups))
    }
}

#[cfg(test)]
mod tests {
    use super::shuffle_order;

    #[test]
    fn the_order_is_shufflenets() {
        // [a0 a1 a2 | b0 b1 b2] -> [a0 b0 a1 b1 a2 b2].
        assert_eq!(shuffle_order(6, 2), [0, 3, 1, 4, 2, 5]);
        assert_eq!(shuffle_order(6, 3), [0, 2, 4, 1, 3, 5]);
        assert_eq!(shuffle_order(4, 1), [0, 1, 2, 3]);
    }
}
