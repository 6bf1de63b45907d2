//! The integer engine against the seed's integer-only ToyNet
//! (`toynet_int.safetensors` in `QATC_GOLDEN`, default `../shared/golden`
//! next to the workspace): in `trunc` mode the stem output, every block
//! output and the logits must be identical; `nearest` is compared with the
//! fake-quant logits and reported.

use qatc::driver::{self, Source};
use qatc::int::{self, engine, Checkpoint, PlanOptions, Rounding};
use safetensors::tensor::SafeTensors;
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    match std::env::var_os("QATC_GOLDEN") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"),
    }
}

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

fn i64s(st: &SafeTensors, name: &str) -> Vec<i64> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
    t.data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

struct Golden {
    bytes: Vec<u8>,
}

/// The bytes of golden file `name`.
fn golden_file(name: &str) -> Vec<u8> {
    let path = golden_dir().join(name);
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
    let graph = driver::compile(&src, Some("cfg-1*")).unwrap();
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

/// Runs every image of `input` through `plan`, handing each result and the
/// engine's tensors to `f`.
fn run_each(
    plan: &int::IntPlan,
    input: &[f32],
    mut f: impl FnMut(usize, &engine::ImageOutput, &engine::Workspace),
) {
    let per = plan.input_len();
    let weights = engine::Weights::new(plan);
    let mut ws = engine::Workspace::new(plan);
    for (img, x) in input.chunks_exact(per).enumerate() {
        let out = engine::run_image(plan, &weights, x, &mut ws, &Default::default()).unwrap();
        f(img, &out, &ws);
    }
}

#[test]
fn golden_toynet_trunc_is_bit_exact() {
    let g = golden();
    let st = SafeTensors::deserialize(&g.bytes).unwrap();
    let plan = plan(&g, Rounding::Trunc);
    let input = f32s(&st, "input");
    let logits_int = f32s(&st, "logits_int");
    let per = plan.input_len();
    let n = input.len() / per;
    assert_eq!(n, 8);
    let cells = [
        "s1.0", "s2.0", "s2.1", "s2.2", "s3.0", "s3.1", "s3.2", "s4.0", "s4.1", "s4.2",
    ];
    let mut taps = vec![("stem.act_quant_out".to_string(), "int.stem".to_string())];
    for (i, c) in cells.iter().enumerate() {
        taps.push((format!("{c}.act_quant_out"), format!("int.cell{i}")));
    }
    let golden_taps: Vec<Vec<i64>> = taps.iter().map(|(_, g)| i64s(&st, g)).collect();
    let mut mismatches = Vec::new();
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
        for (c, (a, b)) in out.logits.iter().zip(want).enumerate() {
            if a.to_bits() != b.to_bits() {
                mismatches.push(format!("image {img} logit {c}: {a} vs seed {b}"));
            }
        }
    });
    assert!(
        mismatches.is_empty(),
        "not bit exact:\n{}",
        mismatches.join("\n")
    );
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
    struct Golden8<'a>(&'a [f32], usize);
    impl int::Images for Golden8<'_> {
        fn len(&self) -> usize {
            8
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
    let r = int::evaluate(&trunc_plan, &Golden8(&input, trunc_plan.input_len()), opts).unwrap();
    let fq_rows: Vec<Vec<f32>> = fq.chunks(10).map(|c| c.to_vec()).collect();
    let a = int::agreement(&r, &fq_rows);
    assert_eq!((a.images, a.max_logit_diff), (8, report[0].1));
    assert_eq!(a.same_top1, report[0].2 as f64 / 8.0);
    let seed_diff = seed_int
        .iter()
        .zip(&fq)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    for (r, d, a) in &report {
        eprintln!("{r}: max |logit - fake-quant logit| = {d:.4}, top-1 agreement {a}/8");
    }
    eprintln!("seed integer logits: max |diff| to fake quant = {seed_diff:.4}");
    let (_, trunc_diff, _) = report[0];
    let (_, nearest_diff, _) = report[1];
    let (_, unclamped_diff, nearest_agree) = report[2];
    assert!(
        (trunc_diff - seed_diff).abs() < 1e-6,
        "trunc must be the seed's pipeline"
    );
    assert!(
        nearest_diff < trunc_diff,
        "nearest ({nearest_diff}) should be closer to fake quant than trunc ({trunc_diff})"
    );
    assert!(
        unclamped_diff < nearest_diff,
        "the clamped head bias ({nearest_diff}) should cost more than rounding ({unclamped_diff})"
    );
    assert!(
        nearest_agree >= 7,
        "nearest agrees with fake quant on {nearest_agree}/8 images"
    );
}

/// ResNet20 `w8a8` keeps its stem float (weights and output), which feeds a
/// conv and a residual add: its weights become 16-bit fixed-point numbers
/// and its output is materialised as wide integers. In `nearest` mode with
/// the default formats the integer-only model follows the seed's own
/// fake-quant eval logits (`resnet20.safetensors`).
#[test]
fn golden_resnet20_w8a8_integer_against_fake_quant() {
    let bytes = golden_file("resnet20.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let src = Source::read(&spec("resnet20.qspec")).unwrap();
    let model = driver::parse(&src).unwrap();
    let graph = driver::compile(&src, Some("w8a8")).unwrap();
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
        "resnet20 w8a8, nearest: max |logit - fake-quant logit| = {max_diff:.4} (largest logit {range:.3}), top-1 agreement {agree}/8"
    );
    assert!(agree >= 7, "top-1 agreement {agree}/8");
    assert!(
        max_diff <= 0.05 * range,
        "max logit difference {max_diff} (largest logit {range})"
    );
}
