//! What the ONNX Runtime tests share: the Python side (one process runs a
//! list of jobs), the seed's activation quantizers for the teacher-forced
//! check, spec loading and synthetic checkpoints.
#![allow(dead_code)]

use qatc::driver::{self, Source};
use qatc::ir::{Graph, Node, Op, Quantizer};
use qatc_int::Checkpoint;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs each job of the JSON file `argv[1]`: checks the model with
/// `onnx.checker.check_model(full_check=True)`, runs it in ONNX Runtime's
/// CPU provider (one thread) with graph optimisations off, the values named
/// in `taps` added as outputs, and writes `out/logits.f32` and
/// `out/tap<i>.f32`; with `optimized`, also `out/logits_opt.f32` from a run
/// with every optimisation on. Everything float32, little-endian.
const RUN: &str = r#"
import json, os, sys
import numpy as np, onnx, onnxruntime as ort
jobs = json.load(open(sys.argv[1]))
for job in jobs:
    model = onnx.load(job["model"])
    onnx.checker.check_model(model, full_check=True)
    x = np.fromfile(job["input"], dtype="<f4").reshape(job["shape"])
    out = job["out"]
    logits = model.graph.output[0].name
    have = {o.name for o in model.graph.output}
    for n in job["taps"]:
        if n not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
            have.add(n)
    levels = [("logits", ort.GraphOptimizationLevel.ORT_DISABLE_ALL, model.SerializeToString())]
    if job["optimized"]:
        levels.append(("logits_opt", ort.GraphOptimizationLevel.ORT_ENABLE_ALL, job["model"]))
    for file, level, m in levels:
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.intra_op_num_threads = 1
        s = ort.InferenceSession(m, so, providers=["CPUExecutionProvider"])
        got = dict(zip([o.name for o in s.get_outputs()], s.run(None, {s.get_inputs()[0].name: x})))
        got[logits].astype("<f4").tofile(os.path.join(out, file + ".f32"))
        if file == "logits":
            for i, n in enumerate(job["taps"]):
                got[n].astype("<f4").tofile(os.path.join(out, f"tap{i}.f32"))
print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}: {len(jobs)} model(s) checked and run")
"#;

/// `(python, PYTHONPATH)` of the ONNX tooling, or a skip of `test` (a
/// failure with `QATC_REQUIRE_SHARED`).
pub fn onnx_python(test: &str) -> Option<(String, String)> {
    match std::env::var("QATC_ONNX_PYTHONPATH") {
        Ok(p) if !p.is_empty() => {
            let python = std::env::var("QATC_ONNX_PYTHON").unwrap_or_else(|_| "python3".into());
            Some((python, p))
        }
        _ => {
            assert!(
                !qatc_testdata::require_shared(),
                "QATC_ONNX_PYTHONPATH is not set and QATC_REQUIRE_SHARED is: source \
                 scripts/onnx-env.sh (./dev test does)"
            );
            qatc_testdata::skip(
                test,
                "no ONNX tooling (QATC_ONNX_PYTHONPATH unset: source scripts/onnx-env.sh, as \
                 ./dev test does)",
            );
            None
        }
    }
}

/// One model to check and run.
pub struct Job {
    pub onnx: Vec<u8>,
    pub input: Vec<f32>,
    pub shape: Vec<usize>,
    pub taps: Vec<String>,
    pub optimized: bool,
}

/// What ONNX Runtime computed for a [`Job`].
pub struct Ran {
    pub logits: Vec<f32>,
    pub logits_opt: Option<Vec<f32>>,
    pub taps: Vec<Vec<f32>>,
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn write_f32(path: &Path, v: &[f32]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

/// Runs `jobs` in one Python process (see [`RUN`]).
pub fn run_jobs((python, pythonpath): &(String, String), dir: &Path, jobs: &[Job]) -> Vec<Ran> {
    let mut list = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let d = dir.join(format!("job{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("model.onnx"), &job.onnx).unwrap();
        write_f32(&d.join("input.f32"), &job.input);
        list.push(serde_json::json!({
            "model": d.join("model.onnx"),
            "input": d.join("input.f32"),
            "shape": job.shape,
            "out": d,
            "taps": job.taps,
            "optimized": job.optimized,
        }));
    }
    let jobs_file = dir.join("jobs.json");
    std::fs::write(&jobs_file, serde_json::to_string(&list).unwrap()).unwrap();
    let out = Command::new(python)
        .env("PYTHONPATH", pythonpath)
        .arg("-c")
        .arg(RUN)
        .arg(&jobs_file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "onnx / ONNX Runtime failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    jobs.iter()
        .enumerate()
        .map(|(i, job)| {
            let d = dir.join(format!("job{i}"));
            Ran {
                logits: read_f32(&d.join("logits.f32")),
                logits_opt: job.optimized.then(|| read_f32(&d.join("logits_opt.f32"))),
                taps: (0..job.taps.len())
                    .map(|t| read_f32(&d.join(format!("tap{t}.f32"))))
                    .collect(),
            }
        })
        .collect()
}

/// The spec file `spec/<name>.qspec`.
pub fn spec_path(spec: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../spec/{spec}.qspec"))
}

/// The parsed spec and its graph under `profile`.
pub fn load(spec: &str, profile: &str) -> (qatc::ast::Model, Graph) {
    let src = Source::read(&spec_path(spec)).unwrap();
    let model = driver::parse(&src).unwrap();
    let g = driver::compile(&src)
        .and_then(|c| c.into_graph(Some(profile)))
        .unwrap_or_else(|d| panic!("{spec} {profile}: {}", d.render_plain(&src.name, &src.text)));
    (model, g)
}

/// A deterministic stream of standard normal numbers (an LCG and
/// Box-Muller).
pub struct Normal(u64);

impl Normal {
    pub fn new(seed: u64) -> Normal {
        Normal(
            seed.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    }

    fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub fn next(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

/// A checkpoint for `g` with plausible values: Kaiming-scaled weights,
/// BN near the identity, small biases, clipping values at their initial
/// values.
pub fn synthetic_checkpoint(g: &Graph, seed: u64) -> Checkpoint {
    let mut rng = Normal::new(seed);
    let mut ck = Checkpoint::default();
    for (name, shape) in qatc_int::checkpoint::variables(g) {
        let (node, param) = name.rsplit_once('.').unwrap();
        let n = g.nodes.iter().find(|n| n.name == node).unwrap();
        let len: usize = shape.iter().product();
        let values: Vec<f32> = match (&n.op, param) {
            (Op::ActQuant(a), "alpha") => match a.quantizer {
                Quantizer::Pact { alpha } | Quantizer::Mpact { alpha } => vec![alpha as f32],
                _ => vec![6.0],
            },
            (Op::BatchNorm(_), "weight") => (0..len).map(|_| 1.0 + 0.1 * rng.next()).collect(),
            (Op::BatchNorm(_), "running_var") => {
                (0..len).map(|_| 1.0 + 0.3 * rng.next().abs()).collect()
            }
            (_, "weight") => {
                let fan_in: usize = shape[1..].iter().product();
                let std = (2.0 / fan_in.max(1) as f32).sqrt();
                (0..len).map(|_| std * rng.next()).collect()
            }
            _ => (0..len).map(|_| 0.1 * rng.next()).collect(),
        };
        ck.tensors.insert(name, (shape, values));
    }
    ck
}

/// The seed's eval-mode activation quantizer on one value, in float32 as
/// PyTorch evaluates it (`runtime/src/quant.rs`: the scale is
/// `alpha.reciprocal() * levels`, DoReFa's `0.1 * x` a float32 product):
/// `(value, its position on the grid before rounding)`.
pub fn seed_quant(q: &Quantizer, bits: u32, alpha: f32, x: f32) -> (f32, f32) {
    let levels = |b: u32| ((1u64 << b) - 1) as f32;
    match *q {
        Quantizer::Mpact { .. } => {
            let s = (1.0 / alpha) * levels(bits - 1);
            let t = x.clamp(-alpha.abs(), alpha.abs()) * s;
            (t.round_ties_even() / s, t)
        }
        Quantizer::Pact { .. } => {
            let s = (1.0 / alpha) * levels(bits);
            let t = x.max(0.0).min(alpha) * s;
            (t.round_ties_even() / s, t)
        }
        Quantizer::Dorefa => {
            let n = levels(bits);
            let t = (x * 0.1f32).clamp(0.0, 1.0) * n;
            (t.round_ties_even() / n, t)
        }
        Quantizer::PactFixed { scale } => {
            let (s, n) = (scale as f32, levels(bits));
            let t = x.clamp(0.0, s) / s * n;
            (t.round_ties_even() / n * s, t)
        }
        Quantizer::None => (x, x),
    }
}

/// An activation quantizer of a graph, with the ONNX values that are its
/// input and its output.
pub struct Site<'g> {
    pub node: &'g Node,
    pub quantizer: Quantizer,
    pub alpha: f32,
    pub input: String,
}

/// Every activation quantizer of `g` in the exported `onnx`: its input is
/// what its first ONNX node (a float Clip, else the QuantizeLinear) reads,
/// its output the value named after it.
pub fn sites<'g>(g: &'g Graph, ck: &Checkpoint, onnx: &[u8]) -> Vec<Site<'g>> {
    use prost::Message;
    let m = qatc_onnx::proto::ModelProto::decode(onnx).unwrap();
    let nodes = m.graph.unwrap().node;
    let mut out = Vec::new();
    for n in &g.nodes {
        let Op::ActQuant(a) = &n.op else { continue };
        if a.quantizer == Quantizer::None || n.out_bit >= 32 {
            continue;
        }
        let (clip, quant) = (format!("{}.clip_x", n.name), format!("{}.quantize", n.name));
        let first = nodes
            .iter()
            .find(|o| o.name.as_deref() == Some(&clip))
            .or_else(|| nodes.iter().find(|o| o.name.as_deref() == Some(&quant)))
            .unwrap_or_else(|| panic!("no quantize node for `{}`", n.name));
        let alpha = if a.quantizer.learnable() {
            ck.scalar(&format!("{}.alpha", n.name)).unwrap()
        } else {
            0.0
        };
        out.push(Site {
            node: n,
            quantizer: a.quantizer.clone(),
            alpha,
            input: first.input[0].clone(),
        });
    }
    out
}

/// The tap names of `sites` (input, output per site) for a [`Job`].
pub fn tap_names(sites: &[Site]) -> Vec<String> {
    sites
        .iter()
        .flat_map(|s| [s.input.clone(), s.node.name.clone()])
        .collect()
}

/// Teacher-forced check of every quantizer: ONNX Runtime's output against
/// the seed's quantizer applied to ONNX Runtime's own input of it. Every
/// element must be equal within float rounding (a few ulps: `q * scale`
/// against `q / s`), or sit at a rounding tie (its grid position within 4
/// ulps of `k + 1/2`: `x / scale` in ONNX against `x * s` in PyTorch) and
/// be one step away. Returns (values checked, one-step tie flips).
pub fn check_sites(what: &str, sites: &[Site], taps: &[Vec<f32>]) -> (usize, usize) {
    let (mut elements, mut flips) = (0, 0);
    for (i, s) in sites.iter().enumerate() {
        let (x, y) = (&taps[2 * i], &taps[2 * i + 1]);
        let (n, bits) = (s.node, s.node.out_bit);
        assert_eq!(x.len(), y.len(), "{what} `{}`", n.name);
        let form = qatc_onnx::act_quant_form(&s.quantizer, bits, Some(s.alpha)).unwrap();
        let step = form.dq_scale;
        for (xv, yv) in x.iter().zip(y) {
            let (want, t) = seed_quant(&s.quantizer, bits, s.alpha, *xv);
            let d = (yv - want).abs();
            let ulps = 4.0 * f32::EPSILON * want.abs();
            if d <= step * 1e-3 + ulps {
                continue;
            }
            let tie = ((t - t.floor()) - 0.5).abs() <= t.abs() * 4.0 * f32::EPSILON + 1e-6;
            assert!(
                tie && (d - step).abs() <= step * 1e-3 + ulps,
                "{what} `{}` ({}, {bits} bit): x = {xv:e} gives {yv:e} in ONNX Runtime, the \
                 seed's quantizer {want:e} (grid position {t}), not a rounding tie",
                n.name,
                s.quantizer
            );
            flips += 1;
        }
        elements += x.len();
    }
    (elements, flips)
}
