//! The graph emitter of the integer export: unique value names, typed
//! initializers (int64, uint8, float32, float64), single-output nodes, and
//! the exact integer and float roundings the engine performs, built from
//! ops whose ONNX Runtime CPU kernels take the types used here.
//!
//! Every rounding is built so that it does not depend on how ONNX Runtime
//! rounds an integer division of a negative number or casts a float to an
//! integer: `Div` only ever sees a non-negative numerator and a positive
//! divisor (where truncation and floor agree), the sign is applied after
//! (`Where(x < 0, -q, q)`), and a float becomes an integer only once it is
//! integral (`Round` half to even, corrected by comparisons), so the
//! final `Cast` is exact.

use crate::builder::{attr_int, Builder};
use crate::proto::{AttributeProto, TensorProto};
use qatc_int::fixed::Div;

/// `onnx.TensorProto.DataType` values used here (the shared enum stops at
/// int64).
pub const FLOAT: i64 = 1;
pub const UINT8: i64 = 2;
pub const INT64: i64 = 7;
pub const DOUBLE: i64 = 11;

/// A divisor of [`Emitter::div_round`]: a positive constant, or one per
/// element of a `[1, 1, H, W]` grid (adaptive pooling's window sizes).
pub enum Divisor<'a> {
    Const(i64),
    Grid(&'a [i64], [usize; 2]),
}

/// Nodes and initializers under construction, each value named
/// `<base>:<n>` with a counter that keeps names unique.
pub struct Emitter {
    pub b: Builder,
    n: usize,
}

impl Emitter {
    pub fn new() -> Emitter {
        Emitter {
            b: Builder::default(),
            n: 0,
        }
    }

    /// A fresh value name derived from `base`.
    pub fn fresh(&mut self, base: &str) -> String {
        self.n += 1;
        format!("{base}:{}", self.n)
    }

    /// One node `op` reading `inputs`, writing one fresh value (the node
    /// carries the value's name); returns the value.
    pub fn op(
        &mut self,
        op: &str,
        base: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        let out = self.fresh(&format!("{base}.{}", op.to_lowercase()));
        self.b.node(op, &out, inputs, &[&out], attrs, None);
        out
    }

    /// `op` writing the value named `out` exactly (a plan tensor's name).
    pub fn op_named(&mut self, op: &str, out: &str, inputs: &[&str], attrs: Vec<AttributeProto>) {
        self.b.node(op, out, inputs, &[out], attrs, None);
    }

    /// An initializer of ONNX type `ty` from its little-endian bytes.
    pub fn init(&mut self, base: &str, dims: &[i64], ty: i64, raw: Vec<u8>) -> String {
        let name = self.fresh(base);
        self.b.input(&name);
        self.b.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(ty as i32),
            name: Some(name.clone()),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    pub fn i64s(&mut self, base: &str, dims: &[i64], v: &[i64]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(base, dims, INT64, raw)
    }

    pub fn i64_scalar(&mut self, base: &str, v: i64) -> String {
        self.i64s(base, &[], &[v])
    }

    /// A 1-D int64 list (shapes, pads, slice bounds).
    pub fn list(&mut self, base: &str, v: &[i64]) -> String {
        self.i64s(base, &[v.len() as i64], v)
    }

    pub fn u8s(&mut self, base: &str, dims: &[i64], v: &[u8]) -> String {
        self.init(base, dims, UINT8, v.to_vec())
    }

    pub fn f32s(&mut self, base: &str, dims: &[i64], v: &[f32]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(base, dims, FLOAT, raw)
    }

    pub fn f64s(&mut self, base: &str, dims: &[i64], v: &[f64]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(base, dims, DOUBLE, raw)
    }

    pub fn cast(&mut self, base: &str, x: &str, to: i64) -> String {
        self.op("Cast", base, &[x], vec![attr_int("to", to)])
    }

    pub fn bin(&mut self, op: &str, base: &str, a: &str, b: &str) -> String {
        self.op(op, base, &[a, b], vec![])
    }

    pub fn reshape(&mut self, base: &str, x: &str, shape: &[i64]) -> String {
        let s = self.list(&format!("{base}.shape"), shape);
        self.op("Reshape", base, &[x, &s], vec![])
    }

    /// `x[..., starts[i]..ends[i] step steps[i] on axes[i]]`.
    pub fn slice(
        &mut self,
        base: &str,
        x: &str,
        axes: &[i64],
        starts: &[i64],
        ends: &[i64],
        steps: &[i64],
    ) -> String {
        let s = self.list(&format!("{base}.starts"), starts);
        let e = self.list(&format!("{base}.ends"), ends);
        let a = self.list(&format!("{base}.axes"), axes);
        let t = self.list(&format!("{base}.steps"), steps);
        self.op("Slice", base, &[x, &s, &e, &a, &t], vec![])
    }

    /// Zero (or `fill`) padding of the two spatial axes of `[N, C, H, W]`.
    pub fn pad_hw(&mut self, base: &str, x: &str, p: usize, fill: Option<&str>) -> String {
        let p = p as i64;
        let pads = self.list(&format!("{base}.pads"), &[0, 0, p, p, 0, 0, p, p]);
        match fill {
            Some(v) => self.op("Pad", base, &[x, &pads, v], vec![]),
            None => self.op("Pad", base, &[x, &pads], vec![]),
        }
    }

    /// `Where(x < 0, -q, q)`: a magnitude's sign put back.
    fn signed(&mut self, base: &str, neg: &str, q: &str) -> String {
        let m = self.op("Neg", base, &[q], vec![]);
        self.op("Where", base, &[neg, &m, q], vec![])
    }

    /// `x / n` of an int64 tensor rounded as `div` says, exactly as
    /// `qatc_int::fixed::div_round` (and, for `n = 2^s`, `shift_round`):
    /// `Trunc` `sign(x) * floor(|x| / n)`, `Nearest` `sign(x) * floor((|x| +
    /// n/2) / n)` (halves away from zero), `Floor` `floor(x / n)`, which is
    /// `-floor((|x| + n - 1) / n)` for `x < 0`. Only non-negative numerators
    /// reach `Div`.
    pub fn div_round(&mut self, base: &str, x: &str, n: Divisor, div: Div) -> String {
        let (dims, ns): (Vec<i64>, Vec<i64>) = match n {
            Divisor::Const(1) => return x.to_string(),
            Divisor::Const(n) => (vec![], vec![n]),
            Divisor::Grid(v, [h, w]) => (vec![1, 1, h as i64, w as i64], v.to_vec()),
        };
        let nn = self.i64s(&format!("{base}.n"), &dims, &ns);
        let zero = self.i64_scalar(&format!("{base}.zero"), 0);
        let a = self.op("Abs", base, &[x], vec![]);
        let neg = self.bin("Less", base, x, &zero);
        let offset = |k: fn(i64) -> i64| ns.iter().map(|&v| k(v)).collect::<Vec<i64>>();
        match div {
            Div::Trunc => {
                let q = self.bin("Div", base, &a, &nn);
                self.signed(base, &neg, &q)
            }
            Div::Nearest => {
                let h = self.i64s(&format!("{base}.half"), &dims, &offset(|v| v / 2));
                let s = self.bin("Add", base, &a, &h);
                let q = self.bin("Div", base, &s, &nn);
                self.signed(base, &neg, &q)
            }
            Div::Floor => {
                let m = self.i64s(&format!("{base}.n_minus_1"), &dims, &offset(|v| v - 1));
                let up = self.bin("Add", base, &a, &m);
                let qn = self.bin("Div", base, &up, &nn);
                let qn = self.op("Neg", base, &[&qn], vec![]);
                let qp = self.bin("Div", base, &a, &nn);
                self.op("Where", base, &[&neg, &qn, &qp], vec![])
            }
        }
    }

    /// `clamp(x, lo, hi)` of an int64 tensor (`Clip`, int64 at opset 12+).
    pub fn clamp(&mut self, base: &str, x: &str, lo: i64, hi: i64) -> String {
        let l = self.i64_scalar(&format!("{base}.lo"), lo);
        let h = self.i64_scalar(&format!("{base}.hi"), hi);
        self.op("Clip", base, &[x, &l, &h], vec![])
    }

    /// A float64 tensor's values truncated toward zero, as int64 (Rust's
    /// `x as i64`): `|x|` rounded half to even, one less where that went
    /// up, the sign put back; integral before the cast, so the cast is
    /// exact.
    pub fn f64_trunc(&mut self, base: &str, x: &str) -> String {
        let zero = self.f64s(&format!("{base}.zero"), &[], &[0.0]);
        let one = self.f64s(&format!("{base}.one"), &[], &[1.0]);
        let a = self.op("Abs", base, &[x], vec![]);
        let r = self.op("Round", base, &[&a], vec![]);
        let up = self.bin("Greater", base, &r, &a);
        let down = self.bin("Sub", base, &r, &one);
        let f = self.op("Where", base, &[&up, &down, &r], vec![]);
        let neg = self.bin("Less", base, x, &zero);
        let s = self.signed(base, &neg, &f);
        self.cast(base, &s, INT64)
    }

    /// A float64 tensor's values rounded to nearest, halves away from zero
    /// (Rust's `f64::round`), as int64: `|x|` rounded half to even, one
    /// more where `|x|` was exactly halfway (`|x| - r = 0.5`, exact), the
    /// sign put back.
    pub fn f64_round_away(&mut self, base: &str, x: &str) -> String {
        let zero = self.f64s(&format!("{base}.zero"), &[], &[0.0]);
        let one = self.f64s(&format!("{base}.one"), &[], &[1.0]);
        let half = self.f64s(&format!("{base}.half"), &[], &[0.5]);
        let a = self.op("Abs", base, &[x], vec![]);
        let r = self.op("Round", base, &[&a], vec![]);
        let d = self.bin("Sub", base, &a, &r);
        let tie = self.bin("Equal", base, &d, &half);
        let up = self.bin("Add", base, &r, &one);
        let f = self.op("Where", base, &[&tie, &up, &r], vec![]);
        let neg = self.bin("Less", base, x, &zero);
        let s = self.signed(base, &neg, &f);
        self.cast(base, &s, INT64)
    }

    /// `Concat` along `axis`.
    pub fn concat(&mut self, base: &str, xs: &[String], axis: i64) -> String {
        let refs: Vec<&str> = xs.iter().map(String::as_str).collect();
        self.op("Concat", base, &refs, vec![attr_int("axis", axis)])
    }

    /// `ReduceSum` over `axes` (opset 13: axes as an input), dimensions kept.
    pub fn reduce_sum(&mut self, base: &str, x: &str, axes: &[i64]) -> String {
        let a = self.list(&format!("{base}.axes"), axes);
        self.op("ReduceSum", base, &[x, &a], vec![attr_int("keepdims", 1)])
    }

    /// `Gather` along `axis` with constant indices.
    pub fn gather(&mut self, base: &str, x: &str, idx: &[i64], axis: i64) -> String {
        let i = self.list(&format!("{base}.indices"), idx);
        self.op("Gather", base, &[x, &i], vec![attr_int("axis", axis)])
    }

    /// `Split` of `x` along `axis` into `parts` equal parts.
    pub fn split(&mut self, base: &str, x: &str, axis: i64, parts: usize) -> Vec<String> {
        let outs: Vec<String> = (0..parts)
            .map(|_| self.fresh(&format!("{base}.split")))
            .collect();
        let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        let name = self.fresh(&format!("{base}.split_node"));
        self.b.node(
            "Split",
            &name,
            &[x],
            &refs,
            vec![attr_int("axis", axis)],
            None,
        );
        outs
    }
}
