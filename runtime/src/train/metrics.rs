//! Per-epoch metrics of a run: `metrics.jsonl` (one object per epoch) and
//! `metrics.csv` (the same, one row per epoch, a `clip/<site>` column per
//! learnable clipping value). Both are rewritten whole and atomically after
//! every epoch from the records in memory, so a resumed run (which reads
//! `metrics.jsonl` back and drops epochs after its checkpoint) never leaves
//! duplicate or half-written lines.
//!
//! The record ([`EpochRecord`]) and both files' formats are defined in
//! `qatc_records::metrics`; this module writes them atomically.

use super::checkpoint::write_atomic;
use qatc_records::run_dir::{METRICS_CSV, METRICS_JSONL};
use std::path::Path;

/// One finished epoch: defined in `qatc_records` (shared with `qatc plot`).
pub use qatc_records::metrics::EpochRecord;

/// Reads `metrics.jsonl`; a missing file is an empty run.
pub fn read_jsonl(path: &Path) -> Result<Vec<EpochRecord>, String> {
    qatc_records::metrics::read(path).map_err(|e| e.to_string())
}

/// Writes `metrics.jsonl` and `metrics.csv` into `dir`.
pub fn write(dir: &Path, records: &[EpochRecord]) -> Result<(), String> {
    let jsonl = qatc_records::metrics::jsonl(records).map_err(|e| e.to_string())?;
    let path = dir.join(METRICS_JSONL);
    write_atomic(&path, jsonl.as_bytes())
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    let path = dir.join(METRICS_CSV);
    write_atomic(&path, qatc_records::metrics::csv(records).as_bytes())
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn jsonl_and_csv_round_trip() {
        let dir = std::env::temp_dir().join(format!("qatc-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = EpochRecord {
            epoch: 1,
            lr: 0.1,
            train_loss: 2.0,
            train_top1: 30.0,
            test_loss: 1.5,
            test_top1: 40.0,
            test_top5: 90.0,
            epoch_seconds: 3.0,
            train_images_per_s: 100.0,
            data_wait_seconds: 0.0,
            clip: BTreeMap::from([("stem.act".to_string(), 6.0)]),
        };
        write(&dir, std::slice::from_ref(&r)).unwrap();
        assert_eq!(read_jsonl(&dir.join("metrics.jsonl")).unwrap(), [r]);
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        assert!(csv.lines().next().unwrap().ends_with(",clip/stem.act"));
        assert!(csv
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("1,0.1,2,30,1.5,40,90,"));
        std::fs::write(dir.join("bad.jsonl"), "{}\n").unwrap();
        let err = read_jsonl(&dir.join("bad.jsonl")).unwrap_err();
        assert!(err.contains("bad.jsonl:1"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
