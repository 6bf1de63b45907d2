//! `qatc bench` up to the point where it hands over to cargo: the checks
//! (spec, profile, generated crate brought up to date, libtorch set up),
//! for `bench`, `train` and `eval` alike,
//! and the command it runs. `CARGO` points at `echo` here, so no model is
//! built; the benchmark itself is tested in the runtime (`bench`, `cli`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch Cargo workspace holding `spec/toynet.qspec`, removed on drop.
struct Workspace(PathBuf);

impl Workspace {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("qatc-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("spec")).unwrap();
        std::fs::write(
            dir.join("Cargo.toml"),
            "[workspace]\nmembers = [\"generated/*\"]\n",
        )
        .unwrap();
        let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../spec/toynet.qspec");
        std::fs::copy(spec, dir.join("spec/toynet.qspec")).unwrap();
        Self(dir)
    }

    fn qatc(&self, args: &[&str], libtorch: bool) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qatc"));
        cmd.args(args).current_dir(&self.0).env("CARGO", "echo");
        if libtorch {
            cmd.env("LIBTORCH_USE_PYTORCH", "1");
        } else {
            cmd.env_remove("LIBTORCH_USE_PYTORCH");
        }
        cmd.output().expect("qatc runs")
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn runs_the_generated_crates_bench_with_the_options_given() {
    let ws = Workspace::new("ok");
    let built = ws.qatc(&["build", "spec/toynet.qspec"], true);
    assert!(built.status.success(), "{}", text(&built.stderr));
    let out = ws.qatc(
        &[
            "bench",
            "spec/toynet.qspec",
            "--profile",
            "cfg-2",
            "--batch-size",
            "64",
            "--steps",
            "3",
            "--json",
        ],
        true,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "run --release -q -p qatc-model-toynet -- bench --profile cfg-2 --batch-size 64 --steps 3 --json\n"
    );
    // Defaults are the binary's: nothing passed.
    let out = ws.qatc(&["bench", "spec/toynet.qspec"], true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "run --release -q -p qatc-model-toynet -- bench\n"
    );
    // The spec named from elsewhere, relative to the workspace root.
    let sub = ws.0.join("spec");
    let out = Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(["bench", "toynet.qspec"])
        .current_dir(&sub)
        .env("CARGO", "echo")
        .env("LIBTORCH_USE_PYTORCH", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn without_libtorch_it_says_to_go_through_dev() {
    let ws = Workspace::new("env");
    assert!(ws
        .qatc(&["build", "spec/toynet.qspec"], true)
        .status
        .success());
    let out = ws.qatc(&["bench", "spec/toynet.qspec"], false);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("./dev qatc bench"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_missing_or_stale_crate_is_regenerated_and_a_foreign_one_refused() {
    let ws = Workspace::new("stale");
    let out = ws.qatc(&["bench", "spec/toynet.qspec"], true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("qatc: generated "), "{err}");
    let lib = ws.0.join("generated/toynet/src/lib.rs");
    let fresh = std::fs::read_to_string(&lib).unwrap();

    std::fs::write(&lib, fresh.clone() + "\n// edited\n").unwrap();
    let out = ws.qatc(&["train", "spec/toynet.qspec", "--epochs", "1"], true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("regenerated (it was stale)"));
    assert_eq!(std::fs::read_to_string(&lib).unwrap(), fresh);
    assert!(
        text(&out.stdout).contains("-- train --epochs 1"),
        "{}",
        text(&out.stdout)
    );

    // Another spec with the same model name must not overwrite the crate.
    let other = std::fs::read_to_string(ws.0.join("spec/toynet.qspec"))
        .unwrap()
        .replace("profile cfg-3", "profile cfg-3b");
    std::fs::write(ws.0.join("spec/other.qspec"), other).unwrap();
    let out = ws.qatc(&["eval", "spec/other.qspec"], true);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("holds the crate of another spec"), "{err}");
    assert_eq!(std::fs::read_to_string(&lib).unwrap(), fresh);
    assert!(out.stdout.is_empty(), "cargo must not run");
}

#[test]
fn bad_specs_profiles_and_flags_exit_1() {
    let ws = Workspace::new("bad");
    assert!(ws
        .qatc(&["build", "spec/toynet.qspec"], true)
        .status
        .success());
    let out = ws.qatc(&["bench", "spec/toynet.qspec", "--profile", "w2a2"], true);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("no profile `w2a2`; known: cfg-1*, cfg-1"),
        "{err}"
    );
    for args in [
        &["bench", "spec/toynet.qspec", "--batch-size", "0"][..],
        &["bench", "spec/toynet.qspec", "--steps", "x"],
        &["bench"],
        &["bench", "spec/missing.qspec"],
    ] {
        let out = ws.qatc(args, true);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    std::fs::write(ws.0.join("spec/broken.qspec"), "model broken {").unwrap();
    let out = ws.qatc(&["bench", "spec/broken.qspec"], true);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("broken.qspec"));
}

#[cfg(unix)]
#[test]
fn int_bench_times_libtorch_through_the_model_crate_on_one_thread() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new("int");
    assert!(ws
        .qatc(&["build", "spec/toynet.qspec"], true)
        .status
        .success());
    // A stand-in for cargo: the model crate's `bench --json` report, given
    // one thread and the profile asked for (else it fails).
    let fake = ws.0.join("fake-cargo");
    std::fs::write(
        &fake,
        "#!/bin/sh\n\
         [ \"$QATC_THREADS\" = 1 ] || exit 3\n\
         case \"$*\" in *'bench --profile cfg-1* --steps 5 --json'*) ;; *) exit 4 ;; esac\n\
         echo '{\"qat\":{\"eval_images_per_s\":500.0}}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let golden = qatc_testdata::golden_set().require("toynet.safetensors");
    let run = |cargo: &Path| {
        Command::new(env!("CARGO_BIN_EXE_qatc"))
            .args(["int", "bench", "spec/toynet.qspec", "--profile", "cfg-1*"])
            .arg("--checkpoint")
            .arg(&golden)
            .args(["--import", "seed", "--strip-prefix", "state."])
            .args(["--saturate-constants", "--images", "4", "--rounds", "1"])
            .arg("--libtorch")
            .current_dir(&ws.0)
            .env("CARGO", cargo)
            .env("LIBTORCH_USE_PYTORCH", "1")
            .output()
            .unwrap()
    };
    let out = run(&fake);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("libtorch fake-quant eval, 1 thread: 500.0 images/s (2.000 ms per image)"),
        "{stdout}"
    );
    assert!(stdout.contains("engine / libtorch, 1 thread: "), "{stdout}");
    // A model crate that fails (here: no JSON) is an error, not a number.
    let out = run(Path::new("echo"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no JSON report"),
        "{}",
        text(&out.stderr)
    );
}

/// `qatc int bench --onnxruntime` without the ONNX Python: exit 1 before any
/// timing, saying how to set it up.
#[test]
fn int_bench_onnxruntime_without_the_onnx_python_says_how_to_install_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(["int", "bench", "spec/toynet.qspec", "--profile", "cfg-1*"])
        .args(["--checkpoint", "no-such-checkpoint.safetensors"])
        .arg("--onnxruntime")
        .current_dir(&root)
        .env_remove("QATC_ONNX_PYTHONPATH")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("source scripts/onnx-env.sh"), "{err}");
    assert!(err.contains("QATC_ONNX_PYTHONPATH"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "nothing is timed: {}",
        text(&out.stdout)
    );
}

/// A tiny `qatc int bench --onnxruntime --dump` on the golden ToyNet: the
/// engine and ONNX Runtime (the int8 export with int8 and with uint8
/// weights, QDQ, onnx-int) on the same 3 images, batches of 1 and 64, both
/// optimisation levels, the ops ONNX Runtime runs and its profile per op
/// type; the dump holds the images, labels and the engine's logits.
/// Timings are printed, never asserted.
#[test]
fn int_bench_onnxruntime_times_the_onnx_exports_on_the_same_images() {
    let Ok(pythonpath) = std::env::var("QATC_ONNX_PYTHONPATH") else {
        assert!(
            !qatc_testdata::require_shared(),
            "QATC_ONNX_PYTHONPATH is not set and QATC_REQUIRE_SHARED is: source scripts/onnx-env.sh"
        );
        qatc_testdata::skip(
            "int_bench_onnxruntime_times_the_onnx_exports_on_the_same_images",
            "no ONNX tooling (QATC_ONNX_PYTHONPATH unset: source scripts/onnx-env.sh, as ./dev test does)",
        );
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let golden = qatc_testdata::golden_set().require("toynet.safetensors");
    let dump = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(["int", "bench", "spec/toynet.qspec", "--profile", "cfg-1*"])
        .arg("--checkpoint")
        .arg(&golden)
        .args(["--import", "seed", "--strip-prefix", "state."])
        .args(["--saturate-constants", "--images", "3", "--rounds", "1"])
        .arg("--onnxruntime")
        .arg("--dump")
        .arg(dump.path())
        .current_dir(&root)
        .env("QATC_ONNX_PYTHONPATH", pythonpath)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    assert!(stdout.contains("onnxruntime "), "{stdout}");
    for want in [
        "intra_op_num_threads",
        "qdq       disable_all",
        "qdq       enable_all",
        "qdq enable_all runs: ",
        "engine / ONNX Runtime qdq",
        "int8      enable_all",
        "int8-u8w  enable_all",
        "int8 enable_all runs: ",
        "com.microsoft.QLinearConv",
        "ORT profile int8 enable_all 1 thread batch 64",
        "engine / ONNX Runtime int8",
    ] {
        assert!(stdout.contains(want), "`{want}` missing:\n{stdout}");
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dump.path().join("meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["shape"], serde_json::json!([3, 3, 32, 32]));
    assert_eq!(meta["labels"].as_array().unwrap().len(), 3);
    let inputs = std::fs::metadata(dump.path().join("inputs.f32")).unwrap();
    assert_eq!(inputs.len(), 3 * 3 * 32 * 32 * 4);
    let logits = std::fs::metadata(dump.path().join("logits.f32")).unwrap();
    assert_eq!(logits.len(), 3 * 10 * 4);
    assert!(dump.path().join("ort-bench.jsonl").exists());
    assert!(!stdout.contains("NO int8 kernels"), "{stdout}");
}

/// `qatc int bench --layers --dump` on the golden ToyNet: every layer of the
/// plan and the output layer timed, and each conv's multiply-accumulates
/// the same as `qatc summary` counts for the layer of that name (two
/// independent computations: the plan's shapes, the IR's summary).
#[test]
fn int_bench_layers_profiles_every_layer_with_the_summarys_macs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let golden = qatc_testdata::golden_set().require("toynet.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump");
    let out = Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(["int", "bench", "spec/toynet.qspec", "--profile", "cfg-1*"])
        .arg("--checkpoint")
        .arg(&golden)
        .args(["--import", "seed", "--strip-prefix", "state."])
        .args(["--saturate-constants", "--images", "2", "--rounds", "1"])
        .arg("--layers")
        .arg("--dump")
        .arg(&dump)
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("where the time goes"), "{stdout}");
    assert!(stdout.contains("  by kind:"), "{stdout}");
    let profile: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dump.join("layers.json")).unwrap()).unwrap();
    let layers = profile["layers"].as_array().expect("layers");
    assert_eq!(profile["images"], 2);
    // In plan order, the output layer last; each printed on its own line.
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l["index"], i);
        assert!(l["ns"].as_f64().unwrap() >= 0.0);
        let name = l["name"].as_str().unwrap();
        assert!(
            stdout
                .lines()
                .any(|line| line.contains(&format!(" {name} "))),
            "{name} not printed: {stdout}"
        );
    }
    assert_eq!(layers.last().unwrap()["name"], "output");
    let out = Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(["summary", "spec/toynet.qspec", "--profile", "cfg-1*"])
        .args(["--format", "json"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let counted = summary["layers"].as_array().unwrap();
    let mut convs = 0;
    for l in layers.iter().filter(|l| l["macs"].as_u64().unwrap() > 0) {
        let name = l["name"].as_str().unwrap();
        let s = counted
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not a layer of the summary"));
        assert_eq!(l["macs"], s["macs"], "{name}");
        convs += 1;
    }
    let summed: u64 = layers.iter().map(|l| l["macs"].as_u64().unwrap()).sum();
    let t = &summary["totals"];
    assert_eq!(
        summed,
        t["conv_macs"].as_u64().unwrap() + t["fc_macs"].as_u64().unwrap()
    );
    assert!(convs >= 2, "{convs} convs");
}
