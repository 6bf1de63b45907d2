//! The integer plan as a deployer's int8 ONNX graph
//! (`qatc export --format onnx-int8`): the operators ONNX Runtime runs
//! with its int8 kernels (`QLinearConv`, `com.microsoft.QLinearAdd`,
//! `com.microsoft.QLinearGlobalAveragePool` / `QLinearAveragePool`,
//! `com.microsoft.MatMulIntegerToFloat`), written directly (the QOperator
//! form), so no fusion pass has to recognise them.
//!
//! ```text
//! IntPlan (qatc_int::build) --write_int8_onnx--> ONNX bytes (opset 13 + com.microsoft 1)
//! ```
//!
//! It is the reference that the integer engine's speed is measured against
//! (`qatc int bench --onnxruntime`), not an exact format: where the engine
//! requantizes with a fixed-point multiplier and a shift, ONNX Runtime
//! multiplies the int32 sum by a float32 scale and rounds half to even, so
//! outputs differ by a step here and there, and the differences travel
//! (docs/export.md measures them). `--format onnx-int` is the exact one.
//!
//! Input: an [`IntPlan`]; output: a serialized `onnx.ModelProto`, input
//! `input` (`[N, C, H, W]` float32, the normalised image), output `logits`
//! (`[N, classes]` float32). How each plan layer is written:
//!
//! - **Tensors**: an activation of the plan (`q / scale`, `q` in
//!   `[lo, hi]`) that fits 8 bits is `uint8` on the plan's own grid: ONNX
//!   scale `1 / scale`, zero point 0 (`lo >= 0`) or 128 (signed), so the
//!   bytes are the plan's integers (plus 128). Where `[lo, hi]` is narrower
//!   than the container (a 7-bit clamp `[0, 127]` in `uint8`), an integer
//!   `Clip` keeps the clamp after the op that writes it (ONNX Runtime runs
//!   it as its own pass: the `Clip` rows of the profile). A **wider**
//!   activation (16-bit stem or head quantizers, a BN materialised in
//!   front of a conv at 9 or 10 bits, the seed's 24-bit pre-pool sum) has
//!   no int8 form with the plan's grid: it gets an 8-bit grid over its
//!   range (`[0, hi]` in 255 steps, `[-m, m]` in 127 steps about 128), as a
//!   deployer's int8 export would; where it reaches a requantization only
//!   through average pools, the range is the one that requantization does
//!   not clamp away. This is the export's main difference from the engine.
//! - **The float stem** (a conv of the float input): a float `Conv` whose
//!   weights and bias fold the plan's integer weights, the conv's float
//!   scale, the BN and the requantization multiplier, then
//!   `QuantizeLinear` to the output's grid. The first conv stays float,
//!   as deployers keep a first layer of 3 input channels; a quantized
//!   input (`QuantizeInput`) is a float `Clip` and `QuantizeLinear`.
//! - **conv + requantization** (BN folded): `QLinearConv` with the plan's
//!   integer weights as `int8` ([`Int8Weights`]: or `uint8` at zero point
//!   128) (weights wider than 8 bits re-quantized per
//!   output channel to `[-127, 127]`), one weight scale per output channel
//!   `|m_c| * s_in / s_out` (`m_c` the requantization's real multiplier,
//!   `s` the plan scales; a negative BN scale flips the channel's weight
//!   signs), the requantization's bias as the int32 bias
//!   `round(bias_c / (m_c * s_in * x_scale))`, groups and depthwise as
//!   they are.
//! - **residual add** (a requantization of a conv sum and an activation):
//!   the conv as above into an intermediate 8-bit tensor, then
//!   `QLinearAdd` with the activation, whose scale carries the add's
//!   rescaling (one multiplier per tensor). The intermediate's grid is
//!   the output's container over the range of conv values that can still
//!   change the clamped output, `[lo - m hi_b, hi - m lo_b]` (in output
//!   steps, `m` the activation's multiplier, `[lo_b, hi_b]` its range),
//!   so it adds a rounding of `(1 + m)` output steps or so, where the
//!   engine rounds once: deployers' int8 graphs (ONNX Runtime's QDQ
//!   fusion included) quantize a conv's output before an add too.
//! - **a requantization of an activation alone** (a BN materialised in
//!   front of a conv, the fc's input after pooling): `DequantizeLinear`,
//!   a float `Mul` (and `Add` for a bias), `QuantizeLinear`.
//! - **pooling**: global average (a window the size of the map, adaptive
//!   to 1x1) `QLinearGlobalAveragePool`, other averages
//!   `QLinearAveragePool`, max pooling `MaxPool` on the 8-bit values.
//! - **channels** (split, shuffle): `Gather`; **concat**: `Concat` (one
//!   grid on all inputs).
//! - **logits** (the fc): `Flatten` and `MatMulIntegerToFloat` (`int8`
//!   weights, per-class scale, float bias): float logits straight from the
//!   int32 sums, as the engine dequantizes once.
//!
//! Gating multiplies, hardswish and lookup tables have no int8 operator in
//! ONNX Runtime: an [`Int8OnnxError`] naming the layer, as is anything
//! else the mapping above does not cover.

use crate::builder::{attr_int, attr_ints, value_info};
use crate::int::graph::{Emitter, UINT8};
use crate::proto::ModelProto;
use prost::Message;
use qatc_int::plan::{
    Channels, ConcatLayer, ConvInput, ConvLayer, IntPlan, Layer, Pool, PoolKind, QuantizeInput,
    Requant, RequantTerm, TensorKind,
};
use std::collections::HashMap;

/// The default-domain opset written.
pub const INT8_OPSET: i64 = 13;
/// Microsoft's contrib domain of ONNX Runtime (its quantized operators).
pub const MS_DOMAIN: &str = "com.microsoft";
const INT8: i64 = 3;
const INT32: i64 = 6;
const INPUT: &str = "input";
const LOGITS: &str = "logits";

/// What the int8 ONNX export can reject.
#[derive(Debug, thiserror::Error)]
pub enum Int8OnnxError {
    /// A layer of the plan with no form in ONNX Runtime's int8 operators.
    #[error("layer `{layer}`: no int8 ONNX form (`--format onnx-int8`): {reason}")]
    Unsupported { layer: String, reason: String },
}

fn unsupported(layer: &str, reason: impl Into<String>) -> Int8OnnxError {
    Int8OnnxError::Unsupported {
        layer: layer.to_string(),
        reason: reason.into(),
    }
}

/// The 8-bit grid of a tensor: real value `(q - zero_point) * step`, `q`
/// in `uint8` (ONNX Runtime's fast path on x86 is uint8 activations with
/// int8 weights, and `QLinearConv` / `QLinearAdd` take one activation
/// type: a signed plan tensor is `uint8` with zero point 128).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub step: f64,
    pub zero_point: i64,
    /// The plan's own integers (`step = 1 / scale`): `q = plan + zero_point`.
    pub exact: bool,
}

impl Grid {
    fn range(&self) -> (i64, i64) {
        (0, 255)
    }
    fn ty(&self) -> i64 {
        UINT8
    }
}

/// How the weights are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Int8Weights {
    /// `int8`, zero point 0 (U8S8): ONNX Runtime's fastest kernels on
    /// x86, and what its quantization tool writes. Without VNNI (AVX2
    /// alone) its GEMM multiplies with `vpmaddubsw`, which saturates the
    /// int16 sum of two `uint8 x int8` products: where activations reach
    /// the top of `uint8` (a signed tensor at zero point 128) and weights
    /// are large, sums are clipped (ONNX Runtime's quantization docs say
    /// so; depthwise convs take another kernel).
    #[default]
    S8,
    /// `uint8`, zero point 128 (U8U8): the plan's weights exactly, with no
    /// saturation on any x86, on ONNX Runtime's slower U8U8 kernels.
    U8,
}

/// The int8 model of `plan`, serialized (an `.onnx` file's bytes).
pub fn write_int8_onnx(plan: &IntPlan, weights: Int8Weights) -> Result<Vec<u8>, Int8OnnxError> {
    Ok(int8_onnx_model(plan, weights)?.encode_to_vec())
}

/// [`write_int8_onnx`]'s model as a message.
pub fn int8_onnx_model(plan: &IntPlan, weights: Int8Weights) -> Result<ModelProto, Int8OnnxError> {
    let mut convs = HashMap::new();
    for layer in &plan.layers {
        if let Layer::Conv(c) = layer {
            convs.insert(c.output, c);
        }
    }
    let mut l = Lower {
        plan,
        e: Emitter::new(),
        t: vec![None; plan.tensors.len()],
        grids: grids(plan),
        convs,
        weights,
    };
    l.e.b.input(INPUT);
    for layer in &plan.layers {
        l.layer(layer)?;
    }
    l.logits()?;
    let [c, h, w] = plan.input_shape.map(|d| Some(d as i64));
    let graph = crate::proto::GraphProto {
        node: std::mem::take(&mut l.e.b.nodes),
        name: Some(format!("{}.{}.int8", plan.model, plan.profile)),
        initializer: std::mem::take(&mut l.e.b.initializers),
        doc_string: Some(format!(
            "qatc model `{}`, profile `{}`: the integer plan as ONNX Runtime's int8 operators \
             (QLinearConv, QLinearAdd, ...), BN folded; not bit exact with the engine",
            plan.model, plan.profile
        )),
        input: vec![value_info(INPUT, &[None, c, h, w])],
        output: vec![value_info(
            LOGITS,
            &[None, Some(plan.output.classes as i64)],
        )],
        value_info: vec![],
    };
    Ok(model_proto(plan, graph))
}

/// One layer of [`int8_onnx_model`] as a model of its own, for checking
/// it against the engine with the engine's inputs (teacher forcing): the
/// graph inputs are the 8-bit tensors the layer reads, `x<t>` for plan
/// tensor `t` on its grid (and `input`, float32, for the float stem or a
/// quantized input), the output `y` its 8-bit output.
pub struct LayerModel {
    pub model: ModelProto,
    /// `(tensor, grid)` of each 8-bit graph input, in order.
    pub inputs: Vec<(usize, Grid)>,
    /// Whether `input` (the float image) is read.
    pub float_input: bool,
    pub output: (usize, Grid),
}

/// [`LayerModel`] of `plan.layers[index]`; `None` for a conv (written with
/// the requantization that reads its sums) and for the layers the logits
/// read.
pub fn int8_layer_model(
    plan: &IntPlan,
    index: usize,
    weights: Int8Weights,
) -> Result<Option<LayerModel>, Int8OnnxError> {
    let Some(layer) = plan.layers.get(index) else {
        return Ok(None);
    };
    let mut convs = HashMap::new();
    for layer in &plan.layers {
        if let Layer::Conv(c) = layer {
            convs.insert(c.output, c);
        }
    }
    let mut reads: Vec<usize> = Vec::new();
    let mut float_input = false;
    let output = match layer {
        Layer::Conv(_) | Layer::Mul(_) | Layer::HardSwish(_) | Layer::Lut(_) => return Ok(None),
        Layer::QuantizeInput(q) => {
            float_input = true;
            q.output
        }
        Layer::Requant(r) => {
            for term in &r.terms {
                match (plan.tensors[term.src].kind.clone(), convs.get(&term.src)) {
                    (TensorKind::Act { .. }, _) => reads.push(term.src),
                    (TensorKind::Acc { .. }, Some(c)) => match c.input {
                        ConvInput::Float => float_input = true,
                        ConvInput::Tensor(x) => reads.push(x),
                    },
                    (TensorKind::Acc { .. }, None) => return Ok(None),
                }
            }
            r.output
        }
        Layer::Pool(p) => {
            reads.push(p.input);
            p.output
        }
        Layer::Channels(c) => {
            reads.push(c.input);
            c.output
        }
        Layer::Concat(c) => {
            reads.extend(&c.inputs);
            c.output
        }
    };
    reads.sort_unstable();
    reads.dedup();
    let grids = grids(plan);
    let mut l = Lower {
        plan,
        e: Emitter::new(),
        t: vec![None; plan.tensors.len()],
        grids,
        convs,
        weights,
    };
    let mut inputs = Vec::new();
    let mut input_info = Vec::new();
    if float_input {
        l.e.b.input(INPUT);
        let [c, h, w] = plan.input_shape.map(|d| Some(d as i64));
        input_info.push(value_info(INPUT, &[None, c, h, w]));
    }
    for &t in &reads {
        let g = l.grid(layer.name(), t)?;
        let name = format!("x{t}");
        l.e.b.input(&name);
        let [c, h, w] = plan.tensors[t].shape.map(|d| Some(d as i64));
        input_info.push(typed_value_info(&name, &[None, c, h, w], g.ty()));
        l.t[t] = Some(name);
        inputs.push((t, g));
    }
    l.layer(layer)?;
    let go = l.grid(layer.name(), output)?;
    let y = l.t[output]
        .clone()
        .ok_or_else(|| unsupported(layer.name(), "no output written"))?;
    l.e.op_named("Identity", "y", &[&y], vec![]);
    let [c, h, w] = plan.tensors[output].shape.map(|d| Some(d as i64));
    let graph = crate::proto::GraphProto {
        node: std::mem::take(&mut l.e.b.nodes),
        name: Some(format!("{}.{}.int8.layer{index}", plan.model, plan.profile)),
        initializer: std::mem::take(&mut l.e.b.initializers),
        doc_string: None,
        input: input_info,
        output: vec![typed_value_info("y", &[None, c, h, w], go.ty())],
        value_info: vec![],
    };
    Ok(Some(LayerModel {
        model: model_proto(plan, graph),
        inputs,
        float_input,
        output: (output, go),
    }))
}

/// [`crate::builder::value_info`] of another element type.
fn typed_value_info(name: &str, dims: &[Option<i64>], ty: i64) -> crate::proto::ValueInfoProto {
    let mut v = value_info(name, dims);
    if let Some(crate::proto::type_proto::Value::TensorType(t)) =
        v.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.elem_type = Some(ty as i32);
    }
    v
}

fn model_proto(plan: &IntPlan, graph: crate::proto::GraphProto) -> ModelProto {
    crate::int::plan_model(plan, graph, &[("", INT8_OPSET), (MS_DOMAIN, 1)], "int8")
}

/// The 8-bit grid of every activation tensor of `plan` (`None` for the
/// accumulators, which the export never holds): see the module docs.
pub fn grids(plan: &IntPlan) -> Vec<Option<Grid>> {
    (0..plan.tensors.len())
        .map(|t| match plan.tensors[t].kind {
            TensorKind::Acc { .. } => None,
            TensorKind::Act { scale, lo, hi, .. } => Some(if lo >= 0 && hi <= 255 {
                Grid {
                    step: 1.0 / scale,
                    zero_point: 0,
                    exact: true,
                }
            } else if lo >= -128 && hi <= 127 {
                Grid {
                    step: 1.0 / scale,
                    zero_point: 128,
                    exact: true,
                }
            } else {
                let (rlo, rhi) = useful_range(plan, t, 0);
                if rlo >= 0.0 {
                    Grid {
                        step: rhi.max(1.0) / 255.0 / scale,
                        zero_point: 0,
                        exact: false,
                    }
                } else {
                    Grid {
                        step: rlo.abs().max(rhi.abs()).max(1.0) / 127.0 / scale,
                        zero_point: 128,
                        exact: false,
                    }
                }
            }),
        })
        .collect()
}

/// The range of plan integers of activation `t` that can still change the
/// model's output: `[lo, hi]`, narrowed where every reader is a
/// requantization of `t` alone (by its clamp, mapped back through its
/// one multiplier) or an average pool whose output is narrowed so.
fn useful_range(plan: &IntPlan, t: usize, depth: usize) -> (f64, f64) {
    let (lo, hi) = match plan.tensors[t].kind {
        TensorKind::Act { lo, hi, .. } => (lo as f64, hi as f64),
        TensorKind::Acc { .. } => return (f64::NEG_INFINITY, f64::INFINITY),
    };
    let mut range: Option<(f64, f64)> = None;
    for layer in &plan.layers {
        let r = match layer {
            Layer::Requant(r) if r.terms.iter().any(|term| term.src == t) => {
                match (&r.terms[..], per_tensor(&r.terms[0])) {
                    ([_], Some(m)) if m > 0.0 => {
                        let bmin = r.bias_real.iter().copied().fold(f64::INFINITY, f64::min);
                        let bmax = r
                            .bias_real
                            .iter()
                            .copied()
                            .fold(f64::NEG_INFINITY, f64::max);
                        ((r.lo as f64 - bmax) / m, (r.hi as f64 - bmin) / m)
                    }
                    _ => return (lo, hi),
                }
            }
            Layer::Pool(p) if p.input == t => {
                let same = plan.tensors[p.output].kind == plan.tensors[t].kind;
                match p.kind {
                    PoolKind::Avg { .. } | PoolKind::Adaptive { .. } if same && depth < 4 => {
                        useful_range(plan, p.output, depth + 1)
                    }
                    _ => return (lo, hi),
                }
            }
            Layer::Conv(c) if c.input == ConvInput::Tensor(t) => return (lo, hi),
            Layer::Channels(c) if c.input == t => return (lo, hi),
            Layer::Concat(c) if c.inputs.contains(&t) => return (lo, hi),
            Layer::Mul(m) if m.input == t || m.gate == t => return (lo, hi),
            Layer::HardSwish(h) if h.input == t => return (lo, hi),
            Layer::Lut(l) if l.input == t => return (lo, hi),
            _ => continue,
        };
        range = Some(match range {
            None => r,
            Some((a, b)) => (a.min(r.0), b.max(r.1)),
        });
    }
    if plan.output.terms.iter().any(|(s, _)| *s == t) {
        return (lo, hi);
    }
    match range {
        Some((a, b)) => (a.max(lo), b.min(hi)),
        None => (lo, hi),
    }
}

/// The multiplier of a term when it is one for all channels.
fn per_tensor(term: &RequantTerm) -> Option<f64> {
    let m = *term.real.first()?;
    term.real
        .iter()
        .all(|&r| (r - m).abs() <= 1e-12 * m.abs())
        .then_some(m)
}

fn scale_of(plan: &IntPlan, t: usize) -> f64 {
    match plan.tensors[t].kind {
        TensorKind::Act { scale, .. } | TensorKind::Acc { scale } => scale,
    }
}

/// Integer weights as `int8` per output channel: `(w8, g)` with
/// `w ~ w8 * g[c]`; `g = 1` where a channel already fits `[-127, 127]`.
fn weights_i8(w: &[i32], cout: usize) -> (Vec<i64>, Vec<f64>) {
    let fan = w.len() / cout.max(1);
    let mut w8 = Vec::with_capacity(w.len());
    let mut g = Vec::with_capacity(cout);
    for row in w.chunks(fan.max(1)) {
        let m = row.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as f64;
        let gc = if m <= 127.0 { 1.0 } else { m / 127.0 };
        w8.extend(row.iter().map(|&v| (v as f64 / gc).round() as i64));
        g.push(gc);
    }
    (w8, g)
}

struct Lower<'p> {
    plan: &'p IntPlan,
    e: Emitter,
    /// The ONNX value holding each plan tensor (8-bit), once computed.
    t: Vec<Option<String>>,
    grids: Vec<Option<Grid>>,
    /// The conv layer computing each accumulator tensor.
    convs: HashMap<usize, &'p ConvLayer>,
    weights: Int8Weights,
}

impl Lower<'_> {
    fn grid(&self, layer: &str, t: usize) -> Result<Grid, Int8OnnxError> {
        self.grids[t].ok_or_else(|| {
            unsupported(
                layer,
                format!(
                    "it reads the accumulator `{}` other than through a requantization",
                    self.plan.tensors[t].name
                ),
            )
        })
    }

    fn get(&self, layer: &str, t: usize) -> Result<(String, Grid), Int8OnnxError> {
        let v = self.t[t].clone().ok_or_else(|| {
            unsupported(
                layer,
                format!(
                    "tensor `{}` is read before it is computed",
                    self.plan.tensors[t].name
                ),
            )
        })?;
        Ok((v, self.grid(layer, t)?))
    }

    fn scale(&mut self, base: &str, v: f64) -> String {
        self.e.f32s(&format!("{base}.scale"), &[], &[v as f32])
    }

    fn zero_point(&mut self, base: &str, g: Grid) -> String {
        let raw = vec![g.zero_point as u8];
        self.e.init(&format!("{base}.zero_point"), &[], g.ty(), raw)
    }

    /// Weights in `[-127, 127]` as [`Int8Weights`] says, and their zero
    /// points (`n` of them): `(weights, zero points)`.
    fn weight_tensor(&mut self, base: &str, dims: &[i64], w: &[i64], n: usize) -> (String, String) {
        let (ty, raw, zp) = match self.weights {
            Int8Weights::S8 => (INT8, w.iter().map(|&v| v as i8 as u8).collect(), 0u8),
            Int8Weights::U8 => (UINT8, w.iter().map(|&v| (v + 128) as u8).collect(), 128u8),
        };
        let wv = self.e.init(&format!("{base}.weight_q"), dims, ty, raw);
        let zv = self.e.init(
            &format!("{base}.weight_zero_point"),
            &[n as i64],
            ty,
            vec![zp; n],
        );
        (wv, zv)
    }

    fn ms_op(
        &mut self,
        op: &str,
        base: &str,
        inputs: &[&str],
        attrs: Vec<crate::proto::AttributeProto>,
    ) -> String {
        let out = self.e.fresh(&format!("{base}.{}", op.to_lowercase()));
        self.e
            .b
            .node_in(MS_DOMAIN, op, &out, inputs, &[&out], attrs, None);
        out
    }

    /// Stores `v` as tensor `t`, with the plan's clamp where the grid is
    /// the plan's own and the clamp is narrower than the container.
    fn set(&mut self, name: &str, t: usize, v: String) -> Result<(), Int8OnnxError> {
        let g = self.grid(name, t)?;
        let v = match self.plan.tensors[t].kind {
            TensorKind::Act { lo, hi, .. }
                if g.exact && (lo + g.zero_point, hi + g.zero_point) != g.range() =>
            {
                let (lo, hi) = ((lo + g.zero_point) as u8, (hi + g.zero_point) as u8);
                let lo8 = self.e.init(&format!("{name}.lo"), &[], g.ty(), vec![lo]);
                let hi8 = self.e.init(&format!("{name}.hi"), &[], g.ty(), vec![hi]);
                self.e.op("Clip", name, &[&v, &lo8, &hi8], vec![])
            }
            _ => v,
        };
        self.t[t] = Some(v);
        Ok(())
    }

    fn layer(&mut self, layer: &Layer) -> Result<(), Int8OnnxError> {
        match layer {
            // Written where a requantization or the logits read them.
            Layer::Conv(_) => Ok(()),
            Layer::QuantizeInput(q) => self.quantize_input(q),
            Layer::Requant(r) => self.requant(r),
            Layer::Pool(p) => self.pool(p),
            Layer::Channels(c) => self.channels(c),
            Layer::Concat(c) => self.concat(c),
            Layer::Mul(_) | Layer::HardSwish(_) | Layer::Lut(_) => Err(unsupported(
                layer.name(),
                "ONNX Runtime has no int8 operator for a gating multiply, hardswish or a lookup \
                 table",
            )),
        }
    }

    fn quantize_input(&mut self, q: &QuantizeInput) -> Result<(), Int8OnnxError> {
        let n = &q.name;
        let g = self.grid(n, q.output)?;
        if q.pre <= 0.0 || q.gain <= 0.0 {
            return Err(unsupported(n, "a non-positive input scale"));
        }
        let lo = self
            .e
            .f32s(&format!("{n}.clip_lo"), &[], &[q.clip_lo / q.pre]);
        let hi = self
            .e
            .f32s(&format!("{n}.clip_hi"), &[], &[q.clip_hi / q.pre]);
        let x = self.e.op("Clip", n, &[INPUT, &lo, &hi], vec![]);
        // q_plan = x * pre * gain; the 8-bit value q_plan / (step * scale).
        let s_out = scale_of(self.plan, q.output);
        let sc = self.scale(n, g.step * s_out / (q.pre as f64 * q.gain as f64));
        let zp = self.zero_point(n, g);
        let y = self.e.op("QuantizeLinear", n, &[&x, &sc, &zp], vec![]);
        self.set(n, q.output, y)
    }

    fn requant(&mut self, r: &Requant) -> Result<(), Int8OnnxError> {
        let n = &r.name;
        let go = self.grid(n, r.output)?;
        let acc: Vec<&RequantTerm> = r
            .terms
            .iter()
            .filter(|t| self.grids[t.src].is_none())
            .collect();
        let act: Vec<&RequantTerm> = r
            .terms
            .iter()
            .filter(|t| self.grids[t.src].is_some())
            .collect();
        let y = match (&acc[..], &act[..]) {
            ([a], []) => self.conv_term(r, a, go)?,
            ([a], [b]) => self.add(r, a, b, go)?,
            ([], [b]) => self.rescale(r, b, go)?,
            _ => {
                return Err(unsupported(
                    n,
                    format!(
                        "a requantization of {} conv sum(s) and {} activation(s); this export \
                         writes one conv, one conv and one activation (a residual add), or one \
                         activation",
                        acc.len(),
                        act.len()
                    ),
                ))
            }
        };
        self.set(n, r.output, y)
    }

    /// The conv computing term `a` of `r`, its output the real value
    /// `(m_c * acc + bias_c) / s_out` on grid `gy`.
    fn conv_term(
        &mut self,
        r: &Requant,
        a: &RequantTerm,
        gy: Grid,
    ) -> Result<String, Int8OnnxError> {
        let n = &r.name;
        let c = *self.convs.get(&a.src).ok_or_else(|| {
            unsupported(
                n,
                format!("no conv computes `{}`", self.plan.tensors[a.src].name),
            )
        })?;
        let s_out = scale_of(self.plan, r.output);
        let k = c.kernel as i64;
        let (s, p) = (c.stride as i64, c.padding as i64);
        let attrs = || {
            vec![
                attr_int("group", c.groups as i64),
                attr_ints("kernel_shape", &[k, k]),
                attr_ints("strides", &[s, s]),
                attr_ints("pads", &[p, p, p, p]),
            ]
        };
        let wshape = [c.cout as i64, (c.cin / c.groups) as i64, k, k];
        let fan = c.weights.len() / c.cout.max(1);
        match c.input {
            ConvInput::Float => {
                let mut w = Vec::with_capacity(c.weights.len());
                for (o, row) in c.weights.chunks(fan.max(1)).enumerate() {
                    let f = a.real[o] * c.float_scale / s_out;
                    w.extend(row.iter().map(|&v| (v as f64 * f) as f32));
                }
                let b: Vec<f32> = r.bias_real.iter().map(|&b| (b / s_out) as f32).collect();
                let wv = self.e.f32s(&format!("{}.weight", c.name), &wshape, &w);
                let bv = self
                    .e
                    .f32s(&format!("{}.bias", c.name), &[c.cout as i64], &b);
                let y = self.e.op("Conv", &c.name, &[INPUT, &wv, &bv], attrs());
                let sc = self.scale(n, gy.step);
                let zp = self.zero_point(n, gy);
                Ok(self.e.op("QuantizeLinear", n, &[&y, &sc, &zp], vec![]))
            }
            ConvInput::Tensor(x) => {
                let (xv, gx) = self.get(&c.name, x)?;
                let s_in = scale_of(self.plan, x);
                let (mut w8, g) = weights_i8(&c.weights, c.cout);
                let mut ws = Vec::with_capacity(c.cout);
                let mut bias = Vec::with_capacity(c.cout);
                for o in 0..c.cout {
                    let m = a.real[o];
                    let row = &mut w8[o * fan..(o + 1) * fan];
                    let wsc = if m == 0.0 {
                        row.iter_mut().for_each(|v| *v = 0);
                        1.0
                    } else {
                        if m < 0.0 {
                            row.iter_mut().for_each(|v| *v = -*v);
                        }
                        m.abs() * s_in * g[o] / s_out
                    };
                    // y = x_scale * w_scale * (sum + B) in real units.
                    let b = (r.bias_real[o] / s_out / (gx.step * wsc)).round();
                    if b.abs() >= 2f64.powi(31) {
                        return Err(unsupported(
                            n,
                            format!("channel {o}: its bias does not fit the int32 bias"),
                        ));
                    }
                    ws.push(wsc as f32);
                    bias.push(b as i32);
                }
                let (wv, wzp) = self.weight_tensor(&c.name, &wshape, &w8, c.cout);
                let wsv = self
                    .e
                    .f32s(&format!("{}.weight_scale", c.name), &[c.cout as i64], &ws);
                let braw: Vec<u8> = bias.iter().flat_map(|b| b.to_le_bytes()).collect();
                let bv = self.e.init(
                    &format!("{}.bias_i32", c.name),
                    &[c.cout as i64],
                    INT32,
                    braw,
                );
                let xs = self.scale(&format!("{}.x", c.name), gx.step);
                let xz = self.zero_point(&format!("{}.x", c.name), gx);
                let ys = self.scale(n, gy.step);
                let yz = self.zero_point(n, gy);
                Ok(self.e.op(
                    "QLinearConv",
                    &c.name,
                    &[&xv, &xs, &xz, &wv, &wsv, &wzp, &ys, &yz, &bv],
                    attrs(),
                ))
            }
        }
    }

    /// A residual add: the conv of `a` into an intermediate 8-bit tensor,
    /// `QLinearAdd` with activation `b` (its multiplier in its scale).
    fn add(
        &mut self,
        r: &Requant,
        a: &RequantTerm,
        b: &RequantTerm,
        go: Grid,
    ) -> Result<String, Int8OnnxError> {
        let n = &r.name;
        let m = per_tensor(b)
            .filter(|&m| m > 0.0)
            .ok_or_else(|| unsupported(n, "the added activation's multiplier is not one positive number for all channels (QLinearAdd has one scale per input)"))?;
        let (bv, gb) = self.get(n, b.src)?;
        let s_out = scale_of(self.plan, r.output);
        let s_b = scale_of(self.plan, b.src);
        let (blo, bhi) = match self.plan.tensors[b.src].kind {
            TensorKind::Act { lo, hi, .. } => (lo as f64, hi as f64),
            TensorKind::Acc { .. } => return Err(unsupported(n, "an accumulator added as is")),
        };
        // The output's representable range, in real units; what the conv
        // term may take and still matter.
        let (cmin, cmax) = go.range();
        let olo = (cmin - go.zero_point) as f64 * go.step;
        let ohi = (cmax - go.zero_point) as f64 * go.step;
        let (ilo, ihi) = (olo - m * bhi / s_out, ohi - m * blo / s_out);
        let step = if ihi > ilo {
            (ihi - ilo) / 255.0
        } else {
            go.step
        };
        let zero_point = ((cmin as f64) - ilo / step)
            .round()
            .clamp(cmin as f64, cmax as f64) as i64;
        let gi = Grid {
            step,
            zero_point,
            exact: false,
        };
        let av = self.conv_term(r, a, gi)?;
        let a_s = self.scale(&format!("{n}.a"), gi.step);
        let a_z = self.zero_point(&format!("{n}.a"), gi);
        let b_s = self.scale(&format!("{n}.b"), gb.step * m * s_b / s_out);
        let b_z = self.zero_point(&format!("{n}.b"), gb);
        let c_s = self.scale(n, go.step);
        let c_z = self.zero_point(n, go);
        Ok(self.ms_op(
            "QLinearAdd",
            n,
            &[&av, &a_s, &a_z, &bv, &b_s, &b_z, &c_s, &c_z],
            vec![],
        ))
    }

    /// A requantization of one activation: dequantized, scaled (and the
    /// bias added) in float, quantized to the output's grid.
    fn rescale(&mut self, r: &Requant, b: &RequantTerm, go: Grid) -> Result<String, Int8OnnxError> {
        let n = &r.name;
        let (bv, gb) = self.get(n, b.src)?;
        let s_out = scale_of(self.plan, r.output);
        let s_b = scale_of(self.plan, b.src);
        let cch = self.plan.tensors[r.output].shape[0] as i64;
        let bs = self.scale(&format!("{n}.x"), gb.step);
        let bz = self.zero_point(&format!("{n}.x"), gb);
        let x = self.e.op("DequantizeLinear", n, &[&bv, &bs, &bz], vec![]);
        let k: Vec<f32> = b.real.iter().map(|&m| (m * s_b / s_out) as f32).collect();
        let kv = self.e.f32s(&format!("{n}.mult"), &[1, cch, 1, 1], &k);
        let mut y = self.e.bin("Mul", n, &x, &kv);
        if r.bias_real.iter().any(|&v| v != 0.0) {
            let bias: Vec<f32> = r.bias_real.iter().map(|&v| (v / s_out) as f32).collect();
            let bb = self.e.f32s(&format!("{n}.bias"), &[1, cch, 1, 1], &bias);
            y = self.e.bin("Add", n, &y, &bb);
        }
        let sc = self.scale(n, go.step);
        let zp = self.zero_point(n, go);
        Ok(self.e.op("QuantizeLinear", n, &[&y, &sc, &zp], vec![]))
    }

    fn pool(&mut self, p: &Pool) -> Result<(), Int8OnnxError> {
        let n = &p.name;
        let (xv, gx) = self.get(n, p.input)?;
        let gy = self.grid(n, p.output)?;
        let [_, ih, iw] = self.plan.tensors[p.input].shape;
        let global = match p.kind {
            PoolKind::Avg { kernel, .. } => kernel == ih && kernel == iw,
            PoolKind::Adaptive { size } => size == 1,
            PoolKind::Max { .. } => false,
        };
        let xs = self.scale(&format!("{n}.x"), gx.step);
        let xz = self.zero_point(&format!("{n}.x"), gx);
        let ys = self.scale(n, gy.step);
        let yz = self.zero_point(n, gy);
        let y = match p.kind {
            _ if global => self.ms_op(
                "QLinearGlobalAveragePool",
                n,
                &[&xv, &xs, &xz, &ys, &yz],
                vec![attr_int("channels_last", 0)],
            ),
            PoolKind::Avg { kernel, stride } => {
                let (k, s) = (kernel as i64, stride as i64);
                self.ms_op(
                    "QLinearAveragePool",
                    n,
                    &[&xv, &xs, &xz, &ys, &yz],
                    vec![
                        attr_ints("kernel_shape", &[k, k]),
                        attr_ints("strides", &[s, s]),
                        attr_ints("pads", &[0, 0, 0, 0]),
                    ],
                )
            }
            PoolKind::Max {
                kernel,
                stride,
                padding,
            } => {
                if gx != gy {
                    return Err(unsupported(
                        n,
                        "a max pool whose output grid is not its input's",
                    ));
                }
                let (k, s, q) = (kernel as i64, stride as i64, padding as i64);
                self.e.op(
                    "MaxPool",
                    n,
                    &[&xv],
                    vec![
                        attr_ints("kernel_shape", &[k, k]),
                        attr_ints("strides", &[s, s]),
                        attr_ints("pads", &[q, q, q, q]),
                    ],
                )
            }
            PoolKind::Adaptive { size } => {
                return Err(unsupported(
                    n,
                    format!("adaptive average pooling to {size}x{size} (only to 1x1)"),
                ))
            }
        };
        self.set(n, p.output, y)
    }

    fn channels(&mut self, c: &Channels) -> Result<(), Int8OnnxError> {
        let (xv, gx) = self.get(&c.name, c.input)?;
        if self.grid(&c.name, c.output)? != gx {
            return Err(unsupported(&c.name, "its output grid is not its input's"));
        }
        let idx: Vec<i64> = c.from.iter().map(|&i| i as i64).collect();
        let y = self.e.gather(&c.name, &xv, &idx, 1);
        self.set(&c.name, c.output, y)
    }

    fn concat(&mut self, c: &ConcatLayer) -> Result<(), Int8OnnxError> {
        let gy = self.grid(&c.name, c.output)?;
        let mut xs = Vec::new();
        for &t in &c.inputs {
            let (v, g) = self.get(&c.name, t)?;
            if g != gy {
                return Err(unsupported(&c.name, "its inputs are not on one 8-bit grid"));
            }
            xs.push(v);
        }
        let y = self.e.concat(&c.name, &xs, 1);
        self.set(&c.name, c.output, y)
    }

    /// `logits = k_c * acc_c + bias_c` of the fc's int32 sums.
    fn logits(&mut self) -> Result<(), Int8OnnxError> {
        let o = &self.plan.output;
        let [(t, k)] = &o.terms[..] else {
            return Err(unsupported(
                "output",
                format!("{} output terms; this export writes one fc", o.terms.len()),
            ));
        };
        let c = *self
            .convs
            .get(t)
            .ok_or_else(|| unsupported("output", "the logits are not an fc's sums"))?;
        let ConvInput::Tensor(x) = c.input else {
            return Err(unsupported(&c.name, "an fc of the float input"));
        };
        let [_, ih, iw] = self.plan.tensors[x].shape;
        if c.kernel != 1 || c.groups != 1 || ih != 1 || iw != 1 {
            return Err(unsupported(
                &c.name,
                "the logits' layer is not a linear layer over [F, 1, 1]",
            ));
        }
        let n = c.name.clone();
        let (xv, gx) = self.get(&n, x)?;
        let s_in = scale_of(self.plan, x);
        let (f, classes) = (c.cin, c.cout);
        let (w8, g) = weights_i8(&c.weights, classes);
        // B is [F, classes]; the sign of k goes into the weights.
        let mut b = vec![0i64; f * classes];
        let mut bs = Vec::with_capacity(classes);
        for j in 0..classes {
            let sign = if k[j] < 0.0 { -1 } else { 1 };
            for i in 0..f {
                b[i * classes + j] = sign * w8[j * f + i];
            }
            bs.push((k[j].abs() * s_in * g[j]) as f32);
        }
        let flat = self.e.op("Flatten", &n, &[&xv], vec![attr_int("axis", 1)]);
        let (bv, b_z) = self.weight_tensor(&n, &[f as i64, classes as i64], &b, classes);
        let a_s = self.scale(&format!("{n}.x"), gx.step);
        let a_z = self.zero_point(&format!("{n}.x"), gx);
        let b_s = self
            .e
            .f32s(&format!("{n}.weight_scale"), &[classes as i64], &bs);
        let bias: Vec<f32> = o.bias.iter().map(|&v| v as f32).collect();
        let bias = self.e.f32s(&format!("{n}.bias"), &[classes as i64], &bias);
        self.e.b.node_in(
            MS_DOMAIN,
            "MatMulIntegerToFloat",
            LOGITS,
            &[&flat, &bv, &a_s, &b_s, &a_z, &b_z, &bias],
            &[LOGITS],
            vec![],
            None,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_weights_are_requantized_per_channel() {
        let (w8, g) = weights_i8(&[1, -2, 3, 1000, -254, 0], 2);
        assert_eq!(&w8[..3], &[1, -2, 3]);
        assert_eq!(g[0], 1.0);
        assert_eq!(w8[3], 127);
        assert!((w8[4] as f64 - (-254.0 * 127.0 / 1000.0)).abs() <= 0.5);
        assert_eq!(g[1], 1000.0 / 127.0);
    }
}
