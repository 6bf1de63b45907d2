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
//!
//! [`train`] shows the run's steps in order; each is a function of its own
//! in the private `session` module (set-up and resume, one epoch,
//! evaluation with checkpointing, the closing summary). The files' names
//! and records are `qatc_records`'.

use super::checkpoint::{self, Checkpoint};
use super::options::{TrainConfig, TrainOptions};
use super::parallel::{self, Launched, ParallelArgs, Role};
use super::session::{EpochEnd, Position, RunFiles, Session, Trainee};
use crate::dist::ProcessGroup;
use crate::model::{ModelMeta, QatModel};
use crate::profile::UnknownProfile;
use clap::Args;
use qatc_records::run_dir::{CORRUPT_LATEST, LATEST, PREVIOUS, RUN_JSON};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::nn;

/// A checkpoint must come from this model's spec (defined with the
/// checkpoints; kept here for its callers).
pub use super::checkpoint::check_same_model;

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
    /// Write every variable after each optimizer step to
    /// `DIR/step-EPOCH-STEP.safetensors` (rank 0; tests of data
    /// parallelism).
    #[arg(long, hide = true, value_name = "DIR")]
    pub dump_steps: Option<PathBuf>,
    #[command(flatten)]
    pub parallel: ParallelArgs,
}

/// `run.json`: the run's record (`qatc_records::RunInfo`) with the
/// runtime's own settings type.
pub type RunInfo = qatc_records::RunInfo<TrainConfig>;

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

/// `train`: see the module doc. Returns how the run ended. With `--nproc
/// N` (and no launcher variables) this process launches N workers, this
/// program with the same arguments ([`parallel::launch`]); a worker joins
/// its group first ([`ParallelArgs::role`]).
pub fn train<M, F>(meta: &ModelMeta, build: &F, args: TrainArgs) -> Result<Outcome, String>
where
    M: QatModel,
    F: Fn(&nn::Path, &str) -> Result<M, UnknownProfile>,
{
    match args.parallel.role()? {
        Role::Launcher(n) => {
            let program = std::env::current_exe()
                .map_err(|e| format!("cannot find this program to launch its workers: {e}"))?;
            let argv: Vec<_> = std::env::args_os().skip(1).collect();
            Ok(
                match parallel::launch(&program, &argv, n, args.parallel.master_port, &[])? {
                    Launched::Finished => Outcome::Finished,
                    Launched::Interrupted => Outcome::Interrupted,
                },
            )
        }
        Role::Single => train_in(meta, build, args, None),
        Role::Worker(group) => {
            let group = Rc::new(group);
            let result = train_in(meta, build, args, Some(Rc::clone(&group)));
            crate::layers::set_sync_bn(None);
            let who = format!("rank {} of {}", group.rank(), group.world_size());
            result.map_err(|e| {
                if e.starts_with(&who) {
                    e
                } else {
                    format!("{who}: {e}")
                }
            })
        }
    }
}

/// The run of one process, alone or as a rank of `group`.
fn train_in<M, F>(
    meta: &ModelMeta,
    build: &F,
    args: TrainArgs,
    group: Option<Rc<ProcessGroup>>,
) -> Result<Outcome, String>
where
    M: QatModel,
    F: Fn(&nn::Path, &str) -> Result<M, UnknownProfile>,
{
    let (rank, world) = group
        .as_ref()
        .map_or((0, 1), |g| (g.rank(), g.world_size()));
    // Rank 0 resolves the run directory first (a corrupt `latest` is set
    // aside there), then the others read it; an error there reaches every
    // rank, each of which resolves (and fails) on its own.
    let barrier = |now: bool| match &group {
        Some(g) if now => g.barrier().map_err(|e| e.to_string()),
        _ => Ok(()),
    };
    barrier(rank != 0)?;
    let resolved = resolve(meta, &args, rank);
    barrier(rank == 0)?;
    let (mut config, run_dir, resume) = resolved?;
    config.world_size = world;
    if config.batch_size % world != 0 {
        return Err(format!(
            "--batch-size {} (the global batch) does not divide among {world} processes: choose a multiple of {world}",
            config.batch_size
        ));
    }
    let trained_on = resume
        .as_ref()
        .and_then(|c| c.meta.as_ref())
        .and_then(|m| m.config.get("world_size"))
        .map_or(Some(1), serde_json::Value::as_u64);
    if let Some(w) = trained_on.filter(|&w| rank == 0 && resume.is_some() && w != world as u64) {
        eprintln!(
            "note: the run was trained on {w} process(es) and goes on on {world}: the same global batch, but not bit-equal to going on with {w} (the sums run in another order; per-rank BN sees other parts)"
        );
    }
    let mut trainee = Trainee::build(meta, build, &config)?;
    let position = match (&resume, &config.init) {
        (Some(ckpt), _) => trainee.resume(meta, &config, &run_dir, ckpt)?,
        (None, Some(init)) => {
            trainee.init_from(meta, &config, init)?;
            Position::default()
        }
        (None, None) => Position::default(),
    };
    if let Some(g) = &group {
        trainee
            .start_together(g, meta, &config, &position)
            .map_err(|e| e.to_string())?;
        crate::layers::set_sync_bn(config.sync_bn.then(|| Rc::clone(g)));
    }
    if position.epoch >= config.epochs {
        if rank == 0 {
            eprintln!(
                "{}: already trained for {} epochs (of {}); raise --epochs to go on",
                run_dir.display(),
                position.epoch,
                config.epochs
            );
        }
        return Ok(Outcome::Finished);
    }
    let files = RunFiles::open(meta, &config, run_dir, rank == 0)?;
    let config_json = serde_json::to_value(&config).map_err(|e| e.to_string())?;
    let mut session = Session {
        meta,
        config,
        config_json,
        trainee,
        files,
        position,
        stop: &STOP,
        stop_after: args.stop_after,
        dump_steps: args.dump_steps.clone(),
        session_steps: 0,
        group,
    };
    session.announce();
    STOP.store(false, Ordering::SeqCst);
    install_ctrl_c();
    for epoch in session.position.epoch..session.config.epochs {
        let trained = match session.train_epoch(epoch)? {
            EpochEnd::Interrupted => return Ok(Outcome::Interrupted),
            EpochEnd::Trained(trained) => trained,
        };
        if session.end_epoch(epoch, trained)? {
            return Ok(Outcome::Interrupted);
        }
    }
    session.finish();
    Ok(Outcome::Finished)
}

/// Set-up, first part: the run's settings (flags over `--config` over, on
/// `--resume`, the run's recorded ones), its directory, and on `--resume`
/// the checkpoint to continue from. Checks the profile.
fn resolve(
    meta: &ModelMeta,
    args: &TrainArgs,
    rank: usize,
) -> Result<(TrainConfig, PathBuf, Option<Checkpoint>), String> {
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
        let latest = dir.join(LATEST);
        if !latest.is_file() {
            return Err(format!(
                "cannot resume: `{}` has no checkpoint yet (start it again without --resume)",
                latest.display()
            ));
        }
        resume = Some(if rank == 0 {
            load_latest(&dir)?
        } else {
            checkpoint::load(&latest)?
        });
        options = options.over(info.config.as_options());
        dir
    } else {
        match &options.out {
            Some(dir) if rank == 0 && dir.join(LATEST).exists() => {
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
    Ok((config, run_dir, resume))
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

/// The `run.json` of the run `--resume` continues.
fn read_run_info(dir: &Path) -> Result<RunInfo, String> {
    let path = dir.join(RUN_JSON);
    qatc_records::run_info::read(&path).map_err(|e| match e {
        qatc_records::RecordError::Missing { .. } | qatc_records::RecordError::Io { .. } => {
            format!(
                "cannot resume: `{}` is not a run directory ({e})",
                dir.display()
            )
        }
        e => e.to_string(),
    })
}

/// Loads `dir/latest.safetensors` for `--resume`; when it is corrupt (or
/// unreadable), falls back, loudly, to `previous.safetensors` if that one
/// is good: the corrupt file is moved aside to `latest-corrupt.safetensors`
/// and the previous one becomes `latest` again. Never returns corrupt
/// weights.
fn load_latest(dir: &Path) -> Result<Checkpoint, String> {
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
    let aside = dir.join(CORRUPT_LATEST);
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
    Ok(Checkpoint {
        path: latest,
        ..good
    })
}
