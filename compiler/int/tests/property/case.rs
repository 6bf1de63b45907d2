//! A random case of the property test: a tiny model (input quantizer, stem
//! conv + BN + activation, a block of two convs with an optional residual
//! add, average pool, linear layer) with random bit-widths, weights, BN
//! statistics, clipping values and fixed-point formats, a few images, and
//! the `.qspec` text and checkpoint the engine gets for it. Drawn from a
//! splitmix64 seed, so a failing case reruns from its seed alone.

use qatc_int::{Checkpoint, FixedFormat};

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
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
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
pub enum Qz {
    Mpact,
    Pact,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rect {
    None,
    Relu,
    Relu6,
}

/// An activation quantizer with its clipping value (and the rectifier that
/// precedes it, if any).
#[derive(Clone, Copy, Debug)]
pub struct Act {
    pub q: Qz,
    pub bits: u32,
    pub alpha: f32,
    pub rect: Rect,
}

impl Act {
    /// Largest integer: `2^(b-1)-1` (mPACT) or `2^b-1` (PACT).
    pub fn r(&self) -> i128 {
        match self.q {
            Qz::Mpact => (1i128 << (self.bits - 1)) - 1,
            Qz::Pact => (1i128 << self.bits) - 1,
        }
    }
    /// value = q / scale.
    pub fn scale(&self) -> f64 {
        self.r() as f64 / self.alpha as f64
    }
    /// The clamp range, the rectifier applied: mPACT `[-r, r]` under
    /// `nearest` (the fake quantizer's), `[-r-1, r]` under `trunc` (the
    /// seed's); ReLU6's top `6 * scale` rounded, or truncated under `trunc`.
    pub fn range(&self, trunc: bool) -> (i128, i128) {
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
    pub fn spec(&self) -> String {
        let q = match self.q {
            Qz::Mpact => "mpact(2)",
            Qz::Pact => "pact(2)",
        };
        format!("act({}, {q})", self.bits)
    }
    pub fn rect_spec(&self) -> &'static str {
        match self.rect {
            Rect::None => "",
            Rect::Relu => "relu -> ",
            Rect::Relu6 => "relu6 -> ",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Bn {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub seed: u64,
    pub c: usize,
    pub hw: usize,
    pub f: usize,
    pub classes: usize,
    pub q0: Act,
    pub stem_k: usize,
    pub stem_stride: usize,
    pub ws: u32,
    pub a_stem: Act,
    pub k1: usize,
    pub k2: usize,
    pub wb: u32,
    pub a1: Act,
    pub residual: bool,
    pub a_out: Act,
    /// The quantizer after the pool, and whether it stands in the fc's
    /// section (fc format) rather than the head's.
    pub pool_act: Option<(Act, bool)>,
    pub wf: u32,
    pub formats: [FixedFormat; 4],
    pub saturate: bool,
    pub w_stem: Vec<f32>,
    pub bn_stem: Bn,
    pub w1: Vec<f32>,
    pub bn1: Bn,
    pub w2: Vec<f32>,
    pub bn2: Bn,
    pub w_fc: Vec<f32>,
    pub b_fc: Vec<f32>,
    pub images: Vec<Vec<f32>>,
}

pub const STEM: usize = 0;
pub const BLOCK: usize = 1;
pub const HEAD: usize = 2;
pub const FC: usize = 3;

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

pub fn gen_case(seed: u64) -> Case {
    let mut rng = Rng(seed);
    let c = 1 + rng.below(3) as usize;
    let hw = rng.pick(&[4usize, 5, 6]);
    let f = 1 + rng.below(4) as usize;
    let classes = 1 + rng.below(3) as usize;
    let stem_k = rng.pick(&[1usize, 3]);
    let stem_stride = if hw.is_multiple_of(2) && rng.chance(0.3) {
        2
    } else {
        1
    };
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
    pub fn spec(&self) -> String {
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

    pub fn pool_act_name(&self) -> Option<&'static str> {
        match self.pool_act {
            None => None,
            Some((_, false)) => Some("head.a"),
            Some((_, true)) => Some("fc.a"),
        }
    }

    pub fn checkpoint(&self) -> Checkpoint {
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
