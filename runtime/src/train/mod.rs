//! Training and evaluation of a generated model: what `qatc train` and
//! `qatc eval` run (through the model binary's `train` / `eval`).
//!
//! - [`options`]: the settings (flags, YAML config, the seed's defaults);
//! - [`optim`]: SGD and Adam with saveable state;
//! - [`schedule`]: per-epoch learning-rate schedules;
//! - [`batch`]: the helpers training and evaluation share (a batch as
//!   tensors, top-1 hits, opening `--data`, checking it fits the model);
//! - [`checkpoint`]: atomic safetensors checkpoints with metadata;
//! - [`metrics`]: `metrics.jsonl` / `metrics.csv`;
//! - [`tensorboard`]: TensorBoard event files;
//! - [`run`]: the training loop (progress, evaluation each epoch, best and
//!   latest checkpoints, exact resume, Ctrl-C, NaN stop), in the steps of
//!   the private `session` module;
//! - [`parallel`]: data-parallel training over c10d (`--nproc`, the
//!   launcher variables, `--sync-bn`);
//! - [`eval`](mod@eval): top-1 / top-5, per-class accuracy and confusion
//!   matrix of a checkpoint.
//!
//! Every random draw of a run is a function of the seed: the initial
//! weights (`tch::manual_seed(seed)` before the model is built), the data
//! order and the augmentation (`qatc_data`, from seed, epoch and step). A
//! checkpoint therefore needs only the weights, the optimizer state, the
//! epoch and the step to continue exactly.
//!
//! Module dependencies run one way: `run` -> `session` -> `eval` ->
//! `batch` / `checkpoint`; what both loops need sits in `batch` and
//! `checkpoint`, never in `run`. The records a run writes (`run.json`,
//! the metrics, checkpoint metadata) are typed in `qatc_records`.

pub mod batch;
pub mod checkpoint;
pub mod eval;
pub mod metrics;
pub mod optim;
pub mod options;
pub mod parallel;
mod progress;
pub mod run;
pub mod schedule;
mod session;
pub mod tensorboard;

pub use batch::{batch_tensors, check_fits, open_data, top1_hits};
