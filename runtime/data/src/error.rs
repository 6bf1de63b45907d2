//! `DataError`: everything that can go wrong while opening a data set.
//!
//! Every variant names the file or directory at fault (and the record or
//! byte offset where that helps), so a message alone tells the user what to
//! fix. Bad input is always an error value, never a panic.

use std::path::{Path, PathBuf};

/// An error while locating, reading, decoding or caching a data set.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The `data` argument names nothing that exists.
    #[error(
        "{path}: no such file or directory (expected `digits`, a CIFAR-10 binary directory, \
         an image folder with train/ and test/, or a .tar.gz of one; \
         `qatc data download cifar10 DIR` fetches CIFAR-10)"
    )]
    NotFound { path: PathBuf },

    /// A directory that is neither CIFAR-10 binary nor an image folder.
    #[error(
        "{path}: not a data set: expected data_batch_*.bin and test_batch.bin (CIFAR-10 binary) \
         or train/<class>/ and test/<class>/ (image folder)"
    )]
    UnknownLayout { path: PathBuf },

    /// A file or directory the layout requires is absent.
    #[error("{path}: missing ({what})")]
    Missing { path: PathBuf, what: &'static str },

    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A CIFAR-10 binary file that does not hold a whole number of records.
    #[error(
        "{path}: {size} bytes is not a whole number of {record}-byte CIFAR-10 records \
         ({whole} whole records and {rest} bytes left over; truncated or not a CIFAR-10 file?)"
    )]
    RecordSize {
        path: PathBuf,
        size: u64,
        record: usize,
        whole: u64,
        rest: u64,
    },

    /// A CIFAR-10 binary file with no records at all.
    #[error("{path}: empty file (no CIFAR-10 records)")]
    EmptyFile { path: PathBuf },

    /// A label outside the class range.
    #[error("{path}: record {record} (byte offset {offset}): label {label} is not a class (0..{classes})")]
    BadLabel {
        path: PathBuf,
        record: usize,
        offset: u64,
        label: u16,
        classes: usize,
    },

    /// `batches.meta.txt` does not list the expected number of class names.
    #[error("{path}: expected {expected} class names, one a line, found {found}")]
    ClassNames {
        path: PathBuf,
        expected: usize,
        found: usize,
    },

    /// The test split's classes differ from the training split's.
    #[error("{path}: test classes [{test}] differ from train classes [{train}]")]
    ClassMismatch {
        path: PathBuf,
        train: String,
        test: String,
    },

    /// An image folder split without any class directory.
    #[error("{path}: no class directories (expected {path}/<class>/<image>)")]
    NoClasses { path: PathBuf },

    /// More classes than labels can number.
    #[error("{path}: more than {max} class directories")]
    TooManyClasses { path: PathBuf, max: usize },

    /// A class directory without any image.
    #[error("{path}: empty class directory (no .jpg, .jpeg or .png file)")]
    EmptyClass { path: PathBuf },

    /// A file that does not belong in an image folder.
    #[error("{path}: stray file: {why}")]
    StrayFile { path: PathBuf, why: &'static str },

    /// An image that the decoder rejects.
    #[error("{path}: cannot decode image: {message}")]
    Decode { path: PathBuf, message: String },

    /// An image whose size differs from the first image of the data set.
    #[error(
        "{path}: image is {got_w}x{got_h}, but {first} is {w}x{h} (all images must have one size)"
    )]
    ImageSize {
        path: PathBuf,
        got_w: u32,
        got_h: u32,
        first: PathBuf,
        w: u32,
        h: u32,
    },

    /// A malformed row of the built-in digits table.
    #[error("{path}: line {line}: {message}")]
    Table {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// A malformed tar archive.
    #[error("{path}: bad archive: {message}")]
    Archive { path: PathBuf, message: String },
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            DataError::NotFound { path }
            | DataError::UnknownLayout { path }
            | DataError::Missing { path, .. }
            | DataError::Io { path, .. }
            | DataError::RecordSize { path, .. }
            | DataError::EmptyFile { path }
            | DataError::BadLabel { path, .. }
            | DataError::ClassNames { path, .. }
            | DataError::ClassMismatch { path, .. }
            | DataError::NoClasses { path }
            | DataError::TooManyClasses { path, .. }
            | DataError::EmptyClass { path }
            | DataError::StrayFile { path, .. }
            | DataError::Decode { path, .. }
            | DataError::ImageSize { path, .. }
            | DataError::Table { path, .. }
            | DataError::Archive { path, .. } => path,
        }
    }
}
