//! Property test of the integer pipeline: random small models, planned by
//! `qatc_int::build` and run by `qatc_int::engine::run_image`, against a
//! plain reference written here from the documented formulas
//! (`docs/export.md`, "How a model becomes integers", "Rounding modes").
//!
//! Each case draws a tiny model (an input quantizer, a stem conv + BN +
//! activation, a block of two convs with BNs and an optional residual add
//! quantized after the add, an adaptive average pool with or without a
//! quantizer, a linear layer), random bit-widths (2..=8 and 16, activations
//! mPACT or PACT, optional ReLU/ReLU6), random weights, BN statistics
//! (including near-zero and huge variances, huge biases), clipping values,
//! fixed-point formats per layer class, and a few images. The reference
//! recomputes every integer from the float parameters: the input quantizer
//! and the DoReFa weight integers in float32 as documented, every constant
//! as `round(v * 2^frac)` of its exact f64 value (halves away from zero),
//! every sum in i128, every shift rounded to nearest with halves away from
//! zero, mPACT clamped to `[-(2^(b-1)-1), 2^(b-1)-1]`, average pools kept as
//! window sums with the division folded into the next requantization.
//! The same cases run under `Rounding::Trunc` against the seed's formulas:
//! constants through the seed's float32 `fixed_type` (BN factors and scales
//! in float32), shifts and the pool's mean truncated toward zero, the
//! pooled features rescaled with a floor division and clamped one higher,
//! mPACT clamped to `[-2^(b-1), 2^(b-1)-1]` (logits not compared there: the
//! seed's float32 summation order is out of scope; the accumulators are).
//!
//! `QATC_PROPERTY_CASES=N` changes the number of cases per mode;
//! `QATC_PROPERTY_SEED=0x...` reruns the one case a failure names.
//!
//! Asserted, for every case:
//! - every integer tensor of the engine (activations, conv and linear
//!   accumulators, pool sums) and the final accumulators are bit-equal to
//!   the reference's, and the logits are the documented f64 sum rounded
//!   once to f32;
//! - with `saturate_constants: true` the constants whose integer part does
//!   not fit their format are clamped (and listed, once each);
//! - with `saturate_constants: false`, the build fails with
//!   `IntError::FormatOverflow` naming a layer, constant and value that the
//!   reference finds overflowing, or succeeds only if every overflowing
//!   channel was folded and is provably constant (its real pre-clamp value
//!   stays more than one step beyond the clamp for every reachable input,
//!   computed here from exact per-channel bounds, which are never larger
//!   than the plan's) and every such channel is listed in `plan.folded`.
//!
//! Why this holds for any random input: the engine computes integer sums
//! exactly (i32 only where the plan proves the width enough, i64/i128
//! otherwise) and each rounding is a pure function of an exact integer and
//! a power of two, so the engine and the reference, both computing the
//! documented formula without intermediate loss, must agree bit for bit;
//! the only float steps (input quantizer, weight integers, constants,
//! logits) are computed from the same float32 parameters by the documented
//! expressions, in the same order of f64 operations.
//!
//! The random cases and the reference live in `property/` ([`property::case`],
//! [`property::reference`]); this file runs and compares them.

mod property;

use property::case::{gen_case, Case, BLOCK, FC, HEAD, STEM};
use property::reference::{dorefa, reference, Reference};
use qatc::driver::{self, Source, Syntax};
use qatc_int::plan::Layer;
use qatc_int::{self as int, engine, FixedFormat, IntError, PlanOptions, Rounding};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Default, Debug)]
struct Tally {
    cases: usize,
    compared: usize,
    images: usize,
    format_errors: usize,
    saturated_cases: usize,
    folded_cases: usize,
    saturated_outputs: usize,
}

/// The layer of a `plan.folded` line: `layer: channel c -> v (why)`.
fn parse_folded(line: &str) -> (String, usize) {
    let (layer, rest) = line.split_once(": channel ").expect("folded line");
    let ch = rest.split_whitespace().next().unwrap().parse().unwrap();
    (layer.to_string(), ch)
}

fn format_of(case: &Case, layer: &str) -> FixedFormat {
    match layer {
        "stem.a" => case.formats[STEM],
        "head.a" => case.formats[HEAD],
        "fc.a" => case.formats[FC],
        _ => case.formats[BLOCK],
    }
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

/// Runs one case; panics with the seed on any disagreement.
fn run_case(case: &Case, rounding: Rounding, tally: &mut Tally) {
    let text = case.spec();
    let src = Source::from_text("prop.qspec", &text, Syntax::Qspec);
    let g = driver::compile(&src)
        .and_then(|c| c.into_graph(Some("p")))
        .unwrap_or_else(|d| panic!("seed {}: spec does not compile: {d:?}\n{text}", case.seed));
    let ck = case.checkpoint();
    // The checkpoint holds exactly the variables the graph reads.
    let want: BTreeMap<String, Vec<usize>> = int::checkpoint::variables(&g).into_iter().collect();
    let have: BTreeMap<String, Vec<usize>> = ck
        .tensors
        .iter()
        .map(|(k, (s, _))| (k.clone(), s.clone()))
        .collect();
    assert_eq!(want, have, "seed {}: checkpoint variables", case.seed);
    let opts = PlanOptions {
        rounding,
        formats: int::Formats {
            stem: case.formats[STEM],
            block: case.formats[BLOCK],
            head: case.formats[HEAD],
            fc: case.formats[FC],
            bn: None,
        },
        saturate_constants: case.saturate,
    };
    tally.cases += 1;
    let refs: Vec<Reference> = case
        .images
        .iter()
        .map(|x| reference(case, x, rounding))
        .collect();
    let r0 = &refs[0];
    let ctx = || {
        format!(
            "seed {:#x}, {rounding}, formats {:?}, saturate {} (rerun alone: QATC_PROPERTY_SEED={:#x})\n{text}",
            case.seed,
            case.formats.map(|f| f.to_string()),
            case.saturate,
            case.seed
        )
    };
    let plan = match int::build(&g, &ck, opts) {
        Ok(plan) => plan,
        Err(IntError::FormatOverflow {
            layer,
            what,
            value,
            format,
        }) => {
            assert!(
                !case.saturate,
                "{}: overflow error with saturate_constants",
                ctx()
            );
            assert_eq!(format, format_of(case, &layer), "{}", ctx());
            assert!(
                r0.overflows
                    .iter()
                    .any(|o| o.layer == layer && o.what == what && close(o.value, value)),
                "{}: the plan says {layer}'s {what} {value} does not fit {format}; the reference finds {:?}",
                ctx(),
                r0.overflows
            );
            // Every earlier layer's overflowing channels must have been
            // folded, hence be provably constant.
            let at = r0.layers.iter().position(|l| *l == layer).unwrap();
            for o in &r0.overflows {
                let li = r0.layers.iter().position(|l| *l == o.layer).unwrap();
                assert!(
                    li >= at || o.constant,
                    "{}: {o:?} before the error's layer {layer} is not constant",
                    ctx()
                );
            }
            tally.format_errors += 1;
            return;
        }
        Err(e) => panic!("{}: unexpected build error {e}", ctx()),
    };
    // Overflowing constants: clamped (saturate) or folded channels.
    if case.saturate {
        assert!(plan.folded.is_empty(), "{}", ctx());
        assert_eq!(
            plan.saturated.len(),
            r0.overflows.len(),
            "{}: saturated {:?}, reference {:?}",
            ctx(),
            plan.saturated,
            r0.overflows
        );
        if !r0.overflows.is_empty() {
            tally.saturated_cases += 1;
        }
    } else {
        assert!(plan.saturated.is_empty(), "{}", ctx());
        let folded: BTreeSet<(String, usize)> =
            plan.folded.iter().map(|l| parse_folded(l)).collect();
        let over: BTreeSet<(String, usize)> = r0
            .overflows
            .iter()
            .map(|o| (o.layer.clone(), o.channel))
            .collect();
        assert_eq!(
            folded,
            over,
            "{}: folded {:?}, reference overflows {:?}",
            ctx(),
            plan.folded,
            r0.overflows
        );
        for o in &r0.overflows {
            assert!(o.constant, "{}: folded {o:?} is not constant", ctx());
        }
        if !folded.is_empty() {
            tally.folded_cases += 1;
        }
    }
    // Weights as documented.
    for l in &plan.layers {
        if let Layer::Conv(c) = l {
            let (w, bits) = match c.name.as_str() {
                "stem.conv" => (&case.w_stem, case.ws),
                "s.0.conv1" => (&case.w1, case.wb),
                "s.0.conv2" => (&case.w2, case.wb),
                "fc.fc" => (&case.w_fc, case.wf),
                other => panic!("{}: unexpected conv {other}", ctx()),
            };
            let want: Vec<i64> = dorefa(w, bits).0.iter().map(|&x| x as i64).collect();
            let got: Vec<i64> = c.weights.iter().map(|&x| x as i64).collect();
            assert_eq!(got, want, "{}: weights of {}", ctx(), c.name);
        }
    }
    let conv_out: BTreeMap<&str, usize> = plan
        .layers
        .iter()
        .filter_map(|l| match l {
            Layer::Conv(c) => Some((c.name.as_str(), c.output)),
            _ => None,
        })
        .collect();
    let weights = engine::Weights::new(&plan);
    let mut ws = engine::Workspace::new(&plan);
    for (x, rf) in case.images.iter().zip(&refs) {
        let out = engine::run_image(&plan, &weights, x, &mut ws, &Default::default())
            .unwrap_or_else(|e| panic!("{}: run_image: {e}", ctx()));
        for (name, want) in &rf.maps {
            let t = plan
                .tensor_of(name)
                .or_else(|| conv_out.get(name.as_str()).copied())
                .unwrap_or_else(|| panic!("{}: no tensor for {name}", ctx()));
            let got: Vec<i128> = ws
                .tensor(t)
                .unwrap()
                .to_i64()
                .iter()
                .map(|&v| v as i128)
                .collect();
            assert_eq!(
                &got,
                want,
                "{}: tensor {name}, image {x:?}\ncase {case:?}",
                ctx()
            );
        }
        let acc: Vec<i128> = out.acc.iter().map(|&v| v as i128).collect();
        assert_eq!(acc, rf.acc, "{}: accumulators", ctx());
        if rounding == Rounding::Nearest {
            assert_eq!(
                out.logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                rf.logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{}: logits {:?} against {:?}",
                ctx(),
                out.logits,
                rf.logits
            );
        }
        // Count outputs at a clamp bound (saturation is exercised).
        for (name, a) in [
            ("stem.a", &case.a_stem),
            ("s.0.a1", &case.a1),
            ("s.0.out", &case.a_out),
        ] {
            let (lo, hi) = a.range(rounding == Rounding::Trunc);
            let map = &rf.maps.iter().find(|(n, _)| n == name).unwrap().1;
            tally.saturated_outputs += map.iter().filter(|&&v| v == lo || v == hi).count();
        }
        tally.images += 1;
    }
    tally.compared += 1;
}

/// Runs `QATC_PROPERTY_CASES` cases (default `default`) from a fixed seed,
/// or the one case `QATC_PROPERTY_SEED` names.
fn run_all(rounding: Rounding, base: u64, default: u64) -> Tally {
    let mut tally = Tally::default();
    if let Some(seed) = std::env::var("QATC_PROPERTY_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
    {
        run_case(&gen_case(seed), rounding, &mut tally);
        return tally;
    }
    let n: u64 = std::env::var("QATC_PROPERTY_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    for i in 0..n {
        run_case(&gen_case(base + i), rounding, &mut tally);
    }
    eprintln!("{rounding}: {tally:?}");
    assert_eq!(tally.cases, n as usize);
    // The draws exercise every outcome.
    if n >= 1000 {
        assert!(tally.compared * 2 > tally.cases, "{tally:?}");
        assert!(tally.format_errors > 0, "{tally:?}");
        assert!(tally.saturated_cases > 0, "{tally:?}");
        assert!(tally.folded_cases > 0, "{tally:?}");
        assert!(tally.saturated_outputs > 0, "{tally:?}");
    }
    tally
}

#[test]
fn nearest_random_models_match_the_reference_bit_for_bit() {
    run_all(Rounding::Nearest, 0x5EED_0000_0000, 4000);
}

#[test]
fn trunc_random_models_match_the_reference_bit_for_bit() {
    run_all(Rounding::Trunc, 0x7E0C_0000_0000, 3000);
}
