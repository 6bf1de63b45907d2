//! Plans [`ops::Conv`](qatc::ops::Conv) (`conv`, `conv3x3`, `conv1x1`;
//! `dwconv` is a conv with `groups`) and [`ops::Linear`](qatc::ops::Linear),
//! which is planned as a 1x1 conv over `[F, 1, 1]`.
//!
//! Integer arithmetic emitted: one [`ConvLayer`],
//! `acc[co] = sum w_int[co, ci, ky, kx] * q[ci, ..]` over integers (i32, or
//! i64 where the worst case from the weights passes 31 bits), with the
//! seed's DoReFa weights (`weight_int`); a layer that reads the float input
//! takes its sum in floating point, scaled by `float_scale` and rounded to
//! an integer, and may keep float weights as 16-bit fixed-point numbers
//! (`weight_fixed`). The output is not requantized here: it starts a
//! pending sum, the accumulator over `scale_a * w_scale` plus the conv's
//! bias, that the next quantizer requantizes.
//!
//! Invariants: float weights that read integers are an
//! [`IntError::Unsupported`]; the accumulator widths (`worst_bits`,
//! `worst_bits_weights`) are known at plan time.

use super::builder::{shape3, unsupported, Builder, Lin, Rectify, Term, Value};
use super::weights::{bits_of, signed_bits, weight_fixed, weight_int, FLOAT_STEM_WEIGHT_BITS};
use super::{ConvInput, ConvLayer, Layer, TensorKind};
use crate::fixed::Rounding;
use crate::IntError;
use qatc::ir::{Node, WeightQuant};
use qatc::ops::{Conv, Linear};

/// A conv's shape parameters, as the IR gives them.
struct Geometry {
    cout: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
}

impl Builder<'_> {
    /// A conv node (`groups` >= 1: a depthwise conv has one group per
    /// channel).
    pub(super) fn conv(
        &mut self,
        n: &Node,
        values: &[Option<Value>],
        op: &Conv,
    ) -> Result<Value, IntError> {
        let v = self.value(values, n, 0)?;
        let geometry = Geometry {
            cout: op.out as usize,
            kernel: op.kernel as usize,
            stride: op.stride as usize,
            padding: op.padding as usize,
            groups: op.groups.max(1) as usize,
        };
        self.conv_layer(n, v, geometry, op.bias)
    }

    /// A linear node: a 1x1 conv over its `[F, 1, 1]` input.
    pub(super) fn linear(
        &mut self,
        n: &Node,
        values: &[Option<Value>],
        op: &Linear,
    ) -> Result<Value, IntError> {
        let v = self.value(values, n, 0)?;
        let geometry = Geometry {
            cout: op.out as usize,
            kernel: 1,
            stride: 1,
            padding: 0,
            groups: 1,
        };
        self.conv_layer(n, v, geometry, op.bias)
    }

    /// The integer layer of a conv or linear node and the pending sum it
    /// starts: its accumulator (`k = 1`, `denom = scale_a * w_scale`) plus
    /// its bias.
    fn conv_layer(
        &mut self,
        n: &Node,
        v: &Value,
        geometry: Geometry,
        bias: bool,
    ) -> Result<Value, IntError> {
        let Geometry {
            cout,
            kernel,
            stride,
            padding,
            groups,
        } = geometry;
        let (input, a_bits, in_bits, in_range, mut denom_a, bound) = match v {
            Value::Float => (
                ConvInput::Float,
                32,
                32,
                [i32::MIN as i64, i32::MAX as i64],
                1.0,
                None,
            ),
            other => {
                let q = self.integers(n, other)?;
                let bits = match &self.tensors[q.t].kind {
                    TensorKind::Act { bits, .. } => *bits,
                    TensorKind::Acc { .. } => 32,
                };
                (
                    ConvInput::Tensor(q.t),
                    bits,
                    signed_bits(q.lo, q.hi),
                    [q.lo, q.hi],
                    q.scale,
                    Some(q.lo.unsigned_abs().max(q.hi.unsigned_abs()) as f64),
                )
            }
        };
        let w_bits = n.w_bit.unwrap_or(32);
        let float_weights = self.g.weight_quant == WeightQuant::None || w_bits >= 32;
        // Float weights are allowed where the input is float too (a stem
        // kept wide, as ResNet20's `w8a8`): the layer already computes in
        // floating point, so its weights become fixed-point numbers.
        if float_weights && !matches!(input, ConvInput::Float) {
            return Err(unsupported(
                &n.name,
                format!("its weights are float ({w_bits} bit); the integer pipeline needs quantized weights (at most 16 bits) except in a layer that reads the float input"),
            ));
        }
        let wname = format!("{}.weight", n.name);
        let (weights, w_scale, w_bits) = if float_weights {
            let (q, scale) = weight_fixed(self.ck.get(&wname)?, FLOAT_STEM_WEIGHT_BITS);
            (q, scale, FLOAT_STEM_WEIGHT_BITS)
        } else {
            let (q, scale) = weight_int(self.ck.get(&wname)?, w_bits);
            (q, scale, w_bits)
        };
        // The float input's sum: truncated to an integer by the seed
        // (`trunc`); otherwise kept to a resolution of about 2^-15 of its
        // real value, i.e. 8 fraction bits over 8-bit weights (scale 127)
        // and none over 16-bit fixed-point ones (2^15): more would only
        // shrink the requantization's multipliers to a few significant bits.
        let float_scale = match self.opts.rounding {
            Rounding::Trunc => 1.0,
            Rounding::Nearest | Rounding::Scaled => {
                2f64.powi((15.0 - w_scale.log2()).round().clamp(0.0, 8.0) as i32)
            }
        };
        if matches!(input, ConvInput::Float) {
            denom_a = float_scale;
        }
        let in_shape = shape3(&n.in_shape.0);
        let out_shape = shape3(&n.out_shape.0);
        let cin = in_shape[0];
        let fan_in = cin / groups.max(1) * kernel * kernel;
        let worst_bits = if a_bits < 32 {
            Some(bits_of(
                fan_in as f64 * 2f64.powi(a_bits as i32 - 1) * 2f64.powi(w_bits as i32 - 1),
            ))
        } else {
            None
        };
        let worst_bits_weights = bound.map(|b| {
            let per_out = fan_in.max(1);
            weights
                .chunks(per_out)
                .map(|row| bits_of(row.iter().map(|w| w.unsigned_abs() as f64).sum::<f64>() * b))
                .max()
                .unwrap_or(1)
        });
        let acc_bound = match (worst_bits_weights, input) {
            (Some(wb), _) => 2f64.powi(wb as i32 - 1),
            (None, _) => 2f64.powi(40),
        };
        let wide = worst_bits_weights.is_none_or(|b| b > 31);
        let denom = denom_a * w_scale;
        let out = self.new_tensor(&n.name, out_shape, TensorKind::Acc { scale: denom }, wide);
        self.layers.push(Layer::Conv(ConvLayer {
            name: n.name.clone(),
            input,
            output: out,
            cin,
            cout,
            kernel,
            stride,
            padding,
            groups,
            in_hw: [in_shape[1], in_shape[2]],
            out_hw: [out_shape[1], out_shape[2]],
            weights,
            w_bits,
            w_scale,
            a_bits,
            in_bits,
            in_range,
            float_scale: if matches!(input, ConvInput::Float) {
                float_scale
            } else {
                1.0
            },
            fan_in,
            worst_bits,
            worst_bits_weights,
        }));
        let mut b64 = vec![0.0; cout];
        let mut b32 = vec![0.0f32; cout];
        if bias {
            let b = self.ck.get(&format!("{}.bias", n.name))?;
            for (ch, &x) in b.iter().enumerate().take(cout) {
                b64[ch] = x as f64;
                b32[ch] = x;
            }
        }
        Ok(Value::Lin(Lin {
            terms: vec![Term {
                src: out,
                denom,
                recip_f32: matches!(input, ConvInput::Float),
                k: vec![1.0; cout],
                k_f32: None,
                pooled: false,
                bound: acc_bound,
            }],
            bias: b64,
            bias_f32: b32,
            relu: Rectify::None,
            channels: cout,
        }))
    }
}
