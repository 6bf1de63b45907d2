//! The reference the engine is held to: one image of a [`Case`] through the
//! documented integer pipeline (`docs/export.md`), every sum in i128, every
//! constant from the exact f64 value (`nearest`) or the seed's float32
//! formulas (`trunc`), with the constants that overflow their format and
//! whether their channel is provably constant.

use super::case::{Act, Bn, Case, Qz, BLOCK, FC, HEAD, STEM};
use qatc_int::{FixedFormat, Rounding};

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
pub fn dorefa(w: &[f32], bits: u32) -> (Vec<i128>, f64) {
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
/// with the seed's float32 square root (`qatc_int::seed_sqrt`: libtorch's,
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
    let std32s = qatc_int::seed_sqrt::sqrt_f32(&var_eps);
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
pub struct Overflow {
    pub layer: String,
    pub channel: usize,
    pub what: &'static str,
    pub value: f64,
    /// The channel's output is the same clamp bound for every reachable
    /// input (by exact bounds).
    pub constant: bool,
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
pub struct Reference {
    pub trunc: bool,
    pub saturate: bool,
    /// Integer tensors by IR node name, in pipeline order.
    pub maps: Vec<(String, Vec<i128>)>,
    pub acc: Vec<i128>,
    pub logits: Vec<f32>,
    pub overflows: Vec<Overflow>,
    /// Layer order of the requantizations.
    pub layers: Vec<String>,
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
pub fn reference(case: &Case, image: &[f32], rounding: Rounding) -> Reference {
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
