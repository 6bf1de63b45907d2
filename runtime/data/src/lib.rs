//! qatc-data: the data sets qatc trains and evaluates on, and a
//! deterministic, prefetching batch loader. Pure Rust and free of tch, so
//! that both the tch training runtime and the integer engine of the `qatc`
//! compiler crate use the same pixels, order and normalisation.
//!
//! Pipeline: `open(data)` -> `Split { train, test }` of `Dataset`s (decoded
//! `u8` pixels, CHW, in memory) -> `Loader::new(Arc<Dataset>, BatchConfig)`
//! -> `Batch`es of normalised, augmented `f32` NCHW pixels and `i64` labels.
//! Bad input is an error value (`DataError` opening, `LoaderError` when a
//! loader cannot start its thread or `make_batch` is asked for a batch
//! that does not exist), never a panic.
//!
//! ```
//! use qatc_data::{open, BatchConfig, Loader};
//! use std::sync::Arc;
//!
//! let split = open("digits")?; // or a CIFAR-10 directory, an image folder, a .tar.gz
//! let train = Arc::new(split.train);
//! // Epoch 3 of a run seeded 42, resumed at its 5th batch.
//! let cfg = BatchConfig {
//!     start_step: 4,
//!     ..BatchConfig::train(&train, 128, 42, 3)
//! };
//! let loader = Loader::new(train.clone(), cfg)?;
//! assert_eq!(loader.steps(), 1437 / 128); // the whole epoch, last partial batch dropped
//! for batch in loader {
//!     assert_eq!(batch.shape, [128, 1, 8, 8]); // normalised f32 NCHW in batch.images
//!     assert!(batch.index >= 4 && batch.labels.len() == 128);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `open` accepts:
//! - `digits`: the built-in UCI digits ([`digits`]);
//! - a directory with `data_batch_*.bin` and `test_batch.bin`: CIFAR-10
//!   binary ([`cifar`]); a directory whose `cifar-10-batches-bin/` holds
//!   them (the official archive unpacked as it is) works too;
//! - a directory with `train/<class>/*` and `test/<class>/*`: an image
//!   folder ([`folder`]), decoded once and cached ([`cache`]);
//! - a `.tar.gz` / `.tgz` of such a folder, read without unpacking it.
//!
//! Dependencies, chosen for a lean tree on a 2-core machine:
//! - `image` (jpeg + png only, no default features): the Rust ecosystem's
//!   standard decoder front end; its JPEG decoder (zune-jpeg) and PNG
//!   decoder are pure Rust and fast; no rayon, no other formats.
//! - `flate2` (miniz_oxide backend, pure Rust): the embedded digits table
//!   and `.tar.gz` archives; `tar`: reading archives in memory.
//! - `rand` (no default features) + `rand_pcg`: `Pcg64` is small, fast,
//!   portable and seedable with documented, stable output; `rand` gives
//!   the unbiased `shuffle` and range sampling (no `getrandom`, no OS
//!   entropy: every number comes from the run's seed).
//! - `thiserror`: the `DataError` enum.
//!
//! Measured on the 2-core development machine under load from concurrent
//! builds (medians of three runs; `examples/data_bench.rs`; details in
//! `docs/performance.md`, "Data pipeline"):
//! - CIFAR-10 as an image folder of 60,000 JPEGs: first open (list, decode
//!   on 2 threads, write the cache) 3.9 s; cached 0.40 s. The same data as
//!   `.tar.gz` opened directly: 3.8 s first, 0.20 s cached.
//! - `Loader`, batch 128, pad-4 crop + flip + normalisation on CIFAR-10:
//!   2,100 batches/s (270,000 images/s) on one worker thread, 0.46 ms a
//!   batch, so an epoch costs about 0.2 s of one core; a second worker does
//!   not help on 2 cores, hence one by default.

pub mod cache;
pub mod cifar;
pub mod dataset;
mod decode;
pub mod digits;
pub mod error;
pub mod folder;
pub mod loader;

pub use cache::write_atomic;
pub use cifar::CIFAR10_CLASSES;
pub use dataset::{Augment, Dataset, Normalize, Skipped, Split};
pub use error::DataError;
pub use folder::FolderOptions;
pub use loader::{epoch_order, make_batch, Batch, BatchConfig, Loader, LoaderError, Shard};

use std::path::Path;

/// Opens a data set (see the crate docs for what `data` may be) with the
/// default folder options.
pub fn open(data: &str) -> Result<Split, DataError> {
    open_with(data, &FolderOptions::default())
}

/// Opens a data set, decoding and caching image folders as `opts` says.
pub fn open_with(data: &str, opts: &FolderOptions) -> Result<Split, DataError> {
    if data == "digits" {
        return digits::digits();
    }
    let path = Path::new(data);
    if !path.exists() {
        return Err(DataError::NotFound { path: path.into() });
    }
    if path.is_file() {
        if folder::is_archive(path) {
            return folder::open_archive(path, opts);
        }
        return Err(DataError::UnknownLayout { path: path.into() });
    }
    if cifar::is_cifar_dir(path) {
        return cifar::open_cifar(path);
    }
    let nested = path.join("cifar-10-batches-bin");
    if cifar::is_cifar_dir(&nested) {
        return cifar::open_cifar(&nested);
    }
    if folder::is_image_folder(path) {
        return folder::open_folder(path, opts);
    }
    Err(DataError::UnknownLayout { path: path.into() })
}
