//! The `Loader`: determinism (same seed and epoch, same batches; resume
//! with `start_step`; any number of workers), epoch shapes, normalisation,
//! that augmented images are crops/flips of their source, and that a
//! dropped loader stops its threads.

use qatc_data::{
    epoch_order, make_batch, open, Augment, Batch, BatchConfig, Dataset, Loader, LoaderError,
    Normalize, Shard,
};
use std::sync::Arc;
use std::time::Duration;

fn digits() -> Arc<Dataset> {
    Arc::new(open("digits").unwrap().train)
}

/// `n` random-ish RGB images of `size`x`size`, labels `i % 10`.
fn synthetic(n: usize, size: usize) -> Dataset {
    let len = 3 * size * size;
    Dataset {
        name: "synthetic".into(),
        shape: [3, size, size],
        classes: (0..10).map(|c| c.to_string()).collect(),
        images: (0..n * len).map(|i| (i * 7919 % 251) as u8).collect(),
        labels: (0..n).map(|i| (i % 10) as u16).collect(),
        norm: Normalize::cifar10(),
        augment: Augment::cifar10(),
        skipped: Default::default(),
    }
}

fn train_cfg(ds: &Dataset, batch: usize) -> BatchConfig {
    BatchConfig::train(ds, batch, 42, 3)
}

fn all(ds: &Arc<Dataset>, cfg: &BatchConfig) -> Vec<Batch> {
    Loader::new(ds.clone(), cfg.clone()).unwrap().collect()
}

#[test]
fn same_seed_and_epoch_give_the_same_batches() {
    let ds = digits();
    let cfg = train_cfg(&ds, 100);
    let a = all(&ds, &cfg);
    assert_eq!(a.len(), 14);
    assert_eq!(a, all(&ds, &cfg));
    for workers in [2, 3, 5] {
        let b: Vec<Batch> = Loader::with_workers(ds.clone(), cfg.clone(), workers)
            .unwrap()
            .collect();
        assert_eq!(a, b, "{workers} workers");
    }
    let indices: Vec<usize> = a.iter().map(|b| b.index).collect();
    assert_eq!(indices, (0..14).collect::<Vec<_>>());
}

#[test]
fn start_step_yields_the_suffix_of_the_epoch() {
    let ds = digits();
    let full = all(&ds, &train_cfg(&ds, 64));
    for k in [0, 1, 7, full.len() - 1, full.len(), full.len() + 3] {
        let cfg = BatchConfig {
            start_step: k,
            ..train_cfg(&ds, 64)
        };
        for workers in [1, 3] {
            let loader = Loader::with_workers(ds.clone(), cfg.clone(), workers).unwrap();
            assert_eq!(loader.steps(), full.len());
            assert_eq!(loader.len(), full.len().saturating_sub(k));
            let resumed: Vec<Batch> = loader.collect();
            assert_eq!(
                resumed,
                full[k.min(full.len())..],
                "start {k}, {workers} workers"
            );
        }
    }
}

#[test]
fn epochs_and_seeds_change_order_and_augmentation() {
    let ds = digits();
    let cfg = train_cfg(&ds, 128);
    let first = |cfg: BatchConfig| Loader::new(ds.clone(), cfg).unwrap().next().unwrap();
    let base = first(cfg.clone());
    let next_epoch = first(BatchConfig {
        epoch: 4,
        ..cfg.clone()
    });
    let other_seed = first(BatchConfig {
        seed: 43,
        ..cfg.clone()
    });
    assert_ne!(base.labels, next_epoch.labels);
    assert_ne!(base.labels, other_seed.labels);
    // Same order, augmentation off: different pixels, so augmentation acted.
    let plain = first(BatchConfig {
        augment: None,
        ..cfg.clone()
    });
    assert_eq!(plain.labels, base.labels);
    assert_ne!(plain.images, base.images);

    let order = epoch_order(ds.len(), true, 42, 3);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..ds.len()).collect::<Vec<_>>());
    assert_ne!(order, sorted);
    assert_ne!(order, epoch_order(ds.len(), true, 42, 4));
    assert_eq!(epoch_order(5, false, 42, 3), [0, 1, 2, 3, 4]);
}

#[test]
fn make_batch_is_what_the_loader_yields() {
    let ds = digits();
    let cfg = train_cfg(&ds, 50);
    let order = epoch_order(ds.len(), cfg.shuffle, cfg.seed, cfg.epoch);
    let batches = all(&ds, &cfg);
    for i in [0, 5, batches.len() - 1] {
        assert_eq!(make_batch(&ds, &cfg, &order, i).unwrap(), batches[i]);
    }
}

#[test]
fn make_batch_refuses_batches_past_the_end_and_foreign_orders() {
    let ds = Arc::new(synthetic(10, 4));
    let cfg = BatchConfig::eval(4);
    let order = epoch_order(ds.len(), false, 0, 0);
    // Batch 2 is the last, partial one; 3 and beyond do not exist.
    assert_eq!(make_batch(&ds, &cfg, &order, 2).unwrap().len, 2);
    for index in [3, usize::MAX] {
        let err = make_batch(&ds, &cfg, &order, index).unwrap_err();
        assert!(
            matches!(err, LoaderError::PastEnd { index: i, images: 10, batch_size: 4 } if i == index),
            "{err}"
        );
    }
    let err = make_batch(&ds, &cfg, &[0, 1, 10], 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "batch 0: image 10 is not in the data set (10 images)"
    );
}

#[test]
fn epoch_length_last_batch_and_shapes() {
    let ds = Arc::new(synthetic(10, 4));
    let keep = BatchConfig::eval(4);
    let batches = all(&ds, &keep);
    assert_eq!(Loader::new(ds.clone(), keep).unwrap().steps(), 3);
    assert_eq!(batches.iter().map(|b| b.len).collect::<Vec<_>>(), [4, 4, 2]);
    assert_eq!(batches[2].shape, [2, 3, 4, 4]);
    assert_eq!(batches[2].images.len(), 2 * 48);
    assert_eq!(batches[2].labels, [8, 9]);
    let drop = BatchConfig {
        drop_last: true,
        ..BatchConfig::eval(4)
    };
    assert_eq!(all(&ds, &drop).len(), 2);
    // Batch size 0 is taken as 1; an empty data set has no batches.
    assert_eq!(all(&ds, &BatchConfig::eval(0)).len(), 10);
    let empty = Arc::new(synthetic(0, 4));
    assert_eq!(all(&empty, &BatchConfig::eval(4)).len(), 0);
    assert_eq!(all(&empty, &BatchConfig::train(&empty, 4, 1, 1)).len(), 0);
}

#[test]
fn evaluation_batches_are_the_normalised_images_in_order() {
    let ds = Arc::new(synthetic(7, 5));
    let mut expect = vec![0f32; 75];
    for batch in all(&ds, &BatchConfig::eval(3)) {
        for j in 0..batch.len {
            let i = batch.index * 3 + j;
            ds.normalized(i, &mut expect);
            assert_eq!(&batch.images[j * 75..(j + 1) * 75], &expect[..]);
            assert_eq!(batch.labels[j], ds.labels[i] as i64);
        }
    }
    // The formula: (p / 255 - mean) / std.
    let p = ds.image(0)[0] as f32;
    ds.normalized(0, &mut expect);
    assert_eq!(expect[0], (p / 255.0 - 0.4914) / 0.2023);
}

/// Whether `got` (normalised CHW) is `src` shifted by some offset within
/// `pad` and maybe mirrored, with zero padding.
fn is_crop_of(ds: &Dataset, src: &[u8], got: &[f32], aug: Augment) -> bool {
    let [c, h, w] = ds.shape;
    let table = ds.norm.table();
    let p = aug.pad as isize;
    for dy in -p..=p {
        for dx in -p..=p {
            for flip in [false, true] {
                if flip && !aug.hflip {
                    continue;
                }
                let ok = (0..c).all(|ch| {
                    (0..h).all(|y| {
                        (0..w).all(|x| {
                            let xo = if flip { w - 1 - x } else { x } as isize + dx;
                            let yo = y as isize + dy;
                            let inside =
                                (0..h as isize).contains(&yo) && (0..w as isize).contains(&xo);
                            let pixel = if inside {
                                src[ch * h * w + yo as usize * w + xo as usize]
                            } else {
                                0
                            };
                            got[ch * h * w + y * w + x] == table[ch][pixel as usize]
                        })
                    })
                });
                if ok {
                    return true;
                }
            }
        }
    }
    false
}

#[test]
fn augmented_images_are_crops_and_flips_of_their_source() {
    for ds in [digits(), Arc::new(synthetic(40, 6))] {
        let cfg = BatchConfig {
            shuffle: true,
            ..train_cfg(&ds, 16)
        };
        let aug = ds.augment;
        let order = epoch_order(ds.len(), true, cfg.seed, cfg.epoch);
        let len = ds.image_len();
        for batch in Loader::new(ds.clone(), cfg).unwrap().take(2) {
            for j in 0..batch.len {
                let i = order[batch.index * 16 + j];
                let got = &batch.images[j * len..(j + 1) * len];
                assert!(
                    is_crop_of(&ds, ds.image(i), got, aug),
                    "{} image {i}",
                    ds.name
                );
            }
        }
    }
}

#[test]
fn dropping_a_loader_mid_epoch_stops_its_threads() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ds = Arc::new(synthetic(2000, 32));
        for workers in [1, 3] {
            let cfg = BatchConfig {
                prefetch: 2,
                ..train_cfg(&ds, 16)
            };
            let mut loader = Loader::with_workers(ds.clone(), cfg, workers).unwrap();
            assert!(loader.next().is_some());
            std::thread::sleep(Duration::from_millis(50)); // workers now blocked on full channels
            drop(loader);
            // Never started consuming at all.
            drop(Loader::with_workers(
                ds.clone(),
                BatchConfig::eval(8),
                workers,
            ));
        }
        done_tx.send(()).unwrap();
    });
    assert!(
        done_rx.recv_timeout(Duration::from_secs(60)).is_ok(),
        "dropping a loader hung"
    );
}

#[test]
fn waited_counts_blocking_time() {
    let ds = digits();
    let mut loader = Loader::new(ds, BatchConfig::eval(64)).unwrap();
    assert_eq!(loader.waited(), Duration::ZERO);
    let t0 = std::time::Instant::now();
    let n = loader.by_ref().count();
    assert_eq!(n, 23);
    assert!(loader.waited() <= t0.elapsed());
}

#[test]
fn each_batch_draws_its_own_augmentation() {
    // Every image the same, no shuffling: batches differ only by their
    // augmentation, which must depend on the batch index.
    let one = synthetic(1, 8);
    let ds = Arc::new(Dataset {
        images: one.images.repeat(64),
        labels: vec![0; 64],
        ..one
    });
    let cfg = BatchConfig {
        shuffle: false,
        augment: Some(Augment::cifar10()),
        ..BatchConfig::eval(16)
    };
    let batches = all(&ds, &cfg);
    assert_eq!(batches.len(), 4);
    for a in 0..4 {
        for b in a + 1..4 {
            assert_ne!(batches[a].images, batches[b].images, "batches {a} and {b}");
        }
    }
    // Within a batch, images draw different crops too.
    let len = ds.image_len();
    assert_ne!(batches[0].images[..len], batches[0].images[len..2 * len]);
}

/// Data-parallel shards: for 2 and 3 ranks, batch sizes that divide and
/// one that does not, the ranks' parts of each batch put together in rank
/// order are the one-process batch (images after augmentation, labels), so
/// the ranks together see every image of the epoch once; the parts of a
/// last batch smaller than the world are cut as evenly (some empty).
#[test]
fn shards_put_together_are_the_one_process_batches() {
    let ds = Arc::new(synthetic(103, 8));
    for (batch, world) in [(20, 2), (21, 3), (8, 3), (103, 2)] {
        let cfg = BatchConfig {
            drop_last: false,
            ..train_cfg(&ds, batch)
        };
        let whole = all(&ds, &cfg);
        let parts: Vec<Vec<Batch>> = (0..world)
            .map(|rank| {
                all(
                    &ds,
                    &BatchConfig {
                        shard: Shard { rank, world },
                        ..cfg.clone()
                    },
                )
            })
            .collect();
        let mut seen = 0;
        for (b, w) in whole.iter().enumerate() {
            let mut images = Vec::new();
            let mut labels = Vec::new();
            for p in &parts {
                let part = &p[b];
                assert_eq!((part.index, part.whole_len), (b, w.len));
                assert!(part.len >= w.len / world && part.len <= w.len.div_ceil(world));
                images.extend_from_slice(&part.images);
                labels.extend_from_slice(&part.labels);
            }
            assert_eq!((images, labels), (w.images.clone(), w.labels.clone()));
            seen += w.len;
        }
        assert_eq!(seen, ds.len(), "batch {batch}, {world} ranks");
        assert!(parts.iter().all(|p| p.len() == whole.len()));
    }
    // A last batch of 1 image over 3 ranks: only the last rank has it.
    let ranges: Vec<_> = (0..3)
        .map(|rank| Shard { rank, world: 3 }.range(1))
        .collect();
    assert_eq!(ranges, [0..0, 0..0, 0..1]);
}
