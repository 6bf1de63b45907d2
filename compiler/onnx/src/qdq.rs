//! The QDQ quantizers: activation quantizers as `QuantizeLinear -> (Clip)
//! -> DequantizeLinear`, weights as integer codes -> `DequantizeLinear`
//! ([`Qdq`], the strategy [`crate::lower`] writes them with), and the
//! forms both ONNX formats derive their constants from
//! ([`act_quant_form`], [`weight_codes`]).

use crate::builder::Container;
use crate::lower::{unsupported, Cx, Emit};
use crate::proto::OperatorSetIdProto;
use crate::{OnnxError, MIN_OPSET};
use qatc::ir::{Graph, Node, Op, Quantizer};

/// The smallest opset that holds `g`'s quantizers in QDQ form: 13, or 21
/// where an activation quantizer has more than 8 bits (QuantizeLinear has
/// 16-bit outputs from opset 21 on).
pub fn min_opset(g: &Graph) -> i64 {
    let wide = g.nodes.iter().any(|n| match &n.op {
        Op::ActQuant(q) => q.quantizer != Quantizer::None && (9..32).contains(&n.out_bit),
        _ => false,
    });
    if wide {
        21
    } else {
        MIN_OPSET
    }
}

/// An activation quantizer in ONNX terms: `q = saturate(round(x / q_scale))`
/// in `container`, clamped to `[lo, hi]`, read back as `q * dq_scale`
/// (zero point 0 throughout). `x_clip` is the same clamp in input units,
/// for the containers ONNX Runtime has no integer `Clip` kernel for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActQuantForm {
    pub container: Container,
    pub q_scale: f32,
    pub dq_scale: f32,
    pub lo: i64,
    pub hi: i64,
    pub x_clip: (f32, f32),
}

/// The QDQ form of the seed's activation quantizer `quantizer` at `bits`
/// (2..=16; 1 for PACT and fixed-scale PACT) with clipping value `alpha`
/// (PACT, mPACT), in eval mode (`runtime/src/quant.rs`, seed reference
/// section 1). `Err(reason)` where QDQ has no form for it.
pub fn act_quant_form(
    quantizer: &Quantizer,
    bits: u32,
    alpha: Option<f32>,
) -> Result<ActQuantForm, String> {
    let wide = bits > 8;
    let levels = |b: u32| ((1u64 << b) - 1) as f64;
    let clip = |a: f32, what: &str| -> Result<f64, String> {
        if a.is_finite() && a != 0.0 {
            Ok(a as f64)
        } else {
            Err(format!("its {what} {a} gives no quantization scale"))
        }
    };
    let unsigned = |n: f64, q_scale: f64, dq_scale: f64, x_hi: f64| ActQuantForm {
        container: if wide { Container::U16 } else { Container::U8 },
        q_scale: q_scale as f32,
        dq_scale: dq_scale as f32,
        lo: 0,
        hi: n as i64,
        x_clip: (0.0, x_hi as f32),
    };
    match *quantizer {
        // round(clamp(0.1 x, 0, 1) n) / n: x / (10/n) on the grid, read back
        // as q / n (the seed never undoes the 0.1).
        Quantizer::Dorefa => {
            if bits < 2 {
                return Err(
                    "1-bit DoReFa activations are sign(x): no QuantizeLinear rounds to that".into(),
                );
            }
            let n = levels(bits);
            Ok(unsigned(n, 10.0 / n, 1.0 / n, 10.0))
        }
        // round(clamp(x, 0, a) (2^b-1)/a) a/(2^b-1).
        Quantizer::Pact { .. } => {
            let a = clip(alpha.unwrap_or(f32::NAN), "clipping value")?;
            if a < 0.0 {
                return Err(format!("its clipping value {a} is negative: PACT's clamp(x, 0, a) is then the constant a"));
            }
            let n = levels(bits);
            Ok(unsigned(n, a / n, a / n, a))
        }
        // round(clamp(x, -|a|, |a|) k/a) a/k, k = 2^(b-1)-1: symmetric, the
        // sign of a does not change the result (round is odd).
        Quantizer::Mpact { .. } => {
            if bits < 2 {
                return Err("mPACT needs at least 2 bits".into());
            }
            let a = clip(alpha.unwrap_or(f32::NAN), "clipping value")?.abs();
            let k = levels(bits - 1);
            Ok(ActQuantForm {
                container: if wide { Container::I16 } else { Container::I8 },
                q_scale: (a / k) as f32,
                dq_scale: (a / k) as f32,
                lo: -(k as i64),
                hi: k as i64,
                x_clip: (-a as f32, a as f32),
            })
        }
        // round(clamp(x, 0, s)/s n)/n s.
        Quantizer::PactFixed { scale } => {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(format!("its scale {scale} is not positive"));
            }
            let n = levels(bits);
            Ok(unsigned(n, scale / n, scale / n, scale))
        }
        Quantizer::None => Err("no quantizer".into()),
    }
}

/// The seed's DoReFa weights as integer codes and one scale per tensor
/// (what `qatc_runtime::quant::dorefa_weight` computes, in float32):
/// `t = tanh(w) / max|tanh(w)|`, code `round(t (2^(b-1)-1))` (half to
/// even), scale `1/(2^(b-1)-1)`; 2 bits: `sign(t)`, scale 1; 1 bit:
/// `sign(w)`, scale `mean|w|`.
pub fn weight_codes(w: &[f32], bits: u32) -> (Vec<i64>, f32) {
    let sign = |x: f32| {
        if x > 0.0 {
            1
        } else if x < 0.0 {
            -1
        } else {
            0
        }
    };
    if bits == 1 {
        let mean = (w.iter().map(|x| x.abs() as f64).sum::<f64>() / w.len().max(1) as f64) as f32;
        return (w.iter().map(|&x| sign(x)).collect(), mean);
    }
    let t: Vec<f32> = w.iter().map(|&x| (x as f64).tanh() as f32).collect();
    if bits == 2 {
        return (t.iter().map(|&x| sign(x)).collect(), 1.0);
    }
    let max = t.iter().fold(0f32, |m, x| m.max(x.abs()));
    let max = if max > 0.0 { max } else { 1.0 };
    let n = ((1i64 << (bits - 1)) - 1) as f32;
    let codes = t
        .iter()
        .map(|&x| ((x / max) * n).round_ties_even() as i64)
        .collect();
    (codes, 1.0 / n)
}
/// The QDQ strategy of [`crate::lower`].
pub(crate) struct Qdq;

impl Emit for Qdq {
    fn format(&self) -> &'static str {
        "QDQ"
    }

    fn tag(&self) -> &'static str {
        "qdq"
    }

    fn domains(&self) -> Vec<OperatorSetIdProto> {
        vec![]
    }

    /// Integer codes -> DequantizeLinear (`int8` up to 8 bits, else `int16`
    /// from opset 21, `int32` before).
    fn weight(
        &self,
        cx: &mut Cx,
        n: &Node,
        codes: &[i64],
        scale: f32,
        dims: &[i64],
    ) -> Result<String, OnnxError> {
        let name = &n.name;
        let bits = n.w_bit.unwrap_or(32);
        let container = if bits <= 8 {
            Container::I8
        } else if cx.opset >= 21 {
            Container::I16
        } else {
            // DequantizeLinear reads int32 at every opset (zero point 0).
            Container::I32
        };
        let q =
            cx.b.ints(&format!("{name}.weight_q"), container, dims, codes);
        let s = cx.b.f32_scalar(&format!("{name}.weight_scale"), scale);
        let mut ins = vec![q, s];
        if container != Container::I32 {
            ins.push(cx.b.int_scalar(&format!("{name}.weight_zero_point"), container, 0));
        }
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        let out = format!("{name}.weight");
        let doc = Some(format!(
            "DoReFa weight of `{name}` at {bits} bits: integer codes times {scale:e}"
        ));
        cx.b.node(
            "DequantizeLinear",
            &format!("{name}.weight_dequantize"),
            &ins,
            &[&out],
            vec![],
            doc,
        );
        Ok(out)
    }

    /// An activation quantizer: QuantizeLinear -> (Clip) -> DequantizeLinear,
    /// the last named after the IR node.
    fn act_quant(
        &self,
        cx: &mut Cx,
        n: &Node,
        x: &str,
        quantizer: &Quantizer,
        alpha: Option<f32>,
    ) -> Result<(), OnnxError> {
        let name = n.name.as_str();
        let bits = n.out_bit;
        let form = act_quant_form(quantizer, bits, alpha)
            .map_err(|r| unsupported(n, format!("no QDQ form: {r}")))?;
        if bits > 8 && cx.opset < 21 {
            return Err(OnnxError::NeedsOpset21 {
                layer: name.to_string(),
                bits,
                opset: cx.opset,
            });
        }
        let mut x = x.to_string();
        let c = form.container;
        let clipped = (form.lo, form.hi) != c.range();
        let doc = Some(format!(
            "qatc `{name}`: {quantizer} at {bits} bits (eval): q = clamp(round(x / {:e}), {}, {}) \
             (round half to even), out = q * {:e}",
            form.q_scale, form.lo, form.hi, form.dq_scale
        ));
        // 16-bit containers: ONNX Runtime has no int16 / uint16 Clip kernel,
        // so the clamp is done in float before rounding (the seed's own
        // order: clamp, then round).
        if clipped && bits > 8 {
            let lo = cx.b.f32_scalar(&format!("{name}.x_min"), form.x_clip.0);
            let hi = cx.b.f32_scalar(&format!("{name}.x_max"), form.x_clip.1);
            let out = format!("{name}.x_clipped");
            cx.b.node(
                "Clip",
                &format!("{name}.clip_x"),
                &[&x, &lo, &hi],
                &[&out],
                vec![],
                None,
            );
            x = out;
        }
        let scale = cx.b.f32_scalar(&format!("{name}.scale"), form.q_scale);
        let zp = cx.b.int_scalar(&format!("{name}.zero_point"), c, 0);
        let q = format!("{name}.q");
        cx.b.node(
            "QuantizeLinear",
            &format!("{name}.quantize"),
            &[&x, &scale, &zp],
            &[&q],
            vec![],
            doc.clone(),
        );
        let mut q_in = q;
        if clipped && bits <= 8 {
            // QCDQ: the bit-width's range inside the 8-bit container.
            let lo = cx.b.int_scalar(&format!("{name}.q_min"), c, form.lo);
            let hi = cx.b.int_scalar(&format!("{name}.q_max"), c, form.hi);
            let out = format!("{name}.q_clipped");
            cx.b.node(
                "Clip",
                &format!("{name}.clip"),
                &[&q_in, &lo, &hi],
                &[&out],
                vec![],
                None,
            );
            q_in = out;
        }
        let dq_scale = if form.dq_scale == form.q_scale {
            scale
        } else {
            cx.b.f32_scalar(&format!("{name}.out_scale"), form.dq_scale)
        };
        cx.b.node(
            "DequantizeLinear",
            name,
            &[&q_in, &dq_scale, &zp],
            &[name],
            vec![],
            doc,
        );
        Ok(())
    }
}
