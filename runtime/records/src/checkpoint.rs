//! A checkpoint's metadata: [`CheckpointMeta`], what a checkpoint records
//! besides its tensors.
//!
//! The runtime's checkpoint writer (`qatc_runtime::train::checkpoint::save`)
//! stores it twice: as compact JSON under [`META_KEY`] in the safetensors
//! header (the authoritative copy: weights and metadata can never disagree;
//! read back by `checkpoint::load` for `--resume`, `--init` and `qatc
//! eval`), then as pretty JSON in the sidecar `<name>.json`
//! ([`crate::run_dir::sidecar`]) for people and tools, such as the
//! compiler's integer pipeline, which reads a sidecar's model and profile.
//! If a kill lands between the two writes the sidecar is one checkpoint old,
//! and the next save fixes it.
//!
//! [`read_sidecar`] reads a sidecar; [`CheckpointMeta::check_spec_hash`]
//! (or [`read_sidecar_checked`]) refuses one recorded under another spec.

use crate::error::{json_error, read_text, serialize_error};
use crate::RecordError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Metadata key of the checkpoint's JSON in the safetensors header.
pub const META_KEY: &str = "qatc";

/// Format tag of [`CheckpointMeta::format`].
pub const FORMAT: &str = "qatc-checkpoint-1";

/// What a checkpoint records besides tensors. Written with the fields in
/// this order; read strictly (every field but the `Option`s is required).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: String,
    pub model: String,
    pub profile: String,
    pub spec: String,
    pub spec_hash: String,
    /// Epochs completed.
    pub epoch: usize,
    /// Training steps done in the epoch after `epoch` (non-zero only for a
    /// checkpoint saved on interrupt).
    pub step: usize,
    /// Optimizer steps taken in all.
    pub optimizer_steps: u64,
    /// Test top-1 (%) after the last completed epoch (`null` before any).
    pub test_top1: Option<f64>,
    /// Best test top-1 (%) so far and its epoch.
    pub best_top1: Option<f64>,
    pub best_epoch: Option<usize>,
    /// The training settings (optimizer, schedule, seed ...), as run.
    pub config: serde_json::Value,
    /// Running sums of the interrupted epoch: loss sum, correct, seen.
    pub partial: Option<PartialEpoch>,
}

/// Sums of a partly trained epoch, so a resumed epoch reports what an
/// uninterrupted one would.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    pub loss_sum: f64,
    pub correct: u64,
    pub seen: u64,
    pub seconds: f64,
    pub data_wait_seconds: f64,
}

impl CheckpointMeta {
    /// The compact JSON stored under [`META_KEY`] in the safetensors header.
    pub fn header_json(&self) -> Result<String, RecordError> {
        serde_json::to_string(self).map_err(|e| serialize_error("the checkpoint's metadata", e))
    }

    /// The bytes of the sidecar: pretty JSON and a newline.
    pub fn sidecar_json(&self) -> Result<String, RecordError> {
        serde_json::to_string_pretty(self)
            .map(|json| json + "\n")
            .map_err(|e| serialize_error("the checkpoint's sidecar", e))
    }

    /// The metadata JSON found under [`META_KEY`] in the header of the
    /// checkpoint `path`.
    pub fn from_header_json(json: &str, path: &Path) -> Result<CheckpointMeta, RecordError> {
        serde_json::from_str(json).map_err(|e| RecordError::Header {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Checks that the checkpoint was recorded under the spec whose hash is
    /// `expected` (a generated crate's `META.spec_hash`); `path` names the
    /// checkpoint (or its sidecar) in the error, which gives both hashes.
    pub fn check_spec_hash(&self, path: &Path, expected: &str) -> Result<(), RecordError> {
        if self.spec_hash == expected {
            return Ok(());
        }
        Err(RecordError::SpecHash {
            path: path.to_path_buf(),
            recorded: self.spec_hash.clone(),
            expected: expected.to_string(),
        })
    }
}

/// Reads the sidecar at `path` (e.g. `RUN_DIR/best.json`; see
/// [`crate::run_dir::sidecar`] for a checkpoint's).
pub fn read_sidecar(path: &Path) -> Result<CheckpointMeta, RecordError> {
    let text = read_text(path)?.ok_or_else(|| RecordError::Missing {
        path: path.to_path_buf(),
    })?;
    serde_json::from_str(&text).map_err(|e| json_error(path, 0, &e))
}

/// [`read_sidecar`], then [`CheckpointMeta::check_spec_hash`] against
/// `expected`.
pub fn read_sidecar_checked(path: &Path, expected: &str) -> Result<CheckpointMeta, RecordError> {
    let meta = read_sidecar(path)?;
    meta.check_spec_hash(path, expected)?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> CheckpointMeta {
        CheckpointMeta {
            format: FORMAT.into(),
            model: "m".into(),
            profile: "p".into(),
            spec: "m.qspec".into(),
            spec_hash: "abc".into(),
            epoch: 3,
            step: 0,
            optimizer_steps: 30,
            test_top1: Some(50.0),
            best_top1: Some(55.0),
            best_epoch: Some(2),
            config: serde_json::json!({"lr": 0.1}),
            partial: None,
        }
    }

    /// A resumed epoch reports what an uninterrupted one would only if the
    /// running loss sum comes back bit for bit: serde_json's default float
    /// parser is off by an ulp on some 17-digit numbers (the workspace
    /// enables its `float_roundtrip`); every f64 here, over the exponents
    /// a loss sum takes, reads back equal through the header JSON.
    #[test]
    fn partial_sums_read_back_bit_for_bit() {
        let mut bits = 0x3ff0_0000_0000_0001_u64;
        for i in 0..20_000u64 {
            bits = bits
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // Exponents 2^-20 to 2^43, any mantissa.
            let x = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | ((1003 + i % 64) << 52));
            let m = CheckpointMeta {
                partial: Some(PartialEpoch {
                    loss_sum: x,
                    correct: 1,
                    seen: 2,
                    seconds: x / 3.0,
                    data_wait_seconds: 0.1,
                }),
                ..meta()
            };
            let back = CheckpointMeta::from_header_json(&m.header_json().unwrap(), Path::new("c"))
                .unwrap();
            let (a, b) = (m.partial.unwrap(), back.partial.unwrap());
            assert_eq!(a.loss_sum.to_bits(), b.loss_sum.to_bits(), "{x:e}");
            assert_eq!(a.seconds.to_bits(), b.seconds.to_bits(), "{x:e}");
        }
    }

    #[test]
    fn header_and_sidecar_json_keep_the_field_order() {
        assert_eq!(
            meta().header_json().unwrap(),
            r#"{"format":"qatc-checkpoint-1","model":"m","profile":"p","spec":"m.qspec","spec_hash":"abc","epoch":3,"step":0,"optimizer_steps":30,"test_top1":50.0,"best_top1":55.0,"best_epoch":2,"config":{"lr":0.1},"partial":null}"#
        );
        let pretty = meta().sidecar_json().unwrap();
        assert!(
            pretty.starts_with("{\n  \"format\": \"qatc-checkpoint-1\",\n  \"model\": \"m\",\n")
        );
        assert!(pretty.ends_with("  \"partial\": null\n}\n"), "{pretty}");
        let path = Path::new("x.safetensors");
        let back = CheckpointMeta::from_header_json(&meta().header_json().unwrap(), path);
        assert_eq!(back.unwrap(), meta());
        let err = CheckpointMeta::from_header_json("{}", path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`x.safetensors`: unreadable qatc metadata: missing field"),
            "{err}"
        );
    }

    #[test]
    fn the_sidecar_reads_back_and_its_spec_hash_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("best.json");
        assert!(matches!(
            read_sidecar(&path),
            Err(RecordError::Missing { .. })
        ));
        std::fs::write(&path, meta().sidecar_json().unwrap()).unwrap();
        assert_eq!(read_sidecar(&path).unwrap(), meta());
        assert_eq!(read_sidecar_checked(&path, "abc").unwrap(), meta());
        let err = read_sidecar_checked(&path, "def").unwrap_err();
        match &err {
            RecordError::SpecHash {
                path: p,
                recorded,
                expected,
            } => assert_eq!((p, &**recorded, &**expected), (&path, "abc", "def")),
            other => panic!("{other}"),
        }
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "`{}` records spec hash abc, not def",
                path.display()
            )),
            "{text}"
        );
        std::fs::write(&path, "{\"format\": 1}").unwrap();
        let err = read_sidecar(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:1:", path.display())), "{err}");
    }
}
