//! The fast quantizers of `qatc_runtime::quant` against the reference ones
//! (`quant::reference`, the seed's formulas op by op, which
//! `golden_quantizers.rs` checks against the seed's PyTorch code).
//!
//! Values: an element may flip by one quantization step on at most 0.1% of
//! the elements (the project's tolerance); the fast paths use the
//! reference's ops in the reference's order, so none flips, and the test
//! prints the counts (`--nocapture`). Input gradients must be equal bit for
//! bit; the clipping value's gradient (a sum over all elements, which the
//! fused C++ kernels add up in another order) within float rounding. The
//! fast quantizers are checked twice: with the fused kernels (CPU default)
//! and with the stock-op path other devices take. Inputs span several chunks of the fused pass,
//! end in a partial chunk, and hold the hard cases: values exactly at the
//! clipping bounds (where the seed's gradient rules count ties on both
//! sides), zeros of both signs, rounding ties, huge values and NaNs.

use qatc_runtime::quant::{self, reference};
use tch::{Device, Kind, Tensor};

/// Elements of the test inputs: a little over 2.5 chunks of the fused pass.
const SHAPE: [i64; 4] = [5, 7, 97, 199];

/// Random activations (normal, std 4) with special values planted at
/// scattered positions: `specials` repeated.
fn input(seed: i64, specials: &[f32]) -> Tensor {
    tch::manual_seed(seed);
    let x = Tensor::randn(SHAPE, (Kind::Float, Device::Cpu)) * 4.0;
    let mut flat = x.view([-1]);
    let n = flat.size()[0];
    let every = 101;
    let count = n / every;
    let idx = Tensor::arange(count, (Kind::Int64, Device::Cpu)) * every;
    let values: Vec<f32> = (0..count as usize)
        .map(|i| specials[i % specials.len()])
        .collect();
    let _ = flat.index_put_(&[Some(idx)], &Tensor::from_slice(&values), false);
    x
}

/// Elements where `a` and `b` differ (NaN equals NaN).
fn differing(a: &Tensor, b: &Tensor) -> i64 {
    differing_where(a, b, &a.ones_like().to_kind(Kind::Bool))
}

/// [`differing`], counting only where `mask` holds.
fn differing_where(a: &Tensor, b: &Tensor, mask: &Tensor) -> i64 {
    assert_eq!(a.size(), b.size());
    let same = a
        .eq_tensor(b)
        .logical_or(&a.isnan().logical_and(&b.isnan()));
    same.logical_not()
        .logical_and(mask)
        .sum(Kind::Int64)
        .int64_value(&[])
}

/// Value check: at most 0.1% one-step flips, every other element equal;
/// returns the number of flips.
///
/// Elements whose input is NaN are not compared: the reference's output
/// there is NaN only because its STE adds `c - c.detach()` = NaN - NaN,
/// where the seed (and the fast path) give the quantizer's own value, e.g.
/// `sign(NaN) = 0` for 1-bit DoReFa. Their gradients are compared.
fn check_values(name: &str, x: &Tensor, fast: &Tensor, slow: &Tensor, step: f64) -> i64 {
    let flips = differing_where(fast, slow, &x.isnan().logical_not());
    if flips > 0 {
        let finite = fast.isfinite().logical_and(&slow.isfinite());
        let diff = (fast - slow).abs().masked_select(&finite);
        let max = diff.max().double_value(&[]);
        assert!(max <= step * (1.0 + 1e-4), "{name}: off by {max} > {step}");
    }
    assert!(
        flips * 1000 <= fast.numel() as i64,
        "{name}: {flips} of {} elements flipped",
        fast.numel()
    );
    flips
}

fn assert_same_grad(name: &str, fast: &Tensor, slow: &Tensor) {
    assert!(fast.defined() && slow.defined(), "{name}: gradient missing");
    let n = differing(fast, slow);
    assert_eq!(n, 0, "{name}: {n} gradient elements differ");
}

/// The clipping value's gradient is a sum over all elements, which the fused
/// path adds up in another order (in f64, per thread): equal to the
/// reference's within float rounding of a sum of `|g|` at most.
fn assert_close_sum(name: &str, fast: &Tensor, slow: &Tensor, g: &Tensor) {
    assert!(fast.defined() && slow.defined(), "{name}: gradient missing");
    let (f, s) = (fast.double_value(&[]), slow.double_value(&[]));
    let bound = 1e-6 * g.abs().sum(Kind::Double).double_value(&[]);
    assert!(
        (f - s).abs() <= bound,
        "{name}: {f} against {s} (bound {bound})"
    );
}

/// One quantizer, fast and reference: `f(x, alpha)`.
type Quantizer<'a> = (&'a str, f64, Box<dyn Fn(&Tensor, &Tensor) -> Tensor + 'a>);

/// [`compare_path`] with the fused C++ kernels and with the stock-op path
/// (`quant::set_fused_kernels`; the same for quantizers without kernels).
fn compare(name: &str, step: f64, x: &Tensor, alpha: f32, fast: &Quantizer, slow: &Quantizer) {
    for (fused, path) in [(true, "fused"), (false, "stock ops")] {
        quant::set_fused_kernels(fused);
        compare_path(&format!("{name} ({path})"), step, x, alpha, fast, slow);
    }
    quant::set_fused_kernels(true);
}

/// Runs `fast` and `slow` on leaf copies of `x` (and of `alpha`), backs
/// `sum(q * g)` through both, and compares values and gradients; then the
/// same without autograd.
fn compare_path(name: &str, step: f64, x: &Tensor, alpha: f32, fast: &Quantizer, slow: &Quantizer) {
    let g = Tensor::randn(x.size().as_slice(), (Kind::Float, Device::Cpu));
    let run = |q: &Quantizer| {
        let x = x.detach().copy().set_requires_grad(true);
        let a = Tensor::from(alpha).set_requires_grad(true);
        let out = (q.2)(&x, &a);
        (&out * &g).sum(Kind::Float).backward();
        (out.detach(), x.grad(), a.grad())
    };
    let (qf, gxf, gaf) = run(fast);
    let (qs, gxs, gas) = run(slow);
    let flips = check_values(name, x, &qf, &qs, step);
    assert_same_grad(&format!("{name} dx"), &gxf, &gxs);
    if gas.defined() {
        assert_close_sum(&format!("{name} dalpha"), &gaf, &gas, &g);
    }
    let a = Tensor::from(alpha);
    let untracked = tch::no_grad(|| (fast.2)(x, &a));
    assert!(!untracked.requires_grad());
    let flips_untracked = check_values(&format!("{name} no_grad"), x, &untracked, &qs, step);
    // Stricter than the tolerance: the fast paths run the reference's ops
    // in the reference's order, so nothing flips at all.
    assert_eq!((flips, flips_untracked), (0, 0), "{name}");
    println!(
        "{name}: {flips} of {} values flipped ({flips_untracked} under no_grad), gradients equal",
        qf.numel()
    );
}

/// Values at and around the bounds, rounding ties and the odd ones out.
fn specials(alpha: f32, steps: f32) -> Vec<f32> {
    let s = alpha / steps;
    vec![
        alpha,
        -alpha,
        0.0,
        -0.0,
        10.0,
        -10.0,
        0.5 * s,
        1.5 * s,
        -2.5 * s,
        alpha - 0.5 * s,
        1e30,
        -1e30,
        f32::NAN,
        1e-40,
    ]
}

#[test]
fn dorefa_activation_matches_the_reference() {
    for bits in [1, 2, 4, 8, 16] {
        let steps = ((1u32 << bits) - 1) as f32;
        let x = input(i64::from(bits), &specials(10.0, steps));
        let fast: Quantizer = (
            "fast",
            0.0,
            Box::new(move |x, _| quant::dorefa_activation(x, bits)),
        );
        let slow: Quantizer = (
            "reference",
            0.0,
            Box::new(move |x, _| reference::dorefa_activation(x, bits)),
        );
        let step = if bits == 1 {
            1.0
        } else {
            1.0 / f64::from(steps)
        };
        compare(
            &format!("dorefa_activation b{bits}"),
            step,
            &x,
            1.0,
            &fast,
            &slow,
        );
    }
}

#[test]
fn pact_matches_the_reference() {
    for (bits, alpha) in [(1, 2.5f32), (2, 2.5), (4, 3.0), (8, 10.0), (16, 6.0)] {
        let steps = ((1u32 << bits) - 1) as f32;
        let x = input(10 + i64::from(bits), &specials(alpha, steps));
        let fast: Quantizer = ("fast", 0.0, Box::new(move |x, a| quant::pact(x, a, bits)));
        let slow: Quantizer = (
            "reference",
            0.0,
            Box::new(move |x, a| reference::pact(x, a, bits)),
        );
        let step = f64::from(alpha / steps);
        compare(
            &format!("pact b{bits} a{alpha}"),
            step,
            &x,
            alpha,
            &fast,
            &slow,
        );
    }
}

#[test]
fn mpact_matches_the_reference() {
    for (bits, alpha) in [
        (2, 1.7f32),
        (4, 1.7),
        (6, 10.0),
        (8, 10.0),
        (16, 6.0),
        (8, -3.0),
    ] {
        let steps = ((1u32 << (bits - 1)) - 1) as f32;
        let x = input(20 + i64::from(bits), &specials(alpha.abs(), steps));
        let fast: Quantizer = ("fast", 0.0, Box::new(move |x, a| quant::mpact(x, a, bits)));
        let slow: Quantizer = (
            "reference",
            0.0,
            Box::new(move |x, a| reference::mpact(x, a, bits)),
        );
        let step = f64::from(alpha.abs() / steps);
        compare(
            &format!("mpact b{bits} a{alpha}"),
            step,
            &x,
            alpha,
            &fast,
            &slow,
        );
    }
}

#[test]
fn fixed_scale_pact_matches_the_reference() {
    for (bits, scale) in [(1, 1.0f32), (4, 6.0), (8, 6.0), (16, 2.0)] {
        let steps = ((1u32 << bits) - 1) as f32;
        let x = input(30 + i64::from(bits), &specials(scale, steps));
        let s = f64::from(scale);
        let fast: Quantizer = (
            "fast",
            0.0,
            Box::new(move |x, _| quant::fixed_scale_pact(x, s, bits)),
        );
        let slow: Quantizer = (
            "reference",
            0.0,
            Box::new(move |x, _| reference::fixed_scale_pact(x, s, bits)),
        );
        compare(
            &format!("fixed_scale_pact b{bits}"),
            s / f64::from(steps),
            &x,
            1.0,
            &fast,
            &slow,
        );
    }
}

#[test]
fn dorefa_weight_matches_the_reference() {
    for bits in [1, 2, 3, 4, 8, 16] {
        tch::manual_seed(40 + i64::from(bits));
        let w = Tensor::randn([64, 32, 3, 3], (Kind::Float, Device::Cpu)) * 0.1;
        let fast: Quantizer = (
            "fast",
            0.0,
            Box::new(move |w, _| quant::dorefa_weight(w, bits)),
        );
        let slow: Quantizer = (
            "reference",
            0.0,
            Box::new(move |w, _| reference::dorefa_weight(w, bits)),
        );
        let step = if bits <= 2 {
            2.0
        } else {
            1.0 / f64::from((1u32 << (bits - 1)) - 1)
        };
        compare(
            &format!("dorefa_weight b{bits}"),
            step,
            &w,
            1.0,
            &fast,
            &slow,
        );
    }
}

/// Only the clipping value needs a gradient (a quantizer on the input
/// images), and a non-contiguous input: same values and gradients.
#[test]
fn untracked_inputs_and_strided_inputs() {
    let x = input(50, &specials(2.0, 7.0));
    let g = Tensor::randn(SHAPE, (Kind::Float, Device::Cpu));
    type Q = fn(&Tensor, &Tensor, u32) -> Tensor;
    for (name, fast, slow) in [
        ("pact", quant::pact as Q, reference::pact as Q),
        ("mpact", quant::mpact as Q, reference::mpact as Q),
    ] {
        let run = |q: Q, x: &Tensor| {
            let a = Tensor::from(2.0f32).set_requires_grad(true);
            let out = q(x, &a, 4);
            (&out * &g).sum(Kind::Float).backward();
            (out.detach(), a.grad())
        };
        let (qf, gf) = run(fast, &x);
        let (qs, gs) = run(slow, &x);
        assert_eq!(differing(&qf, &qs), 0, "{name}");
        assert_close_sum(&format!("{name} dalpha, x untracked"), &gf, &gs, &g);

        let strided = x.transpose(1, 3);
        assert!(!strided.is_contiguous());
        let a = Tensor::from(2.0f32);
        assert_eq!(
            differing(&fast(&strided, &a, 4), &slow(&strided, &a, 4)),
            0,
            "{name}"
        );
    }
    let strided = x.transpose(0, 2);
    assert_eq!(
        differing(
            &quant::dorefa_activation(&strided, 8),
            &reference::dorefa_activation(&strided, 8)
        ),
        0
    );
}

/// The quantized output feeds ops that keep it for their backward, twice:
/// autograd accepts the carriers (no in-place error) and the gradient is
/// the reference's.
#[test]
fn outputs_can_be_reused_downstream() {
    let x = input(60, &[1.0]);
    let run = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
        let x = x.detach().copy().set_requires_grad(true);
        let a = Tensor::from(3.0f32).set_requires_grad(true);
        let q = f(&x, &a);
        let y = (&q * &q).sum(Kind::Float) + q.tanh().sum(Kind::Float);
        y.backward();
        // The gradient reaching q, for the bound on dalpha's sum.
        let q = q.detach();
        let g = &q * 2.0 + 1.0 - q.tanh().square();
        (x.grad(), a.grad(), g)
    };
    let (gxf, gaf, _) = run(&|x, a| quant::mpact(x, a, 8));
    let (gxs, gas, g) = run(&|x, a| reference::mpact(x, a, 8));
    assert_same_grad("mpact dx", &gxf, &gxs);
    assert_close_sum("mpact dalpha", &gaf, &gas, &g);
    let (gxf, _, _) = run(&|x, _| quant::dorefa_activation(x, 4));
    let (gxs, _, _) = run(&|x, _| reference::dorefa_activation(x, 4));
    assert_same_grad("dorefa dx", &gxf, &gxs);
}

/// Channels-last inputs (the runtime's default activation layout), with
/// the incoming gradient channels-last or `NCHW`: the fused kernels work in
/// the input's layout and give the reference's values and gradients.
#[test]
fn channels_last_inputs_and_gradients() {
    let nchw = input(70, &specials(2.0, 127.0));
    let x = qatc_runtime::layers::channels_last(&nchw);
    assert!(!x.is_contiguous());
    for g_layout in ["channels-last", "nchw"] {
        let g = Tensor::randn(SHAPE, (Kind::Float, Device::Cpu));
        let g = if g_layout == "channels-last" {
            qatc_runtime::layers::channels_last(&g)
        } else {
            g
        };
        type Q = fn(&Tensor, &Tensor, u32) -> Tensor;
        let dorefa: Q = |x, _, b| quant::dorefa_activation(x, b);
        let dorefa_ref: Q = |x, _, b| reference::dorefa_activation(x, b);
        for (name, fast, slow) in [
            ("dorefa", dorefa, dorefa_ref),
            ("pact", quant::pact as Q, reference::pact as Q),
            ("mpact", quant::mpact as Q, reference::mpact as Q),
        ] {
            let run = |q: Q| {
                let x = x.detach().copy().set_requires_grad(true);
                let a = Tensor::from(2.0f32).set_requires_grad(true);
                let out = q(&x, &a, 8);
                (&out * &g).sum(Kind::Float).backward();
                (out.detach(), x.grad(), a.grad())
            };
            let (qf, gxf, gaf) = run(fast);
            let (qs, gxs, gas) = run(slow);
            let name = format!("{name}, gradient {g_layout}");
            assert_eq!(
                differing_where(&qf, &qs, &x.isnan().logical_not()),
                0,
                "{name}"
            );
            assert_same_grad(&format!("{name} dx"), &gxf, &gxs);
            if gas.defined() {
                assert_close_sum(&format!("{name} dalpha"), &gaf, &gas, &g);
            }
        }
    }
}

/// `ActQuant::forward_relu` / `forward_relu6` (the activation fused into the
/// quantizer's pass) against the reference quantizer applied to
/// `ops::relu` / `ops::relu6`: values and input gradients bit for bit,
/// dalpha within rounding, on both paths, with inputs at the activation's
/// kinks (0, -0, 6) and at the clipping values.
#[test]
fn activations_fused_into_quantizers() {
    use qatc_runtime::ops;
    use qatc_runtime::quant::{ActQuant, ActSpec};
    type Act = fn(&Tensor) -> Tensor;
    type Reference = fn(&Tensor, &Tensor, u32) -> Tensor;
    let dorefa_ref: Reference = |x, _, b| reference::dorefa_activation(x, b);
    for alpha in [2.0f32, 10.0] {
        let mut extra = specials(alpha, 127.0);
        extra.extend([6.0, 6.0 - 1e-6, 6.0 + 1e-6, -1e-40]);
        let x = input(80 + alpha as i64, &extra);
        let cases: [(ActSpec, Reference); 4] = [
            (ActSpec::Dorefa { bits: 8 }, dorefa_ref),
            (ActSpec::Dorefa { bits: 1 }, dorefa_ref),
            (
                ActSpec::Pact {
                    bits: 8,
                    alpha: alpha as f64,
                },
                reference::pact,
            ),
            (
                ActSpec::Mpact {
                    bits: 8,
                    alpha: alpha as f64,
                },
                reference::mpact,
            ),
        ];
        for (spec, slow) in cases {
            for (act_name, act) in [("relu", ops::relu as Act), ("relu6", ops::relu6 as Act)] {
                for fused in [true, false] {
                    quant::set_fused_kernels(fused);
                    let name = format!("{spec:?} after {act_name} (alpha {alpha}, fused {fused})");
                    let g = Tensor::randn(SHAPE, (Kind::Float, Device::Cpu));
                    let vs = tch::nn::VarStore::new(Device::Cpu);
                    let aq = ActQuant::from_spec(&vs.root(), spec);
                    let xf = x.detach().copy().set_requires_grad(true);
                    let qf = if act_name == "relu" {
                        aq.forward_relu(&xf)
                    } else {
                        aq.forward_relu6(&xf)
                    };
                    (&qf * &g).sum(Kind::Float).backward();
                    let xs = x.detach().copy().set_requires_grad(true);
                    let a = Tensor::from(alpha).set_requires_grad(true);
                    let qs = slow(&act(&xs), &a, aq.bits());
                    (&qs * &g).sum(Kind::Float).backward();
                    assert_eq!(
                        differing_where(&qf, &qs, &x.isnan().logical_not()),
                        0,
                        "{name}: values"
                    );
                    assert_same_grad(&format!("{name} dx"), &xf.grad(), &xs.grad());
                    if let Some(af) = aq.alpha() {
                        assert_close_sum(&format!("{name} dalpha"), &af.grad(), &a.grad(), &g);
                    }
                    let untracked = tch::no_grad(|| aq.forward_relu6(&x));
                    let want = tch::no_grad(|| slow(&ops::relu6(&x), &a, aq.bits()));
                    assert_eq!(
                        differing_where(&untracked, &want, &x.isnan().logical_not()),
                        0,
                        "{name}: no_grad values"
                    );
                }
            }
        }
    }
    quant::set_fused_kernels(true);
}

/// A fused quantizer site against the unfused ops it replaces (the same
/// quantizer, its kernel or stock path, on the ops' output): values and
/// every input gradient bit for bit, dalpha within rounding.
fn assert_fused_site(
    name: &str,
    fused: &dyn Fn(&qatc_runtime::quant::ActQuant, &[Tensor]) -> Tensor,
    unfused: &dyn Fn(&qatc_runtime::quant::ActQuant, &[Tensor]) -> Tensor,
    inputs: &[Tensor],
) {
    use qatc_runtime::quant::{ActQuant, ActSpec};
    for (spec, alpha) in [
        (ActSpec::Dorefa { bits: 8 }, 0.0),
        (
            ActSpec::Pact {
                bits: 8,
                alpha: 2.0,
            },
            2.0,
        ),
        (
            ActSpec::Mpact {
                bits: 8,
                alpha: 2.0,
            },
            2.0,
        ),
        (
            ActSpec::Mpact {
                bits: 4,
                alpha: 10.0,
            },
            10.0,
        ),
    ] {
        for g_layout in ["channels-last", "nchw"] {
            let name = format!("{name}, {spec:?} (alpha {alpha}), gradient {g_layout}");
            let run = |f: &dyn Fn(&ActQuant, &[Tensor]) -> Tensor| {
                let vs = tch::nn::VarStore::new(Device::Cpu);
                let aq = ActQuant::from_spec(&vs.root(), spec);
                let xs: Vec<Tensor> = inputs
                    .iter()
                    .map(|x| x.detach().copy().set_requires_grad(true))
                    .collect();
                let out = f(&aq, &xs);
                // Made without torch's global generator, which the tests
                // running in parallel threads share: the same g both runs.
                let g = (Tensor::arange(out.numel() as i64, (Kind::Float, Device::Cpu)) * 0.7)
                    .sin()
                    .view(out.size().as_slice());
                let g = if g_layout == "channels-last" {
                    qatc_runtime::layers::channels_last(&g)
                } else {
                    g
                };
                (&out * &g).sum(Kind::Float).backward();
                let grads: Vec<Tensor> = xs.iter().map(Tensor::grad).collect();
                let da = aq.alpha().map(Tensor::grad);
                (out.detach(), grads, da, g)
            };
            let (qf, gf, af, g) = run(fused);
            let (qs, gs, as_, _) = run(unfused);
            assert_eq!(differing(&qf, &qs), 0, "{name}: values");
            for (i, (a, b)) in gf.iter().zip(&gs).enumerate() {
                assert_same_grad(&format!("{name}: gradient of input {i}"), a, b);
            }
            if let (Some(a), Some(b)) = (af, as_) {
                assert_close_sum(&format!("{name}: dalpha"), &a, &b, &g);
            }
            let untracked = tch::no_grad(|| {
                let vs = tch::nn::VarStore::new(Device::Cpu);
                let aq = ActQuant::from_spec(&vs.root(), spec);
                (fused(&aq, inputs), unfused(&aq, inputs))
            });
            assert_eq!(
                differing(&untracked.0, &untracked.1),
                0,
                "{name}: no_grad values"
            );
        }
    }
}

/// `ActQuant::forward_hardswish`: PyTorch's hardswish computed in the
/// quantizer's pass, its backward on the quantizer's input gradient; inputs
/// at the kinks (-3, 3, 0) and around the clipping values.
#[test]
fn hardswish_fused_into_quantizers() {
    use qatc_runtime::ops;
    let mut extra = specials(2.0, 127.0);
    extra.extend([-3.0, 3.0, -3.0 - 1e-6, 3.0 + 1e-6, 0.0, -0.0]);
    let nchw = input(90, &extra).nan_to_num(0.0, 0.0, 0.0);
    for (layout, x) in [
        ("channels-last", qatc_runtime::layers::channels_last(&nchw)),
        ("nchw", nchw.shallow_clone()),
    ] {
        assert_fused_site(
            &format!("hardswish, {layout}"),
            &|aq, xs| aq.forward_hardswish(&xs[0]),
            &|aq, xs| tch::nn::Module::forward(aq, &ops::hardswish(&xs[0])),
            &[x],
        );
    }
}

/// `ActQuant::forward_concat`: the parts (one a channel slice of a wider
/// map, as a split part is; one read through a ReLU) quantized into the
/// joined map, against `ops::concat` then the quantizer.
#[test]
fn concat_fused_into_quantizers() {
    use qatc_runtime::ops;
    use qatc_runtime::quant::Pre;
    let wide = input(91, &specials(2.0, 127.0)).nan_to_num(0.0, 0.0, 0.0);
    tch::manual_seed(92);
    let other = Tensor::randn([5, 12, 97, 199], (Kind::Float, Device::Cpu)) * 3.0;
    for (layout, wide, other) in [
        (
            "channels-last",
            qatc_runtime::layers::channels_last(&wide),
            qatc_runtime::layers::channels_last(&other),
        ),
        ("nchw", wide.shallow_clone(), other.shallow_clone()),
    ] {
        for pres in [[Pre::None, Pre::Relu], [Pre::Relu6, Pre::None]] {
            let apply = |x: &Tensor, p: Pre| match p {
                Pre::None => x.shallow_clone(),
                Pre::Relu => ops::relu(x),
                Pre::Relu6 => ops::relu6(x),
            };
            assert_fused_site(
                &format!("concat {pres:?}, {layout}"),
                &|aq, xs| {
                    aq.forward_concat(&[(&ops::channels(&xs[0], 2, 4), pres[0]), (&xs[1], pres[1])])
                },
                &|aq, xs| {
                    let a = apply(&ops::channels(&xs[0], 2, 4), pres[0]);
                    let b = apply(&xs[1], pres[1]);
                    tch::nn::Module::forward(aq, &ops::concat(&[&a, &b]))
                },
                &[wide.shallow_clone(), other.shallow_clone()],
            );
        }
    }
}

/// `ActQuant::forward_mul`: the squeeze-excitation gating product
/// quantized without writing the product; the gate's gradient is the
/// product's own (`(dq * x)` summed to the gate's shape).
#[test]
fn gating_product_fused_into_quantizers() {
    use qatc_runtime::ops;
    let x = input(93, &specials(2.0, 127.0)).nan_to_num(0.0, 0.0, 0.0);
    tch::manual_seed(94);
    let gate = Tensor::rand([5, 7, 1, 1], (Kind::Float, Device::Cpu)) * 1.5;
    for (layout, x) in [
        ("channels-last", qatc_runtime::layers::channels_last(&x)),
        ("nchw", x.shallow_clone()),
    ] {
        assert_fused_site(
            &format!("gate, {layout}"),
            &|aq, xs| aq.forward_mul(&xs[0], &xs[1]),
            &|aq, xs| tch::nn::Module::forward(aq, &ops::mul(&xs[0], &xs[1])),
            &[x, gate.shallow_clone()],
        );
    }
}

/// The fused kernels run on torch's intra-op threads (the weight quantizer
/// on the calling thread alone); their results do not depend on how many
/// there are. The clipping value's gradient is the one
/// reduction: summed over fixed blocks of the tensor, not over the threads'
/// shares (which would move a block boundary with the thread count). The
/// incoming gradient makes that visible: `g` holds +1e8 a little after
/// the middle of the tensor (the start of the second share of two threads)
/// and -1e8 at the end, with small values around, every element clipped
/// (x far above alpha) so every `g` enters the sum; a float lane sum that
/// starts at a different element keeps a different set of the small
/// values before the 1e8 absorbs the rest.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    use qatc_runtime::quant::{ActQuant, ActSpec, Pre};
    let shape = [5i64, 7, 97, 199];
    let n: i64 = shape.iter().product();
    let x = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.37)
        .sin()
        .view(shape)
        * 3.0
        + 50.0;
    let g: Vec<f32> = (0..n)
        .map(|i| {
            if i == n / 2 + 11 {
                1e8
            } else if i == n - 3 {
                -1e8
            } else {
                1.0 + ((i * 7919) % 13) as f32 * 0.125
            }
        })
        .collect();
    let g = Tensor::from_slice(&g).view(shape);
    let specs = [
        ActSpec::Pact {
            bits: 8,
            alpha: 2.0,
        },
        ActSpec::Mpact {
            bits: 4,
            alpha: 2.0,
        },
    ];
    let before = tch::get_num_threads();
    let run = |threads: i32, spec: ActSpec, concat: bool| {
        tch::set_num_threads(threads);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let aq = ActQuant::from_spec(&vs.root(), spec);
        let x = x.detach().copy().set_requires_grad(true);
        let out = if concat {
            // Two halves of the channels joined again: the concat's own
            // backward reduction, by rows.
            aq.forward_concat(&[
                (&x.narrow(1, 0, 3), Pre::None),
                (&x.narrow(1, 3, 4), Pre::Relu),
            ])
        } else {
            tch::nn::Module::forward(&aq, &x)
        };
        (&out * &g).sum(Kind::Float).backward();
        let da = aq.alpha().expect("a clipping value").grad();
        (out.detach(), x.grad(), da)
    };
    // The weight quantizer (one autograd node run on the calling thread
    // alone) on a weight larger than libtorch's parallel grain (32,768
    // elements): the same values and dw with any thread count.
    tch::manual_seed(95);
    let w = Tensor::randn([64, 64, 3, 3], (Kind::Float, Device::Cpu)) * 0.1;
    let gw = (Tensor::arange(w.numel() as i64, (Kind::Float, Device::Cpu)) * 0.3)
        .sin()
        .view(w.size().as_slice());
    let weight = |threads: i32, bits: u32| {
        tch::set_num_threads(threads);
        let w = w.detach().copy().set_requires_grad(true);
        let q = quant::dorefa_weight(&w, bits);
        (&q * &gw).sum(Kind::Float).backward();
        (q.detach(), w.grad())
    };
    for bits in [2, 4, 8] {
        let one = weight(1, bits);
        for threads in [2, 3] {
            let many = weight(threads, bits);
            let name = format!("dorefa_weight b{bits}, {threads} threads");
            assert_eq!(differing(&one.0, &many.0), 0, "{name}: values");
            assert_same_grad(&format!("{name}: dw"), &one.1, &many.1);
        }
    }
    for spec in specs {
        for concat in [false, true] {
            let one = run(1, spec, concat);
            for threads in [2, 3] {
                let many = run(threads, spec, concat);
                let name = format!("{spec:?}, concat {concat}, {threads} threads");
                assert_eq!(differing(&one.0, &many.0), 0, "{name}: values");
                assert_same_grad(&format!("{name}: dx"), &one.1, &many.1);
                assert_eq!(
                    one.2.double_value(&[]).to_bits(),
                    many.2.double_value(&[]).to_bits(),
                    "{name}: dalpha {} against {} with one thread",
                    many.2.double_value(&[]),
                    one.2.double_value(&[])
                );
            }
        }
    }
    tch::set_num_threads(before);
}
