//! The QDQ lowering: one pass over the IR's nodes (topological order), each
//! op written as the ONNX ops that compute its fake-quant eval forward.
//!
//! Names: the value an IR node produces is named after the node
//! (`s1.0.conv2`); the ONNX node that produces it carries the same name;
//! helper values and initializers get the node's name and a suffix
//! (`s1.0.conv2.weight_q`, `stem.act_quant_out.scale`). Nodes that are the
//! identity in eval mode (a quantizer at 32 bits, `dropout`, `identity`)
//! write nothing: their consumers read their input's value.

use crate::builder::{attr_float, attr_int, attr_ints, value_info, Builder, Container};
use crate::proto::{ModelProto, OperatorSetIdProto, StringStringEntryProto};
use crate::{OnnxError, QdqOptions, MAX_OPSET, MIN_OPSET};
use qatc::ir::{Graph, Node, Op, Quantizer};
use qatc_int::Checkpoint;

/// BN epsilon of every qatc model (the runtime's `BN_EPS`, the seed's).
const BN_EPS: f32 = 1e-5;

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

/// The IR version that goes with an opset (ONNX's versioning table: the
/// release that introduced the opset).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
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

struct Lowering<'a> {
    ck: &'a Checkpoint,
    opset: i64,
    b: Builder,
    /// The ONNX value each IR node's output is.
    value: Vec<String>,
}

/// The QDQ model of `g` with the trained values of `ck`.
pub fn model(g: &Graph, ck: &Checkpoint, opts: &QdqOptions) -> Result<ModelProto, OnnxError> {
    let need = min_opset(g);
    let opset = opts.opset.unwrap_or(need);
    if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
        return Err(OnnxError::Opset(opset));
    }
    let mut l = Lowering {
        ck,
        opset,
        b: Builder::default(),
        value: Vec::with_capacity(g.nodes.len()),
    };
    let mut inputs = Vec::new();
    for n in &g.nodes {
        let v = l.node(n)?;
        if matches!(n.op, Op::Input(_)) {
            inputs.push(value_info(&v, &batch_dims(&n.out_shape.0)));
        }
        l.value.push(v);
    }
    // The output must be a value of its own: an eval-mode identity at the
    // end becomes an ONNX Identity named after it.
    let out_node = &g.nodes[g.output];
    let mut out = l.value[g.output].clone();
    if out != out_node.name {
        l.b.node(
            "Identity",
            &out_node.name,
            &[&out],
            &[&out_node.name],
            vec![],
            None,
        );
        out = out_node.name.clone();
    }
    let graph = crate::proto::GraphProto {
        node: std::mem::take(&mut l.b.nodes),
        name: Some(format!("{}.{}", g.model, g.profile)),
        initializer: std::mem::take(&mut l.b.initializers),
        doc_string: Some(format!(
            "qatc model `{}`, profile `{}`: the fake-quant eval forward as QDQ (QuantizeLinear / \
             DequantizeLinear) ONNX",
            g.model, g.profile
        )),
        input: inputs,
        output: vec![value_info(&out, &batch_dims(&out_node.out_shape.0))],
        value_info: vec![],
    };
    let meta = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    Ok(ModelProto {
        ir_version: Some(ir_version(opset)),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        producer_name: Some("qatc".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: None,
        doc_string: graph.doc_string.clone(),
        graph: Some(graph),
        metadata_props: vec![
            meta("qatc.model", g.model.clone()),
            meta("qatc.profile", g.profile.clone()),
            meta("qatc.format", "qdq".into()),
        ],
    })
}

/// `[N, dims...]` with a symbolic batch dimension.
fn batch_dims(dims: &[i64]) -> Vec<Option<i64>> {
    std::iter::once(None)
        .chain(dims.iter().map(|&d| Some(d)))
        .collect()
}

impl Lowering<'_> {
    fn input(&self, n: &Node, i: usize) -> String {
        self.value[n.inputs[i]].clone()
    }

    fn var(&self, n: &Node, param: &str) -> Result<&[f32], OnnxError> {
        Ok(self.ck.get(&format!("{}.{param}", n.name))?)
    }

    fn unsupported(n: &Node, what: impl Into<String>) -> OnnxError {
        OnnxError::Unsupported {
            layer: n.name.clone(),
            op: n.op.kind(),
            reason: what.into(),
        }
    }

    fn doc(n: &Node) -> Option<String> {
        Some(format!(
            "qatc `{}`: {}{}",
            n.name,
            n.op.kind(),
            n.op.hooks().detail(&n.io())
        ))
    }

    /// Writes `n`; returns the ONNX value that is its output.
    fn node(&mut self, n: &Node) -> Result<String, OnnxError> {
        let name = n.name.as_str();
        let doc = Self::doc(n);
        match &n.op {
            Op::Input(_) => {
                self.b.input(name);
            }
            Op::Conv(c) => {
                let x = self.input(n, 0);
                let w = self.weight(
                    n,
                    &[c.out, n.in_shape.0[0] / c.groups.max(1), c.kernel, c.kernel],
                )?;
                let bias = if c.bias {
                    let b = self.var(n, "bias")?.to_vec();
                    self.b.f32s(&format!("{name}.bias"), &[c.out], &b)
                } else {
                    String::new()
                };
                let mut ins = vec![x.as_str(), w.as_str()];
                if c.bias {
                    ins.push(&bias);
                }
                let attrs = vec![
                    attr_ints("kernel_shape", &[c.kernel, c.kernel]),
                    attr_ints("strides", &[c.stride, c.stride]),
                    attr_ints("pads", &[c.padding; 4]),
                    attr_ints("dilations", &[1, 1]),
                    attr_int("group", c.groups),
                ];
                self.b.node("Conv", name, &ins, &[name], attrs, doc);
            }
            Op::Linear(lin) => {
                let x = self.input(n, 0);
                let fin = n.in_shape.0.iter().product::<i64>();
                let w = self.weight(n, &[lin.out, fin])?;
                let bias = if lin.bias {
                    let b = self.var(n, "bias")?.to_vec();
                    self.b.f32s(&format!("{name}.bias"), &[lin.out], &b)
                } else {
                    String::new()
                };
                let mut ins = vec![x.as_str(), w.as_str()];
                if lin.bias {
                    ins.push(&bias);
                }
                // F.linear: x W^T + b.
                let attrs = vec![
                    attr_float("alpha", 1.0),
                    attr_float("beta", 1.0),
                    attr_int("transA", 0),
                    attr_int("transB", 1),
                ];
                self.b.node("Gemm", name, &ins, &[name], attrs, doc);
            }
            Op::BatchNorm(_) => {
                let x = self.input(n, 0);
                let c = n.in_shape.0[0];
                let mut ins = vec![x];
                for (param, suffix) in [
                    ("weight", "scale"),
                    ("bias", "bias"),
                    ("running_mean", "mean"),
                    ("running_var", "var"),
                ] {
                    let v = self.var(n, param)?.to_vec();
                    ins.push(self.b.f32s(&format!("{name}.{suffix}"), &[c], &v));
                }
                let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                let attrs = vec![attr_float("epsilon", BN_EPS)];
                self.b
                    .node("BatchNormalization", name, &ins, &[name], attrs, doc);
            }
            Op::Relu(_) => {
                let x = self.input(n, 0);
                self.b.node("Relu", name, &[&x], &[name], vec![], doc);
            }
            Op::Relu6(_) => {
                let x = self.input(n, 0);
                let lo = self.b.f32_scalar(&format!("{name}.min"), 0.0);
                let hi = self.b.f32_scalar(&format!("{name}.max"), 6.0);
                self.b
                    .node("Clip", name, &[&x, &lo, &hi], &[name], vec![], doc);
            }
            Op::ActQuant(q) => {
                if q.quantizer == Quantizer::None || n.out_bit >= 32 {
                    return Ok(self.input(n, 0));
                }
                self.act_quant(n, &q.quantizer)?;
            }
            Op::Add(_) => {
                let (a, b) = (self.input(n, 0), self.input(n, 1));
                self.b.node("Add", name, &[&a, &b], &[name], vec![], doc);
            }
            Op::AvgPool(p) => {
                let x = self.input(n, 0);
                let attrs = vec![
                    attr_ints("kernel_shape", &[p.kernel, p.kernel]),
                    attr_ints("strides", &[p.stride, p.stride]),
                    attr_ints("pads", &[0; 4]),
                    attr_int("ceil_mode", 0),
                ];
                self.b.node("AveragePool", name, &[&x], &[name], attrs, doc);
            }
            Op::MaxPool(p) => {
                let x = self.input(n, 0);
                // ONNX's max pooling ignores padded cells, as PyTorch's -inf.
                let attrs = vec![
                    attr_ints("kernel_shape", &[p.kernel, p.kernel]),
                    attr_ints("strides", &[p.stride, p.stride]),
                    attr_ints("pads", &[p.padding; 4]),
                    attr_int("ceil_mode", 0),
                ];
                self.b.node("MaxPool", name, &[&x], &[name], attrs, doc);
            }
            Op::AdaptiveAvgPool(p) => {
                let x = self.input(n, 0);
                let (h, w) = (n.in_shape.0[1], n.in_shape.0[2]);
                if p.size == 1 {
                    self.b
                        .node("GlobalAveragePool", name, &[&x], &[name], vec![], doc);
                } else if h % p.size == 0 && w % p.size == 0 {
                    // Equal windows that do not overlap: a plain average pool.
                    let (kh, kw) = (h / p.size, w / p.size);
                    let attrs = vec![
                        attr_ints("kernel_shape", &[kh, kw]),
                        attr_ints("strides", &[kh, kw]),
                        attr_ints("pads", &[0; 4]),
                    ];
                    self.b.node("AveragePool", name, &[&x], &[name], attrs, doc);
                } else {
                    return Err(Self::unsupported(
                        n,
                        format!(
                            "adaptive pooling of {h}x{w} to {0}x{0} has windows of unequal sizes, \
                             which no ONNX pooling op computes",
                            p.size
                        ),
                    ));
                }
            }
            Op::Flatten(_) => {
                let x = self.input(n, 0);
                self.b.node(
                    "Flatten",
                    name,
                    &[&x],
                    &[name],
                    vec![attr_int("axis", 1)],
                    doc,
                );
            }
            Op::Dropout(_) | Op::Identity(_) => return Ok(self.input(n, 0)),
            Op::Concat(_) | Op::Slice(_) | Op::Shuffle(_) | Op::Mul(_) | Op::Activation(_) => {
                return Err(Self::unsupported(
                    n,
                    "the QDQ export does not handle this op yet (it handles conv, bn, relu, \
                     relu6, act, add, the poolings, flatten and linear)",
                ))
            }
        }
        Ok(name.to_string())
    }

    /// The weight of conv / linear `n` as a value of shape `dims`: float
    /// at 32 bits, else integer codes -> DequantizeLinear.
    fn weight(&mut self, n: &Node, dims: &[i64]) -> Result<String, OnnxError> {
        let name = &n.name;
        let w = self.var(n, "weight")?.to_vec();
        let bits = n.w_bit.unwrap_or(32);
        if bits >= 32 {
            return Ok(self.b.f32s(&format!("{name}.weight"), dims, &w));
        }
        let (codes, scale) = weight_codes(&w, bits);
        let container = if bits <= 8 {
            Container::I8
        } else if self.opset >= 21 {
            Container::I16
        } else {
            // DequantizeLinear reads int32 at every opset (zero point 0).
            Container::I32
        };
        let q = self
            .b
            .ints(&format!("{name}.weight_q"), container, dims, &codes);
        let s = self.b.f32_scalar(&format!("{name}.weight_scale"), scale);
        let mut ins = vec![q, s];
        if container != Container::I32 {
            ins.push(
                self.b
                    .int_scalar(&format!("{name}.weight_zero_point"), container, 0),
            );
        }
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        let out = format!("{name}.weight");
        let doc = Some(format!(
            "DoReFa weight of `{name}` at {bits} bits: integer codes times {scale:e}"
        ));
        self.b.node(
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
    fn act_quant(&mut self, n: &Node, quantizer: &Quantizer) -> Result<(), OnnxError> {
        let name = n.name.as_str();
        let bits = n.out_bit;
        let alpha = if quantizer.learnable() {
            Some(self.ck.scalar(&format!("{name}.alpha"))?)
        } else {
            None
        };
        let form = act_quant_form(quantizer, bits, alpha).map_err(|r| Self::unsupported(n, r))?;
        if bits > 8 && self.opset < 21 {
            return Err(OnnxError::NeedsOpset21 {
                layer: name.to_string(),
                bits,
                opset: self.opset,
            });
        }
        let mut x = self.input(n, 0);
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
            let lo = self.b.f32_scalar(&format!("{name}.x_min"), form.x_clip.0);
            let hi = self.b.f32_scalar(&format!("{name}.x_max"), form.x_clip.1);
            let out = format!("{name}.x_clipped");
            self.b.node(
                "Clip",
                &format!("{name}.clip_x"),
                &[&x, &lo, &hi],
                &[&out],
                vec![],
                None,
            );
            x = out;
        }
        let scale = self.b.f32_scalar(&format!("{name}.scale"), form.q_scale);
        let zp = self.b.int_scalar(&format!("{name}.zero_point"), c, 0);
        let q = format!("{name}.q");
        self.b.node(
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
            let lo = self.b.int_scalar(&format!("{name}.q_min"), c, form.lo);
            let hi = self.b.int_scalar(&format!("{name}.q_max"), c, form.hi);
            let out = format!("{name}.q_clipped");
            self.b.node(
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
            self.b
                .f32_scalar(&format!("{name}.out_scale"), form.dq_scale)
        };
        self.b.node(
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
