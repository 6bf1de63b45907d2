//! The four families of issue 16 (SE-ResNet20, MobileNetV3-Small,
//! ShuffleNetV2, DenseNet-BC) train quantization-aware (`w8a8`) on real
//! CIFAR-10 records through the generated crates' `train` (what `qatc
//! train` runs) and end clearly above chance on the test split.
//!
//! Data: `cifar10-mini-bin` of the shared data directory (`QATC_DATA`,
//! default `<workspace>/../shared/data`): 1,000 training and 500 test
//! records in the official binary format. Without it each test is skipped
//! with a line saying so (a failure under `QATC_REQUIRE_SHARED`).
//!
//! The criterion, the same for all four: the best epoch's test top-1 (the
//! accuracy of the `best.safetensors` a run keeps) is at least
//! [`MIN_CORRECT`] of the 500 test images (20 %). Chance here is not 10 %:
//! the slice's test classes are uneven (the largest, cats, is 66 of 500),
//! so a model whose predictions say nothing about the image scores at most
//! 13.2 % in expectation (a constant "cat"), with a binomial spread of
//! sqrt(500 * 0.132 * 0.868) = 7.6 images. 100 right is 4.5 of those
//! spreads above it: the probability of reaching it without learning
//! anything is 1.5e-5 per evaluation (the binomial tail), so at most
//! 6e-5 for the best of 4 epochs, and a pass means the model learned.
//! The runs are seeded (weights, data order, augmentation, dropout) and
//! run one at a time (torch's global generator, which dropout draws from,
//! is shared by the test threads of one process), so each test does the
//! same run every time on a given machine.
//!
//! The recipe: Adam, lr 0.002 cosine to 0.001, batch 32, 2 to 4 epochs of
//! all 1,000 images. Adam because its step does not scale with the
//! gradient: DoReFa weights are normalised by their maximum, so under SGD
//! each layer's effective step depends on its initial weight scale, and in
//! 32 to 64 steps SGD left ShuffleNetV2 at chance (float, lr 0.01: 10.2 %;
//! `w8a8`, lr 0.1: 13.4 %) and MobileNetV3-Small (lr 0.1) at a flat
//! training loss of 2.31. The four runs took 213 s together on the
//! two-core development machine (DenseNet-BC 52 s an epoch,
//! MobileNetV3-Small 16, ShuffleNetV2 10, SE-ResNet20 5); see
//! docs/training.md for the accuracies per epoch (best 23.0 to 27.4 %).
//! ShuffleNetV2 takes 4 epochs since 2026-12-07: on an Intel Xeon with
//! AVX-512 (libtorch's kernels round differently there) its 3-epoch run
//! peaked at 18.8 % with the test loss still falling (2.37, 2.27, 2.17);
//! with 4 epochs it reached 23.0 % there.

use qatc_runtime::model::{ModelMeta, QatModel};
use qatc_runtime::profile::UnknownProfile;
use qatc_runtime::train::metrics;
use qatc_runtime::train::options::{OptimizerKind, TrainOptions};
use qatc_runtime::train::run::{train, Outcome, TrainArgs};
use std::path::PathBuf;
use tch::nn;

/// Test images right out of 500 that a run must reach (20 %): see the
/// module docs for why that is beyond chance.
const MIN_CORRECT: usize = 100;
const TEST_IMAGES: usize = 500;

/// One training at a time (see the module docs).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run_family<M, F>(test: &str, meta: &ModelMeta, build: &F, epochs: usize)
where
    M: QatModel,
    F: Fn(&nn::Path, &str) -> Result<M, UnknownProfile>,
{
    let Some(dir) = qatc_testdata::shared_data(test, "cifar10-mini-bin") else {
        return;
    };
    // A failed run poisons the lock; the others still run alone.
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out: PathBuf =
        std::env::temp_dir().join(format!("qatc-train-families-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let options = TrainOptions {
        data: Some(dir.to_string_lossy().into_owned()),
        profile: Some("w8a8".into()),
        epochs: Some(epochs),
        batch_size: Some(32),
        lr: Some(0.002),
        optimizer: Some(OptimizerKind::Adam),
        seed: Some(0),
        device: Some("cpu".into()),
        out: Some(out.clone()),
        ..Default::default()
    };
    let outcome = train(
        meta,
        build,
        TrainArgs {
            options,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(outcome, Outcome::Finished);
    let records = metrics::read_jsonl(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(records.len(), epochs);
    let best = records
        .iter()
        .map(|r| r.test_top1)
        .fold(f64::NEG_INFINITY, f64::max);
    let correct = (best / 100.0 * TEST_IMAGES as f64).round() as usize;
    assert!(
        correct >= MIN_CORRECT,
        "{}: best test top-1 {best:.1} % ({correct} of {TEST_IMAGES}) in {epochs} epochs, below \
         {MIN_CORRECT} (train loss, test loss, test top-1 per epoch: {:?})",
        meta.name,
        records
            .iter()
            .map(|r| (r.train_loss, r.test_loss, r.test_top1))
            .collect::<Vec<_>>()
    );
    assert!(records
        .iter()
        .all(|r| r.train_loss.is_finite() && r.test_loss.is_finite()));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn se_resnet20_trains_above_chance() {
    run_family(
        "se_resnet20_trains_above_chance",
        &qatc_model_se_resnet20::META,
        &qatc_model_se_resnet20::SeResnet20::new,
        3,
    );
}

#[test]
fn mobilenetv3_small_trains_above_chance() {
    run_family(
        "mobilenetv3_small_trains_above_chance",
        &qatc_model_mobilenetv3_small::META,
        &qatc_model_mobilenetv3_small::Mobilenetv3Small::new,
        4,
    );
}

#[test]
fn shufflenetv2_trains_above_chance() {
    run_family(
        "shufflenetv2_trains_above_chance",
        &qatc_model_shufflenetv2::META,
        &qatc_model_shufflenetv2::Shufflenetv2::new,
        4,
    );
}

#[test]
fn densenet_trains_above_chance() {
    run_family(
        "densenet_trains_above_chance",
        &qatc_model_densenet::META,
        &qatc_model_densenet::Densenet::new,
        2,
    );
}
