//! The integer-only pipeline of `qatc int` as an ONNX graph of integer
//! ops (`qatc export --format onnx-int`), which ONNX Runtime runs to the
//! engine's logits bit for bit, in `trunc` and `nearest` rounding.
//!
//! ```text
//! IntPlan (qatc_int::build) --write_int_onnx--> ONNX bytes (opset 13, int64 tensors)
//! ```
//!
//! Input: an [`IntPlan`], the same plan `qatc int` runs and
//! `qatc export --format c` writes as a reference C inference. Output: a
//! serialized `onnx.ModelProto`, input `input` (`[N, C, H, W]` float32, the
//! normalised image), output `logits` (`[N, classes]` float32).
//!
//! Every plan tensor is an int64 ONNX value `[N, C, H, W]` named
//! [`tensor_name`] (`t<index>.<IR node>`); each layer
//! becomes the ops below (ONNX Runtime's CPU kernels checked for each
//! type: its `Conv` is float only, `ConvInteger` uint8 only, `BitShift`
//! unsigned only, `Floor` float32 only):
//!
//! - **conv / linear** reading integers: `ConvInteger` where the input
//!   fits 8 bits (signed values shifted into `uint8` by a zero point of
//!   128, unsigned ones as they are; the weights `w + 128` with zero point
//!   128, the padding done before, in int64, with zeros) and the
//!   accumulator is the engine's i32; otherwise an im2col of strided
//!   `Slice`s and an int64 `MatMul` (groups as a batch dimension). Both
//!   are exact integer sums, so equal to the engine's in any order.
//! - **the float stem** (a conv of the float input, which the engine sums
//!   in f64): the input cast to float64, one `Mul` per kernel tap (input
//!   channel, row, column, the engine's im2col order) by that tap's
//!   weights, and the taps added one `Add` at a time in that order, from
//!   the first: IEEE double operations in the engine's order, so the same
//!   roundings. The sum is then truncated (`trunc`) or scaled and rounded
//!   half away from zero (`nearest`), built from `Round` (half to even) and
//!   exact corrections.
//! - **requantization**: `bias + sum_t mult_t * src_t` in int64, the
//!   division by `2^shift` rounded as the plan says (`Emitter::div_round`:
//!   only non-negative numerators reach `Div`), `Clip`; where the products
//!   may pass 2^63 (the engine's i128 path), in two int64 halves
//!   (`Lower::requant_wide`).
//! - **pooling**: window sums of strided `Slice`s (average), `Max` of them
//!   (max pooling, padding with the int64 minimum, which no window takes),
//!   `ReduceSum` over each adaptive window; the division as above.
//! - **channels** (split, shuffle): `Gather`; **concat**: `Concat`;
//!   **mul** (gating): int64 `Mul`; **hardswish**: the three polynomial
//!   pieces in int64, chosen by `Where` (where they may pass 2^62, as
//!   int64 limbs of 16-bit coefficient digits, `Lower::hard_swish_wide`);
//!   **lookup tables**: `GreaterOrEqual` against the breaks, `ReduceSum`,
//!   `Gather`.
//! - **quantize input**: float32 `Mul`, `Clip`, `Mul`, `Round` (half to
//!   even, as the engine), cast.
//! - **logits**: `nearest`: `sum_t double(src_t) * k_t + bias` in float64,
//!   cast to float32 once. `trunc`: float32 products and sums in the
//!   engine's order; a term computed as the seed's float32 `F.linear` is
//!   four partial sums over `i mod 4`, each a chain of fused multiply-adds
//!   `fma(x, w, s)`, each written as `float(double(s) + double(x) *
//!   double(w))`: the product of two float32 numbers is exact in float64,
//!   and so is its sum with `s`, since every value there is an integer
//!   below 2^53 (checked from the bit-widths, else an error), so the one
//!   rounding to float32 is the fused multiply-add's.
//!
//! What it cannot express is an [`IntOnnxError`] naming the layer: a wide
//! requantization or hardswish whose int64 limbs could still overflow (or
//! a wide requantization with a shift below 16), a grouped float stem, a
//! seed linear sum that could pass 2^53. ONNX has no 128-bit integers.

pub(crate) mod graph;

use crate::builder::{attr_int, attr_ints, value_info};
use crate::proto::{ModelProto, OperatorSetIdProto, StringStringEntryProto};
use graph::{Divisor, Emitter, DOUBLE, FLOAT, INT64, UINT8};
use prost::Message;
use qatc_int::fixed::{Div, Rounding};
use qatc_int::plan::{
    Channels, ConcatLayer, ConvInput, ConvLayer, HardSwishLayer, IntPlan, Layer, LutLayer,
    MulLayer, Pool, PoolKind, QuantizeInput, Requant, TensorKind,
};

/// The opset written: int64 `Clip`, `Max`, `Min`, `Where`, `MatMul`, and
/// `Slice` / `Pad` / `ReduceSum` with their parameters as inputs.
pub const INT_OPSET: i64 = 13;

/// What the integer ONNX export can reject.
#[derive(Debug, thiserror::Error)]
pub enum IntOnnxError {
    /// A layer of the plan with no exact form in ONNX's integer ops.
    #[error("layer `{layer}`: no integer ONNX form: {reason}")]
    Unsupported { layer: String, reason: String },
}

fn unsupported(layer: &str, reason: impl Into<String>) -> IntOnnxError {
    IntOnnxError::Unsupported {
        layer: layer.to_string(),
        reason: reason.into(),
    }
}

/// The integer ONNX model of `plan`, serialized (an `.onnx` file's bytes).
pub fn write_int_onnx(plan: &IntPlan) -> Result<Vec<u8>, IntOnnxError> {
    Ok(int_onnx_model(plan)?.encode_to_vec())
}

/// [`write_int_onnx`]'s model as a message.
pub fn int_onnx_model(plan: &IntPlan) -> Result<ModelProto, IntOnnxError> {
    let mut l = Lower {
        plan,
        e: Emitter::new(),
        t: vec![None; plan.tensors.len()],
        bounds: bounds(plan),
    };
    l.e.b.input(INPUT);
    for layer in &plan.layers {
        l.layer(layer)?;
    }
    l.logits()?;
    let [c, h, w] = plan.input_shape.map(|d| Some(d as i64));
    let graph = crate::proto::GraphProto {
        node: std::mem::take(&mut l.e.b.nodes),
        name: Some(format!("{}.{}.int", plan.model, plan.profile)),
        initializer: std::mem::take(&mut l.e.b.initializers),
        doc_string: Some(format!(
            "qatc model `{}`, profile `{}`: the integer-only pipeline of `qatc int` (rounding \
             `{}`) in integer ONNX ops",
            plan.model, plan.profile, plan.options.rounding
        )),
        input: vec![value_info(INPUT, &[None, c, h, w])],
        output: vec![value_info(
            LOGITS,
            &[None, Some(plan.output.classes as i64)],
        )],
        value_info: vec![],
    };
    Ok(plan_model(plan, graph, &[("", INT_OPSET)], "int"))
}

/// The model message of a graph written from `plan`: IR version 7, the
/// `(domain, version)` opsets, metadata `qatc.model`, `qatc.profile`,
/// `qatc.format` (`format`), `qatc.rounding`.
pub(crate) fn plan_model(
    plan: &IntPlan,
    graph: crate::proto::GraphProto,
    opsets: &[(&str, i64)],
    format: &str,
) -> ModelProto {
    let meta = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    ModelProto {
        ir_version: Some(7),
        opset_import: opsets
            .iter()
            .map(|&(d, v)| OperatorSetIdProto {
                domain: Some(d.into()),
                version: Some(v),
            })
            .collect(),
        producer_name: Some("qatc".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: None,
        doc_string: graph.doc_string.clone(),
        graph: Some(graph),
        metadata_props: vec![
            meta("qatc.model", plan.model.clone()),
            meta("qatc.profile", plan.profile.clone()),
            meta("qatc.format", format.into()),
            meta("qatc.rounding", plan.options.rounding.to_string()),
        ],
    }
}

const INPUT: &str = "input";

/// The ONNX value holding plan tensor `t` (int64 `[N, C, H, W]`):
/// `t<index>.<IR node>`, e.g. `t3.stem.act_quant_out`.
pub fn tensor_name(plan: &IntPlan, t: usize) -> String {
    format!("t{t}.{}", plan.tensors[t].name)
}
const LOGITS: &str = "logits";

struct Lower<'p> {
    plan: &'p IntPlan,
    e: Emitter,
    /// The ONNX value of each plan tensor, once computed.
    t: Vec<Option<String>>,
    /// A bound on each plan tensor's magnitude ([`bounds`]).
    bounds: Vec<f64>,
}

impl Lower<'_> {
    fn get(&self, layer: &str, t: usize) -> Result<String, IntOnnxError> {
        self.t
            .get(t)
            .cloned()
            .flatten()
            .ok_or_else(|| unsupported(layer, format!("tensor {t} is read before it is computed")))
    }

    /// Records the value of tensor `t`, exposed under its own name
    /// ([`tensor_name`]) by an `Identity`, so any tensor can be read as an
    /// output (ONNX Runtime removes the `Identity` when it optimises).
    fn set(&mut self, t: usize, v: String) {
        let name = tensor_name(self.plan, t);
        self.e.op_named("Identity", &name, &[&v], vec![]);
        self.t[t] = Some(name);
    }

    /// `[C, H, W]` of tensor `t`.
    fn shape(&self, t: usize) -> [usize; 3] {
        self.plan.tensors[t].shape
    }

    fn layer(&mut self, layer: &Layer) -> Result<(), IntOnnxError> {
        match layer {
            Layer::QuantizeInput(q) => self.quantize_input(q),
            Layer::Conv(c) => match c.input {
                ConvInput::Float => self.float_stem(c),
                ConvInput::Tensor(t) => self.conv(c, t),
            },
            Layer::Requant(r) => self.requant(r),
            Layer::Pool(p) => self.pool(p),
            Layer::Channels(c) => self.channels(c),
            Layer::Concat(c) => self.concat(c),
            Layer::Mul(m) => self.mul(m),
            Layer::HardSwish(h) => self.hard_swish(h),
            Layer::Lut(l) => self.lut(l),
        }
    }

    /// `q = round_even(clamp(x * pre, lo, hi) * gain)` in float32.
    fn quantize_input(&mut self, q: &QuantizeInput) -> Result<(), IntOnnxError> {
        let e = &mut self.e;
        let n = &q.name;
        let pre = e.f32s(&format!("{n}.pre"), &[], &[q.pre]);
        let lo = e.f32s(&format!("{n}.clip_lo"), &[], &[q.clip_lo]);
        let hi = e.f32s(&format!("{n}.clip_hi"), &[], &[q.clip_hi]);
        let gain = e.f32s(&format!("{n}.gain"), &[], &[q.gain]);
        let y = e.bin("Mul", n, INPUT, &pre);
        let y = e.op("Clip", n, &[&y, &lo, &hi], vec![]);
        let y = e.bin("Mul", n, &y, &gain);
        let y = e.op("Round", n, &[&y], vec![]);
        let y = e.cast(n, &y, INT64);
        self.set(q.output, y);
        Ok(())
    }

    /// The float stem: taps multiplied and added one at a time in float64,
    /// in the engine's order (see the module docs), then rounded.
    fn float_stem(&mut self, c: &ConvLayer) -> Result<(), IntOnnxError> {
        if c.groups != 1 {
            return Err(unsupported(
                &c.name,
                format!(
                    "a grouped conv ({} groups) of the float input: the engine sums it in its \
                     depthwise order, which this export does not reproduce",
                    c.groups
                ),
            ));
        }
        let n = &c.name;
        let (k, s) = (c.kernel, c.stride as i64);
        let [oh, ow] = c.out_hw.map(|d| d as i64);
        let e = &mut self.e;
        let x = e.cast(n, INPUT, DOUBLE);
        let x = if c.padding > 0 {
            e.pad_hw(n, &x, c.padding, None)
        } else {
            x
        };
        let fan = c.cin * k * k;
        let mut acc: Option<String> = None;
        for ci in 0..c.cin {
            for ky in 0..k {
                for kx in 0..k {
                    let j = (ci * k + ky) * k + kx;
                    let (y0, x0) = (ky as i64, kx as i64);
                    let tap = e.slice(
                        n,
                        &x,
                        &[1, 2, 3],
                        &[ci as i64, y0, x0],
                        &[ci as i64 + 1, y0 + s * (oh - 1) + 1, x0 + s * (ow - 1) + 1],
                        &[1, s, s],
                    );
                    let wj: Vec<f64> = (0..c.cout).map(|o| c.weights[o * fan + j] as f64).collect();
                    let w = e.f64s(&format!("{n}.w{j}"), &[1, c.cout as i64, 1, 1], &wj);
                    let p = e.bin("Mul", n, &tap, &w);
                    acc = Some(match acc {
                        None => p,
                        Some(a) => e.bin("Add", n, &a, &p),
                    });
                }
            }
        }
        let acc = acc.ok_or_else(|| unsupported(n, "a conv without inputs"))?;
        let out = match self.plan.options.rounding {
            Rounding::Trunc => e.f64_trunc(n, &acc),
            Rounding::Nearest | Rounding::Scaled => {
                let sc = e.f64s(&format!("{n}.float_scale"), &[], &[c.float_scale]);
                let t = e.bin("Mul", n, &acc, &sc);
                e.f64_round_away(n, &t)
            }
        };
        self.set(c.output, out);
        Ok(())
    }

    /// A conv of integers: `ConvInteger` where it fits, else im2col and an
    /// int64 `MatMul`.
    fn conv(&mut self, c: &ConvLayer, input: usize) -> Result<(), IntOnnxError> {
        let x = self.get(&c.name, input)?;
        let zero_point = match self.plan.tensors[input].kind {
            TensorKind::Act { lo, hi, .. } if lo >= 0 && hi <= 255 => Some(0),
            TensorKind::Act { lo, hi, .. } if lo >= -128 && hi <= 127 => Some(128),
            _ => None,
        };
        let w8 = c.weights.iter().all(|&w| (-128..=127).contains(&w));
        let acc32 = !self.plan.tensors[c.output].wide;
        let y = match zero_point {
            Some(zp) if w8 && acc32 => self.conv_integer(c, &x, zp),
            _ => self.conv_matmul(c, &x),
        };
        self.set(c.output, y);
        Ok(())
    }

    /// `ConvInteger` on `uint8`: `x + zp` with zero point `zp`, `w + 128`
    /// with zero point 128; the padding (zeros) applied before the shift,
    /// so padded positions are the value 0 whatever the kernel pads with.
    fn conv_integer(&mut self, c: &ConvLayer, x: &str, zp: i64) -> String {
        let n = &c.name;
        let e = &mut self.e;
        let mut x = x.to_string();
        if c.padding > 0 {
            x = e.pad_hw(n, &x, c.padding, None);
        }
        if zp != 0 {
            let z = e.i64_scalar(&format!("{n}.x_shift"), zp);
            x = e.bin("Add", n, &x, &z);
        }
        let xu = e.cast(n, &x, UINT8);
        let k = c.kernel as i64;
        let wu: Vec<u8> = c.weights.iter().map(|&w| (w + 128) as u8).collect();
        let w = e.u8s(
            &format!("{n}.weight_u8"),
            &[c.cout as i64, (c.cin / c.groups) as i64, k, k],
            &wu,
        );
        let xz = e.u8s(&format!("{n}.x_zero_point"), &[], &[zp as u8]);
        let wz = e.u8s(&format!("{n}.w_zero_point"), &[], &[128]);
        let s = c.stride as i64;
        let y = e.op(
            "ConvInteger",
            n,
            &[&xu, &w, &xz, &wz],
            vec![
                attr_int("group", c.groups as i64),
                attr_ints("kernel_shape", &[k, k]),
                attr_ints("strides", &[s, s]),
                attr_ints("pads", &[0, 0, 0, 0]),
            ],
        );
        e.cast(n, &y, INT64)
    }

    /// im2col (`Slice` per tap, channel-major then row then column, as the
    /// weights are laid out) and an int64 `MatMul` per group.
    fn conv_matmul(&mut self, c: &ConvLayer, x: &str) -> String {
        let n = &c.name;
        let e = &mut self.e;
        let (k, s) = (c.kernel as i64, c.stride as i64);
        let [oh, ow] = c.out_hw.map(|d| d as i64);
        let p = oh * ow;
        let (g, cin_g, cout_g) = (c.groups, c.cin / c.groups, c.cout / c.groups);
        let kk = (cin_g as i64) * k * k;
        let col = if k == 1 && s == 1 && c.padding == 0 {
            e.reshape(n, x, &[0, g as i64, kk, p])
        } else {
            let xp = if c.padding > 0 {
                e.pad_hw(n, x, c.padding, None)
            } else {
                x.to_string()
            };
            let mut taps = Vec::new();
            for ky in 0..k {
                for kx in 0..k {
                    let t = e.slice(
                        n,
                        &xp,
                        &[2, 3],
                        &[ky, kx],
                        &[ky + s * (oh - 1) + 1, kx + s * (ow - 1) + 1],
                        &[s, s],
                    );
                    taps.push(e.reshape(n, &t, &[0, c.cin as i64, 1, p]));
                }
            }
            let col = e.concat(n, &taps, 2);
            e.reshape(n, &col, &[0, g as i64, kk, p])
        };
        let w: Vec<i64> = c.weights.iter().map(|&w| w as i64).collect();
        let w = e.i64s(&format!("{n}.weight"), &[g as i64, cout_g as i64, kk], &w);
        let y = e.bin("MatMul", n, &w, &col);
        e.reshape(n, &y, &[0, c.cout as i64, oh, ow])
    }

    /// `clamp(div(bias + sum_t mult_t * src_t, 2^shift), lo, hi)` in int64.
    fn requant(&mut self, r: &Requant) -> Result<(), IntOnnxError> {
        let n = &r.name;
        if r.wide {
            return self.requant_wide(r);
        }
        if r.shift >= 63 {
            return Err(unsupported(n, format!("a shift of {} bits", r.shift)));
        }
        let ch = r.bias.len() as i64;
        let mut srcs = Vec::new();
        for t in &r.terms {
            srcs.push(self.get(n, t.src)?);
        }
        let e = &mut self.e;
        let mut acc = e.i64s(&format!("{n}.bias"), &[1, ch, 1, 1], &r.bias);
        for (ti, (t, src)) in r.terms.iter().zip(&srcs).enumerate() {
            let m = e.i64s(&format!("{n}.mult{ti}"), &[1, ch, 1, 1], &t.mult);
            let p = e.bin("Mul", n, src, &m);
            acc = e.bin("Add", n, &acc, &p);
        }
        let q = if r.shift > 0 {
            e.div_round(n, &acc, Divisor::Const(1i64 << r.shift), r.div)
        } else {
            acc
        };
        let y = e.clamp(n, &q, r.lo, r.hi);
        self.set(r.output, y);
        Ok(())
    }

    /// A requantization whose sum `S = bias + sum_t m_t x_t` may pass 2^63
    /// (the engine's i128 path), in two int64 halves: each multiplier split
    /// as `m = 2^16 mh + ml` (`0 <= ml < 2^16`), `H = sum_t mh_t x_t`,
    /// `L = bias + sum_t ml_t x_t`, so `S = 2^16 H + L` with both halves
    /// bounded (checked from the sources' bounds) below 2^62. For a shift
    /// `s >= 16`, `floor((2^16 H + L) / 2^s) = floor((H + floor(L / 2^16)) /
    /// 2^(s-16))` (the dropped `L mod 2^16` is a fraction of one unit below
    /// the division by `2^(s-16)`), and `S < 0` exactly when
    /// `H + floor(L / 2^16) < 0`. `trunc` and `nearest` divide `|S|`
    /// (`-H`, `-L` where `S < 0`; plus `2^(s-1)` for `nearest`) and put the
    /// sign back; `floor` divides `S` itself. The quotient fits int64, so
    /// the engine's saturation to 64 bits changes nothing.
    fn requant_wide(&mut self, r: &Requant) -> Result<(), IntOnnxError> {
        let n = &r.name;
        const HALF: u32 = 16;
        if !(HALF..63).contains(&r.shift) {
            return Err(unsupported(
                n,
                format!(
                    "its products may pass 2^63 (the engine sums them in 128 bits) and its shift \
                     ({}) is outside 16..62, where two int64 halves hold the sum",
                    r.shift
                ),
            ));
        }
        let ch = r.bias.len();
        let (mut hb, mut lb) = (
            0f64,
            r.bias.iter().map(|b| b.unsigned_abs()).max().unwrap_or(0) as f64,
        );
        let mut srcs = Vec::new();
        let mut parts = Vec::new();
        for t in &r.terms {
            let bound = self.bounds[t.src];
            let mh: Vec<i64> = t.mult.iter().map(|m| m >> HALF).collect();
            let ml: Vec<i64> = t.mult.iter().map(|m| m & ((1 << HALF) - 1)).collect();
            let mhmax = mh.iter().map(|m| m.unsigned_abs()).max().unwrap_or(0) as f64;
            hb += mhmax * bound;
            lb += (1u64 << HALF) as f64 * bound;
            srcs.push(self.get(n, t.src)?);
            parts.push((mh, ml));
        }
        if !(hb < 2f64.powi(61) && lb < 2f64.powi(61)) {
            return Err(unsupported(
                n,
                "its products may pass 2^63 (the engine sums them in 128 bits), and even two \
                 int64 halves of the sum could overflow; ONNX has no wider integer type",
            ));
        }
        let e = &mut self.e;
        let dims = [1, ch as i64, 1, 1];
        let mut h: Option<String> = None;
        let mut l = e.i64s(&format!("{n}.bias"), &dims, &r.bias);
        for (ti, (src, (mh, ml))) in srcs.iter().zip(&parts).enumerate() {
            let mhv = e.i64s(&format!("{n}.mult{ti}_hi"), &dims, mh);
            let mlv = e.i64s(&format!("{n}.mult{ti}_lo"), &dims, ml);
            let ph = e.bin("Mul", n, src, &mhv);
            h = Some(match h {
                None => ph,
                Some(a) => e.bin("Add", n, &a, &ph),
            });
            let pl = e.bin("Mul", n, src, &mlv);
            l = e.bin("Add", n, &l, &pl);
        }
        let h = match h {
            Some(h) => h,
            None => e.i64_scalar(&format!("{n}.zero"), 0),
        };
        let k = Divisor::Const(1 << HALF);
        let rest = Divisor::Const(1i64 << (r.shift - HALF));
        let lq = e.div_round(n, &l, k, Div::Floor);
        let t0 = e.bin("Add", n, &h, &lq);
        let q = match r.div {
            Div::Floor => e.div_round(n, &t0, rest, Div::Floor),
            Div::Trunc | Div::Nearest => {
                let zero = e.i64_scalar(&format!("{n}.zero"), 0);
                let neg = e.bin("Less", n, &t0, &zero);
                let hn = e.op("Neg", n, &[&h], vec![]);
                let hs = e.op("Where", n, &[&neg, &hn, &h], vec![]);
                let ln = e.op("Neg", n, &[&l], vec![]);
                let mut ls = e.op("Where", n, &[&neg, &ln, &l], vec![]);
                if r.div == Div::Nearest {
                    let half = e.i64_scalar(&format!("{n}.half"), 1i64 << (r.shift - 1));
                    ls = e.bin("Add", n, &ls, &half);
                }
                let lsq = e.div_round(n, &ls, Divisor::Const(1 << HALF), Div::Floor);
                let ts = e.bin("Add", n, &hs, &lsq);
                // |S| (+ half) >= 0: a non-negative numerator.
                let d = e.i64_scalar(&format!("{n}.div"), 1i64 << (r.shift - HALF));
                let q = e.bin("Div", n, &ts, &d);
                let qn = e.op("Neg", n, &[&q], vec![]);
                e.op("Where", n, &[&neg, &qn, &q], vec![])
            }
        };
        let y = e.clamp(n, &q, r.lo, r.hi);
        self.set(r.output, y);
        Ok(())
    }

    /// Average, max and adaptive average pooling.
    fn pool(&mut self, p: &Pool) -> Result<(), IntOnnxError> {
        let n = &p.name;
        let x = self.get(n, p.input)?;
        let [_, ih, iw] = self.shape(p.input);
        let [_, oh, ow] = self.shape(p.output);
        let windows = |k: usize, s: usize, pad: usize| {
            oh > 0 && ow > 0 && (oh - 1) * s + k <= ih + 2 * pad && (ow - 1) * s + k <= iw + 2 * pad
        };
        let e = &mut self.e;
        let y = match p.kind {
            PoolKind::Max {
                kernel,
                stride,
                padding,
            } => {
                if !windows(kernel, stride, padding) || kernel <= padding {
                    return Err(unsupported(n, "max pooling windows outside the input"));
                }
                let xp = if padding > 0 {
                    let min = e.i64_scalar(&format!("{n}.pad_value"), i64::MIN);
                    e.pad_hw(n, &x, padding, Some(&min))
                } else {
                    x
                };
                let taps = window_taps(e, n, &xp, kernel, stride, [oh, ow]);
                let refs: Vec<&str> = taps.iter().map(String::as_str).collect();
                e.op("Max", n, &refs, vec![])
            }
            PoolKind::Avg { kernel, stride } => {
                if !windows(kernel, stride, 0) {
                    return Err(unsupported(n, "average pooling windows outside the input"));
                }
                let taps = window_taps(e, n, &x, kernel, stride, [oh, ow]);
                let mut sum = taps[0].clone();
                for t in &taps[1..] {
                    sum = e.bin("Add", n, &sum, t);
                }
                if p.sum_only {
                    sum
                } else {
                    e.div_round(n, &sum, Divisor::Const((kernel * kernel) as i64), p.div)
                }
            }
            PoolKind::Adaptive { .. } => {
                // The engine's windows: rows oy*ih/oh .. ceil((oy+1)*ih/oh).
                let win =
                    |o: usize, i: usize, out: usize| (o * i / out, ((o + 1) * i).div_ceil(out));
                let mut rows = Vec::new();
                for oy in 0..oh {
                    let (a, b) = win(oy, ih, oh);
                    let r = e.slice(n, &x, &[2], &[a as i64], &[b as i64], &[1]);
                    rows.push(e.reduce_sum(n, &r, &[2]));
                }
                let rows = if oh == 1 {
                    rows.remove(0)
                } else {
                    e.concat(n, &rows, 2)
                };
                let mut cols = Vec::new();
                for ox in 0..ow {
                    let (a, b) = win(ox, iw, ow);
                    let r = e.slice(n, &rows, &[3], &[a as i64], &[b as i64], &[1]);
                    cols.push(e.reduce_sum(n, &r, &[3]));
                }
                let sum = if ow == 1 {
                    cols.remove(0)
                } else {
                    e.concat(n, &cols, 3)
                };
                if p.sum_only {
                    sum
                } else {
                    let mut counts = Vec::with_capacity(oh * ow);
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let (y0, y1) = win(oy, ih, oh);
                            let (x0, x1) = win(ox, iw, ow);
                            counts.push(((y1 - y0) * (x1 - x0)).max(1) as i64);
                        }
                    }
                    if counts.iter().all(|&c| c == counts[0]) {
                        e.div_round(n, &sum, Divisor::Const(counts[0]), p.div)
                    } else {
                        e.div_round(n, &sum, Divisor::Grid(&counts, [oh, ow]), p.div)
                    }
                }
            }
        };
        self.set(p.output, y);
        Ok(())
    }

    fn channels(&mut self, c: &Channels) -> Result<(), IntOnnxError> {
        let x = self.get(&c.name, c.input)?;
        let idx: Vec<i64> = c.from.iter().map(|&f| f as i64).collect();
        let y = self.e.gather(&c.name, &x, &idx, 1);
        self.set(c.output, y);
        Ok(())
    }

    fn concat(&mut self, c: &ConcatLayer) -> Result<(), IntOnnxError> {
        let mut xs = Vec::new();
        for &t in &c.inputs {
            xs.push(self.get(&c.name, t)?);
        }
        let y = if xs.len() == 1 {
            xs.remove(0)
        } else {
            self.e.concat(&c.name, &xs, 1)
        };
        self.set(c.output, y);
        Ok(())
    }

    fn mul(&mut self, m: &MulLayer) -> Result<(), IntOnnxError> {
        let x = self.get(&m.name, m.input)?;
        let g = self.get(&m.name, m.gate)?;
        // A broadcast gate is [N, C, 1, 1]: ONNX broadcasting does the rest.
        let y = self.e.bin("Mul", &m.name, &x, &g);
        self.set(m.output, y);
        Ok(())
    }

    /// The three pieces of the engine's `hardswish_int`, in int64.
    fn hard_swish(&mut self, h: &HardSwishLayer) -> Result<(), IntOnnxError> {
        let n = &h.name;
        if h.wide {
            return self.hard_swish_wide(h);
        }
        if h.shift >= 63 || h.shl.iter().any(|&s| s >= 63) {
            return Err(unsupported(
                n,
                "its sums may pass 2^62 (the engine computes them in 128 bits); ONNX has no \
                 integer type wider than 64 bits",
            ));
        }
        let q = self.get(n, h.input)?;
        let e = &mut self.e;
        let [a2, a1, a0] = h.c;
        let [l2, l1, l0] = h.shl;
        let term = |e: &mut Emitter, x: &str, a: i64, shl: u32| {
            let c = e.i64_scalar(&format!("{n}.c"), a);
            let p = e.bin("Mul", n, x, &c);
            let s = e.i64_scalar(&format!("{n}.shl"), 1i64 << shl);
            e.bin("Mul", n, &p, &s)
        };
        let qq = e.bin("Mul", n, &q, &q);
        let above = term(e, &q, a0, l0);
        let above = e.div_round(n, &above, Divisor::Const(1i64 << h.shift), h.div);
        let m2 = term(e, &qq, a2, l2);
        let m1 = term(e, &q, a1, l1);
        let mid = e.bin("Add", n, &m2, &m1);
        let mid = e.div_round(n, &mid, Divisor::Const(1i64 << h.shift), h.div);
        let neg = e.i64_scalar(&format!("{n}.neg"), h.neg);
        let pos = e.i64_scalar(&format!("{n}.pos"), h.pos);
        let zero = e.i64_scalar(&format!("{n}.zero"), 0);
        let is_pos = e.bin("Less", n, &q, &pos);
        let upper = e.op("Where", n, &[&is_pos, &mid, &above], vec![]);
        let is_neg = e.bin("Greater", n, &q, &neg);
        let r = e.op("Where", n, &[&is_neg, &upper, &zero], vec![]);
        let y = e.clamp(n, &r, h.lo, h.hi);
        self.set(h.output, y);
        Ok(())
    }

    /// A hardswish whose sums may pass 2^62 (the engine's i128 path): each
    /// piece `sum_i c_i * x_i * 2^shl_i` (`x` = `q^2` or `q`) as int64
    /// limbs, every coefficient split into 16-bit digits
    /// (`c = sum_j d_j 2^(16 j)`), so each limb `d_j x_i` stays below 2^62,
    /// at exponent `16 j + shl_i`; `floor(S / 2^shift)` by [`floor_sum`].
    /// `trunc` and `nearest` take `floor(|S| (+ 2^(shift-1)) / 2^shift)`
    /// (the limbs negated where `S < 0`, which `floor(S / 2^shift) < 0`
    /// tells) and put the sign back, as the engine's `shift_round_wide`.
    fn hard_swish_wide(&mut self, h: &HardSwishLayer) -> Result<(), IntOnnxError> {
        let n = &h.name;
        let qb = self.bounds[h.input];
        if qb * qb >= 2f64.powi(62) {
            return Err(too_wide(n));
        }
        let q = self.get(n, h.input)?;
        let e = &mut self.e;
        let qq = e.bin("Mul", n, &q, &q);
        let [a2, a1, a0] = h.c;
        let [l2, l1, l0] = h.shl;
        let limbs = |e: &mut Emitter, x: &str, xb: f64, a: i64, shl: u32, out: &mut Vec<Limb>| {
            for (d, off) in digits(a) {
                let c = e.i64_scalar(&format!("{n}.digit"), d);
                let v = e.bin("Mul", n, x, &c);
                out.push(Limb {
                    v,
                    exp: off + shl,
                    bound: d.unsigned_abs() as f64 * xb,
                });
            }
        };
        let (mut mid, mut above) = (Vec::new(), Vec::new());
        limbs(e, &qq, qb * qb, a2, l2, &mut mid);
        limbs(e, &q, qb, a1, l1, &mut mid);
        limbs(e, &q, qb, a0, l0, &mut above);
        let piece = |e: &mut Emitter, limbs: &[Limb]| -> Result<String, IntOnnxError> {
            let f = floor_sum(e, n, limbs, None, h.shift)?;
            if h.div == Div::Floor {
                return Ok(f);
            }
            let zero = e.i64_scalar(&format!("{n}.zero"), 0);
            let neg = e.bin("Less", n, &f, &zero);
            let half = (h.div == Div::Nearest)
                .then(|| h.shift.checked_sub(1))
                .flatten();
            let mut signed = Vec::new();
            for l in limbs {
                let m = e.op("Neg", n, &[&l.v], vec![]);
                let v = e.op("Where", n, &[&neg, &m, &l.v], vec![]);
                signed.push(Limb { v, ..*l });
            }
            let g = floor_sum(e, n, &signed, half, h.shift)?;
            let gn = e.op("Neg", n, &[&g], vec![]);
            Ok(e.op("Where", n, &[&neg, &gn, &g], vec![]))
        };
        let mid = piece(e, &mid).map_err(|_| too_wide(n))?;
        let above = piece(e, &above).map_err(|_| too_wide(n))?;
        let neg = e.i64_scalar(&format!("{n}.neg"), h.neg);
        let pos = e.i64_scalar(&format!("{n}.pos"), h.pos);
        let zero = e.i64_scalar(&format!("{n}.zero"), 0);
        let is_pos = e.bin("Less", n, &q, &pos);
        let upper = e.op("Where", n, &[&is_pos, &mid, &above], vec![]);
        let is_neg = e.bin("Greater", n, &q, &neg);
        let r = e.op("Where", n, &[&is_neg, &upper, &zero], vec![]);
        let y = e.clamp(n, &r, h.lo, h.hi);
        self.set(h.output, y);
        Ok(())
    }

    /// A lookup table: `values[i]`, `i` the number of `breaks` at or
    /// below `q` (`ReduceSum` of `q >= breaks` along a new axis, then
    /// `Gather`), as the engine's `lut_int`.
    fn lut(&mut self, l: &LutLayer) -> Result<(), IntOnnxError> {
        let n = &l.name;
        if l.values.len() != l.breaks.len() + 1 {
            return Err(unsupported(
                n,
                "a table with one value more than breaks expected",
            ));
        }
        let q = self.get(n, l.input)?;
        let e = &mut self.e;
        let values = e.list(&format!("{n}.values"), &l.values);
        let y = if l.breaks.is_empty() {
            let zero = e.i64_scalar(&format!("{n}.zero"), 0);
            let z = e.bin("Mul", n, &q, &zero);
            e.op("Gather", n, &[&values, &z], vec![attr_int("axis", 0)])
        } else {
            let axes = e.list(&format!("{n}.axes"), &[4]);
            let q5 = e.op("Unsqueeze", n, &[&q, &axes], vec![]);
            let breaks = e.list(&format!("{n}.breaks"), &l.breaks);
            let ge = e.bin("GreaterOrEqual", n, &q5, &breaks);
            let ge = e.cast(n, &ge, INT64);
            let axes = e.list(&format!("{n}.sum_axes"), &[4]);
            let idx = e.op("ReduceSum", n, &[&ge, &axes], vec![attr_int("keepdims", 0)]);
            e.op("Gather", n, &[&values, &idx], vec![attr_int("axis", 0)])
        };
        self.set(l.output, y);
        Ok(())
    }

    /// The logits `[N, classes]`, as the engine's `run_output` computes them.
    fn logits(&mut self) -> Result<(), IntOnnxError> {
        let o = &self.plan.output;
        let classes = o.classes as i64;
        let trunc = self.plan.options.rounding == Rounding::Trunc;
        let mut srcs = Vec::new();
        for (src, _) in &o.terms {
            srcs.push(self.get("output", *src)?);
        }
        let mut linear = Vec::new();
        for ti in 0..o.terms.len() {
            linear.push(match (trunc, self.plan.seed_linear(ti)) {
                (true, Some((_, l, input))) => Some((l, input, self.get(&l.name, input)?)),
                _ => None,
            });
        }
        let shape = [0, classes, 1, 1];
        let mut acc: Option<String> = None;
        for (ti, (_, k)) in o.terms.iter().enumerate() {
            let src = &srcs[ti];
            let p = if trunc {
                let v = match &linear[ti] {
                    Some((l, input, x)) => self.seed_linear(l, *input, x)?,
                    None => self.e.cast("output", src, FLOAT),
                };
                let kf = self.e.f32s(
                    &format!("output.k{ti}_f32"),
                    &[1, classes, 1, 1],
                    &o.terms_f32[ti],
                );
                self.e.bin("Mul", "output", &v, &kf)
            } else {
                let v = self.e.cast("output", src, DOUBLE);
                let kd = self
                    .e
                    .f64s(&format!("output.k{ti}"), &[1, classes, 1, 1], k);
                self.e.bin("Mul", "output", &v, &kd)
            };
            let e = &mut self.e;
            // The engine starts from 0 (so a -0 product sums to +0).
            let start = match acc.take() {
                Some(a) => a,
                None if trunc => e.f32s("output.zero", &[], &[0.0]),
                None => e.f64s("output.zero", &[], &[0.0]),
            };
            acc = Some(e.bin("Add", "output", &start, &p));
        }
        let e = &mut self.e;
        let acc = match acc {
            Some(a) => a,
            None if trunc => e.f32s("output.zero", &shape, &vec![0.0; o.classes]),
            None => e.f64s("output.zero", &shape, &vec![0.0; o.classes]),
        };
        let y = if trunc {
            let b = e.f32s("output.bias_f32", &[1, classes, 1, 1], &o.bias_f32);
            e.bin("Add", "output", &acc, &b)
        } else {
            let b = e.f64s("output.bias", &[1, classes, 1, 1], &o.bias);
            let y = e.bin("Add", "output", &acc, &b);
            e.cast("output", &y, FLOAT)
        };
        e.op_named("Flatten", LOGITS, &[&y], vec![attr_int("axis", 1)]);
        Ok(())
    }

    /// The seed's float32 `F.linear` sum of linear layer `l` over its
    /// integer input `x` (`[N, F, 1, 1]`), per class, as
    /// `qatc_int::engine::seed_linear_f32`: `[N, classes, 1, 1]` float32.
    fn seed_linear(
        &mut self,
        l: &ConvLayer,
        input: usize,
        x: &str,
    ) -> Result<String, IntOnnxError> {
        let n = format!("{}.seed_linear", l.name);
        let f = l.cin;
        let classes = l.cout;
        let xmax = match self.plan.tensors[input].kind {
            TensorKind::Act { lo, hi, .. } => lo.unsigned_abs().max(hi.unsigned_abs()) as f64,
            TensorKind::Acc { .. } => f64::INFINITY,
        };
        let wmax = l
            .weights
            .iter()
            .map(|w| w.unsigned_abs())
            .max()
            .unwrap_or(0) as f64;
        // Every partial sum and product is an integer below 2^53: float64
        // holds them exactly (and float32 casts of |x|, |w| < 2^24 too).
        if !(f as f64 * xmax * wmax < 2f64.powi(53) && xmax < 2f64.powi(24) && wmax < 2f64.powi(24))
        {
            return Err(unsupported(
                &l.name,
                "its float32 sums could pass 2^53, where float64 no longer holds them exactly",
            ));
        }
        let e = &mut self.e;
        let x = e.reshape(&n, x, &[0, 1, f as i64]);
        let x = e.cast(&n, &x, FLOAT);
        let x = e.cast(&n, &x, DOUBLE);
        let f4 = f.div_ceil(4) * 4;
        // The weights as float32 values in float64, zero columns up to a
        // multiple of 4 (a zero product leaves a partial sum unchanged).
        let mut w = vec![0f64; classes * f4];
        for c in 0..classes {
            for i in 0..f {
                w[c * f4 + i] = l.weights[c * f + i] as f32 as f64;
            }
        }
        let wv = e.f64s(&format!("{n}.w"), &[classes as i64, f4 as i64], &w);
        let x = if f4 > f {
            let pads = e.list(&format!("{n}.pads"), &[0, 0, 0, 0, 0, (f4 - f) as i64]);
            e.op("Pad", &n, &[&x, &pads], vec![])
        } else {
            x
        };
        // [N, classes, F4] exact products, as [N, classes, F4/4, 4].
        let prod = e.bin("Mul", &n, &x, &wv);
        let prod = e.reshape(&n, &prod, &[0, classes as i64, (f4 / 4) as i64, 4]);
        let steps = e.split(&n, &prod, 2, f4 / 4);
        let mut s = e.cast(&n, &steps[0], FLOAT);
        for p in &steps[1..] {
            let d = e.cast(&n, &s, DOUBLE);
            let t = e.bin("Add", &n, &d, p);
            s = e.cast(&n, &t, FLOAT);
        }
        // (s0 + s2) + (s1 + s3), float32.
        let lane = |e: &mut Emitter, i: i64| e.slice(&n, &s, &[3], &[i], &[i + 1], &[1]);
        let (s0, s1, s2, s3) = (lane(e, 0), lane(e, 1), lane(e, 2), lane(e, 3));
        let a = e.bin("Add", &n, &s0, &s2);
        let b = e.bin("Add", &n, &s1, &s3);
        let r = e.bin("Add", &n, &a, &b);
        // [N, classes, 1, 1] -> [N, classes, 1, 1] (already).
        Ok(r)
    }
}

/// One int64 limb `v * 2^exp` of a wide sum, `|v| <= bound`.
#[derive(Clone)]
struct Limb {
    v: String,
    exp: u32,
    bound: f64,
}

fn too_wide(layer: &str) -> IntOnnxError {
    unsupported(
        layer,
        "its sums may pass 2^62 (the engine computes them in 128 bits), and even in 16-bit \
         limbs an int64 partial sum could overflow; ONNX has no wider integer type",
    )
}

/// `a` as 16-bit digits `(d, 16 j)`, `a = sum d 2^(16 j)`: the low ones in
/// `[0, 2^16)`, the top one signed and below 2^15 in magnitude.
fn digits(mut a: i64) -> Vec<(i64, u32)> {
    let mut out = Vec::new();
    let mut off = 0;
    while !(-(1 << 15)..(1 << 15)).contains(&a) {
        out.push((a & 0xffff, off));
        a >>= 16;
        off += 16;
    }
    out.push((a, off));
    out
}

/// `floor((sum_k v_k 2^exp_k + [2^half]) / 2^s)` of int64 limbs, exactly:
/// the limbs at or below `2^s` in increasing exponent, each step
/// `c = floor(c / 2^(exp_k - exp_prev)) + v_k` (what is dropped is a
/// non-negative fraction of a unit that the final division drops anyway),
/// then `floor(c / 2^(s - exp_last))`; the limbs above `2^s` added as
/// `v_k 2^(exp_k - s)`. Errs where a partial sum could reach 2^62.
fn floor_sum(
    e: &mut Emitter,
    n: &str,
    limbs: &[Limb],
    half: Option<u32>,
    s: u32,
) -> Result<String, IntOnnxError> {
    let mut all: Vec<Limb> = limbs.to_vec();
    if let Some(h) = half {
        let one = e.i64_scalar(&format!("{n}.one"), 1);
        all.push(Limb {
            v: one,
            exp: h,
            bound: 1.0,
        });
    }
    all.sort_by_key(|l| l.exp);
    let limit = 2f64.powi(62);
    let (low, high): (Vec<&Limb>, Vec<&Limb>) = all.iter().partition(|l| l.exp <= s);
    let mut acc: Option<(String, u32, f64)> = None;
    for l in low {
        acc = Some(match acc {
            None => (l.v.clone(), l.exp, l.bound),
            Some((c, exp, b)) => {
                let d = l.exp - exp;
                let c = e.div_round(n, &c, Divisor::Const(1i64 << d.min(62)), Div::Floor);
                let b = b / 2f64.powi(d as i32) + 1.0 + l.bound;
                (e.bin("Add", n, &c, &l.v), l.exp, b)
            }
        });
        if acc.as_ref().is_some_and(|a| a.2 >= limit) {
            return Err(too_wide(n));
        }
    }
    let (mut c, mut b) = match acc {
        Some((c, exp, b)) => {
            let d = s - exp;
            if d >= 63 {
                return Err(too_wide(n));
            }
            (
                e.div_round(n, &c, Divisor::Const(1i64 << d), Div::Floor),
                b / 2f64.powi(d as i32) + 1.0,
            )
        }
        None => (e.i64_scalar(&format!("{n}.zero"), 0), 0.0),
    };
    for l in high {
        let d = l.exp - s;
        let lb = l.bound * 2f64.powi(d as i32);
        if d >= 62 || lb + b >= limit {
            return Err(too_wide(n));
        }
        let k = e.i64_scalar(&format!("{n}.pow2"), 1i64 << d);
        let v = e.bin("Mul", n, &l.v, &k);
        c = e.bin("Add", n, &c, &v);
        b += lb;
    }
    Ok(c)
}

/// A bound on the magnitude of every plan tensor, layer by layer: an
/// activation's clamp range; a conv's `max_o sum |w| * bound(input)` (the
/// float input: `FLOAT_INPUT_BOUND` times the float scale, plus the
/// rounding); a pool's window size times its input's where it keeps the
/// sums; a product's the product; a gather or concat its inputs'.
/// Unbounded (infinite) where nothing bounds it.
fn bounds(plan: &IntPlan) -> Vec<f64> {
    let act = |t: usize| match plan.tensors[t].kind {
        TensorKind::Act { lo, hi, .. } => lo.unsigned_abs().max(hi.unsigned_abs()) as f64,
        TensorKind::Acc { .. } => f64::INFINITY,
    };
    let mut b: Vec<f64> = (0..plan.tensors.len()).map(act).collect();
    for layer in &plan.layers {
        match layer {
            Layer::Conv(c) => {
                let fan = c.fan_in.max(1);
                let wsum = c
                    .weights
                    .chunks(fan)
                    .map(|r| r.iter().map(|w| w.unsigned_abs() as f64).sum::<f64>())
                    .fold(0f64, f64::max);
                let x = match c.input {
                    ConvInput::Float => qatc_int::plan::FLOAT_INPUT_BOUND * c.float_scale.max(1.0),
                    ConvInput::Tensor(t) => b[t],
                };
                b[c.output] = wsum * x + 1.0;
            }
            Layer::Pool(p) => {
                let [_, ih, iw] = plan.tensors[p.input].shape;
                let window = match p.kind {
                    PoolKind::Avg { kernel, .. } => (kernel * kernel) as f64,
                    PoolKind::Max { .. } => 1.0,
                    PoolKind::Adaptive { .. } => (ih * iw) as f64,
                };
                b[p.output] = if p.sum_only {
                    window * b[p.input]
                } else {
                    b[p.input]
                };
            }
            Layer::Channels(c) => b[c.output] = b[c.input],
            Layer::Concat(c) => b[c.output] = c.inputs.iter().map(|&t| b[t]).fold(0f64, f64::max),
            Layer::Mul(m) => b[m.output] = b[m.input] * b[m.gate],
            _ => {}
        }
    }
    b
}

/// The `k x k` strided taps of `x` for an `[oh, ow]` output.
fn window_taps(
    e: &mut Emitter,
    n: &str,
    x: &str,
    k: usize,
    s: usize,
    [oh, ow]: [usize; 2],
) -> Vec<String> {
    let (s, oh, ow) = (s as i64, oh as i64, ow as i64);
    let mut taps = Vec::new();
    for ky in 0..k as i64 {
        for kx in 0..k as i64 {
            taps.push(e.slice(
                n,
                x,
                &[2, 3],
                &[ky, kx],
                &[ky + s * (oh - 1) + 1, kx + s * (ow - 1) + 1],
                &[s, s],
            ));
        }
    }
    taps
}
