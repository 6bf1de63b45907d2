//! qatc-records: the facts a training run writes down, as typed records.
//!
//! A run directory (what `qatc train`, through a generated model binary,
//! writes; what `qatc plot`, `qatc compare`, `--resume` and `qatc eval`
//! read) holds:
//! - `run.json`: [`RunInfo`], the run's model, profile, spec, spec hash,
//!   data and resolved settings ([`run_info`]);
//! - `metrics.jsonl` and `metrics.csv`: one [`EpochRecord`] per finished
//!   epoch ([`metrics`]);
//! - `latest.safetensors`, `best.safetensors`, `previous.safetensors`, each
//!   with a JSON sidecar holding its [`CheckpointMeta`], the copy of the
//!   metadata in the safetensors header ([`checkpoint`]);
//! - TensorBoard event files (written and named by the runtime alone).
//!
//! Beside the run directory, [`EvalReport`] is what `eval --format json`
//! prints ([`eval`]).
//!
//! [`run_dir`] names those files. The runtime (`qatc-runtime`) is the one
//! writer: it serialises through these types ([`RunInfo::to_json`],
//! [`metrics::jsonl`], [`metrics::csv`], [`CheckpointMeta::sidecar_json`]),
//! so the bytes on disk are whatever these types say, field names and order
//! included. Readers go through the typed readers ([`run_info::read`],
//! [`metrics::read`], [`checkpoint::read_sidecar`]), whose errors
//! ([`RecordError`]) name the file, and for JSON the line and column.
//!
//! Invariants:
//! - The JSON written for a record is fixed by the field order of its type;
//!   changing a field's name or order changes every new run's files and is
//!   a format change (`CheckpointMeta::format` says which one a checkpoint
//!   has).
//! - Readers take what the writers write, and a little more, so older or
//!   hand-edited files still read: keys a record does not know are ignored;
//!   a `null` metric (serde_json writes a NaN as `null`) reads back as NaN.
//!   Each type says what else it allows.
//!
//! This crate is free of tch and of the data sets: the compiler's `plot` and
//! `compare` commands depend on it without pulling in libtorch.

pub mod checkpoint;
mod error;
pub mod eval;
pub mod metrics;
pub mod run_info;

pub use checkpoint::{CheckpointMeta, PartialEpoch};
pub use error::RecordError;
pub use eval::EvalReport;
pub use metrics::EpochRecord;
pub use run_info::{AnyConfig, RunInfo};

/// The names of the files in a run directory, and of a checkpoint's sidecar.
pub mod run_dir {
    use std::path::{Path, PathBuf};

    /// The run's description: [`crate::RunInfo`], pretty JSON.
    pub const RUN_JSON: &str = "run.json";
    /// One [`crate::EpochRecord`] per line, one line per finished epoch.
    pub const METRICS_JSONL: &str = "metrics.jsonl";
    /// The same records as CSV, a `clip/<site>` column per clipping value.
    pub const METRICS_CSV: &str = "metrics.csv";
    /// The checkpoint `--resume` continues from (with the optimizer state),
    /// saved after every epoch and on interrupt.
    pub const LATEST: &str = "latest.safetensors";
    /// The checkpoint with the best test top-1 so far (weights only).
    pub const BEST: &str = "best.safetensors";
    /// The `latest` before the last one, kept as the fallback of `--resume`.
    pub const PREVIOUS: &str = "previous.safetensors";
    /// Where a corrupt `latest` is moved when `--resume` falls back.
    pub const CORRUPT_LATEST: &str = "latest-corrupt.safetensors";

    /// The JSON sidecar of a checkpoint: `best.safetensors` ->
    /// `best.json`.
    pub fn sidecar(checkpoint: &Path) -> PathBuf {
        checkpoint.with_extension("json")
    }
}
