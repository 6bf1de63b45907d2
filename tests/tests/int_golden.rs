//! The integer engine against the seed's integer-only ToyNet
//! (`toynet_int.safetensors` of the golden set `qatc_testdata::golden_set`
//! picks: `QATC_GOLDEN`, else `../shared/golden`, else the compact set in
//! `tests/golden`, whose integer ToyNet has two of the eight images).
//!
//! What is asserted, and why it holds on any golden set:
//! - `trunc` is the seed's `INTforward`: the stem output and every block
//!   output equal the seed's `int.*` taps, integer for integer. The seed
//!   computes its float32 constants with libtorch's `sqrt` (MKL's `vsSqrt`),
//!   which is not correctly rounded; the plan takes the same square roots
//!   from libtorch (`qatc_int::seed_sqrt`), so that constants on a rounding
//!   boundary come out as the seed's (the test checks that libtorch was
//!   loaded).
//! - The logits are the seed's float32 arithmetic: `F.linear` on float
//!   copies of the integers, then `* re_scale + bias`. Where the fc's
//!   positive products, and its negative ones, each sum to less than 2^24
//!   in magnitude, every summation order is exact, and the logits must be
//!   equal as bits. Beyond 2^24 the seed's sum
//!   depends on the order of PyTorch's CPU matrix multiply; the engine
//!   reproduces the order found on the golden sets
//!   (`engine::seed_linear_f32`), and the test requires those logits
//!   within the float32 rounding of such a sum (`(n-1)` half-ulps of the
//!   bound on its partial sums, times the scale, plus two ulps of the logit for the
//!   last two operations), and prints how many are bit-equal as well.
//! - `nearest` and the scaled mode against fake quantization, and ResNet20
//!   `w8a8`'s integer twin against the seed's fake-quant logits: printed,
//!   not asserted. On random weights their agreement is no criterion
//!   (docs/export.md measures it on trained checkpoints); only what the
//!   arithmetic guarantees is asserted (the library's `evaluate` reports
//!   what the engine computes; the float stem's 16-bit weights are within
//!   half a step of the float ones).

use qatc::driver::{self, Source};
use qatc_int::{self as int, engine, Checkpoint, PlanOptions, Rounding};
use safetensors::tensor::SafeTensors;
use std::path::PathBuf;

fn spec(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../spec")
        .join(name)
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// An integer tensor, int64 (the seed's) or int32 (the compact set's).
fn i64s(st: &SafeTensors, name: &str) -> Vec<i64> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
    match t.dtype() {
        safetensors::Dtype::I64 => t
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::I32 => t
            .data()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        other => panic!("golden tensor {name}: {other:?}, expected an integer tensor"),
    }
}

struct Golden {
    bytes: Vec<u8>,
}

/// The bytes of golden file `name` (every golden set has it, the compact
/// one in `tests/golden` too: see `qatc_testdata`).
fn golden_file(name: &str) -> Vec<u8> {
    let path = qatc_testdata::golden_set().require(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}): set QATC_GOLDEN to the seed's golden directory",
            path.display()
        )
    })
}

fn golden() -> Golden {
    Golden {
        bytes: golden_file("toynet_int.safetensors"),
    }
}

fn plan(g: &Golden, rounding: Rounding) -> int::IntPlan {
    plan_with(g, rounding, int::FixedFormat::new(32, 16))
}

fn plan_with(g: &Golden, rounding: Rounding, head: int::FixedFormat) -> int::IntPlan {
    let src = Source::read(&spec("toynet.qspec")).unwrap();
    let model = driver::parse(&src).unwrap();
    let graph = driver::compile(&src)
        .and_then(|c| c.into_graph(Some("cfg-1*")))
        .unwrap();
    let ck = Checkpoint::import(&g.bytes, &model, &graph, "seed", "state.").unwrap();
    // The seed clamps constants to their format silently (its head bias
    // does not fit fixed<32,16>); saturating reproduces it.
    let mut opts = PlanOptions {
        rounding,
        saturate_constants: true,
        ..PlanOptions::default()
    };
    opts.formats.head = head;
    int::build(&graph, &ck, opts).unwrap()
}

/// Runs every image of `input` through `plan` twice, with the
/// requantizations fused into their convs (as `evaluate` and the bench run
/// them) and without (every accumulator written): both must give the same
/// logits, statistics and tensors (a fused conv's accumulator excepted, which
/// is not written; an activation kept only as a 1x1 conv's operand compared
/// from that). Hands each fused result and the unfused run's tensors (equal
/// where both exist, and all there) to `f`.
fn run_each(
    plan: &int::IntPlan,
    input: &[f32],
    mut f: impl FnMut(usize, &engine::ImageOutput, &engine::Workspace),
) {
    let per = plan.input_len();
    let weights = engine::Weights::new(plan);
    let mut ws = engine::Workspace::new(plan);
    let mut fused = engine::Workspace::new(plan);
    fused.fuse_requant(true);
    let mut unwritten = 0;
    for (img, x) in input.chunks_exact(per).enumerate() {
        let sim = Default::default();
        let out = engine::run_image(plan, &weights, x, &mut ws, &sim).unwrap();
        let out_fused = engine::run_image(plan, &weights, x, &mut fused, &sim).unwrap();
        assert_eq!(out, out_fused, "image {img}: fused requantization differs");
        assert_eq!(ws.stats, fused.stats, "image {img}: statistics differ");
        for (t, info) in plan.tensors.iter().enumerate() {
            // An activation kept only as the next 1x1 convs' operand is
            // compared from there.
            let packed = fused.unpacked(plan, t);
            match fused.tensor(t).or(packed.as_ref()) {
                Some(b) => assert_eq!(
                    b.to_i64(),
                    ws.tensor(t).unwrap().to_i64(),
                    "image {img}: tensor {} differs when fused",
                    info.name
                ),
                None => unwritten += 1,
            }
        }
        // Every tensor, from the unfused run (the fused one equals it).
        f(img, &out_fused, &ws);
    }
    eprintln!("fused run: {unwritten} accumulator tensors unwritten over all images");
}

#[test]
fn golden_toynet_trunc_is_bit_exact() {
    let g = golden();
    let sqrt = qatc_int::seed_sqrt::source();
    assert!(
        matches!(sqrt, qatc_int::seed_sqrt::SqrtSource::Libtorch(_)),
        "the seed's square roots need libtorch: {sqrt:?}"
    );
    let st = SafeTensors::deserialize(&g.bytes).unwrap();
    let plan = plan(&g, Rounding::Trunc);
    let input = f32s(&st, "input");
    let logits_int = f32s(&st, "logits_int");
    let per = plan.input_len();
    let n = input.len() / per;
    // Eight images in a full set, two in the compact one.
    assert!(n >= 1 && input.len() == n * per, "{n} images");
    let cells = [
        "s1.0", "s2.0", "s2.1", "s2.2", "s3.0", "s3.1", "s3.2", "s4.0", "s4.1", "s4.2",
    ];
    let mut taps = vec![("stem.act_quant_out".to_string(), "int.stem".to_string())];
    for (i, c) in cells.iter().enumerate() {
        taps.push((format!("{c}.act_quant_out"), format!("int.cell{i}")));
    }
    let golden_taps: Vec<Vec<i64>> = taps.iter().map(|(_, g)| i64s(&st, g)).collect();
    let mut mismatches = Vec::new();
    let fc = plan
        .layers
        .iter()
        .find_map(|l| match l {
            int::plan::Layer::Conv(c) if c.output == plan.output.terms[0].0 => Some(c),
            _ => None,
        })
        .expect("the fc layer");
    let fc_in = match fc.input {
        int::plan::ConvInput::Tensor(t) => t,
        int::plan::ConvInput::Float => panic!("the fc reads integers"),
    };
    let (mut exact_any_order, mut beyond, mut beyond_equal) = (0, 0, 0);
    run_each(&plan, &input, |img, out, ws| {
        for ((node, gname), gold) in taps.iter().zip(&golden_taps) {
            let t = plan
                .tensor_of(node)
                .unwrap_or_else(|| panic!("no tensor for {node}"));
            let ours = ws.tensor(t).unwrap().to_i64();
            let len = ours.len();
            let theirs = &gold[img * len..(img + 1) * len];
            let bad = ours.iter().zip(theirs).filter(|(a, b)| a != b).count();
            if bad > 0 {
                mismatches.push(format!(
                    "image {img} {gname} ({node}): {bad} of {len} differ"
                ));
            }
        }
        let want = &logits_int[img * 10..(img + 1) * 10];
        let x = ws.tensor(fc_in).unwrap().to_i64();
        for (c, (a, b)) in out.logits.iter().zip(want).enumerate() {
            let row = &fc.weights[c * fc.cin..(c + 1) * fc.cin];
            // The larger of the sums of the positive and of the negative
            // products bounds every partial sum, in any order.
            let (mut pos, mut neg) = (0f64, 0f64);
            for (x, w) in x.iter().zip(row) {
                let p = *x as f64 * *w as f64;
                if p > 0.0 {
                    pos += p;
                } else {
                    neg -= p;
                }
            }
            let reach = pos.max(neg);
            if reach < 16_777_216.0 {
                exact_any_order += 1;
                if a.to_bits() != b.to_bits() {
                    mismatches.push(format!(
                        "image {img} logit {c}: {a} vs seed {b} (fc sum exact in float32)"
                    ));
                }
            } else {
                beyond += 1;
                beyond_equal += usize::from(a.to_bits() == b.to_bits());
                let half_ulp = ulp(reach as f32) as f64 / 2.0;
                let k = plan.output.terms_f32[0][c].abs() as f64;
                let bound = (fc.cin - 1) as f64 * half_ulp * k + 2.0 * ulp(b.abs()) as f64;
                if ((a - b).abs() as f64) > bound {
                    mismatches.push(format!(
                        "image {img} logit {c}: {a} vs seed {b}, beyond the float32 rounding of its fc sum ({bound:e})"
                    ));
                }
            }
        }
    });
    eprintln!(
        "logits: {exact_any_order} with fc sums below 2^24 (bit-equal required); {beyond} beyond, \
         {beyond_equal} of them bit-equal with the reproduced summation order"
    );
    assert!(
        mismatches.is_empty(),
        "not bit exact:\n{}",
        mismatches.join("\n")
    );
}

/// The distance from `x` to the next float32 away from zero.
fn ulp(x: f32) -> f32 {
    let x = x.abs();
    f32::from_bits(x.to_bits() + 1) - x
}

#[test]
fn golden_toynet_nearest_against_fake_quant() {
    let g = golden();
    let st = SafeTensors::deserialize(&g.bytes).unwrap();
    let fq = f32s(&st, "logits_fakequant");
    let seed_int = f32s(&st, "logits_int");
    let input = f32s(&st, "input");
    let mut report = Vec::new();
    // The third run gives the head one more integer bit, so that its bias
    // is not clamped (fake quantization does not clamp it either).
    let configs = [
        (Rounding::Trunc, 16),
        (Rounding::Nearest, 16),
        (Rounding::Nearest, 17),
        (Rounding::Scaled, 16),
    ];
    for (rounding, head_int) in configs {
        let plan = plan_with(&g, rounding, int::FixedFormat::new(32, head_int));
        let mut max_diff = 0f32;
        let mut agree = 0;
        run_each(&plan, &input, |img, out, _| {
            let want = &fq[img * 10..(img + 1) * 10];
            for (a, b) in out.logits.iter().zip(want) {
                max_diff = max_diff.max((a - b).abs());
            }
            agree += usize::from(engine::argmax(&out.logits) == engine::argmax(want));
        });
        report.push((
            format!("{rounding}, head fixed<32,{head_int}>"),
            max_diff,
            agree,
        ));
    }
    // The library's evaluate + agreement (what `qatc eval --int` reports)
    // give the same numbers as the loop above.
    struct GoldenImages<'a>(&'a [f32], usize);
    impl int::Images for GoldenImages<'_> {
        fn len(&self) -> usize {
            self.0.len() / self.1
        }
        fn image(&self, i: usize, out: &mut [f32]) {
            out.copy_from_slice(&self.0[i * self.1..(i + 1) * self.1]);
        }
        fn label(&self, _: usize) -> usize {
            0
        }
    }
    let trunc_plan = plan(&g, Rounding::Trunc);
    let opts = int::EvalOptions {
        keep_logits: true,
        ..Default::default()
    };
    let r = int::evaluate(
        &trunc_plan,
        &GoldenImages(&input, trunc_plan.input_len()),
        opts,
    )
    .unwrap();
    let fq_rows: Vec<Vec<f32>> = fq.chunks(10).map(|c| c.to_vec()).collect();
    let a = int::agreement(&r, &fq_rows);
    assert_eq!((a.images, a.max_logit_diff), (fq.len() / 10, report[0].1));
    assert_eq!(a.same_top1, report[0].2 as f64 / a.images as f64);
    let seed_diff = seed_int
        .iter()
        .zip(&fq)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    for (r, d, a) in &report {
        eprintln!(
            "{r}: max |logit - fake-quant logit| = {d:.4}, top-1 agreement {a}/{}",
            fq.len() / 10
        );
    }
    eprintln!("seed integer logits: max |diff| to fake quant = {seed_diff:.4}");
    // Trunc is the seed's pipeline: its distance to fake quantization is the
    // seed's own (the logits are the seed's, see the bit-exact test).
    let (_, trunc_diff, _) = report[0];
    assert!(
        (trunc_diff - seed_diff).abs() <= 1e-3 * seed_diff.max(1.0),
        "trunc ({trunc_diff}) must be the seed's pipeline ({seed_diff})"
    );
}

/// ResNet20 `w8a8` keeps its stem float (weights and output), which feeds a
/// conv and a residual add: its weights become 16-bit fixed-point numbers
/// (asserted: within half a step) and its output is materialised as wide
/// integers. Its `nearest` logits against the seed's own fake-quant eval
/// logits (`resnet20.safetensors`) are printed: random weights make the
/// agreement a measurement, not a criterion.
#[test]
fn golden_resnet20_w8a8_integer_against_fake_quant() {
    let bytes = golden_file("resnet20.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let src = Source::read(&spec("resnet20.qspec")).unwrap();
    let model = driver::parse(&src).unwrap();
    let graph = driver::compile(&src)
        .and_then(|c| c.into_graph(Some("w8a8")))
        .unwrap();
    let ck = Checkpoint::import(&bytes, &model, &graph, "seed", "state.").unwrap();
    let plan = int::build(
        &graph,
        &ck,
        PlanOptions {
            rounding: Rounding::Nearest,
            ..PlanOptions::default()
        },
    )
    .unwrap();
    // The float stem's weights: 16-bit fixed point, one power-of-two scale.
    let stem = plan
        .layers
        .iter()
        .find_map(|l| match l {
            int::plan::Layer::Conv(c) if c.name == "stem.stem" => Some(c),
            _ => None,
        })
        .expect("the stem conv");
    assert!(matches!(stem.input, int::plan::ConvInput::Float));
    assert_eq!(stem.w_bits, int::plan::FLOAT_STEM_WEIGHT_BITS);
    assert_eq!(stem.w_scale.log2().fract(), 0.0, "a power-of-two scale");
    let w = ck.get("stem.stem.weight").unwrap();
    for (q, x) in stem.weights.iter().zip(w) {
        assert!((*q as f64 / stem.w_scale - *x as f64).abs() <= 0.5 / stem.w_scale);
        assert!(q.unsigned_abs() < 1 << 15);
    }
    let fq = f32s(&st, "logits_eval");
    let input = f32s(&st, "input");
    let (mut max_diff, mut agree, mut range) = (0f32, 0, 0f32);
    run_each(&plan, &input, |img, out, _| {
        let want = &fq[img * 10..(img + 1) * 10];
        for (a, b) in out.logits.iter().zip(want) {
            max_diff = max_diff.max((a - b).abs());
            range = range.max(b.abs());
        }
        agree += usize::from(engine::argmax(&out.logits) == engine::argmax(want));
    });
    eprintln!(
        "resnet20 w8a8, nearest: max |logit - fake-quant logit| = {max_diff:.4} (largest logit {range:.3}), top-1 agreement {agree}/{}", fq.len() / 10
    );
    assert!(max_diff.is_finite() && range.is_finite());
}
