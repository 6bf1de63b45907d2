//! Property test of the integer pipeline: random small models, planned by
//! `qatc::int::build` and run by `qatc::int::engine::run_image`, against a
//! plain reference written here from the documented formulas
//! (`docs/export.md`, "How a model becomes integers", "Rounding modes").
//!
//! Each case draws a tiny model (an input quantizer, a stem conv + BN +
//! activation, a block of two convs with BNs and an optional residual add
//! quantized after the add, an adaptive average pool with or without a
//! quantizer, a linear layer), random bit-widths (2..=8 and 16, activations
//! mPACT or PACT, optional ReLU/ReLU6), random weights, BN statistics
//! (including near-zero and huge variances, huge biases), clipping values,
//! fixed-point formats per layer class, and a few images. The reference
//! recomputes every integer from the float parameters: the input quantizer
//! and the DoReFa weight integers in float32 as documented, every constant
//! as `round(v * 2^frac)` of its exact f64 value (halves away from zero),
//! every sum in i128, every shift rounded to nearest with halves away from
//! zero, mPACT clamped to `[-(2^(b-1)-1), 2^(b-1)-1]`, average pools kept as
//! window sums with the division folded into the next requantization.
//! The same cases run under `Rounding::Trunc` against the seed's formulas:
//! constants through the seed's float32 `fixed_type` (BN factors and scales
//! in float32), shifts and the pool's mean truncated toward zero, the
//! pooled features rescaled with a floor division and clamped one higher,
//! mPACT clamped to `[-2^(b-1), 2^(b-1)-1]` (logits not compared there: the
//! seed's float32 summation order is out of scope; the accumulators are).
//!
//! `QATC_PROPERTY_CASES=N` changes the number of cases per mode;
//! `QATC_PROPERTY_SEED=0x...` reruns the one case a failure names.
//!
//! Asserted, for every case:
//! - every integer tensor of the engine (activations, conv and linear
//!   accumulators, pool sums) and the final accumulators are bit-equal to
//!   the reference's, and the logits are the documented f64 sum rounded
//!   once to f32;
//! - with `saturate_constants: true` the constants whose integer part does
//!   not fit their format are clamped (and listed, once each);
//! - with `saturate_constants: false`, the build fails with
//!   `IntError::FormatOverflow` naming a layer, constant and value that the
//!   reference finds overflowing, or succeeds only if every overflowing
//!   channel was folded and is provably constant (its real pre-clamp value
//!   stays more than one step beyond the clamp for every reachable input,
//!   computed here from exact per-channel bounds, which are never larger
//!   than the plan's) and every such channel is listed in `plan.folded`.
//!
//! Why this holds for any random input: the engine computes integer sums
//! exactly (i32 only where the plan proves the width enough, i64/i128
//! otherwise) and each rounding is a pure function of an exact integer and
//! a power of two, so the engine and the reference, both computing the
//! documented formula without intermediate loss, must agree bit for bit;
//! the only float steps (input quantizer, weight integers, constants,
//! logits) are computed from the same float32 parameters by the documented
//! expressions, in the same order of f64 operations.

use qatc::driver::{self, Source, Syntax};
use qatc::int::plan::Layer;
use qatc::int::{self, engine, Checkpoint, FixedFormat, IntError, PlanOptions, Rounding};
use std::collections::{BTreeMap, BTreeSet};

// ---------------------------------------------------------------- PRNG

/// splitmix64: small, deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    /// `exp(uniform(ln lo, ln hi))`.
    fn log_range(&mut self, lo: f64, hi: f64) -> f64 {
        self.range(lo.ln(), hi.ln()).exp()
    }
    fn sign(&mut self) -> f64 {
        if self.chance(0.5) {
            1.0
        } else {
            -1.0
        }
    }
}

// ---------------------------------------------------------------- the model

#[derive(Clone, Copy, Debug, PartialEq)]
enum Qz {
    Mpact,
    Pact,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rect {
    None,
    Relu,
    Relu6,
}

/// An activation quantizer with its clipping value (and the rectifier that
/// precedes it, if any).
#[derive(Clone, Copy, Debug)]
struct Act {
    q: Qz,
    bits: u32,
    alpha: f32,
    rect: Rect,
}

impl Act {
    /// Largest integer: `2^(b-1)-1` (mPACT) or `2^b-1` (PACT).
    fn r(&self) -> i128 {
        match self.q {
            Qz::Mpact => (1i128 << (self.bits - 1)) - 1,
            Qz::Pact => (1i128 << self.bits) - 1,
        }
    }
    /// value = q / scale.
    fn scale(&self) -> f64 {
        self.r() as f64 / self.alpha as f64
    }
    /// The clamp range, the rectifier applied: mPACT `[-r, r]` under
    /// `nearest` (the fake quantizer's), `[-r-1, r]` under `trunc` (the
    /// seed's); ReLU6's top `6 * scale` rounded, or truncated under `trunc`.
    fn range(&self, trunc: bool) -> (i128, i128) {
        let r = self.r();
        let (mut lo, mut hi) = match self.q {
            Qz::Mpact if trunc => (-r - 1, r),
            Qz::Mpact => (-r, r),
            Qz::Pact => (0, r),
        };
        match self.rect {
            Rect::None => {}
            Rect::Relu => lo = lo.max(0),
            Rect::Relu6 => {
                lo = lo.max(0);
                let six = 6.0 * self.scale();
                hi = hi.min(if trunc { six.trunc() } else { six.round() } as i128);
            }
        }
        (lo, hi)
    }
    fn spec(&self) -> String {
        let q = match self.q {
            Qz::Mpact => "mpact(2)",
            Qz::Pact => "pact(2)",
        };
        format!("act({}, {q})", self.bits)
    }
    fn rect_spec(&self) -> &'static str {
        match self.rect {
            Rect::None => "",
            Rect::Relu => "relu -> ",
            Rect::Relu6 => "relu6 -> ",
        }
    }
}

#[derive(Clone, Debug)]
struct Bn {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
}

#[derive(Clone, Debug)]
struct Case {
    seed: u64,
    c: usize,
    hw: usize,
    f: usize,
    classes: usize,
    q0: Act,
    stem_k: usize,
    stem_stride: usize,
    ws: u32,
    a_stem: Act,
    k1: usize,
    k2: usize,
    wb: u32,
    a1: Act,
    residual: bool,
    a_out: Act,
    /// The quantizer after the pool, and whether it stands in the fc's
    /// section (fc format) rather than the head's.
    pool_act: Option<(Act, bool)>,
    wf: u32,
    formats: [FixedFormat; 4],
    saturate: bool,
    w_stem: Vec<f32>,
    bn_stem: Bn,
    w1: Vec<f32>,
    bn1: Bn,
    w2: Vec<f32>,
    bn2: Bn,
    w_fc: Vec<f32>,
    b_fc: Vec<f32>,
    images: Vec<Vec<f32>>,
}

const STEM: usize = 0;
const BLOCK: usize = 1;
const HEAD: usize = 2;
const FC: usize = 3;

fn gen_bits(rng: &mut Rng) -> u32 {
    rng.pick(&[2, 3, 4, 5, 6, 7, 8, 16])
}

fn gen_alpha(rng: &mut Rng) -> f32 {
    if rng.chance(0.25) {
        // Powers of two: exact scales, many rounding ties.
        2f32.powi(rng.below(6) as i32 - 2)
    } else if rng.chance(0.1) {
        // Tiny clipping values: everything saturates.
        rng.log_range(1e-3, 0.05) as f32
    } else {
        rng.log_range(0.1, 12.0) as f32
    }
}

fn gen_act(rng: &mut Rng, rect: bool) -> Act {
    let q = if rng.chance(0.7) { Qz::Mpact } else { Qz::Pact };
    let rect = if rect {
        rng.pick(&[Rect::None, Rect::None, Rect::Relu, Rect::Relu6])
    } else {
        Rect::None
    };
    Act {
        q,
        bits: gen_bits(rng),
        alpha: gen_alpha(rng),
        rect,
    }
}

fn gen_weights(rng: &mut Rng, n: usize) -> Vec<f32> {
    let scale = rng.log_range(0.01, 3.0);
    let zero = rng.chance(0.02);
    (0..n)
        .map(|_| {
            if zero || rng.chance(0.05) {
                0.0
            } else {
                (rng.range(-1.0, 1.0) * scale) as f32
            }
        })
        .collect()
}

fn gen_bn(rng: &mut Rng, c: usize) -> Bn {
    let wild = rng.chance(0.3);
    let mut bn = Bn {
        gamma: vec![],
        beta: vec![],
        mean: vec![],
        var: vec![],
    };
    for _ in 0..c {
        let big = wild && rng.chance(0.4);
        let gamma = rng.sign() * rng.log_range(0.05, 3.0) * if big { 50.0 } else { 1.0 };
        let beta = rng.range(-1.0, 1.0) * if big && rng.chance(0.5) { 300.0 } else { 1.0 };
        let mean = rng.range(-1.0, 1.0) * if big && rng.chance(0.5) { 100.0 } else { 1.0 };
        let var = if big && rng.chance(0.3) {
            0.0
        } else if big {
            rng.log_range(1e-7, 1e4)
        } else {
            rng.log_range(0.05, 4.0)
        };
        bn.gamma.push(gamma as f32);
        bn.beta.push(beta as f32);
        bn.mean.push(mean as f32);
        bn.var.push(var as f32);
    }
    bn
}

fn gen_format(rng: &mut Rng, kind: usize) -> FixedFormat {
    if rng.chance(0.4) {
        // The seed's defaults.
        return if kind == BLOCK {
            FixedFormat::new(32, 10)
        } else {
            FixedFormat::new(32, 16)
        };
    }
    let bits = rng.pick(&[8u32, 12, 16, 20, 24, 32]);
    let int_bits = if rng.chance(0.2) {
        1 + rng.below(bits.min(20) as u64) as u32
    } else {
        bits.min(6 + rng.below(15) as u32)
    };
    FixedFormat::new(bits, int_bits)
}

fn gen_case(seed: u64) -> Case {
    let mut rng = Rng(seed);
    let c = 1 + rng.below(3) as usize;
    let hw = rng.pick(&[4usize, 5, 6]);
    let f = 1 + rng.below(4) as usize;
    let classes = 1 + rng.below(3) as usize;
    let stem_k = rng.pick(&[1usize, 3]);
    let stem_stride = if hw % 2 == 0 && rng.chance(0.3) { 2 } else { 1 };
    let k1 = rng.pick(&[1usize, 3]);
    let k2 = rng.pick(&[1usize, 3]);
    let q0 = gen_act(&mut rng, false);
    let a_stem = gen_act(&mut rng, true);
    let a1 = gen_act(&mut rng, true);
    let a_out = gen_act(&mut rng, true);
    let pool_act = if rng.chance(0.7) {
        Some((gen_act(&mut rng, false), rng.chance(0.3)))
    } else {
        None
    };
    let (ws, wb, wf) = (gen_bits(&mut rng), gen_bits(&mut rng), gen_bits(&mut rng));
    let formats = [
        gen_format(&mut rng, STEM),
        gen_format(&mut rng, BLOCK),
        gen_format(&mut rng, HEAD),
        gen_format(&mut rng, FC),
    ];
    let saturate = rng.chance(0.35);
    let w_stem = gen_weights(&mut rng, f * c * stem_k * stem_k);
    let bn_stem = gen_bn(&mut rng, f);
    let w1 = gen_weights(&mut rng, f * f * k1 * k1);
    let bn1 = gen_bn(&mut rng, f);
    let w2 = gen_weights(&mut rng, f * f * k2 * k2);
    let bn2 = gen_bn(&mut rng, f);
    let w_fc = gen_weights(&mut rng, classes * f);
    let b_fc = (0..classes).map(|_| rng.range(-2.0, 2.0) as f32).collect();
    let dyadic = rng.chance(0.3);
    let spread = rng.pick(&[0.5f64, 1.0, 2.0]) * q0.alpha as f64;
    let images = (0..2)
        .map(|_| {
            (0..c * hw * hw)
                .map(|_| {
                    if dyadic {
                        // Multiples of 1/8: with power-of-two clipping
                        // values, many exact rounding ties.
                        (rng.range(-spread, spread) * 8.0).round() as f32 / 8.0
                    } else {
                        rng.range(-spread, spread) as f32
                    }
                })
                .collect()
        })
        .collect();
    Case {
        seed,
        c,
        hw,
        f,
        classes,
        q0,
        stem_k,
        stem_stride,
        ws,
        a_stem,
        k1,
        k2,
        wb,
        a1,
        residual: rng.chance(0.6),
        a_out,
        pool_act,
        wf,
        formats,
        saturate,
        w_stem,
        bn_stem,
        w1,
        bn1,
        w2,
        bn2,
        w_fc,
        b_fc,
        images,
    }
}

impl Case {
    fn spec(&self) -> String {
        let (head, fc) = match &self.pool_act {
            None => (String::new(), String::new()),
            Some((a, false)) => (format!(" -> {} as a", a.spec()), String::new()),
            Some((a, true)) => (String::new(), format!("{} as a -> ", a.spec())),
        };
        format!(
            r#"
model prop {{
  input {c}x{hw}x{hw}
  classes {classes}
  quant {{
    weights dorefa
    acts mpact(2)
  }}
  block res(cout) {{
    y = x -> conv(cout, kernel: {k1}) as conv1 -> bn as bn1 -> {r1}{a1} as a1
    y = y -> conv(cout, kernel: {k2}) as conv2 -> bn as bn2
    {add}
    return y -> {ro}{ao} as out
  }}
  stem: {q0} as q -> conv({f}, kernel: {sk}, stride: {ss}) as conv -> bn as bn -> {rs}{as_} as a
  stage s: res x1 (cout: {f})
  head: adaptive_avgpool(1) as pool{head}
  fc: {fc}flatten -> linear(classes) as fc
  profile p {{
    stem {{ w {ws} }}
    stage s {{ w {wb} }}
    fc {{ w {wf} }}
  }}
}}
"#,
            c = self.c,
            hw = self.hw,
            classes = self.classes,
            k1 = self.k1,
            k2 = self.k2,
            r1 = self.a1.rect_spec(),
            a1 = self.a1.spec(),
            add = if self.residual { "y += x" } else { "" },
            ro = self.a_out.rect_spec(),
            ao = self.a_out.spec(),
            q0 = self.q0.spec(),
            f = self.f,
            sk = self.stem_k,
            ss = self.stem_stride,
            rs = self.a_stem.rect_spec(),
            as_ = self.a_stem.spec(),
            ws = self.ws,
            wb = self.wb,
            wf = self.wf,
        )
    }

    fn pool_act_name(&self) -> Option<&'static str> {
        match self.pool_act {
            None => None,
            Some((_, false)) => Some("head.a"),
            Some((_, true)) => Some("fc.a"),
        }
    }

    fn checkpoint(&self) -> Checkpoint {
        let mut ck = Checkpoint::default();
        let mut put = |name: &str, shape: Vec<usize>, v: Vec<f32>| {
            ck.tensors.insert(name.to_string(), (shape, v));
        };
        let (c, f) = (self.c, self.f);
        put("stem.q.alpha", vec![], vec![self.q0.alpha]);
        put(
            "stem.conv.weight",
            vec![f, c, self.stem_k, self.stem_k],
            self.w_stem.clone(),
        );
        for (name, bn) in [
            ("stem.bn", &self.bn_stem),
            ("s.0.bn1", &self.bn1),
            ("s.0.bn2", &self.bn2),
        ] {
            put(&format!("{name}.weight"), vec![f], bn.gamma.clone());
            put(&format!("{name}.bias"), vec![f], bn.beta.clone());
            put(&format!("{name}.running_mean"), vec![f], bn.mean.clone());
            put(&format!("{name}.running_var"), vec![f], bn.var.clone());
        }
        put("stem.a.alpha", vec![], vec![self.a_stem.alpha]);
        put(
            "s.0.conv1.weight",
            vec![f, f, self.k1, self.k1],
            self.w1.clone(),
        );
        put("s.0.a1.alpha", vec![], vec![self.a1.alpha]);
        put(
            "s.0.conv2.weight",
            vec![f, f, self.k2, self.k2],
            self.w2.clone(),
        );
        put("s.0.out.alpha", vec![], vec![self.a_out.alpha]);
        if let (Some((a, _)), Some(name)) = (&self.pool_act, self.pool_act_name()) {
            put(&format!("{name}.alpha"), vec![], vec![a.alpha]);
        }
        put("fc.fc.weight", vec![self.classes, f], self.w_fc.clone());
        put("fc.fc.bias", vec![self.classes], self.b_fc.clone());
        ck
    }
}

// ---------------------------------------------------------------- reference

/// An integer feature map `[C, H, W]`.
#[derive(Clone, Debug)]
struct Map {
    c: usize,
    h: usize,
    w: usize,
    v: Vec<i128>,
}

/// `n / d` rounded to nearest, halves away from zero (`d > 0`).
fn div_nearest(n: i128, d: i128) -> i128 {
    let (q, r) = (n / d, n % d);
    if 2 * r.abs() >= d {
        q + n.signum()
    } else {
        q
    }
}

/// The input quantizer, in float32 as documented:
/// `q = round_half_even(clamp(x, lo, hi) * ((1 / a) * r))`.
fn quantize_input(x: &[f32], act: &Act, c: usize, hw: usize) -> Map {
    let a = act.alpha;
    let r = act.r() as f32;
    let (lo, hi) = match act.q {
        Qz::Mpact => (-a, a),
        Qz::Pact => (0.0, a),
    };
    let gain = (1.0 / a) * r;
    let v = x
        .iter()
        .map(|&x| (x.clamp(lo, hi) * gain).round_ties_even() as i128)
        .collect();
    Map { c, h: hw, w: hw, v }
}

/// The seed's DoReFa weight integers (`docs/export.md`), float32:
/// `t = tanh(w) / max|tanh(w)|`, `q = round_half_even(t * (2^(b-1)-1))`,
/// 2-bit: `sign(t)`. Returns the integers and their scale `2^(b-1)-1`.
fn dorefa(w: &[f32], bits: u32) -> (Vec<i128>, f64) {
    let t: Vec<f32> = w.iter().map(|&x| (x as f64).tanh() as f32).collect();
    let mut max = t.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        max = 1.0;
    }
    let n = ((1i64 << (bits - 1)) - 1) as f32;
    let q = t
        .iter()
        .map(|&x| {
            let u = x / max;
            if bits == 2 {
                if u > 0.0 {
                    1
                } else if u < 0.0 {
                    -1
                } else {
                    0
                }
            } else {
                (u * n).round_ties_even() as i128
            }
        })
        .collect();
    (q, n as f64)
}

/// A convolution with zero padding `(k-1)/2`, exact.
fn conv(x: &Map, w: &[i128], cout: usize, k: usize, stride: usize) -> Map {
    let p = (k - 1) / 2;
    let oh = (x.h + 2 * p - k) / stride + 1;
    let ow = (x.w + 2 * p - k) / stride + 1;
    let mut v = vec![0i128; cout * oh * ow];
    for o in 0..cout {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = 0i128;
                for i in 0..x.c {
                    for ky in 0..k {
                        for kx in 0..k {
                            let y = (oy * stride + ky) as isize - p as isize;
                            let xx = (ox * stride + kx) as isize - p as isize;
                            if y < 0 || xx < 0 || y >= x.h as isize || xx >= x.w as isize {
                                continue;
                            }
                            let wi = ((o * x.c + i) * k + ky) * k + kx;
                            s += w[wi] * x.v[(i * x.h + y as usize) * x.w + xx as usize];
                        }
                    }
                }
                v[(o * oh + oy) * ow + ox] = s;
            }
        }
    }
    Map {
        c: cout,
        h: oh,
        w: ow,
        v,
    }
}

/// BN factors, in f64 (`nearest`) and as the seed computes them in float32
/// (`trunc`): `k = gamma / sqrt(var + eps)`, `b = beta - gamma * mean / sqrt(var + eps)`,
/// with the seed's float32 square root (`qatc::int::seed_sqrt`: libtorch's,
/// which is not correctly rounded, where it can be loaded), an input of the
/// seed's formula as `tanh` is.
struct BnFactors {
    k: Vec<f64>,
    b: Vec<f64>,
    k32: Vec<f32>,
    b32: Vec<f32>,
}

fn bn_factors(bn: &Bn) -> BnFactors {
    let eps = 1e-5f32;
    let mut out = BnFactors {
        k: vec![],
        b: vec![],
        k32: vec![],
        b32: vec![],
    };
    let var_eps: Vec<f32> = bn.var.iter().map(|v| v + eps).collect();
    let std32s = qatc::int::seed_sqrt::sqrt_f32(&var_eps);
    for (c, &std32) in std32s.iter().enumerate() {
        let std = (bn.var[c] as f64 + eps as f64).sqrt();
        let (g, beta, mean) = (bn.gamma[c] as f64, bn.beta[c] as f64, bn.mean[c] as f64);
        out.k.push(g / std);
        out.b.push(beta - g * mean / std);
        out.k32.push(bn.gamma[c] / std32);
        out.b32
            .push(bn.beta[c] - (bn.gamma[c] * bn.mean[c]) / std32);
    }
    out
}

/// One term of a pending sum: real value = `k[c] * src / denom`.
struct Term<'a> {
    src: &'a Map,
    denom: f64,
    k: Vec<f64>,
    /// The BN factor in float32 (`trunc`); `None`: no BN on this term.
    k32: Option<Vec<f32>>,
    /// Per channel, the largest |src| any input can give (exact).
    bound: Vec<f64>,
}

/// A constant whose integer part does not fit its format.
#[derive(Clone, Debug)]
struct Overflow {
    layer: String,
    channel: usize,
    what: &'static str,
    value: f64,
    /// The channel's output is the same clamp bound for every reachable
    /// input (by exact bounds).
    constant: bool,
}

/// `nearest`: `round(v * 2^frac)` (halves away from zero) from the exact
/// value, clamped to `bits`, and whether it fits.
fn fixed_exact(v: f64, fmt: FixedFormat) -> (i128, bool) {
    let max = (1i128 << (fmt.bits - 1)) - 1;
    let min = -(1i128 << (fmt.bits - 1));
    if !v.is_finite() {
        return (if v > 0.0 { max } else { min }, false);
    }
    let q = (v * 2f64.powi(fmt.frac() as i32)).round();
    if q > max as f64 {
        (max, false)
    } else if q < min as f64 {
        (min, false)
    } else {
        (q as i128, true)
    }
}

/// `trunc`: the seed's `fixed_type` in float32 (`docs/export.md`): the
/// integer part rounded half to even and clamped to `int_bits` signed bits,
/// the fraction rounded half to even to `frac` bits, their sum times
/// `2^frac` truncated to int32. Returns it and whether the integer part fit.
fn fixed_seed_ref(v: f32, fmt: FixedFormat) -> (i128, bool) {
    if !v.is_finite() {
        return (0, false);
    }
    let fs = 2f32.powi(fmt.frac() as i32);
    let imax = ((1i64 << (fmt.int_bits - 1)) - 1) as f32;
    let int = v.round_ties_even();
    let frac = v - int;
    let fits = int <= imax && int >= -imax - 1.0;
    let int = int.clamp(-imax - 1.0, imax);
    let frac = (frac * fs).round_ties_even() / fs;
    let scaled = (int + frac) * fs;
    let q = if (-2147483648.0..2147483648.0).contains(&scaled) {
        scaled.trunc() as i128
    } else {
        i32::MIN as i128
    };
    (q, fits)
}

#[derive(Default)]
struct Reference {
    trunc: bool,
    saturate: bool,
    /// Integer tensors by IR node name, in pipeline order.
    maps: Vec<(String, Vec<i128>)>,
    acc: Vec<i128>,
    logits: Vec<f32>,
    overflows: Vec<Overflow>,
    /// Layer order of the requantizations.
    layers: Vec<String>,
}

impl Reference {
    /// `out = clamp(div(sum_t mult_t * src_t + bias, 2^frac), lo, hi)`; the
    /// division rounds to nearest (`nearest`), toward zero (`trunc`), or,
    /// `floor_pooled` (`trunc`'s rescale of pooled features), toward minus
    /// infinity with the top one higher.
    #[allow(clippy::too_many_arguments)]
    fn requant(
        &mut self,
        layer: &str,
        terms: &[Term],
        bias: &[f64],
        bias32: &[f32],
        act: &Act,
        fmt: FixedFormat,
        floor_pooled: bool,
    ) -> Map {
        self.layers.push(layer.to_string());
        let trunc = self.trunc;
        let gain = act.scale();
        let (lo, hi) = act.range(trunc);
        let src0 = terms[0].src;
        let p = src0.h * src0.w;
        let mut v = vec![0i128; src0.c * p];
        for ch in 0..src0.c {
            let mut mults = vec![];
            let mut overflow = vec![];
            for t in terms {
                let real = gain / t.denom * t.k[ch];
                let (m, fits, value) = if trunc {
                    let r32 = (gain / t.denom) as f32;
                    let m32 = t.k32.as_ref().map_or(r32, |k| r32 * k[ch]);
                    let (m, fits) = fixed_seed_ref(m32, fmt);
                    (m, fits, m32 as f64)
                } else {
                    let (m, fits) = fixed_exact(real, fmt);
                    (m, fits, real)
                };
                if !fits {
                    overflow.push(("multiplier", value));
                }
                mults.push(m);
            }
            let real_b = gain * bias[ch];
            let (b, fits, value) = if trunc {
                let b32 = gain as f32 * bias32[ch];
                let (b, fits) = fixed_seed_ref(b32, fmt);
                (b, fits, b32 as f64)
            } else {
                let (b, fits) = fixed_exact(real_b, fmt);
                (b, fits, real_b)
            };
            if !fits {
                overflow.push(("bias", value));
            }
            // The reach of the pre-clamp value (in output steps) from its bias.
            let reach: f64 = terms
                .iter()
                .map(|t| (t.k[ch] / t.denom).abs() * t.bound[ch])
                .sum::<f64>()
                * gain;
            let constant = if real_b + reach < lo as f64 - 1.0 {
                Some(lo)
            } else if real_b - reach > hi as f64 + 1.0 {
                Some(hi)
            } else {
                None
            };
            for &(what, value) in &overflow {
                self.overflows.push(Overflow {
                    layer: layer.to_string(),
                    channel: ch,
                    what,
                    value,
                    constant: constant.is_some(),
                });
            }
            let shift = 1i128 << fmt.frac();
            let top = if floor_pooled { hi + 1 } else { hi };
            for i in 0..p {
                let out = match constant {
                    // Folded: the documented output of a provably constant
                    // channel whose constants overflow.
                    Some(bound) if !overflow.is_empty() && !self.saturate => bound,
                    _ => {
                        let mut s = b;
                        for (t, m) in terms.iter().zip(&mults) {
                            s += m * t.src.v[ch * p + i];
                        }
                        let q = if floor_pooled {
                            s.div_euclid(shift)
                        } else if trunc {
                            s / shift
                        } else {
                            div_nearest(s, shift)
                        };
                        q.clamp(lo, top)
                    }
                };
                v[ch * p + i] = out;
            }
        }
        Map {
            c: src0.c,
            h: src0.h,
            w: src0.w,
            v,
        }
    }
}

/// Per output channel, `sum |w|` times the input bound.
fn acc_bound(w: &[i128], cout: usize, in_bound: f64) -> Vec<f64> {
    let per = w.len() / cout;
    (0..cout)
        .map(|o| {
            w[o * per..(o + 1) * per]
                .iter()
                .map(|x| x.abs() as f64)
                .sum::<f64>()
                * in_bound
        })
        .collect()
}

fn bound_of(act: &Act, trunc: bool) -> f64 {
    let (lo, hi) = act.range(trunc);
    lo.abs().max(hi.abs()) as f64
}

/// The reference inference of one image.
fn reference(case: &Case, image: &[f32], rounding: Rounding) -> Reference {
    let trunc = rounding == Rounding::Trunc;
    let mut rf = Reference {
        trunc,
        saturate: case.saturate,
        ..Reference::default()
    };
    let f = case.f;
    let fmt = case.formats;
    let x0 = quantize_input(image, &case.q0, case.c, case.hw);
    rf.maps.push(("stem.q".into(), x0.v.clone()));
    // Stem conv + BN + act.
    let (ws, sws) = dorefa(&case.w_stem, case.ws);
    let acc0 = conv(&x0, &ws, f, case.stem_k, case.stem_stride);
    rf.maps.push(("stem.conv".into(), acc0.v.clone()));
    let bn = bn_factors(&case.bn_stem);
    let s0 = case.q0.scale();
    let x1 = rf.requant(
        "stem.a",
        &[Term {
            src: &acc0,
            denom: s0 * sws,
            k: bn.k,
            k32: Some(bn.k32),
            bound: acc_bound(&ws, f, bound_of(&case.q0, trunc)),
        }],
        &bn.b,
        &bn.b32,
        &case.a_stem,
        fmt[STEM],
        false,
    );
    rf.maps.push(("stem.a".into(), x1.v.clone()));
    // Block: conv1 + BN + act, conv2 + BN (+ identity), act.
    let s1 = case.a_stem.scale();
    let (w1, sw1) = dorefa(&case.w1, case.wb);
    let acc1 = conv(&x1, &w1, f, case.k1, 1);
    rf.maps.push(("s.0.conv1".into(), acc1.v.clone()));
    let bn = bn_factors(&case.bn1);
    let y1 = rf.requant(
        "s.0.a1",
        &[Term {
            src: &acc1,
            denom: s1 * sw1,
            k: bn.k,
            k32: Some(bn.k32),
            bound: acc_bound(&w1, f, bound_of(&case.a_stem, trunc)),
        }],
        &bn.b,
        &bn.b32,
        &case.a1,
        fmt[BLOCK],
        false,
    );
    rf.maps.push(("s.0.a1".into(), y1.v.clone()));
    let (w2, sw2) = dorefa(&case.w2, case.wb);
    let acc2 = conv(&y1, &w2, f, case.k2, 1);
    rf.maps.push(("s.0.conv2".into(), acc2.v.clone()));
    let bn = bn_factors(&case.bn2);
    let mut terms = vec![Term {
        src: &acc2,
        denom: case.a1.scale() * sw2,
        k: bn.k,
        k32: Some(bn.k32),
        bound: acc_bound(&w2, f, bound_of(&case.a1, trunc)),
    }];
    if case.residual {
        // The identity, rescaled (its bias is 0).
        terms.push(Term {
            src: &x1,
            denom: s1,
            k: vec![1.0; f],
            k32: None,
            bound: vec![bound_of(&case.a_stem, trunc); f],
        });
    }
    let y2 = rf.requant(
        "s.0.out",
        &terms,
        &bn.b,
        &bn.b32,
        &case.a_out,
        fmt[BLOCK],
        false,
    );
    rf.maps.push(("s.0.out".into(), y2.v.clone()));
    // Adaptive average pool to 1x1: the window sums (`nearest`, the
    // division goes into the next scale) or the mean truncated (`trunc`).
    let n = y2.h * y2.w;
    let pooled: Vec<i128> = (0..f)
        .map(|c| {
            let sum: i128 = y2.v[c * n..(c + 1) * n].iter().sum();
            if trunc {
                sum / n as i128
            } else {
                sum
            }
        })
        .collect();
    rf.maps.push(("head.pool".into(), pooled.clone()));
    let pooled = Map {
        c: f,
        h: 1,
        w: 1,
        v: pooled,
    };
    let (s_pool, pool_bound) = if trunc {
        (case.a_out.scale(), bound_of(&case.a_out, trunc))
    } else {
        (
            case.a_out.scale() * n as f64,
            bound_of(&case.a_out, trunc) * n as f64,
        )
    };
    let (fc_in, s_fc) = match (&case.pool_act, case.pool_act_name()) {
        (Some((a, in_fc)), Some(name)) => {
            let m = rf.requant(
                name,
                &[Term {
                    src: &pooled,
                    denom: s_pool,
                    k: vec![1.0; f],
                    k32: None,
                    bound: vec![pool_bound; f],
                }],
                &vec![0.0; f],
                &vec![0.0; f],
                a,
                if *in_fc { fmt[FC] } else { fmt[HEAD] },
                trunc,
            );
            rf.maps.push((name.to_string(), m.v.clone()));
            (m, a.scale())
        }
        _ => (pooled, s_pool),
    };
    // Linear.
    let (wf, swf) = dorefa(&case.w_fc, case.wf);
    let acc = conv(&fc_in, &wf, case.classes, 1, 1);
    rf.maps.push(("fc.fc".into(), acc.v.clone()));
    // Logits (`nearest`): `acc * (1 / (scale_in * scale_w)) + bias` in
    // f64, rounded once. (`trunc` follows the seed's float32 order; only
    // its accumulators are compared.)
    let kf = 1.0 / (s_fc * swf);
    rf.logits = (0..case.classes)
        .map(|c| (acc.v[c] as f64 * kf + case.b_fc[c] as f64) as f32)
        .collect();
    rf.acc = acc.v;
    rf
}

// ---------------------------------------------------------------- the test

#[derive(Default, Debug)]
struct Tally {
    cases: usize,
    compared: usize,
    images: usize,
    format_errors: usize,
    saturated_cases: usize,
    folded_cases: usize,
    saturated_outputs: usize,
}

/// The layer of a `plan.folded` line: `layer: channel c -> v (why)`.
fn parse_folded(line: &str) -> (String, usize) {
    let (layer, rest) = line.split_once(": channel ").expect("folded line");
    let ch = rest.split_whitespace().next().unwrap().parse().unwrap();
    (layer.to_string(), ch)
}

fn format_of(case: &Case, layer: &str) -> FixedFormat {
    match layer {
        "stem.a" => case.formats[STEM],
        "head.a" => case.formats[HEAD],
        "fc.a" => case.formats[FC],
        _ => case.formats[BLOCK],
    }
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

/// Runs one case; panics with the seed on any disagreement.
fn run_case(case: &Case, rounding: Rounding, tally: &mut Tally) {
    let text = case.spec();
    let src = Source::from_text("prop.qspec", &text, Syntax::Qspec);
    let g = driver::compile(&src, Some("p"))
        .unwrap_or_else(|d| panic!("seed {}: spec does not compile: {d:?}\n{text}", case.seed));
    let ck = case.checkpoint();
    // The checkpoint holds exactly the variables the graph reads.
    let want: BTreeMap<String, Vec<usize>> = int::checkpoint::variables(&g).into_iter().collect();
    let have: BTreeMap<String, Vec<usize>> = ck
        .tensors
        .iter()
        .map(|(k, (s, _))| (k.clone(), s.clone()))
        .collect();
    assert_eq!(want, have, "seed {}: checkpoint variables", case.seed);
    let opts = PlanOptions {
        rounding,
        formats: int::Formats {
            stem: case.formats[STEM],
            block: case.formats[BLOCK],
            head: case.formats[HEAD],
            fc: case.formats[FC],
            bn: None,
        },
        saturate_constants: case.saturate,
    };
    tally.cases += 1;
    let refs: Vec<Reference> = case
        .images
        .iter()
        .map(|x| reference(case, x, rounding))
        .collect();
    let r0 = &refs[0];
    let ctx = || {
        format!(
            "seed {:#x}, {rounding}, formats {:?}, saturate {} (rerun alone: QATC_PROPERTY_SEED={:#x})\n{text}",
            case.seed,
            case.formats.map(|f| f.to_string()),
            case.saturate,
            case.seed
        )
    };
    let plan = match int::build(&g, &ck, opts) {
        Ok(plan) => plan,
        Err(IntError::FormatOverflow {
            layer,
            what,
            value,
            format,
        }) => {
            assert!(
                !case.saturate,
                "{}: overflow error with saturate_constants",
                ctx()
            );
            assert_eq!(format, format_of(case, &layer), "{}", ctx());
            assert!(
                r0.overflows
                    .iter()
                    .any(|o| o.layer == layer && o.what == what && close(o.value, value)),
                "{}: the plan says {layer}'s {what} {value} does not fit {format}; the reference finds {:?}",
                ctx(),
                r0.overflows
            );
            // Every earlier layer's overflowing channels must have been
            // folded, hence be provably constant.
            let at = r0.layers.iter().position(|l| *l == layer).unwrap();
            for o in &r0.overflows {
                let li = r0.layers.iter().position(|l| *l == o.layer).unwrap();
                assert!(
                    li >= at || o.constant,
                    "{}: {o:?} before the error's layer {layer} is not constant",
                    ctx()
                );
            }
            tally.format_errors += 1;
            return;
        }
        Err(e) => panic!("{}: unexpected build error {e}", ctx()),
    };
    // Overflowing constants: clamped (saturate) or folded channels.
    if case.saturate {
        assert!(plan.folded.is_empty(), "{}", ctx());
        assert_eq!(
            plan.saturated.len(),
            r0.overflows.len(),
            "{}: saturated {:?}, reference {:?}",
            ctx(),
            plan.saturated,
            r0.overflows
        );
        if !r0.overflows.is_empty() {
            tally.saturated_cases += 1;
        }
    } else {
        assert!(plan.saturated.is_empty(), "{}", ctx());
        let folded: BTreeSet<(String, usize)> =
            plan.folded.iter().map(|l| parse_folded(l)).collect();
        let over: BTreeSet<(String, usize)> = r0
            .overflows
            .iter()
            .map(|o| (o.layer.clone(), o.channel))
            .collect();
        assert_eq!(
            folded,
            over,
            "{}: folded {:?}, reference overflows {:?}",
            ctx(),
            plan.folded,
            r0.overflows
        );
        for o in &r0.overflows {
            assert!(o.constant, "{}: folded {o:?} is not constant", ctx());
        }
        if !folded.is_empty() {
            tally.folded_cases += 1;
        }
    }
    // Weights as documented.
    for l in &plan.layers {
        if let Layer::Conv(c) = l {
            let (w, bits) = match c.name.as_str() {
                "stem.conv" => (&case.w_stem, case.ws),
                "s.0.conv1" => (&case.w1, case.wb),
                "s.0.conv2" => (&case.w2, case.wb),
                "fc.fc" => (&case.w_fc, case.wf),
                other => panic!("{}: unexpected conv {other}", ctx()),
            };
            let want: Vec<i64> = dorefa(w, bits).0.iter().map(|&x| x as i64).collect();
            let got: Vec<i64> = c.weights.iter().map(|&x| x as i64).collect();
            assert_eq!(got, want, "{}: weights of {}", ctx(), c.name);
        }
    }
    let conv_out: BTreeMap<&str, usize> = plan
        .layers
        .iter()
        .filter_map(|l| match l {
            Layer::Conv(c) => Some((c.name.as_str(), c.output)),
            _ => None,
        })
        .collect();
    let weights = engine::Weights::new(&plan);
    let mut ws = engine::Workspace::new(&plan);
    for (x, rf) in case.images.iter().zip(&refs) {
        let out = engine::run_image(&plan, &weights, x, &mut ws, &Default::default())
            .unwrap_or_else(|e| panic!("{}: run_image: {e}", ctx()));
        for (name, want) in &rf.maps {
            let t = plan
                .tensor_of(name)
                .or_else(|| conv_out.get(name.as_str()).copied())
                .unwrap_or_else(|| panic!("{}: no tensor for {name}", ctx()));
            let got: Vec<i128> = ws
                .tensor(t)
                .unwrap()
                .to_i64()
                .iter()
                .map(|&v| v as i128)
                .collect();
            assert_eq!(
                &got,
                want,
                "{}: tensor {name}, image {x:?}\ncase {case:?}",
                ctx()
            );
        }
        let acc: Vec<i128> = out.acc.iter().map(|&v| v as i128).collect();
        assert_eq!(acc, rf.acc, "{}: accumulators", ctx());
        if rounding == Rounding::Nearest {
            assert_eq!(
                out.logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                rf.logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{}: logits {:?} against {:?}",
                ctx(),
                out.logits,
                rf.logits
            );
        }
        // Count outputs at a clamp bound (saturation is exercised).
        for (name, a) in [
            ("stem.a", &case.a_stem),
            ("s.0.a1", &case.a1),
            ("s.0.out", &case.a_out),
        ] {
            let (lo, hi) = a.range(rounding == Rounding::Trunc);
            let map = &rf.maps.iter().find(|(n, _)| n == name).unwrap().1;
            tally.saturated_outputs += map.iter().filter(|&&v| v == lo || v == hi).count();
        }
        tally.images += 1;
    }
    tally.compared += 1;
}

/// Runs `QATC_PROPERTY_CASES` cases (default `default`) from a fixed seed,
/// or the one case `QATC_PROPERTY_SEED` names.
fn run_all(rounding: Rounding, base: u64, default: u64) -> Tally {
    let mut tally = Tally::default();
    if let Some(seed) = std::env::var("QATC_PROPERTY_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
    {
        run_case(&gen_case(seed), rounding, &mut tally);
        return tally;
    }
    let n: u64 = std::env::var("QATC_PROPERTY_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    for i in 0..n {
        run_case(&gen_case(base + i), rounding, &mut tally);
    }
    eprintln!("{rounding}: {tally:?}");
    assert_eq!(tally.cases, n as usize);
    // The draws exercise every outcome.
    if n >= 1000 {
        assert!(tally.compared * 2 > tally.cases, "{tally:?}");
        assert!(tally.format_errors > 0, "{tally:?}");
        assert!(tally.saturated_cases > 0, "{tally:?}");
        assert!(tally.folded_cases > 0, "{tally:?}");
        assert!(tally.saturated_outputs > 0, "{tally:?}");
    }
    tally
}

#[test]
fn nearest_random_models_match_the_reference_bit_for_bit() {
    run_all(Rounding::Nearest, 0x5EED_0000_0000, 4000);
}

#[test]
fn trunc_random_models_match_the_reference_bit_for_bit() {
    run_all(Rounding::Trunc, 0x7E0C_0000_0000, 3000);
}
