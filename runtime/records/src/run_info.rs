//! `run.json`: what a run is. Written once per training session by the
//! runtime's training loop (`qatc_runtime::train::run`) when the run
//! directory is made or resumed; read back by `--resume` (for the recorded
//! settings) and by `qatc plot` / `qatc compare` (model, profile, data, the
//! planned number of epochs).
//!
//! The settings are generic: the runtime writes and reads its own typed
//! `TrainConfig` (`RunInfo<TrainConfig>`, so their JSON keeps that type's
//! field order), while a reader that does not know that type takes them as
//! any JSON ([`AnyConfig`], the default).

use crate::error::{json_error, read_text, serialize_error};
use crate::RecordError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The settings of a run as any JSON; `None` where `run.json` has none (a
/// file not written by `qatc train`).
pub type AnyConfig = Option<serde_json::Value>;

/// `run.json`. Written as pretty JSON with a final newline, fields in this
/// order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo<C = AnyConfig> {
    /// The model's name (the spec's `model`).
    pub model: String,
    /// The bit-width profile trained.
    pub profile: String,
    /// The spec file the model crate was generated from.
    #[serde(default)]
    pub spec: String,
    /// The hash of that spec (the generated crate's `META.spec_hash`);
    /// empty where a hand-written `run.json` has none.
    #[serde(default)]
    pub spec_hash: String,
    /// The `--data` the run trains on.
    pub data: String,
    /// The resolved training settings.
    pub config: C,
}

impl<C: Serialize> RunInfo<C> {
    /// The bytes of `run.json`: pretty JSON and a newline.
    pub fn to_json(&self) -> Result<String, RecordError> {
        serde_json::to_string_pretty(self)
            .map(|json| json + "\n")
            .map_err(|e| serialize_error("the run's description (run.json)", e))
    }
}

impl RunInfo<AnyConfig> {
    /// The number of epochs the run was configured for, if its settings say.
    pub fn planned_epochs(&self) -> Option<u64> {
        self.config
            .as_ref()?
            .get("epochs")
            .and_then(serde_json::Value::as_u64)
    }
}

/// Reads `run.json` at `path` (a missing file is [`RecordError::Missing`]).
pub fn read<C: DeserializeOwned>(path: &Path) -> Result<RunInfo<C>, RecordError> {
    let text = read_text(path)?.ok_or_else(|| RecordError::Missing {
        path: path.to_path_buf(),
    })?;
    serde_json::from_str(&text).map_err(|e| json_error(path, 0, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Config {
        epochs: usize,
        lr: f64,
    }

    fn info() -> RunInfo<Config> {
        RunInfo {
            model: "toynet".into(),
            profile: "cfg-1*".into(),
            spec: "spec/toynet.qspec".into(),
            spec_hash: "0123abcd".into(),
            data: "digits".into(),
            config: Config {
                epochs: 10,
                lr: 0.1,
            },
        }
    }

    #[test]
    fn the_json_has_the_fields_in_order_and_reads_back() {
        let json = info().to_json().unwrap();
        assert_eq!(
            json,
            "{\n  \"model\": \"toynet\",\n  \"profile\": \"cfg-1*\",\n  \"spec\": \"spec/toynet.qspec\",\n  \"spec_hash\": \"0123abcd\",\n  \"data\": \"digits\",\n  \"config\": {\n    \"epochs\": 10,\n    \"lr\": 0.1\n  }\n}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        std::fs::write(&path, &json).unwrap();
        assert_eq!(read::<Config>(&path).unwrap(), info());
        let any: RunInfo = read(&path).unwrap();
        assert_eq!(any.planned_epochs(), Some(10));
    }

    #[test]
    fn errors_name_the_file_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        let err = read::<AnyConfig>(&path).unwrap_err();
        assert!(matches!(err, RecordError::Missing { .. }), "{err}");
        assert_eq!(err.to_string(), format!("`{}` is missing", path.display()));
        std::fs::write(&path, "{\n  \"profile\": \"x\",\n  \"data\": \"d\"\n}\n").unwrap();
        let err = read::<AnyConfig>(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:4:", path.display())), "{err}");
        assert!(err.ends_with("missing field `model`"), "{err}");
    }

    #[test]
    fn settings_and_spec_may_be_absent_for_a_reader_of_any_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        std::fs::write(&path, r#"{"model": "m", "profile": "p", "data": "d"}"#).unwrap();
        let any: RunInfo = read(&path).unwrap();
        assert_eq!((any.config, any.spec_hash.as_str()), (None, ""));
        // A typed reader needs its settings.
        let err = read::<Config>(&path).unwrap_err().to_string();
        assert!(err.ends_with("missing field `config`"), "{err}");
    }
}
