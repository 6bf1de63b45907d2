//! Fixture-driven tests: every spec in `tests/fixtures/ok` checks, lowers
//! under every profile and has its summary pinned; every spec in
//! `tests/fixtures/err` fails with its diagnostics pinned (one insta
//! snapshot per fixture, named after it).

use qatc::driver::{self, Source};
use qatc::summary;
use std::path::{Path, PathBuf};

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("qspec" | "yaml")
            )
        })
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Source {
    let mut src = Source::read(path).expect("fixture readable");
    // Diagnostics name the file relative to the fixtures, not the machine.
    src.name = path.file_name().unwrap().to_string_lossy().into_owned();
    src
}

#[test]
fn ok_fixtures_check_and_summarise() {
    let files = fixtures("ok");
    assert!(
        files.len() >= 3,
        "expected ok fixtures, found {}",
        files.len()
    );
    for path in files {
        let src = load(&path);
        let c = match driver::compile(&src) {
            Ok(c) => c,
            Err(d) => panic!(
                "{} should check:\n{}",
                src.name,
                d.render_plain(&src.name, &src.text)
            ),
        };
        assert_eq!(c.graphs.len(), c.resolved.profiles.len());
        let g = c.graph(None).expect("default profile lowers");
        let s = summary::summarize(g);
        insta::assert_snapshot!(format!("ok__{}", src.name), s.table());
    }
}

#[test]
fn err_fixtures_fail_with_pinned_diagnostics() {
    let files = fixtures("err");
    assert!(
        files.len() >= 25,
        "expected at least 25 error fixtures, found {}",
        files.len()
    );
    for path in files {
        let src = load(&path);
        let diags = match driver::compile(&src) {
            Ok(_) => panic!("{} should fail its checks", src.name),
            Err(d) => d,
        };
        assert!(diags.has_errors(), "{}: no error reported", src.name);
        let text = diags.render_plain(&src.name, &src.text);
        assert!(
            text.contains(&src.name),
            "{}: diagnostics must name the file",
            src.name
        );
        insta::assert_snapshot!(format!("err__{}", src.name), text);
    }
}
