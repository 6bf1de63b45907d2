//! `qatc plot` and `qatc compare` end to end: run directories made in temp
//! dirs as `qatc train` writes them, the PNGs decoded and checked, the
//! table's content, and the errors for bad input (exit 1, file named).

use serde_json::json;
use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn qatc(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("qatc runs")
}

/// Like [`qatc`], but kills it and fails after `seconds`.
fn qatc_within(cwd: &Path, args: &[&str], seconds: u64) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qatc runs");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("qatc {args:?} still running after {seconds} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One metrics line of epoch `e` out of `n`, with `sites` clipping values
/// and a key the reader must ignore.
fn epoch_line(e: u32, n: u32, sites: usize, skill: f64) -> String {
    let t = f64::from(e) / f64::from(n);
    let clip: serde_json::Map<String, serde_json::Value> = (0..sites)
        .map(|i| {
            (
                format!("s{i}.act_quant"),
                json!(6.0 - t * (i as f64 + 1.0) * 0.3),
            )
        })
        .collect();
    json!({
        "epoch": e,
        "lr": 0.1 * (1.0 - t) + 0.001,
        "train_loss": 2.3 * (1.0 - t * skill) + 0.05,
        "train_top1": 10.0 + 85.0 * t * skill,
        "test_loss": 2.3 * (1.0 - t * skill) + 0.1,
        "test_top1": 10.0 + 80.0 * t * skill,
        "test_top5": 50.0 + 49.0 * t,
        "epoch_seconds": 10.0 + f64::from(e),
        "train_images_per_s": 400.0,
        "data_wait_seconds": 0.01,
        "clip": clip,
        "a_key_from_the_future": [1, 2, 3],
    })
    .to_string()
}

/// Writes a run directory `dir` with `run.json` and the `lines` of
/// `metrics.jsonl`.
fn write_run(dir: &Path, model: &str, profile: &str, lines: &[String]) {
    std::fs::create_dir_all(dir).unwrap();
    let info = json!({
        "model": model,
        "profile": profile,
        "spec": format!("spec/{model}.qspec"),
        "spec_hash": "0123abcd",
        "data": "digits",
        "config": {"epochs": 10, "batch_size": 128, "lr": 0.1},
    });
    std::fs::write(dir.join("run.json"), info.to_string()).unwrap();
    let mut jsonl = lines.join("\n");
    if !jsonl.is_empty() {
        jsonl.push('\n');
    }
    std::fs::write(dir.join("metrics.jsonl"), jsonl).unwrap();
}

fn run_of(n: u32, sites: usize, skill: f64) -> Vec<String> {
    (1..=n).map(|e| epoch_line(e, n, sites, skill)).collect()
}

/// Decodes a PNG and returns its size and the number of distinct colours.
fn decode(path: &Path) -> ((u32, u32), usize) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let colours: HashSet<&[u8]> = buf[..info.buffer_size()].chunks(3).collect();
    ((info.width, info.height), colours.len())
}

#[test]
fn plot_writes_a_png_with_every_panel_next_to_the_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    write_run(&run, "toynet", "cfg-1*", &run_of(6, 3, 1.0));
    let out = qatc(tmp.path(), &["plot", "run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let png = run.join("metrics.png");
    assert_eq!(
        text(&out.stdout).trim(),
        Path::new("run").join("metrics.png").display().to_string()
    );
    let (size, colours) = decode(&png);
    assert_eq!(size, (1600, 1100));
    // White, black text and axes, antialiasing, and a colour per line.
    assert!(colours > 50, "only {colours} colours: a blank plot?");
    let left: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 3, "no temporary file is left behind: {left:?}");
}

#[test]
fn plot_writes_where_o_says_with_many_sites_one_epoch_or_no_clip() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, lines) in [
        ("many-sites", run_of(4, 30, 1.0)),
        ("one-epoch", run_of(1, 2, 1.0)),
        ("float", run_of(3, 0, 1.0)),
    ] {
        let run = tmp.path().join(name);
        write_run(&run, "resnet20", "w4a4", &lines);
        let png = tmp.path().join(format!("{name}.png"));
        let out = qatc(tmp.path(), &["plot", name, "-o", png.to_str().unwrap()]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), png.display().to_string());
        let (size, colours) = decode(&png);
        assert_eq!(size, (1600, 1100), "{name}");
        assert!(colours > 50, "{name}: only {colours} colours");
        assert!(
            !run.join("metrics.png").exists(),
            "{name}: -o is where it goes"
        );
    }
}

#[test]
fn compare_prints_the_table_and_plots_every_run() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(
        &tmp.path().join("a"),
        "toynet",
        "cfg-1*",
        &run_of(5, 2, 1.0),
    );
    write_run(&tmp.path().join("b"), "toynet", "cfg-3", &run_of(8, 2, 0.5));
    write_run(&tmp.path().join("new"), "toynet", "float", &[]);
    let out = qatc(tmp.path(), &["compare", "a", "b", "new"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let cells = |line: &str| {
        line.split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(cells(lines[0])[..4], ["run", "model", "profile", "data"]);
    // a: 5 epochs, test top-1 10 + 80 at the last; mean epoch 10 + 3 s.
    assert_eq!(
        cells(lines[1]),
        [
            "toynet/cfg-1*",
            "toynet",
            "cfg-1*",
            "digits",
            "5",
            "90.00",
            "5",
            "90.00",
            "99.00",
            "0.0500",
            "13.0"
        ]
    );
    assert_eq!(
        cells(lines[2])[..8],
        [
            "toynet/cfg-3",
            "toynet",
            "cfg-3",
            "digits",
            "8",
            "50.00",
            "8",
            "50.00"
        ]
    );
    assert_eq!(
        cells(lines[3]),
        [
            "toynet/float",
            "toynet",
            "float",
            "digits",
            "0",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-"
        ]
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("has no finished epoch yet"), "{stderr}");
    assert!(stderr.contains("compare.png"), "{stderr}");
    let (size, colours) = decode(&tmp.path().join("compare.png"));
    assert_eq!(size, (1600, 700));
    assert!(colours > 50, "only {colours} colours");
}

#[test]
fn compare_json_labels_colliding_runs_by_directory() {
    let tmp = tempfile::tempdir().unwrap();
    // The same model and profile twice (two seeds): labelled by dir name.
    write_run(
        &tmp.path().join("seed1"),
        "toynet",
        "cfg-1*",
        &run_of(4, 1, 1.0),
    );
    // Interrupted after logging epoch 3 (top-1 88), resumed from the
    // checkpoint of epoch 2: epoch 3 is logged again (top-1 70), then 4
    // (top-1 50). The later line of epoch 3 wins.
    let resumed = vec![
        epoch_line(1, 4, 1, 1.0),
        epoch_line(2, 4, 1, 1.0),
        epoch_line(3, 4, 1, 1.3),
        epoch_line(3, 4, 1, 1.0),
        epoch_line(4, 4, 1, 0.5),
    ];
    write_run(&tmp.path().join("seed2"), "toynet", "cfg-1*", &resumed);
    let png = tmp.path().join("out").join("c.png");
    std::fs::create_dir(png.parent().unwrap()).unwrap();
    let out = qatc(
        tmp.path(),
        &[
            "compare",
            "seed1",
            "seed2",
            "--format",
            "json",
            "-o",
            png.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(decode(&png).0, (1600, 700));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["label"], "seed1");
    assert_eq!(rows[1]["label"], "seed2");
    assert_eq!(rows[0]["dir"], "seed1");
    assert_eq!(rows[0]["model"], "toynet");
    assert_eq!(rows[0]["profile"], "cfg-1*");
    assert_eq!(rows[0]["data"], "digits");
    assert_eq!(rows[0]["epochs"], 4);
    assert_eq!(rows[0]["best_epoch"], 4);
    assert_eq!(rows[0]["best_test_top1"], 90.0);
    assert_eq!(rows[0]["final_test_top1"], 90.0);
    assert_eq!(rows[0]["final_test_top5"], 99.0);
    assert_eq!(rows[0]["mean_epoch_seconds"], 12.5);
    assert!(rows[0]["final_train_loss"].is_number());
    assert_eq!(rows[1]["epochs"], 4);
    assert_eq!(rows[1]["best_epoch"], 3);
    assert_eq!(rows[1]["best_test_top1"], 70.0);
    assert_eq!(rows[1]["final_test_top1"], 50.0);
}

#[test]
fn a_null_metric_is_a_gap_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lines = run_of(3, 1, 1.0);
    lines[1] = lines[1].replace("\"train_loss\":", "\"train_loss\":null,\"x\":");
    write_run(&tmp.path().join("r"), "toynet", "cfg-1*", &lines);
    let out = qatc(tmp.path(), &["plot", "r"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(decode(&tmp.path().join("r/metrics.png")).0, (1600, 1100));
}

#[test]
fn extreme_values_neither_hang_nor_panic() {
    // Each of these once hung in plotters' axis layout or overflowed its
    // pixel mapping: a loss near f64::MAX, a learning rate whose range
    // overflows, an accuracy far below 0.
    let tmp = tempfile::tempdir().unwrap();
    let mut lines = run_of(3, 2, 1.0);
    lines[0] = lines[0]
        .replace("\"train_loss\":", "\"train_loss\":1.7e308,\"x\":")
        .replace("\"lr\":", "\"lr\":1e-300,\"y\":");
    lines[1] = lines[1]
        .replace("\"lr\":", "\"lr\":1e140,\"y\":")
        .replace("\"test_top1\":", "\"test_top1\":2e112,\"z\":")
        .replace("\"test_top5\":", "\"test_top5\":-3e76,\"w\":");
    lines[2] = lines[2].replace("\"test_loss\":", "\"test_loss\":-1.7e308,\"x\":");
    write_run(&tmp.path().join("wild"), "toynet", "cfg-1*", &lines);
    // A regression would hang: fail after a minute instead (it takes ~1 s).
    let out = qatc_within(tmp.path(), &["plot", "wild"], 60);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(decode(&tmp.path().join("wild/metrics.png")).0, (1600, 1100));
    let out = qatc(tmp.path(), &["compare", "wild"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("2.000e112"),
        "{}",
        text(&out.stdout)
    );
}

/// Runs qatc, expects exit status 1 and returns stderr.
fn fails(cwd: &Path, args: &[&str]) -> String {
    let out = qatc(cwd, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stderr)
}

#[test]
fn a_missing_directory_or_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(tmp.path(), &["plot", "nowhere"]);
    assert!(err.contains("`nowhere` does not exist"), "{err}");
    let err = fails(tmp.path(), &["compare", "nowhere"]);
    assert!(err.contains("`nowhere` does not exist"), "{err}");

    std::fs::create_dir(tmp.path().join("empty")).unwrap();
    let err = fails(tmp.path(), &["plot", "empty"]);
    assert!(
        err.contains(&format!(
            "`{}` is missing",
            Path::new("empty").join("run.json").display()
        )),
        "{err}"
    );

    write_run(
        &tmp.path().join("r"),
        "toynet",
        "cfg-1*",
        &run_of(2, 1, 1.0),
    );
    // No `metrics.jsonl` yet: the run is in its first epoch.
    std::fs::remove_file(tmp.path().join("r/metrics.jsonl")).unwrap();
    let err = fails(tmp.path(), &["plot", "r"]);
    assert!(err.contains("has no finished epoch yet"), "{err}");
    let err = fails(tmp.path(), &["compare", "r"]);
    assert!(err.contains("no run has a finished epoch yet"), "{err}");
    assert!(!tmp.path().join("compare.png").exists());

    std::fs::write(tmp.path().join("file"), "").unwrap();
    let err = fails(tmp.path(), &["plot", "file"]);
    assert!(err.contains("`file` is not a directory"), "{err}");
}

#[test]
fn a_bad_json_line_is_named_by_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("r");
    let mut lines = run_of(4, 1, 1.0);
    lines[2] = "{\"epoch\": 3, \"lr\": 0.1,".into();
    write_run(&run, "toynet", "cfg-1*", &lines);
    let file = Path::new("r").join("metrics.jsonl").display().to_string();
    for cmd in ["plot", "compare"] {
        let err = fails(tmp.path(), &[cmd, "r"]);
        assert!(err.contains(&format!("{file}:3:")), "{cmd}: {err}");
    }
    assert!(!run.join("metrics.png").exists());

    // Valid JSON without a key the plots need.
    lines[2] = epoch_line(3, 4, 1, 1.0).replace("\"test_top1\"", "\"test_top_1\"");
    write_run(&run, "toynet", "cfg-1*", &lines);
    let err = fails(tmp.path(), &["plot", "r"]);
    assert!(err.contains(&format!("{file}:3:")), "{err}");
    assert!(err.contains("missing field `test_top1`"), "{err}");

    // Not an object.
    lines[2] = "[1, 2]".into();
    write_run(&run, "toynet", "cfg-1*", &lines);
    let err = fails(tmp.path(), &["plot", "r"]);
    assert!(err.contains(&format!("{file}:3:")), "{err}");

    // run.json without the model.
    write_run(&run, "toynet", "cfg-1*", &run_of(2, 1, 1.0));
    std::fs::write(
        run.join("run.json"),
        "{\n  \"profile\": \"x\",\n  \"data\": \"d\"\n}\n",
    )
    .unwrap();
    let err = fails(tmp.path(), &["plot", "r"]);
    let info = Path::new("r").join("run.json").display().to_string();
    assert!(err.contains(&format!("{info}:4:")), "{err}");
    assert!(err.contains("missing field `model`"), "{err}");
}

#[test]
fn zero_epochs_has_nothing_to_plot() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(&tmp.path().join("new"), "toynet", "cfg-1*", &[]);
    let err = fails(tmp.path(), &["plot", "new"]);
    let file = Path::new("new").join("metrics.jsonl").display().to_string();
    assert!(
        err.contains(&format!("`{file}` has no finished epoch yet")),
        "{err}"
    );
    assert!(!tmp.path().join("new/metrics.png").exists());

    let out = qatc(tmp.path(), &["compare", "new"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("toynet/cfg-1*"),
        "the table is still printed"
    );
    assert!(
        text(&out.stderr).contains("no run has a finished epoch yet"),
        "{}",
        text(&out.stderr)
    );
    assert!(!tmp.path().join("compare.png").exists());
}
