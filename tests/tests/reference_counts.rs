//! The four CIFAR model families of issue 16 (`spec/se_resnet20.qspec`,
//! `spec/mobilenetv3_small.qspec`, `spec/shufflenetv2.qspec`,
//! `spec/densenet.qspec`) against an independent reference: the PyTorch
//! definitions in `tests/reference/models.py`, counted by
//! `tests/reference/counts.py` into `tests/reference/counts.json` (read here
//! at run time). `qatc summary`'s totals (params, conv MACs, fc MACs) must
//! equal the reference's exactly, and so must the number of conv, linear and
//! BN layers and, layer by layer, their shapes, params and MACs.

use qatc::driver::{self, Source};
use qatc::summary::{summarize, Summary};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// `models.<name>` of tests/reference/counts.json.
fn reference(model: &str) -> Value {
    let path = root().join("reference/counts.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert_eq!(json["input"], "3x32x32", "the reference's input");
    assert_eq!(json["classes"], 10, "the reference's classes");
    json["models"][model].clone()
}

/// The summary of the spec's built-in float profile.
fn summary(spec: &str) -> Summary {
    let path = root().join("../spec").join(spec);
    let src = Source::read(&path).expect("spec readable");
    let c = driver::compile(&src)
        .unwrap_or_else(|d| panic!("{}", d.render_plain(&src.name, &src.text)));
    let g = c
        .graph(Some("float"))
        .unwrap_or_else(|d| panic!("{}", d.render_plain(&src.name, &src.text)));
    summarize(g)
}

fn number(v: &Value, key: &str, model: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("counts.json: models.{model}.{key} is not a count"))
}

/// (op, in shape, out shape, params, MACs) of each conv, linear and BN layer,
/// with how often it occurs: the order of independent branches may differ
/// between the reference's modules and qatc's nodes, the layers may not.
type Layers = BTreeMap<(String, String, String, u64, u64), usize>;

fn qatc_layers(s: &Summary) -> Layers {
    let mut m = Layers::new();
    for r in &s.layers {
        if matches!(r.op.as_str(), "conv" | "dwconv" | "linear" | "bn") {
            let key = (
                r.op.clone(),
                r.in_shape.replace(' ', ""),
                r.out_shape.replace(' ', ""),
                r.params,
                r.macs,
            );
            *m.entry(key).or_default() += 1;
        }
    }
    m
}

fn reference_layers(rows: &[Value]) -> Layers {
    let mut m = Layers::new();
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        let key = (
            s("op"),
            s("in_shape"),
            s("out_shape"),
            r["params"].as_u64().unwrap_or_default(),
            r["macs"].as_u64().unwrap_or_default(),
        );
        *m.entry(key).or_default() += 1;
    }
    m
}

fn check(model: &str, spec: &str) {
    let r = reference(model);
    assert!(
        r.is_object(),
        "counts.json has no models.{model}: rerun tests/reference/counts.py"
    );
    let s = summary(spec);
    assert_eq!(s.model, model, "{spec}: the model's name");
    assert_eq!(s.input, "3x32x32", "{spec}: input");
    assert_eq!(s.classes, 10, "{spec}: classes");

    let t = &s.totals;
    assert_eq!(t.params, number(&r, "params", model), "{model}: params");
    assert_eq!(
        t.conv_macs,
        number(&r, "conv_macs", model),
        "{model}: conv MACs"
    );
    assert_eq!(t.fc_macs, number(&r, "fc_macs", model), "{model}: fc MACs");
    if r.get("macs").is_some() {
        assert_eq!(
            t.conv_macs + t.fc_macs,
            number(&r, "macs", model),
            "{model}: MACs"
        );
    }

    // Layer counts: qatc's conv + dwconv rows, linear rows and bn rows.
    let count = |ops: &[&str]| {
        s.layers
            .iter()
            .filter(|l| ops.contains(&l.op.as_str()))
            .count() as u64
    };
    for (key, ops) in [
        ("convs", &["conv", "dwconv"][..]),
        ("linears", &["linear"][..]),
        ("bns", &["bn"][..]),
    ] {
        if r.get(key).is_some() {
            assert_eq!(count(ops), number(&r, key, model), "{model}: {key}");
        }
    }

    // Layer by layer, where the reference lists its layers.
    if let Some(rows) = r.get("layers").and_then(Value::as_array) {
        let (ours, theirs) = (qatc_layers(&s), reference_layers(rows));
        if ours != theirs {
            let only = |a: &Layers, b: &Layers| -> Vec<String> {
                a.iter()
                    .filter(|(k, n)| b.get(*k) != Some(n))
                    .map(|(k, n)| format!("{n} x {k:?}"))
                    .collect()
            };
            panic!(
                "{model}: the layers differ\n  only in qatc ({spec}):\n    {}\n  only in the reference:\n    {}",
                only(&ours, &theirs).join("\n    "),
                only(&theirs, &ours).join("\n    ")
            );
        }
    }
}

#[test]
fn se_resnet20_matches_reference() {
    check("se_resnet20", "se_resnet20.qspec");
}

#[test]
fn mobilenetv3_small_matches_reference() {
    check("mobilenetv3_small", "mobilenetv3_small.qspec");
}

#[test]
fn shufflenetv2_matches_reference() {
    check("shufflenetv2", "shufflenetv2.qspec");
}

#[test]
fn densenet_matches_reference() {
    check("densenet", "densenet.qspec");
}

/// The counts do not depend on the profile (only memory and BOPs do).
#[test]
fn counts_are_the_same_in_every_profile() {
    for spec in [
        "se_resnet20.qspec",
        "mobilenetv3_small.qspec",
        "shufflenetv2.qspec",
        "densenet.qspec",
    ] {
        let path = root().join("../spec").join(spec);
        let src = Source::read(&path).expect("spec readable");
        let c = driver::compile(&src)
            .unwrap_or_else(|d| panic!("{}", d.render_plain(&src.name, &src.text)));
        let float = summarize(c.graph(Some("float")).expect("float")).totals;
        for name in ["w8a8", "w4a4", "w4a4-wide"] {
            let g = c
                .graph(Some(name))
                .unwrap_or_else(|_| panic!("{spec} has no profile {name}"));
            let t = summarize(g).totals;
            assert_eq!(
                (t.params, t.conv_macs, t.fc_macs),
                (float.params, float.conv_macs, float.fc_macs),
                "{spec}: profile {name}"
            );
        }
    }
}
