//! The YAML twin: every `.qspec` model survives qspec -> AST -> YAML -> AST
//! and AST -> qspec -> AST; `spec/toynet.yaml` is the same model as
//! `spec/toynet.qspec`; broken YAML gives diagnostics at the right place and
//! never a panic.

use qatc::ast::Model;
use qatc::diag::Diagnostics;
use qatc::syntax::yaml::{parse_yaml, print_yaml};
use qatc::syntax::{parse_qspec, print_qspec};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `*.qspec` files of a directory, sorted; none if it does not exist.
fn qspec_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "qspec"))
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn qspec(name: &str, src: &str) -> Model {
    parse_qspec(src).unwrap_or_else(|d| panic!("{name}:\n{}", d.render_plain(name, src)))
}

fn yaml(name: &str, src: &str) -> Model {
    parse_yaml(src).unwrap_or_else(|d| panic!("{name}:\n{}", d.render_plain(name, src)))
}

/// All the round trips of one model given as `.qspec` text.
fn check_round_trips(name: &str, src: &str) {
    let m = qspec(name, src);

    let y = print_yaml(&m);
    let from_yaml = yaml(&format!("{name} (as YAML)"), &y);
    assert_eq!(
        from_yaml, m,
        "{name}: qspec -> AST -> YAML -> AST differs\n{y}"
    );
    assert_eq!(
        print_yaml(&from_yaml),
        y,
        "{name}: print_yaml is not stable"
    );

    let q = print_qspec(&m);
    assert_eq!(
        qspec(&format!("{name} (printed)"), &q),
        m,
        "{name}: AST -> qspec -> AST differs\n{q}"
    );
    assert_eq!(
        print_qspec(&from_yaml),
        q,
        "{name}: the YAML-parsed model prints differently"
    );
}

#[test]
fn every_qspec_round_trips_through_yaml() {
    let mut files = qspec_files(&root().join("spec"));
    assert!(!files.is_empty(), "no spec/*.qspec found");
    files.extend(qspec_files(&root().join("tests/fixtures/ok")));
    for path in &files {
        check_round_trips(&path.display().to_string(), &read(path));
    }
}

/// The error fixtures that parse (their problems are found later, by the
/// checker) hold odd but valid syntax: they round-trip too.
#[test]
fn parseable_error_fixtures_round_trip_through_yaml() {
    for path in qspec_files(&root().join("tests/fixtures/err")) {
        let src = read(&path);
        if parse_qspec(&src).is_ok() {
            check_round_trips(&path.display().to_string(), &src);
        }
    }
}

/// Every construct of the language, with the corners YAML cares about
/// (names that look like YAML booleans or numbers, `: ` inside values,
/// negative numbers, floats, repeated settings, empty bodies and scopes).
const KITCHEN_SINK: &str = r#"
model sink {
  input 32
  classes 100
  quant {
    weights dorefa
    acts pact(0.5, true)
    weights lsq(-1, not false)
    bits 8
    ratio 1.5e3
    null yes
  }
  rules {
    quantize_after_add(aout)
    -quantize_shortcut
    keep()
  }
  lists {
    cover stem blocks
    w = wbit[i]
    a = abit[i - 1]
  }
  block b(c, s = 2 * (1 + 3) % 4, t = -1, u = f(1, 2)) {
    if c == 1 and not (s >= 2) {
      x = x
    } else if s < 3 {
      x += y -> f()
    } else {
      return x -> g(a: 1, 2)
    }
    if true { }
    y = x -> bn
    return y
  }
  block empty() { }
  stem: conv
  stage b x2
  stage n: b x1 ()
  stage m: b x3 (c: 4, s: 1 / 2 <= 3 != 1 > 0 or false)
  head: bn() -> relu
  fc: linear(classes, bias: false)
  profile *x {
    abit [32, 8 x11, 16]
    all { w 8  a 4 }
    stem { }
    head { w 1 }
    fc { w 2  w 3 }
    stage n { w 6 }
    block m[0] { ain 16 }
    acts pact(10)
    all 3
    true_ 0.25
    rules { -quantize_after_add(aout)  foo }
    wbit []
  }
  profile 1 { }
  profile a.b+c { x yes  y no  on off }
}
"#;

#[test]
fn kitchen_sink_round_trips_through_yaml() {
    check_round_trips("sink.qspec", KITCHEN_SINK);
}

#[test]
fn toynet_yaml_is_the_toynet_qspec() {
    let q = qspec("toynet.qspec", &read(&root().join("spec/toynet.qspec")));
    let y = yaml("toynet.yaml", &read(&root().join("spec/toynet.yaml")));
    assert_eq!(y, q);
    assert_eq!(print_qspec(&y), print_qspec(&q));
}

/// YAML written by hand in other styles (flow maps, quoting, ints for
/// shapes, `else` holding an `if`) means the same as its `.qspec`.
#[test]
fn hand_written_yaml_matches_qspec() {
    let y = r#"
# a comment
model: hand
input: 32            # a one-dimensional shape is a YAML int
classes: "10"
quant: {weights: dorefa, bits: 8, scale: 0.5, on: true}
rules: [quantize_after_add(aout)]
lists:
  cover: [stem, blocks]
blocks:
- name: b
  params: [c, 's = 2']
  body:
  - if: c == 1
    then: [x = x]
    else:
    - if: c == 2
      then:
      - 'x += y'
  - return x
- name: e
  body: ~
stem: 'conv'
stages:
- b x2
- "n: b x1"
- m: "b x3 (c: 4)"
fc: linear
profiles:
- name: p
  items:
  - abit: [8, "4 x2", 16 x3]
  - all: {w: 8}
  - block m[1]: {}
  - acts: pact(10)
  - rules: [-foo]
- name: "007"
"#;
    let q = r#"
model hand {
  input 32
  classes 10
  quant { weights dorefa  bits 8  scale 0.5  on true }
  rules { quantize_after_add(aout) }
  lists { cover stem blocks }
  block b(c, s = 2) {
    if c == 1 { x = x } else { if c == 2 { x += y } }
    return x
  }
  block e() { }
  stem: conv
  stage b x2
  stage n: b x1
  stage m: b x3 (c: 4)
  fc: linear
  profile p {
    abit [8, 4 x2, 16 x3]
    all { w 8 }
    block m[1] { }
    acts pact(10)
    rules { -foo }
  }
  profile 007 { }
}
"#;
    assert_eq!(yaml("hand.yaml", y), qspec("hand.qspec", q));
}

fn errors(src: &str) -> (Diagnostics, String) {
    match parse_yaml(src) {
        Ok(m) => panic!("expected errors, got {m:#?}"),
        Err(d) => {
            let text = d.render_plain("toy.yaml", src);
            (d, text)
        }
    }
}

fn assert_reports(text: &str, code: &str, place: &str) {
    let found = text
        .split("\n\n")
        .any(|block| block.contains(&format!("error[{code}]")) && block.contains(place));
    assert!(found, "no {code} at {place} in:\n{text}");
}

#[test]
fn all_problems_of_a_file_are_reported_where_they_are() {
    let src = "\
model: toy
input: 3x32x32
clases: 10
quant:
  acts: mpact(10
stem: conv3x3(16) -> -> bn
head: \"conv1x1(512) -> ) bn\"
rules: {a: b}
stages:
  - s1: cell y1
  - cell x2 (cout: 16
profiles:
  - name: p
    items:
      - stage: {w: 8}
      - abit: [8, 4 y2]
      - w
    color: red
";
    let (d, text) = errors(src);
    assert_reports(&text, "E0006", "toy.yaml:3:1"); // unknown key `clases`
    assert!(text.contains("unknown key `clases` in the model"), "{text}");
    assert!(text.contains("`classes`"), "valid keys listed:\n{text}");
    assert_reports(&text, "E0001", "toy.yaml:5:17"); // missing `)` at the end of the fragment
    assert_reports(&text, "E0001", "toy.yaml:6:22"); // second `->`
    assert_reports(&text, "E0001", "toy.yaml:7:24"); // `)` inside a quoted scalar
    assert_reports(&text, "E0007", "toy.yaml:8:8"); // a map where a list of rules goes
    assert_reports(&text, "E0001", "toy.yaml:10:14"); // `y1` is not a repeat count
                                                      // Unquoted `: ` makes YAML read a map `{"cell x2 (cout": 16}`: one error, with a hint.
    assert_reports(&text, "E0001", "toy.yaml:11:10");
    assert!(text.contains("quote a stage that contains `: `"), "{text}");
    assert_reports(&text, "E0001", "toy.yaml:15:14"); // `stage` without a name
    assert_reports(&text, "E0001", "toy.yaml:16:21"); // `4 y2`
    assert_reports(&text, "E0007", "toy.yaml:17:9"); // not a one-key map
    assert_reports(&text, "E0006", "toy.yaml:18:5"); // unknown key in a profile
    assert_eq!(d.error_count(), 11, "{text}");
}

#[test]
fn missing_model_and_input() {
    let (_, text) = errors("classes: 10\n");
    assert!(text.contains("missing `model`"), "{text}");
    assert!(text.contains("missing `input`"), "{text}");
    assert_reports(&text, "E0004", "toy.yaml:1:1");

    let (d, text) = errors("");
    assert_eq!(d.error_count(), 2, "{text}");
}

#[test]
fn yaml_syntax_errors_have_line_and_column() {
    let (d, text) = errors("model: toy\ninput: 3x32x32\nquant: [a, b\n");
    assert_eq!(d.error_count(), 1);
    assert_reports(&text, "E0001", "toy.yaml:3:8");

    let (_, text) = errors("model: toy\ninput: 3x32x32\nstages:\n  - s1: cell x1 (cout: 16)\n");
    assert_reports(&text, "E0001", "toy.yaml:4:22");
    assert!(text.contains("quote a value"), "{text}");

    // Columns count characters, offsets are bytes.
    let (_, text) = errors("model: toy\ninput: 3x32x32\nfc: \"é\" @\n");
    assert_reports(&text, "E0001", "toy.yaml:3:9");
    let (_, text) = errors("model: toy\ninput: 3x32x32\nfc: \"ééé -> é\"\n");
    assert_reports(&text, "E0001", "toy.yaml:3:6");
}

#[test]
fn misplaced_kinds_and_repeats() {
    let src = "\
model: [toy]
input: 3x32x32
input: 1
lists:
  bind: ['w = wbit[i]']
blocks:
  - name: b
    body:
      - x: y
      - if: a
stages: {s1: b x1}
fc: 1.5
";
    let (_, text) = errors(src);
    assert_reports(&text, "E0007", "toy.yaml:1:8"); // model name is a list
    assert_reports(&text, "E0005", "toy.yaml:3:1"); // input twice
    assert_reports(&text, "E0004", "toy.yaml:5:3"); // lists without cover
    assert_reports(&text, "E0007", "toy.yaml:9:9"); // a map that is not a statement
    assert_reports(&text, "E0004", "toy.yaml:10:9"); // if without then
    assert_reports(&text, "E0007", "toy.yaml:11:9"); // stages is a map
    assert_reports(&text, "E0001", "toy.yaml:12:5"); // 1.5 is not an op
}

#[test]
fn numbers_too_large() {
    let (_, text) = errors("model: toy\ninput: 3x32x32\nclasses: 99999999999999999999999\n");
    assert_reports(&text, "E0003", "toy.yaml:3:10");
    let (_, text) = errors("model: toy\ninput: 3x32x32\nquant: {a: 99999999999999999999}\n");
    assert_reports(&text, "E0003", "toy.yaml:3:12");
}

/// Tiny deterministic generator for the mutations.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn must_not_panic(bytes: &[u8]) {
    let src = String::from_utf8_lossy(bytes);
    if let Err(d) = parse_yaml(&src) {
        assert!(d.has_errors());
        let _ = d.render_plain("toy.yaml", &src);
    }
}

#[test]
fn truncated_and_garbled_yaml_never_panics() {
    let src = read(&root().join("spec/toynet.yaml"));
    let bytes = src.as_bytes();
    for len in (0..=bytes.len()).step_by(7) {
        must_not_panic(&bytes[..len]);
    }
    must_not_panic(bytes);

    const GARBAGE: &[&[u8]] = &[
        b"[",
        b"]",
        b"{",
        b"}",
        b":",
        b": ",
        b"- ",
        b"#",
        b"\"",
        b"'",
        b"\n",
        b"\t",
        b"*a",
        b"&a ",
        b"!!int ",
        b"|",
        b">",
        b",",
        b"? ",
        b"%",
        b"@",
        b"`",
        "é".as_bytes(),
        b"\0",
        b"\xff",
        b"~",
        b"<<: ",
        b"---\n",
        b"(",
        b")",
        b"->",
        b"x99999999999999999999",
    ];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..1500 {
        let mut m = bytes.to_vec();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(m.len() + 1);
            match rng.below(4) {
                0 => {
                    let g = GARBAGE[rng.below(GARBAGE.len())];
                    m.splice(at..at, g.iter().copied());
                }
                1 => {
                    let g = GARBAGE[rng.below(GARBAGE.len())];
                    let end = (at + g.len()).min(m.len());
                    m.splice(at..end, g.iter().copied());
                }
                2 => {
                    let end = (at + 1 + rng.below(20)).min(m.len());
                    m.drain(at..end);
                }
                _ => {
                    let end = (at + 1 + rng.below(40)).min(m.len());
                    let copy = m[at..end].to_vec();
                    let to = rng.below(m.len() + 1);
                    m.splice(to..to, copy);
                }
            }
        }
        must_not_panic(&m);
    }

    // Deep nesting is refused, not a stack overflow.
    must_not_panic(&b"[".repeat(100_000));
    must_not_panic(b"model: a\ninput: 1\nquant: {a: \"");
    let mut deep = String::from("model: a\ninput: 1\nblocks:\n- name: b\n  body:\n");
    for i in 0..200 {
        let pad = "  ".repeat(i * 2 + 1);
        deep.push_str(&format!("{pad}- if: x\n{pad}  then:\n"));
    }
    must_not_panic(deep.as_bytes());
    must_not_panic(format!("model: a\ninput: 1\nstem: {}", "(".repeat(10_000)).as_bytes());
}
