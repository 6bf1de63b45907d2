//! Training settings: the `train` flags, the same keys in a YAML file
//! (`--config`), and their resolution into one [`TrainConfig`].
//!
//! Precedence: command-line flag > `--config` file > (on `--resume`) the
//! run's recorded settings > the seed's recipe ([`TrainConfig::seed_recipe`]).
//! YAML keys are the flag names in snake case (`batch_size: 128`); an
//! unknown key is an error with its line and column.

use super::optim::OptimizerConfig;
use super::schedule::Schedule;
use crate::layers::Layout;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Cosine,
    Step,
    Multistep,
    Exp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

/// Every training setting, each optional: what one source (flags, a YAML
/// file, a run's record) says.
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainOptions {
    /// Data: `digits` (built in), a CIFAR-10 binary directory, an image
    /// folder (train/<class>/*, test/<class>/*) [default: digits].
    #[arg(long, value_name = "DIR")]
    pub data: Option<String>,
    /// Bit profile [default: the spec's first].
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Epochs [default: 300, the seed's].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per step [default: 128].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base learning rate [default: 0.01].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning-rate schedule [default: cosine].
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// Final rate of the cosine schedule [default: 0.001].
    #[arg(long)]
    pub lr_min: Option<f64>,
    /// Epochs between decays of the step schedule [default: 30].
    #[arg(long)]
    pub step_size: Option<usize>,
    /// Epochs at which the multistep schedule decays, comma-separated
    /// [default: 150,225].
    #[arg(long, value_delimiter = ',')]
    pub milestones: Option<Vec<usize>>,
    /// Decay factor of the step, multistep and exp schedules [default: 0.1
    /// for step and multistep, 0.95 for exp].
    #[arg(long)]
    pub gamma: Option<f64>,
    /// Optimizer [default: sgd].
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// SGD momentum [default: 0.9].
    #[arg(long)]
    pub momentum: Option<f64>,
    /// L2 weight decay of all weights [default: 5e-4].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// L2 penalty coefficient of the clipping values [default: 2e-4].
    #[arg(long)]
    pub alpha_decay: Option<f64>,
    /// Seed of the initial weights, the data order and the augmentation
    /// [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// auto, cpu, cuda or cuda:N [default: auto].
    #[arg(long)]
    pub device: Option<String>,
    /// Memory layout of the activations: channels-last (fast) or nchw (the
    /// seed's, whose rounding its golden tensors record) [default:
    /// QATC_LAYOUT, else channels-last].
    #[arg(long, value_enum)]
    pub layout: Option<Layout>,
    /// Train on N training images only, spread evenly over the split.
    #[arg(long, value_name = "N")]
    pub limit_train: Option<usize>,
    /// Evaluate on N test images only, spread evenly over the split.
    #[arg(long, value_name = "N")]
    pub limit_test: Option<usize>,
    /// Start from this checkpoint's weights (fine-tuning): tensors are
    /// matched by name; what is not loaded is reported.
    #[arg(long, value_name = "CKPT")]
    pub init: Option<PathBuf>,
    /// Run directory [default: runs/<model>-<profile>, numbered if taken].
    #[arg(long, value_name = "RUN_DIR")]
    pub out: Option<PathBuf>,
    /// Several processes: BatchNorm in training mode normalises with the
    /// statistics of the whole batch, all ranks' parts (PyTorch's
    /// SyncBatchNorm), instead of each rank's own part [default: false].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub sync_bn: Option<bool>,
}

macro_rules! merge_fields {
    ($hi:expr, $lo:expr, $($f:ident),*) => {
        TrainOptions { $($f: $hi.$f.or($lo.$f),)* }
    };
}

impl TrainOptions {
    /// `self`'s settings, the unset ones taken from `lower`.
    pub fn over(self, lower: TrainOptions) -> TrainOptions {
        merge_fields!(
            self,
            lower,
            data,
            profile,
            epochs,
            batch_size,
            lr,
            schedule,
            lr_min,
            step_size,
            milestones,
            gamma,
            optimizer,
            momentum,
            weight_decay,
            alpha_decay,
            seed,
            device,
            layout,
            limit_train,
            limit_test,
            init,
            out,
            sync_bn
        )
    }

    /// Reads a YAML training config.
    pub fn from_yaml_file(path: &Path) -> Result<TrainOptions, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config `{}`: {e}", path.display()))?;
        if text.trim().is_empty() {
            return Ok(TrainOptions::default());
        }
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The resolved settings of a run (recorded in `run.json` and checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub data: String,
    pub profile: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub schedule: Schedule,
    pub optimizer: OptimizerConfig,
    pub alpha_decay: f64,
    pub seed: u64,
    pub device: String,
    /// Runs recorded before the layout was a setting ran in NCHW.
    #[serde(default = "nchw")]
    pub layout: Layout,
    pub limit_train: Option<usize>,
    pub limit_test: Option<usize>,
    pub init: Option<PathBuf>,
    /// BatchNorm over the whole group's batch (`--sync-bn`).
    #[serde(default)]
    pub sync_bn: bool,
    /// Processes that trained the run (1: one process); set by the
    /// training loop, not an option. `--batch-size` is their global batch.
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

fn nchw() -> Layout {
    Layout::Nchw
}

impl TrainConfig {
    /// Resolves options against the seed's recipe; checks ranges.
    pub fn resolve(o: &TrainOptions, default_profile: &str) -> Result<TrainConfig, String> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(format!("--{name} must be a positive number, got {v}"))
            }
        };
        let non_negative = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(format!("--{name} must be a number >= 0, got {v}"))
            }
        };
        let epochs = o.epochs.unwrap_or(300);
        if epochs == 0 {
            return Err("--epochs must be at least 1".into());
        }
        let batch_size = o.batch_size.unwrap_or(128);
        if batch_size == 0 {
            return Err("--batch-size must be at least 1".into());
        }
        let lr = positive("lr", o.lr.unwrap_or(0.01))?;
        let kind = o.schedule.unwrap_or(ScheduleKind::Cosine);
        let schedule = match kind {
            ScheduleKind::Cosine => Schedule::Cosine {
                lr_min: non_negative("lr-min", o.lr_min.unwrap_or(0.001))?,
            },
            ScheduleKind::Step => Schedule::Step {
                step_size: match o.step_size.unwrap_or(30) {
                    0 => return Err("--step-size must be at least 1".into()),
                    n => n,
                },
                gamma: positive("gamma", o.gamma.unwrap_or(0.1))?,
            },
            ScheduleKind::Multistep => Schedule::Multistep {
                milestones: {
                    let mut m = o.milestones.clone().unwrap_or_else(|| vec![150, 225]);
                    m.sort_unstable();
                    m
                },
                gamma: positive("gamma", o.gamma.unwrap_or(0.1))?,
            },
            ScheduleKind::Exp => Schedule::Exp {
                gamma: positive("gamma", o.gamma.unwrap_or(0.95))?,
            },
        };
        let weight_decay = non_negative("weight-decay", o.weight_decay.unwrap_or(5e-4))?;
        let optimizer = match o.optimizer.unwrap_or(OptimizerKind::Sgd) {
            OptimizerKind::Sgd => OptimizerConfig::Sgd {
                momentum: non_negative("momentum", o.momentum.unwrap_or(0.9))?,
                weight_decay,
            },
            OptimizerKind::Adam => OptimizerConfig::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay,
            },
        };
        if matches!(o.limit_train, Some(0)) || matches!(o.limit_test, Some(0)) {
            return Err("--limit-train and --limit-test must be at least 1".into());
        }
        Ok(TrainConfig {
            data: o.data.clone().unwrap_or_else(|| "digits".into()),
            profile: o.profile.clone().unwrap_or_else(|| default_profile.into()),
            epochs,
            batch_size,
            lr,
            schedule,
            optimizer,
            alpha_decay: non_negative("alpha-decay", o.alpha_decay.unwrap_or(2e-4))?,
            seed: o.seed.unwrap_or(0),
            device: o.device.clone().unwrap_or_else(|| "auto".into()),
            layout: match o.layout {
                Some(layout) => layout,
                None => crate::layers::layout_from_env().map_err(|e| e.to_string())?,
            },
            limit_train: o.limit_train,
            limit_test: o.limit_test,
            init: o.init.clone(),
            sync_bn: o.sync_bn.unwrap_or(false),
            world_size: 1,
        })
    }

    /// The options that reproduce this config (a resumed run's base).
    pub fn as_options(&self) -> TrainOptions {
        let (schedule, lr_min, step_size, milestones, gamma) = match &self.schedule {
            Schedule::Cosine { lr_min } => (ScheduleKind::Cosine, Some(*lr_min), None, None, None),
            Schedule::Step { step_size, gamma } => (
                ScheduleKind::Step,
                None,
                Some(*step_size),
                None,
                Some(*gamma),
            ),
            Schedule::Multistep { milestones, gamma } => (
                ScheduleKind::Multistep,
                None,
                None,
                Some(milestones.clone()),
                Some(*gamma),
            ),
            Schedule::Exp { gamma } => (ScheduleKind::Exp, None, None, None, Some(*gamma)),
        };
        let (optimizer, momentum, weight_decay) = match &self.optimizer {
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
            } => (OptimizerKind::Sgd, Some(*momentum), *weight_decay),
            OptimizerConfig::Adam { weight_decay, .. } => {
                (OptimizerKind::Adam, None, *weight_decay)
            }
        };
        TrainOptions {
            data: Some(self.data.clone()),
            profile: Some(self.profile.clone()),
            epochs: Some(self.epochs),
            batch_size: Some(self.batch_size),
            lr: Some(self.lr),
            schedule: Some(schedule),
            lr_min,
            step_size,
            milestones,
            gamma,
            optimizer: Some(optimizer),
            momentum,
            weight_decay: Some(weight_decay),
            alpha_decay: Some(self.alpha_decay),
            seed: Some(self.seed),
            device: Some(self.device.clone()),
            layout: Some(self.layout),
            limit_train: self.limit_train,
            limit_test: self.limit_test,
            init: self.init.clone(),
            out: None,
            sync_bn: Some(self.sync_bn),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seed_recipe() {
        let c = TrainConfig::resolve(&TrainOptions::default(), "cfg-1").unwrap();
        assert_eq!((c.epochs, c.batch_size, c.lr), (300, 128, 0.01));
        assert_eq!(c.schedule, Schedule::Cosine { lr_min: 0.001 });
        assert_eq!(
            c.optimizer,
            OptimizerConfig::Sgd {
                momentum: 0.9,
                weight_decay: 5e-4
            }
        );
        assert_eq!((c.alpha_decay, c.profile.as_str()), (2e-4, "cfg-1"));
    }

    #[test]
    fn flags_override_the_file_and_round_trip() {
        let file: TrainOptions =
            serde_saphyr::from_str("epochs: 5\nlr: 0.1\nschedule: step\ngamma: 0.5\n").unwrap();
        let cli = TrainOptions {
            epochs: Some(7),
            ..Default::default()
        };
        let c = TrainConfig::resolve(&cli.over(file), "p").unwrap();
        assert_eq!((c.epochs, c.lr), (7, 0.1));
        assert_eq!(
            c.schedule,
            Schedule::Step {
                step_size: 30,
                gamma: 0.5
            }
        );
        assert_eq!(TrainConfig::resolve(&c.as_options(), "x").unwrap(), c);
    }

    #[test]
    fn bad_values_and_unknown_keys_are_errors() {
        let o = TrainOptions {
            lr: Some(-1.0),
            ..Default::default()
        };
        assert!(TrainConfig::resolve(&o, "p").unwrap_err().contains("--lr"));
        let err = serde_saphyr::from_str::<TrainOptions>("epochs: 5\nlearning_rate: 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("learning_rate"), "{err}");
    }
}
