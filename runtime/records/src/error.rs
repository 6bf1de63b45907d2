//! [`RecordError`]: why a record could not be read, serialised or accepted.
//! Every variant that concerns a file names it.

use std::path::{Path, PathBuf};

/// An error reading or checking a run's records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file does not exist.
    #[error("`{}` is missing", .path.display())]
    Missing { path: PathBuf },
    /// The file exists but cannot be read.
    // `error`, not `source`: the message already says it, and a source
    // would be printed a second time by `{:#}`.
    #[error("cannot read `{}`: {error}", .path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Not JSON, or JSON without the record's shape; `line` and `column`
    /// are 1-based positions in the file.
    #[error("{}:{line}:{column}: {message}", .path.display())]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The metadata JSON in a checkpoint's safetensors header is not a
    /// [`crate::CheckpointMeta`].
    #[error("`{}`: unreadable qatc metadata: {message}", .path.display())]
    Header { path: PathBuf, message: String },
    /// A record that JSON cannot hold (a setting that is a path that is not
    /// UTF-8, say).
    #[error("cannot write {what} as JSON: {message}")]
    Serialize { what: &'static str, message: String },
    /// A checkpoint recorded under another spec than the one expected.
    #[error(
        "`{}` records spec hash {recorded}, not {expected}: it was made from another spec (or another version of it)",
        .path.display()
    )]
    SpecHash {
        path: PathBuf,
        recorded: String,
        expected: String,
    },
}

impl RecordError {
    /// The file the error is about, where there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            RecordError::Missing { path }
            | RecordError::Io { path, .. }
            | RecordError::Json { path, .. }
            | RecordError::Header { path, .. }
            | RecordError::SpecHash { path, .. } => Some(path),
            RecordError::Serialize { .. } => None,
        }
    }
}

/// The text of `path`; `None` where it does not exist.
pub(crate) fn read_text(path: &Path) -> Result<Option<String>, RecordError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(RecordError::Io {
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// A JSON error in `path` at line `line0 +` the error's line (1-based);
/// serde's own "at line L column C" suffix is moved into the location.
pub(crate) fn json_error(path: &Path, line0: usize, e: &serde_json::Error) -> RecordError {
    let text = e.to_string();
    let message = match text.rsplit_once(" at line ") {
        Some((message, _)) => message.to_string(),
        None => text,
    };
    RecordError::Json {
        path: path.to_path_buf(),
        line: line0 + e.line().max(1),
        column: e.column(),
        message,
    }
}

/// A serialisation error of `what`.
pub(crate) fn serialize_error(what: &'static str, e: serde_json::Error) -> RecordError {
    RecordError::Serialize {
        what,
        message: e.to_string(),
    }
}
