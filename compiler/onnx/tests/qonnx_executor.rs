//! The QONNX export (`write_qonnx`: every quantizer a QONNX `Quant` node)
//! run by qonnx's own executor (`qonnx.core.onnx_exec.execute_onnx`, node
//! by node: the standard ops in ONNX Runtime, `Quant` in qonnx's numpy),
//! after the preparation qonnx requires (`cleanup_model`, or `InferShapes`
//! where intermediate values are read by name): see `common::RUN_QONNX`.
//!
//! What is checked of each file: `onnx.checker.check_model(full_check=True)`
//! (the standard nodes against their schemas and the graph's structure;
//! the checker skips nodes of a custom domain, so the `Quant` nodes are
//! checked instead by qonnx: each resolves to qonnx's op (`getCustomOp`),
//! their number is the model's quantizer count, and qonnx's shape
//! inference and executor accept the graph).
//!
//! - **Golden models** (ToyNet `cfg-1*`: mPACT and a 16-bit head, which
//!   QONNX holds at opset 13; ResNet20 `w8a8`: DoReFa, float stem, 16-bit
//!   fc weights), imported from the golden set's seed state dicts
//!   (`QATC_GOLDEN`, default `../shared/golden`): every activation quantizer
//!   teacher-forced against the seed's (`common::check_sites`), and the
//!   logits of the golden set's eight images against its `logits_eval` with
//!   the criteria of `qdq_onnxruntime.rs` (at least one row exact, the
//!   others bounded as rounding-boundary flips bound them).
//! - **The models of `spec/`** with synthetic checkpoints, the four
//!   issue-16 families included (every quantized profile that adds a
//!   quantizer kind and bit-width, weight bit-width or op the ones before
//!   it lack): every activation quantizer teacher-forced;
//!   the logits against the QDQ export's in ONNX Runtime (printed: the two
//!   formats round at the same grid points, but a tie flip in either moves
//!   a row).
//!
//! Needs python3 with onnx, onnxruntime and qonnx (`QATC_ONNX_PYTHONPATH`,
//! `scripts/onnx-env.sh`); without it, or without the golden set, the tests
//! skip with a line (fail with `QATC_REQUIRE_SHARED`).

mod common;

use common::{all_profiles, check_sites, load, onnx_python, passthrough, quantizer_count};
use common::{row_errors, run_jobs, run_qonnx_jobs, sites, synthetic_checkpoint, tap_names};
use common::{Golden, Job, QonnxJob, LOGIT_TOL, TAP_IMAGES};
use prost::Message;
use qatc::ir::Op;
use qatc_int::Checkpoint;
use std::collections::HashSet;

#[test]
fn qonnx_export_matches_fake_quant_eval_in_qonnx_executor() {
    let test = "qonnx_export_matches_fake_quant_eval_in_qonnx_executor";
    let Some(py) = onnx_python(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (file, profile) in [("toynet", "cfg-1*"), ("resnet20", "w8a8")] {
        let gold = Golden::load(file, profile);
        let (g, ck) = (&gold.g, &gold.ck);
        let onnx = qatc_onnx::write_qonnx(g, ck).unwrap();
        let m = qatc_onnx::proto::ModelProto::decode(onnx.as_slice()).unwrap();
        assert_eq!(m.opset_import[0].version, Some(13), "{file}");
        let (tap_shape, tap_input) = gold.tap_input();
        let sites = sites(g, ck, &onnx);
        let quants = quantizer_count(g);
        let job = |input, shape, taps, cleanup| QonnxJob {
            job: Job {
                onnx: onnx.clone(),
                input,
                shape,
                taps,
                optimized: false,
            },
            quants,
            cleanup,
        };
        let jobs = [
            job(gold.input.clone(), gold.shape.clone(), vec![], true),
            job(tap_input, tap_shape, tap_names(&sites), false),
        ];
        let ran = run_qonnx_jobs(&py, &dir.path().join(file), &jobs);
        let (elements, flips) = check_sites(file, &sites, &ran[1].taps);
        eprintln!(
            "{file} ({profile}, QONNX opset 13, {} KiB, {quants} Quant nodes): {} activation \
             quantizers teacher-forced on {TAP_IMAGES} images: {elements} values, {flips} \
             one-step flips at rounding ties, the rest equal within float rounding",
            onnx.len() / 1024,
            sites.len(),
        );
        eprintln!(
            "{file}: qonnx executor after cleanup: {}",
            gold.check_logits(&ran[0].logits)
        );
    }
}

#[test]
fn spec_models_run_in_qonnx_executor_with_the_seeds_quantizers() {
    let test = "spec_models_run_in_qonnx_executor_with_the_seeds_quantizers";
    let Some(py) = onnx_python(test) else {
        return;
    };
    // qonnx's executor opens one ONNX Runtime session per node, seconds per
    // model: the quantized profiles that between them have every
    // (quantizer, bits) of an activation, every weight bit-width and every
    // op of `spec/` (in file order, each that adds one).
    let mut cases: Vec<(String, String, qatc::ir::Graph, Checkpoint)> = Vec::new();
    let mut seen = HashSet::new();
    for (spec, profile) in all_profiles() {
        let (_, g) = load(&spec, &profile);
        let features: Vec<String> = g
            .nodes
            .iter()
            .map(|n| match &n.op {
                Op::ActQuant(a) if !passthrough(n) => format!("{} {}", a.quantizer, n.out_bit),
                Op::Conv(_) | Op::Linear(_) => {
                    format!("{} w{}", n.op.kind(), n.w_bit.unwrap_or(32))
                }
                _ => n.op.kind().to_string(),
            })
            .collect();
        let mut new = false;
        for f in features {
            new |= seen.insert(f);
        }
        if new && quantizer_count(&g) > 0 {
            let ck = synthetic_checkpoint(&g, 7);
            cases.push((spec, profile, g, ck));
        }
    }
    let (mut qonnx_jobs, mut qdq_jobs, mut all_sites) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (spec, profile, g, ck)) in cases.iter().enumerate() {
        let onnx = qatc_onnx::write_qonnx(g, ck)
            .unwrap_or_else(|e| panic!("{spec} {profile}: QONNX export: {e}"));
        let qdq = qatc_onnx::write_qdq(g, ck).unwrap();
        let s = sites(g, ck, &onnx);
        let (shape, input) = common::random_input(g, TAP_IMAGES, 100 + i as u64);
        qonnx_jobs.push(QonnxJob {
            job: Job {
                onnx,
                input: input.clone(),
                shape: shape.clone(),
                taps: tap_names(&s),
                optimized: false,
            },
            quants: quantizer_count(g),
            cleanup: false,
        });
        qdq_jobs.push(Job {
            onnx: qdq,
            input,
            shape,
            taps: vec![],
            optimized: false,
        });
        all_sites.push(s);
    }
    let dir = tempfile::tempdir().unwrap();
    let ran = run_qonnx_jobs(&py, &dir.path().join("qonnx"), &qonnx_jobs);
    let ort = run_jobs(&py, &dir.path().join("qdq"), &qdq_jobs);
    let (mut rows_exact, mut rows_all) = (0, 0);
    for ((((spec, profile, g, _), s), r), o) in cases.iter().zip(&all_sites).zip(&ran).zip(&ort) {
        let what = format!("{spec} {profile}");
        let (elements, flips) = check_sites(&what, s, &r.taps);
        let classes = g.classes as usize;
        assert_eq!(r.logits.len(), TAP_IMAGES * classes, "{what}");
        assert!(r.logits.iter().all(|v| v.is_finite()), "{what}");
        let (rows, max_abs) = row_errors(&r.logits, &o.logits, classes);
        let exact = rows.iter().filter(|e| **e <= LOGIT_TOL).count();
        rows_exact += exact;
        rows_all += rows.len();
        eprintln!(
            "{what}: {} quantizers, {elements} values, {flips} tie flips; logits against QDQ in \
             ONNX Runtime: {exact} of {} rows within {LOGIT_TOL:e}, max |diff| {max_abs:.2e}",
            s.len(),
            rows.len(),
        );
    }
    eprintln!("QONNX against QDQ: {rows_exact} of {rows_all} rows within {LOGIT_TOL:e}");
}

/// The float32 values of initializer `name` of `m`.
fn initializer(m: &qatc_onnx::proto::ModelProto, name: &str) -> Vec<f32> {
    let t = m.graph.as_ref().unwrap().initializer.iter();
    let t = t.clone().find(|t| t.name.as_deref() == Some(name));
    let raw = t
        .unwrap_or_else(|| panic!("no `{name}`"))
        .raw_data
        .as_ref()
        .unwrap();
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn every_quantizer_is_one_quant_and_weights_pass_it_unchanged() {
    for (spec, profile) in all_profiles() {
        let (_, g) = load(&spec, &profile);
        let ck = synthetic_checkpoint(&g, 1);
        let what = format!("{spec} {profile}");
        let bytes = qatc_onnx::write_qonnx(&g, &ck).unwrap_or_else(|e| panic!("{what}: {e}"));
        let m = qatc_onnx::proto::ModelProto::decode(bytes.as_slice()).unwrap();
        let domains: Vec<_> = m
            .opset_import
            .iter()
            .map(|o| (o.domain.clone(), o.version))
            .collect();
        assert_eq!(
            domains,
            [
                (Some(String::new()), Some(13)),
                (Some(qatc_onnx::qonnx::QONNX_DOMAIN.into()), Some(1))
            ],
            "{what}"
        );
        let nodes = &m.graph.as_ref().unwrap().node;
        let quants: Vec<_> = nodes
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("Quant"))
            .collect();
        assert_eq!(quants.len(), quantizer_count(&g), "{what}");
        assert!(
            !nodes
                .iter()
                .any(|n| n.op_type.as_deref() == Some("QuantizeLinear")),
            "{what}"
        );
        let attr = |n: &qatc_onnx::proto::NodeProto, a: &str| {
            n.attribute
                .iter()
                .find(|x| x.name.as_deref() == Some(a))
                .cloned()
                .unwrap()
        };
        for q in &quants {
            assert_eq!(q.domain.as_deref(), Some(qatc_onnx::qonnx::QONNX_DOMAIN));
            assert_eq!(attr(q, "rounding_mode").s.as_deref(), Some(&b"ROUND"[..]));
        }
        // Activation quantizers: the Quant named after the node, with the
        // grid of the QDQ form.
        for n in g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::ActQuant(_)) && !passthrough(n))
        {
            let Op::ActQuant(a) = &n.op else {
                unreachable!()
            };
            let q = quants
                .iter()
                .find(|q| q.name.as_ref() == Some(&n.name))
                .unwrap();
            assert_eq!(q.output, std::slice::from_ref(&n.name), "{what}");
            let alpha = a
                .quantizer
                .learnable()
                .then(|| ck.scalar(&format!("{}.alpha", n.name)).unwrap());
            let p = qatc_onnx::quant_params(&a.quantizer, n.out_bit, alpha).unwrap();
            let form = qatc_onnx::act_quant_form(&a.quantizer, n.out_bit, alpha).unwrap();
            assert_eq!(p.range(), (form.lo, form.hi), "{what} `{}`", n.name);
            assert_eq!(p.scale, form.dq_scale, "{what} `{}`", n.name);
            assert_eq!(attr(q, "signed").i, Some(p.signed as i64));
            assert_eq!(attr(q, "narrow").i, Some(p.narrow as i64));
            assert_eq!(
                initializer(&m, &format!("{}.bits", n.name)),
                [n.out_bit as f32]
            );
        }
        // Weights: `code * scale` through a Quant of the same scale comes
        // back bit for bit, as qonnx computes it in float32: round(v / s)
        // (half to even) inside the Quant's range, times s.
        for n in g.nodes.iter().filter(|n| n.w_bit.is_some_and(|b| b < 32)) {
            let v = initializer(&m, &format!("{}.weight_fq", n.name));
            let s = initializer(&m, &format!("{}.weight_scale", n.name))[0];
            let bits = initializer(&m, &format!("{}.weight_bits", n.name))[0] as u32;
            let q = quants
                .iter()
                .find(|q| q.output == [format!("{}.weight", n.name)])
                .unwrap();
            let (signed, narrow) = (
                attr(q, "signed").i == Some(1),
                attr(q, "narrow").i == Some(1),
            );
            let p = qatc_onnx::QuantParams {
                pre_scale: None,
                scale: s,
                bits,
                signed,
                narrow,
            };
            let (lo, hi) = p.range();
            for x in &v {
                let code = (x / s).round_ties_even();
                let back = if bits == 1 {
                    if x / s >= 0.0 {
                        1.0
                    } else {
                        -1.0
                    }
                } else {
                    code
                };
                assert!(
                    lo as f32 <= back && back <= hi as f32,
                    "{what} `{}`: {x}",
                    n.name
                );
                assert_eq!(
                    (back * s).to_bits(),
                    x.to_bits(),
                    "{what} `{}`: {x}",
                    n.name
                );
            }
        }
    }
}

#[test]
fn one_bit_dorefa_activations_name_the_layer_and_format() {
    let src = qatc::driver::Source::from_text(
        "t.qspec",
        "model t {\n  input 3x8x8\n  classes 10\n  quant {\n    weights dorefa\n    acts \
         dorefa\n  }\n  stem: conv3x3(4) -> bn -> relu -> act(1) as q\n  fc: flatten -> \
         linear(classes)\n}\n",
        qatc::driver::Syntax::Qspec,
    );
    let g = qatc::driver::compile(&src)
        .and_then(|c| c.into_graph(None))
        .unwrap_or_else(|d| panic!("{}", d.render_plain(&src.name, &src.text)));
    let ck = synthetic_checkpoint(&g, 1);
    let err = qatc_onnx::write_qonnx(&g, &ck).unwrap_err();
    let qatc_onnx::OnnxError::Unsupported { layer, op, reason } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((layer.as_str(), *op), ("stem.q", "act"), "{err}");
    assert!(reason.starts_with("no QONNX form: 1-bit DoReFa"), "{err}");
    assert!(
        err.to_string()
            .starts_with("layer `stem.q` (act): no QONNX form"),
        "{err}"
    );
}
