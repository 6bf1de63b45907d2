//! The quantizer sites of the four new families (issue 16), forward and
//! backward, as the float model runs the op alone, as the QAT model ran it
//! before (op, then the quantizer's kernel) and fused into the quantizer
//! (`ActQuant::forward_hardswish`, `forward_concat`, `forward_mul`), on
//! channels-last tensors of the models' sizes at batch 128. The three
//! variants of a site run in turns, medians of 21 turns, so a busy
//! machine slows all three alike.
//!
//! `./dev cargo run --release -p qatc-runtime --example fused_sites`

use qatc_runtime::layers::channels_last;
use qatc_runtime::ops;
use qatc_runtime::quant::{ActQuant, ActSpec, Pre};
use std::time::Instant;
use tch::{nn::Module, Device, Kind, Tensor};

fn randn(dims: &[i64]) -> Tensor {
    channels_last(&(Tensor::randn(dims, (Kind::Float, Device::Cpu)) * 2.0))
}

type Site<'a> = Box<dyn Fn(&[Tensor]) -> Tensor + 'a>;
/// One site: its name, its inputs, and the float, unfused and fused variants.
type Case<'a> = (&'static str, Vec<Tensor>, [(&'static str, Site<'a>); 3]);

/// Median ms of forward + backward of each variant on leaves copied from `inputs`.
fn time(inputs: &[Tensor], variants: &[(&str, Site)]) -> Vec<f64> {
    let reps = 21;
    let mut times = vec![Vec::new(); variants.len()];
    for rep in 0..reps + 1 {
        for (i, (_, f)) in variants.iter().enumerate() {
            let leaves: Vec<Tensor> = inputs
                .iter()
                .map(|x| x.detach().copy().set_requires_grad(true))
                .collect();
            let start = Instant::now();
            let out = f(&leaves);
            out.sum(Kind::Float).backward();
            let ms = start.elapsed().as_secs_f64() * 1e3;
            if rep > 0 {
                times[i].push(ms);
            }
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

fn main() {
    let threads = qatc_runtime::bench::configure_threads().expect("threads");
    println!("{threads}; forward + backward, ms (median of 21)");
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let mpact = ActQuant::from_spec(
        &(vs.root() / "m"),
        ActSpec::Mpact {
            bits: 8,
            alpha: 10.0,
        },
    );
    let pact = ActQuant::from_spec(
        &(vs.root() / "p"),
        ActSpec::Pact {
            bits: 8,
            alpha: 10.0,
        },
    );
    let cases: Vec<Case> = vec![
        (
            "hardswish -> mPACT, 128x96x16x16 (MobileNetV3-Small b4)",
            vec![randn(&[128, 96, 16, 16])],
            [
                ("float", Box::new(|x: &[Tensor]| ops::hardswish(&x[0]))),
                (
                    "unfused",
                    Box::new(|x: &[Tensor]| mpact.forward(&ops::hardswish(&x[0]))),
                ),
                (
                    "fused",
                    Box::new(|x: &[Tensor]| mpact.forward_hardswish(&x[0])),
                ),
            ],
        ),
        (
            "concat(split part, relu) -> PACT, 2 x 128x58x16x16 (ShuffleNetV2 stage2)",
            vec![randn(&[128, 116, 16, 16]), randn(&[128, 58, 16, 16])],
            [
                (
                    "float",
                    Box::new(|x: &[Tensor]| {
                        ops::concat(&[&ops::channels(&x[0], 0, 58), &ops::relu(&x[1])])
                    }),
                ),
                (
                    "unfused",
                    Box::new(|x: &[Tensor]| {
                        pact.forward(&ops::concat(&[
                            &ops::channels(&x[0], 0, 58),
                            &ops::relu(&x[1]),
                        ]))
                    }),
                ),
                (
                    "fused",
                    Box::new(|x: &[Tensor]| {
                        pact.forward_concat(&[
                            (&ops::channels(&x[0], 0, 58), Pre::None),
                            (&x[1], Pre::Relu),
                        ])
                    }),
                ),
            ],
        ),
        (
            "concat(x, new) -> mPACT, 128x(156+12)x32x32 (DenseNet-BC block1)",
            vec![randn(&[128, 156, 32, 32]), randn(&[128, 12, 32, 32])],
            [
                (
                    "float",
                    Box::new(|x: &[Tensor]| ops::concat(&[&x[0], &x[1]])),
                ),
                (
                    "unfused",
                    Box::new(|x: &[Tensor]| mpact.forward(&ops::concat(&[&x[0], &x[1]]))),
                ),
                (
                    "fused",
                    Box::new(|x: &[Tensor]| {
                        mpact.forward_concat(&[(&x[0], Pre::None), (&x[1], Pre::None)])
                    }),
                ),
            ],
        ),
        (
            "y * gate -> mPACT, 128x16x32x32 (SE-ResNet20 stage1)",
            vec![randn(&[128, 16, 32, 32]), randn(&[128, 16, 1, 1])],
            [
                ("float", Box::new(|x: &[Tensor]| ops::mul(&x[0], &x[1]))),
                (
                    "unfused",
                    Box::new(|x: &[Tensor]| mpact.forward(&ops::mul(&x[0], &x[1]))),
                ),
                (
                    "fused",
                    Box::new(|x: &[Tensor]| mpact.forward_mul(&x[0], &x[1])),
                ),
            ],
        ),
    ];
    println!("| site | float op | QAT unfused | QAT fused |");
    println!("|---|---|---|---|");
    for (name, inputs, variants) in &cases {
        let t = time(inputs, variants);
        println!("| {name} | {:.2} | {:.2} | {:.2} |", t[0], t[1], t[2]);
    }
}
