//! The integer plan of the shape ops, the gating product and the hard
//! activations (issue 16) on models small enough to recompute here: each
//! integer tensor the engine produces is compared with a reference written
//! from the documented formulas (`docs/export.md`), constants as
//! `round(v * 2^frac)` of their exact f64 value, sums in i128, shifts
//! rounded to nearest with halves away from zero (or toward zero under
//! `trunc`); and the refusals (smooth activations, hard ones with no
//! quantizer after them, a concat of several scales without
//! `quantize_concat`) name the layer.

use qatc::driver::{self, Source, Syntax};
use qatc::ops::ActivationKind;
use qatc_int::plan::{smooth, weight_int, Layer};
use qatc_int::{self as int, engine, Checkpoint, IntError, PlanOptions, Rounding};

fn graph(spec: &str) -> qatc::ir::Graph {
    let src = Source::from_text("ops.qspec", spec, Syntax::Qspec);
    driver::compile(&src)
        .and_then(|c| c.into_graph(Some("p")))
        .unwrap_or_else(|d| panic!("the spec compiles: {d:?}"))
}

/// A deterministic value in `[-1, 1)` for variable `name`, element `i`.
fn noise(name: &str, i: usize) -> f32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain((i as u64).to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 29;
    ((h % 2001) as f32 - 1000.0) / 1000.0
}

/// Every variable of `g` from [`noise`] (BN variances positive), the
/// clipping values and other values given in `set` by name.
fn checkpoint(g: &qatc::ir::Graph, set: &[(&str, f32)]) -> Checkpoint {
    let mut ck = Checkpoint::default();
    for (name, shape) in int::checkpoint::variables(g) {
        let len = shape.iter().product();
        let v: Vec<f32> = match set.iter().find(|(n, _)| *n == name) {
            Some((_, x)) => vec![*x; len],
            None if name.ends_with(".alpha") => vec![2.0; len],
            None if name.ends_with("running_var") => {
                (0..len).map(|i| 0.5 + noise(&name, i).abs()).collect()
            }
            None => (0..len).map(|i| noise(&name, i)).collect(),
        };
        ck.tensors.insert(name, (shape, v));
    }
    ck
}

fn options(rounding: Rounding) -> PlanOptions {
    PlanOptions {
        rounding,
        ..PlanOptions::default()
    }
}

/// Runs `x`; returns the workspace and the output.
fn run(plan: &int::IntPlan, x: &[f32]) -> (engine::Workspace, engine::ImageOutput) {
    let weights = engine::Weights::new(plan);
    let mut ws = engine::Workspace::new(plan);
    let out = engine::run_image(plan, &weights, x, &mut ws, &Default::default()).unwrap();
    (ws, out)
}

fn tensor(plan: &int::IntPlan, ws: &engine::Workspace, node: &str) -> Vec<i64> {
    let t = plan
        .tensor_of(node)
        .unwrap_or_else(|| panic!("no tensor for `{node}`: {:?}", plan.node_tensors));
    ws.tensor(t).unwrap().to_i64()
}

/// `round(v * 2^frac)`, halves away from zero.
fn fixed(v: f64, frac: u32) -> i128 {
    (v * 2f64.powi(frac as i32)).round() as i128
}

/// `x / 2^shift`, to nearest with halves away from zero, or toward zero.
fn rdiv(x: i128, shift: u32, trunc: bool) -> i128 {
    if shift == 0 {
        return x;
    }
    let d = 1i128 << shift;
    if trunc {
        x / d
    } else if x >= 0 {
        (x + d / 2) / d
    } else {
        -((-x + d / 2) / d)
    }
}

/// The input quantizer, mPACT 8 bit, as the fake quantizer computes it in
/// float32 (`docs/export.md`, `quantize_input`).
fn quantize_input(x: f32, alpha: f32) -> i128 {
    let gain = (1.0 / alpha) * 127.0;
    (x.clamp(-alpha, alpha) * gain).round_ties_even() as i128
}

/// Block layers' default format `fixed<32,10>`: 22 fraction bits.
const BLOCK_FRAC: u32 = 22;

const SHAPES: &str = r#"
model shapes {
  input 4x2x2
  classes 2
  quant {
    weights dorefa
    acts mpact(2)
  }
  rules {
    quantize_concat(aout) as cat
  }
  block unit() {
    l, r = x -> split(2)
    r = r -> conv1x1(2) as conv -> relu
    return concat(l, r) -> shuffle(2)
  }
  stem: act(ain) as q
  stage s: unit x1
  fc: flatten -> linear(classes) as fc
  profile p {
    all { w 8  a 8 }
  }
}
"#;

/// A split, a branch ending in a ReLU (a pending sum), the concat of the
/// untouched half (integers of the input quantizer's scale) and the branch
/// requantized, each into the grid of the concat's quantizer, then a
/// channel shuffle and a linear layer over the shuffled integers.
#[test]
fn split_concat_shuffle_requantize_each_input_into_the_shared_grid() {
    let g = graph(SHAPES);
    let (a_in, a_cat) = (2.0f32, 3.0f32);
    let ck = checkpoint(&g, &[("stem.q.alpha", a_in), ("s.0.cat.alpha", a_cat)]);
    let plan = int::build(&g, &ck, options(Rounding::Nearest)).unwrap();
    let kinds: Vec<&str> = plan
        .layers
        .iter()
        .map(|l| match l {
            Layer::Channels(_) => "channels",
            Layer::Concat(_) => "concat",
            Layer::Requant(_) => "requant",
            Layer::Conv(_) => "conv",
            Layer::QuantizeInput(_) => "input",
            _ => "other",
        })
        .collect();
    // The untouched half is requantized too (its scale is 127/2, the
    // concat's 127/3): two requantizations, then the concat.
    assert_eq!(
        kinds,
        [
            "input", "channels", "channels", "conv", "requant", "requant", "concat", "channels",
            "conv"
        ]
    );
    let w = ck.get("s.0.conv.weight").unwrap();
    let (wq, w_scale) = weight_int(w, 8);
    let fcw = ck.get("fc.fc.weight").unwrap();
    let (fq, _) = weight_int(fcw, 8);
    let fcb = ck.get("fc.fc.bias").unwrap();
    let (s_in, s_cat) = (127.0 / a_in as f64, 127.0 / a_cat as f64);
    for seed in 0..6 {
        let x: Vec<f32> = (0..16)
            .map(|i| 2.5 * noise("image", seed * 16 + i))
            .collect();
        let (ws, out) = run(&plan, &x);
        let q: Vec<i128> = x.iter().map(|&v| quantize_input(v, a_in)).collect();
        // l: channels 0, 1; r: channels 2, 3 (4 positions each).
        let (l, r) = (&q[..8], &q[8..]);
        let m_l = fixed(s_cat / s_in, BLOCK_FRAC);
        let l_out: Vec<i128> = l
            .iter()
            .map(|&v| rdiv(v * m_l, BLOCK_FRAC, false).clamp(-127, 127))
            .collect();
        let m_r = fixed(s_cat / (s_in * w_scale), BLOCK_FRAC);
        let mut r_out = Vec::new();
        for o in 0..2 {
            for i in 0..4 {
                let acc: i128 = (0..2).map(|c| wq[o * 2 + c] as i128 * r[c * 4 + i]).sum();
                r_out.push(rdiv(acc * m_r, BLOCK_FRAC, false).clamp(0, 127));
            }
        }
        let cat: Vec<i128> = l_out.iter().chain(&r_out).copied().collect();
        let as64 = |v: &[i128]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        assert_eq!(tensor(&plan, &ws, "s.0.cat"), as64(&cat), "image {seed}");
        // shuffle(2) of 4 channels: 0, 2, 1, 3.
        let shuffled: Vec<i128> = [0, 2, 1, 3]
            .iter()
            .flat_map(|&c| cat[c * 4..c * 4 + 4].to_vec())
            .collect();
        assert_eq!(tensor(&plan, &ws, "s.0.shuffle1"), as64(&shuffled));
        assert_eq!(tensor(&plan, &ws, "s.0.part2"), as64(r));
        // The requantized half is the real value in the new grid, within a step.
        for (&v, &o) in l.iter().zip(&l_out) {
            let real = (v as f64 / s_in).clamp(-(a_cat as f64), a_cat as f64) * s_cat;
            assert!((real - o as f64).abs() <= 0.5 + 1e-9, "{v} -> {o}");
        }
        // The linear layer over the shuffled integers.
        let acc: Vec<i64> = (0..2)
            .map(|k| {
                (0..16)
                    .map(|f| fq[k * 16 + f] as i128 * shuffled[f])
                    .sum::<i128>() as i64
            })
            .collect();
        assert_eq!(out.acc, acc);
        for k in 0..2 {
            let want = acc[k] as f64 / (s_cat * w_scale) + fcb[k] as f64;
            assert!((out.logits[k] as f64 - want).abs() < 1e-5, "{k}");
        }
    }
}

/// A model whose stage moves the channels of a BN's output (`before`,
/// still a pending sum) or of its quantized integers (`after`).
fn moved(before: &str, after: &str) -> String {
    format!(
        r#"
model moved {{
  input 4x2x2
  classes 2
  quant {{
    weights dorefa
    acts mpact(2)
  }}
  block b() {{
    y = x -> conv1x1(6) as conv -> bn as bn{before} -> act(aout) as out{after}
    return y
  }}
  stem: act(ain) as q
  stage s: b x1
  fc: flatten -> linear(classes) as fc
  profile p {{
    all {{ w 8  a 8 }}
  }}
}}
"#
    )
}

/// Moving the channels of a pending sum (each term reads the chosen
/// channels of its source, BN factors and biases follow) and then
/// quantizing gives the integers of quantizing first and moving after:
/// requantization is per channel. In every rounding mode (`trunc` with
/// the seed's float32 BN factors).
#[test]
fn moving_channels_of_a_pending_sum_commutes_with_its_requantization() {
    for (op, node) in [
        (" -> shuffle(2)", "s.0.shuffle1"),
        (" -> shuffle(3)", "s.0.shuffle1"),
        (" -> shuffle(3) -> shuffle(2)", "s.0.shuffle2"),
    ] {
        let (g_before, g_after) = (graph(&moved(op, "")), graph(&moved("", op)));
        let ck = checkpoint(&g_before, &[("stem.q.alpha", 2.0), ("s.0.out.alpha", 1.5)]);
        for rounding in [Rounding::Trunc, Rounding::Nearest, Rounding::Scaled] {
            let p_before = int::build(&g_before, &ck, options(rounding)).unwrap();
            let p_after = int::build(&g_after, &ck, options(rounding)).unwrap();
            for seed in 0..8 {
                let x: Vec<f32> = (0..16)
                    .map(|i| 2.0 * noise("moved", seed * 16 + i))
                    .collect();
                let (ws_b, out_b) = run(&p_before, &x);
                let (ws_a, out_a) = run(&p_after, &x);
                assert_eq!(
                    tensor(&p_before, &ws_b, "s.0.out"),
                    tensor(&p_after, &ws_a, node),
                    "{op} {rounding}"
                );
                assert_eq!(out_b.acc, out_a.acc);
            }
        }
    }
}

const JOIN: &str = r#"
model join {
  input 2x2x2
  classes 2
  quant {
    weights dorefa
    acts mpact(2)
  }
  block b() {
    a = x -> act(aout) as qa
    c = x -> conv1x1(2) as conv -> act(aout) as qc
    return concat(a, c)
  }
  stem: act(ain) as q
  stage s: b x1
  fc: flatten -> linear(classes) as fc
  profile p {
    all { w 8  a 8 }
  }
}
"#;

/// Integers of one scale (two quantizers of one kind, bits and clipping
/// value) are concatenated as they are, with no quantizer after them; of
/// two scales, they need `quantize_concat`, and the error says so.
#[test]
fn a_concat_of_one_scale_copies_and_of_two_needs_quantize_concat() {
    let g = graph(JOIN);
    let ck = checkpoint(&g, &[("s.0.qa.alpha", 1.5), ("s.0.qc.alpha", 1.5)]);
    for rounding in [Rounding::Trunc, Rounding::Nearest, Rounding::Scaled] {
        let plan = int::build(&g, &ck, options(rounding)).unwrap();
        assert!(plan.layers.iter().any(|l| matches!(l, Layer::Concat(_))));
        let x: Vec<f32> = (0..8).map(|i| 2.0 * noise("x", i)).collect();
        let (ws, _) = run(&plan, &x);
        let mut want = tensor(&plan, &ws, "s.0.qa");
        want.extend(tensor(&plan, &ws, "s.0.qc"));
        assert_eq!(tensor(&plan, &ws, "s.0.concat1"), want, "{rounding}");
    }
    let ck = checkpoint(&g, &[("s.0.qa.alpha", 1.5), ("s.0.qc.alpha", 2.5)]);
    let e = int::build(&g, &ck, PlanOptions::default()).unwrap_err();
    assert!(matches!(e, IntError::Unsupported { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("`s.0.concat1`") && msg.contains("quantize_concat"),
        "{msg}"
    );
}

const GATE: &str = r#"
model gate {
  input 2x2x2
  classes 2
  quant {
    weights dorefa
    acts mpact(2)
  }
  rules {
    quantize_gate(aout) as gq
  }
  block se() {
    g = x -> adaptive_avgpool(1) -> conv1x1(2, bias: true) as fc -> hardsigmoid -> act(aout, pact_fixed(1)) as gact
    y = mul(x, g)
    return y
  }
  stem: act(ain) as q
  stage s: se x1
  fc: flatten -> linear(classes) as fc
  profile p {
    all { w 8  a 8 }
  }
}
"#;

/// Squeeze-excitation with a hard gate: the pooled sums, a 1x1 conv with
/// bias, hardsigmoid folded into the gate quantizer's requantization
/// (`pact_fixed(1)`: 255 steps over [0, 1]), the exact product of the map
/// and the broadcast gate, and the product requantized by `quantize_gate`.
#[test]
fn a_hard_gate_multiplies_exactly_and_is_requantized() {
    let g = graph(GATE);
    let (a_in, a_g) = (2.0f32, 1.25f32);
    let ck = checkpoint(&g, &[("stem.q.alpha", a_in), ("s.0.gq.alpha", a_g)]);
    let plan = int::build(&g, &ck, options(Rounding::Nearest)).unwrap();
    let (wq, w_scale) = weight_int(ck.get("s.0.fc.weight").unwrap(), 8);
    let bias = ck.get("s.0.fc.bias").unwrap();
    let s_in = 127.0 / a_in as f64;
    let s_gq = 127.0 / a_g as f64;
    let mut hits = [0usize; 3];
    for seed in 0..16 {
        let x: Vec<f32> = (0..8).map(|i| 3.0 * noise("gate", seed * 8 + i)).collect();
        let (ws, _) = run(&plan, &x);
        let q: Vec<i128> = x.iter().map(|&v| quantize_input(v, a_in)).collect();
        // Pooled sums (nearest keeps the window sum: scale 4 * s_in).
        let pooled: Vec<i128> = (0..2).map(|c| q[c * 4..c * 4 + 4].iter().sum()).collect();
        let denom = s_in * 4.0 * w_scale * 6.0;
        let mut gate = Vec::new();
        for o in 0..2 {
            let acc: i128 = (0..2).map(|c| wq[o * 2 + c] as i128 * pooled[c]).sum();
            let m = fixed(255.0 / denom, BLOCK_FRAC);
            let b = fixed(255.0 * ((bias[o] as f64 + 3.0) / 6.0), BLOCK_FRAC);
            let v = rdiv(acc * m + b, BLOCK_FRAC, false).clamp(0, 255);
            // hardsigmoid of the real pre-activation, in 255 steps.
            let real = acc as f64 / (s_in * 4.0 * w_scale) + bias[o] as f64;
            let hs = ((real + 3.0).clamp(0.0, 6.0) / 6.0 * 255.0).round();
            assert!((hs - v as f64).abs() <= 1.0, "{hs} {v}");
            hits[if v == 0 {
                0
            } else if v == 255 {
                2
            } else {
                1
            }] += 1;
            gate.push(v);
        }
        let as64 = |v: &[i128]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        assert_eq!(tensor(&plan, &ws, "s.0.gact"), as64(&gate));
        let prod: Vec<i128> = (0..8).map(|i| q[i] * gate[i / 4]).collect();
        assert_eq!(tensor(&plan, &ws, "s.0.mul1"), as64(&prod));
        let m = fixed(s_gq / (s_in * 255.0), BLOCK_FRAC);
        let y: Vec<i128> = prod
            .iter()
            .map(|&p| rdiv(p * m, BLOCK_FRAC, false).clamp(-127, 127))
            .collect();
        assert_eq!(tensor(&plan, &ws, "s.0.gq"), as64(&y));
    }
    assert!(
        hits[1] > 0,
        "the gate's middle piece is exercised: {hits:?}"
    );
}

const HSWISH: &str = r#"
model hswish {
  input 2x2x2
  classes 2
  quant {
    weights dorefa
    acts mpact(2)
  }
  stem: act(ain) as q -> hardswish -> act(aout) as out
  fc: flatten -> linear(classes) as fc
  profile p {
    all { w 8  a 8 }
  }
}
"#;

/// Hardswish of every 8-bit input integer into the next quantizer's grid:
/// the engine's integers are the documented piecewise polynomial (each
/// coefficient with the binary point that gives it 31 bits) bit for bit, and within one step of the exact function (nearly always
/// equal to it rounded).
#[test]
fn hardswish_of_every_input_integer() {
    let g = graph(HSWISH);
    let (a_in, a_out) = (4.0f32, 2.5f32);
    let ck = checkpoint(&g, &[("stem.q.alpha", a_in), ("stem.out.alpha", a_out)]);
    for rounding in [Rounding::Nearest, Rounding::Trunc] {
        let trunc = rounding == Rounding::Trunc;
        let plan = int::build(&g, &ck, options(rounding)).unwrap();
        let (s, gain) = (127.0 / a_in as f64, 127.0 / a_out as f64);
        // Each coefficient with 31 bits: its own binary point, aligned on
        // the finest one.
        let real = [gain / (6.0 * s * s), gain / (2.0 * s), gain / s];
        let frac = real.map(|v| (2147483647.0 / v).log2().floor() as u32);
        let shift = *frac.iter().max().unwrap();
        let [a2, a1, a0] = [0, 1, 2].map(|i| fixed(real[i], frac[i]) << (shift - frac[i]));
        let (lo, hi) = if trunc { (-128, 127) } else { (-127, 127) };
        let mut exact = 0;
        let qs: Vec<i128> = (-128..=127).collect();
        for chunk in qs.chunks(8) {
            let x: Vec<f32> = chunk.iter().map(|&q| (q as f64 / s) as f32).collect();
            let (ws, _) = run(&plan, &x);
            let q_in: Vec<i128> = x.iter().map(|&v| quantize_input(v, a_in)).collect();
            let got = tensor(&plan, &ws, "stem.out");
            for (i, &q) in q_in.iter().enumerate() {
                let want = if (q as f64) <= -3.0 * s {
                    0
                } else if (q as f64) >= 3.0 * s {
                    rdiv(a0 * q, shift, trunc)
                } else {
                    rdiv(a2 * q * q + a1 * q, shift, trunc)
                }
                .clamp(lo, hi);
                assert_eq!(got[i] as i128, want, "{rounding} q {q}");
                let v = q as f64 / s;
                let hs = v * (v + 3.0).clamp(0.0, 6.0) / 6.0 * gain;
                let r = if trunc { hs.trunc() } else { hs.round() }.clamp(lo as f64, hi as f64);
                assert!(
                    (r - want as f64).abs() <= 1.0,
                    "{rounding} q {q}: {hs} -> {want}"
                );
                exact += usize::from(r == want as f64);
            }
        }
        assert!(
            exact >= 250,
            "{rounding}: {exact} of 256 equal to the exact function rounded"
        );
    }
}

const BN_HSWISH: &str = r#"
model bnhswish {
  input 2x2x2
  classes 2
  quant {
    weights dorefa
    acts mpact(2)
  }
  stem: act(ain) as q -> conv1x1(2) as conv -> bn as bn -> hardswish -> act(aout) as out
  fc: flatten -> linear(classes) as fc
  profile p {
    all { w 8  a 8 }
  }
}
"#;

/// Hardswish of a BN's output: the pending sum is materialised as 24-bit
/// integers first, then the hardswish layer takes it into the output
/// grid; the result is the exact function of the real BN output rounded,
/// within a step (equal but at near-ties), in every rounding mode.
#[test]
fn hardswish_of_a_pending_sum() {
    let g = graph(BN_HSWISH);
    let (a_in, a_out) = (2.0f32, 3.0f32);
    let ck = checkpoint(&g, &[("stem.q.alpha", a_in), ("stem.out.alpha", a_out)]);
    let (wq, w_scale) = weight_int(ck.get("stem.conv.weight").unwrap(), 8);
    let get = |n: &str| ck.get(n).unwrap().to_vec();
    let (gamma, beta, mean, var) = (
        get("stem.bn.weight"),
        get("stem.bn.bias"),
        get("stem.bn.running_mean"),
        get("stem.bn.running_var"),
    );
    let (s_in, gain) = (127.0 / a_in as f64, 127.0 / a_out as f64);
    for rounding in [Rounding::Trunc, Rounding::Nearest, Rounding::Scaled] {
        let trunc = rounding == Rounding::Trunc;
        let plan = int::build(&g, &ck, options(rounding)).unwrap();
        let (mut n, mut equal) = (0, 0);
        for seed in 0..64 {
            let x: Vec<f32> = (0..8).map(|i| 2.0 * noise("bnh", seed * 8 + i)).collect();
            let (ws, _) = run(&plan, &x);
            let q: Vec<i128> = x.iter().map(|&v| quantize_input(v, a_in)).collect();
            let got = tensor(&plan, &ws, "stem.out");
            for o in 0..2 {
                let k = gamma[o] as f64 / (var[o] as f64 + 1e-5f32 as f64).sqrt();
                let b = beta[o] as f64 - k * mean[o] as f64;
                for i in 0..4 {
                    let acc: i128 = (0..2).map(|c| wq[o * 2 + c] as i128 * q[c * 4 + i]).sum();
                    let v = acc as f64 / (s_in * w_scale) * k + b;
                    let hs = v * (v + 3.0).clamp(0.0, 6.0) / 6.0 * gain;
                    let lo = if trunc { -128.0 } else { -127.0 };
                    let want = if trunc { hs.trunc() } else { hs.round() }.clamp(lo, 127.0);
                    let have = got[o * 4 + i] as f64;
                    assert!(
                        (want - have).abs() <= 1.0,
                        "{rounding}: {v} -> {hs}, got {have}"
                    );
                    n += 1;
                    equal += usize::from(want == have);
                }
            }
        }
        assert!(equal * 100 >= n * 98, "{rounding}: {equal} of {n} equal");
    }
}

/// A smooth activation with no quantizer after it is refused, naming the
/// layer and the hard variant; so is a hard activation or a concat of
/// several scales with no quantizer after it.
#[test]
fn what_the_integer_engine_refuses_is_named() {
    let spec = |stem: &str, rules: &str| {
        format!(
            "model r {{\n  input 2x2x2\n  classes 2\n  quant {{\n    weights dorefa\n    acts mpact(2)\n  }}\n  rules {{\n{rules}\n  }}\n  stem: {stem}\n  fc: flatten -> linear(classes) as fc\n  profile p {{\n    all {{ w 8  a 8 }}\n  }}\n}}\n"
        )
    };
    let cases = [
        ("act(ain) -> sigmoid", "stem.sigmoid1", "`hardsigmoid`"),
        (
            "act(ain) -> swish -> conv1x1(2)",
            "stem.swish1",
            "`hardswish`",
        ),
        ("act(ain) -> silu", "stem.swish1", "act(...)"),
        ("act(ain) -> gelu -> avgpool(2)", "stem.gelu1", "act(...)"),
        ("act(ain) -> hardsigmoid", "stem.hardsigmoid1", "act(...)"),
        ("act(ain) -> hardswish", "stem.hardswish1", "act(...)"),
        (
            "act(ain) -> hardswish -> conv1x1(2)",
            "stem.hardswish1",
            "act(...)",
        ),
    ];
    for (stem, layer, hint) in cases {
        let g = graph(&spec(stem, "    bn_bits(16)"));
        let ck = checkpoint(&g, &[]);
        let e = int::build(&g, &ck, PlanOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, IntError::Unsupported { .. }), "{stem}: {msg}");
        assert!(
            msg.contains(&format!("`{layer}`")) && msg.contains(hint),
            "{stem}: {msg}"
        );
    }
}

/// `stem: act(ain) as q -> FUNCTION -> act(aout) as out`, 8-bit mPACT both.
fn smooth_spec(function: &str) -> String {
    HSWISH.replace("hardswish", function)
}

/// Whether `y` lies within `1e-9` of a rounding boundary of `mode`
/// (an integer for `trunc`, a half for `nearest`): there an f64 `exp`
/// of another libm may round the other way.
fn near_boundary(y: f64, trunc: bool) -> bool {
    let b = if trunc { y.round() } else { y.floor() + 0.5 };
    (y - b).abs() < 1e-9
}

/// Sigmoid, swish and gelu of every 8-bit input integer by the lookup
/// table: the engine's integer is `clamp(round(G f(q / s)))` with `f`
/// computed here from the standard library's `exp` (and the table's
/// documented `libm` erf for gelu), rounded as the mode says, for every
/// input integer (one step apart allowed only within 1e-9 of a rounding
/// boundary, where two libms may differ); the table's steps are the
/// places where that value changes.
#[test]
fn smooth_functions_of_every_input_integer_by_table() {
    let (a_in, a_out) = (4.0f32, 1.5f32);
    for (name, kind) in [
        ("sigmoid", ActivationKind::Sigmoid),
        ("swish", ActivationKind::Swish),
        ("gelu", ActivationKind::Gelu),
    ] {
        let g = graph(&smooth_spec(name));
        let ck = checkpoint(&g, &[("stem.q.alpha", a_in), ("stem.out.alpha", a_out)]);
        let f = |v: f64| match kind {
            ActivationKind::Sigmoid => 1.0 / (1.0 + (-v).exp()),
            ActivationKind::Swish => v / (1.0 + (-v).exp()),
            _ => smooth(kind, v),
        };
        for rounding in [Rounding::Nearest, Rounding::Trunc] {
            let trunc = rounding == Rounding::Trunc;
            let plan = int::build(&g, &ck, options(rounding)).unwrap();
            let lut = plan
                .layers
                .iter()
                .find_map(|l| match l {
                    Layer::Lut(l) => Some(l.clone()),
                    _ => None,
                })
                .expect("a lookup-table layer");
            assert_eq!(lut.function, name);
            assert_eq!(lut.values.len(), lut.breaks.len() + 1);
            assert!(
                lut.breaks.windows(2).all(|w| w[0] < w[1]),
                "{name} breaks ascend"
            );
            let (s, gain) = (127.0 / a_in as f64, 127.0 / a_out as f64);
            let (lo, hi) = if trunc { (-128, 127) } else { (-127, 127) };
            let qs: Vec<i128> = (-128..=127).collect();
            for chunk in qs.chunks(8) {
                let x: Vec<f32> = chunk.iter().map(|&q| (q as f64 / s) as f32).collect();
                let (ws, _) = run(&plan, &x);
                let q_in: Vec<i128> = x.iter().map(|&v| quantize_input(v, a_in)).collect();
                let got = tensor(&plan, &ws, "stem.out");
                for (i, &q) in q_in.iter().enumerate() {
                    let y = gain * f(q as f64 / s);
                    let want =
                        if trunc { y.trunc() } else { y.round() }.clamp(lo as f64, hi as f64);
                    let have = got[i] as f64;
                    if near_boundary(y, trunc) {
                        assert!((want - have).abs() <= 1.0, "{name} {rounding} q {q}: {y}");
                    } else {
                        assert_eq!(have, want, "{name} {rounding} q {q}: {y}");
                    }
                }
            }
            // The table is that function's step function: a step exactly
            // where the reference changes, over the whole input range.
            for q in lo as i64..=127 {
                let v = |q: i64| {
                    let y = gain * smooth(kind, q as f64 / s);
                    (if trunc { y.trunc() } else { y.round() } as i64).clamp(lo as i64, hi as i64)
                };
                assert_eq!(
                    lut.breaks.contains(&q),
                    q > lo as i64 && v(q) != v(q - 1),
                    "{name} {rounding} step at {q}"
                );
            }
        }
    }
}

const BN_SIGMOID: &str = r#"
model bnsigmoid {
  input 2x2x2
  classes 2
  quant {
    weights dorefa
    acts mpact(2)
  }
  stem: act(ain) as q -> conv1x1(2) as conv -> bn as bn -> FUNCTION -> act(aout) as out
  fc: flatten -> linear(classes) as fc
  profile p {
    all { w 8  a 8 }
  }
}
"#;

/// Sigmoid, swish and gelu of a BN's output: the pending sum is
/// materialised as 24-bit integers, then tabulated into the output grid;
/// the result is the exact function of the real BN output rounded, within
/// a step (equal but at near-ties), in every rounding mode; every table
/// step is where the reference on the 24-bit input changes (checked on
/// every input integer around each step and on a stride through the range).
#[test]
fn smooth_functions_of_a_pending_sum_by_table() {
    let (a_in, a_out) = (2.0f32, 3.0f32);
    for (name, kind) in [
        ("sigmoid", ActivationKind::Sigmoid),
        ("swish", ActivationKind::Swish),
        ("gelu", ActivationKind::Gelu),
    ] {
        let g = graph(&BN_SIGMOID.replace("FUNCTION", name));
        let ck = checkpoint(&g, &[("stem.q.alpha", a_in), ("stem.out.alpha", a_out)]);
        let (wq, w_scale) = weight_int(ck.get("stem.conv.weight").unwrap(), 8);
        let get = |n: &str| ck.get(n).unwrap().to_vec();
        let (gamma, beta, mean, var) = (
            get("stem.bn.weight"),
            get("stem.bn.bias"),
            get("stem.bn.running_mean"),
            get("stem.bn.running_var"),
        );
        let (s_in, gain) = (127.0 / a_in as f64, 127.0 / a_out as f64);
        for rounding in [Rounding::Trunc, Rounding::Nearest] {
            let trunc = rounding == Rounding::Trunc;
            let plan = int::build(&g, &ck, options(rounding)).unwrap();
            let lut = plan
                .layers
                .iter()
                .find_map(|l| match l {
                    Layer::Lut(l) => Some(l.clone()),
                    _ => None,
                })
                .expect("a lookup-table layer");
            let (lo, hi) = if trunc { (-128i64, 127) } else { (-127, 127) };
            let v = |q: i64| {
                let y = gain * smooth(kind, q as f64 / lut.scale);
                (if trunc { y.trunc() } else { y.round() } as i64).clamp(lo, hi)
            };
            let table = |q: i64| lut.values[lut.breaks.partition_point(|&b| b <= q)];
            let limit = (1i64 << 23) - 1;
            for &b in &lut.breaks {
                for q in (b - 3).max(-limit)..=(b + 3).min(limit) {
                    assert_eq!(table(q), v(q), "{name} {rounding} q {q}");
                }
            }
            for q in (-limit..=limit).step_by(4099) {
                assert_eq!(table(q), v(q), "{name} {rounding} q {q}");
            }
            let (mut n, mut equal) = (0, 0);
            for seed in 0..64 {
                let x: Vec<f32> = (0..8).map(|i| 2.0 * noise("bns", seed * 8 + i)).collect();
                let (ws, _) = run(&plan, &x);
                let q: Vec<i128> = x.iter().map(|&v| quantize_input(v, a_in)).collect();
                let got = tensor(&plan, &ws, "stem.out");
                for o in 0..2 {
                    let k = gamma[o] as f64 / (var[o] as f64 + 1e-5f32 as f64).sqrt();
                    let b = beta[o] as f64 - k * mean[o] as f64;
                    for i in 0..4 {
                        let acc: i128 = (0..2).map(|c| wq[o * 2 + c] as i128 * q[c * 4 + i]).sum();
                        let r = acc as f64 / (s_in * w_scale) * k + b;
                        let y = gain * smooth(kind, r);
                        let want =
                            (if trunc { y.trunc() } else { y.round() }).clamp(lo as f64, hi as f64);
                        let have = got[o * 4 + i] as f64;
                        assert!(
                            (want - have).abs() <= 1.0,
                            "{name} {rounding}: {r} -> {y}, got {have}"
                        );
                        n += 1;
                        equal += usize::from(want == have);
                    }
                }
            }
            assert!(
                equal * 100 >= n * 98,
                "{name} {rounding}: {equal} of {n} equal"
            );
        }
    }
}
