//! The integer-only ONNX export (`qatc export --format onnx-int`) run by
//! ONNX Runtime against qatc's integer engine: the logits must be equal
//! bit for bit, with graph optimisations off and on, in every rounding
//! mode (`trunc`, `nearest`, `nearest --per-layer-shift`).
//!
//! - **Golden models**: the seed's ToyNet `cfg-1*` (`toynet_int.safetensors`,
//!   constants saturated as the seed's), ResNet20 `w8a8` and MobileNetV2
//!   `cfg-1*`, imported through the specs' `import seed` sections, on the
//!   golden set's eight input images. They cover the float stem (16-bit
//!   fixed-point weights summed in float64), 8-bit convs (`ConvInteger`),
//!   wide convs (int64 `MatMul`), depthwise convs, residual adds,
//!   average pooling and the seed's float32 fc sum under `trunc`.
//! - **Every model of `spec/`** under every profile, with a synthetic
//!   checkpoint, on two random images, `trunc` and `nearest` (and
//!   `nearest --per-layer-shift` where a requantization's or a hardswish's
//!   sums may pass 2^63, which the export computes in int64 limbs): it
//!   exports and matches, or the plan or the export fails naming a layer
//!   of the plan.
//!
//! Each exported file passes `onnx.checker.check_model(full_check=True)`
//! first. Needs python3 with onnx and onnxruntime (`QATC_ONNX_PYTHONPATH`,
//! which `scripts/onnx-env.sh` sets); without it the tests are skipped
//! with a line, or fail with `QATC_REQUIRE_SHARED`.

mod common;

use common::{golden_import, load, onnx_python, run_jobs, synthetic_checkpoint, Job, Normal};
use prost::Message;
use qatc_int::engine::{run_image, Weights, Workspace};
use qatc_int::{IntPlan, PlanOptions, Rounding};
use std::collections::BTreeMap;

const MODES: [Rounding; 3] = [Rounding::Trunc, Rounding::Nearest, Rounding::Scaled];

/// The engine's logits of `images` (`[N, C, H, W]` flattened).
fn engine_logits(plan: &IntPlan, images: &[f32]) -> Vec<f32> {
    let weights = Weights::new(plan);
    let mut ws = Workspace::new(plan);
    let mut out = Vec::new();
    for x in images.chunks_exact(plan.input_len()) {
        let r = run_image(plan, &weights, x, &mut ws, &Default::default()).unwrap();
        out.extend(r.logits);
    }
    out
}

/// Logits that differ as bits: `(index, engine, onnx)`.
fn differing(want: &[f32], got: &[f32]) -> Vec<(usize, f32, f32)> {
    assert_eq!(want.len(), got.len(), "logit count");
    want.iter()
        .zip(got)
        .enumerate()
        .filter(|(_, (a, b))| a.to_bits() != b.to_bits())
        .map(|(i, (a, b))| (i, *a, *b))
        .take(8)
        .collect()
}

/// One exported plan and what the engine gave for its images.
struct Case {
    what: String,
    job: Job,
    want: Vec<f32>,
}

/// How many nodes of each op type the model has.
fn op_counts(onnx: &[u8]) -> BTreeMap<String, usize> {
    let m = qatc_onnx::proto::ModelProto::decode(onnx).unwrap();
    let mut n = BTreeMap::new();
    for node in m.graph.unwrap().node {
        *n.entry(node.op_type.unwrap_or_default()).or_insert(0) += 1;
    }
    n
}

/// How many layers of each kind the plans have (`conv`, `lut`, ...).
fn layer_kinds<'a>(plans: impl Iterator<Item = &'a IntPlan>) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for p in plans {
        for l in &p.layers {
            let v = serde_json::to_value(l).unwrap();
            let kind = v["layer"].as_str().unwrap_or("?").to_string();
            *n.entry(kind).or_insert(0) += 1;
        }
    }
    n
}

fn case(what: String, plan: &IntPlan, shape: Vec<usize>, images: Vec<f32>) -> Case {
    let onnx = qatc_onnx::write_int_onnx(plan).unwrap_or_else(|e| panic!("{what}: {e}"));
    let want = engine_logits(plan, &images);
    Case {
        what,
        job: Job {
            onnx,
            input: images,
            shape,
            taps: vec![],
            optimized: true,
        },
        want,
    }
}

/// Runs every case in one Python process and asserts bit equality.
fn check(py: &(String, String), cases: Vec<Case>) {
    let dir = tempfile::tempdir().unwrap();
    let (whats, wants): (Vec<String>, Vec<Vec<f32>>) = cases
        .iter()
        .map(|c| (c.what.clone(), c.want.clone()))
        .unzip();
    let jobs: Vec<Job> = cases.into_iter().map(|c| c.job).collect();
    let ran = run_jobs(py, dir.path(), &jobs);
    let mut bad = Vec::new();
    for ((what, want), r) in whats.iter().zip(&wants).zip(&ran) {
        let off = differing(want, &r.logits);
        let on = differing(want, r.logits_opt.as_ref().unwrap());
        eprintln!(
            "{what}: {} logits, {} differ (optimisations off), {} (on); largest |logit| {:.4}",
            want.len(),
            off.len(),
            on.len(),
            want.iter().fold(0f32, |m, v| m.max(v.abs()))
        );
        if !off.is_empty() || !on.is_empty() {
            bad.push(format!("{what}: off {off:?}, on {on:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "ONNX Runtime's logits differ from the engine's:\n{}",
        bad.join("\n")
    );
}

#[test]
fn golden_models_match_the_engine_bit_for_bit() {
    let test = "golden_models_match_the_engine_bit_for_bit";
    let Some(py) = onnx_python(test) else {
        return;
    };
    let golden = qatc_testdata::golden_set();
    let mut cases = Vec::new();
    for (spec, profile, file) in [
        ("toynet", "cfg-1*", "toynet_int.safetensors"),
        ("resnet20", "w8a8", "resnet20.safetensors"),
        ("mobilenetv2", "cfg-1*", "mobilenetv2.safetensors"),
    ] {
        let Some(path) = golden.file(test, file) else {
            continue;
        };
        let (g, ck, shape, images) = golden_import(&path, spec, profile);
        for rounding in MODES {
            // The seed clamps constants that pass their format (its golden
            // ToyNet's head bias); saturating reproduces it.
            let opts = PlanOptions {
                rounding,
                saturate_constants: true,
                ..PlanOptions::default()
            };
            let plan = qatc_int::build(&g, &ck, opts).unwrap();
            let what = format!("{spec} {profile} {rounding} ({})", golden.dir.display());
            let c = case(what, &plan, shape.clone(), images.clone());
            // The paths these models exist to cover: 8-bit convs in
            // ConvInteger, the rest in int64 MatMul, the float stem, and
            // under `trunc` the seed's float32 fc sum.
            let ops = op_counts(&c.job.onnx);
            for op in ["ConvInteger", "MatMul", "Round"] {
                assert!(ops.contains_key(op), "{}: no {op}: {ops:?}", c.what);
            }
            let seed_fc = plan.output.seed_linear.iter().any(Option::is_some);
            assert_eq!(seed_fc, rounding == Rounding::Trunc, "{}", c.what);
            if seed_fc {
                assert!(ops.contains_key("Split"), "{}: no seed fc sum", c.what);
            }
            cases.push(c);
        }
    }
    check(&py, cases);
}

/// Every (spec, profile) of `spec/`.
fn all_profiles() -> Vec<(String, String)> {
    let dir = common::spec_path("x").parent().unwrap().to_path_buf();
    let mut specs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "qspec").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    specs.sort();
    let mut out = Vec::new();
    for spec in specs {
        let src = qatc::driver::Source::read(&common::spec_path(&spec)).unwrap();
        let c = qatc::driver::compile(&src).unwrap();
        for g in &c.graphs {
            out.push((spec.clone(), g.profile.clone()));
        }
    }
    out
}

#[test]
fn every_spec_matches_the_engine_or_names_the_layer() {
    let test = "every_spec_matches_the_engine_or_names_the_layer";
    let py = onnx_python(test);
    let (mut cases, mut plans) = (Vec::new(), Vec::new());
    let (mut refused_plan, mut refused_export) = (Vec::new(), Vec::new());
    let mut wide_exported = 0;
    for (spec, profile) in all_profiles() {
        let (_, g) = load(&spec, &profile);
        let ck = synthetic_checkpoint(&g, 1);
        for rounding in MODES {
            let opts = PlanOptions {
                rounding,
                ..PlanOptions::default()
            };
            let what = format!("{spec} {profile} {rounding}");
            // What the integer pipeline itself refuses is not this export's.
            let plan = match qatc_int::build(&g, &ck, opts) {
                Ok(p) => p,
                Err(e) => {
                    refused_plan.push(format!("{what}: {e}"));
                    continue;
                }
            };
            // `nearest --per-layer-shift` differs from `nearest` only in its
            // constants, except where they make a requantization or a
            // hardswish wide (int64 limbs): those plans only, to keep the
            // test short.
            let wide = plan.layers.iter().any(|l| match l {
                qatc_int::plan::Layer::Requant(r) => r.wide,
                qatc_int::plan::Layer::HardSwish(h) => h.wide,
                _ => false,
            });
            if rounding == Rounding::Scaled && !wide {
                continue;
            }
            match qatc_onnx::write_int_onnx(&plan) {
                Ok(_) => {}
                Err(e) => {
                    let qatc_onnx::IntOnnxError::Unsupported { layer, .. } = &e;
                    assert!(
                        plan.layers.iter().any(|l| l.name() == layer),
                        "{what}: the error names no layer of the plan: {e}"
                    );
                    refused_export.push(format!("{what}: {e}"));
                    continue;
                }
            }
            let mut rng = Normal::new(7);
            let images: Vec<f32> = (0..2 * plan.input_len()).map(|_| rng.sample()).collect();
            let [c, h, w] = plan.input_shape;
            wide_exported += usize::from(wide);
            cases.push(case(what, &plan, vec![2, c, h, w], images));
            plans.push(plan);
        }
    }
    eprintln!(
        "{} plans exported ({wide_exported} with 128-bit sums as int64 limbs); refused by the \
         plan: {}; by the export: {}",
        cases.len(),
        refused_plan.len(),
        refused_export.len()
    );
    eprintln!(
        "layers of the exported plans: {:?}",
        layer_kinds(plans.iter())
    );
    let mut ops = BTreeMap::new();
    for c in &cases {
        for (k, v) in op_counts(&c.job.onnx) {
            *ops.entry(k).or_insert(0) += v;
        }
    }
    eprintln!("ONNX nodes: {ops:?}");
    for r in refused_plan.iter().chain(&refused_export) {
        eprintln!("  {r}");
    }
    assert!(cases.len() >= 20, "only {} plans exported", cases.len());
    assert!(
        wide_exported > 0,
        "no plan exercises the two-halves requantization"
    );
    if let Some(py) = py {
        check(&py, cases);
    }
}

/// An activation tensor `[C, H, W]` with values in `[lo, hi]`.
fn act(name: &str, shape: [usize; 3], lo: i64, hi: i64) -> qatc_int::plan::TensorInfo {
    qatc_int::plan::TensorInfo {
        name: name.into(),
        shape,
        kind: qatc_int::plan::TensorKind::Act {
            scale: 1.0,
            lo,
            hi,
            bits: 16,
        },
        wide: false,
    }
}

/// A plan built by hand with the edge cases, every tensor checked: a
/// hardswish's three pieces with negative and positive sums, max pooling
/// with padding, adaptive pooling with unequal windows, a channel gather,
/// every division mode.
fn hand_plan(rounding: Rounding, div: qatc_int::fixed::Div) -> IntPlan {
    use qatc_int::plan::{
        Channels, HardSwishLayer, Layer, OutputLayer, Pool, PoolKind, QuantizeInput,
    };
    let pool = |name: &str, kind, input, output, sum_only| {
        Layer::Pool(Pool {
            name: name.into(),
            kind,
            input,
            output,
            div,
            sum_only,
        })
    };
    let k = vec![0.5, -0.25];
    IntPlan {
        model: "hand".into(),
        profile: "p".into(),
        options: PlanOptions {
            rounding,
            ..PlanOptions::default()
        },
        input_shape: [2, 6, 6],
        tensors: vec![
            act("q", [2, 6, 6], -128, 128),
            act("hs", [2, 6, 6], -60, 9000),
            act("max", [2, 3, 3], -60, 9000),
            act("adaptive", [2, 4, 4], -60, 9000),
            act("swap", [2, 4, 4], -60, 9000),
            act("avg", [2, 2, 2], -60, 9000),
            act("gap", [2, 1, 1], -240, 36000),
            act("gmax", [2, 1, 1], -60, 9000),
        ],
        layers: vec![
            Layer::QuantizeInput(QuantizeInput {
                name: "q".into(),
                pre: 1.0,
                clip_lo: -8.0,
                clip_hi: 8.0,
                gain: 16.0,
                output: 0,
            }),
            Layer::HardSwish(HardSwishLayer {
                name: "hs".into(),
                input: 0,
                output: 1,
                neg: -48,
                pos: 48,
                c: [3, -1001, 2047],
                shl: [2, 1, 0],
                real: [0.0; 3],
                shift: 5,
                div,
                lo: -60,
                hi: 9000,
                wide: false,
            }),
            pool(
                "max",
                PoolKind::Max {
                    kernel: 3,
                    stride: 2,
                    padding: 1,
                },
                1,
                2,
                false,
            ),
            pool("adaptive", PoolKind::Adaptive { size: 4 }, 1, 3, false),
            Layer::Channels(Channels {
                name: "swap".into(),
                input: 3,
                output: 4,
                from: vec![1, 0],
            }),
            pool(
                "avg",
                PoolKind::Avg {
                    kernel: 2,
                    stride: 2,
                },
                4,
                5,
                false,
            ),
            pool("gap", PoolKind::Adaptive { size: 1 }, 5, 6, true),
            pool("gmax", PoolKind::Adaptive { size: 1 }, 2, 7, false),
        ],
        output: OutputLayer {
            terms: vec![(6, k), (7, vec![0.125, 1.0])],
            bias: vec![0.1, -0.2],
            terms_f32: vec![vec![0.5, -0.25], vec![0.125, 1.0]],
            bias_f32: vec![0.1, -0.2],
            classes: 2,
            seed_linear: vec![None, None],
        },
        node_tensors: Default::default(),
        clips: Default::default(),
        saturated: vec![],
        folded: vec![],
    }
}

#[test]
fn hand_built_layers_match_the_engine_bit_for_bit() {
    use qatc_int::fixed::Div;
    let test = "hand_built_layers_match_the_engine_bit_for_bit";
    let Some(py) = onnx_python(test) else {
        return;
    };
    let mut rng = Normal::new(3);
    // Inputs up to about 12: the quantizer's clamp, both hardswish
    // thresholds and every piece are reached.
    let images: Vec<f32> = (0..4 * 72).map(|_| 4.0 * rng.sample()).collect();
    let mut cases = Vec::new();
    let mut tensors = Vec::new();
    for rounding in [Rounding::Trunc, Rounding::Nearest] {
        for div in [Div::Trunc, Div::Floor, Div::Nearest] {
            let plan = hand_plan(rounding, div);
            let what = format!("hand-built plan, {rounding}, divisions {div:?}");
            let mut c = case(what, &plan, vec![4, 2, 6, 6], images.clone());
            // Every tensor, read out (int64, cast to float32 here: exact
            // below 2^24), against the engine's.
            let mut m = qatc_onnx::proto::ModelProto::decode(c.job.onnx.as_slice()).unwrap();
            let graph = m.graph.as_mut().unwrap();
            for t in 0..plan.tensors.len() {
                let name = qatc_onnx::int::tensor_name(&plan, t);
                let tap = format!("{name}.f32");
                graph.node.push(qatc_onnx::proto::NodeProto {
                    input: vec![name],
                    output: vec![tap.clone()],
                    name: Some(tap.clone()),
                    op_type: Some("Cast".into()),
                    domain: None,
                    attribute: vec![qatc_onnx::builder::attr_int("to", 1)],
                    doc_string: None,
                });
                c.job.taps.push(tap);
            }
            c.job.onnx = m.encode_to_vec();
            let weights = Weights::new(&plan);
            let mut ws = Workspace::new(&plan);
            let mut want: Vec<Vec<f32>> = vec![Vec::new(); plan.tensors.len()];
            for x in images.chunks_exact(plan.input_len()) {
                run_image(&plan, &weights, x, &mut ws, &Default::default()).unwrap();
                for (t, w) in want.iter_mut().enumerate() {
                    let v = ws.tensor(t).unwrap().to_i64();
                    w.extend(v.iter().map(|&x| x as f32));
                }
            }
            tensors.push(want);
            cases.push(c);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let jobs: Vec<Job> = cases
        .iter()
        .map(|c| Job {
            onnx: c.job.onnx.clone(),
            input: c.job.input.clone(),
            shape: c.job.shape.clone(),
            taps: c.job.taps.clone(),
            optimized: false,
        })
        .collect();
    let ran = run_jobs(&py, dir.path(), &jobs);
    for ((c, want), r) in cases.iter().zip(&tensors).zip(&ran) {
        for (t, (w, got)) in want.iter().zip(&r.taps).enumerate() {
            assert_eq!(w, got, "{}: tensor {}", c.what, c.job.taps[t]);
        }
    }
    check(&py, cases);
}
