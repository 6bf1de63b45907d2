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

/// Runs each job of the JSON file `argv[1]` in qonnx's executor
/// (`qonnx.core.onnx_exec.execute_onnx`, node by node: standard ops in ONNX
/// Runtime, `Quant` in qonnx's numpy): checks the model with
/// `onnx.checker.check_model(full_check=True)` (the standard nodes against
/// their schemas; nodes of a custom domain such as QONNX's are skipped by
/// the checker) and that every quantizer is a `Quant` of
/// `qonnx.custom_op.general` that qonnx resolves, fixes the batch size,
/// then prepares it as qonnx requires: with `cleanup`, qonnx's
/// `cleanup_model` (shape inference, constant folding that keeps the
/// `Quant` nodes, readable names), else `InferShapes` only, which keeps the
/// names so that the values in `taps` can be read from the full execution
/// context. Writes `out/logits.f32` and `out/tap<i>.f32`.
///
/// qonnx 1.0.0 builds its one-node models with onnx's newest IR version
/// (14 with onnx 1.23; ONNX Runtime 1.31 reads up to 13): the IR
/// version of those is lowered to 10.
const RUN_QONNX: &str = r#"
import json, os, sys
import numpy as np, onnx
import qonnx.core.onnx_exec as oe
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.cleanup import cleanup_model
_make = oe.qonnx_make_model
def _make_ir10(graph, **kw):
    m = _make(graph, **kw)
    m.ir_version = min(m.ir_version, 10)
    return m
oe.qonnx_make_model = _make_ir10
jobs = json.load(open(sys.argv[1]))
for job in jobs:
    model = onnx.load(job["model"])
    onnx.checker.check_model(model, full_check=True)
    quants = [n for n in model.graph.node if n.op_type == "Quant"]
    assert len(quants) == job["quants"], (len(quants), job["quants"])
    for n in quants:
        assert n.domain == "qonnx.custom_op.general", n.domain
        getCustomOp(n)
    x = np.fromfile(job["input"], dtype="<f4").reshape(job["shape"])
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = x.shape[0]
    m = ModelWrapper(model)
    m = cleanup_model(m) if job["cleanup"] else m.transform(InferShapes())
    assert m.check_all_tensor_shapes_specified()
    got = oe.execute_onnx(m, {m.graph.input[0].name: x}, return_full_exec_context=bool(job["taps"]))
    out = job["out"]
    got[m.graph.output[0].name].astype("<f4").tofile(os.path.join(out, "logits.f32"))
    for i, n in enumerate(job["taps"]):
        got[n].astype("<f4").tofile(os.path.join(out, f"tap{i}.f32"))
import importlib.metadata as md
print(f"onnx {onnx.__version__}, qonnx {md.version('qonnx')}: {len(jobs)} model(s) checked and run in qonnx's executor")
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
pub fn run_jobs(py: &(String, String), dir: &Path, jobs: &[Job]) -> Vec<Ran> {
    run_script(py, RUN, dir, jobs, |_, _| {})
}

/// One model for qonnx's executor ([`run_qonnx_jobs`]).
pub struct QonnxJob {
    pub job: Job,
    /// The number of `Quant` nodes the model must have.
    pub quants: usize,
    /// Prepare with qonnx's `cleanup_model` (else `InferShapes` only).
    pub cleanup: bool,
}

/// Runs `jobs` in qonnx's executor, in one Python process (see
/// [`RUN_QONNX`]).
pub fn run_qonnx_jobs(py: &(String, String), dir: &Path, jobs: &[QonnxJob]) -> Vec<Ran> {
    let plain: Vec<&Job> = jobs.iter().map(|j| &j.job).collect();
    run_script(py, RUN_QONNX, dir, &plain, |i, v| {
        v["quants"] = jobs[i].quants.into();
        v["cleanup"] = jobs[i].cleanup.into();
    })
}

fn run_script<J: std::borrow::Borrow<Job>>(
    (python, pythonpath): &(String, String),
    script: &str,
    dir: &Path,
    jobs: &[J],
    extra: impl Fn(usize, &mut serde_json::Value),
) -> Vec<Ran> {
    let jobs: Vec<&Job> = jobs.iter().map(|j| j.borrow()).collect();
    let mut list = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let d = dir.join(format!("job{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("model.onnx"), &job.onnx).unwrap();
        write_f32(&d.join("input.f32"), &job.input);
        let mut v = serde_json::json!({
            "model": d.join("model.onnx"),
            "input": d.join("input.f32"),
            "shape": job.shape,
            "out": d,
            "taps": job.taps,
            "optimized": job.optimized,
        });
        extra(i, &mut v);
        list.push(v);
    }
    let jobs_file = dir.join("jobs.json");
    std::fs::write(&jobs_file, serde_json::to_string(&list).unwrap()).unwrap();
    let out = Command::new(python)
        .env("PYTHONPATH", pythonpath)
        .arg("-c")
        .arg(script)
        .arg(&jobs_file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "onnx / ONNX Runtime / qonnx failed:\n{}{}",
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

pub use qatc_int::checkpoint::Normal;

/// A checkpoint for `g` with plausible values ([`Checkpoint::synthetic`]:
/// Kaiming-scaled weights, BN near the identity, small biases, clipping
/// values at their initial values).
pub fn synthetic_checkpoint(g: &Graph, seed: u64) -> Checkpoint {
    Checkpoint::synthetic(g, seed)
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

/// Every activation quantizer of `g` in the exported `onnx` (QDQ or
/// QONNX): its input is what its first ONNX node reads (QDQ: a float Clip,
/// else the QuantizeLinear; QONNX: DoReFa's `Mul` by 0.1, else the `Quant`
/// named after it), its output the value named after it.
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
        let first = ["clip_x", "prescale", "quantize"]
            .iter()
            .map(|s| format!("{}.{s}", n.name))
            .chain([n.name.clone()])
            .find_map(|want| nodes.iter().find(|o| o.name.as_deref() == Some(&want)))
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

/// A golden set's model file (`path`) for the integer exports: the spec's
/// graph under `profile`, the seed's state dict imported through its
/// `import seed` section, and the set's `input` images (shape, values).
pub fn golden_import(
    path: &Path,
    spec: &str,
    profile: &str,
) -> (Graph, Checkpoint, Vec<usize>, Vec<f32>) {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read `{}`: {e}", path.display()));
    let (model, g) = load(spec, profile);
    let ck = Checkpoint::import(&bytes, &model, &g, "seed", "state.").unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (shape, images) = f32s(&st, "input");
    (g, ck, shape, images)
}

/// The float32 tensor `name` of a safetensors file: (shape, values).
pub fn f32s(st: &safetensors::SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("`{name}`: {e}"));
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Per row: max |a - b| relative to the row's max |b|; and the absolute max.
pub fn row_errors(a: &[f32], b: &[f32], classes: usize) -> (Vec<f64>, f64) {
    let mut rows = Vec::new();
    let mut max_abs = 0f64;
    for (ra, rb) in a.chunks(classes).zip(b.chunks(classes)) {
        let scale = rb
            .iter()
            .fold(0f64, |m, v| m.max((*v as f64).abs()))
            .max(1e-12);
        let d = ra
            .iter()
            .zip(rb)
            .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
        max_abs = max_abs.max(d);
        rows.push(d / scale);
    }
    (rows, max_abs)
}

/// Relative row errors, one decimal.
pub fn show(rows: &[f64]) -> String {
    let v: Vec<String> = rows.iter().map(|e| format!("{e:.1e}")).collect();
    v.join(" ")
}

/// Rows of `a` and `b` with the same largest class.
pub fn same_top1(a: &[f32], b: &[f32], classes: usize) -> usize {
    a.chunks(classes)
        .zip(b.chunks(classes))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count()
}

/// Whether IR node `n` writes nothing in eval mode (its consumers read its
/// input): the graph input, dropout, identity, a quantizer at 32 bits.
pub fn passthrough(n: &Node) -> bool {
    match &n.op {
        Op::Input(_) | Op::Dropout(_) | Op::Identity(_) => true,
        Op::ActQuant(a) => a.quantizer == Quantizer::None || n.out_bit >= 32,
        _ => false,
    }
}

/// The number of quantizers of `g` as the exports write them: activation
/// quantizers below 32 bits and conv / linear weights below 32 bits.
pub fn quantizer_count(g: &Graph) -> usize {
    g.nodes
        .iter()
        .filter(|n| match &n.op {
            Op::ActQuant(_) => !passthrough(n),
            Op::Conv(_) | Op::Linear(_) => n.w_bit.unwrap_or(32) < 32,
            _ => false,
        })
        .count()
}

/// Every (spec, profile) of `spec/`.
pub fn all_profiles() -> Vec<(String, String)> {
    let dir = spec_path("x").parent().unwrap().to_path_buf();
    let mut specs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "qspec").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    specs.sort();
    let mut out = Vec::new();
    for spec in specs {
        let src = qatc::driver::Source::read(&spec_path(&spec)).unwrap();
        let c = qatc::driver::compile(&src).unwrap();
        for g in &c.graphs {
            out.push((spec.clone(), g.profile.clone()));
        }
    }
    out
}

/// `images` standard normal images for `g`'s input: (`[N, C, H, W]`,
/// values).
pub fn random_input(g: &Graph, images: usize, seed: u64) -> (Vec<usize>, Vec<f32>) {
    let mut shape = vec![images];
    shape.extend(g.nodes[0].out_shape.0.iter().map(|&d| d as usize));
    let mut rng = Normal::new(seed);
    let input = (0..shape.iter().product::<usize>())
        .map(|_| rng.sample())
        .collect();
    (shape, input)
}

/// The ops issue 16 added that the `spec/` models use, as
/// [`issue16_op`] names them.
pub const ISSUE16_OPS: [&str; 7] = [
    "concat",
    "split",
    "shuffle",
    "mul",
    "sigmoid",
    "hardsigmoid",
    "hardswish",
];

/// `n`'s op if issue 16 added it (an activation by its function).
pub fn issue16_op(n: &Node) -> Option<&'static str> {
    match &n.op {
        Op::Concat(_) | Op::Slice(_) | Op::Shuffle(_) | Op::Mul(_) => Some(n.op.kind()),
        Op::Activation(a) => Some(a.function.name()),
        _ => None,
    }
}

/// A row of logits is exact within this, relative to the row's largest
/// seed logit.
pub const LOGIT_TOL: f64 = 1e-4;
/// Bound on a flipped row's error, relative to its largest reference logit
/// (observed up to 0.051 on the three golden sets).
pub const FLIP_ROW_TOL: f64 = 0.25;
/// Rows that must be exact per golden model (observed 1 to 6 of 8).
pub const MIN_EXACT_ROWS: usize = 1;
/// Images the quantizers are teacher-forced on.
pub const TAP_IMAGES: usize = 2;

/// A model to compare ONNX runs with: the spec's graph under `profile`, a
/// checkpoint, input images and the reference logits of its fake-quant
/// eval forward. [`Golden::load`]: the seed's state dict imported through
/// the spec's `import seed` section, the golden set's images and its
/// `logits_eval` (the seed's own forward); a trained run
/// (`tests/tests/onnx_trained.rs`): its checkpoint and the model crate's
/// logits.
pub struct Golden {
    pub file: String,
    pub g: Graph,
    pub ck: Checkpoint,
    pub shape: Vec<usize>,
    pub input: Vec<f32>,
    /// The reference logits, image by image.
    pub reference: Vec<f32>,
}

impl Golden {
    /// `<file>.safetensors` of the golden set (`QATC_GOLDEN`, else
    /// `../shared/golden`, else the compact set) under `profile`.
    pub fn load(file: &str, profile: &str) -> Golden {
        let golden = qatc_testdata::golden_set();
        let bytes = std::fs::read(golden.require(&format!("{file}.safetensors"))).unwrap();
        let (model, g) = load(file, profile);
        let ck = Checkpoint::import(&bytes, &model, &g, "seed", "state.").unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (shape, input) = f32s(&st, "input");
        let (_, reference) = f32s(&st, "logits_eval");
        Golden {
            file: file.into(),
            g,
            ck,
            shape,
            input,
            reference,
        }
    }

    /// The first [`TAP_IMAGES`] images: (shape, values).
    pub fn tap_input(&self) -> (Vec<usize>, Vec<f32>) {
        let per_image = self.input.len() / self.shape[0];
        let mut shape = self.shape.clone();
        shape[0] = TAP_IMAGES;
        (shape, self.input[..TAP_IMAGES * per_image].to_vec())
    }

    /// `got`, the logits of all images, against the reference: at least
    /// [`MIN_EXACT_ROWS`] rows within [`LOGIT_TOL`] (a wrong structure,
    /// scale or rounding spoils every row), every row within
    /// [`FLIP_ROW_TOL`] (what rounding-boundary flips give). Returns a
    /// line saying how close it is.
    pub fn check_logits(&self, got: &[f32]) -> String {
        let (file, seed) = (&self.file, &self.reference);
        let classes = self.g.classes as usize;
        assert_eq!(got.len(), seed.len(), "{file}: logits");
        let (rows, max_abs) = row_errors(got, seed, classes);
        let exact = rows.iter().filter(|e| **e <= LOGIT_TOL).count();
        let n = rows.len();
        assert!(
            exact >= MIN_EXACT_ROWS,
            "{file}: only {exact} of {n} rows within {LOGIT_TOL:e} of fake-quant: {}",
            show(&rows)
        );
        for (i, e) in rows.iter().enumerate() {
            assert!(
                *e <= FLIP_ROW_TOL,
                "{file}: row {i} is {e:.3} off (relative), more than rounding-boundary flips give"
            );
        }
        format!(
            "{exact} of {n} rows exact, max |logit diff| {max_abs:.3e}, same top-1 {}/{n} (per \
             row, relative: {}); largest reference logit {:.3}",
            same_top1(got, seed, classes),
            show(&rows),
            seed.iter().fold(0f32, |m, v| m.max(v.abs())),
        )
    }
}
