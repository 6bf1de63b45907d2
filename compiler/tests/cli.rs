//! The `qatc` binary end to end: exit statuses, output formats, errors that
//! name the file and place.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn qatc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("qatc runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_accepts_the_seed_specs() {
    for spec in [
        "spec/toynet.qspec",
        "spec/resnet20.qspec",
        "spec/mobilenetv2.qspec",
        "spec/vgg7.qspec",
    ] {
        let out = qatc(&["check", spec]);
        assert!(out.status.success(), "{spec}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).starts_with("ok: "),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn summary_json_has_the_documented_keys() {
    let out = qatc(&[
        "summary",
        "spec/resnet20.qspec",
        "--profile",
        "w8a8",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["model"], "resnet20");
    assert_eq!(v["profile"], "w8a8");
    let t = &v["totals"];
    for key in [
        "params",
        "clip_values",
        "conv_macs",
        "fc_macs",
        "bn_ops",
        "pool_ops",
        "seed_macs",
        "weight_bytes",
        "bops",
        "peak_activation_bytes",
    ] {
        assert!(t[key].is_u64(), "totals.{key} missing");
    }
    assert_eq!(t["seed_macs"], 41_214_656);
    let layers = v["layers"].as_array().expect("layers");
    let first_conv = layers.iter().find(|l| l["op"] == "conv").expect("a conv");
    for key in [
        "name",
        "op",
        "in_shape",
        "out_shape",
        "w_bit",
        "a_bit",
        "params",
        "macs",
        "bops",
    ] {
        assert!(!first_conv[key].is_null(), "layers[].{key} missing");
    }
    assert_eq!(first_conv["name"], "stem.conv1");
}

#[test]
fn summary_table_shows_totals() {
    let out = qatc(&["summary", "spec/mobilenetv2.qspec"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(s.contains("2,383,050 (2.383050 M)"), "{s}");
    assert!(s.contains("98,645,504 (98.645504 M)"), "{s}");
}

#[test]
fn dump_ir_shows_rule_inserted_quantizers() {
    let out = qatc(&[
        "check",
        "spec/resnet20.qspec",
        "--dump-ir",
        "--profile",
        "w8a8",
    ]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(s.contains("[rule quantize_after_add]"), "{s}");
    assert!(s.contains("[rule quantize_shortcut]"), "{s}");
    let out = qatc(&[
        "check",
        "spec/resnet20.qspec",
        "--dump-ir",
        "--profile",
        "w8a8-no-shortcut-quant",
    ]);
    assert!(!text(&out.stdout).contains("[rule quantize_shortcut]"));
}

#[test]
fn bad_input_exits_1_with_a_located_message() {
    let dir = std::env::temp_dir().join(format!("qatc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad: PathBuf = dir.join("bad.qspec");
    std::fs::write(
        &bad,
        "model m {\n  input 3x32x32\n  classes 10\n  fc: flatten -> linaer(classes)\n}\n",
    )
    .unwrap();
    let out = qatc(&["check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("bad.qspec:4:18"), "{err}");
    assert!(err.contains("did you mean `linear`?"), "{err}");

    let binary = dir.join("binary.qspec");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let out = qatc(&["check", binary.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("binary.qspec"),
        "{}",
        text(&out.stderr)
    );

    for args in [
        &["check", "no/such/file.qspec"][..],
        &["summary", "spec/toynet.qspec", "--profile", "nope"],
        &["summary", "spec/toynet.qspec", "--format", "xml"],
        &["frobnicate"],
    ] {
        let out = qatc(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).is_empty());
    }
    std::fs::remove_dir_all(&dir).ok();
}
