//! CIFAR-10 in its official binary format: a directory with
//! `data_batch_*.bin` (the training split, any number of files, read in
//! the order of their numeric suffix, then by name) and `test_batch.bin`.
//!
//! Each record is one label byte then 3,072 pixel bytes: the red, green and
//! blue 32x32 planes, row by row, which is already the CHW layout of
//! `Dataset`, so records are copied as they are. A file may hold any whole
//! number of records (the official ones hold 10,000); a size that is not a
//! multiple of 3,073 bytes, an empty file, or a label above 9 is an error
//! naming the file (and the record and byte offset of a bad label). Class
//! names come from `batches.meta.txt` (ten non-empty lines) when present,
//! else the standard ten.

use crate::dataset::{Augment, Dataset, Normalize, Split};
use crate::error::DataError;
use std::path::{Path, PathBuf};

/// Bytes of one record: the label, then 3 x 32 x 32 pixels.
pub const RECORD: usize = 1 + 3 * 32 * 32;

/// The standard class names, indexed by label.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Whether `dir` looks like a CIFAR-10 binary directory.
pub fn is_cifar_dir(dir: &Path) -> bool {
    dir.join("test_batch.bin").is_file() || !train_files(dir).unwrap_or_default().is_empty()
}

/// The training files of `dir`: `data_batch_*.bin`, by numeric suffix
/// (so `data_batch_10.bin` follows `data_batch_9.bin`), then by name.
fn train_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name
            .strip_prefix("data_batch_")
            .and_then(|s| s.strip_suffix(".bin"))
        {
            let number = stem.parse::<u64>().unwrap_or(u64::MAX);
            files.push((number, name, entry.path()));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(_, _, p)| p).collect())
}

/// Reads the CIFAR-10 binary directory `dir`.
pub fn open_cifar(dir: &Path) -> Result<Split, DataError> {
    let train_files = train_files(dir)?;
    if train_files.is_empty() {
        return Err(DataError::Missing {
            path: dir.join("data_batch_1.bin"),
            what: "CIFAR-10 training files data_batch_*.bin",
        });
    }
    let test_file = dir.join("test_batch.bin");
    if !test_file.is_file() {
        return Err(DataError::Missing {
            path: test_file,
            what: "the CIFAR-10 test file",
        });
    }
    let classes = class_names(dir)?;
    let train = read_split(&train_files, &classes)?;
    let test = read_split(&[test_file], &classes)?;
    Ok(Split { train, test })
}

fn class_names(dir: &Path) -> Result<Vec<String>, DataError> {
    let meta = dir.join("batches.meta.txt");
    if !meta.exists() {
        return Ok(CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect());
    }
    let text = std::fs::read_to_string(&meta).map_err(|e| DataError::io(&meta, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != CIFAR10_CLASSES.len() {
        return Err(DataError::ClassNames {
            path: meta,
            expected: CIFAR10_CLASSES.len(),
            found: names.len(),
        });
    }
    Ok(names)
}

/// Reads and checks every record of `files` into one data set.
fn read_split(files: &[PathBuf], classes: &[String]) -> Result<Dataset, DataError> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for path in files {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let size = bytes.len() as u64;
        if bytes.is_empty() {
            return Err(DataError::EmptyFile { path: path.clone() });
        }
        if bytes.len() % RECORD != 0 {
            return Err(DataError::RecordSize {
                path: path.clone(),
                size,
                record: RECORD,
                whole: size / RECORD as u64,
                rest: size % RECORD as u64,
            });
        }
        images.reserve(bytes.len() / RECORD * (RECORD - 1));
        for (record, chunk) in bytes.chunks_exact(RECORD).enumerate() {
            let label = chunk[0] as u16;
            if label as usize >= classes.len() {
                return Err(DataError::BadLabel {
                    path: path.clone(),
                    record,
                    offset: (record * RECORD) as u64,
                    label,
                    classes: classes.len(),
                });
            }
            labels.push(label);
            images.extend_from_slice(&chunk[1..]);
        }
    }
    Ok(Dataset {
        name: "cifar10".into(),
        shape: [3, 32, 32],
        classes: classes.to_vec(),
        images,
        labels,
        norm: Normalize::cifar10(),
        augment: Augment::cifar10(),
        skipped: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// `n` records with labels `i % 10` and pixels `(i + j) % 256`.
    fn records(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            out.push((i % 10) as u8);
            out.extend((0..RECORD - 1).map(|j| ((i + j) % 256) as u8));
        }
        out
    }

    fn cifar_dir(train: &[usize], test: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (k, &n) in train.iter().enumerate() {
            fs::write(
                dir.path().join(format!("data_batch_{}.bin", k + 1)),
                records(n),
            )
            .unwrap();
        }
        fs::write(dir.path().join("test_batch.bin"), records(test)).unwrap();
        dir
    }

    #[test]
    fn whole_records_in_any_number_of_files() {
        let dir = cifar_dir(&[3, 5], 2);
        let split = open_cifar(dir.path()).unwrap();
        assert_eq!(split.train.len(), 8);
        assert_eq!(split.test.len(), 2);
        assert_eq!(split.train.labels, [0, 1, 2, 0, 1, 2, 3, 4]);
        assert_eq!(split.train.image(4)[..3], [1, 2, 3]);
        assert_eq!(split.train.classes, CIFAR10_CLASSES);
        assert_eq!(split.train.images.len(), 8 * 3072);
    }

    #[test]
    fn training_files_in_numeric_order() {
        let dir = tempfile::tempdir().unwrap();
        for k in [10, 2, 1] {
            let mut r = records(1);
            r[0] = (k % 10) as u8;
            fs::write(dir.path().join(format!("data_batch_{k}.bin")), r).unwrap();
        }
        fs::write(dir.path().join("test_batch.bin"), records(1)).unwrap();
        assert_eq!(open_cifar(dir.path()).unwrap().train.labels, [1, 2, 0]);
    }

    #[test]
    fn truncated_and_oversized_files_are_errors_naming_the_file() {
        for extra in [-1i64, 1, 100] {
            let dir = cifar_dir(&[2], 1);
            let path = dir.path().join("data_batch_1.bin");
            let mut bytes = records(2);
            if extra < 0 {
                bytes.truncate(bytes.len() - 1);
            } else {
                bytes.extend(std::iter::repeat_n(0, extra as usize));
            }
            fs::write(&path, &bytes).unwrap();
            let e = open_cifar(dir.path()).unwrap_err();
            assert!(matches!(e, DataError::RecordSize { .. }), "{e}");
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("not a whole number"), "{msg}");
        }
        let dir = cifar_dir(&[2], 1);
        fs::write(dir.path().join("test_batch.bin"), b"").unwrap();
        let e = open_cifar(dir.path()).unwrap_err();
        assert!(e.to_string().contains("test_batch.bin: empty file"), "{e}");
    }

    #[test]
    fn a_label_above_nine_is_an_error_with_record_and_offset() {
        let dir = cifar_dir(&[3], 1);
        let path = dir.path().join("data_batch_1.bin");
        let mut bytes = records(3);
        bytes[2 * RECORD] = 10;
        fs::write(&path, &bytes).unwrap();
        let e = open_cifar(dir.path()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("data_batch_1.bin: record 2"), "{msg}");
        assert!(msg.contains(&format!("offset {}", 2 * RECORD)), "{msg}");
        assert!(msg.contains("label 10"), "{msg}");
    }

    #[test]
    fn missing_files_are_errors_naming_them() {
        let dir = cifar_dir(&[1], 1);
        fs::remove_file(dir.path().join("test_batch.bin")).unwrap();
        let e = open_cifar(dir.path()).unwrap_err();
        assert!(e.to_string().contains("test_batch.bin: missing"), "{e}");

        let dir = cifar_dir(&[], 1);
        let e = open_cifar(dir.path()).unwrap_err();
        assert!(e.to_string().contains("data_batch_"), "{e}");
    }

    #[test]
    fn class_names_from_meta_file() {
        let dir = cifar_dir(&[1], 1);
        let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        fs::write(
            dir.path().join("batches.meta.txt"),
            names.join("\n") + "\n\n",
        )
        .unwrap();
        assert_eq!(open_cifar(dir.path()).unwrap().train.classes, names);
        fs::write(dir.path().join("batches.meta.txt"), "a\nb\n").unwrap();
        let e = open_cifar(dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains("batches.meta.txt: expected 10 class names, one a line, found 2"),
            "{e}"
        );
    }
}
