//! The lowering pass both ONNX formats share: one walk over the IR's nodes
//! (topological order), each op written as the ONNX ops that compute its
//! fake-quant eval forward. What differs between the formats is how a
//! quantizer is written, which the pass asks of an [`Emit`] strategy:
//! [`crate::qdq::Qdq`] (`QuantizeLinear` / `DequantizeLinear`) and
//! [`crate::qonnx::Qonnx`] (QONNX `Quant`).
//!
//! Names: the value an IR node produces is named after the node
//! (`s1.0.conv2`); the ONNX node that produces it carries the same name;
//! helper values and initializers get the node's name and a suffix
//! (`s1.0.conv2.weight_q`, `stem.act_quant_out.scale`). Nodes that are the
//! identity in eval mode (a quantizer at 32 bits, `dropout`, `identity`)
//! write nothing: their consumers read their input's value.

use crate::builder::{attr_float, attr_int, attr_ints, value_info, Builder};
use crate::proto::{GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto};
use crate::{OnnxError, MAX_OPSET, MIN_OPSET};
use qatc::ir::{Graph, Node, Op, Quantizer};
use qatc::ops::ActivationKind;
use qatc_int::Checkpoint;

/// BN epsilon of every qatc model (the runtime's `BN_EPS`, the seed's).
const BN_EPS: f32 = 1e-5;

/// What the pass is writing into: the graph so far and its opset.
pub(crate) struct Cx {
    pub b: Builder,
    pub opset: i64,
}

/// How a format writes the quantizers; every other op is shared.
pub(crate) trait Emit {
    /// The format's name in errors and doc strings (`QDQ`, `QONNX`).
    fn format(&self) -> &'static str;
    /// The `qatc.format` metadata value (`qdq`, `qonnx`).
    fn tag(&self) -> &'static str;
    /// Opset imports of custom domains the format's nodes use.
    fn domains(&self) -> Vec<OperatorSetIdProto>;
    /// The quantized weight of conv / linear `n` at `bits` (2 to 16, or 1)
    /// as a value of shape `dims`: the DoReFa integer `codes` (in `dims`
    /// order) times `scale` ([`crate::weight_codes`]). Returns the value's
    /// name.
    fn weight(
        &self,
        cx: &mut Cx,
        n: &Node,
        codes: &[i64],
        scale: f32,
        dims: &[i64],
    ) -> Result<String, OnnxError>;
    /// Activation quantizer `n` (`quantizer` at `n.out_bit` bits, 1 to 16,
    /// clipping value `alpha` where it learns one) reading the value `x`
    /// and writing the value named after `n`.
    fn act_quant(
        &self,
        cx: &mut Cx,
        n: &Node,
        x: &str,
        quantizer: &Quantizer,
        alpha: Option<f32>,
    ) -> Result<(), OnnxError>;
}

/// `Unsupported`, naming `n`.
pub(crate) fn unsupported(n: &Node, what: impl Into<String>) -> OnnxError {
    OnnxError::Unsupported {
        layer: n.name.clone(),
        op: n.op.kind(),
        reason: what.into(),
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

struct Lowering<'a> {
    ck: &'a Checkpoint,
    emit: &'a dyn Emit,
    cx: Cx,
    /// The ONNX value each IR node's output is.
    value: Vec<String>,
}

/// The model of `g` with the trained values of `ck` at `opset`, its
/// quantizers written by `emit`.
pub(crate) fn model(
    g: &Graph,
    ck: &Checkpoint,
    opset: i64,
    emit: &dyn Emit,
) -> Result<ModelProto, OnnxError> {
    if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
        return Err(OnnxError::Opset(opset));
    }
    let mut l = Lowering {
        ck,
        emit,
        cx: Cx {
            b: Builder::default(),
            opset,
        },
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
        l.cx.b.node(
            "Identity",
            &out_node.name,
            &[&out],
            &[&out_node.name],
            vec![],
            None,
        );
        out = out_node.name.clone();
    }
    let format = emit.format();
    let graph = GraphProto {
        node: std::mem::take(&mut l.cx.b.nodes),
        name: Some(format!("{}.{}", g.model, g.profile)),
        initializer: std::mem::take(&mut l.cx.b.initializers),
        doc_string: Some(format!(
            "qatc model `{}`, profile `{}`: the fake-quant eval forward as {format} ONNX",
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
        opset_import: std::iter::once(OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        })
        .chain(emit.domains())
        .collect(),
        producer_name: Some("qatc".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: None,
        doc_string: graph.doc_string.clone(),
        graph: Some(graph),
        metadata_props: vec![
            meta("qatc.model", g.model.clone()),
            meta("qatc.profile", g.profile.clone()),
            meta("qatc.format", emit.tag().into()),
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
                self.cx.b.input(name);
            }
            Op::Conv(c) => {
                let x = self.input(n, 0);
                let w = self.weight(
                    n,
                    &[c.out, n.in_shape.0[0] / c.groups.max(1), c.kernel, c.kernel],
                )?;
                let bias = if c.bias {
                    let b = self.var(n, "bias")?.to_vec();
                    self.cx.b.f32s(&format!("{name}.bias"), &[c.out], &b)
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
                self.cx.b.node("Conv", name, &ins, &[name], attrs, doc);
            }
            Op::Linear(lin) => {
                let x = self.input(n, 0);
                let fin = n.in_shape.0.iter().product::<i64>();
                let w = self.weight(n, &[lin.out, fin])?;
                let bias = if lin.bias {
                    let b = self.var(n, "bias")?.to_vec();
                    self.cx.b.f32s(&format!("{name}.bias"), &[lin.out], &b)
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
                self.cx.b.node("Gemm", name, &ins, &[name], attrs, doc);
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
                    ins.push(self.cx.b.f32s(&format!("{name}.{suffix}"), &[c], &v));
                }
                let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                let attrs = vec![attr_float("epsilon", BN_EPS)];
                self.cx
                    .b
                    .node("BatchNormalization", name, &ins, &[name], attrs, doc);
            }
            Op::Relu(_) => {
                let x = self.input(n, 0);
                self.cx.b.node("Relu", name, &[&x], &[name], vec![], doc);
            }
            Op::Relu6(_) => {
                let x = self.input(n, 0);
                let lo = self.cx.b.f32_scalar(&format!("{name}.min"), 0.0);
                let hi = self.cx.b.f32_scalar(&format!("{name}.max"), 6.0);
                self.cx
                    .b
                    .node("Clip", name, &[&x, &lo, &hi], &[name], vec![], doc);
            }
            Op::ActQuant(q) => {
                if q.quantizer == Quantizer::None || n.out_bit >= 32 {
                    return Ok(self.input(n, 0));
                }
                let alpha = if q.quantizer.learnable() {
                    Some(self.ck.scalar(&format!("{name}.alpha"))?)
                } else {
                    None
                };
                let x = self.input(n, 0);
                self.emit
                    .act_quant(&mut self.cx, n, &x, &q.quantizer, alpha)?;
            }
            Op::Add(_) => {
                let (a, b) = (self.input(n, 0), self.input(n, 1));
                self.cx.b.node("Add", name, &[&a, &b], &[name], vec![], doc);
            }
            Op::AvgPool(p) => {
                let x = self.input(n, 0);
                let attrs = vec![
                    attr_ints("kernel_shape", &[p.kernel, p.kernel]),
                    attr_ints("strides", &[p.stride, p.stride]),
                    attr_ints("pads", &[0; 4]),
                    attr_int("ceil_mode", 0),
                ];
                self.cx
                    .b
                    .node("AveragePool", name, &[&x], &[name], attrs, doc);
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
                self.cx.b.node("MaxPool", name, &[&x], &[name], attrs, doc);
            }
            Op::AdaptiveAvgPool(p) => {
                let x = self.input(n, 0);
                let (h, w) = (n.in_shape.0[1], n.in_shape.0[2]);
                if p.size == 1 {
                    self.cx
                        .b
                        .node("GlobalAveragePool", name, &[&x], &[name], vec![], doc);
                } else if h % p.size == 0 && w % p.size == 0 {
                    // Equal windows that do not overlap: a plain average pool.
                    let (kh, kw) = (h / p.size, w / p.size);
                    let attrs = vec![
                        attr_ints("kernel_shape", &[kh, kw]),
                        attr_ints("strides", &[kh, kw]),
                        attr_ints("pads", &[0; 4]),
                    ];
                    self.cx
                        .b
                        .node("AveragePool", name, &[&x], &[name], attrs, doc);
                } else {
                    return Err(unsupported(
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
                self.cx.b.node(
                    "Flatten",
                    name,
                    &[&x],
                    &[name],
                    vec![attr_int("axis", 1)],
                    doc,
                );
            }
            Op::Dropout(_) | Op::Identity(_) => return Ok(self.input(n, 0)),
            Op::Concat(_) => {
                let ins: Vec<String> = (0..n.inputs.len()).map(|i| self.input(n, i)).collect();
                let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                let attrs = vec![attr_int("axis", 1)];
                self.cx.b.node("Concat", name, &ins, &[name], attrs, doc);
            }
            Op::Slice(s) => {
                let x = self.input(n, 0);
                let starts = self.cx.b.i64s(&format!("{name}.starts"), &[s.start]);
                let ends = self.cx.b.i64s(&format!("{name}.ends"), &[s.start + s.len]);
                let axes = self.cx.b.i64s(&format!("{name}.axes"), &[1]);
                self.cx.b.node(
                    "Slice",
                    name,
                    &[&x, &starts, &ends, &axes],
                    &[name],
                    vec![],
                    doc,
                );
            }
            Op::Shuffle(s) => self.shuffle(n, s.groups, doc),
            Op::Mul(_) => {
                // The gate, `C x 1 x 1` or the map's shape, broadcasts as
                // numpy's rules (and PyTorch's) say: `[N, C, 1, 1]` over
                // `[N, C, H, W]`.
                let (x, g) = (self.input(n, 0), self.input(n, 1));
                self.cx.b.node("Mul", name, &[&x, &g], &[name], vec![], doc);
            }
            Op::Activation(a) => self.activation(n, a.function, doc),
        }
        Ok(name.to_string())
    }

    /// Channel shuffle in `groups` (ShuffleNet's view-transpose-view):
    /// `[N, C, H, W]` -> `[N, g, C/g, H, W]` -> swap the two group
    /// dimensions -> `[N, C, H, W]`; Reshape's `0` keeps the batch size.
    fn shuffle(&mut self, n: &Node, groups: i64, doc: Option<String>) {
        let name = n.name.as_str();
        let x = self.input(n, 0);
        let [c, h, w] = [0, 1, 2].map(|i| n.in_shape.0[i]);
        let b = &mut self.cx.b;
        let split = b.i64s(
            &format!("{name}.grouped_shape"),
            &[0, groups, c / groups, h, w],
        );
        let joined = b.i64s(&format!("{name}.shape"), &[0, c, h, w]);
        let (grouped, swapped) = (format!("{name}.grouped"), format!("{name}.swapped"));
        b.node(
            "Reshape",
            &format!("{name}.group"),
            &[&x, &split],
            &[&grouped],
            vec![],
            None,
        );
        b.node(
            "Transpose",
            &format!("{name}.transpose"),
            &[&grouped],
            &[&swapped],
            vec![attr_ints("perm", &[0, 2, 1, 3, 4])],
            None,
        );
        b.node("Reshape", name, &[&swapped, &joined], &[name], vec![], doc);
    }

    /// The smooth and hard activations, as `runtime/src/ops.rs` defines
    /// them (PyTorch's modules with their defaults):
    /// - sigmoid: `Sigmoid`;
    /// - hardsigmoid `clamp(x + 3, 0, 6) / 6`: `HardSigmoid` with alpha
    ///   1/6, beta 1/2 (`max(0, min(1, x/6 + 1/2))`, the same function; in
    ///   float32 the two orders of operations may differ in the last bit);
    /// - hardswish `x * hardsigmoid(x)`: `HardSwish` from opset 14, before
    ///   it `Mul(x, HardSigmoid(x))`;
    /// - swish / SiLU `x * sigmoid(x)`: `Mul(x, Sigmoid(x))`;
    /// - gelu (erf form, PyTorch's default): `Gelu` from opset 20, before it
    ///   `(x * 0.5) * (1 + Erf(x * (1/sqrt 2)))`, PyTorch's order.
    fn activation(&mut self, n: &Node, kind: ActivationKind, doc: Option<String>) {
        let name = n.name.as_str();
        let x = self.input(n, 0);
        let opset = self.cx.opset;
        let b = &mut self.cx.b;
        let hard_sigmoid = || vec![attr_float("alpha", 1.0 / 6.0), attr_float("beta", 0.5)];
        match kind {
            ActivationKind::Sigmoid => b.node("Sigmoid", name, &[&x], &[name], vec![], doc),
            ActivationKind::HardSigmoid => {
                b.node("HardSigmoid", name, &[&x], &[name], hard_sigmoid(), doc)
            }
            ActivationKind::HardSwish if opset >= 14 => {
                b.node("HardSwish", name, &[&x], &[name], vec![], doc)
            }
            ActivationKind::HardSwish | ActivationKind::Swish => {
                let gate = format!("{name}.gate");
                let (op, attrs) = if kind == ActivationKind::Swish {
                    ("Sigmoid", vec![])
                } else {
                    ("HardSigmoid", hard_sigmoid())
                };
                b.node(op, &gate, &[&x], &[&gate], attrs, None);
                b.node("Mul", name, &[&x, &gate], &[name], vec![], doc);
            }
            ActivationKind::Gelu if opset >= 20 => {
                b.node("Gelu", name, &[&x], &[name], vec![], doc)
            }
            ActivationKind::Gelu => {
                let k = b.f32_scalar(&format!("{name}.sqrt1_2"), std::f32::consts::FRAC_1_SQRT_2);
                let half = b.f32_scalar(&format!("{name}.half"), 0.5);
                let one = b.f32_scalar(&format!("{name}.one"), 1.0);
                let v = |s: &str| format!("{name}.{s}");
                b.node("Mul", &v("scale"), &[&x, &k], &[&v("scaled")], vec![], None);
                b.node(
                    "Erf",
                    &v("erf"),
                    &[&v("scaled")],
                    &[&v("erf_out")],
                    vec![],
                    None,
                );
                b.node(
                    "Add",
                    &v("add_one"),
                    &[&v("erf_out"), &one],
                    &[&v("erf_plus_one")],
                    vec![],
                    None,
                );
                b.node(
                    "Mul",
                    &v("halve"),
                    &[&x, &half],
                    &[&v("half_x")],
                    vec![],
                    None,
                );
                b.node(
                    "Mul",
                    name,
                    &[&v("half_x"), &v("erf_plus_one")],
                    &[name],
                    vec![],
                    doc,
                );
            }
        }
    }

    /// The weight of conv / linear `n` as a value of shape `dims`: float
    /// at 32 bits, else the seed's DoReFa codes written by the format.
    fn weight(&mut self, n: &Node, dims: &[i64]) -> Result<String, OnnxError> {
        let w = self.var(n, "weight")?.to_vec();
        let bits = n.w_bit.unwrap_or(32);
        if bits >= 32 {
            return Ok(self.cx.b.f32s(&format!("{}.weight", n.name), dims, &w));
        }
        let (codes, scale) = crate::weight_codes(&w, bits);
        self.emit.weight(&mut self.cx, n, &codes, scale, dims)
    }
}
