//! The training loop: `train` of a model binary.
//!
//! A run directory holds `run.json` (model, profile, spec, spec hash, data,
//! resolved settings), `metrics.jsonl` / `metrics.csv`, a TensorBoard event
//! file per session, and the checkpoints `latest.safetensors` (with the
//! optimizer state, after every epoch and on interrupt) and
//! `best.safetensors` (best test top-1), each with a `.json` sidecar, and
//! `previous.safetensors`, the `latest` before the last one (a hard link
//! where possible), which `--resume` falls back to, loudly, when `latest`
//! fails its integrity check (see `checkpoint::verify`).
//!
//! Per epoch: train (random crop + flip as the data set prescribes, the
//! cross entropy plus the clipping values' L2 penalty, one optimizer step
//! per batch), evaluate on the test split, then write metrics, then the
//! best checkpoint, then the latest. A resumed run drops metrics after its
//! checkpoint's epoch, so whatever moment a run was killed at, resuming it
//! gives the records and weights of an uninterrupted run.
//!
//! Ctrl-C finishes the current step, saves `latest` (with the position in
//! the epoch and its running sums) and exits with status 130; `--resume`
//! continues from there. A non-finite loss stops the run (status 1) without
//! saving, so the last good checkpoint stays.

use super::checkpoint::{self, CheckpointMeta, PartialEpoch, FORMAT};
use super::eval::evaluate;
use super::metrics::{self, EpochRecord};
use super::optim::Optimizer;
use super::options::{TrainConfig, TrainOptions};
use super::tensorboard::EventWriter;
use super::{batch_tensors, check_fits, open_data, top1_hits};
use crate::device::{device_name, parse_device};
use crate::model::{ModelMeta, QatModel};
use crate::profile::UnknownProfile;
use crate::quant::{alpha_penalty_with, ALPHA_VAR};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use qatc_data::{BatchConfig, Loader};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Tensor};

/// Exit status of a run stopped by Ctrl-C (after saving).
pub const INTERRUPTED: u8 = 130;

/// The `train` command's flags.
#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    #[command(flatten)]
    pub options: TrainOptions,
    /// A YAML file of training settings (keys: the flag names in snake
    /// case); flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Continue the run in `--out RUN_DIR` from its latest checkpoint, with
    /// its recorded settings (flags given now override them, e.g. more
    /// `--epochs`).
    #[arg(long)]
    pub resume: bool,
    /// Act as if Ctrl-C came after this many training steps of this
    /// session (tests of interrupt and resume).
    #[arg(long, hide = true, value_name = "STEPS")]
    pub stop_after: Option<usize>,
}

/// `run.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    pub model: String,
    pub profile: String,
    pub spec: String,
    pub spec_hash: String,
    pub data: String,
    pub config: TrainConfig,
}

/// How a training run ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Finished,
    Interrupted,
}

static STOP: AtomicBool = AtomicBool::new(false);

fn install_ctrl_c() {
    // A second Ctrl-C while saving aborts at once.
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(INTERRUPTED));
        }
    });
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `runs/<model>-<profile>`, or with `-2`, `-3` ... if taken.
fn default_run_dir(model: &str, profile: &str) -> PathBuf {
    let base = format!("runs/{}-{}", sanitize(model), sanitize(profile));
    let mut dir = PathBuf::from(&base);
    let mut n = 2;
    while dir.exists() {
        dir = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    dir
}

fn read_run_info(dir: &Path) -> Result<RunInfo, String> {
    let path = dir.join("run.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot resume: `{}` is not a run directory ({e})",
            path.display()
        )
    })?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The progress display: an indicatif bar on a terminal, else a log line
/// every tenth of an epoch.
struct Progress {
    bar: Option<ProgressBar>,
    steps: usize,
    label: String,
}

impl Progress {
    fn new(epoch: usize, epochs: usize, steps: usize, start: usize) -> Self {
        let label = format!("epoch {epoch}/{epochs}");
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.clone());
            bar.set_position(start as u64);
            bar
        });
        Self { bar, steps, label }
    }

    fn update(&self, step: usize, msg: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(step as u64);
                bar.set_message(msg.to_string());
            }
            None => {
                let every = (self.steps / 10).max(1);
                if step % every == 0 || step == self.steps {
                    eprintln!("{} step {step}/{}: {msg}", self.label, self.steps);
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn clip_values(vars: &HashMap<String, Tensor>) -> BTreeMap<String, f64> {
    let suffix = format!(".{ALPHA_VAR}");
    vars.iter()
        .filter_map(|(name, t)| {
            name.strip_suffix(&suffix)
                .map(|site| (site.to_string(), t.double_value(&[])))
        })
        .collect()
}

/// `train`: see the module doc. Returns how the run ended.
pub fn train<M, F>(meta: &ModelMeta, build: &F, args: TrainArgs) -> Result<Outcome, String>
where
    M: QatModel,
    F: Fn(&nn::Path, &str) -> Result<M, UnknownProfile>,
{
    let file = match &args.config {
        Some(path) => TrainOptions::from_yaml_file(path)?,
        None => TrainOptions::default(),
    };
    let mut options = args.options.clone().over(file);
    let mut resume = None;
    let run_dir = if args.resume {
        let dir = options
            .out
            .clone()
            .ok_or("--resume continues the run in --out RUN_DIR: name it")?;
        let info = read_run_info(&dir)?;
        let latest = dir.join("latest.safetensors");
        if !latest.is_file() {
            return Err(format!(
                "cannot resume: `{}` has no checkpoint yet (start it again without --resume)",
                latest.display()
            ));
        }
        let ckpt = load_latest(&dir)?;
        options = options.over(info.config.as_options());
        resume = Some(ckpt);
        dir
    } else {
        match &options.out {
            Some(dir) if dir.join("latest.safetensors").exists() => {
                return Err(format!(
                    "`{}` already holds a run: continue it with --resume, or choose another --out",
                    dir.display()
                ))
            }
            Some(dir) => dir.clone(),
            None => default_run_dir(
                meta.name,
                options.profile.as_deref().unwrap_or(meta.default_profile()),
            ),
        }
    };
    let config = TrainConfig::resolve(&options, meta.default_profile())?;
    if !meta.profiles.contains(&config.profile.as_str()) {
        return Err(UnknownProfile {
            name: config.profile.clone(),
            known: meta.profiles.iter().map(|p| p.to_string()).collect(),
        }
        .to_string());
    }
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
    let mut opt = Optimizer::new(config.optimizer.clone(), params);

    let mut start_epoch = 0;
    let mut start_step = 0;
    let mut partial = PartialEpoch::default();
    let mut best: Option<(f64, usize)> = None;
    let mut records: Vec<EpochRecord> = Vec::new();
    if let Some(ckpt) = &resume {
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
        let report = checkpoint::copy_into(&vars, &ckpt.tensors);
        if !report.is_complete() {
            return Err(format!(
                "`{}` does not fit the model:\n{}",
                ckpt.path.display(),
                report.describe().trim_end()
            ));
        }
        opt.load_state(
            ckpt.optimizer
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
            m.optimizer_steps,
        )
        .map_err(|e| format!("`{}`: {e}", ckpt.path.display()))?;
        start_epoch = m.epoch;
        start_step = m.step;
        partial = m.partial.unwrap_or_default();
        best = m.best_top1.zip(m.best_epoch);
        records = metrics::read_jsonl(&run_dir.join("metrics.jsonl"))?;
        records.retain(|r| r.epoch <= m.epoch);
        eprintln!(
            "resuming {} at epoch {} step {} (of {} epochs)",
            run_dir.display(),
            m.epoch + 1,
            m.step,
            config.epochs
        );
    } else if let Some(init) = &config.init {
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
        let report = checkpoint::copy_into(&vars, &ckpt.tensors);
        eprintln!(
            "init: loaded {} of {} tensors from {}",
            report.loaded.len(),
            vars.len(),
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
    }
    if start_epoch >= config.epochs {
        eprintln!(
            "{}: already trained for {start_epoch} epochs (of {}); raise --epochs to go on",
            run_dir.display(),
            config.epochs
        );
        return Ok(Outcome::Finished);
    }

    std::fs::create_dir_all(&run_dir)
        .map_err(|e| format!("cannot create run directory `{}`: {e}", run_dir.display()))?;
    let info = RunInfo {
        model: meta.name.into(),
        profile: config.profile.clone(),
        spec: meta.spec.into(),
        spec_hash: meta.spec_hash.into(),
        data: config.data.clone(),
        config: config.clone(),
    };
    let info_json = serde_json::to_string_pretty(&info).map_err(|e| e.to_string())? + "\n";
    checkpoint::write_atomic(&run_dir.join("run.json"), info_json.as_bytes())
        .map_err(|e| format!("cannot write `{}`: {e}", run_dir.join("run.json").display()))?;
    let mut tb = EventWriter::create(&run_dir).map_err(|e| {
        format!(
            "cannot create a TensorBoard event file in `{}`: {e}",
            run_dir.display()
        )
    })?;
    let tb_err = |e: std::io::Error| format!("cannot write the TensorBoard event file: {e}");

    eprintln!(
        "training {} (profile {}) on {} ({} train / {} test images) on {}, {} torch thread(s), {} layout: {} epochs, batch {}, lr {} {:?}, {:?}; run dir {}",
        meta.name,
        config.profile,
        train_set.name,
        train_set.len(),
        test_set.len(),
        device_name(device),
        threads.count,
        crate::layers::layout(),
        config.epochs,
        config.batch_size,
        config.lr,
        config.schedule,
        config.optimizer,
        run_dir.display()
    );
    STOP.store(false, Ordering::SeqCst);
    install_ctrl_c();

    let config_json = serde_json::to_value(&config).map_err(|e| e.to_string())?;
    let save = |path: &Path,
                epoch: usize,
                step: usize,
                opt: &Optimizer,
                with_optimizer: bool,
                test_top1: Option<f64>,
                best: Option<(f64, usize)>,
                partial: Option<PartialEpoch>|
     -> Result<(), String> {
        let cm = CheckpointMeta {
            format: FORMAT.into(),
            model: meta.name.into(),
            profile: config.profile.clone(),
            spec: meta.spec.into(),
            spec_hash: meta.spec_hash.into(),
            epoch,
            step,
            optimizer_steps: opt.steps,
            test_top1,
            best_top1: best.map(|b| b.0),
            best_epoch: best.map(|b| b.1),
            config: config_json.clone(),
            partial,
        };
        let tensors: Vec<(String, Tensor)> = vars
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        let state = if with_optimizer {
            opt.state()
        } else {
            Vec::new()
        };
        if path.file_name() == Some(LATEST.as_ref()) {
            checkpoint::keep_as(path, &path.with_file_name(PREVIOUS))?;
        }
        checkpoint::save(path, &cm, &tensors, &state)
    };

    // Ctrl-C, or the test hook's step count reached.
    let stop_requested =
        |steps: usize| STOP.load(Ordering::SeqCst) || args.stop_after.is_some_and(|n| steps >= n);
    let mut session_steps = 0;
    let shape = train_set.shape;
    let batch_size = config.batch_size;
    for epoch in start_epoch..config.epochs {
        let lr = config.schedule.lr(config.lr, epoch, config.epochs);
        let loader = Loader::new(
            Arc::clone(&train_set),
            BatchConfig {
                start_step,
                // The seed's loader keeps the last, smaller batch.
                drop_last: false,
                ..BatchConfig::train(&train_set, batch_size, config.seed, epoch as u64)
            },
        );
        let steps = loader.steps();
        let progress = Progress::new(epoch + 1, config.epochs, steps, start_step);
        let started = Instant::now();
        let mut sums = partial;
        let mut step = start_step;
        let mut loader = loader;
        while let Some(batch) = loader.next() {
            let (xs, ys) = batch_tensors(&batch, shape, device);
            let logits = model.forward_t(&xs, true);
            let ce = logits.cross_entropy_for_logits(&ys);
            let loss = match alpha_penalty_with(model.clip_values(), config.alpha_decay) {
                Some(penalty) => &ce + penalty,
                None => ce.shallow_clone(),
            };
            let loss_value = loss.double_value(&[]);
            if !loss_value.is_finite() {
                progress.finish();
                let last = if run_dir.join("latest.safetensors").exists() {
                    format!(
                        "the last good checkpoint is {}",
                        run_dir.join("latest.safetensors").display()
                    )
                } else {
                    "no checkpoint was saved yet".to_string()
                };
                return Err(format!(
                    "the loss is {loss_value} at epoch {} step {}: stopping ({last}); try a lower --lr",
                    epoch + 1,
                    step + 1
                ));
            }
            opt.zero_grad();
            loss.backward();
            opt.step(lr);
            let hits = top1_hits(&logits.detach(), &ys);
            let n = batch.len as u64;
            sums.loss_sum += ce.double_value(&[]) * n as f64;
            sums.correct += hits as u64;
            sums.seen += n;
            step += 1;
            session_steps += 1;
            let stop = stop_requested(session_steps);
            let global = (epoch * steps + step) as i64;
            tb.scalars(global, &[("train/loss", loss_value), ("train/lr", lr)])
                .map_err(tb_err)?;
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
                let path = run_dir.join("latest.safetensors");
                save(
                    &path,
                    epoch,
                    step,
                    &opt,
                    true,
                    records.last().map(|r| r.test_top1),
                    best,
                    Some(p),
                )?;
                eprintln!(
                    "interrupted at epoch {} step {step}/{steps}: saved {}; continue with --resume --out {}",
                    epoch + 1,
                    path.display(),
                    run_dir.display()
                );
                return Ok(Outcome::Interrupted);
            }
        }
        let data_wait = sums.data_wait_seconds + loader.waited().as_secs_f64();
        drop(loader);
        let train_seconds = sums.seconds + started.elapsed().as_secs_f64();
        progress.finish();
        let result = evaluate(&model, &test_set, batch_size.max(256), device);
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
            clip: clip_values(&vars),
        };
        eprintln!(
            "epoch {}/{}: lr {:.5}  train loss {:.4} top-1 {:.2}%  test loss {:.4} top-1 {:.2}% top-5 {:.2}%  {:.1} s ({:.0} img/s, waited {:.2} s for data)",
            record.epoch,
            config.epochs,
            lr,
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
            ("epoch/lr".into(), lr),
            ("epoch/seconds".into(), record.epoch_seconds),
        ];
        scalars.extend(record.clip.iter().map(|(s, v)| (format!("clip/{s}"), *v)));
        let scalars: Vec<(&str, f64)> = scalars.iter().map(|(t, v)| (t.as_str(), *v)).collect();
        tb.scalars((epoch + 1) as i64, &scalars).map_err(tb_err)?;
        tb.flush().map_err(tb_err)?;
        records.push(record);
        metrics::write(&run_dir, &records)?;
        if best.is_none_or(|(b, _)| result.top1 > b) {
            best = Some((result.top1, epoch + 1));
            save(
                &run_dir.join("best.safetensors"),
                epoch + 1,
                0,
                &opt,
                false,
                Some(result.top1),
                best,
                None,
            )?;
        }
        save(
            &run_dir.join("latest.safetensors"),
            epoch + 1,
            0,
            &opt,
            true,
            Some(result.top1),
            best,
            None,
        )?;
        start_step = 0;
        partial = PartialEpoch::default();
        let stop = stop_requested(session_steps);
        if stop && epoch + 1 < config.epochs {
            eprintln!(
                "interrupted after epoch {}: saved; continue with --resume --out {}",
                epoch + 1,
                run_dir.display()
            );
            return Ok(Outcome::Interrupted);
        }
    }
    let (best_top1, best_epoch) = best.unwrap_or((0.0, 0));
    let mean_seconds =
        records.iter().map(|r| r.epoch_seconds).sum::<f64>() / records.len().max(1) as f64;
    eprintln!(
        "done: {} epochs, final test top-1 {:.2}%, best {best_top1:.2}% (epoch {best_epoch}), {mean_seconds:.1} s per epoch; {}",
        records.len(),
        records.last().map_or(0.0, |r| r.test_top1),
        run_dir.join("best.safetensors").display()
    );
    Ok(Outcome::Finished)
}

/// The checkpoint `--resume` continues from.
const LATEST: &str = "latest.safetensors";
/// The `latest` before the last one, kept as the fallback of `--resume`.
const PREVIOUS: &str = "previous.safetensors";
/// Where a corrupt `latest` is moved when `--resume` falls back.
const CORRUPT: &str = "latest-corrupt.safetensors";

/// Loads `dir/latest.safetensors` for `--resume`; when it is corrupt (or
/// unreadable), falls back, loudly, to `previous.safetensors` if that one
/// is good: the corrupt file is moved aside to `latest-corrupt.safetensors`
/// and the previous one becomes `latest` again. Never returns corrupt
/// weights.
fn load_latest(dir: &Path) -> Result<checkpoint::Checkpoint, String> {
    let latest = dir.join(LATEST);
    let error = match checkpoint::load(&latest) {
        Ok(ckpt) => return Ok(ckpt),
        Err(e) => e,
    };
    let previous = dir.join(PREVIOUS);
    if !previous.is_file() {
        return Err(format!(
            "{error}\ncannot resume: no previous checkpoint is kept in `{}` to fall back to (start again without --resume, or --init from `best.safetensors`)",
            dir.display()
        ));
    }
    let good = checkpoint::load(&previous).map_err(|e| {
        format!("{error}\ncannot resume: the previous checkpoint is no good either: {e}")
    })?;
    let aside = dir.join(CORRUPT);
    std::fs::rename(&latest, &aside).map_err(|e| {
        format!(
            "{error}\ncannot move it aside to `{}`: {e}",
            aside.display()
        )
    })?;
    checkpoint::keep_as(&previous, &latest)?;
    eprintln!("WARNING: {error}");
    eprintln!(
        "WARNING: falling back to the previous checkpoint `{}` (epoch {}, step {}); the corrupt one is kept as `{}`",
        previous.display(),
        good.meta.as_ref().map_or(0, |m| m.epoch),
        good.meta.as_ref().map_or(0, |m| m.step),
        aside.display()
    );
    Ok(checkpoint::Checkpoint {
        path: latest,
        ..good
    })
}

/// A checkpoint must come from this model's spec.
pub fn check_same_model(m: &CheckpointMeta, meta: &ModelMeta, path: &Path) -> Result<(), String> {
    if m.model != meta.name || m.spec_hash != meta.spec_hash {
        return Err(format!(
            "`{}` is a checkpoint of model `{}` from spec `{}` (hash {:.12}), not of `{}` from `{}` (hash {:.12})",
            path.display(),
            m.model,
            m.spec,
            m.spec_hash,
            meta.name,
            meta.spec,
            meta.spec_hash
        ));
    }
    Ok(())
}
