//! The QDQ export of every model in `spec/` under every profile, with a
//! synthetic checkpoint (Kaiming-scaled weights, BN near the identity,
//! clipping values at their initial values): it exports, or fails naming a
//! layer whose op it does not handle; an exported model names its ONNX
//! nodes after the IR's; and ONNX Runtime runs it (checker first) with
//! every activation quantizer equal to the seed's on its own input, up to
//! float rounding and one-step flips at rounding ties. This covers what the
//! golden models do not: PACT (digits, vgg7, cifar_small, ResNet20
//! `pact-w4a4`), mPACT and DoReFa at 4 and 6 bits, 2-bit weights (digits
//! `w2a4`), ReLU6 and strided depthwise convs (MobileNetV2), max pooling,
//! and the issue-16 ops of the four newer families (SE-ResNet20's gates and
//! hardsigmoid, MobileNetV3's hardswish, ShuffleNetV2's splits, concats and
//! shuffles, DenseNet's concats): every profile of `spec/` exports.

mod common;

use common::{all_profiles, check_sites, load, onnx_python, passthrough, run_jobs, sites};
use common::{synthetic_checkpoint, tap_names, Job};
use prost::Message;
use std::collections::HashSet;

#[test]
fn every_spec_exports_or_names_the_layer_it_cannot() {
    let mut exported = 0;
    for (spec, profile) in all_profiles() {
        let (_, g) = load(&spec, &profile);
        let ck = synthetic_checkpoint(&g, 1);
        match qatc_onnx::write_qdq(&g, &ck) {
            Ok(bytes) => {
                let m = qatc_onnx::proto::ModelProto::decode(bytes.as_slice()).unwrap();
                let opset = m.opset_import[0].version.unwrap();
                assert_eq!(opset, qatc_onnx::min_opset(&g), "{spec} {profile}");
                let graph = m.graph.unwrap();
                let names: HashSet<&str> = graph
                    .node
                    .iter()
                    .filter_map(|n| n.name.as_deref())
                    .collect();
                // Every IR node that computes something is an ONNX node of
                // the same name writing a value of the same name.
                for n in &g.nodes {
                    if !passthrough(n) {
                        assert!(
                            names.contains(n.name.as_str()),
                            "{spec} {profile}: `{}`",
                            n.name
                        );
                        let node = graph.node.iter().find(|o| o.name.as_ref() == Some(&n.name));
                        assert_eq!(node.unwrap().output, std::slice::from_ref(&n.name));
                    }
                }
                assert_eq!(graph.input[0].name.as_deref(), Some("input"));
                assert_eq!(
                    graph.output[0].name.as_deref(),
                    Some(g.nodes[g.output].name.as_str())
                );
                exported += 1;
            }
            Err(e) => panic!("{spec} {profile}: {e}"),
        }
    }
    // The four newer families are among them.
    for spec in [
        "se_resnet20",
        "mobilenetv3_small",
        "shufflenetv2",
        "densenet",
    ] {
        assert!(all_profiles().iter().any(|(s, _)| s == spec), "{spec}");
    }
    eprintln!("{exported} profiles exported");
}

#[test]
fn spec_models_run_in_onnxruntime_with_the_seeds_quantizers() {
    let Some(py) = onnx_python("spec_models_run_in_onnxruntime_with_the_seeds_quantizers") else {
        return;
    };
    let mut cases = Vec::new();
    for (spec, profile) in all_profiles() {
        let (_, g) = load(&spec, &profile);
        let ck = synthetic_checkpoint(&g, 7);
        cases.push((spec, profile, g, ck));
    }
    let mut jobs = Vec::new();
    let mut all_sites = Vec::new();
    for (i, (_, _, g, ck)) in cases.iter().enumerate() {
        let onnx = qatc_onnx::write_qdq(g, ck).unwrap();
        let s = sites(g, ck, &onnx);
        let (shape, input) = common::random_input(g, 2, 100 + i as u64);
        jobs.push(Job {
            onnx,
            input,
            shape,
            taps: tap_names(&s),
            optimized: false,
        });
        all_sites.push(s);
    }
    let dir = tempfile::tempdir().unwrap();
    let ran = run_jobs(&py, dir.path(), &jobs);
    let mut new_ops = HashSet::new();
    for (((spec, profile, g, _), s), r) in cases.iter().zip(&all_sites).zip(&ran) {
        let what = format!("{spec} {profile}");
        let (elements, flips) = check_sites(&what, s, &r.taps);
        new_ops.extend(g.nodes.iter().filter_map(|n| common::issue16_op(n)));
        assert_eq!(r.logits.len(), 2 * g.classes as usize, "{what}");
        assert!(r.logits.iter().all(|v| v.is_finite()), "{what}");
        eprintln!(
            "{what} (opset {}): {} quantizers, {elements} values, {flips} tie flips",
            qatc_onnx::min_opset(g),
            s.len()
        );
    }
    // Every op of issue 16 ran in at least one model.
    for op in common::ISSUE16_OPS {
        assert!(new_ops.contains(op), "no model of spec/ has `{op}`");
    }
}

/// `erf` to about 1e-7 (Abramowitz and Stegun 7.1.26), in f64.
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let poly = t
        * (0.254829592
            + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    (1.0 - poly * (-x * x).exp()).copysign(x)
}

#[test]
fn smooth_and_hard_activations_are_their_definitions_at_opsets_13_and_21() {
    let test = "smooth_and_hard_activations_are_their_definitions_at_opsets_13_and_21";
    let Some(py) = onnx_python(test) else {
        return;
    };
    // Every activation reads the BN's output (wide: the input is scaled by
    // 3), so each is tried over [-3, 3] and beyond, where the hard ones
    // have their kinks.
    let src = qatc::driver::Source::from_text(
        "t.qspec",
        "model t {\n  input 3x8x8\n  classes 10\n  quant {\n    weights dorefa\n    acts \
         mpact(4)\n  }\n  block b() {\n    s = x -> sigmoid\n    h = x -> hardsigmoid\n    w = \
         x -> hardswish\n    k = x -> swish\n    g = x -> gelu\n    y = concat(s, h, w, k, g)\n    \
         return y\n  }\n  stem: conv3x3(8) -> bn\n  stage s: b x1\n  fc: act(8) -> flatten -> \
         linear(classes)\n}\n",
        qatc::driver::Syntax::Qspec,
    );
    let g = qatc::driver::compile(&src)
        .and_then(|c| c.into_graph(None))
        .unwrap_or_else(|d| panic!("{}", d.render_plain(&src.name, &src.text)));
    let ck = synthetic_checkpoint(&g, 3);
    let acts: Vec<&qatc::ir::Node> = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, qatc::ir::Op::Activation(_)))
        .collect();
    assert_eq!(acts.len(), 5);
    let mut taps = vec!["stem.bn1".to_string()];
    taps.extend(acts.iter().map(|n| n.name.clone()));
    let (shape, input) = common::random_input(&g, 2, 5);
    let input: Vec<f32> = input.iter().map(|v| 3.0 * v).collect();
    let mut jobs = Vec::new();
    for opset in [13, 21] {
        let opts = qatc_onnx::QdqOptions { opset: Some(opset) };
        let onnx = qatc_onnx::write_qdq_with(&g, &ck, &opts).unwrap();
        // HardSwish is an op from opset 14, Gelu from 20; before, their
        // definitions (`x * HardSigmoid(x)`, the erf form).
        let m = qatc_onnx::proto::ModelProto::decode(onnx.as_slice()).unwrap();
        let ops: HashSet<String> = m
            .graph
            .unwrap()
            .node
            .into_iter()
            .filter_map(|n| n.op_type)
            .collect();
        for (op, from) in [("HardSwish", 14), ("Gelu", 20), ("Erf", 0)] {
            let want = if op == "Erf" {
                opset < 20
            } else {
                opset >= from
            };
            assert_eq!(ops.contains(op), want, "opset {opset}: {op}");
        }
        jobs.push(Job {
            onnx,
            input: input.clone(),
            shape: shape.clone(),
            taps: taps.clone(),
            optimized: false,
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let ran = run_jobs(&py, dir.path(), &jobs);
    for (opset, r) in [13, 21].iter().zip(&ran) {
        let x = &r.taps[0];
        let (lo, hi) = x
            .iter()
            .fold((0f32, 0f32), |(l, h), v| (l.min(*v), h.max(*v)));
        assert!(lo < -3.0 && hi > 3.0, "BN output only spans [{lo}, {hi}]");
        for (n, y) in acts.iter().zip(&r.taps[1..]) {
            let qatc::ir::Op::Activation(a) = &n.op else {
                unreachable!()
            };
            let f = |x: f64| -> f64 {
                let sigmoid = 1.0 / (1.0 + (-x).exp());
                let hard = (x + 3.0).clamp(0.0, 6.0) / 6.0;
                match a.function.name() {
                    "sigmoid" => sigmoid,
                    "hardsigmoid" => hard,
                    "hardswish" => x * hard,
                    "swish" => x * sigmoid,
                    "gelu" => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
                    other => panic!("{other}"),
                }
            };
            let mut worst = 0f64;
            for (xv, yv) in x.iter().zip(y) {
                let want = f(*xv as f64);
                // float32 evaluation (and erf's 1e-7 above): a few ulps of
                // the larger of input and output.
                let tol = 1e-6 * (1.0 + want.abs().max(xv.abs() as f64));
                let d = (*yv as f64 - want).abs();
                assert!(
                    d <= tol,
                    "opset {opset} `{}`: f({xv}) = {yv} in ONNX Runtime, {want} by definition",
                    n.name
                );
                worst = worst.max(d);
            }
            eprintln!(
                "opset {opset} {}: {} values over [{lo:.2}, {hi:.2}], max |diff| {worst:.1e}",
                a.function.name(),
                x.len()
            );
        }
    }
}
