//! Training and evaluation throughput of a model: its float profile against
//! a QAT profile (what `qatc bench` and the generated binaries' `bench`
//! subcommand report).
//!
//! Input: a model builder (the generated `Model::new`), the QAT profile's
//! name and a [`BenchConfig`]. Output: a [`BenchReport`] with, for each of
//! the two profiles, the median time of a training step and of an
//! evaluation forward pass, the images per second they give, and the
//! QAT/float ratios.
//!
//! What is timed:
//! - a training step: forward in training mode, cross entropy plus
//!   [`alpha_penalty`], backward, and an SGD step (learning rate
//!   [`BENCH_LR`], momentum [`BENCH_MOMENTUM`], weight decay
//!   [`BENCH_WEIGHT_DECAY`], the seed's recipe) with one optimizer kept
//!   across steps, as in real training;
//! - an evaluation step: the forward pass in eval mode under `no_grad`.
//!
//! Both run on one fixed random batch (standard-normal images of the
//! model's input shape, uniform labels, drawn after `tch::manual_seed`), so
//! no data loading is timed. The two models are built in separate variable
//! stores, warmed up, and then timed in rounds (a float and a QAT training
//! step, a float and a QAT evaluation step), so that a slow phase of a
//! shared machine hits all four alike; medians, not means, are reported for
//! the same reason. On CUDA the device
//! is synchronised before a step's clock stops.

use crate::model::QatModel;
use crate::profile::UnknownProfile;
use crate::quant::alpha_penalty;
use std::fmt;
use std::time::Instant;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// The profile every generated model has: all bits 32 (nothing quantized).
pub const FLOAT_PROFILE: &str = "float";

/// Learning rate of a benchmark training step.
pub const BENCH_LR: f64 = 0.01;

/// SGD momentum of a benchmark training step (the seed's).
pub const BENCH_MOMENTUM: f64 = 0.9;

/// SGD weight decay of a benchmark training step (the seed's).
pub const BENCH_WEIGHT_DECAY: f64 = 5e-4;

/// Environment variable that sets the number of torch threads.
pub const THREADS_ENV: &str = "QATC_THREADS";

/// What to measure and where.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchConfig {
    /// Images per step.
    pub batch_size: i64,
    /// Timed steps per profile and phase (train, eval).
    pub steps: usize,
    /// Untimed steps per profile and phase before the timed ones.
    pub warmup: usize,
    /// Where the models and data live.
    pub device: Device,
    /// Seed of `tch::manual_seed` (initial weights and the batch).
    pub seed: i64,
}

impl Default for BenchConfig {
    /// Batch 128 (the seed's), 10 timed steps after 2 warm-up steps, CPU,
    /// seed 0.
    fn default() -> Self {
        Self {
            batch_size: 128,
            steps: 10,
            warmup: 2,
            device: Device::Cpu,
            seed: 0,
        }
    }
}

/// Timing of one phase (train or eval) of one profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Median milliseconds per step.
    pub ms_per_step: f64,
    /// Fastest step, in milliseconds.
    pub min_ms: f64,
    /// Images per second at the median step time.
    pub images_per_s: f64,
}

impl Timing {
    /// The timing of `samples` (seconds per step) at `batch` images a step.
    ///
    /// # Panics
    /// If `samples` is empty.
    pub fn from_samples(samples: &[f64], batch: i64) -> Self {
        assert!(!samples.is_empty(), "Timing: no samples");
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Self {
            ms_per_step: median * 1e3,
            min_ms: sorted[0] * 1e3,
            images_per_s: batch as f64 / median,
        }
    }
}

/// The measurements of one profile.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileBench {
    /// The profile's name.
    pub profile: String,
    /// Number of trainable parameters (clipping values included).
    pub params: i64,
    /// Training steps.
    pub train: Timing,
    /// Evaluation forward passes.
    pub eval: Timing,
    /// Loss of the last training step (a sanity check: finite).
    pub last_loss: f64,
}

/// Float against QAT: what [`compare`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// The model's name.
    pub model: String,
    /// Where it ran.
    pub device: Device,
    /// torch's intra-op thread count during the run.
    pub threads: i32,
    /// The configuration it ran with.
    pub config: BenchConfig,
    /// The float profile ([`FLOAT_PROFILE`]).
    pub float: ProfileBench,
    /// The QAT profile.
    pub qat: ProfileBench,
}

impl BenchReport {
    /// QAT training step time over float training step time (median over
    /// median); the target is at most 1.2.
    pub fn train_ratio(&self) -> f64 {
        self.qat.train.ms_per_step / self.float.train.ms_per_step
    }

    /// QAT evaluation step time over float evaluation step time.
    pub fn eval_ratio(&self) -> f64 {
        self.qat.eval.ms_per_step / self.float.eval.ms_per_step
    }
}

/// Why [`compare`] could not run.
#[derive(Debug, Clone, PartialEq)]
pub enum BenchError {
    /// A profile the model does not have (the QAT one, or `float`).
    UnknownProfile(UnknownProfile),
    /// A batch size below 1 or no timed steps.
    BadConfig(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::UnknownProfile(e) => e.fmt(f),
            BenchError::BadConfig(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for BenchError {}

impl From<UnknownProfile> for BenchError {
    fn from(e: UnknownProfile) -> Self {
        BenchError::UnknownProfile(e)
    }
}

/// One model under one profile, with its optimizer and its batch.
struct Runner<M> {
    model: M,
    vs: nn::VarStore,
    sgd: Option<nn::Optimizer>,
    xs: Tensor,
    labels: Tensor,
    last_loss: f64,
}

impl<M: QatModel> Runner<M> {
    fn new<F>(build: &F, profile: &str, config: &BenchConfig) -> Result<Self, BenchError>
    where
        F: Fn(&nn::Path, &str) -> Result<M, UnknownProfile>,
    {
        tch::manual_seed(config.seed);
        let vs = nn::VarStore::new(config.device);
        let model = build(&vs.root(), profile)?;
        let [c, h, w] = model.input_shape();
        let xs = Tensor::randn([config.batch_size, c, h, w], (Kind::Float, config.device));
        let labels = Tensor::randint(
            model.classes(),
            [config.batch_size],
            (Kind::Int64, config.device),
        );
        let sgd = if vs.trainable_variables().is_empty() {
            None
        } else {
            let sgd = nn::Sgd {
                momentum: BENCH_MOMENTUM,
                wd: BENCH_WEIGHT_DECAY,
                ..Default::default()
            }
            .build(&vs, BENCH_LR)
            .expect("bench: cannot build the SGD optimizer");
            Some(sgd)
        };
        Ok(Self {
            model,
            vs,
            sgd,
            xs,
            labels,
            last_loss: f64::NAN,
        })
    }

    /// One timed training step, in seconds.
    fn train_step(&mut self) -> f64 {
        let start = Instant::now();
        let logits = self.model.forward_t(&self.xs, true);
        let cross_entropy = logits.cross_entropy_for_logits(&self.labels);
        let loss = match alpha_penalty(self.model.clip_values()) {
            Some(penalty) => cross_entropy + penalty,
            None => cross_entropy,
        };
        if let Some(sgd) = self.sgd.as_mut() {
            sgd.backward_step(&loss);
        }
        synchronize(self.vs.device());
        let elapsed = start.elapsed().as_secs_f64();
        self.last_loss = loss.double_value(&[]);
        elapsed
    }

    /// One timed evaluation forward pass, in seconds.
    fn eval_step(&self) -> f64 {
        let start = Instant::now();
        let logits = tch::no_grad(|| self.model.forward_t(&self.xs, false));
        synchronize(self.vs.device());
        let elapsed = start.elapsed().as_secs_f64();
        drop(logits);
        elapsed
    }

    fn params(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }
}

fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// Times training and evaluation steps of the model under
/// [`FLOAT_PROFILE`] and under `qat_profile` (see the module doc for what
/// a step is and how it is timed).
///
/// `build` is the generated `Model::new`: it builds the model under a
/// profile name in a variable path.
///
/// # Errors
/// If the model has no profile `qat_profile` or [`FLOAT_PROFILE`], or the
/// configuration has a batch size below 1 or no timed steps.
///
/// # Panics
/// On a libtorch error (e.g. out of memory on the device).
pub fn compare<M, F>(
    build: F,
    qat_profile: &str,
    config: &BenchConfig,
) -> Result<BenchReport, BenchError>
where
    M: QatModel,
    F: Fn(&nn::Path, &str) -> Result<M, UnknownProfile>,
{
    if config.batch_size < 1 {
        return Err(BenchError::BadConfig(format!(
            "batch size must be at least 1, got {}",
            config.batch_size
        )));
    }
    if config.steps == 0 {
        return Err(BenchError::BadConfig(
            "at least one timed step is needed".into(),
        ));
    }
    let mut float = Runner::new(&build, FLOAT_PROFILE, config)?;
    let mut qat = Runner::new(&build, qat_profile, config)?;

    // Rounds of a float and a QAT training step and a float and a QAT
    // evaluation step: a busy phase of a shared machine hits all four alike.
    let mut train = (Vec::new(), Vec::new());
    let mut eval = (Vec::new(), Vec::new());
    for i in 0..config.warmup + config.steps {
        let (tf, tq) = (float.train_step(), qat.train_step());
        let (ef, eq) = (float.eval_step(), qat.eval_step());
        if i >= config.warmup {
            train.0.push(tf);
            train.1.push(tq);
            eval.0.push(ef);
            eval.1.push(eq);
        }
    }

    let batch = config.batch_size;
    let result = |runner: &Runner<M>, profile: &str, train: &[f64], eval: &[f64]| ProfileBench {
        profile: profile.to_owned(),
        params: runner.params(),
        train: Timing::from_samples(train, batch),
        eval: Timing::from_samples(eval, batch),
        last_loss: runner.last_loss,
    };
    Ok(BenchReport {
        model: qat.model.name().to_owned(),
        device: config.device,
        threads: tch::get_num_threads(),
        config: *config,
        float: result(&float, FLOAT_PROFILE, &train.0, &eval.0),
        qat: result(&qat, qat_profile, &train.1, &eval.1),
    })
}

/// Where the torch thread count of [`configure_threads`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadSource {
    /// The [`THREADS_ENV`] environment variable.
    Env,
    /// The number of cores this process may use.
    Cores,
}

/// The torch intra-op thread count and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads {
    /// Number of threads.
    pub count: i32,
    /// Where the number came from.
    pub source: ThreadSource,
}

impl fmt::Display for Threads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.count == 1 { "" } else { "s" };
        match self.source {
            ThreadSource::Env => write!(f, "{} thread{plural} (from {THREADS_ENV})", self.count),
            ThreadSource::Cores => write!(
                f,
                "{} thread{plural} (one per core; set {THREADS_ENV} to change)",
                self.count
            ),
        }
    }
}

/// Sets torch's intra-op thread count (`tch::set_num_threads`): the value
/// of [`THREADS_ENV`] if set, else the number of cores this process may use
/// (`std::thread::available_parallelism`). libtorch's own default can differ
/// from that (e.g. under a CPU quota), and oversubscribed threads make a
/// shared machine's timings erratic.
///
/// # Errors
/// If [`THREADS_ENV`] is set to anything but a positive integer.
pub fn configure_threads() -> Result<Threads, String> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let env = std::env::var(THREADS_ENV).ok();
    let threads = choose_threads(env.as_deref(), cores)?;
    tch::set_num_threads(threads.count);
    Ok(threads)
}

/// [`configure_threads`]'s choice, given the variable's value and the cores.
fn choose_threads(env: Option<&str>, cores: usize) -> Result<Threads, String> {
    match env {
        Some(text) => match text.trim().parse::<i32>() {
            Ok(count) if count > 0 => Ok(Threads {
                count,
                source: ThreadSource::Env,
            }),
            _ => Err(format!(
                "{THREADS_ENV}=`{text}` is not a positive number of threads"
            )),
        },
        None => Ok(Threads {
            count: i32::try_from(cores.max(1)).unwrap_or(i32::MAX),
            source: ThreadSource::Cores,
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layers::{QConv2d, QConv2dConfig, QLinear, QLinearConfig};
    use crate::ops;
    use crate::quant::{ActQuant, ActSpec};
    use tch::nn::{Module, ModuleT};

    /// conv -> activation quantizer -> pool -> fc, with two profiles.
    #[derive(Debug)]
    pub(crate) struct Tiny {
        conv: QConv2d,
        act: ActQuant,
        fc: QLinear,
    }

    pub(crate) fn tiny(path: &nn::Path, profile: &str) -> Result<Tiny, UnknownProfile> {
        let (w_bit, act) = match profile {
            "w4a4" => (4, ActSpec::pact(4, 4.0)),
            "float" => (32, ActSpec::pact(32, 4.0)),
            _ => {
                return Err(UnknownProfile {
                    name: profile.to_owned(),
                    known: vec!["w4a4".into(), "float".into()],
                })
            }
        };
        let config = QConv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Tiny {
            conv: QConv2d::new(&(path / "conv"), 3, 8, 3, w_bit, config),
            act: ActQuant::from_spec(&(path / "act"), act),
            fc: QLinear::new(&(path / "fc"), 8, 10, w_bit, QLinearConfig::default()),
        })
    }

    impl ModuleT for Tiny {
        fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
            let x = self.act.forward(&self.conv.forward(xs));
            self.fc
                .forward(&ops::flatten(&ops::adaptive_avg_pool2d(&x, 1)))
        }
    }

    impl QatModel for Tiny {
        fn name(&self) -> &'static str {
            "tiny"
        }
        fn input_shape(&self) -> [i64; 3] {
            [3, 8, 8]
        }
        fn classes(&self) -> i64 {
            10
        }
        fn clip_values(&self) -> Vec<&Tensor> {
            self.act.alpha().into_iter().collect()
        }
    }

    fn small() -> BenchConfig {
        BenchConfig {
            batch_size: 4,
            steps: 3,
            warmup: 1,
            ..Default::default()
        }
    }

    #[test]
    fn compares_float_and_qat() {
        let report = compare(tiny, "w4a4", &small()).unwrap();
        assert_eq!(report.model, "tiny");
        assert_eq!(report.device, Device::Cpu);
        assert_eq!(report.float.profile, "float");
        assert_eq!(report.qat.profile, "w4a4");
        // Same structure, same parameters (the clipping value exists in both).
        assert_eq!(report.float.params, report.qat.params);
        assert_eq!(report.qat.params, 8 * 3 * 9 + 1 + 8 * 10 + 10);
        for p in [&report.float, &report.qat] {
            for t in [p.train, p.eval] {
                assert!(t.ms_per_step > 0.0 && t.min_ms <= t.ms_per_step, "{t:?}");
                let want = 4.0 / (t.ms_per_step / 1e3);
                assert!((t.images_per_s - want).abs() < 1e-6 * want, "{t:?}");
            }
            assert!(p.last_loss.is_finite(), "{p:?}");
        }
        let ratio = report.train_ratio();
        assert!(
            (ratio - report.qat.train.ms_per_step / report.float.train.ms_per_step).abs() < 1e-12
        );
        assert!(report.eval_ratio() > 0.0);
        assert!(report.threads >= 1);
    }

    #[test]
    fn unknown_profiles_and_bad_configs_are_errors() {
        let err = compare(tiny, "w2a2", &small()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown profile `w2a2`; known: w4a4, float"
        );
        let no_float = |path: &nn::Path, profile: &str| {
            if profile == "float" {
                tiny(path, "nope")
            } else {
                tiny(path, profile)
            }
        };
        assert!(matches!(
            compare(no_float, "w4a4", &small()),
            Err(BenchError::UnknownProfile(_))
        ));
        for config in [
            BenchConfig {
                batch_size: 0,
                ..small()
            },
            BenchConfig {
                steps: 0,
                ..small()
            },
        ] {
            assert!(matches!(
                compare(tiny, "w4a4", &config),
                Err(BenchError::BadConfig(_))
            ));
        }
    }

    #[test]
    fn timing_is_the_median() {
        let t = Timing::from_samples(&[0.3, 0.1, 0.2], 10);
        assert!((t.ms_per_step - 200.0).abs() < 1e-9);
        assert!((t.min_ms - 100.0).abs() < 1e-9);
        assert!((t.images_per_s - 50.0).abs() < 1e-9);
        let t = Timing::from_samples(&[0.4, 0.1, 0.2, 0.3], 1);
        assert!((t.ms_per_step - 250.0).abs() < 1e-9);
    }

    #[test]
    fn thread_count_from_env_or_cores() {
        assert_eq!(
            choose_threads(None, 2),
            Ok(Threads {
                count: 2,
                source: ThreadSource::Cores
            })
        );
        assert_eq!(choose_threads(None, 0).unwrap().count, 1);
        assert_eq!(
            choose_threads(Some("3"), 2),
            Ok(Threads {
                count: 3,
                source: ThreadSource::Env
            })
        );
        for bad in ["0", "-1", "two", ""] {
            let err = choose_threads(Some(bad), 2).unwrap_err();
            assert!(err.contains(THREADS_ENV), "{err}");
        }
        let shown = Threads {
            count: 1,
            source: ThreadSource::Cores,
        }
        .to_string();
        assert_eq!(shown, "1 thread (one per core; set QATC_THREADS to change)");
    }
}
