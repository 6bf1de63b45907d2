//! No input may panic or hang the compiler: random bytes, truncations and
//! mutations of the real specs, huge numbers and deep nesting are thrown at
//! the whole front end (parse, check, lower every profile, summarise).

use proptest::prelude::*;
use qatc::driver::{self, Source, Syntax};
use qatc::summary;
use std::path::Path;

fn spec_text(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../spec")
            .join(name),
    )
    .expect("spec")
}

/// Runs the whole front end; panics only if the compiler panics. Returns
/// whether the input was accepted.
fn front_end(text: &str, syntax: Syntax) -> bool {
    let src = Source::from_text("fuzz", text, syntax);
    match driver::compile(&src) {
        Ok(c) => {
            for g in &c.graphs {
                let s = summary::summarize(g);
                let _ = s.table();
                let _ = g.dump();
            }
            true
        }
        Err(d) => {
            assert!(d.has_errors(), "rejected without an error");
            // Rendering must not panic either, whatever the spans.
            let _ = d.render_plain("fuzz", text);
            false
        }
    }
}

const SPECS: &[&str] = &[
    "toynet.qspec",
    "resnet20.qspec",
    "mobilenetv2.qspec",
    "vgg7.qspec",
];

#[test]
fn every_truncation_of_the_seed_specs_is_handled() {
    for name in SPECS {
        let text = spec_text(name);
        assert!(front_end(&text, Syntax::Qspec), "{name} must check");
        let mut cut = 0;
        while cut < text.len() {
            // A cut that removes only trailing whitespace leaves the spec whole.
            if text.is_char_boundary(cut) && text[..cut].trim_end() != text.trim_end() {
                assert!(
                    !front_end(&text[..cut], Syntax::Qspec) || cut == 0,
                    "{name} truncated at {cut} accepted"
                );
            }
            cut += 13;
        }
    }
}

#[test]
fn deep_nesting_and_huge_numbers_are_errors() {
    let cases = [
        format!("model m {{ input 3x32x32 classes 10 fc: linear({}1{}) }}", "(".repeat(10_000), ")".repeat(10_000)),
        format!("model m {{ input 3x32x32 classes 10 fc: flatten -> linear(1{}) }}", " + 1".repeat(5_000)),
        format!("model m {{ input 3x32x32 classes 10 fc: flatten -> linear({}1) }}", "-".repeat(5_000)),
        format!("model m {{ input 3x32x32 classes 10 fc: flatten -> linear({}true) }}", "not ".repeat(5_000)),
        "model m { input 3x32x32 classes 99999999999999999999999 fc: flatten -> linear(classes) }".to_string(),
        "model m { input 3x32x32 classes 10 fc: flatten -> linear(9223372036854775807 * 2) }".to_string(),
        "model m { input 3x32x32 classes 10 fc: flatten -> linear(1048576 * 1048576) }".to_string(),
        "model m { input 100000000x100000000x100000000 classes 10 fc: flatten -> linear(classes) }".to_string(),
        "model m { input 3x32x32 classes 10 stem: conv(1048576, 1048576) fc: flatten -> linear(classes) }".to_string(),
        format!("model m {{ input 3x32x32 classes 10 {} }}", "block b(c) { return x }\n".repeat(2_000)),
        format!("model m {{ input 3x32x32 classes 10 profile p {{ abit [{}] }} fc: flatten -> linear(classes) }}", "8 x4096, ".repeat(2_000)),
        "model m { input 3x32x32 classes 10 profile p { abit [8 x9223372036854775807] } fc: flatten -> linear(classes) }".to_string(),
        "model m { input 3x32x32 classes 10 stage s: b x4096 () block b() { return x -> conv3x3(1048576) } fc: flatten -> linear(classes) }".to_string(),
    ];
    for c in &cases {
        assert!(
            !front_end(c, Syntax::Qspec),
            "should be rejected: {}",
            &c[..c.len().min(120)]
        );
    }
}

fn mutate(text: &str, ops: &[(u8, usize, usize, u8)]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "(",
        ")",
        "[",
        "]",
        "->",
        "+=",
        "=",
        ",",
        ":",
        "x",
        "0",
        "-1",
        "99999999999999999999",
        "1.5",
        "true",
        "if",
        "else",
        "return",
        "block",
        "stage",
        "profile",
        "cin",
        "classes",
        "act(",
        "conv(",
        "#",
        "\n",
        "\u{0}",
        "é",
        "ain",
        "aout",
        "w",
        "32",
        "17",
        "x0",
    ];
    for &(kind, a, b, t) in ops {
        if bytes.is_empty() {
            break;
        }
        let i = a % bytes.len();
        let j = (i + b % 64).min(bytes.len());
        match kind % 4 {
            0 => {
                bytes.drain(i..j);
            }
            1 => {
                let tok = TOKENS[t as usize % TOKENS.len()].as_bytes();
                bytes.splice(i..i, tok.iter().copied());
            }
            2 => {
                let chunk: Vec<u8> = bytes[i..j].to_vec();
                bytes.splice(i..i, chunk);
            }
            _ => bytes[i] = t,
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        front_end(&text, Syntax::Qspec);
        front_end(&text, Syntax::Yaml);
    }

    #[test]
    fn mutated_specs_never_panic(
        spec in 0..SPECS.len(),
        ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<usize>(), any::<u8>()), 1..6),
    ) {
        let text = mutate(&spec_text(SPECS[spec]), &ops);
        front_end(&text, Syntax::Qspec);
    }
}
