//! The `qatc` command line. Thin: every command calls into the library and
//! turns its result into output and an exit status (0 ok, 1 bad input).

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use qatc::driver::{self, Source, Syntax};
use qatc::summary;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "qatc",
    version,
    about = "A compiler for quantization-aware training"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a spec (every profile) and report all problems.
    Check {
        spec: PathBuf,
        /// Print the IR of the chosen profile (default: the first one).
        #[arg(long)]
        dump_ir: bool,
        #[arg(long)]
        profile: Option<String>,
    },
    /// Per-layer table and totals: params, MACs, memory, BOPs.
    Summary {
        spec: PathBuf,
        #[arg(long)]
        profile: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Generate the Rust crate of a model (default: generated/<model>).
    Build {
        spec: PathBuf,
        /// Output directory of the crate.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Write nothing; exit 1, listing the files, when the crate on disk
        /// differs from what the spec generates now (for CI).
        #[arg(long)]
        check: bool,
        /// Write nothing; print a unified diff of what a build would change
        /// (coloured on a terminal).
        #[arg(long)]
        diff: bool,
    },
    /// Map a checkpoint of another code base (e.g. the seed's PyTorch state
    /// dict, as safetensors) onto the model's own names, as the spec's
    /// `import FORMAT` section says. Without -o: check it and list the mapping.
    Import {
        spec: PathBuf,
        /// The checkpoint to read (safetensors).
        #[arg(long)]
        from: PathBuf,
        /// Which `import` section of the spec to use.
        #[arg(long, default_value = "seed")]
        format: String,
        #[arg(long)]
        profile: Option<String>,
        /// Read only entries starting with this prefix (e.g. `state.`), without it.
        #[arg(long, default_value = "")]
        strip_prefix: String,
        /// Where to write the converted checkpoint (safetensors).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Training and evaluation images/s of the model's generated crate,
    /// float profile against a QAT profile, and their ratio: runs
    /// `cargo run --release -p qatc-model-<model> -- bench` in the
    /// workspace (through `./dev qatc`, which sets up libtorch).
    Bench {
        spec: PathBuf,
        /// QAT profile to compare with `float` [default: the spec's first].
        #[arg(long)]
        profile: Option<String>,
        /// Images per step [default: 128].
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        batch_size: Option<i64>,
        /// auto, cpu, cuda or cuda:N [default: auto].
        #[arg(long)]
        device: Option<String>,
        /// Timed steps per profile [default: 10].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        steps: Option<u32>,
        /// Untimed steps first [default: 2].
        #[arg(long)]
        warmup: Option<u32>,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Train the spec's model (QAT under a profile): runs `train` of its
    /// generated crate (regenerated if stale, built with cargo), which takes
    /// the flags after the spec: `qatc train SPEC --help` lists them
    /// (--data, --profile, --epochs, --batch-size, --lr, --schedule,
    /// --optimizer, --out, --resume, --init, --config ...).
    #[command(disable_help_flag = true)]
    Train {
        spec: PathBuf,
        /// Flags of the model's `train` (see `qatc train SPEC --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Evaluate a checkpoint of the spec's model: top-1, top-5, per-class
    /// accuracy, confusion matrix (`qatc eval SPEC --checkpoint F [--data D]
    /// [--format table|json]`; `qatc eval SPEC --help` lists the flags).
    #[command(disable_help_flag = true)]
    Eval {
        spec: PathBuf,
        /// Flags of the model's `eval` (see `qatc eval SPEC --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Integer-only inference of a trained checkpoint: accuracy and the
    /// per-layer accumulator report (`qatc int SPEC --checkpoint F --data D
    /// [--rounding trunc|nearest] [--acc-bits N --overflow saturate|wrap]`),
    /// `qatc int sweep` over fixed-point formats, `qatc int bench`.
    Int(Box<qatc::int::cli::IntCommand>),
    /// Write a checkpoint's integer plan for hardware: integer weights,
    /// multipliers, shifts, clamp ranges (`--format c|npz|json -o DIR`).
    Export(Box<qatc::int::cli::ExportArgs>),
    /// Convert a spec between .qspec and YAML (printed to stdout or -o FILE).
    Fmt {
        spec: PathBuf,
        #[arg(long, value_enum)]
        to: Option<To>,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Data sets: `qatc data download cifar10 [DIR]`.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Plot a training run: loss, accuracy, learning rate and every
    /// clipping value over the epochs, as one PNG (prints the path written).
    Plot {
        /// A run directory written by `qatc train`.
        run_dir: PathBuf,
        /// The PNG to write [default: RUN_DIR/metrics.png].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Compare training runs: a table on stdout and one PNG of test top-1
    /// and train loss over the epochs of every run.
    Compare {
        /// Run directories written by `qatc train`.
        #[arg(required = true)]
        run_dirs: Vec<PathBuf>,
        /// The PNG to write [default: compare.png].
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum To {
    Qspec,
    Yaml,
}

fn main() -> ExitCode {
    // Bad flags are bad input: exit status 1 like every other input error
    // (clap's own default is 2); `--help` and `--version` still exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn read(spec: &Path) -> anyhow::Result<Source> {
    Source::read(spec).map_err(anyhow::Error::msg)
}

/// Prints diagnostics and returns exit status 1.
fn fail(src: &Source, diags: &qatc::diag::Diagnostics) -> ExitCode {
    diags.emit_stderr(&src.name, &src.text);
    let n = diags.error_count();
    eprintln!(
        "error: {} failed its checks with {n} error{}",
        src.name,
        if n == 1 { "" } else { "s" }
    );
    ExitCode::from(1)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check {
            spec,
            dump_ir,
            profile,
        } => {
            let src = read(&spec)?;
            let (model, checked, graphs) = match driver::check_all(&src) {
                Ok(r) => r,
                Err(d) => return Ok(fail(&src, &d)),
            };
            if dump_ir || profile.is_some() {
                match driver::compile(&src, profile.as_deref()) {
                    Ok(g) if dump_ir => print!("{}", g.dump()),
                    Ok(_) => {}
                    Err(d) => return Ok(fail(&src, &d)),
                }
            }
            let nodes: usize = graphs.first().map(|g| g.nodes.len()).unwrap_or(0);
            eprintln!(
                "ok: {} (model {}, {} slots, {} nodes, profiles: {})",
                src.name,
                model.name.name,
                checked.slots.len(),
                nodes,
                checked.profile_names().join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Summary {
            spec,
            profile,
            format,
        } => {
            let src = read(&spec)?;
            let g = match driver::compile(&src, profile.as_deref()) {
                Ok(g) => g,
                Err(d) => return Ok(fail(&src, &d)),
            };
            let s = summary::summarize(&g);
            match format {
                Format::Table => print!("{}", s.table()),
                Format::Json => println!("{}", serde_json::to_string_pretty(&s)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Build {
            spec,
            output,
            check,
            diff,
        } => {
            let src = read(&spec)?;
            let (model, checked, graphs) = match driver::check_all(&src) {
                Ok(r) => r,
                Err(d) => return Ok(fail(&src, &d)),
            };
            let out = output.unwrap_or_else(|| PathBuf::from("generated").join(&model.name.name));
            let runtime = runtime_path(&out)?;
            let spec_shown = spec.to_string_lossy().replace('\\', "/");
            let krate = qatc::codegen::generate(&model, &checked, &graphs, &spec_shown, &runtime);
            let changes = qatc::build::compare(&out, &krate)
                .with_context(|| format!("cannot read the crate in `{}`", out.display()))?;
            let changed: Vec<&qatc::build::FileChange> =
                changes.iter().filter(|c| c.changed()).collect();
            let shown = out.to_string_lossy().replace('\\', "/");
            if check || diff {
                if diff {
                    use std::io::IsTerminal;
                    let color = std::io::stdout().is_terminal();
                    for c in &changed {
                        print!("{}", c.unified(&shown, color));
                    }
                }
                if changed.is_empty() {
                    eprintln!("up to date: {shown} is what {} generates", src.name);
                    return Ok(ExitCode::SUCCESS);
                }
                let list: Vec<String> = changed.iter().map(|c| c.describe()).collect();
                eprintln!(
                    "{} {shown}: {} (run `qatc build {}` to update)",
                    if check { "stale:" } else { "would change" },
                    list.join(", "),
                    src.name
                );
                return Ok(if check {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                });
            }
            std::fs::create_dir_all(out.join("src"))
                .with_context(|| format!("cannot create `{}`", out.display()))?;
            for c in &changed {
                let path = out.join(c.file);
                qatc_data::write_atomic(&path, c.new.as_bytes())
                    .with_context(|| format!("cannot write `{}`", path.display()))?;
            }
            let what = if changed.is_empty() {
                "no file changed".to_string()
            } else {
                let list: Vec<String> = changed.iter().map(|c| c.describe()).collect();
                format!("changed: {}", list.join(", "))
            };
            eprintln!(
                "built: {} -> {} (crate {}); {what}",
                src.name,
                out.display(),
                krate.package
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Import {
            spec,
            from,
            format,
            profile,
            strip_prefix,
            output,
        } => {
            let src = read(&spec)?;
            let model = match driver::parse(&src) {
                Ok(m) => m,
                Err(d) => return Ok(fail(&src, &d)),
            };
            let g = match driver::compile(&src, profile.as_deref()) {
                Ok(g) => g,
                Err(d) => return Ok(fail(&src, &d)),
            };
            let plan = match qatc::import::plan(&model, &g, &format) {
                Ok(p) => p,
                Err(d) => return Ok(fail(&src, &d)),
            };
            let bytes = std::fs::read(&from)
                .with_context(|| format!("cannot read `{}`", from.display()))?;
            // A checkpoint qatc wrote must match its digests (`convert`
            // checks again, for its other callers).
            if let Err(c) = qatc_integrity::verify(&bytes) {
                eprintln!(
                    "error: {}",
                    qatc_integrity::corrupt_message(&from.display().to_string(), &c)
                );
                return Ok(ExitCode::from(1));
            }
            match qatc::import::convert(&plan, &bytes, &strip_prefix) {
                Ok(converted) => {
                    if let Some(out) = output {
                        qatc_data::write_atomic(&out, &converted)
                            .with_context(|| format!("cannot write `{}`", out.display()))?;
                        eprintln!(
                            "imported: {} tensors from {} -> {}",
                            plan.entries.len(),
                            from.display(),
                            out.display()
                        );
                    } else {
                        for e in &plan.entries {
                            println!("{:<40} <- {}{}", e.ours, strip_prefix, e.theirs);
                        }
                        eprintln!(
                            "ok: {} maps onto model {} (profile {}), {} tensors",
                            from.display(),
                            g.model,
                            g.profile,
                            plan.entries.len()
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(problems) => {
                    eprint!("{}", problems.report());
                    eprintln!(
                        "error: {} does not fit model {} (profile {}) as `import {format}` maps it",
                        from.display(),
                        g.model,
                        g.profile
                    );
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Bench {
            spec,
            profile,
            batch_size,
            device,
            steps,
            warmup,
            json,
        } => {
            let mut args: Vec<String> = Vec::new();
            let options = [
                ("--profile", profile.clone()),
                ("--batch-size", batch_size.map(|n| n.to_string())),
                ("--device", device),
                ("--steps", steps.map(|n| n.to_string())),
                ("--warmup", warmup.map(|n| n.to_string())),
            ];
            for (flag, value) in options {
                if let Some(value) = value {
                    args.extend([flag.to_string(), value]);
                }
            }
            if json {
                args.push("--json".into());
            }
            run_model(&spec, "bench", profile.as_deref(), &args)
        }
        Command::Train { spec, args } => {
            let profile = flag_value(&args, "--profile");
            run_model(&spec, "train", profile.as_deref(), &args)
        }
        Command::Eval { spec, args } => {
            let profile = flag_value(&args, "--profile");
            if args.iter().any(|a| a == "--int") {
                eval_int(&spec, profile.as_deref(), &args)
            } else {
                run_model(&spec, "eval", profile.as_deref(), &args)
            }
        }
        Command::Int(cmd) => qatc::int::cli::run_int(cmd, &libtorch_eval),
        Command::Export(args) => qatc::int::cli::run_export(args),
        Command::Fmt { spec, to, output } => {
            let src = read(&spec)?;
            let model = match driver::parse(&src) {
                Ok(m) => m,
                Err(d) => return Ok(fail(&src, &d)),
            };
            let to = to.unwrap_or(match src.syntax {
                Syntax::Qspec => To::Qspec,
                Syntax::Yaml => To::Yaml,
            });
            let text = match to {
                To::Qspec => qatc::syntax::print_qspec(&model),
                To::Yaml => qatc::syntax::yaml::print_yaml(&model),
            };
            match output {
                Some(path) => qatc_data::write_atomic(&path, text.as_bytes())
                    .with_context(|| format!("cannot write `{}`", path.display()))?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Data {
            command:
                DataCommand::Download {
                    dataset: DataSet::Cifar10,
                    dir,
                    url,
                    md5,
                },
        } => data_download(dir, url, md5),
        Command::Plot { run_dir, output } => plot(&run_dir, output),
        Command::Compare {
            run_dirs,
            output,
            format,
        } => compare(&run_dirs, output, format),
    }
}

/// The runtime crate as a path relative to `out` (where the generated crate
/// goes), so generated files are the same on every machine.
/// `path` made absolute with its links resolved, also where it (or some of
/// its last components) does not exist yet.
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    match path.canonicalize() {
        Ok(p) => Ok(p),
        Err(e) => {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(e);
            };
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok(resolve(parent)?.join(name))
        }
    }
}

fn runtime_path(out: &Path) -> anyhow::Result<String> {
    let runtime = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime");
    let runtime = runtime
        .canonicalize()
        .with_context(|| format!("runtime crate not found at `{}`", runtime.display()))?;
    let out = resolve(out).with_context(|| format!("cannot resolve `{}`", out.display()))?;
    let common = runtime
        .components()
        .zip(out.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut rel = PathBuf::new();
    for _ in out.components().skip(common) {
        rel.push("..");
    }
    for c in runtime.components().skip(common) {
        rel.push(c);
    }
    Ok(rel.to_string_lossy().replace('\\', "/"))
}

/// The value of `--flag VALUE` or `--flag=VALUE` in pass-through arguments.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&prefix).map(str::to_string)
        }
    })
}

/// `qatc bench` / `train` / `eval`: checks the spec (and that it has
/// `profile`), brings its generated crate in the workspace up to date
/// (generated if missing, regenerated if stale; a crate of another spec
/// under the same model name is an error, never overwritten), then runs
/// `cargo run --release -p <crate> -- <subcommand> <args>` in the workspace.
/// On Unix qatc *becomes* that process (exec), so Ctrl-C, the exit status
/// and the terminal go straight to the model binary.
fn run_model(
    spec: &Path,
    subcommand: &str,
    profile: Option<&str>,
    args: &[String],
) -> anyhow::Result<ExitCode> {
    let (mut command, cargo) = match model_command(spec, subcommand, profile, args)? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = command.exec();
        Err(err).with_context(|| format!("cannot run `{}`", cargo.to_string_lossy()))
    }
    #[cfg(not(unix))]
    {
        let status = command
            .status()
            .with_context(|| format!("cannot run `{}`", cargo.to_string_lossy()))?;
        Ok(match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => ExitCode::from(1),
        })
    }
}

/// Runs the model crate's `subcommand` (as [`run_model`], with `env` set and
/// its stderr on the terminal) for the JSON report it prints on stdout.
/// `Ok(Err(code))`: the spec did not check or the model failed (either said
/// why already).
fn model_json(
    spec: &Path,
    subcommand: &str,
    profile: Option<&str>,
    args: &[String],
    env: &[(&str, &str)],
) -> anyhow::Result<Result<serde_json::Value, ExitCode>> {
    let (mut command, cargo) = match model_command(spec, subcommand, profile, args)? {
        Ok(c) => c,
        Err(code) => return Ok(Err(code)),
    };
    let output = command
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run `{}`", cargo.to_string_lossy()))?;
    if !output.status.success() {
        return Ok(Err(ExitCode::from(1)));
    }
    serde_json::from_slice(&output.stdout)
        .map(Ok)
        .with_context(|| format!("the model's {subcommand} printed no JSON report"))
}

/// `qatc int bench --libtorch`: libtorch's fake-quant evaluation of the
/// spec's model under `profile` on one thread, in images per second: the
/// model crate's `bench --json` (as `QATC_THREADS=1 qatc bench`), its
/// `qat.eval_images_per_s`.
fn libtorch_eval(spec: &Path, profile: &str) -> anyhow::Result<f64> {
    let args: Vec<String> = ["--profile", profile, "--steps", "5", "--json"]
        .map(String::from)
        .to_vec();
    eprintln!("timing libtorch's fake-quant evaluation on 1 thread (the model crate's bench)...");
    let report = match model_json(
        spec,
        "bench",
        Some(profile),
        &args,
        &[("QATC_THREADS", "1")],
    )? {
        Ok(report) => report,
        Err(_) => anyhow::bail!(
            "the model crate's bench failed (said above; libtorch set up? run through `./dev qatc`)"
        ),
    };
    report["qat"]["eval_images_per_s"]
        .as_f64()
        .context("the model crate's bench report has no `qat.eval_images_per_s`")
}

/// `qatc eval SPEC --int [--format table|json] [--fixed CLASS=B,I]...
/// [--saturate-constants] ...`: the fake-quant
/// evaluation of the model crate (its `eval`, all other flags passed on)
/// next to the integer-only engine on the same images, in both rounding
/// modes: accuracies, the agreement of their top-1 predictions with
/// fake-quant, and the largest logit difference.
fn eval_int(spec: &Path, profile: Option<&str>, args: &[String]) -> anyhow::Result<ExitCode> {
    use qatc::int::cli::{load_plan, DataImages, PlanArgs, RoundingArg};
    use qatc::int::{evaluate, EvalOptions};
    let json = flag_value(args, "--format").as_deref() == Some("json");
    // The integer plan's own flags (`--fixed CLASS=B,I`, repeatable, and
    // `--saturate-constants`) stay here; the rest goes to the model's eval.
    let mut passed: Vec<String> = Vec::new();
    let mut fixed: Vec<String> = Vec::new();
    let mut saturate_constants = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--format" {
            it.next();
        } else if a == "--fixed" {
            match it.next() {
                Some(v) => fixed.push(v.clone()),
                None => anyhow::bail!("--fixed needs a value: CLASS=BITS,INT_BITS"),
            }
        } else if let Some(v) = a.strip_prefix("--fixed=") {
            fixed.push(v.to_string());
        } else if a == "--saturate-constants" {
            saturate_constants = true;
        } else if a == "--rounding" || a.starts_with("--rounding=") {
            anyhow::bail!(
                "`qatc eval --int` reports both rounding modes (trunc and nearest); \
                 --rounding picks one in `qatc int`"
            );
        } else if a != "--int" && !a.starts_with("--format=") {
            passed.push(a.clone());
        }
    }
    let Some(checkpoint) = flag_value(args, "--checkpoint") else {
        anyhow::bail!("--checkpoint is required: qatc eval SPEC --checkpoint F --int");
    };
    let tmp = std::env::temp_dir().join(format!("qatc-eval-int-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create `{}`", tmp.display()))?;
    let logits_path = tmp.join("logits.csv");
    passed.extend([
        "--format".to_string(),
        "json".to_string(),
        "--logits".to_string(),
        logits_path.to_string_lossy().into_owned(),
    ]);
    let fake = match model_json(spec, "eval", profile, &passed, &[]) {
        Ok(Ok(report)) => report,
        failed => {
            let _ = std::fs::remove_dir_all(&tmp);
            return failed.map(|f| f.err().unwrap_or(ExitCode::FAILURE));
        }
    };
    let logits_text = std::fs::read_to_string(&logits_path);
    let _ = std::fs::remove_dir_all(&tmp);
    let fake_logits: Vec<Vec<f32>> = logits_text
        .context("the model's eval wrote no logits")?
        .lines()
        .map(|l| {
            l.split(',')
                .map(|v| v.parse::<f32>().unwrap_or(f32::NAN))
                .collect()
        })
        .collect();
    let fake_top1 = fake["top1"].as_f64().unwrap_or(f64::NAN);
    let data = fake["data"].as_str().unwrap_or("digits").to_string();
    let profile = fake["profile"].as_str().unwrap_or_default().to_string();
    let images = fake["images"].as_u64().unwrap_or(0) as usize;
    let split = qatc_data::open(&data).with_context(|| format!("cannot open data `{data}`"))?;
    let ds = match fake["split"].as_str() {
        Some("train") => split.train,
        _ => split.test,
    }
    .spread(images);
    if ds.len() != fake_logits.len() {
        anyhow::bail!(
            "the model evaluated {} images but {} logit rows came back",
            ds.len(),
            fake_logits.len()
        );
    }
    let mut rows = Vec::new();
    for rounding in [RoundingArg::Trunc, RoundingArg::Nearest] {
        let plan_args = PlanArgs {
            spec: Some(spec.to_path_buf()),
            profile: Some(profile.clone()),
            checkpoint: Some(PathBuf::from(&checkpoint)),
            import_format: None,
            strip_prefix: String::new(),
            rounding,
            fixed: fixed.clone(),
            saturate_constants,
        };
        let plan = load_plan(&plan_args, None)?;
        let report = evaluate(
            &plan,
            &DataImages {
                ds: &ds,
                n: ds.len(),
            },
            EvalOptions {
                sim: Default::default(),
                threads: 0,
                keep_logits: true,
            },
        )?;
        let agree = qatc::int::agreement(&report, &fake_logits);
        let name = match rounding {
            RoundingArg::Trunc => "trunc",
            RoundingArg::Nearest => "nearest",
        };
        rows.push(serde_json::json!({
            "rounding": name,
            "top1": report.top1,
            "agreement": 100.0 * agree.same_top1,
            "max_logit_diff": agree.max_logit_diff,
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": fake["model"], "profile": profile, "checkpoint": checkpoint,
                "data": data, "split": fake["split"], "images": ds.len(),
                "fake_quant_top1": fake_top1, "int": rows,
            })
        );
    } else {
        println!(
            "{} (profile {profile}) on {data} {} ({} images), checkpoint {checkpoint}",
            fake["model"].as_str().unwrap_or("?"),
            fake["split"].as_str().unwrap_or("test"),
            ds.len()
        );
        println!(
            "{:<22} {:>8} {:>16} {:>15}",
            "", "top-1 %", "same top-1 as FQ", "max |logit diff|"
        );
        println!(
            "{:<22} {:>8.2} {:>16} {:>15}",
            "fake-quant (libtorch)", fake_top1, "-", "-"
        );
        for r in &rows {
            println!(
                "{:<22} {:>8.2} {:>15.2}% {:>15.4}",
                format!("integer, {}", r["rounding"].as_str().unwrap_or("?")),
                r["top1"].as_f64().unwrap_or(f64::NAN),
                r["agreement"].as_f64().unwrap_or(f64::NAN),
                r["max_logit_diff"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The cargo command that runs `subcommand` of the spec's model crate (see
/// [`run_model`]), or the exit code of a spec that failed its checks.
fn model_command(
    spec: &Path,
    subcommand: &str,
    profile: Option<&str>,
    args: &[String],
) -> anyhow::Result<Result<(std::process::Command, std::ffi::OsString), ExitCode>> {
    let src = read(spec)?;
    let (model, checked, graphs) = match driver::check_all(&src) {
        Ok(r) => r,
        Err(d) => return Ok(Err(fail(&src, &d))),
    };
    let name = &model.name.name;
    let known = checked.profile_names();
    if let Some(profile) = profile {
        if !known.iter().any(|k| k == profile) {
            anyhow::bail!(
                "model `{name}` has no profile `{profile}`; known: {}",
                known.join(", ")
            );
        }
    }
    let root = workspace_root(spec)?;
    let dir = root.join("generated").join(name);
    let shown = spec.to_string_lossy().replace('\\', "/");
    // `qatc build` writes the spec's path as given into the headers: accept
    // the crate if it matches the spec as named here or relative to the
    // workspace root (as `./dev generate` names it).
    let mut labels = Vec::new();
    let relative = spec.canonicalize().ok().and_then(|p| {
        p.strip_prefix(&root)
            .ok()
            .map(|rel| rel.to_string_lossy().replace('\\', "/"))
    });
    labels.extend(relative.clone());
    if !labels.contains(&shown) {
        labels.push(shown.clone());
    }
    let files = |k: &qatc::codegen::Crate| {
        [
            ("Cargo.toml", k.cargo_toml.clone()),
            ("src/lib.rs", k.lib_rs.clone()),
            ("src/main.rs", k.main_rs.clone()),
        ]
    };
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create `{}`", dir.display()))?;
    let runtime = runtime_path(&dir)?;
    let crates: Vec<qatc::codegen::Crate> = labels
        .iter()
        .map(|label| qatc::codegen::generate(&model, &checked, &graphs, label, &runtime))
        .collect();
    let up_to_date = crates.iter().find(|k| {
        files(k).iter().all(|(file, text)| {
            std::fs::read_to_string(dir.join(file)).ok().as_deref() == Some(text)
        })
    });
    let package = match up_to_date {
        Some(k) => k.package.clone(),
        None => {
            let existing = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
            let ours = existing.is_empty()
                || labels
                    .iter()
                    .any(|l| existing.contains(&format!("generated by qatc from {l}\"")));
            if !ours {
                anyhow::bail!(
                    "`{}` holds the crate of another spec with a model named `{name}`: rename the model in {shown}, or remove that crate",
                    dir.display()
                );
            }
            let k = &crates[0];
            for (file, text) in files(k) {
                let path = dir.join(file);
                qatc_data::write_atomic(&path, text.as_bytes())
                    .with_context(|| format!("cannot write `{}`", path.display()))?;
            }
            eprintln!(
                "qatc: {} {} from {}",
                if existing.is_empty() {
                    "generated"
                } else {
                    "regenerated (it was stale)"
                },
                dir.display(),
                labels[0]
            );
            k.package.clone()
        }
    };
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_none() {
        anyhow::bail!(
            "libtorch is not set up in this environment (LIBTORCH_USE_PYTORCH is unset): run qatc as `./dev qatc {subcommand} ...`, which sets it up so that `{package}` builds and runs"
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "qatc: cargo run --release -q -p {package} -- {subcommand} {} (in {})",
        args.join(" "),
        root.display()
    );
    let mut command = std::process::Command::new(&cargo);
    command
        .current_dir(&root)
        .args(["run", "--release", "-q", "-p", &package, "--", subcommand])
        .args(args);
    // OpenMP reads this when libtorch loads, so it is set here, before the
    // model process starts: see scripts/libtorch-env.sh.
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        command.env("OMP_WAIT_POLICY", "PASSIVE");
    }
    Ok(Ok((command, cargo)))
}

/// The workspace root for `spec`: the nearest directory holding a
/// `Cargo.toml` with a `[workspace]` table, above the spec or else above
/// the current directory.
fn workspace_root(spec: &Path) -> anyhow::Result<PathBuf> {
    let is_root = |dir: &Path| {
        std::fs::read_to_string(dir.join("Cargo.toml"))
            .map(|text| text.lines().any(|line| line.trim() == "[workspace]"))
            .unwrap_or(false)
    };
    let spec_dir = spec
        .canonicalize()
        .with_context(|| format!("cannot resolve `{}`", spec.display()))?
        .parent()
        .map(Path::to_path_buf);
    let cwd = std::env::current_dir().ok();
    for start in [spec_dir, cwd].into_iter().flatten() {
        if let Some(root) = start.ancestors().find(|dir| is_root(dir)) {
            return Ok(root.to_path_buf());
        }
    }
    anyhow::bail!(
        "no Cargo workspace (a Cargo.toml with [workspace]) above `{}` or the current directory: the generated crates live in one",
        spec.display()
    )
}

/// `qatc plot`: reads the run, renders it and writes the PNG atomically.
fn plot(run_dir: &Path, output: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let run = qatc::plot::read_run(run_dir)?;
    let png = qatc::plot::render_run(&run)?;
    let out = output.unwrap_or_else(|| run_dir.join("metrics.png"));
    qatc_data::write_atomic(&out, &png)
        .with_context(|| format!("cannot write `{}`", out.display()))?;
    println!("{}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// `qatc compare`: the table (or JSON) on stdout, the PNG to `output`.
fn compare(
    run_dirs: &[PathBuf],
    output: Option<PathBuf>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let runs = run_dirs
        .iter()
        .map(|dir| qatc::plot::read_run(dir))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = qatc::plot::summarize_runs(&runs);
    match format {
        Format::Table => print!("{}", qatc::plot::comparison_table(&rows)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
    }
    for run in runs.iter().filter(|r| r.epochs.is_empty()) {
        eprintln!(
            "note: `{}` has no finished epoch yet: left out of the plot",
            run.metrics_path().display()
        );
    }
    let labels: Vec<String> = rows.into_iter().map(|r| r.label).collect();
    let png = qatc::plot::render_comparison(&runs, &labels)?;
    let out = output.unwrap_or_else(|| PathBuf::from("compare.png"));
    qatc_data::write_atomic(&out, &png)
        .with_context(|| format!("cannot write `{}`", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
enum DataCommand {
    /// Download a data set, verify its checksum and unpack it into DIR
    /// (default: data/cifar10), all or nothing; progress on stderr.
    Download {
        dataset: DataSet,
        /// Where to put the files [default: data/cifar10].
        dir: Option<PathBuf>,
        /// Fetch from this URL instead (a mirror) [default: the official archive].
        #[arg(long)]
        url: Option<String>,
        /// The archive's expected MD5 [default: the official archive's].
        #[arg(long)]
        md5: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DataSet {
    /// CIFAR-10, binary version (170 MB).
    Cifar10,
}

/// `qatc data download cifar10`: see `qatc::download`.
fn data_download(
    dir: Option<PathBuf>,
    url: Option<String>,
    md5: Option<String>,
) -> anyhow::Result<ExitCode> {
    use qatc::download::{download_cifar10, Request, CIFAR10_DIR, CIFAR10_MD5, CIFAR10_URL};
    let req = Request {
        url: url.unwrap_or_else(|| CIFAR10_URL.into()),
        md5: md5.unwrap_or_else(|| CIFAR10_MD5.into()),
        dir: dir.unwrap_or_else(|| CIFAR10_DIR.into()),
    };
    let done = download_cifar10(&req, &mut std::io::stderr())?;
    let what = if done.already_there {
        "already there"
    } else {
        "unpacked"
    };
    println!(
        "{}: CIFAR-10 {what}, {} training and {} test images",
        req.dir.display(),
        done.train,
        done.test
    );
    Ok(ExitCode::SUCCESS)
}
