//! Where the time of a QAT step goes, op by op: each quantizer's forward
//! and backward (and its forward under `no_grad`) on one activation-sized
//! tensor, the fast path of `quant` (fused C++ kernels) next to its stock-op
//! path and `quant::reference`, and a ReLU
//! and a 3x3 conv of the same size for scale. Medians of 21 runs.
//!
//! `./dev cargo run --release -p qatc-runtime --example quant_cost [-- N C H W]`
//! (default 128 16 32 32: a ResNet20 stage-1 activation at batch 128).

use qatc_runtime::quant::{self, reference};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn median_ms(mut f: impl FnMut(), reps: usize) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

/// `f` with the fused kernels switched off: the stock-op path.
fn stock(f: impl FnOnce() -> Tensor) -> Tensor {
    quant::set_fused_kernels(false);
    let out = f();
    quant::set_fused_kernels(true);
    out
}

fn main() {
    let dims: Vec<i64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("N C H W"))
        .collect();
    let dims = if dims.len() == 4 {
        dims
    } else {
        vec![128, 16, 32, 32]
    };
    let threads = qatc_runtime::bench::configure_threads().expect("threads");
    println!("tensor {dims:?}, {threads}");
    tch::manual_seed(0);
    let x0 = Tensor::randn(dims.as_slice(), (Kind::Float, Device::Cpu)) * 3.0;
    let g = Tensor::randn(dims.as_slice(), (Kind::Float, Device::Cpu));
    let alpha = Tensor::from(2.5f32).set_requires_grad(true);
    let reps = 21;
    let c = dims[1];
    let w = (Tensor::randn([c, c, 3, 3], (Kind::Float, Device::Cpu)) * 0.1).set_requires_grad(true);

    type Op<'a> = Box<dyn Fn(&Tensor) -> Tensor + 'a>;
    let ops: Vec<(&str, Op)> = vec![
        (
            "identity (32 bits)",
            Box::new(|x: &Tensor| quant::dorefa_activation(x, 32)),
        ),
        ("relu", Box::new(|x: &Tensor| x.relu())),
        (
            "dorefa_activation 8",
            Box::new(|x: &Tensor| quant::dorefa_activation(x, 8)),
        ),
        (
            "  stock ops",
            Box::new(|x: &Tensor| stock(|| quant::dorefa_activation(x, 8))),
        ),
        (
            "  reference",
            Box::new(|x: &Tensor| reference::dorefa_activation(x, 8)),
        ),
        ("pact 8", Box::new(|x: &Tensor| quant::pact(x, &alpha, 8))),
        (
            "  stock ops",
            Box::new(|x: &Tensor| stock(|| quant::pact(x, &alpha, 8))),
        ),
        (
            "  reference",
            Box::new(|x: &Tensor| reference::pact(x, &alpha, 8)),
        ),
        ("mpact 8", Box::new(|x: &Tensor| quant::mpact(x, &alpha, 8))),
        (
            "  stock ops",
            Box::new(|x: &Tensor| stock(|| quant::mpact(x, &alpha, 8))),
        ),
        (
            "  reference",
            Box::new(|x: &Tensor| reference::mpact(x, &alpha, 8)),
        ),
        (
            "fixed_scale_pact 8",
            Box::new(|x: &Tensor| quant::fixed_scale_pact(x, 6.0, 8)),
        ),
        (
            "  reference",
            Box::new(|x: &Tensor| reference::fixed_scale_pact(x, 6.0, 8)),
        ),
        (
            "conv3x3 (float weight)",
            Box::new(|x: &Tensor| x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)),
        ),
        (
            "dorefa_weight 8 (CxCx3x3)",
            Box::new(|_: &Tensor| quant::dorefa_weight(&w, 8)),
        ),
        (
            "  reference",
            Box::new(|_: &Tensor| reference::dorefa_weight(&w, 8)),
        ),
    ];
    // Warm up libtorch and the allocator on every op before timing any.
    for (_, op) in &ops {
        let x = x0.detach().copy().set_requires_grad(true);
        op(&x).sum(Kind::Float).backward();
    }
    println!(
        "{:<28} {:>12} {:>14} {:>12}",
        "op", "fwd ms", "fwd+bwd ms", "no_grad ms"
    );
    for (i, (name, op)) in ops.iter().enumerate() {
        let weight_only = name.starts_with("dorefa_weight") || i == ops.len() - 1;
        let x = x0.detach().copy().set_requires_grad(true);
        let fwd = median_ms(
            || {
                let _ = op(&x);
            },
            reps,
        );
        let both = median_ms(
            || {
                let y = op(&x);
                if y.requires_grad() {
                    // The loss sum(y * g) adds a mul and a sum each way: the
                    // identity row shows that floor.
                    if weight_only {
                        y.sum(Kind::Float).backward();
                    } else {
                        (&y * &g).sum(Kind::Float).backward();
                    }
                }
            },
            reps,
        );
        let inference = median_ms(
            || {
                let _ = tch::no_grad(|| op(&x0));
            },
            reps,
        );
        println!("{name:<28} {fwd:>12.3} {both:>14.3} {inference:>12.3}");
    }
}
