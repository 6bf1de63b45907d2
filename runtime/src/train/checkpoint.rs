//! Checkpoints: one safetensors file per checkpoint, written atomically,
//! plus a JSON sidecar for people and tools.
//!
//! The safetensors file holds the model's variables under their `VarStore`
//! names (what `qatc import` produces, what `qatc int` / `qatc export` read)
//! and, in a training checkpoint, the optimizer state under
//! [`OPTIMIZER_PREFIX`]. Its header metadata holds [`CheckpointMeta`] as
//! JSON under the key [`META_KEY`]: that copy is authoritative, so weights
//! and state can never disagree. The sidecar `<name>.json` is written after
//! the weights (also atomically) with the same JSON; if a kill lands between
//! the two renames, the sidecar is one checkpoint old and the next save
//! fixes it.
//!
//! The metadata record and its two JSON forms are defined in
//! `qatc_records::checkpoint` (re-exported here), with the sidecar's reader
//! for tools that do not load tensors.
//!
//! Atomic writes ([`write_atomic`]): temporary file in the same directory,
//! `fsync`, rename.

use crate::model::ModelMeta;
use qatc_records::run_dir;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Name prefix of optimizer state tensors in a training checkpoint.
pub const OPTIMIZER_PREFIX: &str = "optimizer/";

/// The checkpoint's metadata record, its header key and format tag: defined
/// in `qatc_records` (shared with the readers of run directories).
pub use qatc_records::checkpoint::{CheckpointMeta, PartialEpoch, FORMAT, META_KEY};

/// A loaded checkpoint.
pub struct Checkpoint {
    pub path: PathBuf,
    /// `None` for a plain state dict (e.g. one made by `qatc import`).
    pub meta: Option<CheckpointMeta>,
    /// Model variables by name.
    pub tensors: Vec<(String, Tensor)>,
    /// Optimizer state by `<param>.<slot>`.
    pub optimizer: Vec<(String, Tensor)>,
}

fn dtype_of(kind: Kind) -> Result<Dtype, String> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        other => return Err(format!("cannot store a tensor of kind {other:?}")),
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        _ => return None,
    })
}

/// The bytes of a tensor, little-endian, contiguous, on the CPU.
fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.detach().to_device(Device::Cpu).contiguous();
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut bytes, numel);
    bytes
}

/// Atomic writes: the one implementation, in `qatc_data`.
pub use qatc_data::write_atomic;

/// Saves a checkpoint to `path` (`.safetensors`) and its sidecar
/// (`path` with extension `.json`).
pub fn save(
    path: &Path,
    meta: &CheckpointMeta,
    tensors: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
) -> Result<(), String> {
    let mut owned: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = Vec::new();
    let named = tensors.iter().map(|(n, t)| (n.clone(), t)).chain(
        optimizer
            .iter()
            .map(|(n, t)| (format!("{OPTIMIZER_PREFIX}{n}"), t)),
    );
    for (name, t) in named {
        let dtype = dtype_of(t.kind()).map_err(|e| format!("tensor `{name}`: {e}"))?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name, tensor_bytes(t), dtype, shape));
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(name, bytes, dtype, shape)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| format!("tensor `{name}`: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let json = meta.header_json().map_err(|e| e.to_string())?;
    let metadata = HashMap::from([(META_KEY.to_string(), json)]);
    let bytes = qatc_integrity::serialize_sealed(views, metadata)?;
    write_atomic(path, &bytes).map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    let sidecar = run_dir::sidecar(path);
    let pretty = meta.sidecar_json().map_err(|e| e.to_string())?;
    write_atomic(&sidecar, pretty.as_bytes())
        .map_err(|e| format!("cannot write `{}`: {e}", sidecar.display()))
}

/// Loads a checkpoint (or a plain safetensors state dict) onto the CPU.
pub fn load(path: &Path) -> Result<Checkpoint, String> {
    let shown = path.display();
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read checkpoint `{shown}`: {e}"))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| format!("`{shown}` is not a safetensors checkpoint: {e}"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("`{shown}` is not a safetensors checkpoint: {e}"))?;
    verify(path, &bytes)?;
    let meta = match header.metadata().as_ref().and_then(|m| m.get(META_KEY)) {
        Some(json) => {
            Some(CheckpointMeta::from_header_json(json, path).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let mut tensors = Vec::new();
    let mut optimizer = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    for name in names {
        let view = st
            .tensor(&name)
            .map_err(|e| format!("`{shown}`: tensor `{name}`: {e}"))?;
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            format!(
                "`{shown}`: tensor `{name}` has unsupported dtype {:?}",
                view.dtype()
            )
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::from_data_size(view.data(), &shape, kind);
        match name.strip_prefix(OPTIMIZER_PREFIX) {
            Some(rest) => optimizer.push((rest.to_string(), t)),
            None => tensors.push((name, t)),
        }
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        meta,
        tensors,
        optimizer,
    })
}

/// Checks the digests of a checkpoint's bytes (see `qatc_integrity`):
/// a mismatch is an error naming the file, the tensor and both digests; a
/// file without digests gets a one-line notice.
pub fn verify(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let shown = path.display().to_string();
    match qatc_integrity::verify(bytes) {
        Ok(qatc_integrity::Status::Verified { .. }) => Ok(()),
        Ok(qatc_integrity::Status::Unsealed) => {
            eprintln!("{}", qatc_integrity::unsealed_notice(&shown));
            Ok(())
        }
        Err(c) => Err(qatc_integrity::corrupt_message(&shown, &c)),
    }
}

/// Keeps the checkpoint `from` (and its sidecar), if there is one, as
/// `to`: how training keeps the last `latest` as `previous` before writing
/// the next one (the fallback of `--resume`). A hard link where the file
/// system allows it (no copy: the next `latest` is written to a new file
/// and renamed over the old name), else a copy; either way `to` is
/// replaced atomically and `from` never goes missing.
pub fn keep_as(from: &Path, to: &Path) -> Result<(), String> {
    if !from.is_file() {
        return Ok(());
    }
    let keep = |a: &Path, b: &Path| -> std::io::Result<()> {
        let mut tmp = b.as_os_str().to_owned();
        tmp.push(".keep.tmp");
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(a, &tmp).is_err() {
            std::fs::copy(a, &tmp)?;
        }
        std::fs::rename(&tmp, b)
    };
    let (from_json, to_json) = (run_dir::sidecar(from), run_dir::sidecar(to));
    if from_json.is_file() {
        keep(&from_json, &to_json)
            .map_err(|e| format!("cannot keep `{}`: {e}", from_json.display()))?;
    }
    keep(from, to).map_err(|e| {
        format!(
            "cannot keep `{}` as `{}`: {e}",
            from.display(),
            to.display()
        )
    })
}

/// What [`copy_into`] did.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    /// Model variables the checkpoint does not have.
    pub missing: Vec<String>,
    /// Checkpoint tensors the model does not have.
    pub unexpected: Vec<String>,
    /// Same name, other shape: `(name, checkpoint shape, model shape)`.
    pub mismatched: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl LoadReport {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// One line per problem.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for n in &self.missing {
            out += &format!("  not in the checkpoint: {n}\n");
        }
        for n in &self.unexpected {
            out += &format!("  not in the model: {n}\n");
        }
        for (n, theirs, ours) in &self.mismatched {
            out += &format!("  shape differs: {n}: checkpoint {theirs:?}, model {ours:?}\n");
        }
        out
    }
}

/// Copies the checkpoint tensors into the model variables of the same
/// name and shape; reports the rest.
pub fn copy_into(vars: &HashMap<String, Tensor>, tensors: &[(String, Tensor)]) -> LoadReport {
    let mut report = LoadReport::default();
    let theirs: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    tch::no_grad(|| {
        for name in names {
            let var = &vars[name];
            match theirs.get(name.as_str()) {
                None => report.missing.push(name.clone()),
                Some(t) if t.size() != var.size() => {
                    report.mismatched.push((name.clone(), t.size(), var.size()))
                }
                Some(t) => {
                    var.shallow_clone().copy_(&t.to_kind(var.kind()));
                    report.loaded.push(name.clone());
                }
            }
        }
    });
    let mut unexpected: Vec<String> = tensors
        .iter()
        .filter(|(n, _)| !vars.contains_key(n))
        .map(|(n, _)| n.clone())
        .collect();
    unexpected.sort();
    report.unexpected = unexpected;
    report
}

/// A checkpoint must come from this model's spec (the same model name and
/// spec hash): what `--resume` and `eval` check before loading one.
pub fn check_same_model(m: &CheckpointMeta, meta: &ModelMeta, path: &Path) -> Result<(), String> {
    if m.model != meta.name || m.spec_hash != meta.spec_hash {
        return Err(format!(
            "`{}` is a checkpoint of model `{}` from spec `{}` (hash {:.12}), not of `{}` from `{}` (hash {:.12})",
            path.display(),
            m.model,
            m.spec,
            m.spec_hash,
            meta.name,
            meta.spec,
            meta.spec_hash
        ));
    }
    Ok(())
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

    #[test]
    fn save_load_round_trip_is_exact() {
        let dir = std::env::temp_dir().join(format!("qatc-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latest.safetensors");
        let w = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        let n = Tensor::from_slice(&[7i64]);
        let buf = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        save(
            &path,
            &meta(),
            &[("a.weight".into(), w.shallow_clone()), ("bn.n".into(), n)],
            &[("a.weight.momentum_buffer".into(), buf.shallow_clone())],
        )
        .unwrap();
        let ck = load(&path).unwrap();
        assert_eq!(ck.meta.as_ref(), Some(&meta()));
        assert_eq!(ck.tensors.len(), 2);
        assert!(ck.tensors[0].1.equal(&w));
        assert_eq!(ck.tensors[1].1.int64_value(&[0]), 7);
        assert_eq!(ck.optimizer[0].0, "a.weight.momentum_buffer");
        assert!(ck.optimizer[0].1.equal(&buf));
        let sidecar: CheckpointMeta =
            serde_json::from_str(&std::fs::read_to_string(dir.join("latest.json")).unwrap())
                .unwrap();
        assert_eq!(sidecar, meta());
        // No temporary files are left behind.
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("qatc-ckpt-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.safetensors");
        std::fs::write(&path, b"\x10\0\0\0\0\0\0\0{not json}").unwrap();
        let err = load(&path).err().unwrap();
        assert!(err.contains("bad.safetensors"), "{err}");
        let err = load(&dir.join("missing.safetensors")).err().unwrap();
        assert!(err.contains("missing.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A saved checkpoint's bytes, and where its header ends.
    fn saved(dir: &Path, name: &str, scale: f32) -> (PathBuf, Vec<u8>, usize) {
        let path = dir.join(name);
        let w = Tensor::arange(64, (Kind::Float, Device::Cpu)) * scale as f64;
        let b = Tensor::ones([4], (Kind::Float, Device::Cpu)) * scale as f64;
        save(
            &path,
            &meta(),
            &[("conv.weight".into(), w), ("conv.bias".into(), b)],
            &[],
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        (path, bytes, header)
    }

    #[test]
    fn corrupt_checkpoints_are_refused_naming_file_tensor_and_digests() {
        let dir = std::env::temp_dir().join(format!("qatc-ckpt-sha-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (path, bytes, header) = saved(&dir, "a.safetensors", 1.0);
        assert!(load(&path).is_ok());
        let shown = path.display().to_string();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensor_digest = |name: &str| {
            let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
            m.metadata().as_ref().unwrap()[&format!("qatc.sha256.{name}")].clone()
        };
        // The last 100 bytes XOR 0x55 (the reproduction): the last
        // tensor in the file is `conv.weight` (safetensors sorts by name).
        let mut bad = bytes.clone();
        let n = bad.len();
        for b in &mut bad[n - 100..] {
            *b ^= 0x55;
        }
        std::fs::write(&path, &bad).unwrap();
        let err = load(&path).err().unwrap();
        let found = {
            let st = safetensors::SafeTensors::deserialize(&bad).unwrap();
            let data = st.tensor("conv.weight").unwrap().data().to_vec();
            use sha2::Digest;
            sha2::Sha256::digest(&data)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(
            err,
            format!(
                "checkpoint `{shown}` is corrupt: the data of tensor `conv.weight` does not match its digest: SHA-256 expected {}, found {found}",
                tensor_digest("conv.weight")
            )
        );
        drop(st);
        // Every single flipped byte, data or header, is refused.
        for i in (0..bytes.len())
            .step_by(7)
            .chain([header - 1, header, n - 1])
        {
            let mut bad = bytes.clone();
            bad[i] ^= 0x55;
            std::fs::write(&path, &bad).unwrap();
            let err = load(&path)
                .err()
                .unwrap_or_else(|| panic!("byte {i} passed"));
            assert!(err.contains(&shown), "byte {i}: {err}");
        }
        // A flip in the header that still parses: a digit of the metadata.
        let needle = b"\\\"epoch\\\":3";
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("epoch in the header")
            + needle.len()
            - 1;
        let mut bad = bytes.clone();
        bad[at] = b'4';
        std::fs::write(&path, &bad).unwrap();
        let err = load(&path).err().unwrap();
        assert!(
            err.starts_with(&format!(
                "checkpoint `{shown}` is corrupt: the header (tensor names, dtypes, shapes, metadata) does not match its digest: SHA-256 expected "
            )),
            "{err}"
        );
        // Truncated and empty files.
        std::fs::write(&path, &bytes[..n - 1]).unwrap();
        let err = load(&path).err().unwrap();
        assert!(
            err.starts_with(&format!("`{shown}` is not a safetensors checkpoint")),
            "{err}"
        );
        std::fs::write(&path, b"").unwrap();
        let err = load(&path).err().unwrap();
        assert!(
            err.starts_with(&format!("`{shown}` is not a safetensors checkpoint")),
            "{err}"
        );
        // The digests of another file (same names and shapes, other
        // values): the header of `b` on the data of `a`.
        let (_, other, other_header) = saved(&dir, "b.safetensors", 2.0);
        assert_eq!(other_header, header);
        let mut spliced = other[..header].to_vec();
        spliced.extend_from_slice(&bytes[header..]);
        std::fs::write(&path, &spliced).unwrap();
        let err = load(&path).err().unwrap();
        assert!(
            err.starts_with(&format!(
                "checkpoint `{shown}` is corrupt: the data of tensor `conv.bias` does not match its digest: SHA-256 expected {}, found {}",
                {
                    let (_, m) = safetensors::SafeTensors::read_metadata(&other).unwrap();
                    m.metadata().as_ref().unwrap()["qatc.sha256.conv.bias"].clone()
                },
                tensor_digest("conv.bias")
            )),
            "{err}"
        );
        assert!(err.ends_with(" (and 1 more tensor differ)"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_without_digests_loads() {
        let dir = std::env::temp_dir().join(format!("qatc-ckpt-plain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plain.safetensors");
        let data = [0u8; 8];
        let views = vec![("x", TensorView::new(Dtype::F32, vec![2], &data).unwrap())];
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let ck = load(&path).unwrap();
        assert_eq!(ck.tensors.len(), 1);
        assert!(ck.meta.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn copy_into_reports_missing_unexpected_and_mismatched() {
        let vars = HashMap::from([
            (
                "a".to_string(),
                Tensor::zeros([2], (Kind::Float, Device::Cpu)),
            ),
            (
                "b".to_string(),
                Tensor::zeros([2], (Kind::Float, Device::Cpu)),
            ),
            (
                "c".to_string(),
                Tensor::zeros([2], (Kind::Float, Device::Cpu)),
            ),
        ]);
        let theirs = vec![
            ("a".to_string(), Tensor::from_slice(&[1.0f32, 2.0])),
            ("b".to_string(), Tensor::from_slice(&[1.0f32])),
            ("z".to_string(), Tensor::from_slice(&[1.0f32])),
        ];
        let r = copy_into(&vars, &theirs);
        assert_eq!(r.loaded, ["a"]);
        assert_eq!(r.missing, ["c"]);
        assert_eq!(r.unexpected, ["z"]);
        assert_eq!(r.mismatched, [("b".to_string(), vec![1], vec![2])]);
        assert_eq!(vars["a"].double_value(&[1]), 2.0);
        assert!(!r.is_complete());
    }
}
