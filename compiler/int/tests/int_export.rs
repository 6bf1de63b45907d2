//! Export round trips: the C reference inference, compiled with `cc`,
//! reproduces the Rust engine's logits bit for bit (every rounding mode on
//! the golden ToyNet and its eight input images; ResNet20 and MobileNetV2
//! golden states on two); the JSON and npz exports hold the plan.

use qatc::driver::{self, Source};
use qatc_int::export::{write_export, ExportFormat, TestImages};
use qatc_int::plan::Layer;
use qatc_int::{self as int, engine, Checkpoint, PlanOptions, Rounding};
use safetensors::tensor::SafeTensors;
use std::path::PathBuf;
use std::process::Command;

fn golden_plan(rounding: Rounding) -> (int::IntPlan, Vec<f32>) {
    seed_plan("int_export", "toynet_int", "toynet", "cfg-1*", rounding)
        .expect("every golden set has the integer ToyNet")
}

/// The plan of a seed golden file (the set `qatc_testdata::golden_set`
/// picks) under a spec and profile, with its input images; `None` (a skip of
/// `test`) when the compact golden set leaves the file out.
fn seed_plan(
    test: &str,
    file: &str,
    spec: &str,
    profile: &str,
    rounding: Rounding,
) -> Option<(int::IntPlan, Vec<f32>)> {
    let path = qatc_testdata::golden_set().file(test, &format!("{file}.safetensors"))?;
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../spec/{spec}.qspec"));
    let src = Source::read(&path).unwrap();
    let model = driver::parse(&src).unwrap();
    let g = driver::compile(&src)
        .and_then(|c| c.into_graph(Some(profile)))
        .unwrap();
    let ck = Checkpoint::import(&bytes, &model, &g, "seed", "state.").unwrap();
    let opts = PlanOptions {
        rounding,
        saturate_constants: true,
        ..PlanOptions::default()
    };
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let input: Vec<f32> = st
        .tensor("input")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some((int::build(&g, &ck, opts).unwrap(), input))
}

fn have_cc() -> bool {
    Command::new("cc").arg("--version").output().is_ok()
}

#[test]
fn c_reference_matches_the_engine_bit_for_bit() {
    if !have_cc() {
        eprintln!("skipped: no `cc` on this machine to compile the C export");
        return;
    }
    for rounding in [Rounding::Trunc, Rounding::Nearest, Rounding::Scaled] {
        let (plan, input) = golden_plan(rounding);
        c_matches_engine(&plan, &input, &rounding.to_string());
    }
}

/// The other seed models: ResNet20 (float stem, strided 3x3 convs, residual
/// adds of a materialised stem) and MobileNetV2 (expansion, strided
/// depthwise, projection), as their kernels differ from ToyNet's.
#[test]
fn c_reference_matches_the_engine_on_resnet20_and_mobilenetv2() {
    if !have_cc() {
        eprintln!("skipped: no `cc` on this machine to compile the C export");
        return;
    }
    for (file, rounding) in [
        ("resnet20", Rounding::Nearest),
        ("resnet20", Rounding::Trunc),
        ("mobilenetv2", Rounding::Trunc),
    ] {
        let Some((plan, input)) = seed_plan(
            "c_reference_matches_the_engine_on_resnet20_and_mobilenetv2",
            file,
            file,
            "w8a8",
            rounding,
        ) else {
            continue;
        };
        // Two images are enough to cover every layer; the C file stays small.
        let n = 2 * plan.input_len();
        c_matches_engine(&plan, &input[..n], &format!("{file} {rounding}"));
    }
}

/// How the exported C is built and run: portable C99 as a pedantic compiler
/// sees it (`-std=c99 -pedantic -Werror`), natively under AddressSanitizer
/// and UndefinedBehaviorSanitizer, and as a 32-bit program (`-m32`, no
/// 128-bit integers there) where the machine has a 32-bit C library (Debian's
/// `gcc-multilib`, which `./dev` installs; `QATC_REQUIRE_M32=1`, set by CI,
/// turns its absence into a failure).
const C_FLAGS: &[&str] = &[
    "-std=c99",
    "-pedantic",
    "-Werror",
    "-Wall",
    "-Wno-unused-function",
    "-ffp-contract=off",
];

/// The build variants: (name, extra flags, environment).
fn c_variants() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut v = vec![
        ("native", vec!["-O2"]),
        (
            "asan+ubsan",
            vec![
                "-O1",
                "-g",
                "-fsanitize=address,undefined",
                "-fno-sanitize-recover=all",
                "-fno-omit-frame-pointer",
            ],
        ),
    ];
    if can_build_m32() {
        v.push(("m32", vec!["-O2", "-m32"]));
    } else if std::env::var_os("QATC_REQUIRE_M32").is_some() {
        panic!(
            "QATC_REQUIRE_M32 is set but `cc -m32` cannot link a program (install gcc-multilib)"
        );
    } else {
        eprintln!("note: `cc -m32` cannot link here (no gcc-multilib): the 32-bit build of the C export is not checked");
    }
    v
}

fn can_build_m32() -> bool {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("t.c");
    std::fs::write(
        &src,
        "int main(void) { return sizeof(void *) == 4 ? 0 : 1; }\n",
    )
    .unwrap();
    let exe = dir.path().join("t");
    Command::new("cc")
        .args(["-m32", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new(&exe).status().is_ok_and(|s| s.success())
}

/// Runs `input` through the engine, exports the plan with those images as C,
/// compiles it in every [`c_variants`] and checks that each prints the
/// engine's logits bit for bit, with no sanitizer report.
fn c_matches_engine(plan: &int::IntPlan, input: &[f32], what: &str) {
    c_matches_engine_in(plan, input, what, c_variants());
}

/// [`c_matches_engine`] in the given build variants only.
fn c_matches_engine_in(
    plan: &int::IntPlan,
    input: &[f32],
    what: &str,
    variants: Vec<(&'static str, Vec<&'static str>)>,
) {
    let weights = engine::Weights::new(plan);
    let mut ws = engine::Workspace::new(plan);
    let mut tests = TestImages::default();
    for x in input.chunks_exact(plan.input_len()) {
        let out = engine::run_image(plan, &weights, x, &mut ws, &Default::default()).unwrap();
        tests.images.push(x.to_vec());
        tests.logits.push(out.logits);
    }
    let dir = tempfile::tempdir().unwrap();
    let files = write_export(plan, dir.path(), ExportFormat::C, &tests).unwrap();
    assert_eq!(files.len(), 3);
    let c_src = std::fs::read_to_string(dir.path().join(format!("{}_int.c", plan.model))).unwrap();
    assert!(
        !c_src.contains("__int128"),
        "the C export must be portable C99"
    );
    let want: Vec<Vec<u32>> = tests
        .logits
        .iter()
        .map(|l| l.iter().map(|x| x.to_bits()).collect())
        .collect();
    for (variant, flags) in variants {
        let exe = dir
            .path()
            .join(format!("model_test_{}", variant.replace('+', "_")));
        let cc = Command::new("cc")
            .args(C_FLAGS)
            .args(&flags)
            .arg("-o")
            .arg(&exe)
            .arg(dir.path().join(format!("{}_test.c", plan.model)))
            .arg(dir.path().join(format!("{}_int.c", plan.model)))
            .arg("-lm")
            .output()
            .unwrap();
        assert!(
            cc.status.success(),
            "cc failed ({what}, {variant}):\n{}",
            String::from_utf8_lossy(&cc.stderr)
        );
        let run = Command::new(&exe)
            .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
            .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            run.status.success(),
            "C logits differ ({what}, {variant}): {stderr}\n{stdout}"
        );
        assert!(
            !stderr.contains("runtime error") && !stderr.contains("Sanitizer"),
            "sanitizer report ({what}, {variant}):\n{stderr}"
        );
        // The printed logits are the engine's, bit for bit.
        let printed: Vec<Vec<u32>> = stdout
            .lines()
            .map(|l| {
                l.split(' ')
                    .map(|h| u32::from_str_radix(h, 16).unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(printed, want, "{what} ({variant})");
    }
}

#[test]
fn json_and_npz_hold_the_plan() {
    let (plan, _) = golden_plan(Rounding::Trunc);
    let dir = tempfile::tempdir().unwrap();
    let files = write_export(
        &plan,
        dir.path(),
        ExportFormat::Json,
        &TestImages::default(),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(v["format"], "qatc-int");
    assert_eq!(v["layers"].as_array().unwrap().len(), plan.layers.len());
    let first_conv = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == "conv")
        .unwrap();
    assert_eq!(first_conv["name"], "stem.conv");
    assert_eq!(
        first_conv["weights"].as_array().unwrap().len(),
        16 * 3 * 3 * 3
    );

    let files = write_export(&plan, dir.path(), ExportFormat::Npz, &TestImages::default()).unwrap();
    let npz = std::fs::read(&files[0]).unwrap();
    assert_eq!(&npz[..4], b"PK\x03\x04");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files[1]).unwrap()).unwrap();
    let w = &meta["layers"][0]["weights"]["npy"];
    let name = w.as_str().unwrap();
    assert!(name.ends_with(".npy"));
    // The entry is in the archive, with a .npy header.
    let at = npz
        .windows(name.len())
        .position(|win| win == name.as_bytes())
        .unwrap();
    let data = &npz[at + name.len()..];
    assert_eq!(&data[..6], b"\x93NUMPY");
}

/// A model with every op of issue 16 the integer engine plans: channel
/// splits, concats requantized by `quantize_concat`, shuffles, a
/// hardswish after integers and after a BN or conv (materialised first,
/// its sums in 128 bits), a
/// squeeze-excitation gate through hardsigmoid and `pact_fixed(1)`, the
/// gating product requantized by `quantize_gate`, dropout and identity.
const MIX: &str = r#"
model mix {
  input 4x4x4
  classes 3
  quant {
    weights dorefa
    acts mpact(2)
  }
  rules {
    quantize_concat(aout)
    quantize_gate(aout)
  }
  block unit() {
    l, r = x -> split(2)
    r = r -> conv1x1(2) -> bn -> relu
    return concat(l, r) -> shuffle(2)
  }
  block se() {
    y = x -> conv3x3(4) -> bn -> hardswish -> act(aout)
    g = y -> adaptive_avgpool(1) -> act(ain) -> conv1x1(4, bias: true) -> hardsigmoid -> act(ain, pact_fixed(1))
    y *= g
    return y -> dropout(0.1) -> identity
  }
  block smooth() {
    y = x -> conv1x1(4) -> bn -> swish -> act(aout)
    g = y -> hardswish -> adaptive_avgpool(1) -> act(ain) -> conv1x1(4, bias: true) -> sigmoid -> act(ain, pact_fixed(1))
    y *= g
    return y -> gelu -> act(aout)
  }
  stem: act(ain) -> hardswish -> act(ain)
  stage s1: unit x2
  stage s2: se x1
  stage s3: smooth x1
  head: conv1x1(8) -> hardswish -> act(aout) -> avgpool(4) -> flatten
  fc: linear(classes)
  profile p {
    all { w 8  a 8 }
  }
  profile p4 {
    all { w 4  a 4 }
  }
}
"#;

/// The plan of [`MIX`] under `profile` with deterministic pseudo-random
/// values (clipping values 1 to 3, BN variances 0.5 to 1.5).
fn mix_plan(profile: &str, rounding: Rounding) -> int::IntPlan {
    let src = Source::from_text("mix.qspec", MIX, qatc::driver::Syntax::Qspec);
    let g = driver::compile(&src)
        .and_then(|c| c.into_graph(Some(profile)))
        .unwrap();
    let mut ck = Checkpoint::default();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 20001) as f32 / 10000.0 - 1.0
    };
    for (name, shape) in int::checkpoint::variables(&g) {
        let len = shape.iter().product();
        let v: Vec<f32> = (0..len)
            .map(|_| {
                let x = next();
                if name.ends_with(".alpha") {
                    2.0 + x
                } else if name.ends_with("running_var") {
                    1.0 + 0.5 * x
                } else {
                    x
                }
            })
            .collect();
        ck.tensors.insert(name, (shape, v));
    }
    int::build(
        &g,
        &ck,
        PlanOptions {
            rounding,
            ..PlanOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn c_reference_matches_the_engine_on_concat_split_shuffle_and_gates() {
    if !have_cc() {
        eprintln!("skipped: no `cc` on this machine to compile the C export");
        return;
    }
    for profile in ["p", "p4"] {
        for rounding in [Rounding::Trunc, Rounding::Nearest, Rounding::Scaled] {
            let plan = mix_plan(profile, rounding);
            for kind in ["channels", "concat", "mul", "hard_swish", "lut", "requant"] {
                let json = serde_json::to_value(&plan.layers).unwrap();
                assert!(
                    json.as_array().unwrap().iter().any(|l| l["layer"] == kind),
                    "{profile} {rounding}: no `{kind}` layer"
                );
            }
            let wide: Vec<bool> = plan
                .layers
                .iter()
                .filter_map(|l| match l {
                    Layer::HardSwish(h) => Some(h.wide),
                    _ => None,
                })
                .collect();
            assert!(wide.contains(&true) && wide.contains(&false), "{wide:?}");
            let mut state = 7u32;
            let input: Vec<f32> = (0..3 * plan.input_len())
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f32 / (1u32 << 24) as f32 * 6.0 - 3.0
                })
                .collect();
            c_matches_engine(&plan, &input, &format!("mix {profile} {rounding}"));
        }
    }
}

/// The integer plan of `spec/<spec>.qspec` under `profile` with a
/// synthetic checkpoint ([`Checkpoint::synthetic`]).
fn family_plan(spec: &str, profile: &str, rounding: Rounding) -> Result<int::IntPlan, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../spec/{spec}.qspec"));
    let src = Source::read(&path).unwrap();
    let g = driver::compile(&src)
        .and_then(|c| c.into_graph(Some(profile)))
        .unwrap();
    let ck = Checkpoint::synthetic(&g, 7);
    let opts = PlanOptions {
        rounding,
        ..PlanOptions::default()
    };
    int::build(&g, &ck, opts).map_err(|e| e.to_string())
}

/// The four CNN families of `spec/` (issue 16) run integer-only: every
/// profile plans in both rounding modes (sigmoid gates by table, SE's
/// squeeze and gate of a BN output materialised at 24 bits, MobileNetV3's
/// hardswish before the pool in a fine grid), and the C reference of each
/// family's w8a8 plan (trunc for two, nearest for the other two), built
/// natively, prints the engine's logits bit for bit on two images.
#[test]
fn the_four_families_run_integer_only_and_in_c() {
    let families = [
        ("se_resnet20", Rounding::Trunc),
        ("mobilenetv3_small", Rounding::Nearest),
        ("shufflenetv2", Rounding::Trunc),
        ("densenet", Rounding::Nearest),
    ];
    let mut errors = Vec::new();
    for (spec, _) in families {
        for profile in ["w8a8", "w4a4", "w4a4-wide"] {
            for rounding in [Rounding::Trunc, Rounding::Nearest] {
                if let Err(e) = family_plan(spec, profile, rounding) {
                    errors.push(format!("{spec} {profile} {rounding}: {e}"));
                }
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    if !have_cc() {
        eprintln!("skipped: no `cc` on this machine to compile the C export");
        return;
    }
    for (spec, rounding) in families {
        let plan = family_plan(spec, "w8a8", rounding).unwrap();
        let kinds: Vec<String> = serde_json::to_value(&plan.layers)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["layer"].as_str().unwrap_or("").to_string())
            .collect();
        let want = match spec {
            "se_resnet20" => "lut",
            "mobilenetv3_small" => "hard_swish",
            "shufflenetv2" => "channels",
            _ => "concat",
        };
        assert!(kinds.iter().any(|k| k == want), "{spec}: no `{want}` layer");
        let mut state = 11u32;
        let input: Vec<f32> = (0..2 * plan.input_len())
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
            })
            .collect();
        // The native build: the sanitizer and 32-bit builds of every
        // layer kind run on MIX above (the families' files are large).
        let native = c_variants().into_iter().take(1).collect();
        c_matches_engine_in(&plan, &input, &format!("{spec} {rounding}"), native);
    }
}
