//! Where qatc's tests find their data, and how they say what they skip.
//!
//! Golden sets (the seed's own tensors, see `tests/golden/README.md`):
//! - `QATC_GOLDEN=DIR` names one set (a relative path is taken from the
//!   workspace root); every file a test needs must be there, unless the set
//!   says it is a cut (a `compact` entry in its `meta.json`, as
//!   `tests/golden`): then it is treated as the compact set below.
//! - Otherwise `../shared/golden` beside the workspace (`QATC_SHARED`
//!   names another shared directory) when it exists: the full set.
//! - Otherwise the compact set that ships in `tests/golden` (a fresh clone):
//!   the quantizers, ToyNet and ResNet20 whole, the integer ToyNet cut to two
//!   images; a test that needs a file it leaves out (MobileNetV2) is skipped
//!   with one line saying what is missing and how to point at it.
//!
//! Shared data (the real CIFAR-10 slice and archives): `QATC_DATA`, else
//! `../shared/data`; a test that needs it is skipped when it is missing.
//!
//! `QATC_REQUIRE_SHARED=1` (set by `.ci/run`) turns every such skip, and a
//! missing `../shared/golden`, into a failure, so CI never skips silently.
//! Each skip is printed (`skipped: TEST: WHY`) and, when `QATC_SKIP_LOG`
//! names a file, appended to it: `./dev test` counts them at its end.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The workspace root.
pub fn workspace() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

/// The shared directory: `QATC_SHARED`, else `../shared` beside the workspace.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("QATC_SHARED") {
        Some(d) => workspace().join(d),
        None => workspace().join("../shared"),
    }
}

/// Whether a missing shared directory or file is a failure (CI).
pub fn require_shared() -> bool {
    std::env::var("QATC_REQUIRE_SHARED").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Records that `test` did not run (or ran only in part) and why.
pub fn skip(test: &str, why: &str) {
    eprintln!("skipped: {test}: {why}");
    if let Some(log) = std::env::var_os("QATC_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// Where a golden set came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoldenKind {
    /// `QATC_GOLDEN`.
    Named,
    /// `../shared/golden`.
    Shared,
    /// `tests/golden`, shipped with the project.
    Compact,
}

/// A directory of golden files.
#[derive(Clone, Debug)]
pub struct GoldenSet {
    pub dir: PathBuf,
    pub kind: GoldenKind,
}

/// The device the golden tests run their models and quantizers on, as
/// `qatc_runtime::device::parse_device` reads it: `QATC_TEST_DEVICE`
/// (`cpu`, `cuda`, `cuda:N`), default `cpu`. The device check of a GPU
/// machine (`scripts/device-check.sh`) sets it to `cuda`; each golden test
/// says which tolerances it holds a CUDA run to.
pub fn test_device() -> String {
    std::env::var("QATC_TEST_DEVICE").unwrap_or_else(|_| "cpu".into())
}

/// The golden set the tests use (see the module docs).
pub fn golden_set() -> GoldenSet {
    if let Some(d) = std::env::var_os("QATC_GOLDEN") {
        let dir = workspace().join(d);
        assert!(
            dir.is_dir(),
            "QATC_GOLDEN={} is not a directory",
            dir.display()
        );
        // A set that says it is a cut (its meta.json has a `compact`
        // entry, as tests/golden does) is treated as the compact set.
        let compact =
            std::fs::read_to_string(dir.join("meta.json")).is_ok_and(|m| m.contains("\"compact\""));
        return GoldenSet {
            dir,
            kind: if compact {
                GoldenKind::Compact
            } else {
                GoldenKind::Named
            },
        };
    }
    let shared = shared_dir().join("golden");
    if shared.is_dir() {
        return GoldenSet {
            dir: shared,
            kind: GoldenKind::Shared,
        };
    }
    assert!(
        !require_shared(),
        "{} not found and QATC_REQUIRE_SHARED is set: the golden tests must run on the full \
         set (set QATC_SHARED or QATC_GOLDEN)",
        shared.display()
    );
    GoldenSet {
        dir: workspace().join("tests/golden"),
        kind: GoldenKind::Compact,
    }
}

impl GoldenSet {
    /// File `name` of the set. In the compact set a file it leaves out is a
    /// skip of `test` (None); anywhere else a missing file fails the test.
    pub fn file(&self, test: &str, name: &str) -> Option<PathBuf> {
        let path = self.dir.join(name);
        if path.is_file() {
            return Some(path);
        }
        if self.kind == GoldenKind::Compact {
            skip(
                test,
                &format!(
                    "{name} is not in the compact golden set ({}); point QATC_GOLDEN at a full \
                     set (../shared/golden)",
                    self.dir.display()
                ),
            );
            return None;
        }
        panic!(
            "golden file {} is missing (golden set from {}; set QATC_GOLDEN to a directory \
             made by the seed's code, see tests/golden/README.md)",
            path.display(),
            match self.kind {
                GoldenKind::Named => "QATC_GOLDEN",
                GoldenKind::Shared => "../shared/golden",
                GoldenKind::Compact => "tests/golden",
            }
        )
    }

    /// File `name`, which every golden set has (the compact one too).
    pub fn require(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        assert!(
            path.is_file(),
            "golden file {} is missing (set QATC_GOLDEN to a directory made by the seed's \
             code, see tests/golden/README.md)",
            path.display()
        );
        path
    }
}

/// Entry `sub` of the shared data directory (`QATC_DATA`, else
/// `../shared/data`), or a skip of `test` when it is missing (a failure
/// with `QATC_REQUIRE_SHARED`).
pub fn shared_data(test: &str, sub: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("QATC_DATA") {
        Some(d) => workspace().join(d),
        None => shared_dir().join("data"),
    };
    let path = dir.join(sub);
    if path.exists() {
        return Some(path);
    }
    assert!(
        !require_shared(),
        "{} not found and QATC_REQUIRE_SHARED is set (set QATC_DATA to the shared data directory)",
        path.display()
    );
    skip(
        test,
        &format!(
            "{} not found: set QATC_DATA to the shared data directory (../shared/data)",
            path.display()
        ),
    );
    None
}
