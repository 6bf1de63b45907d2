//! The quantizers against the golden tensors of the seed's PyTorch code
//! (`quantizers.safetensors`, described in the golden directory's README).
//!
//! The golden set is `$QATC_GOLDEN` (a relative path is taken from the
//! workspace root), else `../shared/golden`, else the compact set shipped in
//! `tests/golden` (which has this file whole; see `qatc_testdata`). A
//! missing tensor fails the tests: they must not pass on nothing.
//!
//! Outputs must match bit for bit, except that an element may flip by one
//! quantization step (a value on a rounding boundary); flips are counted and
//! allowed on at most 0.1% of the elements. Gradients must match within 1e-5
//! relative. Run with `--nocapture` to see the counts.
//!
//! The quantizers run on `QATC_TEST_DEVICE` (default `cpu`; the GPU device
//! check sets `cuda`, where the stock-op path replaces the fused CPU
//! kernels), under the same bounds: their arithmetic is element-wise, so a
//! GPU may differ only in the last bit of `tanh` and the divisions, which
//! the one-step flip allowance and the 1e-5 gradient bound cover.

use qatc_runtime::quant::{dorefa_activation, dorefa_weight, reference, ActQuant};
use std::collections::{BTreeSet, HashMap};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

const WEIGHT_BITS: [u32; 6] = [2, 3, 4, 6, 8, 16];
const ACT_BITS: [u32; 5] = [1, 2, 4, 8, 16];
const PACT_ALPHA: &str = "2.5";
const PACT_BITS: [u32; 3] = [2, 4, 8];
const MPACT_ALPHA: &str = "1.7";
const MPACT_BITS: [u32; 5] = [2, 4, 6, 8, 16];

struct Golden(HashMap<String, Tensor>);

/// `QATC_TEST_DEVICE` (`qatc_testdata::test_device`).
fn device() -> Device {
    let name = qatc_testdata::test_device();
    qatc_runtime::device::parse_device(&name)
        .unwrap_or_else(|e| panic!("QATC_TEST_DEVICE={name}: {e}"))
}

impl Golden {
    fn load() -> Self {
        let file = qatc_testdata::golden_set().require("quantizers.safetensors");
        let tensors = Tensor::read_safetensors(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        Self(tensors.into_iter().collect())
    }

    fn get(&self, name: &str) -> &Tensor {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("golden tensor {name} missing"))
    }

    fn leaf(&self, name: &str) -> Tensor {
        self.get(name)
            .detach()
            .to_device(device())
            .copy()
            .set_requires_grad(true)
    }
}

/// Output check: exact, up to one-step flips on at most 0.1% of the elements.
/// Returns the number of flips.
fn check_output(name: &str, got: &Tensor, want: &Tensor, step: f64) -> i64 {
    assert_eq!(got.size(), want.size(), "{name}: shape");
    let diff = (got - want).abs();
    let flips = diff.gt(0.0).sum(Kind::Int64).int64_value(&[]);
    let max_diff = diff.max().double_value(&[]);
    assert!(
        max_diff <= step * (1.0 + 1e-4),
        "{name}: an element is off by {max_diff}, more than one step ({step})"
    );
    let numel = want.numel() as i64;
    assert!(
        flips * 1000 <= numel,
        "{name}: {flips} of {numel} elements flipped, more than 0.1%"
    );
    flips
}

/// Gradient check: |got - want| <= 1e-5 |want| elementwise (plus 1e-12 for
/// zeros). Returns the largest relative error.
fn check_grad(name: &str, got: &Tensor, want: &Tensor) -> f64 {
    let got = got.reshape(want.size());
    let err = (&got - want).abs();
    let bad = err
        .gt_tensor(&(want.abs() * 1e-5 + 1e-12))
        .sum(Kind::Int64)
        .int64_value(&[]);
    let rel = (err / want.abs().clamp_min(1e-12)).max().double_value(&[]);
    assert_eq!(
        bad, 0,
        "{name}: {bad} gradient elements off by more than 1e-5 relative (max {rel:e})"
    );
    rel
}

/// Runs `quant` on a fresh leaf copy of `input`, backpropagates
/// `sum(q * grad_out)`, and returns the output and the input's gradient.
fn run(
    golden: &Golden,
    input: &str,
    grad_out: &str,
    quant: impl Fn(&Tensor) -> Tensor,
) -> (Tensor, Tensor) {
    let x = golden.leaf(input);
    let q = quant(&x);
    (&q * golden.get(grad_out).to_device(x.device()))
        .sum(Kind::Float)
        .backward();
    (
        q.detach().to_device(Device::Cpu),
        x.grad().to_device(Device::Cpu),
    )
}

#[test]
fn golden_weight_dorefa() {
    let golden = Golden::load();
    for bits in WEIGHT_BITS {
        let key = format!("weight_dorefa.b{bits}");
        let (out, grad) = run(&golden, "w", "grad_out_w", |w| dorefa_weight(w, bits));
        let step = if bits == 2 {
            2.0
        } else {
            1.0 / f64::from((1u32 << (bits - 1)) - 1)
        };
        let flips = check_output(&key, &out, golden.get(&format!("{key}.out")), step);
        let rel = check_grad(&key, &grad, golden.get(&format!("{key}.grad_w")));
        println!(
            "{key}: {flips} of {} outputs flipped, grad_w max rel err {rel:e}",
            out.numel()
        );
    }
}

#[test]
fn golden_act_dorefa() {
    let golden = Golden::load();
    for bits in ACT_BITS {
        let key = format!("act_dorefa.b{bits}");
        let (out, grad) = run(&golden, "x", "grad_out_x", |x| dorefa_activation(x, bits));
        let flips = check_output(
            &key,
            &out,
            golden.get(&format!("{key}.out")),
            1.0 / f64::from((1u32 << bits) - 1),
        );
        let rel = check_grad(&key, &grad, golden.get(&format!("{key}.grad_x")));
        println!(
            "{key}: {flips} of {} outputs flipped, grad_x max rel err {rel:e}",
            out.numel()
        );
    }
}

/// PACT and mPACT through [`ActQuant`], with the clipping value as a
/// variable of a var store, as a generated model holds it.
fn check_clipping_quantizer(golden: &Golden, name: &str, alpha: &str, bits: u32) {
    let key = format!("{name}.alpha{alpha}.b{bits}");
    let alpha_init: f64 = alpha.parse().unwrap();
    let vs = nn::VarStore::new(device());
    let quant = match name {
        "pact" => ActQuant::pact(&(vs.root() / name), bits, alpha_init),
        _ => ActQuant::mpact(&(vs.root() / name), bits, alpha_init),
    };
    let alpha_var = quant.alpha().expect("clipping quantizers hold alpha");
    assert_eq!(alpha_var.size(), Vec::<i64>::new(), "alpha is a scalar");
    assert_eq!(alpha_var.double_value(&[]) as f32, alpha_init as f32);
    let (out, grad) = run(golden, "x", "grad_out_x", |x| quant.forward(x));
    let levels = if name == "pact" {
        (1u32 << bits) - 1
    } else {
        (1u32 << (bits - 1)) - 1
    };
    let step = alpha_init / f64::from(levels);
    let flips = check_output(&key, &out, golden.get(&format!("{key}.out")), step);
    let rel_x = check_grad(&key, &grad, golden.get(&format!("{key}.grad_x")));
    let rel_a = check_grad(
        &format!("{key} alpha"),
        &alpha_var.grad().to_device(Device::Cpu),
        golden.get(&format!("{key}.grad_alpha")),
    );
    println!(
        "{key}: {flips} of {} outputs flipped, grad_x max rel err {rel_x:e}, grad_alpha rel err {rel_a:e}",
        out.numel()
    );
}

#[test]
fn golden_pact() {
    let golden = Golden::load();
    for bits in PACT_BITS {
        check_clipping_quantizer(&golden, "pact", PACT_ALPHA, bits);
    }
}

#[test]
fn golden_mpact() {
    let golden = Golden::load();
    for bits in MPACT_BITS {
        check_clipping_quantizer(&golden, "mpact", MPACT_ALPHA, bits);
    }
}

/// The reference quantizers (`quant::reference`, which the fast ones are
/// checked against in `fused_quantizers.rs`) against the same tensors.
#[test]
fn golden_reference_quantizers() {
    let golden = Golden::load();
    for bits in WEIGHT_BITS {
        let key = format!("weight_dorefa.b{bits}");
        let (out, grad) = run(&golden, "w", "grad_out_w", |w| {
            reference::dorefa_weight(w, bits)
        });
        let step = if bits == 2 {
            2.0
        } else {
            1.0 / f64::from((1u32 << (bits - 1)) - 1)
        };
        check_output(&key, &out, golden.get(&format!("{key}.out")), step);
        check_grad(&key, &grad, golden.get(&format!("{key}.grad_w")));
    }
    for bits in ACT_BITS {
        let key = format!("act_dorefa.b{bits}");
        let (out, grad) = run(&golden, "x", "grad_out_x", |x| {
            reference::dorefa_activation(x, bits)
        });
        let step = 1.0 / f64::from((1u32 << bits) - 1);
        check_output(&key, &out, golden.get(&format!("{key}.out")), step);
        check_grad(&key, &grad, golden.get(&format!("{key}.grad_x")));
    }
    type Clipping = fn(&Tensor, &Tensor, u32) -> Tensor;
    for (name, alpha, bits_list, f, k) in [
        (
            "pact",
            PACT_ALPHA,
            &PACT_BITS[..],
            reference::pact as Clipping,
            0,
        ),
        (
            "mpact",
            MPACT_ALPHA,
            &MPACT_BITS[..],
            reference::mpact as Clipping,
            1,
        ),
    ] {
        for &bits in bits_list {
            let key = format!("{name}.alpha{alpha}.b{bits}");
            let a: f32 = alpha.parse().unwrap();
            let a = Tensor::from(a).set_requires_grad(true);
            let (out, grad) = run(&golden, "x", "grad_out_x", |x| f(x, &a, bits));
            let step =
                f64::from(alpha.parse::<f32>().unwrap()) / f64::from((1u32 << (bits - k)) - 1);
            check_output(&key, &out, golden.get(&format!("{key}.out")), step);
            check_grad(&key, &grad, golden.get(&format!("{key}.grad_x")));
            check_grad(
                &format!("{key} alpha"),
                &a.grad(),
                golden.get(&format!("{key}.grad_alpha")),
            );
        }
    }
}

/// Every tensor of the golden file is an input or is checked above, so a
/// quantizer added to the file cannot go unchecked.
#[test]
fn golden_quantizers_all_checked() {
    let golden = Golden::load();
    let mut expected: BTreeSet<String> = ["x", "w", "grad_out_x", "grad_out_w"]
        .into_iter()
        .map(String::from)
        .collect();
    for bits in WEIGHT_BITS {
        expected.extend(["out", "grad_w"].map(|t| format!("weight_dorefa.b{bits}.{t}")));
    }
    for bits in ACT_BITS {
        expected.extend(["out", "grad_x"].map(|t| format!("act_dorefa.b{bits}.{t}")));
    }
    for (name, alpha, bits_list) in [
        ("pact", PACT_ALPHA, &PACT_BITS[..]),
        ("mpact", MPACT_ALPHA, &MPACT_BITS[..]),
    ] {
        for bits in bits_list {
            expected.extend(
                ["out", "grad_x", "grad_alpha"].map(|t| format!("{name}.alpha{alpha}.b{bits}.{t}")),
            );
        }
    }
    let present: BTreeSet<String> = golden.0.keys().cloned().collect();
    assert_eq!(present, expected);
}
