//! `metrics.jsonl` and `metrics.csv`: one [`EpochRecord`] per finished
//! epoch. The runtime's training loop (`qatc_runtime::train::metrics`)
//! rewrites both files whole, atomically, after every epoch from the records
//! in memory; `--resume` reads `metrics.jsonl` back (and drops the epochs
//! after its checkpoint), and `qatc plot` / `qatc compare` read it to draw
//! and tabulate the run. `metrics.csv` is for people and spreadsheets; no
//! qatc command reads it.
//!
//! A missing `metrics.jsonl` is a run with no finished epoch yet (the
//! trainer writes it after the first one), not an error.

use crate::error::{json_error, read_text, serialize_error};
use crate::RecordError;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One finished epoch, a line of `metrics.jsonl`. Accuracies in percent.
///
/// Written with the fields in this order. Read leniently: a `null` number
/// is NaN (serde_json writes a NaN, a diverged loss say, as `null`); the
/// throughput and data-wait times, which older runs did not record, are NaN
/// when absent; `clip` is empty when absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch, from 1.
    pub epoch: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub train_top1: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub test_loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub test_top1: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub test_top5: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub epoch_seconds: f64,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub train_images_per_s: f64,
    /// Time the training loop waited for the data loader in this epoch.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub data_wait_seconds: f64,
    /// Clipping value per activation site, after the epoch (by site name).
    #[serde(default, deserialize_with = "clip_nan_if_null")]
    pub clip: BTreeMap<String, f64>,
}

fn nan() -> f64 {
    f64::NAN
}

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn clip_nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let sites = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(sites
        .into_iter()
        .map(|(site, v)| (site, v.unwrap_or(f64::NAN)))
        .collect())
}

/// Reads `metrics.jsonl` at `path`, in file order; a missing file is a run
/// with no finished epoch (no records). Blank lines are skipped.
pub fn read(path: &Path) -> Result<Vec<EpochRecord>, RecordError> {
    let Some(text) = read_text(path)? else {
        return Ok(Vec::new());
    };
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| serde_json::from_str(line).map_err(|e| json_error(path, i, &e)))
        .collect()
}

/// The bytes of `metrics.jsonl`: one compact JSON object per record, each
/// followed by a newline.
pub fn jsonl(records: &[EpochRecord]) -> Result<String, RecordError> {
    let mut out = String::new();
    for r in records {
        out += &serde_json::to_string(r).map_err(|e| serialize_error("an epoch's metrics", e))?;
        out.push('\n');
    }
    Ok(out)
}

/// The bytes of `metrics.csv`: a header row, then one row per record; the
/// clipping sites are the first record's, a `clip/<site>` column each.
/// Seconds with 3 decimals, images per second with 1, the rest in full.
pub fn csv(records: &[EpochRecord]) -> String {
    let sites: Vec<&String> = records
        .first()
        .map(|r| r.clip.keys().collect())
        .unwrap_or_default();
    let mut out = String::from(
        "epoch,lr,train_loss,train_top1,test_loss,test_top1,test_top5,epoch_seconds,train_images_per_s,data_wait_seconds",
    );
    for s in &sites {
        let _ = write!(out, ",clip/{s}");
    }
    out.push('\n');
    for r in records {
        let _ = write!(
            out,
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
                Some(v) => {
                    let _ = write!(out, ",{v}");
                }
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

    fn record() -> EpochRecord {
        EpochRecord {
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
        }
    }

    #[test]
    fn a_line_has_the_fields_in_order_and_reads_back() {
        let text = jsonl(&[record()]).unwrap();
        assert_eq!(
            text,
            "{\"epoch\":1,\"lr\":0.1,\"train_loss\":2.0,\"train_top1\":30.0,\"test_loss\":1.5,\"test_top1\":40.0,\"test_top5\":90.0,\"epoch_seconds\":3.0,\"train_images_per_s\":100.0,\"data_wait_seconds\":0.0,\"clip\":{\"stem.act\":6.0}}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(&path, format!("{text}\n")).unwrap();
        assert_eq!(read(&path).unwrap(), [record()]);
        assert_eq!(
            csv(&[record()]),
            "epoch,lr,train_loss,train_top1,test_loss,test_top1,test_top5,epoch_seconds,train_images_per_s,data_wait_seconds,clip/stem.act\n1,0.1,2,30,1.5,40,90,3.000,100.0,0.000,6\n"
        );
    }

    #[test]
    fn nan_is_written_as_null_and_read_back_as_nan() {
        let mut r = record();
        r.test_loss = f64::NAN;
        r.clip.insert("b.act".into(), f64::NAN);
        let text = jsonl(&[r]).unwrap();
        assert!(text.contains("\"test_loss\":null"), "{text}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(&path, &text).unwrap();
        let back = read(&path).unwrap();
        assert!(back[0].test_loss.is_nan() && back[0].clip["b.act"].is_nan());
        assert_eq!(back[0].clip["stem.act"], 6.0);
    }

    #[test]
    fn older_lines_and_unknown_keys_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(
            &path,
            "{\"epoch\":2,\"lr\":0.1,\"train_loss\":2,\"train_top1\":3,\"test_loss\":4,\"test_top1\":5,\"test_top5\":6,\"epoch_seconds\":7,\"later\":[1]}\n",
        )
        .unwrap();
        let r = &read(&path).unwrap()[0];
        assert_eq!((r.epoch, r.test_top5), (2, 6.0));
        assert!(r.train_images_per_s.is_nan() && r.data_wait_seconds.is_nan());
        assert!(r.clip.is_empty());
    }

    #[test]
    fn a_missing_file_is_no_epoch_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        assert_eq!(read(&path).unwrap(), []);
        let good = jsonl(&[record()]).unwrap();
        std::fs::write(&path, format!("{good}\n{{}}\n")).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{}:3:2: missing field `epoch`", path.display())
        );
    }
}
