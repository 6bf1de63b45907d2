//! Per-epoch metrics of a run: `metrics.jsonl` (one object per epoch) and
//! `metrics.csv` (the same, one row per epoch, a `clip/<site>` column per
//! learnable clipping value). Both are rewritten whole and atomically after
//! every epoch from the records in memory, so a resumed run (which reads
//! `metrics.jsonl` back and drops epochs after its checkpoint) never leaves
//! duplicate or half-written lines.

use super::checkpoint::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One finished epoch. Accuracies in percent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_top1: f64,
    pub test_loss: f64,
    pub test_top1: f64,
    pub test_top5: f64,
    pub epoch_seconds: f64,
    pub train_images_per_s: f64,
    /// Time the training loop waited for the data loader in this epoch.
    pub data_wait_seconds: f64,
    /// Clipping value per activation site, after the epoch.
    pub clip: BTreeMap<String, f64>,
}

/// Reads `metrics.jsonl`; a missing file is an empty run.
pub fn read_jsonl(path: &Path) -> Result<Vec<EpochRecord>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read `{}`: {e}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// Writes `metrics.jsonl` and `metrics.csv` into `dir`.
pub fn write(dir: &Path, records: &[EpochRecord]) -> Result<(), String> {
    let mut jsonl = String::new();
    for r in records {
        jsonl += &serde_json::to_string(r).map_err(|e| e.to_string())?;
        jsonl.push('\n');
    }
    let path = dir.join("metrics.jsonl");
    write_atomic(&path, jsonl.as_bytes())
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    let path = dir.join("metrics.csv");
    write_atomic(&path, csv(records).as_bytes())
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

fn csv(records: &[EpochRecord]) -> String {
    let sites: Vec<&String> = records
        .first()
        .map(|r| r.clip.keys().collect())
        .unwrap_or_default();
    let mut out = String::from(
        "epoch,lr,train_loss,train_top1,test_loss,test_top1,test_top5,epoch_seconds,train_images_per_s,data_wait_seconds",
    );
    for s in &sites {
        out += &format!(",clip/{s}");
    }
    out.push('\n');
    for r in records {
        out += &format!(
            "{},{},{},{},{},{},{},{:.3},{:.1},{:.3}",
            r.epoch,
            r.lr,
            r.train_loss,
            r.train_top1,
            r.test_loss,
            r.test_top1,
            r.test_top5,
            r.epoch_seconds,
            r.train_images_per_s,
            r.data_wait_seconds
        );
        for s in &sites {
            match r.clip.get(*s) {
                Some(v) => out += &format!(",{v}"),
                None => out.push(','),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
