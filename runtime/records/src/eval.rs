//! The report of `eval --format json`: what a generated model binary prints
//! for a checkpoint evaluated on a data set, and what `qatc eval --int`
//! reads back to put the integer engine beside it.
//!
//! Written by `qatc-runtime` (`train::eval`), one JSON object on stdout;
//! read by `qatc-cli`. Field order is the JSON's.

use crate::error::json_error;
use crate::RecordError;
use serde::{Deserialize, Deserializer, Serialize};
use std::path::Path;

/// One evaluation of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub model: String,
    pub profile: String,
    /// The checkpoint file, as named on the command line.
    pub checkpoint: String,
    /// The data set, as `--data` names it (`digits`, a directory, ...).
    pub data: String,
    /// `test` or `train`.
    pub split: String,
    pub device: String,
    pub images: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub top1: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub top5: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    pub classes: Vec<String>,
    /// Accuracy (%) per true class; `null` for a class without images.
    pub per_class: Vec<Option<f64>>,
    /// The test top-1 the checkpoint recorded when it was saved.
    pub recorded_top1: Option<f64>,
}

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl EvalReport {
    /// The report as printed (one line of JSON).
    pub fn to_json(&self) -> Result<String, RecordError> {
        serde_json::to_string(self).map_err(|e| crate::error::serialize_error("eval report", e))
    }

    /// Reads a report; `origin` names where the text came from (a file, or
    /// the model binary whose output it is) in errors.
    pub fn from_json(text: &[u8], origin: &Path) -> Result<EvalReport, RecordError> {
        serde_json::from_slice(text).map_err(|e| json_error(origin, 0, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> EvalReport {
        EvalReport {
            model: "m".into(),
            profile: "p".into(),
            checkpoint: "best.safetensors".into(),
            data: "digits".into(),
            split: "test".into(),
            device: "cpu".into(),
            images: 2,
            loss: f64::NAN,
            top1: 50.0,
            top5: 100.0,
            confusion: vec![vec![1, 0], vec![1, 0]],
            classes: vec!["a".into(), "b".into()],
            per_class: vec![Some(100.0), Some(0.0)],
            recorded_top1: None,
        }
    }

    #[test]
    fn the_report_reads_back_and_its_json_is_pinned() {
        let json = report().to_json().unwrap();
        assert_eq!(
            json,
            r#"{"model":"m","profile":"p","checkpoint":"best.safetensors","data":"digits","split":"test","device":"cpu","images":2,"loss":null,"top1":50.0,"top5":100.0,"confusion":[[1,0],[1,0]],"classes":["a","b"],"per_class":[100.0,0.0],"recorded_top1":null}"#
        );
        let back = EvalReport::from_json(json.as_bytes(), Path::new("x")).unwrap();
        assert!(back.loss.is_nan());
        assert_eq!(back.top1, 50.0);
        assert_eq!(back.confusion, report().confusion);
    }

    #[test]
    fn a_report_without_its_data_set_is_an_error_naming_the_origin() {
        let err = EvalReport::from_json(br#"{"model":"m"}"#, Path::new("the model's eval"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("the model's eval"), "{err}");
        assert!(err.contains("missing field"), "{err}");
    }
}
