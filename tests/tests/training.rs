//! Training on real data through the generated models' runtime entry
//! points (what `qatc train` / `qatc eval` run): CIFAR-10 records beat
//! chance, evaluation reproduces the accuracy a checkpoint recorded, and
//! an interrupted run resumed ends exactly where an uninterrupted one does.
//!
//! The CIFAR-10 slice is read from `QATC_DATA` (default
//! `<workspace>/../shared/data`): `cifar10-mini-bin`, 1,000 training and
//! 500 test records in the official binary format. Without it that test is
//! skipped with a line saying so (a failure under `QATC_REQUIRE_SHARED`).

use qatc_runtime::train::checkpoint;
use qatc_runtime::train::eval::evaluate;
use qatc_runtime::train::metrics::{self, EpochRecord};
use qatc_runtime::train::open_data;
use qatc_runtime::train::options::TrainOptions;
use qatc_runtime::train::run::{train, Outcome, TrainArgs};
use std::path::{Path, PathBuf};
use tch::{nn, Device};

/// The real CIFAR-10 slice, or `None` (a skip of `test`) when the shared
/// data is not there.
fn cifar_mini(test: &str) -> Option<String> {
    let dir = qatc_testdata::shared_data(test, "cifar10-mini-bin")?;
    assert!(
        dir.join("data_batch_1.bin").is_file(),
        "{} has no data_batch_1.bin",
        dir.display()
    );
    Some(dir.to_string_lossy().into_owned())
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qatc-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn run_digits(
    options: TrainOptions,
    resume: bool,
    stop_after: Option<usize>,
) -> Result<Outcome, String> {
    train(
        &qatc_model_digits::META,
        &qatc_model_digits::Digits::new,
        TrainArgs {
            options,
            config: None,
            resume,
            stop_after,
            ..Default::default()
        },
    )
}

/// Records without their timings (which differ run to run).
fn untimed(records: Vec<EpochRecord>) -> Vec<EpochRecord> {
    records
        .into_iter()
        .map(|mut r| {
            r.epoch_seconds = 0.0;
            r.train_images_per_s = 0.0;
            r.data_wait_seconds = 0.0;
            r
        })
        .collect()
}

fn assert_same_weights(a: &Path, b: &Path) {
    let a = checkpoint::load(a).unwrap();
    let b = checkpoint::load(b).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for ((na, ta), (nb, tb)) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "tensor {na} differs");
    }
    assert_eq!(a.optimizer.len(), b.optimizer.len());
    for ((na, ta), (_, tb)) in a.optimizer.iter().zip(&b.optimizer) {
        assert!(ta.equal(tb), "optimizer state {na} differs");
    }
    let (ma, mb) = (a.meta.unwrap(), b.meta.unwrap());
    assert_eq!(
        (ma.epoch, ma.step, ma.optimizer_steps),
        (mb.epoch, mb.step, mb.optimizer_steps)
    );
    assert_eq!(ma.test_top1, mb.test_top1);
}

#[test]
fn cifar_records_beat_chance_and_eval_reproduces_the_checkpoint() {
    let Some(cifar) = cifar_mini("cifar_records_beat_chance_and_eval_reproduces_the_checkpoint")
    else {
        return;
    };
    let out = scratch("cifar");
    let options = TrainOptions {
        data: Some(cifar.clone()),
        profile: Some("w4a4".into()),
        epochs: Some(4),
        batch_size: Some(32),
        lr: Some(0.05),
        out: Some(out.clone()),
        ..Default::default()
    };
    let outcome = train(
        &qatc_model_cifar_small::META,
        &qatc_model_cifar_small::CifarSmall::new,
        TrainArgs {
            options,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(outcome, Outcome::Finished);
    let records = metrics::read_jsonl(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(records.len(), 4);
    let last = records.last().unwrap();
    // Chance is 10 %: a few epochs on 1,000 images must be well above it.
    assert!(last.train_top1 > 20.0, "train top-1 {}", last.train_top1);
    assert!(records.iter().all(|r| r.test_top5 >= r.test_top1));
    assert_eq!(last.clip.len(), 3, "one clipping value per PACT site");

    // The best checkpoint evaluated again gives the accuracy it recorded.
    let best = checkpoint::load(&out.join("best.safetensors")).unwrap();
    let meta = best.meta.clone().unwrap();
    assert_eq!(meta.profile, "w4a4");
    let vs = nn::VarStore::new(Device::Cpu);
    let model = qatc_model_cifar_small::CifarSmall::new(&vs.root(), "w4a4").unwrap();
    assert!(checkpoint::copy_into(&vs.variables(), &best.tensors).is_complete());
    let (_, test) = open_data(&cifar, None, None).unwrap();
    let result = evaluate(&model, &test, 100, Device::Cpu);
    assert_eq!(Some(result.top1), meta.test_top1);
    assert_eq!(result.images, 500);
    let confusion_total: u64 = result.confusion.iter().flatten().sum();
    assert_eq!(confusion_total, 500);
    for file in [
        "run.json",
        "metrics.csv",
        "best.json",
        "latest.json",
        "latest.safetensors",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let events = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .count();
    assert_eq!(events, 1);
    std::fs::remove_dir_all(&out).unwrap();
}

/// The short digits run the resume tests interrupt and compare.
fn resume_run(seed: u64) -> TrainOptions {
    TrainOptions {
        data: Some("digits".into()),
        epochs: Some(3),
        batch_size: Some(64),
        lr: Some(0.05),
        limit_train: Some(640),
        limit_test: Some(200),
        seed: Some(seed),
        ..Default::default()
    }
}

/// Runs compared bit for bit take turns: two trainings at once in one
/// process share libtorch's thread pool, and their float sums then differ.
static BIT_EXACT: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn interrupted_and_resumed_runs_end_exactly_like_an_uninterrupted_one() {
    let _turn = BIT_EXACT.lock().unwrap_or_else(|e| e.into_inner());
    let base = resume_run(7);
    let whole = scratch("whole");
    let outcome = run_digits(
        TrainOptions {
            out: Some(whole.clone()),
            ..base.clone()
        },
        false,
        None,
    )
    .unwrap();
    assert_eq!(outcome, Outcome::Finished);

    // Stopped mid-epoch (as by Ctrl-C) twice, then after an epoch boundary.
    let split = scratch("split");
    let first = TrainOptions {
        out: Some(split.clone()),
        ..base.clone()
    };
    assert_eq!(
        run_digits(first, false, Some(4)).unwrap(),
        Outcome::Interrupted
    );
    let ck = checkpoint::load(&split.join("latest.safetensors")).unwrap();
    assert_eq!(
        (
            ck.meta.as_ref().unwrap().epoch,
            ck.meta.as_ref().unwrap().step
        ),
        (0, 4)
    );
    let again = TrainOptions {
        out: Some(split.clone()),
        ..Default::default()
    };
    assert_eq!(
        run_digits(again.clone(), true, Some(9)).unwrap(),
        Outcome::Interrupted
    );
    assert_eq!(
        run_digits(again.clone(), true, None).unwrap(),
        Outcome::Finished
    );

    assert_same_weights(
        &whole.join("latest.safetensors"),
        &split.join("latest.safetensors"),
    );
    assert_same_weights(
        &whole.join("best.safetensors"),
        &split.join("best.safetensors"),
    );
    assert_eq!(
        untimed(metrics::read_jsonl(&whole.join("metrics.jsonl")).unwrap()),
        untimed(metrics::read_jsonl(&split.join("metrics.jsonl")).unwrap())
    );

    // Resuming a finished run does nothing; a run dir is never overwritten.
    assert_eq!(run_digits(again, true, None).unwrap(), Outcome::Finished);
    let err = run_digits(
        TrainOptions {
            out: Some(split.clone()),
            ..base.clone()
        },
        false,
        None,
    )
    .unwrap_err();
    assert!(err.contains("already holds a run"), "{err}");
    std::fs::remove_dir_all(&whole).unwrap();
    std::fs::remove_dir_all(&split).unwrap();
}

/// The corruption: the last 100 bytes XOR 0x55, header intact.
fn flip_tail(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - 100..] {
        *b ^= 0x55;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn resume_falls_back_from_a_corrupt_latest_and_never_trains_on_it() {
    let _turn = BIT_EXACT.lock().unwrap_or_else(|e| e.into_inner());
    let base = resume_run(3);
    let whole = scratch("fallback-whole");
    let options = |out: &Path| TrainOptions {
        out: Some(out.to_path_buf()),
        ..base.clone()
    };
    assert_eq!(
        run_digits(options(&whole), false, None).unwrap(),
        Outcome::Finished
    );
    // Stopped after epoch 2 of 3 (10 steps an epoch): `latest` is epoch 2,
    // `previous` epoch 1.
    let run = scratch("fallback");
    assert_eq!(
        run_digits(options(&run), false, Some(20)).unwrap(),
        Outcome::Interrupted
    );
    let previous = checkpoint::load(&run.join("previous.safetensors")).unwrap();
    assert_eq!(previous.meta.unwrap().epoch, 1);
    flip_tail(&run.join("latest.safetensors"));
    let resume = TrainOptions {
        out: Some(run.clone()),
        ..Default::default()
    };
    // Falls back to epoch 1 and ends where the uninterrupted run does.
    assert_eq!(
        run_digits(resume.clone(), true, None).unwrap(),
        Outcome::Finished
    );
    assert!(run.join("latest-corrupt.safetensors").is_file());
    assert_same_weights(
        &whole.join("latest.safetensors"),
        &run.join("latest.safetensors"),
    );
    assert_eq!(
        untimed(metrics::read_jsonl(&whole.join("metrics.jsonl")).unwrap()),
        untimed(metrics::read_jsonl(&run.join("metrics.jsonl")).unwrap())
    );

    // Both corrupt: an error naming both, nothing trained.
    flip_tail(&run.join("latest.safetensors"));
    flip_tail(&run.join("previous.safetensors"));
    let err = run_digits(resume.clone(), true, None).unwrap_err();
    let latest = run.join("latest.safetensors").display().to_string();
    let prev = run.join("previous.safetensors").display().to_string();
    assert!(
        err.starts_with(&format!(
            "checkpoint `{latest}` is corrupt: the data of tensor `"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "cannot resume: the previous checkpoint is no good either: checkpoint `{prev}` is corrupt: "
        )),
        "{err}"
    );
    // No previous one kept: the error, and nothing trained.
    std::fs::remove_file(run.join("previous.safetensors")).unwrap();
    let err = run_digits(resume, true, None).unwrap_err();
    assert!(
        err.contains("cannot resume: no previous checkpoint is kept in"),
        "{err}"
    );
    std::fs::remove_dir_all(&whole).unwrap();
    std::fs::remove_dir_all(&run).unwrap();
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let out = scratch("nan");
    let options = TrainOptions {
        data: Some("digits".into()),
        epochs: Some(1),
        batch_size: Some(64),
        limit_train: Some(256),
        limit_test: Some(64),
        out: Some(out.clone()),
        ..Default::default()
    };
    assert_eq!(run_digits(options, false, None).unwrap(), Outcome::Finished);
    let before = std::fs::read(out.join("latest.safetensors")).unwrap();
    let blow_up = TrainOptions {
        out: Some(out.clone()),
        epochs: Some(2),
        lr: Some(1e38),
        ..Default::default()
    };
    let err = run_digits(blow_up, true, None).unwrap_err();
    assert!(err.contains("the loss is"), "{err}");
    assert!(err.contains("latest.safetensors"), "{err}");
    assert_eq!(
        std::fs::read(out.join("latest.safetensors")).unwrap(),
        before
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn init_loads_matching_tensors_and_refuses_a_stranger() {
    let out = scratch("init");
    let float_run = TrainOptions {
        data: Some("digits".into()),
        profile: Some("float".into()),
        epochs: Some(1),
        limit_train: Some(128),
        limit_test: Some(64),
        out: Some(out.join("float")),
        ..Default::default()
    };
    assert_eq!(
        run_digits(float_run, false, None).unwrap(),
        Outcome::Finished
    );
    let finetune = TrainOptions {
        data: Some("digits".into()),
        profile: Some("w4a4".into()),
        epochs: Some(1),
        limit_train: Some(128),
        limit_test: Some(64),
        init: Some(out.join("float/best.safetensors")),
        out: Some(out.join("w4a4")),
        ..Default::default()
    };
    assert_eq!(
        run_digits(finetune, false, None).unwrap(),
        Outcome::Finished
    );

    // A checkpoint of an unrelated model shares no tensor.
    let stranger = out.join("stranger.safetensors");
    checkpoint::save(
        &stranger,
        &serde_json::from_value(serde_json::json!({
            "format": checkpoint::FORMAT, "model": "other", "profile": "p", "spec": "o.qspec",
            "spec_hash": "00", "epoch": 0, "step": 0, "optimizer_steps": 0, "test_top1": null,
            "best_top1": null, "best_epoch": null, "config": {}, "partial": null
        }))
        .unwrap(),
        &[(
            "nothing.weight".into(),
            tch::Tensor::zeros([2], (tch::Kind::Float, Device::Cpu)),
        )],
        &[],
    )
    .unwrap();
    let err = run_digits(
        TrainOptions {
            init: Some(stranger),
            epochs: Some(1),
            limit_train: Some(64),
            out: Some(out.join("x")),
            ..Default::default()
        },
        false,
        None,
    )
    .unwrap_err();
    assert!(err.contains("shares no tensor"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();
}
