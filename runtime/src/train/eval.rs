//! Evaluation of a model on a data set: loss, top-1 / top-5, per-class
//! accuracy and the confusion matrix; and the `eval` command (a checkpoint
//! on a data set, as a table or JSON).

use super::batch::{batch_tensors, check_fits, open_data};
use super::checkpoint::{self, check_same_model};
use crate::device::{device_name, parse_device};
use crate::model::{ModelMeta, QatModel};
use crate::profile::UnknownProfile;
use clap::{Args, ValueEnum};
use qatc_data::{BatchConfig, Dataset, Loader, LoaderError};
use qatc_records::EvalReport;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use tch::{nn, Device};

/// What an evaluation measured.
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    pub images: usize,
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    /// Top-1 prediction per image, in data set order.
    #[serde(skip)]
    pub predictions: Vec<i64>,
    /// The logits, `images x classes`, row-major, in data set order.
    #[serde(skip)]
    pub logits: Vec<f32>,
}

impl EvalResult {
    /// Accuracy (%) per true class; `None` for a class without images.
    pub fn per_class(&self) -> Vec<Option<f64>> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let n: u64 = row.iter().sum();
                (n > 0).then(|| 100.0 * row[c] as f64 / n as f64)
            })
            .collect()
    }
}

/// Evaluates `model` (eval mode, no gradients) on all of `ds`:
/// [`try_evaluate`] for callers with no use for its error.
///
/// # Panics
/// Where [`try_evaluate`] returns an error: the operating system would not
/// start the data-loader thread.
pub fn evaluate<M: QatModel + ?Sized>(
    model: &M,
    ds: &Arc<Dataset>,
    batch_size: usize,
    device: Device,
) -> EvalResult {
    match try_evaluate(model, ds, batch_size, device) {
        Ok(result) => result,
        Err(e) => panic!("{e}"),
    }
}

/// Evaluates `model` (eval mode, no gradients) on all of `ds`; an error if
/// the data loader cannot start.
pub fn try_evaluate<M: QatModel + ?Sized>(
    model: &M,
    ds: &Arc<Dataset>,
    batch_size: usize,
    device: Device,
) -> Result<EvalResult, LoaderError> {
    let classes = model.classes() as usize;
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut predictions = Vec::with_capacity(ds.len());
    let mut all_logits = Vec::with_capacity(ds.len() * classes);
    let (mut loss_sum, mut top5) = (0.0, 0u64);
    let k = classes.clamp(1, 5);
    let loader = Loader::new(Arc::clone(ds), BatchConfig::eval(batch_size))?;
    tch::no_grad(|| {
        for batch in loader {
            let (xs, ys) = batch_tensors(&batch, ds.shape, device);
            let logits = model.forward_t(&xs, false);
            let loss = logits.cross_entropy_for_logits(&ys).double_value(&[]);
            loss_sum += loss * batch.len as f64;
            // One copy to the host per batch: the k best classes of every
            // image give top-1 (the confusion matrix), top-k and predictions.
            let (_, top) = logits.topk(k as i64, 1, true, true);
            let top = Vec::<i64>::try_from(&top.to_device(Device::Cpu).contiguous().view(-1))
                .unwrap_or_default();
            for (row, &y) in top.chunks(k).zip(&batch.labels) {
                top5 += u64::from(row.contains(&y));
                confusion[y as usize][row[0] as usize] += 1;
                predictions.push(row[0]);
            }
            all_logits.extend(
                Vec::<f32>::try_from(&logits.to_device(Device::Cpu).contiguous().view(-1))
                    .unwrap_or_default(),
            );
        }
    });
    let n = ds.len().max(1) as f64;
    let top1: u64 = (0..classes).map(|c| confusion[c][c]).sum();
    Ok(EvalResult {
        images: ds.len(),
        loss: loss_sum / n,
        top1: 100.0 * top1 as f64 / n,
        top5: 100.0 * top5 as f64 / n,
        confusion,
        predictions,
        logits: all_logits,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SplitName {
    Test,
    Train,
}

/// The `eval` command's flags.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint (`RUN_DIR/best.safetensors`, `latest.safetensors`, or a
    /// state dict from `qatc import`).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// Data [default: the checkpoint's, else digits].
    #[arg(long, value_name = "DIR")]
    pub data: Option<String>,
    /// Which split to evaluate.
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitName,
    /// Profile [default: the checkpoint's, else the spec's first].
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Images per batch.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Memory layout of the activations [default: the checkpoint's run's,
    /// else QATC_LAYOUT, else channels-last]: the run's own layout
    /// reproduces its recorded accuracy exactly.
    #[arg(long, value_enum)]
    pub layout: Option<crate::layers::Layout>,
    /// Evaluate N images only, spread evenly [default: the checkpoint's limit].
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Also write the top-1 prediction of every image, one per line.
    #[arg(long, value_name = "FILE")]
    pub predictions: Option<PathBuf>,
    /// Also write every image's logits, one line of comma-separated
    /// numbers per image (shortest exact decimal form).
    #[arg(long, value_name = "FILE")]
    pub logits: Option<PathBuf>,
}

/// `eval`: a checkpoint on a data set.
pub fn eval_command<M, F>(meta: &ModelMeta, build: &F, args: EvalArgs) -> Result<(), String>
where
    M: QatModel,
    F: Fn(&nn::Path, &str) -> Result<M, UnknownProfile>,
{
    if args.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    let ckpt = checkpoint::load(&args.checkpoint)?;
    let shown = args.checkpoint.display().to_string();
    let recorded = ckpt.meta.as_ref().map(|m| {
        let config: Option<super::options::TrainConfig> =
            serde_json::from_value(m.config.clone()).ok();
        (m, config)
    });
    if let Some((m, _)) = &recorded {
        check_same_model(m, meta, &args.checkpoint)?;
        if let Some(p) = args.profile.as_deref().filter(|p| *p != m.profile) {
            return Err(format!(
                "checkpoint `{shown}` was trained under profile `{}`, not `{p}`",
                m.profile
            ));
        }
    }
    let profile = args
        .profile
        .clone()
        .or_else(|| recorded.as_ref().map(|(m, _)| m.profile.clone()))
        .unwrap_or_else(|| meta.default_profile().to_string());
    let config = recorded.as_ref().and_then(|(_, c)| c.clone());
    let data = args
        .data
        .clone()
        .or_else(|| config.as_ref().map(|c| c.data.clone()))
        .unwrap_or_else(|| "digits".into());
    let limit = args.limit.or_else(|| match args.split {
        SplitName::Test => config.as_ref().and_then(|c| c.limit_test),
        SplitName::Train => config.as_ref().and_then(|c| c.limit_train),
    });
    let device = parse_device(&args.device)?;
    crate::bench::configure_threads()?;
    let layout = match args.layout.or_else(|| config.as_ref().map(|c| c.layout)) {
        Some(layout) => layout,
        None => crate::layers::layout_from_env().map_err(|e| e.to_string())?,
    };
    crate::layers::set_layout(layout);
    let (train, test) = match args.split {
        SplitName::Test => open_data(&data, None, limit)?,
        SplitName::Train => open_data(&data, limit, None)?,
    };
    let ds = match args.split {
        SplitName::Test => test,
        SplitName::Train => train,
    };
    let vs = nn::VarStore::new(device);
    let model = build(&vs.root(), &profile).map_err(|e| e.to_string())?;
    check_fits(&ds, model.input_shape(), model.classes(), meta.name)?;
    let report = checkpoint::copy_into(&vs.variables(), &ckpt.tensors);
    if !report.is_complete() {
        return Err(format!(
            "checkpoint `{shown}` does not fit model `{}` (profile {profile}):\n{}",
            meta.name,
            report.describe().trim_end()
        ));
    }
    let result = try_evaluate(&model, &ds, args.batch_size, device).map_err(|e| e.to_string())?;
    write_outputs(&args, &result, model.classes() as usize)?;
    let split = match args.split {
        SplitName::Test => "test",
        SplitName::Train => "train",
    };
    let recorded_top1 = match args.split {
        SplitName::Test => recorded.as_ref().and_then(|(m, _)| m.test_top1),
        SplitName::Train => None,
    };
    let report = EvalReport {
        model: meta.name.to_string(),
        profile: profile.clone(),
        checkpoint: shown,
        data: data.clone(),
        split: split.to_string(),
        device: device_name(device),
        images: result.images,
        loss: result.loss,
        top1: result.top1,
        top5: result.top5,
        confusion: result.confusion.clone(),
        classes: ds.classes.clone(),
        per_class: result.per_class(),
        recorded_top1,
    };
    match args.format {
        Format::Json => println!("{}", report.to_json().map_err(|e| e.to_string())?),
        Format::Table => print!("{}", table(&report)),
    }
    Ok(())
}

/// `--predictions` and `--logits`: the top-1 prediction of every image,
/// one a line, and every image's `classes` logits, comma-separated, one
/// image a line (shortest exact decimal form).
fn write_outputs(args: &EvalArgs, result: &EvalResult, classes: usize) -> Result<(), String> {
    let write = |path: &PathBuf, text: String| {
        checkpoint::write_atomic(path, text.as_bytes())
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
    };
    if let Some(path) = &args.predictions {
        let text = result
            .predictions
            .iter()
            .map(|p| format!("{p}\n"))
            .collect();
        write(path, text)?;
    }
    if let Some(path) = &args.logits {
        let text = result
            .logits
            .chunks(classes.max(1))
            .map(|row| {
                let cells: Vec<String> = row.iter().map(f32::to_string).collect();
                cells.join(",") + "\n"
            })
            .collect();
        write(path, text)?;
    }
    Ok(())
}

fn table(r: &EvalReport) -> String {
    let mut out = format!(
        "{} (profile {}) on {} {} ({} images, {}), checkpoint {}\n",
        r.model, r.profile, r.data, r.split, r.images, r.device, r.checkpoint
    );
    let _ = writeln!(
        out,
        "top-1 {:.2} %   top-5 {:.2} %   loss {:.4}",
        r.top1, r.top5, r.loss
    );
    if let Some(rec) = r.recorded_top1 {
        let _ = writeln!(out, "recorded in the checkpoint: top-1 {rec:.2} %");
    }
    let width = r.classes.iter().map(|c| c.len()).max().unwrap_or(5).max(5);
    let _ = writeln!(
        out,
        "\nper class:\n{:<width$}  {:>6}  {:>8}",
        "class", "images", "top-1 %"
    );
    for (c, acc) in r.per_class.iter().enumerate() {
        let name = r.classes.get(c).map_or("?", String::as_str);
        let n: u64 = r.confusion[c].iter().sum();
        let acc = acc.map_or("-".to_string(), |a| format!("{a:.2}"));
        let _ = writeln!(out, "{name:<width$}  {n:>6}  {acc:>8}");
    }
    let _ = writeln!(out, "\nconfusion (rows: true class, columns: predicted):");
    let cell = r
        .confusion
        .iter()
        .flatten()
        .map(|v| v.to_string().len())
        .max()
        .unwrap_or(1)
        .max(3);
    let _ = write!(out, "{:<width$}", "");
    for c in 0..r.confusion.len() {
        let _ = write!(out, " {:>cell$}", c);
    }
    out.push('\n');
    for (c, row) in r.confusion.iter().enumerate() {
        let name = r.classes.get(c).map_or("?", String::as_str);
        let _ = write!(out, "{name:<width$}");
        for v in row {
            let _ = write!(out, " {v:>cell$}");
        }
        out.push('\n');
    }
    out
}
