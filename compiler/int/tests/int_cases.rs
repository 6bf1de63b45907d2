//! The integer plan on cases small enough to compute by hand (a quantized
//! input, a 1x1 conv with BN, a residual add, a linear layer), and the
//! errors a wrong checkpoint or an inexpressible profile give.

use qatc::driver::{self, Source, Syntax};
use qatc_int::{self as int, engine, Checkpoint, IntError, PlanOptions, Rounding};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::PathBuf;

const TINY: &str = r#"
model tiny {
  input 1x1x2
  classes 1
  quant {
    weights dorefa
    acts mpact(2)
  }
  rules {
    quantize_after_add(aout) as out
  }
  block res(cout) {
    y = x -> conv1x1(cout) as conv -> bn as bn
    y += x
    return y
  }
  stem: act(ain) as q
  stage s: res x1 (cout: 1)
  fc: flatten -> linear(classes) as fc
  profile p {
    all { w 8  a 8 }
  }
  profile p4 {
    all { w 4  a 4 }
  }
  profile wfloat {
    all { w 32  a 8 }
  }
}
"#;

fn tiny_graph(profile: &str) -> qatc::ir::Graph {
    let src = Source::from_text("tiny.qspec", TINY, Syntax::Qspec);
    driver::compile(&src)
        .and_then(|c| c.into_graph(Some(profile)))
        .expect("tiny spec compiles")
}

fn tensors(skip: &str, reshape: Option<(&str, Vec<usize>)>) -> Vec<u8> {
    tensors_with(skip, reshape, &[])
}

/// [`tensors`] with some values replaced.
fn tensors_with(
    skip: &str,
    reshape: Option<(&str, Vec<usize>)>,
    values: &[(&str, f32)],
) -> Vec<u8> {
    let vars: Vec<(&str, Vec<usize>, Vec<f32>)> = vec![
        ("stem.q.alpha", vec![], vec![2.0]),
        ("s.0.conv.weight", vec![1, 1, 1, 1], vec![0.5]),
        ("s.0.bn.weight", vec![1], vec![1.5]),
        ("s.0.bn.bias", vec![1], vec![0.25]),
        ("s.0.bn.running_mean", vec![1], vec![0.1]),
        ("s.0.bn.running_var", vec![1], vec![0.8]),
        ("s.0.out.alpha", vec![], vec![3.0]),
        ("fc.fc.weight", vec![1, 2], vec![0.3, -0.7]),
        ("fc.fc.bias", vec![1], vec![0.05]),
    ];
    let vars = vars
        .into_iter()
        .map(|(n, s, v)| match values.iter().find(|(m, _)| *m == n) {
            Some((_, x)) => (n, s, vec![*x]),
            None => (n, s, v),
        });
    let vars: Vec<(&str, Vec<usize>, Vec<f32>)> = vars
        .filter(|(n, _, _)| *n != skip)
        .map(|(n, s, v)| match &reshape {
            Some((r, shape)) if *r == n => (n, shape.clone(), v),
            _ => (n, s, v),
        })
        .collect();
    safetensors_f32(&vars)
}

/// A safetensors file of f32 tensors: (name, shape, values).
fn safetensors_f32(vars: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = vars
        .iter()
        .map(|(n, s, v)| {
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (n.to_string(), s.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize(views, None).unwrap()
}

/// Float weights are refused where the layer reads integers (only a layer
/// reading the float input may keep them).
#[test]
fn float_weights_inside_the_model_are_refused() {
    let g = tiny_graph("wfloat");
    let ck = Checkpoint::from_bytes(&tensors("", None), &g, "").unwrap();
    let e = int::build(&g, &ck, PlanOptions::default()).unwrap_err();
    assert!(matches!(e, IntError::Unsupported { .. }), "{e}");
    assert!(
        e.to_string().contains("`s.0.conv`") && e.to_string().contains("float"),
        "{e}"
    );
}

/// `round(v)`, halves away from zero, as an integer.
fn r(v: f64) -> i64 {
    v.round() as i64
}

#[test]
fn tiny_conv_bn_add_linear_by_hand() {
    let g = tiny_graph("p");
    let ck = Checkpoint::from_bytes(&tensors("", None), &g, "").unwrap();
    let opts = PlanOptions {
        rounding: Rounding::Nearest,
        ..PlanOptions::default()
    };
    let plan = int::build(&g, &ck, opts).unwrap();
    let x = [1.0f32, -0.5];
    let weights = engine::Weights::new(&plan);
    let mut ws = engine::Workspace::new(&plan);
    let out = engine::run_image(&plan, &weights, &x, &mut ws, &Default::default()).unwrap();

    // Input quantizer: mPACT 8 bit, alpha 2: q = round(x * 127/2).
    let q_in = [64i64, -32]; // 63.5 rounds to even, -31.75 to -32
    let t_in = plan.tensor_of("stem.q").unwrap();
    assert_eq!(ws.tensor(t_in).unwrap().to_i64(), q_in);

    // Conv: weight 0.5 is the largest, so its integer is 127 (scale 127).
    let acc: Vec<i64> = q_in.iter().map(|q| q * 127).collect();
    // BN folded into the multiplier of the accumulator, the add's identity
    // rescaled from 127/2 to the output scale 127/3, fixed<32,10> (22 bits).
    let (s_in, s_out, f) = (127.0 / 2.0, 127.0 / 3.0, (1u64 << 22) as f64);
    let std = (0.8f64 + 1e-5f32 as f64).sqrt();
    let (w_bn, b_bn) = (1.5 / std, 0.25 - 1.5 * 0.1 / std);
    let m_acc = r(s_out / (s_in * 127.0) * w_bn * f);
    let m_id = r(s_out / s_in * f);
    let bias = r(s_out * b_bn * f);
    let q_out: Vec<i64> = (0..2)
        .map(|i| {
            let s = (acc[i] * m_acc + q_in[i] * m_id + bias) as f64 / f;
            r(s).clamp(-127, 127)
        })
        .collect();
    let t_out = plan.tensor_of("s.0.out").unwrap();
    assert_eq!(ws.tensor(t_out).unwrap().to_i64(), q_out);
    // Those integers are close to the real computation.
    for i in 0..2 {
        let real = (x[i] as f64 * w_bn * 1.0 + b_bn) + x[i] as f64;
        assert!((q_out[i] as f64 / s_out - real).abs() < 0.05, "{i}: {real}");
    }

    // Linear: weights tanh-normalised to 8 bits, logits = acc / scales + bias.
    let w_fc = [r(0.3f64.tanh() / 0.7f64.tanh() * 127.0), -127];
    assert_eq!(w_fc[0], 61);
    let acc_fc = q_out[0] * w_fc[0] + q_out[1] * w_fc[1];
    assert_eq!(out.acc, vec![acc_fc]);
    let logit = (acc_fc as f64 / (s_out * 127.0) + 0.05f32 as f64) as f32;
    assert_eq!(out.logits, vec![logit]);
}

/// A channel that batch norm scales by a near-zero variance has a
/// multiplier and bias far beyond fixed<32,10>; where its output is the
/// same clamp bound for every input it can get, it becomes that constant
/// instead of an error (and stays an error with `saturate_constants` off
/// when it is not provably constant).
#[test]
fn a_provably_constant_channel_is_folded() {
    let g = tiny_graph("p");
    // gamma 50, running mean 10, variance ~0: k = 50/sqrt(1e-5), the bias
    // -50*10/sqrt(1e-5) pushes every reachable value far below -alpha.
    let dead = [
        ("s.0.bn.weight", 50.0),
        ("s.0.bn.running_mean", 10.0),
        ("s.0.bn.running_var", 0.0),
    ];
    let ck = Checkpoint::from_bytes(&tensors_with("", None, &dead), &g, "").unwrap();
    // The seed's (trunc) mPACT clamp is [-128, 127], nearest's symmetric.
    for (rounding, lo) in [(Rounding::Trunc, -128), (Rounding::Nearest, -127)] {
        let opts = PlanOptions {
            rounding,
            ..PlanOptions::default()
        };
        let plan = int::build(&g, &ck, opts).unwrap();
        assert_eq!(plan.folded.len(), 1, "{:?}", plan.folded);
        let want = format!("s.0.out: channel 0 -> {lo} ");
        assert!(plan.folded[0].starts_with(&want), "{:?}", plan.folded);
        let weights = engine::Weights::new(&plan);
        let mut ws = engine::Workspace::new(&plan);
        for x in [[1.0f32, -0.5], [2.0, 2.0], [-2.0, -2.0]] {
            engine::run_image(&plan, &weights, &x, &mut ws, &Default::default()).unwrap();
            let t_out = plan.tensor_of("s.0.out").unwrap();
            assert_eq!(ws.tensor(t_out).unwrap().to_i64(), [lo, lo]);
        }
    }
    // The same channel with a small mean is not constant: its constants
    // still do not fit, and that is an error naming the layer.
    let live = [("s.0.bn.weight", 50.0), ("s.0.bn.running_var", 0.0)];
    let ck = Checkpoint::from_bytes(&tensors_with("", None, &live), &g, "").unwrap();
    let e = int::build(&g, &ck, PlanOptions::default()).unwrap_err();
    assert!(matches!(e, IntError::FormatOverflow { .. }), "{e}");
    assert!(e.to_string().contains("s.0.out"), "{e}");
}

#[test]
fn tiny_trunc_truncates_toward_zero() {
    let g = tiny_graph("p");
    let ck = Checkpoint::from_bytes(&tensors("", None), &g, "").unwrap();
    let plan = int::build(&g, &ck, PlanOptions::default()).unwrap();
    let nearest = int::build(
        &g,
        &ck,
        PlanOptions {
            rounding: Rounding::Nearest,
            ..PlanOptions::default()
        },
    )
    .unwrap();
    let x = [1.0f32, -0.5];
    let run = |p: &int::IntPlan| {
        let w = engine::Weights::new(p);
        let mut ws = engine::Workspace::new(p);
        engine::run_image(p, &w, &x, &mut ws, &Default::default()).unwrap();
        ws.tensor(p.tensor_of("s.0.out").unwrap()).unwrap().to_i64()
    };
    let (t, n) = (run(&plan), run(&nearest));
    // Truncation never moves away from zero, and never by a step or more.
    for (a, b) in t.iter().zip(&n) {
        assert!(
            a.abs() <= b.abs() && (a - b).abs() <= 1,
            "trunc {a} nearest {b}"
        );
    }
    // The mPACT clamp of the seed's pipeline is [-128, 127].
    let qat = match &plan.tensors[plan.tensor_of("s.0.out").unwrap()].kind {
        int::plan::TensorKind::Act { lo, hi, .. } => (*lo, *hi),
        _ => panic!("not an activation"),
    };
    assert_eq!(qat, (-128, 127));
}

#[test]
fn missing_and_misshaped_tensors_are_listed() {
    let g = tiny_graph("p");
    let e = Checkpoint::from_bytes(
        &tensors("s.0.bn.running_var", Some(("fc.fc.weight", vec![2, 1]))),
        &g,
        "",
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, IntError::Tensors { .. }), "{msg}");
    assert!(msg.contains("`s.0.bn.running_var`"), "{msg}");
    assert!(
        msg.contains("`fc.fc.weight` is [2, 1], the model needs [1, 2]"),
        "{msg}"
    );
}

/// The sidecar training writes, for `model` / `profile` of the spec of
/// hash `spec_hash`.
fn sidecar(model: &str, profile: &str, spec_hash: &str) -> String {
    serde_json::json!({
        "format": "qatc-checkpoint-1", "model": model, "profile": profile,
        "spec": "tiny.qspec", "spec_hash": spec_hash, "epoch": 3, "step": 0,
        "optimizer_steps": 30, "test_top1": null, "best_top1": null,
        "best_epoch": null, "config": {}, "partial": null,
    })
    .to_string()
}

fn tiny_hash() -> String {
    let src = Source::from_text("tiny.qspec", TINY, Syntax::Qspec);
    driver::compile(&src).expect("tiny spec compiles").spec_hash
}

#[test]
fn a_checkpoint_of_another_profile_or_spec_is_refused_by_its_sidecar() {
    let g = tiny_graph("p");
    let hash = tiny_hash();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ck.safetensors");
    std::fs::write(&path, tensors("", None)).unwrap();
    let side = dir.path().join("ck.safetensors.json");
    std::fs::write(&side, sidecar("tiny", "p4", &hash)).unwrap();
    let e = Checkpoint::read(&path, &g, &hash).unwrap_err();
    assert!(matches!(e, IntError::WrongModel { .. }));
    assert!(e.to_string().contains("profile `p4`"), "{e}");
    std::fs::write(&side, sidecar("tiny", "p", &hash)).unwrap();
    assert!(Checkpoint::read(&path, &g, &hash).is_ok());
    // Another spec (or another version of it): refused, naming both hashes.
    let e = Checkpoint::read(&path, &g, "0123").unwrap_err().to_string();
    assert!(
        e.contains("ck.safetensors.json") && e.contains(&hash) && e.contains("0123"),
        "{e}"
    );
    // A sidecar that is not training's record is an error naming the file.
    std::fs::write(&side, r#"{"model": "tiny", "profile": "p"}"#).unwrap();
    let e = Checkpoint::read(&path, &g, &hash).unwrap_err().to_string();
    assert!(
        e.contains("ck.safetensors.json") && e.contains("missing field"),
        "{e}"
    );
    // Training's own naming: `ck.json` next to `ck.safetensors`.
    std::fs::remove_file(&side).unwrap();
    std::fs::write(dir.path().join("ck.json"), sidecar("lenet", "p", &hash)).unwrap();
    let e = Checkpoint::read(&path, &g, &hash).unwrap_err();
    assert!(e.to_string().contains("model `lenet`"), "{e}");
}

/// A checkpoint qatc wrote (sealed with its digests) is checked by
/// `qatc int` / `qatc export` before use: flipped data, a flipped header
/// byte, a truncated file and another file's digests are errors naming the
/// file; a file without digests reads as before.
#[test]
fn corrupt_checkpoints_are_refused_by_the_integer_pipeline() {
    let g = tiny_graph("p");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ck.safetensors");
    let shown = path.display().to_string();
    let plain = tensors("", None);
    let reseal = |bytes: &[u8]| {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        let views: Vec<(String, TensorView)> = st.tensors();
        qatc_integrity::serialize_sealed(views, Default::default()).unwrap()
    };
    let sealed = reseal(&plain);
    std::fs::write(&path, &sealed).unwrap();
    assert!(Checkpoint::read(&path, &g, &tiny_hash()).is_ok());
    std::fs::write(&path, &plain).unwrap();
    assert!(
        Checkpoint::read(&path, &g, &tiny_hash()).is_ok(),
        "no digests: a notice only"
    );
    let header = 8 + u64::from_le_bytes(sealed[..8].try_into().unwrap()) as usize;
    let n = sealed.len();
    // Flipped data: the error names the file, the tensor and both digests.
    let mut bad = sealed.clone();
    bad[n - 1] ^= 0x55;
    std::fs::write(&path, &bad).unwrap();
    let e = Checkpoint::read(&path, &g, &tiny_hash())
        .unwrap_err()
        .to_string();
    let prefix = format!("checkpoint `{shown}` is corrupt: the data of tensor `");
    assert!(e.starts_with(&prefix), "{e}");
    assert!(e.contains("SHA-256 expected "), "{e}");
    assert!(e.contains(", found "), "{e}");
    // Every flipped header byte.
    for i in 0..header {
        let mut bad = sealed.clone();
        bad[i] ^= 0x55;
        std::fs::write(&path, &bad).unwrap();
        let e = Checkpoint::read(&path, &g, &tiny_hash())
            .err()
            .unwrap_or_else(|| panic!("header byte {i} passed"));
        assert!(e.to_string().contains(&shown), "byte {i}: {e}");
    }
    // Truncated.
    std::fs::write(&path, &sealed[..n - 3]).unwrap();
    let e = Checkpoint::read(&path, &g, &tiny_hash())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("not a safetensors checkpoint: `{shown}`: ")),
        "{e}"
    );
    // Another file's digests on these tensors.
    let other = reseal(&tensors_with("", None, &[("s.0.conv.weight", 0.75)]));
    assert_eq!(other.len(), n);
    let mut spliced = other[..header].to_vec();
    spliced.extend_from_slice(&sealed[header..]);
    std::fs::write(&path, &spliced).unwrap();
    let e = Checkpoint::read(&path, &g, &tiny_hash())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("{prefix}s.0.conv.weight` does not match")),
        "{e}"
    );
    assert!(!e.contains("more tensor"), "{e}");
    // `qatc import` refuses a corrupt qatc checkpoint too (see
    // `qatc::import::convert`), and seals what it writes.
}

/// A golden file that every golden set has (the compact one too).
fn golden_bytes(name: &str) -> Vec<u8> {
    let path = qatc_testdata::golden_set().require(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn toynet(profile: &str) -> (qatc::ast::Model, qatc::ir::Graph) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../spec/toynet.qspec");
    let src = Source::read(&path).unwrap();
    (
        driver::parse(&src).unwrap(),
        driver::compile(&src)
            .and_then(|c| c.into_graph(Some(profile)))
            .unwrap(),
    )
}

/// Whether any of the head's constants (multipliers and biases of
/// `head.act_quant_out`, computed in f64 from the checkpoint as in
/// `docs/export.md`) has an integer part beyond `int_bits` signed bits.
fn head_constants_overflow(ck: &Checkpoint, int_bits: u32) -> bool {
    let get = |n: &str| ck.get(n).unwrap().to_vec();
    let (gamma, beta, mean, var) = (
        get("head.bn.weight"),
        get("head.bn.bias"),
        get("head.bn.running_mean"),
        get("head.bn.running_var"),
    );
    let a_in = ck.scalar("s4.2.act_quant_out.alpha").unwrap() as f64;
    let a_out = ck.scalar("head.act_quant_out.alpha").unwrap() as f64;
    // cfg-1*: 8-bit block output and weights, 16-bit head output.
    let (s_in, s_w, s_out) = (127.0 / a_in, 127.0, 32767.0 / a_out);
    let max = (1i64 << (int_bits - 1)) as f64;
    (0..gamma.len()).any(|c| {
        let std = (var[c] as f64 + 1e-5).sqrt();
        let k = gamma[c] as f64 / std;
        let bias = s_out * (beta[c] as f64 - k * mean[c] as f64);
        let mult = s_out / (s_in * s_w) * k;
        [bias, mult]
            .iter()
            .any(|v| v.round() > max - 1.0 || v.round() < -max)
    })
}

/// A constant that does not fit its format is an error naming the layer
/// exactly when it does not fit: on the golden set as it is (whatever its
/// head's constants are), and on the same checkpoint with one head bias
/// pushed past `fixed<32,16>` but within `fixed<32,17>`.
#[test]
fn golden_errors_name_the_layer() {
    let bytes = golden_bytes("toynet_int.safetensors");
    let (model, g) = toynet("cfg-1*");
    let ck = Checkpoint::import(&bytes, &model, &g, "seed", "state.").unwrap();
    let check = |ck: &Checkpoint, what: &str| {
        let overflows = head_constants_overflow(ck, 16);
        match int::build(&g, ck, PlanOptions::default()) {
            Ok(_) => assert!(
                !overflows,
                "{what}: a head constant passes fixed<32,16> but the plan built"
            ),
            Err(e) => {
                assert!(matches!(e, IntError::FormatOverflow { .. }), "{what}: {e}");
                if e.to_string().contains("head.act_quant_out") {
                    assert!(
                        overflows,
                        "{what}: the head's constants fit fixed<32,16>: {e}"
                    );
                } else {
                    // An earlier layer's constant overflows first: named.
                    assert!(e.to_string().contains('`'), "{what}: {e}");
                    eprintln!("{what}: an earlier layer overflows first: {e}");
                }
            }
        }
        // With two more integer bits the head holds constants up to 2^17.
        if !head_constants_overflow(ck, 18) {
            let mut opts = PlanOptions::default();
            opts.formats.head = int::FixedFormat::new(32, 18);
            if let Err(e) = int::build(&g, ck, opts) {
                assert!(!e.to_string().contains("head.act_quant_out"), "{what}: {e}");
            }
        }
    };
    check(&ck, "the golden checkpoint");
    // Push channel 0's bias to about 40,000 steps (fixed<32,16> holds
    // integer parts up to 32,767): beta = 40000 / s_out + k * mean.
    let mut forced = ck.clone();
    let a_out = forced.scalar("head.act_quant_out.alpha").unwrap() as f64;
    let s_out = 32767.0 / a_out;
    let get = |n: &str| forced.get(n).unwrap()[0] as f64;
    let k = get("head.bn.weight") / (get("head.bn.running_var") + 1e-5).sqrt();
    let beta0 = 40_000.0 / s_out + k * get("head.bn.running_mean");
    forced.tensors.get_mut("head.bn.bias").unwrap().1[0] = beta0 as f32;
    assert!(head_constants_overflow(&forced, 16));
    check(&forced, "a head bias of 40,000 steps");
    // A ResNet20 checkpoint is not a ToyNet one.
    let other = golden_bytes("resnet20.safetensors");
    let e = Checkpoint::import(&other, &model, &g, "seed", "state.").unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

const NORM_FIRST: &str = r#"
model normfirst {
  input 1x1x2
  classes 1
  quant {
    weights dorefa
    acts mpact(2)
  }
  block blk(cout) {
    y = x -> bn as norm -> conv1x1(cout) as conv -> act(aout) as out
    return y
  }
  stem: act(ain) as q
  stage s: blk x1 (cout: 1)
  fc: flatten -> linear(classes) as fc
  profile p {
    all { w 8  a 8 }
  }
}
"#;

/// A BN in front of a conv is materialised as integers at its input's
/// scale; a trained BN that scales by tens has a bias (in those steps)
/// beyond fixed<32,10>: an error naming the layer, and with a `bn` format
/// that holds it the integer result stays within a step of the real
/// computation.
#[test]
fn a_materialised_bn_needs_a_format_that_holds_its_constants() {
    let src = Source::from_text("normfirst.qspec", NORM_FIRST, Syntax::Qspec);
    let g = driver::compile(&src)
        .and_then(|c| c.into_graph(Some("p")))
        .expect("spec compiles");
    // BN: gamma 20, mean 1, var 1 (plus eps), beta 0.5: in the input's
    // steps (127/2 per unit) the bias is about -1240, past fixed<32,10>.
    let vars: Vec<(&str, Vec<usize>, Vec<f32>)> = vec![
        ("stem.q.alpha", vec![], vec![2.0]),
        ("s.0.norm.weight", vec![1], vec![20.0]),
        ("s.0.norm.bias", vec![1], vec![0.5]),
        ("s.0.norm.running_mean", vec![1], vec![1.0]),
        ("s.0.norm.running_var", vec![1], vec![1.0]),
        ("s.0.conv.weight", vec![1, 1, 1, 1], vec![0.5]),
        ("s.0.out.alpha", vec![], vec![40.0]),
        ("fc.fc.weight", vec![1, 2], vec![0.3, 0.3]),
        ("fc.fc.bias", vec![1], vec![0.0]),
    ];
    let bytes = safetensors_f32(&vars);
    let ck = Checkpoint::from_bytes(&bytes, &g, "").unwrap();
    let mut opts = PlanOptions {
        rounding: Rounding::Nearest,
        ..PlanOptions::default()
    };
    let e = int::build(&g, &ck, opts).unwrap_err();
    assert!(matches!(e, IntError::FormatOverflow { .. }), "{e}");
    assert!(e.to_string().contains("s.0.conv.int"), "{e}");
    opts.formats.bn = Some(int::FixedFormat::new(32, 16));
    let plan = int::build(&g, &ck, opts).unwrap();
    let weights = engine::Weights::new(&plan);
    let mut ws = engine::Workspace::new(&plan);
    let std = (1.0f64 + 1e-5).sqrt();
    let s_out = 127.0 / 40.0;
    for x in [[1.5f32, -0.75], [0.2, 1.9], [-2.0, 0.0]] {
        engine::run_image(&plan, &weights, &x, &mut ws, &Default::default()).unwrap();
        let t_out = plan.tensor_of("s.0.out").unwrap();
        let got = ws.tensor(t_out).unwrap().to_i64();
        for (i, &xi) in x.iter().enumerate() {
            // Input quantized at 127/2, BN, the conv's weight (the largest:
            // exactly 1 after DoReFa), the output quantizer.
            let q_in = (xi as f64 * 63.5).round() / 63.5;
            let bn = 20.0 * (q_in - 1.0) / std + 0.5;
            let want = (bn * s_out).round().clamp(-127.0, 127.0) as i64;
            assert!(
                (got[i] - want).abs() <= 1,
                "x {xi}: {} against {want}",
                got[i]
            );
        }
    }
}
