//! Integrity of the safetensors checkpoints qatc writes: the one
//! implementation, shared by the runtime (`train`, `eval`, `--resume`,
//! `--init`) and the compiler (`qatc int`, `qatc export`, `qatc import`).
//!
//! Writing ([`seal`]): the header's metadata gets the SHA-256 of every
//! tensor's bytes under [`TENSOR_KEY_PREFIX`]`<tensor name>`, and under
//! [`HEADER_KEY`] the SHA-256 of the header itself: every tensor's name,
//! dtype and shape, and every other metadata entry (the `qatc` JSON of a
//! training checkpoint). The digests travel inside the file, so a copied
//! file carries them.
//!
//! Reading ([`verify`]): a file with no `qatc.sha256*` entry at all is
//! [`Status::Unsealed`] (made by another tool or an older qatc: callers
//! load it with the one-line [`unsealed_notice`]). Otherwise every tensor
//! must have its digest, every digest its tensor, and all must match, or
//! the file is [`Corrupt`]. A flipped byte anywhere in a sealed file is
//! caught: in the tensor data by that tensor's digest; in the header either
//! by the safetensors parser (broken JSON, offsets that no longer add up)
//! or, when the header still parses, by the header digest (a dtype letter,
//! a shape, a metadata value) or by a digest entry that no longer names its
//! tensor.
//!
//! Cost: one SHA-256 pass over the tensor bytes, spread over the cores for
//! files of more than a few MiB (see docs/performance.md).

use safetensors::tensor::{Metadata, SafeTensors, TensorView};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;

/// Metadata key of the header digest.
pub const HEADER_KEY: &str = "qatc.sha256";

/// Metadata key prefix of a tensor's digest: `qatc.sha256.<tensor name>`.
pub const TENSOR_KEY_PREFIX: &str = "qatc.sha256.";

/// Files with more tensor bytes than this are hashed on several threads.
const PARALLEL_BYTES: usize = 4 << 20;

/// What [`verify`] found in a file that is not corrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Every tensor and the header matched their recorded digests.
    Verified { tensors: usize },
    /// The file records no digests (another tool's, or an older qatc's).
    Unsealed,
}

/// Why a file is corrupt (or cannot be checked). Its `Display` does not
/// name the file: callers put the file name in front.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Corrupt {
    /// Not a safetensors file at all (empty, truncated, garbage header).
    Unreadable(String),
    /// A tensor's bytes differ from what was written; `more` other tensors
    /// differ too.
    Tensor {
        name: String,
        expected: String,
        found: String,
        more: usize,
    },
    /// The header (names, dtypes, shapes, metadata) differs.
    Header { expected: String, found: String },
    /// A sealed file without a digest for this tensor.
    MissingDigest { tensor: String },
    /// A digest entry naming no tensor of the file.
    StrayDigest { key: String },
}

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corrupt::Unreadable(e) => write!(f, "not a safetensors file: {e}"),
            Corrupt::Tensor {
                name,
                expected,
                found,
                more,
            } => {
                write!(
                    f,
                    "the data of tensor `{name}` does not match its digest: SHA-256 expected {expected}, found {found}"
                )?;
                if *more > 0 {
                    let s = if *more == 1 { "" } else { "s" };
                    write!(f, " (and {more} more tensor{s} differ)")?;
                }
                Ok(())
            }
            Corrupt::Header { expected, found } => write!(
                f,
                "the header (tensor names, dtypes, shapes, metadata) does not match its digest: SHA-256 expected {expected}, found {found}"
            ),
            Corrupt::MissingDigest { tensor } => write!(
                f,
                "tensor `{tensor}` has no digest although the file records digests (`{TENSOR_KEY_PREFIX}{tensor}` is missing from the header)"
            ),
            Corrupt::StrayDigest { key } => write!(
                f,
                "the header records digest `{key}` for a tensor the file does not hold"
            ),
        }
    }
}

impl std::error::Error for Corrupt {}

/// The error message of a corrupt `file`, the same in every command.
pub fn corrupt_message(file: &str, c: &Corrupt) -> String {
    format!("checkpoint `{file}` is corrupt: {c}")
}

/// The one-line notice for a file without digests.
pub fn unsealed_notice(file: &str) -> String {
    format!(
        "note: `{file}` records no SHA-256 digests (written by another tool or an older qatc): loading it unchecked"
    )
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of each `data`, hex, in order; on several threads when there is
/// a lot to hash.
fn digests(data: &[&[u8]]) -> Vec<String> {
    let total: usize = data.iter().map(|d| d.len()).sum();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(data.len());
    if total < PARALLEL_BYTES || threads < 2 {
        return data.iter().map(|d| hex(&Sha256::digest(d))).collect();
    }
    // Largest first, each to the thread with the fewest bytes so far.
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(data[i].len()));
    let mut bins: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); threads];
    for i in order {
        let bin = bins.iter_mut().min_by_key(|b| b.0).expect("threads >= 2");
        bin.0 += data[i].len();
        bin.1.push(i);
    }
    let mut out = vec![String::new(); data.len()];
    let parts: Vec<Vec<(usize, String)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = bins
            .iter()
            .map(|(_, items)| {
                scope.spawn(move || {
                    items
                        .iter()
                        .map(|&i| (i, hex(&Sha256::digest(data[i]))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    for (i, d) in parts.into_iter().flatten() {
        out[i] = d;
    }
    out
}

/// Feeds one length-prefixed field (so no two headers hash alike).
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// The header digest: tensors (name, dtype, shape) and metadata entries
/// other than the digests, each sorted by name.
fn header_digest<'a>(
    tensors: impl Iterator<Item = (&'a str, String, &'a [usize])>,
    metadata: Option<&HashMap<String, String>>,
) -> String {
    let mut tensors: Vec<_> = tensors.collect();
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    field(&mut h, b"qatc-integrity-1");
    for (name, dtype, shape) in tensors {
        field(&mut h, name.as_bytes());
        field(&mut h, dtype.as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for &d in shape {
            h.update((d as u64).to_le_bytes());
        }
    }
    let mut entries: Vec<(&String, &String)> = metadata
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with(HEADER_KEY))
        .collect();
    entries.sort();
    for (k, v) in entries {
        field(&mut h, k.as_bytes());
        field(&mut h, v.as_bytes());
    }
    hex(&h.finalize())
}

/// Adds the digests of `tensors` (and of the header they and `metadata`
/// make) to `metadata`, ready for `safetensors::serialize`.
pub fn seal(tensors: &[(String, TensorView<'_>)], metadata: &mut HashMap<String, String>) {
    metadata.retain(|k, _| !k.starts_with(HEADER_KEY));
    let header = header_digest(
        tensors
            .iter()
            .map(|(n, v)| (n.as_str(), format!("{:?}", v.dtype()), v.shape())),
        Some(metadata),
    );
    let data: Vec<&[u8]> = tensors.iter().map(|(_, v)| v.data()).collect();
    for ((name, _), d) in tensors.iter().zip(digests(&data)) {
        metadata.insert(format!("{TENSOR_KEY_PREFIX}{name}"), d);
    }
    metadata.insert(HEADER_KEY.to_string(), header);
}

/// Serializes `tensors` with `metadata` and their digests: what every
/// checkpoint writer of qatc calls.
pub fn serialize_sealed(
    tensors: Vec<(String, TensorView<'_>)>,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    let mut metadata = metadata;
    seal(&tensors, &mut metadata);
    safetensors::serialize(tensors, Some(metadata)).map_err(|e| e.to_string())
}

/// Checks the digests of the safetensors file `bytes` (see the crate doc).
pub fn verify(bytes: &[u8]) -> Result<Status, Corrupt> {
    let unreadable = |e: safetensors::SafeTensorError| Corrupt::Unreadable(e.to_string());
    let (_, header): (usize, Metadata) = SafeTensors::read_metadata(bytes).map_err(unreadable)?;
    let st = SafeTensors::deserialize(bytes).map_err(unreadable)?;
    let metadata = header.metadata().as_ref();
    let sealed = metadata.is_some_and(|m| m.keys().any(|k| k.starts_with(HEADER_KEY)));
    if !sealed {
        return Ok(Status::Unsealed);
    }
    let metadata = metadata.expect("sealed");
    let mut views = st.tensors();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    // Every digest entry names a tensor, every tensor has one.
    let mut stray: Vec<&String> = metadata
        .keys()
        .filter(|k| {
            k.as_str() != HEADER_KEY
                && match k.strip_prefix(TENSOR_KEY_PREFIX) {
                    Some(name) => views.binary_search_by(|v| v.0.as_str().cmp(name)).is_err(),
                    None => k.starts_with(HEADER_KEY),
                }
        })
        .collect();
    stray.sort();
    if let Some(key) = stray.first() {
        return Err(Corrupt::StrayDigest {
            key: key.to_string(),
        });
    }
    let mut expected = Vec::with_capacity(views.len());
    for (name, _) in &views {
        match metadata.get(&format!("{TENSOR_KEY_PREFIX}{name}")) {
            Some(d) => expected.push(d),
            None => {
                return Err(Corrupt::MissingDigest {
                    tensor: name.clone(),
                })
            }
        }
    }
    let found_header = header_digest(
        views
            .iter()
            .map(|(n, v)| (n.as_str(), format!("{:?}", v.dtype()), v.shape())),
        Some(metadata),
    );
    let recorded_header = metadata.get(HEADER_KEY);
    if recorded_header != Some(&found_header) {
        return Err(Corrupt::Header {
            expected: recorded_header
                .cloned()
                .unwrap_or_else(|| "(missing)".into()),
            found: found_header,
        });
    }
    let data: Vec<&[u8]> = views.iter().map(|(_, v)| v.data()).collect();
    let found = digests(&data);
    let mut bad = views
        .iter()
        .zip(&expected)
        .zip(&found)
        .filter(|((_, e), f)| **e != *f);
    if let Some((((name, _), e), f)) = bad.next() {
        return Err(Corrupt::Tensor {
            name: name.clone(),
            expected: e.to_string(),
            found: f.clone(),
            more: bad.count(),
        });
    }
    Ok(Status::Verified {
        tensors: views.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::Dtype;

    fn file(a: &[u8], b: &[u8], extra: &str) -> Vec<u8> {
        let views = vec![
            (
                "a.weight".to_string(),
                TensorView::new(Dtype::F32, vec![a.len() / 4], a).unwrap(),
            ),
            (
                "b".to_string(),
                TensorView::new(Dtype::U8, vec![b.len()], b).unwrap(),
            ),
        ];
        let meta = HashMap::from([("qatc".to_string(), extra.to_string())]);
        serialize_sealed(views, meta).unwrap()
    }

    fn header_len(bytes: &[u8]) -> usize {
        8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
    }

    #[test]
    fn a_sealed_file_verifies() {
        let bytes = file(&[1, 2, 3, 4, 5, 6, 7, 8], &[9, 9, 9], "{\"epoch\":3}");
        assert_eq!(verify(&bytes), Ok(Status::Verified { tensors: 2 }));
    }

    #[test]
    fn a_file_without_digests_is_unsealed() {
        let data = [0u8; 8];
        let views = vec![("x", TensorView::new(Dtype::F32, vec![2], &data).unwrap())];
        let bytes = safetensors::serialize(views, None).unwrap();
        assert_eq!(verify(&bytes), Ok(Status::Unsealed));
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = file(&[1, 2, 3, 4, 5, 6, 7, 8], &[9, 9, 9], "{\"epoch\":3}");
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x55;
            assert!(
                verify(&bad).is_err(),
                "byte {i} of {} (header ends at {})",
                bytes.len(),
                header_len(&bytes)
            );
        }
    }

    #[test]
    fn the_error_names_the_tensor_and_both_digests() {
        let bytes = file(&[1, 2, 3, 4, 5, 6, 7, 8], &[9, 9, 9], "{}");
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 1] ^= 0x55; // inside `a.weight` or `b`, whichever is last
        let Err(Corrupt::Tensor {
            name,
            expected,
            found,
            more,
        }) = verify(&bad)
        else {
            panic!("{:?}", verify(&bad))
        };
        assert!(name == "a.weight" || name == "b", "{name}");
        assert_eq!(expected.len(), 64);
        assert_eq!(found.len(), 64);
        assert_ne!(expected, found);
        assert_eq!(more, 0);
    }
}
