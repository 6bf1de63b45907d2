//! Plans the pooling ops: [`ops::AvgPool`](qatc::ops::AvgPool),
//! [`ops::MaxPool`](qatc::ops::MaxPool) and
//! [`ops::AdaptiveAvgPool`](qatc::ops::AdaptiveAvgPool).
//!
//! Integer arithmetic emitted: one [`Pool`] layer over integers (a pending
//! sum is materialised first at 24 bits, `Builder::materialize_fine`). Max pooling picks the
//! largest integer of each window; average pooling sums each window and
//! divides it by the window size (`trunc`: truncating, as the seed;
//! otherwise to nearest). Under `nearest` with equal windows the division
//! is left out (`sum_only`): the output keeps the sums, with the scale and
//! range multiplied by the window size, and the next requantization
//! divides with its own rounding. An averaged tensor is marked `pooled`
//! (the seed rescales it with a floor division).

use super::builder::{shape3, Builder, Value, Q};
use super::weights::bits_of;
use super::{Layer, Pool, PoolKind, TensorKind};
use crate::IntError;
use qatc::ir::Node;
use qatc::ops::{AdaptiveAvgPool, AvgPool, MaxPool};

impl Builder<'_> {
    /// An average pooling node (`kernel x kernel` windows).
    pub(super) fn avg_pool(
        &mut self,
        n: &Node,
        values: &[Option<Value>],
        op: &AvgPool,
    ) -> Result<Value, IntError> {
        let v = self.value(values, n, 0)?;
        let kind = PoolKind::Avg {
            kernel: op.kernel as usize,
            stride: op.stride as usize,
        };
        self.pool(n, v, kind)
    }

    /// A max pooling node.
    pub(super) fn max_pool(
        &mut self,
        n: &Node,
        values: &[Option<Value>],
        op: &MaxPool,
    ) -> Result<Value, IntError> {
        let v = self.value(values, n, 0)?;
        let kind = PoolKind::Max {
            kernel: op.kernel as usize,
            stride: op.stride as usize,
            padding: op.padding as usize,
        };
        self.pool(n, v, kind)
    }

    /// An adaptive average pooling node (to `size x size`).
    pub(super) fn adaptive_avg_pool(
        &mut self,
        n: &Node,
        values: &[Option<Value>],
        op: &AdaptiveAvgPool,
    ) -> Result<Value, IntError> {
        let v = self.value(values, n, 0)?;
        let kind = PoolKind::Adaptive {
            size: op.size as usize,
        };
        self.pool(n, v, kind)
    }

    /// The pool layer of a node reading `v`: `kind`'s windows over its
    /// integers.
    fn pool(&mut self, n: &Node, v: &Value, kind: PoolKind) -> Result<Value, IntError> {
        // A pending sum (a BN's output, as SE's squeeze reads it) at 24 bits.
        let q = self.fine(n, v)?;
        let info = self.tensors[q.t].clone();
        let out_shape = shape3(&n.out_shape.0);
        let averaging = !matches!(kind, PoolKind::Max { .. });
        let div = self.opts.rounding.div();
        // Window size when every window has the same (and no padding).
        let window = match kind {
            PoolKind::Avg { kernel, .. } => Some(kernel * kernel),
            PoolKind::Adaptive { size }
                if size > 0
                    && info.shape[1].is_multiple_of(size)
                    && info.shape[2].is_multiple_of(size) =>
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
}
