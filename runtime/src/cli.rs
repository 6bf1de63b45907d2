//! The command line of every generated model binary: its `main` is one call
//! to [`run`].
//!
//! ```text
//! qatc-model-NAME train [--data D] [--profile P] [--epochs N] ... [--out RUN_DIR] [--resume]
//! qatc-model-NAME eval --checkpoint F [--data D] [--format table|json]
//! qatc-model-NAME [smoke] [--profile P] [--device D]
//! qatc-model-NAME bench [--profile P] [--batch-size 128] [--device auto|cpu|cuda[:N]]
//!                       [--steps 10] [--warmup 2] [--seed 0] [--json]
//! ```
//!
//! - `train`: [`train::run::train`](crate::train::run::train), the training
//!   loop (`qatc train` runs it); exit status 130 when stopped by Ctrl-C
//!   (after saving);
//! - `eval`: [`train::eval::eval_command`](crate::train::eval::eval_command)
//!   (`qatc eval` runs it);
//! - `smoke` (also what runs without a subcommand): builds the model under
//!   the profile (default: the model's first), runs one training step on a
//!   random batch of 8 ([`smoke_step`]) and an evaluation forward pass, and
//!   prints one line.
//! - `bench`: [`bench::compare`] of the `float` profile against the QAT
//!   profile (default: the model's first): median time of a training step
//!   and of an evaluation pass, images/s, and the QAT/float step-time
//!   ratios, as a table or, with `--json`, one JSON object on stdout:
//!
//!   | key | value |
//!   |---|---|
//!   | `model` | model name |
//!   | `device` | `cpu`, `cuda:N` |
//!   | `threads`, `threads_source` | torch's thread count; `cores` or `env` ([`bench::THREADS_ENV`]) |
//!   | `batch_size`, `steps`, `warmup`, `seed` | the run's settings |
//!   | `float`, `qat` | one object each: `profile`, `params`, `train_ms_per_step`, `train_min_ms`, `train_images_per_s`, `eval_ms_per_step`, `eval_min_ms`, `eval_images_per_s`, `last_loss` (`null` if not finite) |
//!   | `train_ratio`, `eval_ratio` | QAT step time / float step time (medians) |
//!
//! Both subcommands set torch's thread count first
//! ([`bench::configure_threads`]: [`bench::THREADS_ENV`], else one per core)
//! and say so. Bad flags, an unknown profile, an unusable device or a bad
//! thread count: a message on stderr and exit status 1 (`--help`: 0).
//!
//! [`smoke_step`]: crate::model::smoke_step

use crate::bench::{self, BenchConfig, BenchReport, ProfileBench, ThreadSource, Threads};
use crate::device::{device_name, parse_device};
use crate::model::{smoke_step, ModelMeta, QatModel};
use crate::profile::UnknownProfile;
use crate::train::eval::{eval_command, EvalArgs};
use crate::train::run::{train, Outcome, TrainArgs, INTERRUPTED};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::process::ExitCode;
use tch::nn;
use tch::{Kind, Tensor};

/// Batch size of the smoke step.
pub const SMOKE_BATCH: i64 = 8;

#[derive(Parser, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    smoke: SmokeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train the model (QAT under a profile) on a data set: see
    /// docs/training.md.
    Train(Box<TrainArgs>),
    /// Evaluate a checkpoint: top-1, top-5, per-class accuracy, confusion.
    Eval(EvalArgs),
    /// Build the model, run one training step on a random batch and an
    /// evaluation pass (the default).
    Smoke(SmokeArgs),
    /// Training and evaluation images/s of the float profile and a QAT
    /// profile, and their ratio.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct SmokeArgs {
    /// Profile to build [default: the model's first].
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// QAT profile to compare with `float` [default: the model's first].
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Images per step.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(i64).range(1..))]
    batch_size: i64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Timed steps per profile, for training and for evaluation.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    steps: u32,
    /// Untimed steps before the timed ones.
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// Seed of the initial weights and the random batch.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs the command line of a generated model binary on the process's
/// arguments: see the module doc.
///
/// `meta` describes the model (its profiles: the first is the default;
/// `float` must be among them for `bench`), and `build` is its constructor
/// (`|vs, p| Model::new(vs, p)`).
pub fn run<M, F>(meta: &ModelMeta, build: F) -> ExitCode
where
    M: QatModel,
    F: Fn(&nn::Path, &str) -> Result<M, UnknownProfile>,
{
    run_with_args(meta, build, std::env::args_os())
}

/// [`run`] on the given arguments (the first is the program name).
pub fn run_with_args<M, F, I, T>(meta: &ModelMeta, build: F, args: I) -> ExitCode
where
    M: QatModel,
    F: Fn(&nn::Path, &str) -> Result<M, UnknownProfile>,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    crate::alloc::keep_freed_memory();
    let (model, profiles) = (meta.name, meta.profiles);
    let cli = match parse(model, profiles, args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Bad flags exit 1 like every other input error (clap's own
            // default is 2); `--help` exits 0.
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let default_profile = profiles.first().copied().unwrap_or(bench::FLOAT_PROFILE);
    let asked = match &cli.command {
        Some(Command::Bench(args)) => args.profile.as_deref(),
        Some(Command::Smoke(args)) => args.profile.as_deref(),
        Some(Command::Train(args)) => args.options.profile.as_deref(),
        Some(Command::Eval(args)) => args.profile.as_deref(),
        None => cli.smoke.profile.as_deref(),
    };
    if let Err(e) = crate::layers::layout_from_env() {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    // Say so before any work (the builder would too, later).
    if let Some(name) = asked.filter(|name| !profiles.contains(name)) {
        let unknown = UnknownProfile {
            name: name.to_owned(),
            known: profiles.iter().map(|p| p.to_string()).collect(),
        };
        eprintln!("error: {unknown}");
        return ExitCode::from(1);
    }
    let result = match cli.command {
        Some(Command::Train(args)) => match train(meta, &build, *args) {
            Ok(Outcome::Finished) => Ok(()),
            Ok(Outcome::Interrupted) => return ExitCode::from(INTERRUPTED),
            Err(e) => Err(e),
        },
        Some(Command::Eval(args)) => eval_command(meta, &build, args),
        Some(Command::Bench(args)) => bench_command(model, default_profile, &build, args),
        Some(Command::Smoke(args)) => smoke_command(model, default_profile, &build, args),
        None => smoke_command(model, default_profile, &build, cli.smoke),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

fn parse<I, T>(model: &str, profiles: &[&str], args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let about = format!(
        "Model `{model}` generated by qatc: training, evaluation, a smoke check (default) or a float-vs-QAT benchmark. Profiles: {}.",
        profiles.join(", ")
    );
    let mut command = Cli::command()
        .name(format!("qatc-model-{model}"))
        .about(about);
    let matches = command.try_get_matches_from_mut(args)?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
}

fn smoke_command<M, F>(
    model_name: &str,
    default_profile: &str,
    build: &F,
    args: SmokeArgs,
) -> Result<(), String>
where
    M: QatModel,
    F: Fn(&nn::Path, &str) -> Result<M, UnknownProfile>,
{
    let profile = args.profile.as_deref().unwrap_or(default_profile);
    let device = parse_device(&args.device)?;
    let threads = bench::configure_threads()?;
    let vs = nn::VarStore::new(device);
    let model = build(&vs.root(), profile).map_err(|e| e.to_string())?;
    let loss = smoke_step(&model, &vs, SMOKE_BATCH);
    let [c, h, w] = model.input_shape();
    let x = Tensor::zeros([1, c, h, w], (Kind::Float, device));
    let logits = tch::no_grad(|| model.forward_t(&x, false)).size();
    let params: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    println!(
        "{model_name} (profile {profile}) on {}, {}: {params} parameters, smoke-step loss {loss:.4}, eval logits {logits:?}",
        device_name(device),
        short_threads(threads),
    );
    Ok(())
}

fn bench_command<M, F>(
    model_name: &str,
    default_profile: &str,
    build: &F,
    args: BenchArgs,
) -> Result<(), String>
where
    M: QatModel,
    F: Fn(&nn::Path, &str) -> Result<M, UnknownProfile>,
{
    let profile = args.profile.as_deref().unwrap_or(default_profile);
    let device = parse_device(&args.device)?;
    let threads = bench::configure_threads()?;
    let config = BenchConfig {
        batch_size: args.batch_size,
        steps: args.steps as usize,
        warmup: args.warmup as usize,
        device,
        seed: args.seed,
    };
    if !args.json {
        eprintln!(
            "{model_name}: timing float and {profile} on {} with {threads}, {} layout, batch {}, {} steps after {} warm-up...",
            device_name(device),
            crate::layers::layout(),
            config.batch_size,
            config.steps,
            config.warmup
        );
    }
    let report = bench::compare(build, profile, &config).map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", report_json(&report, threads));
    } else {
        print!("{}", report_table(&report, threads));
    }
    Ok(())
}

fn short_threads(threads: Threads) -> String {
    let plural = if threads.count == 1 { "" } else { "s" };
    format!("{} torch thread{plural}", threads.count)
}

/// The human-readable report of `bench`.
fn report_table(report: &BenchReport, threads: Threads) -> String {
    let c = &report.config;
    let mut out = format!(
        "{} on {}, {threads}, batch {}, median of {} steps after {} warm-up\n",
        report.model,
        device_name(report.device),
        c.batch_size,
        c.steps,
        c.warmup
    );
    let width = [&report.float, &report.qat]
        .iter()
        .map(|p| p.profile.len())
        .max()
        .unwrap_or(0)
        .max("profile".len());
    let _ = writeln!(
        out,
        "{:<width$}  {:>9}  {:>14}  {:>11}  {:>13}  {:>10}",
        "profile", "params", "train ms/step", "train img/s", "eval ms/step", "eval img/s"
    );
    for p in [&report.float, &report.qat] {
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>14.1}  {:>11.1}  {:>13.1}  {:>10.1}",
            p.profile,
            p.params,
            p.train.ms_per_step,
            p.train.images_per_s,
            p.eval.ms_per_step,
            p.eval.images_per_s
        );
    }
    let _ = writeln!(
        out,
        "QAT/float step time: train {:.2}x, eval {:.2}x",
        report.train_ratio(),
        report.eval_ratio()
    );
    out
}

/// The `--json` report of `bench`: one object, keys in the module doc.
fn report_json(report: &BenchReport, threads: Threads) -> String {
    let c = &report.config;
    let source = match threads.source {
        ThreadSource::Cores => "cores",
        ThreadSource::Env => "env",
    };
    format!(
        "{{\"model\":{},\"device\":{},\"threads\":{},\"threads_source\":\"{source}\",\"batch_size\":{},\"steps\":{},\"warmup\":{},\"seed\":{},\"float\":{},\"qat\":{},\"train_ratio\":{},\"eval_ratio\":{}}}",
        json_string(&report.model),
        json_string(&device_name(report.device)),
        report.threads,
        c.batch_size,
        c.steps,
        c.warmup,
        c.seed,
        profile_json(&report.float),
        profile_json(&report.qat),
        json_number(report.train_ratio()),
        json_number(report.eval_ratio()),
    )
}

fn profile_json(p: &ProfileBench) -> String {
    format!(
        "{{\"profile\":{},\"params\":{},\"train_ms_per_step\":{},\"train_min_ms\":{},\"train_images_per_s\":{},\"eval_ms_per_step\":{},\"eval_min_ms\":{},\"eval_images_per_s\":{},\"last_loss\":{}}}",
        json_string(&p.profile),
        p.params,
        json_number(p.train.ms_per_step),
        json_number(p.train.min_ms),
        json_number(p.train.images_per_s),
        json_number(p.eval.ms_per_step),
        json_number(p.eval.min_ms),
        json_number(p.eval.images_per_s),
        json_number(p.last_loss),
    )
}

/// A JSON number (`null` where JSON has none: NaN, infinities).
fn json_number(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ch if u32::from(ch) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(ch));
            }
            ch => out.push(ch),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::tests::tiny;
    use crate::bench::Timing;
    use tch::Device;

    const PROFILES: [&str; 2] = ["w4a4", "float"];
    const META: ModelMeta = ModelMeta {
        name: "tiny",
        spec: "tiny.qspec",
        spec_hash: "0123",
        profiles: &PROFILES,
    };

    fn run_args(args: &[&str]) -> ExitCode {
        let argv = std::iter::once("qatc-model-tiny").chain(args.iter().copied());
        run_with_args(&META, tiny, argv)
    }

    #[test]
    fn parses_subcommands_and_defaults() {
        let cli = parse("tiny", &PROFILES, ["x"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.smoke.profile, None);
        assert_eq!(cli.smoke.device, "auto");
        let cli = parse("tiny", &PROFILES, ["x", "--profile", "float"]).unwrap();
        assert_eq!(cli.smoke.profile.as_deref(), Some("float"));
        let cli = parse("tiny", &PROFILES, ["x", "bench"]).unwrap();
        let Some(Command::Bench(args)) = cli.command else {
            panic!("not bench")
        };
        assert_eq!(
            (args.batch_size, args.steps, args.warmup, args.seed),
            (128, 10, 2, 0)
        );
        assert!(!args.json && args.profile.is_none() && args.device == "auto");
        let cli = parse(
            "tiny",
            &PROFILES,
            [
                "x",
                "bench",
                "--profile",
                "w4a4",
                "--batch-size",
                "3",
                "--steps",
                "2",
                "--warmup",
                "0",
                "--device",
                "cpu",
                "--json",
            ],
        )
        .unwrap();
        let Some(Command::Bench(args)) = cli.command else {
            panic!("not bench")
        };
        assert_eq!((args.batch_size, args.steps, args.warmup), (3, 2, 0));
        assert!(args.json);
    }

    #[test]
    fn bad_flags_are_errors() {
        for args in [
            &["bench", "--batch-size", "0"][..],
            &["bench", "--batch-size", "x"],
            &["bench", "--steps", "0"],
            &["bench", "--frobnicate"],
            &["--profile"],
            &["train", "--epochs", "x"],
            &["train", "--schedule", "weekly"],
            &["eval"],
            &["--profile", "w4a4", "bench"],
        ] {
            let argv = std::iter::once("x").chain(args.iter().copied());
            let err = parse("tiny", &PROFILES, argv).unwrap_err();
            assert!(err.use_stderr(), "{args:?}");
            assert_eq!(run_args(args), ExitCode::from(1), "{args:?}");
        }
        // Parsed, then refused before any work.
        for args in [
            &["train", "--lr=-1"][..],
            &["train", "--profile", "w9"],
            &[
                "train",
                "--data",
                "/nonexistent/data",
                "--out",
                "/nonexistent/run",
            ],
            &["eval", "--checkpoint", "/nonexistent.safetensors"],
        ] {
            assert_eq!(run_args(args), ExitCode::from(1), "{args:?}");
        }
        assert_eq!(run_args(&["--help"]), ExitCode::SUCCESS);
        let help = parse("tiny", &PROFILES, ["x", "--help"])
            .unwrap_err()
            .to_string();
        assert!(help.contains("Profiles: w4a4, float"), "{help}");
    }

    #[test]
    fn runs_smoke_and_bench() {
        assert_eq!(run_args(&[]), ExitCode::SUCCESS);
        assert_eq!(
            run_args(&["smoke", "--profile", "float", "--device", "cpu"]),
            ExitCode::SUCCESS
        );
        let bench = [
            "bench",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--warmup",
            "0",
        ];
        assert_eq!(run_args(&bench), ExitCode::SUCCESS);
        let json = [&bench[..], &["--json", "--device", "cpu"]].concat();
        assert_eq!(run_args(&json), ExitCode::SUCCESS);
    }

    #[test]
    fn unknown_profiles_and_devices_exit_1() {
        assert_eq!(run_args(&["--profile", "w2a2"]), ExitCode::from(1));
        assert_eq!(
            run_args(&["bench", "--profile", "w2a2", "--steps", "1"]),
            ExitCode::from(1)
        );
        assert_eq!(run_args(&["--device", "gpu"]), ExitCode::from(1));
        assert_eq!(
            run_args(&["bench", "--device", "cuda:99", "--steps", "1"]),
            ExitCode::from(1)
        );
    }

    fn report() -> BenchReport {
        let timing = |ms: f64| Timing {
            ms_per_step: ms,
            min_ms: ms - 1.0,
            images_per_s: 128.0 / (ms / 1e3),
        };
        let profile = |name: &str, train: f64, loss: f64| ProfileBench {
            profile: name.into(),
            params: 1000,
            train: timing(train),
            eval: timing(train / 4.0),
            last_loss: loss,
        };
        BenchReport {
            model: "tiny \"net\"".into(),
            device: Device::Cpu,
            threads: 2,
            config: BenchConfig::default(),
            float: profile("float", 100.0, 2.3),
            qat: profile("w4a4", 125.0, f64::NAN),
        }
    }

    #[test]
    fn json_has_the_documented_keys() {
        let threads = Threads {
            count: 2,
            source: ThreadSource::Cores,
        };
        let json: serde_json::Value =
            serde_json::from_str(&report_json(&report(), threads)).expect("valid JSON");
        assert_eq!(json["model"], "tiny \"net\"");
        assert_eq!(json["device"], "cpu");
        assert_eq!(json["threads"], 2);
        assert_eq!(json["threads_source"], "cores");
        assert_eq!(json["batch_size"], 128);
        assert_eq!(json["steps"], 10);
        assert_eq!(json["warmup"], 2);
        assert_eq!(json["seed"], 0);
        assert_eq!(json["train_ratio"], 1.25);
        assert_eq!(json["eval_ratio"], 1.25);
        assert_eq!(json["float"]["profile"], "float");
        assert_eq!(json["qat"]["profile"], "w4a4");
        assert_eq!(json["qat"]["last_loss"], serde_json::Value::Null);
        for key in [
            "params",
            "train_ms_per_step",
            "train_min_ms",
            "train_images_per_s",
            "eval_ms_per_step",
            "eval_min_ms",
            "eval_images_per_s",
        ] {
            assert!(json["float"][key].is_number(), "{key}");
            assert!(json["qat"][key].is_number(), "{key}");
        }
        assert_eq!(json["float"]["train_images_per_s"], 1280.0);
        assert_eq!(json["float"].as_object().unwrap().len(), 9);
        assert_eq!(json.as_object().unwrap().len(), 12);
    }

    #[test]
    fn table_shows_both_profiles_and_the_ratios() {
        let threads = Threads {
            count: 2,
            source: ThreadSource::Env,
        };
        let table = report_table(&report(), threads);
        assert!(
            table.starts_with(
                "tiny \"net\" on cpu, 2 threads (from QATC_THREADS), batch 128, median of 10 steps after 2 warm-up\n"
            ),
            "{table}"
        );
        assert!(table.contains("\nfloat "), "{table}");
        assert!(table.contains("\nw4a4 "), "{table}");
        assert!(table.contains("1280.0"), "{table}");
        assert!(
            table.ends_with("QAT/float step time: train 1.25x, eval 1.25x\n"),
            "{table}"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        assert_eq!(json_number(f64::INFINITY), "null");
        assert_eq!(json_number(1.5), "1.5");
    }
}
