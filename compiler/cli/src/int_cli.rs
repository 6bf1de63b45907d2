//! The command line of the integer pipeline: `qatc int`, `qatc int sweep`,
//! `qatc int bench` and `qatc export` (the binary's `main.rs` only forwards
//! to [`run_int`] and [`run_export`]).
//!
//! Input: parsed arguments (a spec, a profile, a checkpoint, a data set).
//! Output: reports on stdout (a table or JSON), files for `export`, an exit
//! status (0 ok, 1 bad input). This is the CLI layer: errors are `anyhow`
//! here and typed ([`IntError`](qatc_int::IntError)) below.

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use qatc::driver::{self, Source};
use qatc_int::engine::{self, OverflowMode, SimOptions};
use qatc_int::export::{self, ExportFormat, TestImages};
use qatc_int::fixed::{FixedFormat, Rounding};
use qatc_int::plan::{Formats, IntPlan, PlanOptions};
use qatc_int::{evaluate, evaluate_with, Checkpoint, EvalOptions, Images, IntReport};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// What a plan is built from.
#[derive(Args, Clone, Debug)]
pub struct PlanArgs {
    /// The model spec (.qspec or .yaml) [required].
    pub spec: Option<PathBuf>,
    /// Bit profile [default: the spec's first].
    #[arg(long)]
    pub profile: Option<String>,
    /// Trained checkpoint (safetensors in the model's variable names) [required].
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Read the checkpoint through the spec's `import FORMAT` section
    /// (e.g. `seed` for the seed's state dicts).
    #[arg(long = "import", value_name = "FORMAT")]
    pub import_format: Option<String>,
    /// With --import: only tensors with this prefix, removed first (`state.`).
    #[arg(long, default_value = "")]
    pub strip_prefix: String,
    /// trunc: the seed's pipeline bit for bit; nearest: rounded to nearest.
    #[arg(long, value_enum, default_value_t = RoundingArg::Trunc)]
    pub rounding: RoundingArg,
    /// Fixed-point format of a layer class, CLASS=BITS,INT_BITS (classes:
    /// stem, block, head, fc, bn, all); repeatable.
    #[arg(long = "fixed", value_name = "CLASS=B,I")]
    pub fixed: Vec<String>,
    /// Clamp constants that do not fit their format (as the seed does)
    /// instead of failing.
    #[arg(long)]
    pub saturate_constants: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoundingArg {
    Trunc,
    Nearest,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OverflowArg {
    Saturate,
    Wrap,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum SplitArg {
    Test,
    Train,
}

/// Data and simulation options of a run.
#[derive(Args, Clone, Debug)]
pub struct DataArgs {
    /// Data set: `digits`, a CIFAR-10 binary directory, an image folder or
    /// archive [required].
    #[arg(long)]
    pub data: Option<String>,
    /// Which split to measure accuracy on.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    pub split: SplitArg,
    /// Evaluate this many images, spread evenly over the split (as
    /// `qatc train --limit-test` and `qatc eval --limit` take them).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Take the accumulator report from the first N training images.
    #[arg(long, value_name = "N")]
    pub calibrate: Option<usize>,
    /// Simulate N-bit accumulators (sign included).
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=63))]
    pub acc_bits: Option<u32>,
    /// What an accumulator past --acc-bits does.
    #[arg(long, value_enum, default_value_t = OverflowArg::Saturate)]
    pub overflow: OverflowArg,
    /// Worker threads [default: one per core].
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// `qatc int`.
#[derive(Args, Clone, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct IntCommand {
    #[command(subcommand)]
    pub action: Option<IntAction>,
    #[command(flatten)]
    pub run: IntRunArgs,
}

#[derive(Args, Clone, Debug)]
pub struct IntRunArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    #[command(flatten)]
    pub shift: ShiftArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
}

#[derive(Subcommand, Clone, Debug)]
pub enum IntAction {
    /// Accuracy for each fixed-point format of one layer class.
    Sweep {
        #[command(flatten)]
        plan: PlanArgs,
        #[command(flatten)]
        shift: ShiftArgs,
        #[command(flatten)]
        data: DataArgs,
        /// Formats to try (BITS,INT_BITS each).
        #[arg(long, num_args = 1.., default_values_t = ["16,6".to_string(), "16,8".to_string(), "24,10".to_string(), "32,10".to_string()])]
        formats: Vec<String>,
        /// The layer class whose format varies (stem, block, head, fc, all).
        #[arg(long, default_value = "block")]
        class: String,
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
    },
    /// Images per second of the integer engine on 1 and on all threads.
    Bench {
        #[command(flatten)]
        plan: PlanArgs,
        #[command(flatten)]
        shift: ShiftArgs,
        /// Images to time (random, or the first test images of --data).
        #[arg(long, default_value_t = 256)]
        images: usize,
        #[arg(long)]
        data: Option<String>,
        /// Timed rounds (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Also time libtorch's fake-quant evaluation of the same model and
        /// profile on one thread (the model crate's `bench`, as
        /// `QATC_THREADS=1 qatc bench`; needs libtorch: run through `./dev`)
        /// and print the engine's speed against it.
        #[arg(long)]
        libtorch: bool,
        /// Take the N images spread evenly over the test split of --data
        /// (image `i * len / N`, as `--limit` does everywhere) instead of
        /// the first N (an image folder is sorted by class, so its first
        /// images are all of one class).
        #[arg(long)]
        spread: bool,
        /// Also time ONNX Runtime (CPU provider) executing the ONNX exports
        /// of the same plan (the int8 graph `onnx-int8`, QDQ and the
        /// integer-only `onnx-int`, written in-process) on the same images
        /// with the same thread counts (intra-op threads, inter-op 1,
        /// sequential), batches of 1 and 64, graph optimisations off and
        /// all on, print the ops ONNX Runtime runs after optimising and its
        /// profile per op type (all on, 1 thread). Needs the ONNX Python packages:
        /// `source scripts/onnx-env.sh` (QATC_ONNX_PYTHON, QATC_ONNX_PYTHONPATH).
        #[arg(long)]
        onnxruntime: bool,
        /// Also time every layer of the plan on one thread over the same
        /// images and print where the time goes: per kind of layer (1x1
        /// convs, depthwise, requantization...) and per layer, in ms per
        /// image, share and multiply-accumulates per ns (the clock read
        /// around each layer costs a little: the images/s above are timed
        /// without it). With --dump also `layers.json`.
        #[arg(long)]
        layers: bool,
        /// Write the images (`inputs.f32`, float32 `[N, C, H, W]`,
        /// little-endian), the engine's logits for them (`logits.f32`,
        /// `[N, classes]`) and `meta.json` (shape, labels, image indices,
        /// model, profile, rounding) into DIR (`scripts/onnx-agreement.sh`);
        /// with --onnxruntime also the exports and ONNX Runtime's report.
        #[arg(long, value_name = "DIR")]
        dump: Option<PathBuf>,
    },
}

/// Images per second of libtorch's fake-quant evaluation of a spec's model
/// under a profile, on one thread (`qatc int bench --libtorch`; the binary
/// provides it, since it runs the generated model crate).
pub type LibtorchEval<'a> = &'a dyn Fn(&Path, &str) -> anyhow::Result<f64>;

/// `qatc export`.
#[derive(Args, Clone, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    #[command(flatten)]
    pub shift: ShiftArgs,
    /// Output directory.
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value_t = ExportFormatArg::Json)]
    pub format: ExportFormatArg,
    /// Test images to ship with a C export (first test images of --data,
    /// else deterministic random ones).
    #[arg(long, default_value_t = 4)]
    pub images: usize,
    #[arg(long)]
    pub data: Option<String>,
    /// ONNX opset of `--format onnx` / `qonnx` (13 to 21) [default: 13, or
    /// 21 where a QDQ activation has more than 8 bits].
    #[arg(long)]
    pub opset: Option<i64>,
    /// With --format onnx-int8: store the weights as uint8 with zero point
    /// 128 (ONNX Runtime's U8U8 kernels, exact on every x86) instead of
    /// int8 (U8S8, its fastest, whose AVX2 kernels saturate some int16
    /// pair sums; docs/export.md).
    #[arg(long)]
    pub u8_weights: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExportFormatArg {
    C,
    Npz,
    Json,
    /// QDQ ONNX (QuantizeLinear / DequantizeLinear) of the fake-quant eval
    /// forward, for ONNX Runtime and TensorRT (docs/export.md).
    Onnx,
    /// QONNX (QONNX `Quant` nodes) of the fake-quant eval forward, for
    /// FINN and hls4ml: `<model>.qonnx.onnx` (docs/export.md).
    Qonnx,
    /// The integer-only pipeline of `qatc int` as integer ONNX ops:
    /// `<model>.int.onnx`, whose logits in ONNX Runtime are the engine's bit
    /// for bit (docs/export.md).
    OnnxInt,
    /// The integer plan as a deployer's int8 ONNX graph that ONNX Runtime
    /// runs with its int8 kernels (QLinearConv, QLinearAdd, ...; BN folded):
    /// `<model>.int8.onnx`, close to the engine but not bit exact
    /// (docs/export.md).
    #[value(name = "onnx-int8")]
    OnnxInt8,
}

fn formats_from(args: &[String]) -> anyhow::Result<Formats> {
    let mut f = Formats::default();
    for a in args {
        let (class, fmt) = a
            .split_once('=')
            .with_context(|| format!("--fixed `{a}`: write CLASS=BITS,INT_BITS"))?;
        let fmt: FixedFormat = fmt.parse().map_err(anyhow::Error::msg)?;
        set_class(&mut f, class, fmt)?;
    }
    Ok(f)
}

fn set_class(f: &mut Formats, class: &str, fmt: FixedFormat) -> anyhow::Result<()> {
    match class {
        "stem" => f.stem = fmt,
        "block" => f.block = fmt,
        "head" => f.head = fmt,
        "fc" => f.fc = fmt,
        "bn" => f.bn = Some(fmt),
        "all" => {
            *f = Formats {
                stem: fmt,
                block: fmt,
                head: fmt,
                fc: fmt,
                bn: None,
            }
        }
        other => bail!("unknown layer class `{other}` (stem, block, head, fc, bn, all)"),
    }
    Ok(())
}

/// The plan of `args`, diagnostics of a bad spec printed to stderr.
pub fn load_plan(args: &PlanArgs, formats: Option<Formats>) -> anyhow::Result<IntPlan> {
    load_plan_with(args, formats, false)
}

/// With --rounding nearest: place each requantization's binary point so
/// that its largest constant uses the format's full width.
#[derive(Args, Clone, Debug, Default)]
pub struct ShiftArgs {
    /// With --rounding nearest: a binary point per requantization (its
    /// largest constant uses the format's full width) instead of the
    /// format's fixed one.
    #[arg(long)]
    pub per_layer_shift: bool,
}

/// [`load_plan`], `per_layer_shift` choosing [`Rounding::Scaled`] over
/// `nearest`.
pub fn load_plan_with(
    args: &PlanArgs,
    formats: Option<Formats>,
    per_layer_shift: bool,
) -> anyhow::Result<IntPlan> {
    let (graph, ck) = load_checkpoint(args)?;
    let graph = &graph;
    let opts = PlanOptions {
        rounding: match args.rounding {
            RoundingArg::Trunc => Rounding::Trunc,
            RoundingArg::Nearest if per_layer_shift => Rounding::Scaled,
            RoundingArg::Nearest => Rounding::Nearest,
        },
        formats: match formats {
            Some(f) => f,
            None => formats_from(&args.fixed)?,
        },
        saturate_constants: args.saturate_constants,
    };
    let plan = qatc_int::build(graph, &ck, opts)?;
    for s in &plan.saturated {
        eprintln!("warning: clamped constant {s}");
    }
    for f in &plan.folded {
        eprintln!("note: constant channel {f}");
    }
    if opts.rounding == Rounding::Trunc {
        if let qatc_int::seed_sqrt::SqrtSource::Ieee(why) = qatc_int::seed_sqrt::source() {
            eprintln!(
                "note: BN square roots are IEEE, not libtorch's as the seed's ({why}); a constant on a \
                 rounding boundary may differ from the seed's by one step"
            );
        }
    }
    Ok(plan)
}

/// The graph of `args`' spec and profile and the checkpoint it names (in
/// the model's names, or through the spec's `import` section), diagnostics
/// of a bad spec printed to stderr.
pub fn load_checkpoint(args: &PlanArgs) -> anyhow::Result<(qatc::ir::Graph, Checkpoint)> {
    let Some(spec) = &args.spec else {
        bail!("give the model spec: qatc int SPEC --checkpoint F ...")
    };
    let Some(checkpoint) = &args.checkpoint else {
        bail!(
            "--checkpoint is required (a trained checkpoint of {})",
            spec.display()
        )
    };
    let src = Source::read(spec).map_err(anyhow::Error::msg)?;
    let failed = |d: qatc::diag::Diagnostics| {
        d.emit_stderr(&src.name, &src.text);
        anyhow::anyhow!("{} failed its checks", src.name)
    };
    let compiled = driver::compile(&src).map_err(failed)?;
    let graph = compiled.graph(args.profile.as_deref()).map_err(failed)?;
    let model = &compiled.ast;
    let ck = match &args.import_format {
        Some(fmt) => {
            let bytes = std::fs::read(checkpoint)
                .with_context(|| format!("cannot read `{}`", checkpoint.display()))?;
            Checkpoint::import(&bytes, model, graph, fmt, &args.strip_prefix)
                .with_context(|| format!("checkpoint `{}`", checkpoint.display()))?
        }
        None => Checkpoint::read(checkpoint, graph, &compiled.spec_hash)?,
    };
    Ok((graph.clone(), ck))
}

/// A `qatc_data` split as [`Images`].
pub struct DataImages<'a> {
    pub ds: &'a qatc_data::Dataset,
    pub n: usize,
}

impl Images for DataImages<'_> {
    fn len(&self) -> usize {
        self.n
    }
    fn image(&self, i: usize, out: &mut [f32]) {
        self.ds.normalized(i, out);
    }
    fn label(&self, i: usize) -> usize {
        self.ds.labels[i] as usize
    }
}

fn open_data(data: Option<&str>, plan: &IntPlan) -> anyhow::Result<qatc_data::Split> {
    let Some(data) = data else {
        bail!(
            "--data is required (digits, a CIFAR-10 binary directory, an image folder or archive)"
        )
    };
    let split = qatc_data::open(data).with_context(|| format!("cannot open data `{data}`"))?;
    if split.test.shape != plan.input_shape {
        bail!(
            "data `{data}` has images of {:?}, model `{}` takes {:?}",
            split.test.shape,
            plan.model,
            plan.input_shape
        );
    }
    Ok(split)
}

fn sim_of(d: &DataArgs) -> SimOptions {
    SimOptions {
        acc_bits: d.acc_bits,
        overflow: match d.overflow {
            OverflowArg::Saturate => OverflowMode::Saturate,
            OverflowArg::Wrap => OverflowMode::Wrap,
        },
    }
}

/// Accuracy (and the accumulator report, from calibration images when asked).
fn measure(
    plan: &IntPlan,
    split: &qatc_data::Split,
    d: &DataArgs,
) -> anyhow::Result<(IntReport, f64)> {
    let ds = match d.split {
        SplitArg::Test => &split.test,
        SplitArg::Train => &split.train,
    };
    // The same images as `qatc eval --limit` / `train --limit-test` take.
    let limited;
    let ds = match d.limit {
        Some(l) => {
            limited = ds.clone().spread(l);
            &limited
        }
        None => ds,
    };
    let n = ds.len();
    let opts = EvalOptions {
        sim: sim_of(d),
        threads: d.threads,
        keep_logits: false,
    };
    let t = Instant::now();
    let mut report = evaluate(plan, &DataImages { ds, n }, opts)?;
    let rate = n as f64 / t.elapsed().as_secs_f64().max(1e-9);
    if let Some(c) = d.calibrate {
        let m = c.min(split.train.len());
        let cal = evaluate(
            plan,
            &DataImages {
                ds: &split.train,
                n: m,
            },
            opts,
        )?;
        report.layers = cal.layers;
    }
    Ok((report, rate))
}

fn print_report(plan: &IntPlan, r: &IntReport, rate: f64, calibrated: Option<usize>) {
    let f = &plan.options.formats;
    println!(
        "model {}, profile {}, rounding {}, formats: stem {} block {} head {} fc {}{}",
        r.model,
        r.profile,
        r.rounding,
        f.stem,
        f.block,
        f.head,
        f.fc,
        f.bn.map(|b| format!(" bn {b}")).unwrap_or_default()
    );
    println!(
        "top-1 {:.2}% ({} / {} images), {:.0} images/s",
        r.top1, r.correct, r.images, rate
    );
    if let Some(b) = r.sim.acc_bits {
        let total: u64 = r.layers.iter().map(|l| l.overflows).sum();
        println!(
            "accumulators simulated at {b} bits ({:?}): {total} overflows",
            r.sim.overflow
        );
    }
    println!(
        "accumulators{}:",
        calibrated
            .map(|n| format!(" (first {n} training images)"))
            .unwrap_or_default()
    );
    println!(
        "  {:<28} {:>3} {:>3} {:>6} {:>10} {:>12} {:>12} {:>8} {:>10}",
        "layer",
        "a",
        "w",
        "fan-in",
        "worst:bits",
        "worst:weights",
        "max reached",
        "max bits",
        "overflows"
    );
    let opt = |x: Option<u32>| x.map_or("-".to_string(), |b| b.to_string());
    for l in &r.layers {
        println!(
            "  {:<28} {:>3} {:>3} {:>6} {:>10} {:>12} {:>12} {:>8} {:>10}",
            l.layer,
            l.a_bits,
            l.w_bits,
            l.fan_in,
            opt(l.worst_bits),
            opt(l.worst_bits_weights),
            l.max_abs,
            l.max_bits,
            l.overflows
        );
    }
}

/// `qatc int ...`.
pub fn run_int(cmd: Box<IntCommand>, libtorch_eval: LibtorchEval) -> anyhow::Result<ExitCode> {
    match (cmd.action, cmd.run) {
        (
            Some(IntAction::Sweep {
                plan,
                shift,
                data,
                formats,
                class,
                format,
            }),
            _,
        ) => sweep(
            &plan,
            shift.per_layer_shift,
            &data,
            &formats,
            &class,
            format,
        ),
        (
            Some(IntAction::Bench {
                plan,
                shift,
                images,
                data,
                rounds,
                libtorch,
                spread,
                onnxruntime,
                layers,
                dump,
            }),
            _,
        ) => bench(
            &plan,
            shift.per_layer_shift,
            BenchImages {
                n: images,
                data: data.as_deref(),
                spread,
            },
            rounds,
            libtorch.then_some(libtorch_eval),
            onnxruntime,
            BenchOutputs {
                layers,
                dump: dump.as_deref(),
            },
        ),
        (None, run) => {
            let plan = load_plan_with(&run.plan, None, run.shift.per_layer_shift)?;
            let split = open_data(run.data.data.as_deref(), &plan)?;
            let (report, rate) = measure(&plan, &split, &run.data)?;
            match run.format {
                ReportFormat::Table => print_report(&plan, &report, rate, run.data.calibrate),
                ReportFormat::Json => {
                    let mut v = serde_json::to_value(&report)?;
                    if let serde_json::Value::Object(m) = &mut v {
                        m.remove("predictions");
                        m.remove("logits");
                        m.insert("images_per_s".into(), rate.into());
                        m.insert(
                            "formats".into(),
                            serde_json::to_value(plan.options.formats)?,
                        );
                    }
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn sweep(
    plan_args: &PlanArgs,
    per_layer_shift: bool,
    data: &DataArgs,
    formats: &[String],
    class: &str,
    format: ReportFormat,
) -> anyhow::Result<ExitCode> {
    let base = formats_from(&plan_args.fixed)?;
    let mut args = plan_args.clone();
    // A sweep wants every format's accuracy, fitting or not: constants are
    // clamped as the seed clamps them, and the count is reported.
    args.saturate_constants = true;
    let mut split = None;
    let mut rows = Vec::new();
    for f in formats {
        let fmt: FixedFormat = f.parse().map_err(anyhow::Error::msg)?;
        let mut fs = base;
        set_class(&mut fs, class, fmt)?;
        let plan = load_plan_with(&args, Some(fs), per_layer_shift)?;
        if split.is_none() {
            split = Some(open_data(data.data.as_deref(), &plan)?);
        }
        let Some(split) = split.as_ref() else {
            unreachable!()
        };
        let (r, _) = measure(&plan, split, data)?;
        rows.push((fmt, r.top1, r.correct, r.images, plan.saturated.len()));
    }
    if format == ReportFormat::Json {
        let v: Vec<_> = rows
            .iter()
            .map(|(f, top1, c, n, sat)| {
                serde_json::json!({"format": f.to_string(), "bits": f.bits, "int_bits": f.int_bits,
                    "top1": top1, "correct": c, "images": n, "clamped_constants": sat})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("fixed-point format of class `{class}` (others as given):");
        println!(
            "  {:<14} {:>8} {:>14} {:>18}",
            "format", "top-1", "correct", "clamped constants"
        );
        for (f, top1, c, n, sat) in rows {
            println!(
                "  {:<14} {:>7.2}% {:>14} {:>18}",
                f.to_string(),
                top1,
                format!("{c}/{n}"),
                sat
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Deterministic pseudo-random normal-ish images (no data set needed).
fn random_images(n: usize, len: usize) -> Vec<Vec<f32>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| (next() + next() + next() - 1.5) * 2.0)
                .collect()
        })
        .collect()
}

fn first_images(data: Option<&str>, plan: &IntPlan, n: usize) -> anyhow::Result<Vec<Vec<f32>>> {
    match data {
        Some(d) => {
            let split = open_data(Some(d), plan)?;
            let m = n.min(split.test.len());
            Ok((0..m)
                .map(|i| {
                    let mut v = vec![0f32; plan.input_len()];
                    split.test.normalized(i, &mut v);
                    v
                })
                .collect())
        }
        None => Ok(random_images(n, plan.input_len())),
    }
}

struct Listed<'a>(&'a [Vec<f32>]);

impl Images for Listed<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn image(&self, i: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.0[i]);
    }
    fn label(&self, _: usize) -> usize {
        0
    }
}

/// Which images `qatc int bench` times.
struct BenchImages<'a> {
    n: usize,
    data: Option<&'a str>,
    spread: bool,
}

/// The bench's images with their labels and indices in the test split
/// (random images: label 0, index = position).
struct BenchSet {
    images: Vec<Vec<f32>>,
    labels: Vec<usize>,
    indices: Vec<usize>,
}

fn bench_images(which: &BenchImages, plan: &IntPlan) -> anyhow::Result<BenchSet> {
    let n = which.n.max(1);
    let Some(d) = which.data else {
        if which.spread {
            bail!("--spread takes the images of --data's test split: give --data");
        }
        let images = random_images(n, plan.input_len());
        return Ok(BenchSet {
            labels: vec![0; images.len()],
            indices: (0..images.len()).collect(),
            images,
        });
    };
    let split = open_data(Some(d), plan)?;
    let len = split.test.len();
    let m = n.min(len);
    let indices: Vec<usize> = if which.spread {
        (0..m).map(|i| i * len / m).collect()
    } else {
        (0..m).collect()
    };
    let images = indices
        .iter()
        .map(|&i| {
            let mut v = vec![0f32; plan.input_len()];
            split.test.normalized(i, &mut v);
            v
        })
        .collect();
    let labels = indices
        .iter()
        .map(|&i| split.test.labels[i] as usize)
        .collect();
    Ok(BenchSet {
        images,
        labels,
        indices,
    })
}

fn f32_bytes<'a>(v: impl IntoIterator<Item = &'a f32>) -> Vec<u8> {
    v.into_iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `(python, PYTHONPATH)` of the ONNX tooling (`scripts/onnx-env.sh`), or
/// the error `--onnxruntime` gives without it.
fn onnx_python() -> anyhow::Result<(String, String)> {
    match std::env::var("QATC_ONNX_PYTHONPATH") {
        Ok(p) if !p.is_empty() => Ok((
            std::env::var("QATC_ONNX_PYTHON").unwrap_or_else(|_| "python3".into()),
            p,
        )),
        _ => bail!(
            "--onnxruntime runs ONNX Runtime through Python, and no ONNX tooling is set up \
             (QATC_ONNX_PYTHONPATH is unset): run `source scripts/onnx-env.sh` in the qatc \
             workspace (it installs the pinned onnx, onnxruntime and qonnx once per machine \
             and sets QATC_ONNX_PYTHON and QATC_ONNX_PYTHONPATH), then run this again"
        ),
    }
}

/// The ONNX exports ONNX Runtime runs, written from the plan `qatc int
/// bench` holds (and, for QDQ, the same graph and checkpoint) by calling
/// `qatc_onnx`: `(label, path)` for each that could be written (`int8`,
/// `int8-u8w` (its weights as uint8, `--u8-weights`), `qdq`, `onnx-int`), a
/// note on stderr for each that could not.
fn ort_exports(
    args: &PlanArgs,
    plan: &IntPlan,
    dir: &Path,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let qdq = || -> anyhow::Result<Vec<u8>> {
        let (graph, ck) = load_checkpoint(args)?;
        Ok(qatc_onnx::write_qdq(&graph, &ck)?)
    };
    let int8 = |w| qatc_onnx::write_int8_onnx(plan, w).map_err(Into::into);
    let written: [(&str, &str, anyhow::Result<Vec<u8>>); 4] = [
        ("int8", "int8.onnx", int8(qatc_onnx::Int8Weights::S8)),
        (
            "int8-u8w",
            "int8-u8w.onnx",
            int8(qatc_onnx::Int8Weights::U8),
        ),
        ("qdq", "onnx", qdq()),
        (
            "onnx-int",
            "int.onnx",
            qatc_onnx::write_int_onnx(plan).map_err(Into::into),
        ),
    ];
    for (label, ext, bytes) in written {
        match bytes {
            Ok(b) => {
                let p = dir.join(format!("{}.{ext}", plan.model));
                std::fs::write(&p, b).with_context(|| format!("cannot write `{}`", p.display()))?;
                out.push((label.to_string(), p));
            }
            Err(e) => eprintln!("note: no {label} ONNX export of this model, not timed: {e:#}"),
        }
    }
    if out.is_empty() {
        bail!("no ONNX export of this checkpoint could be written (see the notes above)");
    }
    Ok(out)
}

/// One line of `scripts/ort-bench.py`'s output.
#[derive(serde::Deserialize)]
struct OrtLine {
    kind: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    level: String,
    #[serde(default)]
    threads: usize,
    #[serde(default)]
    batch: usize,
    #[serde(default)]
    images_per_s: f64,
    #[serde(default)]
    cpu_ms_per_image: f64,
    #[serde(default)]
    ops: std::collections::BTreeMap<String, usize>,
    #[serde(default)]
    onnxruntime: String,
    /// `profile` lines: kernel time per image by op type, microseconds.
    #[serde(default)]
    us_per_image: Vec<(String, f64)>,
}

/// ONNX Runtime's side of `--onnxruntime`: `scripts/ort-bench.py` (embedded
/// here, written next to the images) on the exports, same images and thread
/// counts. Prints its table and the engine against it; returns nothing.
#[allow(clippy::too_many_arguments)]
fn bench_onnxruntime(
    plan_args: &PlanArgs,
    plan: &IntPlan,
    python: &(String, String),
    set: &BenchSet,
    shape: &[usize],
    thread_counts: &[usize],
    rounds: usize,
    engine: &[(usize, f64, Option<f64>)],
    dir: &Path,
) -> anyhow::Result<()> {
    const SCRIPT: &str = include_str!("../../../scripts/ort-bench.py");
    const BATCHES: [usize; 2] = [1, 64];
    let models = ort_exports(plan_args, plan, dir)?;
    let inputs = dir.join("inputs.f32");
    if !inputs.exists() {
        std::fs::write(&inputs, f32_bytes(set.images.iter().flatten()))?;
    }
    let script = dir.join("ort-bench.py");
    std::fs::write(&script, SCRIPT)?;
    let job = serde_json::json!({
        "models": models.iter().map(|(l, p)| serde_json::json!({"label": l, "path": p})).collect::<Vec<_>>(),
        "inputs": inputs,
        "shape": shape,
        "threads": thread_counts,
        "batches": BATCHES,
        "levels": ["disable_all", "enable_all"],
        "rounds": rounds.max(1),
        "optimized_dir": dir.join("optimized"),
        "profile": {"level": "enable_all", "threads": 1, "batches": BATCHES},
    });
    let job_file = dir.join("ort-job.json");
    std::fs::write(&job_file, serde_json::to_string_pretty(&job)?)?;
    let run = std::process::Command::new(&python.0)
        .arg(&script)
        .arg(&job_file)
        .env("PYTHONPATH", &python.1)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run `{}` (QATC_ONNX_PYTHON)", python.0))?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    std::fs::write(dir.join("ort-bench.jsonl"), stdout.as_bytes())?;
    if !run.status.success() {
        bail!(
            "ONNX Runtime's benchmark failed ({}; `source scripts/onnx-env.sh` installs the \
             pinned onnxruntime)",
            run.status
        );
    }
    let lines: Vec<OrtLine> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("unexpected output of ort-bench.py")?;
    let version = lines
        .iter()
        .find(|l| l.kind == "versions")
        .map(|l| l.onnxruntime.clone())
        .unwrap_or_default();
    println!(
        "onnxruntime {version}, CPUExecutionProvider, intra_op_num_threads = threads, \
         inter_op_num_threads 1, ORT_SEQUENTIAL; same {} images, median of {} rounds",
        set.images.len(),
        rounds.max(1)
    );
    println!(
        "  {:<9} {:<12} {:>7}  {:>36}  {:>36}",
        "model",
        "optimisation",
        "threads",
        "batch 1: images/s (per core, CPU ms)",
        "batch 64: images/s (per core, CPU ms)"
    );
    let cell = |l: &OrtLine| {
        format!(
            "{:.1} ({:.1}, {:.3})",
            l.images_per_s,
            l.images_per_s / l.threads.max(1) as f64,
            l.cpu_ms_per_image
        )
    };
    for (label, _) in &models {
        for level in ["disable_all", "enable_all"] {
            for &t in thread_counts {
                let get = |b: usize| {
                    lines
                        .iter()
                        .find(|l| {
                            l.kind == "time"
                                && &l.model == label
                                && l.level == level
                                && l.threads == t
                                && l.batch == b
                        })
                        .map(cell)
                        .unwrap_or_else(|| "-".into())
                };
                println!(
                    "  {:<9} {:<12} {:>7}  {:>36}  {:>36}",
                    label,
                    level,
                    t,
                    get(BATCHES[0]),
                    get(BATCHES[1])
                );
            }
        }
    }
    for l in lines.iter().filter(|l| l.kind == "ops") {
        let ops: Vec<String> = l.ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let int8 = l
            .ops
            .keys()
            .filter(|k| {
                k.contains("QLinear") || k.contains("ConvInteger") || k.contains("MatMulInteger")
            })
            .count();
        println!(
            "  {} {} runs: {}{}",
            l.model,
            l.level,
            ops.join(", "),
            match (int8, l.model.as_str()) {
                (0, "qdq") => " (no int8 kernels: QDQ not fused)",
                (0, "int8" | "int8-u8w") => " (NO int8 kernels)",
                _ => "",
            }
        );
    }
    for l in lines.iter().filter(|l| l.kind == "profile") {
        let total: f64 = l.us_per_image.iter().map(|(_, v)| v).sum();
        let top: Vec<String> = l
            .us_per_image
            .iter()
            .take(8)
            .map(|(op, us)| format!("{op} {:.0} us ({:.0} %)", us, 100.0 * us / total.max(1e-9)))
            .collect();
        println!(
            "  ORT profile {} {} {} thread{} batch {}: {:.0} us of kernels per image: {}",
            l.model,
            l.level,
            l.threads,
            if l.threads == 1 { "" } else { "s" },
            l.batch,
            total,
            top.join(", ")
        );
    }
    for &(t, engine_rate, engine_cpu) in engine {
        for (label, _) in &models {
            let runs = || {
                lines
                    .iter()
                    .filter(|l| l.kind == "time" && &l.model == label && l.threads == t)
            };
            let versus = |ratio: f64| {
                format!(
                    "{:.2}x {}",
                    if ratio >= 1.0 { ratio } else { 1.0 / ratio },
                    if ratio >= 1.0 { "faster" } else { "slower" }
                )
            };
            let fastest = runs().max_by(|a, b| a.images_per_s.total_cmp(&b.images_per_s));
            let cheapest = runs().min_by(|a, b| a.cpu_ms_per_image.total_cmp(&b.cpu_ms_per_image));
            if let (Some(f), Some(c)) = (fastest, cheapest) {
                println!(
                    "engine / ONNX Runtime {label}, {t} thread{}: {} in images/s (against its fastest, {} batch {}){}",
                    if t == 1 { "" } else { "s" },
                    versus(engine_rate / f.images_per_s),
                    f.level,
                    f.batch,
                    engine_cpu
                        .map(|e| format!(
                            ", {} in CPU time per image (against its cheapest, {} batch {})",
                            versus(c.cpu_ms_per_image / e),
                            c.level,
                            c.batch
                        ))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
/// What `qatc int bench` reports beyond the engine's images per second.
struct BenchOutputs<'a> {
    /// `--layers`: the per-layer profile.
    layers: bool,
    /// `--dump DIR`.
    dump: Option<&'a Path>,
}

/// `--layers`: every layer timed on one thread over `images`, printed per
/// kind of layer, then per layer in plan order.
fn print_layer_profile(
    plan: &IntPlan,
    images: &[Vec<f32>],
) -> anyhow::Result<qatc_int::profile::LayerProfile> {
    let p = qatc_int::profile::profile_layers(plan, &Listed(images), &SimOptions::default())?;
    let total = p.total_ns().max(1.0);
    let mac_rate = |macs: u64, ns: f64| {
        if macs == 0 || ns <= 0.0 {
            String::new()
        } else {
            format!("{:6.1} MAC/ns", macs as f64 / ns)
        }
    };
    println!(
        "where the time goes: every layer timed, 1 thread, {} images, each layer's median image; {:.3} ms per image in all (timing each layer adds a little)",
        p.images,
        total / 1e6
    );
    println!("  by kind:");
    for (group, ns, macs, n) in p.by_kind() {
        println!(
            "    {group:<30} {:8.3} ms {:5.1} % {:>9.2} M MAC {}  ({n} layer{})",
            ns / 1e6,
            100.0 * ns / total,
            macs as f64 / 1e6,
            mac_rate(macs, ns),
            if n == 1 { "" } else { "s" }
        );
    }
    println!("  per layer (plan order):");
    for l in &p.layers {
        println!(
            "    {:>4} {:<28} {:<44} {:8.4} ms {:5.1} % {}",
            l.index,
            l.name,
            l.kind,
            l.ns / 1e6,
            100.0 * l.ns / total,
            mac_rate(l.macs, l.ns)
        );
    }
    Ok(p)
}

fn bench(
    plan_args: &PlanArgs,
    per_layer_shift: bool,
    which: BenchImages,
    rounds: usize,
    libtorch: Option<LibtorchEval>,
    onnxruntime: bool,
    outputs: BenchOutputs,
) -> anyhow::Result<ExitCode> {
    let dump = outputs.dump;
    // Checked first: a missing tool is an error before any timing.
    let python = if onnxruntime {
        Some(onnx_python()?)
    } else {
        None
    };
    let plan = load_plan_with(plan_args, None, per_layer_shift)?;
    let set = bench_images(&which, &plan)?;
    let images = &set.images;
    let cores = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1);
    println!(
        "integer engine, model {} profile {} ({} rounding), {} images, median of {} rounds",
        plan.model,
        plan.profile,
        plan.options.rounding,
        images.len(),
        rounds.max(1)
    );
    // AVX-512 VNNI, AVX2 or portable, as the engine's threads choose
    // (`QATC_INT_ISA=avx2` keeps a CPU with more on AVX2).
    println!("kernels: {}", qatc_int::engine::kernels());
    // The weights converted once, outside the timed runs (as the ONNX
    // Runtime benchmark makes its session before timing its runs).
    let t = Instant::now();
    let weights = engine::Weights::new(&plan);
    println!(
        "weights converted once in {:.1} ms (not in the times below)",
        1000.0 * t.elapsed().as_secs_f64()
    );
    let mut thread_counts = vec![1];
    if cores > 1 {
        thread_counts.push(cores);
    }
    let mut one_thread = None;
    let mut engine_rates = Vec::new();
    for &threads in &thread_counts {
        let opts = EvalOptions {
            threads,
            ..EvalOptions::default()
        };
        evaluate_with(
            &plan,
            &weights,
            &Listed(&images[..images.len().min(8)]),
            opts,
        )?;
        let mut times = Vec::new();
        let mut cpu = Vec::new();
        for _ in 0..rounds.max(1) {
            let (t, c) = (Instant::now(), process_cpu_seconds());
            evaluate_with(&plan, &weights, &Listed(images), opts)?;
            times.push(t.elapsed().as_secs_f64());
            if let (Some(a), Some(b)) = (c, process_cpu_seconds()) {
                cpu.push(b - a);
            }
        }
        times.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let n = images.len() as f64;
        if threads == 1 {
            one_thread = Some(n / median);
        }
        let cpu_ms = cpu.get(cpu.len() / 2).map(|c| 1000.0 * c / n);
        engine_rates.push((threads, n / median, cpu_ms));
        println!(
            "  {threads} thread{}: {:.1} images/s ({:.3} ms per image{}){}",
            if threads == 1 { "" } else { "s" },
            n / median,
            1000.0 * median / n,
            if threads > 1 {
                format!(", {:.1} images/s per core", n / median / threads as f64)
            } else {
                String::new()
            },
            cpu_ms
                .map(|c| format!(", {c:.3} ms of CPU per image"))
                .unwrap_or_default()
        );
    }
    let profile = if outputs.layers {
        Some(print_layer_profile(&plan, images)?)
    } else {
        None
    };
    if let Some(dir) = dump {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
        let opts = EvalOptions {
            keep_logits: true,
            ..EvalOptions::default()
        };
        let report = evaluate(&plan, &Listed(images), opts)?;
        std::fs::write(dir.join("inputs.f32"), f32_bytes(images.iter().flatten()))?;
        std::fs::write(
            dir.join("logits.f32"),
            f32_bytes(report.logits.iter().flatten()),
        )?;
        let mut shape = vec![images.len()];
        shape.extend(plan.input_shape.iter().copied());
        let meta = serde_json::json!({
            "model": plan.model,
            "profile": plan.profile,
            "rounding": plan.options.rounding.to_string(),
            "shape": shape,
            "classes": report.logits.first().map_or(0, |l| l.len()),
            "labels": set.labels,
            "indices": set.indices,
            "data": which.data,
        });
        std::fs::write(dir.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
        eprintln!(
            "wrote {}/{{inputs.f32,logits.f32,meta.json}}",
            dir.display()
        );
        if let Some(p) = &profile {
            std::fs::write(dir.join("layers.json"), serde_json::to_string_pretty(p)?)?;
            eprintln!("wrote {}/layers.json", dir.display());
        }
    }
    if let (Some(libtorch_eval), Some(engine)) = (libtorch, one_thread) {
        let spec = plan_args.spec.as_deref().context("a spec is required")?;
        let torch = libtorch_eval(spec, &plan.profile)?;
        println!(
            "libtorch fake-quant eval, 1 thread: {torch:.1} images/s ({:.3} ms per image)",
            1000.0 / torch
        );
        let ratio = engine / torch;
        println!(
            "engine / libtorch, 1 thread: {:.2}x {}",
            if ratio >= 1.0 { ratio } else { 1.0 / ratio },
            if ratio >= 1.0 { "faster" } else { "slower" }
        );
    }
    if let Some(python) = python {
        let (dir, temporary) = match dump {
            Some(d) => (d.to_path_buf(), false),
            None => (
                std::env::temp_dir().join(format!("qatc-int-bench-ort-{}", std::process::id())),
                true,
            ),
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
        let mut shape = vec![images.len()];
        shape.extend(plan.input_shape.iter().copied());
        let r = bench_onnxruntime(
            plan_args,
            &plan,
            &python,
            &set,
            &shape,
            &thread_counts,
            rounds,
            &engine_rates,
            &dir,
        );
        if temporary {
            let _ = std::fs::remove_dir_all(&dir);
        }
        r?;
    }
    Ok(ExitCode::SUCCESS)
}

/// User plus system CPU time of this process so far (Linux `/proc`, in
/// clock ticks of 1/100 s): on a shared machine the CPU time per image
/// says what an image costs when wall-clock time includes waiting for a core.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// `qatc export ...`.
pub fn run_export(args: Box<ExportArgs>) -> anyhow::Result<ExitCode> {
    if let (
        Some(opset),
        ExportFormatArg::C
        | ExportFormatArg::Npz
        | ExportFormatArg::Json
        | ExportFormatArg::OnnxInt
        | ExportFormatArg::OnnxInt8,
    ) = (args.opset, args.format)
    {
        bail!(
            "--opset {opset}: --opset applies to --format onnx and qonnx only (onnx-int and onnx-int8 are always opset {})",
            qatc_onnx::int::INT_OPSET
        );
    }
    if args.u8_weights && !matches!(args.format, ExportFormatArg::OnnxInt8) {
        bail!("--u8-weights applies to --format onnx-int8 only");
    }
    let format = match args.format {
        ExportFormatArg::C => ExportFormat::C,
        ExportFormatArg::Npz => ExportFormat::Npz,
        ExportFormatArg::Json => ExportFormat::Json,
        ExportFormatArg::Onnx => return export_onnx(&args, false),
        ExportFormatArg::Qonnx => return export_onnx(&args, true),
        ExportFormatArg::OnnxInt => return export_onnx_int(&args),
        ExportFormatArg::OnnxInt8 => return export_onnx_int8(&args),
    };
    let plan = load_plan_with(&args.plan, None, args.shift.per_layer_shift)?;
    let mut tests = TestImages::default();
    if format == ExportFormat::C && args.images > 0 {
        tests.images = first_images(args.data.as_deref(), &plan, args.images)?;
        let weights = engine::Weights::new(&plan);
        let mut ws = engine::Workspace::new(&plan);
        for im in &tests.images {
            let out = engine::run_image(&plan, &weights, im, &mut ws, &SimOptions::default())?;
            tests.logits.push(out.logits);
        }
    }
    let files = export::write_export(&plan, &args.output, format, &tests)?;
    for f in &files {
        eprintln!("wrote {}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `qatc export --format onnx-int`: `<output>/<model>.int.onnx`, the
/// integer plan (rounding and formats as for `qatc int`) as integer ONNX
/// ops (`qatc_onnx::write_int_onnx`).
fn export_onnx_int(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let plan = load_plan_with(&args.plan, None, args.shift.per_layer_shift)?;
    let bytes = qatc_onnx::write_int_onnx(&plan)?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create `{}`", args.output.display()))?;
    let path = args.output.join(format!("{}.int.onnx", plan.model));
    std::fs::write(&path, &bytes).with_context(|| format!("cannot write `{}`", path.display()))?;
    eprintln!(
        "wrote {} (integer ONNX, rounding `{}`, opset {}, {} KiB)",
        path.display(),
        plan.options.rounding,
        qatc_onnx::int::INT_OPSET,
        bytes.len().div_ceil(1024)
    );
    Ok(ExitCode::SUCCESS)
}

/// `qatc export --format onnx-int8`: `<output>/<model>.int8.onnx`, the
/// integer plan as ONNX Runtime's int8 operators
/// (`qatc_onnx::write_int8_onnx`).
fn export_onnx_int8(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let plan = load_plan_with(&args.plan, None, args.shift.per_layer_shift)?;
    let weights = if args.u8_weights {
        qatc_onnx::Int8Weights::U8
    } else {
        qatc_onnx::Int8Weights::S8
    };
    let bytes = qatc_onnx::write_int8_onnx(&plan, weights)?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create `{}`", args.output.display()))?;
    let path = args.output.join(format!("{}.int8.onnx", plan.model));
    std::fs::write(&path, &bytes).with_context(|| format!("cannot write `{}`", path.display()))?;
    eprintln!(
        "wrote {} (int8 ONNX for ONNX Runtime's int8 kernels, {} weights, opset {} + {} 1, not \
         bit exact with the engine, {} KiB)",
        path.display(),
        if args.u8_weights { "uint8" } else { "int8" },
        qatc_onnx::int8::INT8_OPSET,
        qatc_onnx::int8::MS_DOMAIN,
        bytes.len().div_ceil(1024)
    );
    Ok(ExitCode::SUCCESS)
}

/// `qatc export --format onnx`: `<output>/<model>.onnx`, the QDQ graph of
/// the fake-quant eval forward; `--format qonnx` (`qonnx`):
/// `<output>/<model>.qonnx.onnx`, the same forward with QONNX `Quant`
/// nodes (`qatc_onnx`).
fn export_onnx(args: &ExportArgs, qonnx: bool) -> anyhow::Result<ExitCode> {
    let (graph, ck) = load_checkpoint(&args.plan)?;
    let opts = qatc_onnx::QdqOptions { opset: args.opset };
    let (bytes, file, format, opset) = if qonnx {
        let bytes = qatc_onnx::write_qonnx_with(&graph, &ck, &opts)?;
        let opset = args.opset.unwrap_or(qatc_onnx::MIN_OPSET);
        (bytes, format!("{}.qonnx.onnx", graph.model), "QONNX", opset)
    } else {
        let bytes = qatc_onnx::write_qdq_with(&graph, &ck, &opts)?;
        let opset = args.opset.unwrap_or_else(|| qatc_onnx::min_opset(&graph));
        (bytes, format!("{}.onnx", graph.model), "QDQ", opset)
    };
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create `{}`", args.output.display()))?;
    let path = args.output.join(file);
    std::fs::write(&path, &bytes).with_context(|| format!("cannot write `{}`", path.display()))?;
    eprintln!(
        "wrote {} ({format}, opset {opset}, {} KiB)",
        path.display(),
        bytes.len().div_ceil(1024)
    );
    Ok(ExitCode::SUCCESS)
}
