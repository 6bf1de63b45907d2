//! The QDQ export of every model in `spec/` under every profile, with a
//! synthetic checkpoint (Kaiming-scaled weights, BN near the identity,
//! clipping values at their initial values): it exports, or fails naming a
//! layer whose op it does not handle; an exported model names its ONNX
//! nodes after the IR's; and ONNX Runtime runs it (checker first) with
//! every activation quantizer equal to the seed's on its own input, up to
//! float rounding and one-step flips at rounding ties. This covers what the
//! golden models do not: PACT (digits, vgg7, cifar_small, ResNet20
//! `pact-w4a4`), mPACT and DoReFa at 4 and 6 bits, 2-bit weights (digits
//! `w2a4`), ReLU6 and strided depthwise convs (MobileNetV2), max pooling.

mod common;

use common::{check_sites, load, onnx_python, run_jobs, sites, synthetic_checkpoint, tap_names};
use common::{Job, Normal};
use prost::Message;
use qatc::ir::{Graph, Op, Quantizer};
use qatc_onnx::OnnxError;
use std::collections::HashSet;

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

/// Whether the export handles every op of `g`.
fn handled(g: &Graph) -> bool {
    !g.nodes.iter().any(|n| {
        matches!(
            n.op,
            Op::Concat(_) | Op::Slice(_) | Op::Shuffle(_) | Op::Mul(_) | Op::Activation(_)
        )
    })
}

#[test]
fn every_spec_exports_or_names_the_layer_it_cannot() {
    let mut exported = 0;
    for (spec, profile) in all_profiles() {
        let (_, g) = load(&spec, &profile);
        let ck = synthetic_checkpoint(&g, 1);
        match qatc_onnx::write_qdq(&g, &ck) {
            Ok(bytes) => {
                assert!(handled(&g), "{spec} {profile}");
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
                    let passthrough = match &n.op {
                        Op::Input(_) | Op::Dropout(_) | Op::Identity(_) => true,
                        Op::ActQuant(a) => a.quantizer == Quantizer::None || n.out_bit >= 32,
                        _ => false,
                    };
                    if !passthrough {
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
            Err(OnnxError::Unsupported { layer, op, reason }) => {
                assert!(!handled(&g), "{spec} {profile}: `{layer}` ({op}): {reason}");
                let n = g.nodes.iter().find(|n| n.name == layer).unwrap();
                assert_eq!(n.op.kind(), op);
                eprintln!("{spec} {profile}: not exported: `{layer}` ({op})");
            }
            Err(e) => panic!("{spec} {profile}: {e}"),
        }
    }
    assert!(exported >= 20, "only {exported} profiles exported");
}

#[test]
fn spec_models_run_in_onnxruntime_with_the_seeds_quantizers() {
    let Some(py) = onnx_python("spec_models_run_in_onnxruntime_with_the_seeds_quantizers") else {
        return;
    };
    let mut cases = Vec::new();
    for (spec, profile) in all_profiles() {
        let (_, g) = load(&spec, &profile);
        if handled(&g) {
            let ck = synthetic_checkpoint(&g, 7);
            cases.push((spec, profile, g, ck));
        }
    }
    let mut jobs = Vec::new();
    let mut all_sites = Vec::new();
    for (i, (_, _, g, ck)) in cases.iter().enumerate() {
        let onnx = qatc_onnx::write_qdq(g, ck).unwrap();
        let s = sites(g, ck, &onnx);
        let mut shape = vec![2];
        shape.extend(g.nodes[0].out_shape.0.iter().map(|&d| d as usize));
        let mut rng = Normal::new(100 + i as u64);
        let input = (0..shape.iter().product::<usize>())
            .map(|_| rng.next())
            .collect();
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
    for (((spec, profile, g, _), s), r) in cases.iter().zip(&all_sites).zip(&ran) {
        let what = format!("{spec} {profile}");
        let (elements, flips) = check_sites(&what, s, &r.taps);
        assert_eq!(r.logits.len(), 2 * g.classes as usize, "{what}");
        assert!(r.logits.iter().all(|v| v.is_finite()), "{what}");
        eprintln!(
            "{what} (opset {}): {} quantizers, {elements} values, {flips} tie flips",
            qatc_onnx::min_opset(g),
            s.len()
        );
    }
}
