//! The `qatc` command line. Thin: every command calls into the library and
//! turns its result into output and an exit status (0 ok, 1 bad input).

use clap::{Parser, Subcommand, ValueEnum};
use qatc_cli::commands::{self, BenchArgs};
use qatc_cli::{download, eval_int, int_cli, model_crate, runs, Format, To};
use std::path::PathBuf;
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
    /// --optimizer, --out, --resume, --init, --config, --nproc, --sync-bn
    /// ...).
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
    Int(Box<int_cli::IntCommand>),
    /// Write a checkpoint's integer plan for hardware: integer weights,
    /// multipliers, shifts, clamp ranges (`--format c|npz|json -o DIR`).
    Export(Box<int_cli::ExportArgs>),
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

fn main() -> ExitCode {
    // Output into a closed pipe (`qatc summary ... | head`) ends the process
    // as it does every Unix tool, instead of a panic in `println!` (Rust
    // ignores SIGPIPE by default).
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default, before any
    // thread starts; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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

/// One library call per command.
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check {
            spec,
            dump_ir,
            profile,
        } => commands::check(&spec, dump_ir, profile.as_deref()),
        Command::Summary {
            spec,
            profile,
            format,
        } => commands::summary(&spec, profile.as_deref(), format),
        Command::Build {
            spec,
            output,
            check,
            diff,
        } => commands::build(&spec, output, check, diff),
        Command::Import {
            spec,
            from,
            format,
            profile,
            strip_prefix,
            output,
        } => commands::import(
            &spec,
            &from,
            &format,
            profile.as_deref(),
            &strip_prefix,
            output.as_deref(),
        ),
        Command::Bench {
            spec,
            profile,
            batch_size,
            device,
            steps,
            warmup,
            json,
        } => commands::bench(
            &spec,
            BenchArgs {
                profile,
                batch_size,
                device,
                steps,
                warmup,
                json,
            },
        ),
        Command::Train { spec, args } => {
            let profile = model_crate::flag_value(&args, "--profile");
            model_crate::run_model(&spec, "train", profile.as_deref(), &args)
        }
        Command::Eval { spec, args } => {
            let profile = model_crate::flag_value(&args, "--profile");
            if args.iter().any(|a| a == "--int") {
                eval_int::eval_int(&spec, profile.as_deref(), &args)
            } else {
                model_crate::run_model(&spec, "eval", profile.as_deref(), &args)
            }
        }
        Command::Int(cmd) => int_cli::run_int(cmd, &model_crate::libtorch_eval),
        Command::Export(args) => int_cli::run_export(args),
        Command::Fmt { spec, to, output } => commands::fmt(&spec, to, output.as_deref()),
        Command::Data {
            command:
                DataCommand::Download {
                    dataset: DataSet::Cifar10,
                    dir,
                    url,
                    md5,
                },
        } => download::data_download(dir, url, md5),
        Command::Plot { run_dir, output } => runs::plot(&run_dir, output),
        Command::Compare {
            run_dirs,
            output,
            format,
        } => runs::compare(&run_dirs, output, format),
    }
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
