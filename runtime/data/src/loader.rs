//! The batch loader: an epoch of shuffled, augmented, normalised batches,
//! made on background threads and delivered in order.
//!
//! Determinism (what exact resume relies on): an epoch's order of images is
//! a function of `(seed, epoch)` alone, and the random crops and flips of
//! batch `b` a function of `(seed, epoch, b)` alone: each comes from its own
//! PCG-64 generator (`rand_pcg::Pcg64`) seeded by SplitMix64 over those
//! numbers and a stream tag. So batch `b` is the same whichever thread makes
//! it, however many workers there are, and `start_step = k` yields exactly
//! batches `k..` of the full epoch. The values also depend on the `rand`
//! 0.10 algorithms (`shuffle`, `random_range`, `random_bool`), which `rand`
//! keeps stable within a minor version and `Cargo.lock` pins.
//!
//! Threads: `workers` threads (1 by default: a batch of 128 CIFAR images
//! takes well under a millisecond, see the crate docs) each make every
//! `workers`-th batch and hand it over on a bounded `sync_channel`; the
//! consumer takes them round-robin, so batches arrive in order and at most
//! about `prefetch` wait in memory. Dropping the `Loader` drops the
//! receivers, so a worker's next send fails and it returns; `Drop` then
//! joins the workers (at most one batch of work each).

use crate::dataset::{Augment, Dataset};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Why a loader could not start, or a batch could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The operating system would not start a worker thread (resource
    /// exhaustion).
    // `error`, not `source`: the message already says it.
    #[error("cannot start a data-loader thread: {error}")]
    Thread { error: std::io::Error },
    /// [`make_batch`] asked for a batch that starts past the last image.
    #[error(
        "batch {index} is past the end of the epoch ({images} images in batches of {batch_size})"
    )]
    PastEnd {
        index: usize,
        images: usize,
        batch_size: usize,
    },
    /// [`make_batch`] was given an order that names an image the data set
    /// does not have.
    #[error("batch {index}: image {image} is not in the data set ({len} images)")]
    NotInDataSet {
        index: usize,
        image: usize,
        len: usize,
    },
}

/// How to cut an epoch into batches.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// Images per batch (0 is taken as 1).
    pub batch_size: usize,
    /// Shuffle the images (by `seed` and `epoch`); otherwise data-set order.
    pub shuffle: bool,
    /// Random crop and flip; `None` for none (evaluation).
    pub augment: Option<Augment>,
    /// The run's seed.
    pub seed: u64,
    /// The epoch: a new order and new augmentations each epoch.
    pub epoch: u64,
    /// The first batch to yield (resume mid-epoch).
    pub start_step: usize,
    /// Drop a last batch smaller than `batch_size`.
    pub drop_last: bool,
    /// Batches made ahead of the consumer (0: each one is made while the
    /// previous one is used).
    pub prefetch: usize,
    /// This process's part of every batch (data-parallel training).
    pub shard: Shard,
}

/// A process's part of every batch in data-parallel training: batch `b` of
/// the epoch (`batch_size` images of the shared order, as one process
/// would take them) is cut into `world` contiguous parts, `rank` takes part
/// `rank`: images `len * rank / world .. len * (rank + 1) / world` of it.
/// A whole batch gives every rank `batch_size / world` images when that
/// divides; the last, smaller batch is cut as evenly (a rank may get none
/// when it has fewer images than ranks). The parts of a batch put together
/// in rank order are the batch, augmentation included (each rank draws the
/// random numbers of the images before its part), so every image is seen
/// once an epoch, by one rank, exactly as one process would see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Default for Shard {
    /// The whole batch (one process).
    fn default() -> Self {
        Shard { rank: 0, world: 1 }
    }
}

impl Shard {
    /// The part `lo..hi` of a batch of `len` images.
    pub fn range(&self, len: usize) -> std::ops::Range<usize> {
        let world = self.world.max(1);
        let rank = self.rank.min(world - 1);
        (len * rank / world)..(len * (rank + 1) / world)
    }
}

impl Default for BatchConfig {
    /// Batch 128, no shuffle, no augmentation, seed 0, epoch 0, from the
    /// start, keep the last batch, prefetch 4: evaluation settings.
    fn default() -> Self {
        BatchConfig {
            batch_size: 128,
            shuffle: false,
            augment: None,
            seed: 0,
            epoch: 0,
            start_step: 0,
            drop_last: false,
            prefetch: 4,
            shard: Shard::default(),
        }
    }
}

impl BatchConfig {
    /// Training settings: shuffled, with `ds`'s usual augmentation, whole
    /// batches only.
    pub fn train(ds: &Dataset, batch_size: usize, seed: u64, epoch: u64) -> BatchConfig {
        BatchConfig {
            batch_size,
            shuffle: true,
            augment: Some(ds.augment),
            seed,
            epoch,
            drop_last: true,
            ..BatchConfig::default()
        }
    }

    /// Evaluation settings: data-set order, no augmentation, every image.
    pub fn eval(batch_size: usize) -> BatchConfig {
        BatchConfig {
            batch_size,
            ..BatchConfig::default()
        }
    }

    fn size(&self) -> usize {
        self.batch_size.max(1)
    }

    /// Batches in a whole epoch of `n` images.
    pub fn steps(&self, n: usize) -> usize {
        if self.drop_last {
            n / self.size()
        } else {
            n.div_ceil(self.size())
        }
    }
}

/// One batch (this process's part of it, see [`Shard`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The batch's index in the epoch (`start_step` for the first one).
    pub index: usize,
    /// Images in this batch (this process's part).
    pub len: usize,
    /// Images in the whole batch, every rank's part.
    pub whole_len: usize,
    /// `[len, C, H, W]`.
    pub shape: [usize; 4],
    /// Normalised (and augmented) pixels, NCHW.
    pub images: Vec<f32>,
    /// Labels.
    pub labels: Vec<i64>,
}

/// Stream tags, so the order and the augmentations never share numbers.
const STREAM_ORDER: u64 = 0x006f_7264_6572;
const STREAM_AUGMENT: u64 = 0x6175_676d;

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A generator that depends on `parts` only.
fn rng_for(parts: &[u64]) -> Pcg64 {
    let mut state = 0u64;
    for &p in parts {
        state ^= p;
        splitmix64(&mut state);
    }
    let mut seed = [0u8; 32];
    for word in seed.chunks_exact_mut(8) {
        word.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    Pcg64::from_seed(seed)
}

/// The order of an epoch's `n` images: a permutation that depends only on
/// `(seed, epoch)`, or `0..n` without shuffling.
pub fn epoch_order(n: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        order.shuffle(&mut rng_for(&[STREAM_ORDER, seed, epoch]));
    }
    order
}

/// Batch `index` of the epoch whose image order is `order`
/// (`epoch_order(ds.len(), cfg.shuffle, cfg.seed, cfg.epoch)`), made on the
/// calling thread: what a `Loader` yields as its batch `index`. An error
/// when the batch would start past the end of `order`
/// ([`LoaderError::PastEnd`]) or `order` names an image `ds` does not have
/// ([`LoaderError::NotInDataSet`]).
pub fn make_batch(
    ds: &Dataset,
    cfg: &BatchConfig,
    order: &[usize],
    index: usize,
) -> Result<Batch, LoaderError> {
    let size = cfg.size();
    let past_end = || LoaderError::PastEnd {
        index,
        images: order.len(),
        batch_size: size,
    };
    let start = index.checked_mul(size).ok_or_else(past_end)?;
    if start >= order.len() {
        return Err(past_end());
    }
    let end = (start + size).min(order.len());
    if let Some(&image) = order[start..end].iter().find(|&&i| i >= ds.len()) {
        return Err(LoaderError::NotInDataSet {
            index,
            image,
            len: ds.len(),
        });
    }
    Ok(make_batch_with(ds, cfg, &ds.norm.table(), order, index))
}

/// [`make_batch`] for a batch known to be inside the epoch and an order of
/// `ds`'s images (what a `Loader`'s workers make).
fn make_batch_with(
    ds: &Dataset,
    cfg: &BatchConfig,
    table: &[[f32; 256]],
    order: &[usize],
    index: usize,
) -> Batch {
    let size = cfg.size();
    let start = index * size;
    let end = (start + size).min(order.len());
    debug_assert!(start < end, "batch {index} is past the end of the epoch");
    let whole = &order[start..end];
    let part = cfg.shard.range(whole.len());
    let ids = &whole[part.clone()];
    let image_len = ds.image_len();
    let mut images = vec![0f32; ids.len() * image_len];
    let augment = cfg.augment.filter(|a| !a.is_identity());
    let mut rng = rng_for(&[STREAM_AUGMENT, cfg.seed, cfg.epoch, index as u64]);
    if let Some(a) = augment {
        // The draws of the images before this part, as one process makes them.
        for _ in 0..part.start {
            draw(&mut rng, a);
        }
    }
    for (&i, out) in ids.iter().zip(images.chunks_exact_mut(image_len)) {
        match augment {
            None => ds.normalize_with(table, i, out),
            Some(a) => {
                let (dy, dx, flip) = draw(&mut rng, a);
                augment_into(ds.image(i), ds.shape, table, dy, dx, flip, out);
            }
        }
    }
    Batch {
        index,
        len: ids.len(),
        whole_len: whole.len(),
        shape: [ids.len(), ds.shape[0], ds.shape[1], ds.shape[2]],
        images,
        labels: ids.iter().map(|&i| ds.labels[i] as i64).collect(),
    }
}

/// One image's random crop offsets (`-pad..=pad`) and flip, drawn in the
/// order top, left, flip.
fn draw(rng: &mut Pcg64, a: Augment) -> (isize, isize, bool) {
    // `u32` ranges: rand 0.10 samples no `usize`, whose width varies.
    let p = a.pad.min(u32::MAX as usize / 2) as u32;
    let (dy, dx) = if p > 0 {
        let top = rng.random_range(0..=2 * p);
        let left = rng.random_range(0..=2 * p);
        (top as isize - p as isize, left as isize - p as isize)
    } else {
        (0, 0)
    };
    let flip = a.hflip && rng.random_bool(0.5);
    (dy, dx, flip)
}

/// Writes the crop of `src` (CHW) padded with zero pixels, shifted by
/// `(dy, dx)` (output `(y, x)` shows input `(y + dy, x + dx)`), then
/// mirrored when `flip`, normalised through `table`.
pub(crate) fn augment_into(
    src: &[u8],
    [c, h, w]: [usize; 3],
    table: &[[f32; 256]],
    dy: isize,
    dx: isize,
    flip: bool,
    out: &mut [f32],
) {
    let plane = h * w;
    for ch in 0..c {
        let t = &table[ch];
        let zero = t[0];
        let src = &src[ch * plane..(ch + 1) * plane];
        let dst = &mut out[ch * plane..(ch + 1) * plane];
        for y in 0..h {
            let row = &mut dst[y * w..(y + 1) * w];
            let sy = y as isize + dy;
            if sy < 0 || sy >= h as isize {
                row.fill(zero);
                continue;
            }
            let src_row = &src[sy as usize * w..(sy as usize + 1) * w];
            // Output x shows source column (flip ? w-1-x : x) + dx; the
            // columns with a source pixel form one run [lo, hi).
            let wi = w as isize;
            let (lo, hi) = if flip {
                (dx.clamp(0, wi), (wi + dx).clamp(0, wi))
            } else {
                ((-dx).clamp(0, wi), (wi - dx).clamp(0, wi))
            };
            let (lo, hi) = (lo as usize, hi.max(lo) as usize);
            row[..lo].fill(zero);
            row[hi..].fill(zero);
            let inside = &mut row[lo..hi];
            if inside.is_empty() {
                continue;
            }
            if flip {
                let from = (wi - hi as isize + dx) as usize;
                let pixels = src_row[from..from + inside.len()].iter().rev();
                for (v, &p) in inside.iter_mut().zip(pixels) {
                    *v = t[p as usize];
                }
            } else {
                let from = (lo as isize + dx) as usize;
                for (v, &p) in inside.iter_mut().zip(&src_row[from..]) {
                    *v = t[p as usize];
                }
            }
        }
    }
}

/// An epoch of batches, made ahead on background threads.
pub struct Loader {
    receivers: Vec<Receiver<Batch>>,
    workers: Vec<JoinHandle<()>>,
    next: usize,
    start: usize,
    steps: usize,
    waited: Duration,
}

impl Loader {
    /// Starts making the batches `cfg.start_step..` of the epoch on one
    /// background thread; an error if the thread cannot be started.
    pub fn new(ds: Arc<Dataset>, cfg: BatchConfig) -> Result<Loader, LoaderError> {
        Loader::with_workers(ds, cfg, 1)
    }

    /// Like `new`, with `workers` threads (at least 1); the batches are the
    /// same whatever the number. An error if a thread cannot be started
    /// (those already started are stopped and joined).
    pub fn with_workers(
        ds: Arc<Dataset>,
        cfg: BatchConfig,
        workers: usize,
    ) -> Result<Loader, LoaderError> {
        let steps = cfg.steps(ds.len());
        let start = cfg.start_step.min(steps);
        let count = workers.clamp(1, (steps - start).max(1));
        let order = Arc::new(epoch_order(ds.len(), cfg.shuffle, cfg.seed, cfg.epoch));
        let table: Arc<[[f32; 256]]> = ds.norm.table().into();
        let capacity = cfg.prefetch.div_ceil(count);
        // Built as the workers start, so that on an error `Drop` stops the
        // ones already running.
        let mut loader = Loader {
            receivers: Vec::with_capacity(count),
            workers: Vec::with_capacity(count),
            next: start,
            start,
            steps,
            waited: Duration::ZERO,
        };
        for w in 0..count {
            let (tx, rx) = sync_channel(capacity);
            let (ds, cfg, order, table) = (ds.clone(), cfg.clone(), order.clone(), table.clone());
            let handle = std::thread::Builder::new()
                .name(format!("qatc-data-{w}"))
                .spawn(move || {
                    for index in (start + w..steps).step_by(count) {
                        let batch = make_batch_with(&ds, &cfg, &table, &order, index);
                        if tx.send(batch).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|error| LoaderError::Thread { error })?;
            loader.receivers.push(rx);
            loader.workers.push(handle);
        }
        Ok(loader)
    }

    /// Batches in the whole epoch (the loader yields `steps() - start_step`
    /// of them, from index `start_step`).
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Total time `next()` has blocked waiting for a batch: near zero while
    /// the loader keeps ahead of the consumer.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.steps || self.receivers.is_empty() {
            return None;
        }
        let worker = (self.next - self.start) % self.receivers.len();
        let t0 = Instant::now();
        let received = self.receivers[worker].recv();
        self.waited += t0.elapsed();
        match received {
            Ok(batch) => {
                self.next += 1;
                Some(batch)
            }
            Err(_) => {
                // The worker ended early: it can only have panicked.
                let handle = self.workers.remove(worker);
                self.receivers.clear();
                if let Err(panic) = handle.join() {
                    std::panic::resume_unwind(panic);
                }
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.steps.saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Loader {}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channels makes each worker's next send fail.
        self.receivers.clear();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Normalize;

    /// Pixel p normalises to p.
    fn identity_table(channels: usize) -> Vec<[f32; 256]> {
        Normalize {
            scale: 1.0,
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
        .table()
    }

    /// A 2x3x4 image whose pixel (c, y, x) is 100c + 10y + x + 1.
    fn known() -> Vec<u8> {
        let mut v = Vec::new();
        for c in 0..2 {
            for y in 0..3 {
                for x in 0..4 {
                    v.push((100 * c + 10 * y + x + 1) as u8);
                }
            }
        }
        v
    }

    fn run(dy: isize, dx: isize, flip: bool) -> Vec<f32> {
        let mut out = vec![-1.0; 24];
        augment_into(
            &known(),
            [2, 3, 4],
            &identity_table(2),
            dy,
            dx,
            flip,
            &mut out,
        );
        out
    }

    #[test]
    fn no_shift_no_flip_is_the_image() {
        let expect: Vec<f32> = known().iter().map(|&p| p as f32).collect();
        assert_eq!(run(0, 0, false), expect);
    }

    #[test]
    fn crop_shifts_with_zero_padding() {
        // Output (y, x) shows input (y + dy, x + dx), zero outside.
        #[rustfmt::skip]
        let expect = [
            12., 13., 14., 0.,
            22., 23., 24., 0.,
            0., 0., 0., 0.,
            112., 113., 114., 0.,
            122., 123., 124., 0.,
            0., 0., 0., 0.,
        ];
        assert_eq!(run(1, 1, false), expect);
        #[rustfmt::skip]
        let expect = [
            0., 0., 0., 0.,
            0., 0., 1., 2.,
            0., 0., 11., 12.,
            0., 0., 0., 0.,
            0., 0., 101., 102.,
            0., 0., 111., 112.,
        ];
        assert_eq!(&run(-1, -2, false)[..12], &expect[..12]);
        assert_eq!(&run(-1, -2, false)[12..], &expect[12..]);
    }

    #[test]
    fn shifts_beyond_the_image_give_padding_only() {
        for (dy, dx) in [(0, 4), (0, -4), (0, 9), (0, -9), (3, 0), (-7, 1)] {
            for flip in [false, true] {
                assert!(
                    run(dy, dx, flip).iter().all(|&v| v == 0.0),
                    "{dy} {dx} {flip}"
                );
            }
        }
        // One column left in view, on either side, flipped or not.
        assert_eq!(&run(0, 3, false)[..4], &[4., 0., 0., 0.]);
        assert_eq!(&run(0, 3, true)[..4], &[0., 0., 0., 4.]);
        assert_eq!(&run(0, -3, true)[..4], &[1., 0., 0., 0.]);
    }

    #[test]
    fn flip_mirrors_each_row_after_the_crop() {
        #[rustfmt::skip]
        let flipped = [
            4., 3., 2., 1.,
            14., 13., 12., 11.,
            24., 23., 22., 21.,
        ];
        assert_eq!(&run(0, 0, true)[..12], &flipped);
        // Crop first (shift right by one), then mirror: torchvision's order.
        #[rustfmt::skip]
        let expect = [
            0., 4., 3., 2.,
            0., 14., 13., 12.,
            0., 24., 23., 22.,
        ];
        assert_eq!(&run(0, 1, true)[..12], &expect);
    }

    #[test]
    fn padding_is_a_zero_pixel_after_normalisation() {
        let norm = Normalize::cifar10();
        let table = norm.table();
        let mut out = vec![0.0; 2 * 3 * 4];
        augment_into(&known(), [2, 3, 4], &table, 5, 0, false, &mut out);
        assert_eq!(out[0], (0.0 - 0.4914) / 0.2023);
        assert_eq!(out[12], (0.0 - 0.4822) / 0.1994);
    }

    #[test]
    fn draws_cover_every_offset_and_both_flips() {
        let a = Augment {
            pad: 2,
            hflip: true,
        };
        let mut rng = rng_for(&[1, 2, 3]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let (dy, dx, flip) = draw(&mut rng, a);
            assert!((-2..=2).contains(&dy) && (-2..=2).contains(&dx));
            seen.insert((dy, dx, flip));
        }
        assert_eq!(seen.len(), 5 * 5 * 2);
        let no_flip = Augment {
            pad: 1,
            hflip: false,
        };
        assert!((0..100).all(|_| !draw(&mut rng, no_flip).2));
    }

    #[test]
    fn rng_streams_differ_by_every_part() {
        use rand::Rng;
        let first = |parts: &[u64]| rng_for(parts).next_u64();
        let base = first(&[STREAM_AUGMENT, 1, 2, 3]);
        assert_eq!(base, first(&[STREAM_AUGMENT, 1, 2, 3]));
        assert_ne!(base, first(&[STREAM_AUGMENT, 1, 2, 4]));
        assert_ne!(base, first(&[STREAM_AUGMENT, 1, 3, 3]));
        assert_ne!(base, first(&[STREAM_AUGMENT, 0, 2, 3]));
        assert_ne!(base, first(&[STREAM_ORDER, 1, 2, 3]));
    }
}
