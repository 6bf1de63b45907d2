//! Plans [`ops::Concat`](qatc::ops::Concat), the channel concatenation of
//! two or more maps of one spatial size.
//!
//! Integer arithmetic emitted, by what the inputs are:
//! - integers of one scale (the same quantizer kind, bits and clipping
//!   value): one [`ConcatLayer`](super::ConcatLayer) that copies them side
//!   by side, at that scale;
//! - anything else (integers of different scales, pending sums): nothing
//!   yet. The concat stays pending ([`Value::Concat`]) until the
//!   quantizer after it (the `quantize_concat` rule), which requantizes
//!   each input into its grid, one [`Requant`](super::Requant) per input
//!   (`Builder::requant`: exactly what quantizing the joined channels
//!   does, channel by channel; an input already in that grid is taken as
//!   it is), then copies the parts side by side.
//!
//! Invariants: concatenating the float input, or inputs of different
//! scales with no quantizer after the concat, is an
//! [`IntError::Unsupported`] naming the layer (the latter saying to add
//! `quantize_concat`).

use super::builder::{concat_needs_quantizer, unsupported, Builder, Value, Q};
use super::requant::Target;
use super::{ConcatLayer, Layer, TensorId, TensorKind};
use crate::fixed::FixedFormat;
use crate::IntError;
use qatc::ir::Node;

impl Builder<'_> {
    /// A concat node: `inputs` in order.
    pub(super) fn concat(&mut self, n: &Node, values: &[Option<Value>]) -> Result<Value, IntError> {
        let mut parts = Vec::new();
        for i in 0..n.inputs.len() {
            match self.value(values, n, i)? {
                Value::Float => {
                    return Err(unsupported(
                        &n.name,
                        "concatenates the float input; quantize it first (`act`)",
                    ))
                }
                // A pending concat inside a concat: its parts, in order.
                Value::Concat { parts: inner, .. } => parts.extend(inner.iter().cloned()),
                v => parts.push(v.clone()),
            }
        }
        let qs: Vec<Q> = parts
            .iter()
            .filter_map(|p| match p {
                Value::Q(q) => Some(q.clone()),
                _ => None,
            })
            .collect();
        if qs.len() == parts.len() && qs.iter().all(|q| q.scale == qs[0].scale) {
            let bits = qs
                .iter()
                .map(|q| match self.tensors[q.t].kind {
                    TensorKind::Act { bits, .. } => bits,
                    TensorKind::Acc { .. } => 32,
                })
                .max()
                .unwrap_or(32);
            let (t, lo, hi) = self.concat_layer(&n.name, &qs, qs[0].scale, bits);
            return Ok(Value::Q(Q {
                t,
                scale: qs[0].scale,
                lo,
                hi,
                pooled: qs.iter().all(|q| q.pooled),
            }));
        }
        if !self.followed_by_quantizer(n) {
            return Err(concat_needs_quantizer(&n.name));
        }
        Ok(Value::Concat {
            name: n.name.clone(),
            parts,
        })
    }

    /// A pending concat into the domain of the quantizer node `n` (target
    /// `t`): each part requantized into it (named `<n>.<i>`), then joined.
    pub(super) fn quantize_concat(
        &mut self,
        n: &Node,
        parts: &[Value],
        t: &Target,
        fmt: FixedFormat,
    ) -> Result<Q, IntError> {
        let mut qs = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let q = match p {
                // Already integers of this grid and range: requantizing
                // would multiply by exactly 1.
                Value::Q(q) if q.scale == t.scale && q.lo >= t.lo && q.hi <= t.hi => q.clone(),
                _ => {
                    let mut node = n.clone();
                    node.name = format!("{}.{i}", n.name);
                    self.quantize_value(&node, p, t, fmt)?
                }
            };
            qs.push(q);
        }
        let (out, lo, hi) = self.concat_layer(&n.name, &qs, t.scale, t.bits);
        Ok(Q {
            t: out,
            scale: t.scale,
            lo,
            hi,
            pooled: false,
        })
    }

    /// A [`ConcatLayer`] of integers of one scale: the output tensor and
    /// its range (the union of the inputs').
    fn concat_layer(
        &mut self,
        name: &str,
        qs: &[Q],
        scale: f64,
        bits: u32,
    ) -> (TensorId, i64, i64) {
        let lo = qs.iter().map(|q| q.lo).min().unwrap_or(0);
        let hi = qs.iter().map(|q| q.hi).max().unwrap_or(0);
        let shape0 = self.tensors[qs[0].t].shape;
        let c: usize = qs.iter().map(|q| self.tensors[q.t].shape[0]).sum();
        let wide = qs.iter().any(|q| self.tensors[q.t].wide);
        let out = self.new_tensor(
            name,
            [c, shape0[1], shape0[2]],
            TensorKind::Act {
                scale,
                lo,
                hi,
                bits,
            },
            wide,
        );
        self.layers.push(Layer::Concat(ConcatLayer {
            name: name.to_string(),
            inputs: qs.iter().map(|q| q.t).collect(),
            output: out,
        }));
        self.node_tensors.insert(name.to_string(), out);
        (out, lo, hi)
    }
}
