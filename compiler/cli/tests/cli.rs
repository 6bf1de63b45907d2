//! The `qatc` binary end to end: exit statuses, output formats, errors that
//! name the file and place.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn qatc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
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
    assert_eq!(
        first_conv["name"], "stem.stem",
        "named as in the spec (`as stem`)"
    );
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
    // `eval --int` reports both roundings: `--rounding` is refused here, not
    // passed on to the model's eval.
    let out = qatc(&[
        "eval",
        "spec/toynet.qspec",
        "--int",
        "--checkpoint",
        "none.safetensors",
        "--rounding",
        "trunc",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("both rounding modes"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn build_writes_a_crate() {
    let dir = std::env::temp_dir().join(format!("qatc-build-{}", std::process::id()));
    let out = qatc(&["build", "spec/vgg7.qspec", "-o", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lib = std::fs::read_to_string(dir.join("src/lib.rs")).expect("lib.rs written");
    assert!(lib.starts_with("//! Generated by qatc"));
    assert!(lib.contains("pub struct Vgg7"));
    let toml = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml written");
    assert!(toml.contains("name = \"qatc-model-vgg7\""));
    assert!(toml.contains("runtime\" }"), "{toml}");
    assert!(dir.join("src/main.rs").exists());
    std::fs::remove_dir_all(&dir).ok();

    let out = qatc(&[
        "build",
        "tests/fixtures/err/unknown_block.qspec",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !dir.join("src/lib.rs").exists(),
        "nothing is written for a bad spec"
    );
}

#[test]
fn import_maps_the_seed_golden_checkpoints() {
    let golden = qatc_testdata::golden_set();
    for (spec, file, tensors) in [
        ("spec/toynet.qspec", "toynet.safetensors", "127 tensors"),
        ("spec/resnet20.qspec", "resnet20.safetensors", "107 tensors"),
        (
            "spec/mobilenetv2.qspec",
            "mobilenetv2.safetensors",
            "403 tensors",
        ),
    ] {
        let Some(from) = golden.file("import_maps_the_seed_golden_checkpoints", file) else {
            continue;
        };
        let from = from.to_string_lossy();
        let out = qatc(&["import", spec, "--from", &from, "--strip-prefix", "state."]);
        assert!(out.status.success(), "{spec}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(tensors), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("<- state."),
            "the mapping is listed"
        );
    }
    // A checkpoint of another model: every problem listed, exit 1.
    let from = golden.require("toynet.safetensors");
    let from = from.to_string_lossy();
    let out = qatc(&[
        "import",
        "spec/resnet20.qspec",
        "--from",
        &from,
        "--strip-prefix",
        "state.",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("missing: `state.features.stage1.unit1.conv1.weight`"),
        "{err}"
    );
    assert!(
        err.contains("unexpected: `state.cells.0.conv1.weight`"),
        "{err}"
    );
    // A spec without an import section for the format.
    let out = qatc(&["import", "spec/vgg7.qspec", "--from", &from]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("E0137"), "{}", text(&out.stderr));
    // Not a safetensors file.
    let out = qatc(&[
        "import",
        "spec/resnet20.qspec",
        "--from",
        "spec/resnet20.qspec",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not a safetensors file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn import_writes_a_checkpoint_with_the_models_names() {
    let out_file =
        std::env::temp_dir().join(format!("qatc-import-{}.safetensors", std::process::id()));
    let from = qatc_testdata::golden_set().require("resnet20.safetensors");
    let from = from.to_string_lossy();
    let out = qatc(&[
        "import",
        "spec/resnet20.qspec",
        "--from",
        &from,
        "--strip-prefix",
        "state.",
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bytes = std::fs::read(&out_file).expect("written");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + header_len]).expect("safetensors header");
    assert_eq!(
        header["stem.stem.weight"]["shape"],
        serde_json::json!([16, 3, 3, 3])
    );
    assert_eq!(
        header["stage2.0.identity_conv.weight"]["shape"],
        serde_json::json!([32, 16, 1, 1])
    );
    assert!(header.get("features.stage1.unit1.conv1.weight").is_none());
    std::fs::remove_file(&out_file).ok();
}

/// `qatc` run in `dir`.
fn qatc_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("qatc runs")
}

/// `qatc build --check` and `--diff` on a fresh, a missing and a stale crate:
/// exit statuses, the file lists, the diff of a one-line spec change
/// (pinned), and that neither writes anything; a plain build says which
/// files it changed.
#[test]
fn build_check_and_diff_say_what_a_build_would_change() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let spec_text = std::fs::read_to_string(root.join("spec/digits.qspec")).unwrap();
    std::fs::write(dir.path().join("digits.qspec"), &spec_text).unwrap();
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "digits.qspec", "-o", "crate"];
        args.extend_from_slice(extra);
        qatc_in(dir.path(), &args)
    };
    let out = build(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .ends_with("changed: Cargo.toml (new), src/lib.rs (new), src/main.rs (new)\n"),
        "{}",
        text(&out.stderr)
    );
    let out = build(&[]);
    assert!(
        text(&out.stderr).ends_with("; no file changed\n"),
        "{}",
        text(&out.stderr)
    );
    let out = build(&["--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "up to date: crate is what digits.qspec generates\n"
    );
    // A crate that is not there: every file is new.
    let out = qatc_in(
        dir.path(),
        &["build", "digits.qspec", "-o", "other", "--check"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .starts_with("stale: other: Cargo.toml (new), src/lib.rs (new), src/main.rs (new)"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.path().join("other").exists(), "--check writes nothing");
    // One bit-width changed in the spec.
    let changed = spec_text.replace("all { w 8  a 8 }", "all { w 6  a 8 }");
    assert_ne!(changed, spec_text);
    std::fs::write(dir.path().join("digits.qspec"), &changed).unwrap();
    let before = std::fs::read_to_string(dir.path().join("crate/src/lib.rs")).unwrap();
    let out = build(&["--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "stale: crate: src/lib.rs (+2 -2) (run `qatc build digits.qspec` to update)\n"
    );
    let out = build(&["--diff"]);
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!("build_diff_of_a_bit_width_change", text(&out.stdout));
    let after = std::fs::read_to_string(dir.path().join("crate/src/lib.rs")).unwrap();
    assert_eq!(before, after, "--diff writes nothing");
    let out = build(&[]);
    assert!(
        text(&out.stderr).ends_with("; changed: src/lib.rs (+2 -2)\n"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(build(&["--check"]).status.code(), Some(0));
}

/// A checkpoint qatc wrote (here by `qatc import`, which seals its output
/// with SHA-256 digests) with its last 100 bytes flipped is refused, exit
/// status 1 and the file named, by every command of the compiler that reads
/// one: `export` (and so `int`, through the same loader) and `import`.
#[test]
fn a_corrupt_checkpoint_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let golden = qatc_testdata::golden_set().require("toynet.safetensors");
    let ck = dir.path().join("toynet.safetensors");
    let ck_s = ck.to_string_lossy().into_owned();
    let golden_s = golden.to_string_lossy().into_owned();
    let out = qatc(&[
        "import",
        "spec/toynet.qspec",
        "--from",
        &golden_s,
        "--strip-prefix",
        "state.",
        "-o",
        &ck_s,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let export_dir = dir.path().join("out").to_string_lossy().into_owned();
    let export = || {
        qatc(&[
            "export",
            "spec/toynet.qspec",
            "--profile",
            "cfg-1*",
            "--checkpoint",
            &ck_s,
            "--saturate-constants",
            "-o",
            &export_dir,
        ])
    };
    let out = export();
    assert!(
        out.status.success(),
        "sealed and intact: {}",
        text(&out.stderr)
    );
    let mut bytes = std::fs::read(&ck).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - 100..] {
        *b ^= 0x55;
    }
    std::fs::write(&ck, &bytes).unwrap();
    let out = export();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("checkpoint `{ck_s}` is corrupt")),
        "{}",
        text(&out.stderr)
    );
    let out = qatc(&["import", "spec/toynet.qspec", "--from", &ck_s]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("checkpoint `{ck_s}` is corrupt")),
        "{}",
        text(&out.stderr)
    );
}

/// `--opset` belongs to the ONNX formats that have a choice: with another
/// format it is an error naming the flag (exit status 1), before anything
/// is read.
#[test]
fn opset_with_a_format_that_has_none_is_refused() {
    export_flag_refused(
        &["onnx-int", "onnx-int8", "c", "json"],
        &["--opset", "21"],
        "--opset applies to --format onnx and qonnx only",
    );
}

/// `--u8-weights` belongs to `--format onnx-int8`: with another format it
/// is an error naming the flag (exit status 1), before anything is read.
#[test]
fn u8_weights_with_another_format_is_refused() {
    export_flag_refused(
        &["onnx", "onnx-int", "c"],
        &["--u8-weights"],
        "--u8-weights applies to --format onnx-int8 only",
    );
}

/// `qatc export --format F FLAGS` for each of `formats` exits 1 with `says`,
/// before reading the (missing) checkpoint.
fn export_flag_refused(formats: &[&str], flags: &[&str], says: &str) {
    for format in formats {
        let mut args = vec![
            "export",
            "spec/toynet.qspec",
            "--profile",
            "cfg-1*",
            "--checkpoint",
            "no-such-checkpoint.safetensors",
            "--format",
            format,
            "-o",
            "unused",
        ];
        args.extend(flags);
        let out = qatc(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{format}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(says),
            "{format}: {}",
            text(&out.stderr)
        );
    }
}

/// Output into a closed pipe (`qatc summary ... | head -1`) ends `qatc` as
/// SIGPIPE ends any Unix tool: no panic message.
#[cfg(unix)]
#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(["summary", "spec/mobilenetv2.qspec", "--format", "json"])
        .current_dir(&root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reading end closed before qatc writes: its first write fails.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    // SIGPIPE is 13 on Linux and the BSDs.
    assert_eq!(out.status.signal(), Some(13), "{:?}", out.status);
}
