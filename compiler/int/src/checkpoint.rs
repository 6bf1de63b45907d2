//! Checkpoint reading for the integer pipeline.
//!
//! Input: a safetensors file whose tensor names are the generated model's
//! variable-store names (`s2.0.conv1.weight`, `stem.act_quant_out.alpha`:
//! what `qatc import` writes and training saves), whose record of where it
//! came from ([`qatc_records::CheckpointMeta`], in the safetensors header as
//! training writes it, else in a JSON sidecar `best.json` /
//! `best.safetensors.json`) is optional; or a seed checkpoint mapped
//! through the spec's `import` section. Output: a [`Checkpoint`], float32
//! values by name.
//!
//! Invariants: every variable the graph needs is present with the shape the
//! graph gives it, or the error lists every missing and every wrongly shaped
//! tensor at once; a record that names another model, profile or spec (by
//! its hash) is an error before any tensor is read. The variables are the
//! op modules' [`qatc::ops::NodeOp::variables`], the list the runtime's
//! layers and `qatc import` use.

use super::IntError;
use qatc::ir::Graph;
use qatc_records::checkpoint::{read_sidecar, CheckpointMeta, META_KEY};
use qatc_records::run_dir;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Float tensors by variable name.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    /// Per BN layer (IR node name), `sqrt(running_var + eps)` in float32 as
    /// the training framework computed it, where a caller knows it better
    /// than the plan. Without it `trunc` takes libtorch's square root (see
    /// [`super::seed_sqrt`]: libtorch 2.13's CPU `sqrt` is not correctly
    /// rounded, and the seed's constants come from it).
    pub bn_std: HashMap<String, Vec<f32>>,
}

/// The variables `g` reads, with their shapes (the generated model's
/// names): each node's [`qatc::ops::NodeOp::variables`].
pub fn variables(g: &Graph) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for n in &g.nodes {
        for (param, shape) in n.op.hooks().variables(&n.io()) {
            let shape = shape.iter().map(|&d| d.max(0) as usize).collect();
            out.push((format!("{}.{param}", n.name), shape));
        }
    }
    out
}

/// A checkpoint's record of where it came from ([`CheckpointMeta`]) and the
/// file it was read from: the copy in the safetensors header (training
/// writes it there; it travels with the file), else the JSON sidecar
/// (`NAME.json`, as training names it, or `NAME.safetensors.json`). `None`
/// for a checkpoint with neither (imported or made by hand).
fn provenance(path: &Path, bytes: &[u8]) -> Result<Option<(PathBuf, CheckpointMeta)>, IntError> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| IntError::NotSafetensors(format!("`{}`: {e}", path.display())))?;
    if let Some(json) = header.metadata().as_ref().and_then(|m| m.get(META_KEY)) {
        let meta = CheckpointMeta::from_header_json(json, path)?;
        return Ok(Some((path.to_path_buf(), meta)));
    }
    let named = path.with_file_name(format!(
        "{}.json",
        path.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    ));
    for sidecar in [run_dir::sidecar(path), named] {
        if sidecar.exists() {
            let meta = read_sidecar(&sidecar)?;
            return Ok(Some((sidecar, meta)));
        }
    }
    Ok(None)
}

/// Checks the digests of the checkpoint file `path` holding `bytes` (see
/// `qatc_integrity`): a mismatch is an error naming the file, the tensor
/// and both digests; a file without digests loads with a one-line notice.
pub fn verify(path: &Path, bytes: &[u8]) -> Result<(), IntError> {
    let shown = path.display().to_string();
    match qatc_integrity::verify(bytes) {
        Ok(qatc_integrity::Status::Verified { .. }) => Ok(()),
        Err(qatc_integrity::Corrupt::Unreadable(e)) => {
            Err(IntError::NotSafetensors(format!("`{shown}`: {e}")))
        }
        Ok(qatc_integrity::Status::Unsealed) => {
            eprintln!("{}", qatc_integrity::unsealed_notice(&shown));
            Ok(())
        }
        Err(c) => Err(IntError::Corrupt(qatc_integrity::corrupt_message(
            &shown, &c,
        ))),
    }
}

impl Checkpoint {
    /// Reads a checkpoint in the model's own names. Where it says where it
    /// came from (the metadata training writes into its header, else its
    /// JSON sidecar), that must be `g`'s model and profile and the spec of
    /// hash `spec_hash` (the compilation's): what the runtime's `eval` and
    /// `--resume` ask of a checkpoint too.
    pub fn read(path: &Path, g: &Graph, spec_hash: &str) -> Result<Checkpoint, IntError> {
        let bytes = std::fs::read(path).map_err(|e| IntError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        verify(path, &bytes)?;
        if let Some((from, meta)) = provenance(path, &bytes)? {
            if meta.model != g.model || meta.profile != g.profile {
                return Err(IntError::WrongModel {
                    file: from.display().to_string(),
                    found: format!("model `{}`, profile `{}`", meta.model, meta.profile),
                    expected: format!("model `{}`, profile `{}`", g.model, g.profile),
                });
            }
            meta.check_spec_hash(&from, spec_hash)?;
        }
        Checkpoint::from_bytes(&bytes, g, "")
    }

    /// Reads safetensors bytes whose names, after `prefix`, are the model's
    /// variable names; checks every variable `g` needs.
    pub fn from_bytes(bytes: &[u8], g: &Graph, prefix: &str) -> Result<Checkpoint, IntError> {
        use safetensors::tensor::SafeTensors;
        use safetensors::Dtype;
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| IntError::NotSafetensors(e.to_string()))?;
        let mut ck = Checkpoint::default();
        let mut missing = Vec::new();
        let mut wrong = Vec::new();
        for (name, shape) in variables(g) {
            let full = format!("{prefix}{name}");
            let Ok(view) = st.tensor(&full) else {
                missing.push(format!("`{full}` (shape {shape:?})"));
                continue;
            };
            if view.shape() != shape.as_slice() {
                wrong.push(format!(
                    "`{full}` is {:?}, the model needs {shape:?}",
                    view.shape()
                ));
                continue;
            }
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F64 => data
                    .chunks_exact(8)
                    .map(|c| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(c);
                        f64::from_le_bytes(b) as f32
                    })
                    .collect(),
                other => {
                    wrong.push(format!("`{full}` is {other:?}, expected F32"));
                    continue;
                }
            };
            ck.tensors.insert(name, (shape, values));
        }
        if !missing.is_empty() || !wrong.is_empty() {
            return Err(IntError::Tensors {
                model: g.model.clone(),
                profile: g.profile.clone(),
                missing,
                wrong,
            });
        }
        Ok(ck)
    }

    /// Reads a checkpoint of another code base through the spec's
    /// `import FORMAT` section (e.g. the seed's state dict, `prefix` being
    /// `state.` in the golden files).
    pub fn import(
        bytes: &[u8],
        model: &qatc::ast::Model,
        g: &Graph,
        format: &str,
        prefix: &str,
    ) -> Result<Checkpoint, IntError> {
        let plan = qatc::import::plan(model, g, format).map_err(|d| IntError::Import {
            reason: d
                .items
                .iter()
                .map(|i| i.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        })?;
        let converted =
            qatc::import::convert(&plan, bytes, prefix).map_err(|p| IntError::Import {
                reason: p.report().trim_end().replace('\n', "; "),
            })?;
        Checkpoint::from_bytes(&converted, g, "")
    }

    /// Values of a variable (checked present by construction).
    pub fn get(&self, name: &str) -> Result<&[f32], IntError> {
        self.tensors
            .get(name)
            .map(|(_, v)| v.as_slice())
            .ok_or_else(|| IntError::Tensors {
                model: String::new(),
                profile: String::new(),
                missing: vec![format!("`{name}`")],
                wrong: vec![],
            })
    }

    /// A scalar variable (a clipping value).
    pub fn scalar(&self, name: &str) -> Result<f32, IntError> {
        Ok(self.get(name)?.first().copied().unwrap_or(0.0))
    }
}

impl Checkpoint {
    /// A checkpoint for `g` with plausible trained values and no training:
    /// Kaiming-scaled weights (normal, `sqrt(2 / fan_in)`), BN near the
    /// identity (weight `1 + 0.1 n`, running variance `1 + 0.3 |n|`),
    /// biases, shifts and running means `0.1 n`, clipping values at their
    /// initial values (`n` standard normal from a seeded generator, so the
    /// same `seed` gives the same checkpoint on every machine). For tests
    /// and benchmarks that need a model's integer plan or export without a
    /// training run.
    pub fn synthetic(g: &Graph, seed: u64) -> Checkpoint {
        use qatc::ir::{Op, Quantizer};
        let mut rng = Normal::new(seed);
        let mut ck = Checkpoint::default();
        for (name, shape) in variables(g) {
            let (node, param) = name.rsplit_once('.').unwrap_or(("", name.as_str()));
            let op = g.nodes.iter().find(|n| n.name == node).map(|n| &n.op);
            let len: usize = shape.iter().product();
            let values: Vec<f32> = match (op, param) {
                (Some(Op::ActQuant(a)), "alpha") => match a.quantizer {
                    Quantizer::Pact { alpha } | Quantizer::Mpact { alpha } => vec![alpha as f32],
                    _ => vec![6.0],
                },
                (Some(Op::BatchNorm(_)), "weight") => {
                    (0..len).map(|_| 1.0 + 0.1 * rng.sample()).collect()
                }
                (Some(Op::BatchNorm(_)), "running_var") => {
                    (0..len).map(|_| 1.0 + 0.3 * rng.sample().abs()).collect()
                }
                (_, "weight") => {
                    let fan_in: usize = shape[1..].iter().product();
                    let std = (2.0 / fan_in.max(1) as f32).sqrt();
                    (0..len).map(|_| std * rng.sample()).collect()
                }
                _ => (0..len).map(|_| 0.1 * rng.sample()).collect(),
            };
            ck.tensors.insert(name, (shape, values));
        }
        ck
    }
}

/// A deterministic stream of standard normal numbers (an LCG and
/// Box-Muller), the same on every machine.
#[derive(Clone, Debug)]
pub struct Normal(u64);

impl Normal {
    pub fn new(seed: u64) -> Normal {
        Normal(
            seed.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    }

    fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// The next standard normal number.
    pub fn sample(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}
