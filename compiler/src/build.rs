//! What `qatc build` would change in a crate on disk: file by file, as
//! counts and as a unified diff (`qatc build --check`, `--diff`, and the
//! summary line of a plain build).

use crate::codegen::Crate;
use similar::{ChangeTag, TextDiff};
use std::path::Path;

/// One file of a generated crate against the one on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChange {
    /// Path relative to the crate (`src/lib.rs`).
    pub file: &'static str,
    /// The file on disk (`None`: missing).
    pub old: Option<String>,
    /// What the spec generates now.
    pub new: String,
}

impl FileChange {
    /// Whether a build would write anything different.
    pub fn changed(&self) -> bool {
        self.old.as_deref() != Some(self.new.as_str())
    }

    /// Lines a build would add and remove.
    pub fn counts(&self) -> (usize, usize) {
        let old = self.old.as_deref().unwrap_or("");
        let diff = TextDiff::from_lines(old, &self.new);
        let (mut added, mut removed) = (0, 0);
        for c in diff.iter_all_changes() {
            match c.tag() {
                ChangeTag::Insert => added += 1,
                ChangeTag::Delete => removed += 1,
                ChangeTag::Equal => {}
            }
        }
        (added, removed)
    }

    /// `src/lib.rs (+12 -3)`, `Cargo.toml (new)`.
    pub fn describe(&self) -> String {
        match &self.old {
            None => format!("{} (new)", self.file),
            Some(_) => {
                let (a, r) = self.counts();
                format!("{} (+{a} -{r})", self.file)
            }
        }
    }

    /// A unified diff (3 lines of context) from the file on disk to the new
    /// one, headed `a/<dir>/<file>` and `b/<dir>/<file>`; with `color`, ANSI
    /// red and green for removed and added lines. Empty when unchanged.
    pub fn unified(&self, dir: &str, color: bool) -> String {
        if !self.changed() {
            return String::new();
        }
        let old = self.old.as_deref().unwrap_or("");
        let diff = TextDiff::from_lines(old, &self.new);
        let a = match self.old {
            Some(_) => format!("a/{dir}/{}", self.file),
            None => "/dev/null".to_string(),
        };
        let text = diff
            .unified_diff()
            .context_radius(3)
            .header(&a, &format!("b/{dir}/{}", self.file))
            .to_string();
        if !color {
            return text;
        }
        let mut out = String::with_capacity(text.len() + 64);
        for line in text.split_inclusive('\n') {
            let code = if line.starts_with("+++") || line.starts_with("---") {
                "1"
            } else if line.starts_with('+') {
                "32"
            } else if line.starts_with('-') {
                "31"
            } else if line.starts_with("@@") {
                "36"
            } else {
                ""
            };
            if code.is_empty() {
                out.push_str(line);
            } else {
                let body = line.strip_suffix('\n').unwrap_or(line);
                out.push_str(&format!("\x1b[{code}m{body}\x1b[0m"));
                if line.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// Every file of `krate` against the crate directory `dir` (which may not
/// exist yet). Errors are reading errors other than a missing file.
pub fn compare(dir: &Path, krate: &Crate) -> std::io::Result<Vec<FileChange>> {
    krate
        .files()
        .into_iter()
        .map(|(file, new)| {
            let old = match std::fs::read_to_string(dir.join(file)) {
                Ok(s) => Some(s),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            Ok(FileChange {
                file,
                old,
                new: new.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(old: Option<&str>, new: &str) -> FileChange {
        FileChange {
            file: "src/lib.rs",
            old: old.map(String::from),
            new: new.to_string(),
        }
    }

    #[test]
    fn counts_describe_and_diff() {
        let same = change(Some("a\nb\n"), "a\nb\n");
        assert!(!same.changed());
        assert_eq!(same.unified("m", false), "");
        let one = change(Some("a\nb\nc\n"), "a\nB\nc\n");
        assert_eq!(one.counts(), (1, 1));
        assert_eq!(one.describe(), "src/lib.rs (+1 -1)");
        assert_eq!(
            one.unified("m", false),
            "--- a/m/src/lib.rs\n+++ b/m/src/lib.rs\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"
        );
        assert!(one.unified("m", true).contains("\x1b[31m-b\x1b[0m\n"));
        let new = change(None, "x\n");
        assert_eq!(new.describe(), "src/lib.rs (new)");
        assert!(new
            .unified("m", false)
            .starts_with("--- /dev/null\n+++ b/m/src/lib.rs\n"));
    }
}
