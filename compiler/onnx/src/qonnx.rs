//! The QONNX quantizers: every weight and activation quantizer as one QONNX
//! `Quant` node (domain `qonnx.custom_op.general`, the op FINN and hls4ml
//! read), the strategy [`Qonnx`] of [`crate::lower`].
//!
//! `Quant(x, scale, zero_point, bitwidth)` with attributes `signed`,
//! `narrow` and `rounding_mode` computes, in float32 (qonnx's
//! `custom_op/general/intquant.py`):
//!
//! ```text
//! q = round(clamp(x / scale + zero_point, min_int, max_int)) - zero_point,  out = q * scale
//! min_int = signed ? -2^(b-1) + narrow : 0
//! max_int = signed ? 2^(b-1) - 1 : 2^b - 1 - narrow
//! ```
//!
//! `rounding_mode = "ROUND"` is numpy's `round`, half to even, as
//! `torch.round`; the clamp bounds are integers, so clamping before
//! rounding is clamping after it. A signed 1-bit `Quant` is bipolar
//! (`x >= 0 ? 1 : -1`). Zero points are 0 throughout; all four inputs are
//! float32 scalars.

use crate::builder::{attr_int, attr_string};
use crate::lower::{unsupported, Cx, Emit};
use crate::proto::OperatorSetIdProto;
use crate::{act_quant_form, OnnxError};
use qatc::ir::{Node, Quantizer};

/// The QONNX custom-op domain of `Quant`.
pub const QONNX_DOMAIN: &str = "qonnx.custom_op.general";

/// One QONNX `Quant`: `round(clamp(x / scale, lo, hi)) * scale` with
/// `bits`, `signed`, `narrow` fixing `[lo, hi]` (see the module doc), after
/// a float `x * pre_scale` where that is not 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantParams {
    pub pre_scale: Option<f32>,
    pub scale: f32,
    pub bits: u32,
    pub signed: bool,
    pub narrow: bool,
}

impl QuantParams {
    /// The integer range `[min_int, max_int]` of these parameters (qonnx's
    /// `min_int` / `max_int`).
    pub fn range(&self) -> (i64, i64) {
        let b = self.bits;
        if self.signed {
            (
                -(1i64 << (b - 1)) + self.narrow as i64,
                (1i64 << (b - 1)) - 1,
            )
        } else {
            (0, (1i64 << b) - 1 - self.narrow as i64)
        }
    }
}

/// The QONNX `Quant` of the seed's activation quantizer `quantizer` at
/// `bits` with clipping value `alpha` (PACT, mPACT), in eval mode: the
/// same grid as the QDQ form ([`act_quant_form`]), as one node:
/// - mPACT: signed, narrow (`±(2^(b-1)-1)`), scale `|a|/(2^(b-1)-1)`;
/// - PACT, fixed-scale PACT: unsigned, scale `a/(2^b-1)` (`s/(2^b-1)`);
/// - DoReFa `round(clamp(0.1 x, 0, 1) n) / n`: a float `Mul` by 0.1 first
///   (the seed's own float32 product; its output is never scaled back),
///   then unsigned, scale `1/n`.
///
/// Any bit-width up to 16 is one node (no 8 / 16-bit containers, no
/// opset 21). `Err(reason)` where no `Quant` computes the quantizer
/// (1-bit DoReFa's `sign`, a clipping value of 0 or not finite).
pub fn quant_params(
    quantizer: &Quantizer,
    bits: u32,
    alpha: Option<f32>,
) -> Result<QuantParams, String> {
    if *quantizer == Quantizer::Dorefa && bits < 2 {
        return Err(
            "1-bit DoReFa activations are sign(clamp(0.1 x, 0, 1)) (1 for x > 0, else 0): an \
             unsigned 1-bit Quant rounds x / scale at 1/2 and a signed one is bipolar (±1), so \
             neither QONNX nor QDQ expresses it"
                .into(),
        );
    }
    let form = act_quant_form(quantizer, bits, alpha)?;
    let signed = form.lo < 0;
    let p = QuantParams {
        pre_scale: (form.q_scale != form.dq_scale).then_some(0.1),
        scale: form.dq_scale,
        bits,
        signed,
        narrow: signed && form.lo == -form.hi,
    };
    debug_assert_eq!(p.range(), (form.lo, form.hi), "{quantizer} {bits}");
    Ok(p)
}

/// The QONNX strategy of [`crate::lower`].
pub(crate) struct Qonnx;

impl Qonnx {
    /// `Quant` node `node` of `x` into value `out`, with its constants
    /// named `<prefix>.scale`, `.zero_point`, `.bits`.
    #[allow(clippy::too_many_arguments)]
    fn quant(
        cx: &mut Cx,
        node: &str,
        prefix: &str,
        x: &str,
        out: &str,
        p: &QuantParams,
        doc: Option<String>,
    ) {
        let scale = cx.b.f32_scalar(&format!("{prefix}scale"), p.scale);
        let zp = cx.b.f32_scalar(&format!("{prefix}zero_point"), 0.0);
        let bits = cx.b.f32_scalar(&format!("{prefix}bits"), p.bits as f32);
        let attrs = vec![
            attr_int("signed", p.signed as i64),
            attr_int("narrow", p.narrow as i64),
            attr_string("rounding_mode", "ROUND"),
        ];
        cx.b.node_in(
            QONNX_DOMAIN,
            "Quant",
            node,
            &[x, &scale, &zp, &bits],
            &[out],
            attrs,
            doc,
        );
    }
}

impl Emit for Qonnx {
    fn format(&self) -> &'static str {
        "QONNX"
    }

    fn tag(&self) -> &'static str {
        "qonnx"
    }

    fn domains(&self) -> Vec<OperatorSetIdProto> {
        vec![OperatorSetIdProto {
            domain: Some(QONNX_DOMAIN.into()),
            version: Some(1),
        }]
    }

    /// The dequantized DoReFa weight `code * scale` (float32, the product
    /// QDQ's DequantizeLinear computes) as an initializer, through a
    /// `Quant` at the weight's bits with the same scale: `Quant` gives
    /// `round(code * scale / scale) * scale = code * scale` back bit for
    /// bit (the quotient is within an ulp of the integer code), so it
    /// documents the grid for FINN without changing a value. (The float
    /// weights themselves cannot go through a `Quant`: the seed's
    /// `tanh(w) / max|tanh(w)|` is no part of it, and rounding
    /// `t / (1/n)` where the seed rounds `t * n` could move a tie.)
    /// Signed and narrow (`±(2^(b-1)-1)`); 1-bit weights (`sign(w)`, scale
    /// `mean|w|`) as a bipolar 1-bit `Quant` where no weight is 0, else a
    /// narrow 2-bit one, which keeps `sign(0) = 0`.
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
        let values: Vec<f32> = codes.iter().map(|&c| c as f32 * scale).collect();
        let init = cx.b.f32s(&format!("{name}.weight_fq"), dims, &values);
        let p = if bits == 1 && !codes.contains(&0) {
            QuantParams {
                pre_scale: None,
                scale,
                bits: 1,
                signed: true,
                narrow: false,
            }
        } else {
            QuantParams {
                pre_scale: None,
                scale,
                bits: bits.max(2),
                signed: true,
                narrow: true,
            }
        };
        let out = format!("{name}.weight");
        let doc = Some(format!(
            "DoReFa weight of `{name}` at {bits} bits: integer codes times {scale:e}"
        ));
        Self::quant(
            cx,
            &format!("{name}.weight_quant"),
            &format!("{name}.weight_"),
            &init,
            &out,
            &p,
            doc,
        );
        Ok(out)
    }

    /// One `Quant` named after the IR node (DoReFa: after a `Mul` by 0.1,
    /// `<name>.prescale`).
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
        let p = quant_params(quantizer, bits, alpha)
            .map_err(|r| unsupported(n, format!("no QONNX form: {r}")))?;
        let (lo, hi) = p.range();
        let mut x = x.to_string();
        if let Some(k) = p.pre_scale {
            let factor = cx.b.f32_scalar(&format!("{name}.prescale_factor"), k);
            let out = format!("{name}.x_scaled");
            cx.b.node(
                "Mul",
                &format!("{name}.prescale"),
                &[&x, &factor],
                &[&out],
                vec![],
                Some(format!(
                    "qatc `{name}`: DoReFa's 0.1 in front of the quantizer"
                )),
            );
            x = out;
        }
        let doc = Some(format!(
            "qatc `{name}`: {quantizer} at {bits} bits (eval): q = round(clamp(x / {:e}, {lo}, \
             {hi})) (half to even), out = q * {:e}",
            p.scale, p.scale
        ));
        Self::quant(cx, name, &format!("{name}."), &x, name, &p, doc);
        Ok(())
    }
}
