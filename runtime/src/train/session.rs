//! The steps of a training run, in the order `run::train` takes them:
//!
//! 1. set-up: [`Trainee::build`] (device, threads, layout, data, the model
//!    under the run's seed, the optimizer), then [`Trainee::resume`] (the
//!    run's checkpoint and records) or [`Trainee::init_from`] (fine-tuning
//!    weights), then [`RunFiles::open`] (`run.json`, TensorBoard);
//! 2. one epoch: [`Session::train_epoch`], which saves and stops on Ctrl-C
//!    (or the test hook) and stops on a non-finite loss;
//! 3. evaluation and checkpointing: [`Session::end_epoch`] (test split,
//!    record, TensorBoard, metrics, best then latest checkpoint);
//! 4. finish: [`Session::finish`], the closing summary.
//!
//! Each step keeps the order of effects of the loop it was cut from (what
//! is written when, what is printed when), so exact resume and the
//! kill-anywhere guarantees of `run`'s module docs are unchanged.

use super::batch::{batch_tensors, check_fits, open_data, top1_hits};
use super::checkpoint::{self, check_same_model, CheckpointMeta, PartialEpoch, FORMAT};
use super::eval::try_evaluate;
use super::metrics::{self, EpochRecord};
use super::optim::Optimizer;
use super::options::TrainConfig;
use super::progress::Progress;
use super::tensorboard::EventWriter;
use crate::bench::Threads;
use crate::device::{device_name, parse_device};
use crate::dist::{DistError, ProcessGroup};
use crate::model::{ModelMeta, QatModel};
use crate::profile::UnknownProfile;
use crate::quant::{alpha_penalty_with, ALPHA_VAR};
use qatc_data::{BatchConfig, Dataset, Loader, Shard};
use qatc_records::run_dir::{BEST, LATEST, METRICS_JSONL, PREVIOUS, RUN_JSON};
use qatc_records::RunInfo;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Device, Reduction, Tensor};

/// The model being trained, its optimizer and its data.
pub(super) struct Trainee<M> {
    model: M,
    /// Owns the variables `model` and `vars` share.
    _vs: nn::VarStore,
    /// Every variable by name (what checkpoints hold).
    vars: HashMap<String, Tensor>,
    opt: Optimizer,
    device: Device,
    threads: Threads,
    train_set: Arc<Dataset>,
    test_set: Arc<Dataset>,
}

/// Where a run stands: the position to train from, the best test top-1 so
/// far and the epochs' records.
#[derive(Default)]
pub(super) struct Position {
    /// Epochs completed.
    pub(super) epoch: usize,
    /// Steps done in the next epoch (a run interrupted mid-epoch).
    pub(super) step: usize,
    /// The running sums of those steps.
    pub(super) partial: PartialEpoch,
    /// Best test top-1 and its epoch.
    pub(super) best: Option<(f64, usize)>,
    pub(super) records: Vec<EpochRecord>,
}

impl<M: QatModel> Trainee<M> {
    /// Set-up: the device, torch threads and layout of `config`, its data,
    /// and the model built under its seed and profile with a fresh
    /// optimizer.
    pub(super) fn build<F>(
        meta: &ModelMeta,
        build: &F,
        config: &TrainConfig,
    ) -> Result<Self, String>
    where
        F: Fn(&nn::Path, &str) -> Result<M, UnknownProfile>,
    {
        let device = parse_device(&config.device)?;
        let threads = crate::bench::configure_threads()?;
        crate::layers::set_layout(config.layout);
        let (train_set, test_set) = open_data(&config.data, config.limit_train, config.limit_test)?;
        tch::manual_seed(config.seed as i64);
        let vs = nn::VarStore::new(device);
        let model = build(&vs.root(), &config.profile).map_err(|e| e.to_string())?;
        check_fits(&train_set, model.input_shape(), model.classes(), meta.name)?;
        let vars = vs.variables();
        let params: Vec<(String, Tensor)> = vars
            .iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        let opt = Optimizer::new(config.optimizer.clone(), params);
        Ok(Trainee {
            model,
            _vs: vs,
            vars,
            opt,
            device,
            threads,
            train_set,
            test_set,
        })
    }

    /// Set-up of `--resume`: the weights and optimizer state of `ckpt` (the
    /// run's latest checkpoint), which must come from this model and
    /// profile, and the run's records up to its epoch.
    pub(super) fn resume(
        &mut self,
        meta: &ModelMeta,
        config: &TrainConfig,
        run_dir: &Path,
        ckpt: &checkpoint::Checkpoint,
    ) -> Result<Position, String> {
        let m = ckpt.meta.as_ref().ok_or_else(|| {
            format!(
                "`{}` has no qatc metadata: not a training checkpoint",
                ckpt.path.display()
            )
        })?;
        check_same_model(m, meta, &ckpt.path)?;
        if m.profile != config.profile {
            return Err(format!(
                "`{}` was trained under profile `{}`, not `{}`",
                ckpt.path.display(),
                m.profile,
                config.profile
            ));
        }
        let report = checkpoint::copy_into(&self.vars, &ckpt.tensors);
        if !report.is_complete() {
            return Err(format!(
                "`{}` does not fit the model:\n{}",
                ckpt.path.display(),
                report.describe().trim_end()
            ));
        }
        let state = ckpt.optimizer.iter();
        self.opt
            .load_state(
                state.map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
                m.optimizer_steps,
            )
            .map_err(|e| format!("`{}`: {e}", ckpt.path.display()))?;
        let mut records = metrics::read_jsonl(&run_dir.join(METRICS_JSONL))?;
        records.retain(|r| r.epoch <= m.epoch);
        eprintln!(
            "resuming {} at epoch {} step {} (of {} epochs)",
            run_dir.display(),
            m.epoch + 1,
            m.step,
            config.epochs
        );
        Ok(Position {
            epoch: m.epoch,
            step: m.step,
            partial: m.partial.unwrap_or_default(),
            best: m.best_top1.zip(m.best_epoch),
            records,
        })
    }

    /// Set-up of a rank of `group`: checks that every rank trains the same
    /// model, profile, settings (not the device or the data path, which
    /// may differ by machine; the data's size must not) from the same
    /// position, then overwrites every variable and the optimizer state
    /// with rank 0's.
    pub(super) fn start_together(
        &mut self,
        group: &ProcessGroup,
        meta: &ModelMeta,
        config: &TrainConfig,
        position: &Position,
    ) -> Result<(), DistError> {
        let mut settings = serde_json::to_value(config).unwrap_or_default();
        if let Some(o) = settings.as_object_mut() {
            o.remove("device");
            o.remove("data");
        }
        let state: Vec<String> = self.opt.state().into_iter().map(|(n, _)| n).collect();
        let text = format!(
            "model {}\nspec hash {}\nprofile {}\ntrain images {}, test images {}\nsettings {settings}\nposition: epoch {} step {}, optimizer steps {}\noptimizer state {}\n",
            meta.name,
            meta.spec_hash,
            config.profile,
            self.train_set.len(),
            self.test_set.len(),
            position.epoch,
            position.step,
            self.opt.steps,
            state.join(",")
        );
        group.check_same("model, profile, settings or position", &text)?;
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort();
        let vars: Vec<Tensor> = names
            .iter()
            .map(|n| self.vars[*n].shallow_clone())
            .collect();
        group.broadcast_all(&vars, 0)?;
        let state: Vec<Tensor> = self.opt.state().into_iter().map(|(_, t)| t).collect();
        group.broadcast_all(&state, 0)
    }

    /// Set-up of `--init`: the tensors of the checkpoint `init` whose names
    /// and shapes match, reported; none matching is an error.
    pub(super) fn init_from(
        &mut self,
        meta: &ModelMeta,
        config: &TrainConfig,
        init: &Path,
    ) -> Result<(), String> {
        let ckpt = checkpoint::load(init)?;
        if let Some(m) = &ckpt.meta {
            if m.model != meta.name {
                eprintln!(
                    "note: `{}` is a checkpoint of model `{}`; loading the tensors whose names and shapes match",
                    init.display(),
                    m.model
                );
            }
        }
        let report = checkpoint::copy_into(&self.vars, &ckpt.tensors);
        eprintln!(
            "init: loaded {} of {} tensors from {}",
            report.loaded.len(),
            self.vars.len(),
            init.display()
        );
        if !report.is_complete() {
            eprint!(
                "init: not loaded (kept their initial values):\n{}",
                report.describe()
            );
        }
        if report.loaded.is_empty() {
            return Err(format!(
                "`{}` shares no tensor with model `{}` (profile {}): nothing to fine-tune from",
                init.display(),
                meta.name,
                config.profile
            ));
        }
        Ok(())
    }
}

/// The run directory and this session's TensorBoard event file (`None`:
/// a rank other than 0, which writes nothing).
pub(super) struct RunFiles {
    dir: PathBuf,
    tb: Option<EventWriter>,
}

fn tb_err(e: std::io::Error) -> String {
    format!("cannot write the TensorBoard event file: {e}")
}

impl RunFiles {
    /// Set-up of the run directory: made if new, `run.json` (re)written
    /// with the run's settings, a new TensorBoard event file; nothing
    /// unless `write` (ranks other than 0).
    pub(super) fn open(
        meta: &ModelMeta,
        config: &TrainConfig,
        dir: PathBuf,
        write: bool,
    ) -> Result<Self, String> {
        if !write {
            return Ok(RunFiles { dir, tb: None });
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create run directory `{}`: {e}", dir.display()))?;
        let info = RunInfo {
            model: meta.name.into(),
            profile: config.profile.clone(),
            spec: meta.spec.into(),
            spec_hash: meta.spec_hash.into(),
            data: config.data.clone(),
            config: config.clone(),
        };
        let json = info.to_json().map_err(|e| e.to_string())?;
        let path = dir.join(RUN_JSON);
        checkpoint::write_atomic(&path, json.as_bytes())
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
        let tb = EventWriter::create(&dir).map_err(|e| {
            format!(
                "cannot create a TensorBoard event file in `{}`: {e}",
                dir.display()
            )
        })?;
        Ok(RunFiles { dir, tb: Some(tb) })
    }
}

/// What training an epoch ended with.
pub(super) enum EpochEnd {
    /// Stopped mid-epoch on request, after saving `latest`.
    Interrupted,
    /// Every step done: the sums for the epoch's record.
    Trained(TrainedEpoch),
}

/// An epoch's training, for its record.
pub(super) struct TrainedEpoch {
    lr: f64,
    sums: PartialEpoch,
    /// When this session started the epoch (the epoch's time includes its
    /// evaluation).
    started: Instant,
    train_seconds: f64,
    data_wait: f64,
    /// Seconds in the gradient all-reduce and the steps they were over.
    comm: (f64, usize),
}

/// A training run under way: the steps after set-up.
pub(super) struct Session<'a, M> {
    pub(super) meta: &'a ModelMeta,
    pub(super) config: TrainConfig,
    /// `config` as the checkpoints record it.
    pub(super) config_json: serde_json::Value,
    pub(super) trainee: Trainee<M>,
    pub(super) files: RunFiles,
    pub(super) position: Position,
    /// Set by Ctrl-C.
    pub(super) stop: &'a AtomicBool,
    /// The test hook `--stop-after`: steps of this session.
    pub(super) stop_after: Option<usize>,
    /// The test hook `--dump-steps`: where every step's variables go.
    pub(super) dump_steps: Option<PathBuf>,
    /// Training steps taken in this session.
    pub(super) session_steps: usize,
    /// The group of a data-parallel run (`None`: one process).
    pub(super) group: Option<Rc<ProcessGroup>>,
}

/// A step's results over the whole batch (all ranks).
struct StepResult {
    /// The mean cross-entropy of the batch.
    ce: f64,
    /// Top-1 hits and images of the batch.
    hits: u64,
    seen: u64,
    /// The loss (mean cross-entropy plus the clipping penalty).
    loss: f64,
    /// A stop asked on any rank.
    stop: bool,
    /// Seconds in the step's all-reduce (0 alone).
    comm: f64,
}

impl<M: QatModel> Session<'_, M> {
    /// Rank 0 (or the only process): the one that evaluates, writes the
    /// run directory and shows progress.
    fn is_root(&self) -> bool {
        self.group.as_ref().is_none_or(|g| g.rank() == 0)
    }

    /// Whether any rank asked to stop (`stop` on this one).
    fn any_stop(&self, stop: bool) -> Result<bool, String> {
        let Some(g) = &self.group else {
            return Ok(stop);
        };
        let mut t = Tensor::from_slice(&[i64::from(stop)]);
        g.all_reduce_sum(&mut t).map_err(|e| e.to_string())?;
        Ok(t.int64_value(&[0]) > 0)
    }

    /// The line that opens a session: model, data, device, settings.
    pub(super) fn announce(&self) {
        if !self.is_root() {
            return;
        }
        let (c, t) = (&self.config, &self.trainee);
        if c.world_size > 1 {
            eprintln!(
                "{} processes (Gloo): global batch {}, {} per process, {} BatchNorm statistics",
                c.world_size,
                c.batch_size,
                c.batch_size / c.world_size,
                if c.sync_bn {
                    "synchronised (whole-batch)"
                } else {
                    "per-process"
                }
            );
        }
        eprintln!(
            "training {} (profile {}) on {} ({} train / {} test images) on {}, {} torch thread(s), {} layout: {} epochs, batch {}, lr {} {:?}, {:?}; run dir {}",
            self.meta.name,
            c.profile,
            t.train_set.name,
            t.train_set.len(),
            t.test_set.len(),
            device_name(t.device),
            t.threads.count,
            crate::layers::layout(),
            c.epochs,
            c.batch_size,
            c.lr,
            c.schedule,
            c.optimizer,
            self.files.dir.display()
        );
    }

    /// Ctrl-C, or the test hook's step count reached.
    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.stop_after.is_some_and(|n| self.session_steps >= n)
    }

    /// Saves the checkpoint `name` in the run directory, after `epoch`
    /// epochs and `step` steps of the next, with the optimizer state where
    /// `with_optimizer`; `latest` keeps its predecessor as `previous`.
    fn save(
        &self,
        name: &str,
        (epoch, step): (usize, usize),
        with_optimizer: bool,
        test_top1: Option<f64>,
        partial: Option<PartialEpoch>,
    ) -> Result<(), String> {
        if !self.is_root() {
            return Ok(());
        }
        let (meta, t, best) = (self.meta, &self.trainee, self.position.best);
        let cm = CheckpointMeta {
            format: FORMAT.into(),
            model: meta.name.into(),
            profile: self.config.profile.clone(),
            spec: meta.spec.into(),
            spec_hash: meta.spec_hash.into(),
            epoch,
            step,
            optimizer_steps: t.opt.steps,
            test_top1,
            best_top1: best.map(|b| b.0),
            best_epoch: best.map(|b| b.1),
            config: self.config_json.clone(),
            partial,
        };
        let tensors: Vec<(String, Tensor)> = t
            .vars
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        let state = if with_optimizer {
            t.opt.state()
        } else {
            Vec::new()
        };
        let path = self.files.dir.join(name);
        if name == LATEST {
            checkpoint::keep_as(&path, &self.files.dir.join(PREVIOUS))?;
        }
        checkpoint::save(&path, &cm, &tensors, &state)
    }

    /// One epoch of training (`epoch` from 0), from the position's step;
    /// see [`EpochEnd`]. A non-finite loss is an error (nothing saved).
    pub(super) fn train_epoch(&mut self, epoch: usize) -> Result<EpochEnd, String> {
        let c = &self.config;
        let lr = c.schedule.lr(c.lr, epoch, c.epochs);
        let train_set = Arc::clone(&self.trainee.train_set);
        let batches = BatchConfig {
            start_step: self.position.step,
            // The seed's loader keeps the last, smaller batch.
            drop_last: false,
            shard: self.group.as_ref().map_or_else(Shard::default, |g| Shard {
                rank: g.rank(),
                world: g.world_size(),
            }),
            ..BatchConfig::train(&train_set, c.batch_size, c.seed, epoch as u64)
        };
        let mut loader = Loader::new(Arc::clone(&train_set), batches).map_err(|e| e.to_string())?;
        let steps = loader.steps();
        let progress = Progress::new(
            epoch + 1,
            c.epochs,
            steps,
            self.position.step,
            self.is_root(),
        );
        let started = Instant::now();
        let mut sums = self.position.partial;
        let mut step = self.position.step;
        let mut comm_seconds = 0.0;
        while let Some(batch) = loader.next() {
            let (xs, ys) = batch_tensors(&batch, train_set.shape, self.trainee.device);
            self.session_steps += 1;
            let r = match self.group.clone() {
                None => self.step_alone(&xs, &ys, lr),
                Some(g) => self
                    .step_together(&g, &xs, &ys, batch.whole_len, lr)
                    .map_err(|e| e.to_string())?,
            };
            comm_seconds += r.comm;
            if !r.loss.is_finite() {
                progress.finish();
                return Err(self.diverged(r.loss, epoch, step));
            }
            sums.loss_sum += r.ce * r.seen as f64;
            sums.correct += r.hits;
            sums.seen += r.seen;
            step += 1;
            self.dump(epoch, step)?;
            let stop = r.stop;
            let global = (epoch * steps + step) as i64;
            if let Some(tb) = &mut self.files.tb {
                tb.scalars(global, &[("train/loss", r.loss), ("train/lr", lr)])
                    .map_err(tb_err)?;
            }
            let elapsed = sums.seconds + started.elapsed().as_secs_f64();
            progress.update(
                step,
                &format!(
                    "loss {:.4} acc {:.2}% {:.0} img/s",
                    sums.loss_sum / sums.seen as f64,
                    100.0 * sums.correct as f64 / sums.seen as f64,
                    sums.seen as f64 / elapsed.max(1e-9)
                ),
            );
            if stop && step < steps {
                progress.finish();
                let mut p = sums;
                p.seconds = elapsed;
                p.data_wait_seconds += loader.waited().as_secs_f64();
                drop(loader);
                self.interrupt(epoch, (step, steps), p)?;
                return Ok(EpochEnd::Interrupted);
            }
        }
        let data_wait = sums.data_wait_seconds + loader.waited().as_secs_f64();
        drop(loader);
        let train_seconds = sums.seconds + started.elapsed().as_secs_f64();
        progress.finish();
        Ok(EpochEnd::Trained(TrainedEpoch {
            lr,
            sums,
            started,
            train_seconds,
            data_wait,
            comm: (comm_seconds, step - self.position.step),
        }))
    }

    /// One optimizer step at rate `lr` on a batch (one process). Where the
    /// loss is not finite, no step is taken.
    fn step_alone(&mut self, xs: &Tensor, ys: &Tensor, lr: f64) -> StepResult {
        let model = &self.trainee.model;
        let logits = model.forward_t(xs, true);
        let ce = logits.cross_entropy_for_logits(ys);
        let loss = match alpha_penalty_with(model.clip_values(), self.config.alpha_decay) {
            Some(penalty) => &ce + penalty,
            None => ce.shallow_clone(),
        };
        let loss_value = loss.double_value(&[]);
        if loss_value.is_finite() {
            let opt = &mut self.trainee.opt;
            opt.zero_grad();
            loss.backward();
            opt.step(lr);
        }
        StepResult {
            ce: ce.double_value(&[]),
            hits: top1_hits(&logits.detach(), ys) as u64,
            seen: xs.size()[0] as u64,
            loss: loss_value,
            stop: self.stop_requested(),
            comm: 0.0,
        }
    }

    /// One optimizer step at rate `lr` of a rank of `group` on its part
    /// `xs`, `ys` of a batch of `whole` images: its loss is its part's
    /// cross-entropy sum times the world size over `whole` (plus the
    /// clipping penalty), so the mean of the ranks' gradients, averaged in
    /// one bucket with the step's statistics and stop flags, is the whole
    /// batch's. Where the whole batch's loss is not finite, no step is
    /// taken (on any rank). The all-reduce's seconds go to `last_comm`.
    fn step_together(
        &mut self,
        group: &ProcessGroup,
        xs: &Tensor,
        ys: &Tensor,
        whole: usize,
        lr: f64,
    ) -> Result<StepResult, DistError> {
        let world = group.world_size() as f64;
        let model = &self.trainee.model;
        let logits = model.forward_t(xs, true);
        let ce_sum = logits.cross_entropy_loss::<Tensor>(ys, None, Reduction::Sum, -100, 0.0);
        let local = &ce_sum * (world / whole.max(1) as f64);
        let penalty = alpha_penalty_with(model.clip_values(), self.config.alpha_decay);
        let loss = match &penalty {
            Some(p) => &local + p,
            None => local,
        };
        let opt = &mut self.trainee.opt;
        opt.zero_grad();
        let backward = loss.f_backward();
        group.take_autograd_error()?;
        backward.map_err(|e| DistError::Config(format!("backward pass: {e}")))?;
        let stop = self.stop_requested();
        let hits = if xs.size()[0] > 0 {
            top1_hits(&logits.detach(), ys)
        } else {
            0
        };
        let stats = Tensor::from_slice(&[
            ce_sum.double_value(&[]),
            hits as f64,
            xs.size()[0] as f64,
            f64::from(u8::from(stop)),
        ]);
        let mut bucket = self.trainee.opt.grads();
        bucket.push(stats.shallow_clone());
        let started = Instant::now();
        group.all_reduce_mean(&mut bucket)?;
        let comm = started.elapsed().as_secs_f64();
        let stats = Vec::<f64>::try_from(&(stats * world)).unwrap_or_default();
        let ce = stats[0] / whole.max(1) as f64;
        let loss = ce + penalty.map_or(0.0, |p| p.double_value(&[]));
        if loss.is_finite() {
            self.trainee.opt.step(lr);
        }
        Ok(StepResult {
            ce,
            hits: stats[1].round() as u64,
            seen: stats[2].round() as u64,
            loss,
            stop: stats[3] > 0.5,
            comm,
        })
    }

    /// The test hook `--dump-steps`: every variable after `step` steps of
    /// `epoch` (from 0), on rank 0.
    fn dump(&self, epoch: usize, step: usize) -> Result<(), String> {
        let Some(dir) = self.dump_steps.as_ref().filter(|_| self.is_root()) else {
            return Ok(());
        };
        let path = dir.join(format!("step-{epoch}-{step}.safetensors"));
        let vars: Vec<(&str, Tensor)> = self
            .trainee
            .vars
            .iter()
            .map(|(n, t)| (n.as_str(), t.contiguous()))
            .collect();
        std::fs::create_dir_all(dir)
            .and_then(|()| Tensor::write_safetensors(&vars, &path).map_err(std::io::Error::other))
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
    }

    /// The error of a non-finite loss at `epoch`, `step` (from 0).
    fn diverged(&self, loss_value: f64, epoch: usize, step: usize) -> String {
        let latest = self.files.dir.join(LATEST);
        let last = if latest.exists() {
            format!("the last good checkpoint is {}", latest.display())
        } else {
            "no checkpoint was saved yet".to_string()
        };
        format!(
            "the loss is {loss_value} at epoch {} step {}: stopping ({last}); try a lower --lr",
            epoch + 1,
            step + 1
        )
    }

    /// Saves `latest` in the middle of `epoch`, `step` of `steps` steps
    /// done with the running sums `partial`, and says how to continue.
    fn interrupt(
        &self,
        epoch: usize,
        (step, steps): (usize, usize),
        partial: PartialEpoch,
    ) -> Result<(), String> {
        let test_top1 = self.position.records.last().map(|r| r.test_top1);
        self.save(LATEST, (epoch, step), true, test_top1, Some(partial))?;
        if !self.is_root() {
            return Ok(());
        }
        eprintln!(
            "interrupted at epoch {} step {step}/{steps}: saved {}; continue with --resume --out {}",
            epoch + 1,
            self.files.dir.join(LATEST).display(),
            self.files.dir.display()
        );
        Ok(())
    }

    /// Evaluation and checkpointing after `epoch` (from 0): the test split,
    /// the epoch's record (printed, to TensorBoard, to the metrics files),
    /// then `best` where the test top-1 improved, then `latest`. Returns
    /// whether a stop was requested before the last epoch (the caller
    /// reports the run as interrupted).
    pub(super) fn end_epoch(
        &mut self,
        epoch: usize,
        trained: TrainedEpoch,
    ) -> Result<bool, String> {
        let TrainedEpoch {
            lr,
            sums,
            started,
            train_seconds,
            data_wait,
            comm,
        } = trained;
        if !self.is_root() {
            // Rank 0 evaluates and writes; the others only move on.
            self.position.epoch = epoch + 1;
            self.position.step = 0;
            self.position.partial = PartialEpoch::default();
            let stop = self.any_stop(self.stop_requested())?;
            return Ok(stop && epoch + 1 < self.config.epochs);
        }
        if self.config.world_size > 1 && comm.1 > 0 {
            eprintln!(
                "all-reduce of the gradients: {:.2} ms per step ({:.1} % of the epoch's training time)",
                1e3 * comm.0 / comm.1 as f64,
                100.0 * comm.0 / (train_seconds - sums.seconds).max(1e-9)
            );
        }
        let t = &self.trainee;
        let batch = self.config.batch_size.max(256);
        let result =
            try_evaluate(&t.model, &t.test_set, batch, t.device).map_err(|e| e.to_string())?;
        let epoch_seconds = sums.seconds + started.elapsed().as_secs_f64();
        let seen = sums.seen.max(1) as f64;
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            train_loss: sums.loss_sum / seen,
            train_top1: 100.0 * sums.correct as f64 / seen,
            test_loss: result.loss,
            test_top1: result.top1,
            test_top5: result.top5,
            epoch_seconds,
            train_images_per_s: sums.seen as f64 / train_seconds.max(1e-9),
            data_wait_seconds: data_wait,
            clip: clip_values(&t.vars),
        };
        self.report(&record)?;
        self.position.records.push(record);
        metrics::write(&self.files.dir, &self.position.records)?;
        if self.position.best.is_none_or(|(b, _)| result.top1 > b) {
            self.position.best = Some((result.top1, epoch + 1));
            self.save(BEST, (epoch + 1, 0), false, Some(result.top1), None)?;
        }
        self.save(LATEST, (epoch + 1, 0), true, Some(result.top1), None)?;
        self.position.epoch = epoch + 1;
        self.position.step = 0;
        self.position.partial = PartialEpoch::default();
        let stop = self.any_stop(self.stop_requested())?;
        if stop && epoch + 1 < self.config.epochs {
            eprintln!(
                "interrupted after epoch {}: saved; continue with --resume --out {}",
                epoch + 1,
                self.files.dir.display()
            );
            return Ok(true);
        }
        Ok(false)
    }

    /// An epoch's record on stderr and in TensorBoard.
    fn report(&mut self, record: &EpochRecord) -> Result<(), String> {
        eprintln!(
            "epoch {}/{}: lr {:.5}  train loss {:.4} top-1 {:.2}%  test loss {:.4} top-1 {:.2}% top-5 {:.2}%  {:.1} s ({:.0} img/s, waited {:.2} s for data)",
            record.epoch,
            self.config.epochs,
            record.lr,
            record.train_loss,
            record.train_top1,
            record.test_loss,
            record.test_top1,
            record.test_top5,
            record.epoch_seconds,
            record.train_images_per_s,
            record.data_wait_seconds
        );
        let mut scalars: Vec<(String, f64)> = vec![
            ("epoch/train_loss".into(), record.train_loss),
            ("epoch/train_top1".into(), record.train_top1),
            ("epoch/test_loss".into(), record.test_loss),
            ("epoch/test_top1".into(), record.test_top1),
            ("epoch/test_top5".into(), record.test_top5),
            ("epoch/lr".into(), record.lr),
            ("epoch/seconds".into(), record.epoch_seconds),
        ];
        scalars.extend(record.clip.iter().map(|(s, v)| (format!("clip/{s}"), *v)));
        let scalars: Vec<(&str, f64)> = scalars.iter().map(|(t, v)| (t.as_str(), *v)).collect();
        let Some(tb) = &mut self.files.tb else {
            return Ok(());
        };
        tb.scalars(record.epoch as i64, &scalars).map_err(tb_err)?;
        tb.flush().map_err(tb_err)
    }

    /// The closing summary of a run that trained all its epochs.
    pub(super) fn finish(&self) {
        if !self.is_root() {
            return;
        }
        let records = &self.position.records;
        let (best_top1, best_epoch) = self.position.best.unwrap_or((0.0, 0));
        let mean_seconds =
            records.iter().map(|r| r.epoch_seconds).sum::<f64>() / records.len().max(1) as f64;
        eprintln!(
            "done: {} epochs, final test top-1 {:.2}%, best {best_top1:.2}% (epoch {best_epoch}), {mean_seconds:.1} s per epoch; {}",
            records.len(),
            records.last().map_or(0.0, |r| r.test_top1),
            self.files.dir.join(BEST).display()
        );
    }
}

/// The learnable clipping values by activation site.
fn clip_values(vars: &HashMap<String, Tensor>) -> BTreeMap<String, f64> {
    let suffix = format!(".{ALPHA_VAR}");
    vars.iter()
        .filter_map(|(name, t)| {
            name.strip_suffix(&suffix)
                .map(|site| (site.to_string(), t.double_value(&[])))
        })
        .collect()
}
