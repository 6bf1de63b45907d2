//! The helpers the training loop ([`super::run`]) and evaluation
//! ([`super::eval`]) share: opening `--data`, checking that it fits the
//! model, a loader's batch as tensors, and the top-1 hits of a batch.

use qatc_data::{Batch, Dataset};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// A batch as tensors on `device`: normalised images `[N, C, H, W]` and
/// labels `[N]` (int64).
pub fn batch_tensors(batch: &Batch, shape: [usize; 3], device: Device) -> (Tensor, Tensor) {
    let [c, h, w] = shape.map(|d| d as i64);
    let n = batch.len as i64;
    let xs = Tensor::from_slice(&batch.images)
        .view([n, c, h, w])
        .to_device(device);
    let ys = Tensor::from_slice(&batch.labels).to_device(device);
    (xs, ys)
}

/// Checks that a data set fits a model: same per-sample shape, no more
/// classes than the model has outputs.
pub fn check_fits(
    ds: &Dataset,
    model_shape: [i64; 3],
    classes: i64,
    model: &str,
) -> Result<(), String> {
    let shape = ds.shape.map(|d| d as i64);
    if shape != model_shape {
        let [c, h, w] = model_shape;
        let [dc, dh, dw] = shape;
        return Err(format!(
            "model `{model}` takes {c}x{h}x{w} inputs but data `{}` has {dc}x{dh}x{dw} images: pass --data with matching data (CIFAR-10: `qatc data download cifar10`)",
            ds.name
        ));
    }
    if ds.classes.len() as i64 > classes {
        return Err(format!(
            "data `{}` has {} classes but model `{model}` has {classes} outputs",
            ds.name,
            ds.classes.len()
        ));
    }
    Ok(())
}

/// Images whose top-1 class is their label (the running accuracy of a
/// training step: an argmax, no top-5).
pub fn top1_hits(logits: &Tensor, labels: &Tensor) -> i64 {
    logits
        .argmax(1, false)
        .eq_tensor(labels)
        .sum(Kind::Int64)
        .int64_value(&[])
}

/// The data set behind `--data`, limited ([`Dataset::spread`]), shared with
/// loader threads.
pub fn open_data(
    data: &str,
    limit_train: Option<usize>,
    limit_test: Option<usize>,
) -> Result<(Arc<Dataset>, Arc<Dataset>), String> {
    let split = qatc_data::open(data).map_err(|e| e.to_string())?;
    let limited = |ds: Dataset, limit: Option<usize>| match limit {
        Some(n) => ds.spread(n),
        None => ds,
    };
    Ok((
        Arc::new(limited(split.train, limit_train)),
        Arc::new(limited(split.test, limit_test)),
    ))
}
