//! qatc-int: integer-only inference of a qatc model: the plan (one module
//! per op), the engine (one module per kernel family), hardware simulation
//! and export. A backend over the compiler's IR (`qatc::ir`); free of tch.
//!
//! ```text
//! ir::Graph + Checkpoint --plan::build(PlanOptions)--> IntPlan
//!     --engine::run_image / evaluate--> logits, accuracy, accumulator report
//!     --export::write(c | npz | json)--> integer weights, multipliers, shifts
//! ```
//!
//! Input: a lowered graph (one spec and profile) and a trained checkpoint
//! in the model's own variable names. Output: an [`IntPlan`] and what runs
//! on it. The float side's definition is the runtime's fake quantizers
//! (`runtime/src/quant.rs`); [`Rounding::Trunc`] reproduces the seed's
//! integer pipeline (`INTforward`, seed reference section 5) bit for bit,
//! [`Rounding::Nearest`] rounds every constant and shift to nearest to stay
//! closer to fake quantization.
//!
//! Invariants: nothing here panics on user input; every problem is an
//! [`IntError`] that names the layer, tensor or format at fault. No
//! libtorch: the engine is pure Rust, integers throughout.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod checkpoint;
pub mod engine;
pub mod export;
pub mod fixed;
pub mod plan;
pub mod profile;
pub mod seed_sqrt;

pub use checkpoint::Checkpoint;
pub use engine::{AccStats, OverflowMode, SimOptions};
pub use fixed::{FixedFormat, Rounding};
pub use plan::{build, Formats, IntPlan, PlanOptions};

use serde::Serialize;

/// Everything the integer pipeline can reject.
#[derive(Debug, thiserror::Error)]
pub enum IntError {
    #[error("cannot read `{path}`: {reason}")]
    Io { path: String, reason: String },
    #[error("not a safetensors checkpoint: {0}")]
    NotSafetensors(String),
    /// A checkpoint that fails its digests (`qatc_integrity`).
    #[error("{0}")]
    Corrupt(String),
    /// The checkpoint's record of where it came from (header metadata or
    /// sidecar) is unreadable or names another spec; the message names the
    /// file.
    #[error(transparent)]
    Record(#[from] qatc_records::RecordError),
    #[error("`{file}` is a checkpoint of {found}, not of {expected}")]
    WrongModel {
        file: String,
        found: String,
        expected: String,
    },
    #[error(
        "the checkpoint does not fit model `{model}` (profile `{profile}`): {}",
        list_problems(missing, wrong)
    )]
    Tensors {
        model: String,
        profile: String,
        missing: Vec<String>,
        wrong: Vec<String>,
    },
    #[error("cannot import the checkpoint: {reason}")]
    Import { reason: String },
    #[error("layer `{layer}`: its {what} {value} does not fit {format}: widen the integer part, or clamp it as the seed does (`--saturate-constants`)")]
    FormatOverflow {
        layer: String,
        what: String,
        value: f64,
        format: FixedFormat,
    },
    #[error("layer `{layer}`: {reason}")]
    Unsupported { layer: String, reason: String },
    #[error("layer `{layer}`: clipping value {alpha} is not positive")]
    BadClip { layer: String, alpha: f64 },
    #[error("an input image must have {expected:?} = {} values, got {got}", expected.iter().product::<usize>())]
    BadInput { expected: Vec<usize>, got: usize },
    #[error("{reason}")]
    Options { reason: String },
}

fn list_problems(missing: &[String], wrong: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing {}", missing.join(", ")));
    }
    if !wrong.is_empty() {
        parts.push(format!("wrong {}", wrong.join("; ")));
    }
    parts.join("; ")
}

/// A labelled image collection the integer engine can evaluate: the lead's
/// data sets implement it in a few lines (`qatc_data::Dataset` does in
/// [`cli`]).
pub trait Images: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Writes image `i`, `[C, H, W]` floats normalised as for training.
    fn image(&self, i: usize, out: &mut [f32]);
    fn label(&self, i: usize) -> usize;
}

/// How [`evaluate`] runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvalOptions {
    pub sim: SimOptions,
    /// Worker threads; 0: one per core.
    pub threads: usize,
    /// Keep every image's logits in the report.
    pub keep_logits: bool,
}

/// Accumulator report of one conv/linear layer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerReport {
    pub layer: String,
    pub a_bits: u32,
    pub w_bits: u32,
    pub fan_in: usize,
    /// Worst case from the bit-widths alone (None: float input).
    pub worst_bits: Option<u32>,
    /// Worst case from the trained weights and the input range.
    pub worst_bits_weights: Option<u32>,
    /// Largest |accumulator| reached on the evaluated images.
    pub max_abs: i64,
    /// Bits (sign included) that largest value needs.
    pub max_bits: u32,
    pub overflows: u64,
    pub values: u64,
}

/// What [`evaluate`] found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IntReport {
    pub model: String,
    pub profile: String,
    pub rounding: Rounding,
    pub images: usize,
    pub correct: usize,
    /// Top-1 accuracy in percent.
    pub top1: f64,
    pub predictions: Vec<usize>,
    /// Per image (only with `keep_logits`).
    pub logits: Vec<Vec<f32>>,
    pub layers: Vec<LayerReport>,
    pub sim: SimOptions,
}

/// Runs the plan on every image: accuracy, predictions and the per-layer
/// accumulator report. The lead's `qatc eval --int` calls this. The
/// weights are converted first ([`engine::Weights::new`]); to run many
/// batches of one plan, convert them once and call [`evaluate_with`].
pub fn evaluate(
    plan: &IntPlan,
    images: &dyn Images,
    opts: EvalOptions,
) -> Result<IntReport, IntError> {
    evaluate_with(plan, &engine::Weights::new(plan), images, opts)
}

/// [`evaluate`] with the plan's weights already converted (`weights` must
/// be `engine::Weights::new(plan)`): what `qatc int bench` times, as ONNX
/// Runtime's benchmark times its runs of a session made before.
pub fn evaluate_with(
    plan: &IntPlan,
    weights: &engine::Weights,
    images: &dyn Images,
    opts: EvalOptions,
) -> Result<IntReport, IntError> {
    let n = images.len();
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|t| t.get())
            .unwrap_or(1)
    } else {
        opts.threads
    }
    .clamp(1, n.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    type Part = (Vec<(usize, usize, Vec<f32>)>, Vec<AccStats>);
    let run = || -> Result<Part, IntError> {
        let mut ws = engine::Workspace::new(plan);
        // Only logits and statistics are read: requantizations fused into
        // their convs (where `opts.sim` simulates no accumulator width).
        ws.fuse_requant(true);
        let mut img = vec![0f32; plan.input_len()];
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= n {
                break;
            }
            images.image(i, &mut img);
            let r = engine::run_image(plan, weights, &img, &mut ws, &opts.sim)?;
            let pred = engine::argmax(&r.logits);
            out.push((
                i,
                pred,
                if opts.keep_logits {
                    r.logits
                } else {
                    Vec::new()
                },
            ));
        }
        Ok((out, ws.stats))
    };
    let parts: Vec<Result<Part, IntError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(run)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(IntError::Options {
                        reason: "an engine thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut predictions = vec![0usize; n];
    let mut logits = if opts.keep_logits {
        vec![Vec::new(); n]
    } else {
        Vec::new()
    };
    let mut stats = vec![AccStats::default(); plan.layers.len()];
    for part in parts {
        let (rows, st) = part?;
        for (i, pred, l) in rows {
            predictions[i] = pred;
            if opts.keep_logits {
                logits[i] = l;
            }
        }
        for (a, b) in stats.iter_mut().zip(st) {
            a.max_abs = a.max_abs.max(b.max_abs);
            a.overflows += b.overflows;
            a.values += b.values;
        }
    }
    let correct = (0..n)
        .filter(|&i| predictions[i] == images.label(i))
        .count();
    Ok(IntReport {
        model: plan.model.clone(),
        profile: plan.profile.clone(),
        rounding: plan.options.rounding,
        images: n,
        correct,
        top1: if n == 0 {
            0.0
        } else {
            100.0 * correct as f64 / n as f64
        },
        predictions,
        logits,
        layers: layer_reports(plan, &stats),
        sim: opts.sim,
    })
}

/// How the integer engine's results compare with fake quantization's on the
/// same images (`qatc eval --int`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Agreement {
    pub images: usize,
    /// Fraction (0..=1) of images whose top-1 class is the same.
    pub same_top1: f64,
    /// Largest |integer logit - fake-quant logit| over all images and classes.
    pub max_logit_diff: f32,
}

/// Compares `report` (run with `keep_logits`) with fake-quant logits of the
/// same images in the same order; images beyond either list are ignored.
pub fn agreement(report: &IntReport, fake_quant_logits: &[Vec<f32>]) -> Agreement {
    let n = report.logits.len().min(fake_quant_logits.len());
    let mut same = 0;
    let mut max_diff = 0f32;
    for (a, b) in report.logits.iter().zip(fake_quant_logits) {
        same += usize::from(engine::argmax(a) == engine::argmax(b));
        for (x, y) in a.iter().zip(b) {
            max_diff = max_diff.max((x - y).abs());
        }
    }
    Agreement {
        images: n,
        same_top1: if n == 0 { 0.0 } else { same as f64 / n as f64 },
        max_logit_diff: max_diff,
    }
}

/// The accumulator report of every conv/linear layer from run statistics.
pub fn layer_reports(plan: &IntPlan, stats: &[AccStats]) -> Vec<LayerReport> {
    plan.layers
        .iter()
        .zip(stats)
        .filter_map(|(l, s)| match l {
            plan::Layer::Conv(c) => Some(LayerReport {
                layer: c.name.clone(),
                a_bits: c.a_bits,
                w_bits: c.w_bits,
                fan_in: c.fan_in,
                worst_bits: c.worst_bits,
                worst_bits_weights: c.worst_bits_weights,
                max_abs: s.max_abs,
                max_bits: if s.max_abs == 0 {
                    1
                } else {
                    65 - s.max_abs.leading_zeros()
                },
                overflows: s.overflows,
                values: s.values,
            }),
            _ => None,
        })
        .collect()
}
