//! The ONNX exports of a short *trained* run, in the runtimes that execute
//! them (issue 17): ToyNet `cfg-1*` (mPACT, a 16-bit head) trained one
//! epoch on `cifar10-mini-bin` through its generated crate, its best
//! checkpoint exported as QDQ, QONNX and onnx-int, run in ONNX Runtime and
//! qonnx's executor on 32 test images, against what qatc computes on the
//! same images:
//! - QDQ (ONNX Runtime) and QONNX (qonnx's executor): every activation
//!   quantizer, teacher-forced on two images, equals the seed's quantizer
//!   on the runtime's own input of it (float rounding, one-step flips at
//!   rounding ties); the logits against the model crate's fake-quant eval
//!   forward (`forward_t(x, false)` of the generated `Toynet` loaded from the
//!   checkpoint): at least one row exact, every row within what
//!   rounding-boundary flips give (the criteria of the golden tests,
//!   `compiler/onnx/tests/common`).
//! - onnx-int (ONNX Runtime, optimisations off and on): logits equal to the
//!   integer engine's bit for bit, in `trunc` and `nearest`.
//!
//! Golden states are random weights; a trained one has the clipping
//! values, BN statistics and weight distributions that training gives.
//! Needs `cifar10-mini-bin` (shared data) and the ONNX tooling
//! (`scripts/onnx-env.sh`); skipped with a line without them.

#[path = "../../compiler/onnx/tests/common/mod.rs"]
mod onnx;

use onnx::{check_sites, onnx_python, run_jobs, run_qonnx_jobs, sites, tap_names};
use onnx::{quantizer_count, Golden, Job, QonnxJob};
use qatc::driver::{self, Source};
use qatc_int::{engine, Checkpoint, PlanOptions, Rounding};
use qatc_runtime::train::options::TrainOptions;
use qatc_runtime::train::run::{train, Outcome, TrainArgs};
use tch::nn::ModuleT;
use tch::{nn, Device, Kind, Tensor};

const IMAGES: usize = 32;

#[test]
fn a_trained_toynet_exports_and_runs_in_onnx_runtime_and_qonnx() {
    let test = "a_trained_toynet_exports_and_runs_in_onnx_runtime_and_qonnx";
    let Some(data) = qatc_testdata::shared_data(test, "cifar10-mini-bin") else {
        return;
    };
    let Some(py) = onnx_python(test) else {
        return;
    };
    let profile = "cfg-1*";
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let options = TrainOptions {
        data: Some(data.to_string_lossy().into_owned()),
        profile: Some(profile.into()),
        epochs: Some(1),
        batch_size: Some(64),
        lr: Some(0.01),
        seed: Some(0),
        device: Some("cpu".into()),
        out: Some(out.clone()),
        ..Default::default()
    };
    let outcome = train(
        &qatc_model_toynet::META,
        &qatc_model_toynet::Toynet::new,
        TrainArgs {
            options,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(outcome, Outcome::Finished);
    let best = out.join("best.safetensors");

    // The graph and the checkpoint as `qatc export` reads them.
    let spec = qatc_testdata::workspace().join("spec/toynet.qspec");
    let src = Source::read(&spec).unwrap();
    let c = driver::compile(&src).unwrap_or_else(|_| panic!("spec/toynet.qspec compiles"));
    let spec_hash = c.spec_hash.clone();
    let g = c
        .into_graph(Some(profile))
        .unwrap_or_else(|_| panic!("{profile}"));
    let ck = Checkpoint::read(&best, &g, &spec_hash).unwrap();

    // The first test images, normalised as in training.
    let split = qatc_data::open(&data.to_string_lossy()).unwrap();
    let test_set = &split.test;
    let per = test_set.image_len();
    let mut input = vec![0f32; IMAGES * per];
    for (i, x) in input.chunks_exact_mut(per).enumerate() {
        test_set.normalized(i, x);
    }
    let [ch, h, w] = test_set.shape;
    let shape = vec![IMAGES, ch, h, w];

    // The model crate's fake-quant eval forward on them.
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = qatc_model_toynet::Toynet::new(&vs.root(), profile).unwrap();
    vs.load(&best).unwrap();
    let x = Tensor::from_slice(&input)
        .reshape([IMAGES as i64, ch as i64, h as i64, w as i64])
        .to_kind(Kind::Float);
    let logits = tch::no_grad(|| net.forward_t(&x, false));
    let fake_quant: Vec<f32> = Vec::try_from(logits.flatten(0, -1)).unwrap();
    let gold = Golden {
        file: "toynet (trained)".into(),
        g,
        ck,
        shape,
        input,
        reference: fake_quant,
    };
    let (g, ck) = (&gold.g, &gold.ck);
    let (tap_shape, tap_input) = gold.tap_input();

    // QDQ in ONNX Runtime.
    let qdq = qatc_onnx::write_qdq(g, ck).unwrap();
    let qdq_sites = sites(g, ck, &qdq);
    let jobs = [
        Job {
            onnx: qdq.clone(),
            input: gold.input.clone(),
            shape: gold.shape.clone(),
            taps: vec![],
            optimized: false,
        },
        Job {
            onnx: qdq.clone(),
            input: tap_input.clone(),
            shape: tap_shape.clone(),
            taps: tap_names(&qdq_sites),
            optimized: false,
        },
    ];
    let ran = run_jobs(&py, &dir.path().join("qdq"), &jobs);
    let (values, flips) = check_sites("QDQ", &qdq_sites, &ran[1].taps);
    eprintln!(
        "trained toynet QDQ: {} quantizers, {values} values, {flips} tie flips; logits: {}",
        qdq_sites.len(),
        gold.check_logits(&ran[0].logits)
    );

    // QONNX in qonnx's executor.
    let qonnx = qatc_onnx::write_qonnx(g, ck).unwrap();
    let qonnx_sites = sites(g, ck, &qonnx);
    let quants = quantizer_count(g);
    let job = |input: Vec<f32>, shape: Vec<usize>, taps, cleanup| QonnxJob {
        job: Job {
            onnx: qonnx.clone(),
            input,
            shape,
            taps,
            optimized: false,
        },
        quants,
        cleanup,
    };
    let jobs = [
        job(gold.input.clone(), gold.shape.clone(), vec![], true),
        job(tap_input, tap_shape, tap_names(&qonnx_sites), false),
    ];
    let ran = run_qonnx_jobs(&py, &dir.path().join("qonnx"), &jobs);
    let (values, flips) = check_sites("QONNX", &qonnx_sites, &ran[1].taps);
    eprintln!(
        "trained toynet QONNX: {values} values, {flips} tie flips; logits: {}",
        gold.check_logits(&ran[0].logits)
    );

    // onnx-int in ONNX Runtime against the engine.
    for rounding in [Rounding::Trunc, Rounding::Nearest] {
        let opts = PlanOptions {
            rounding,
            ..PlanOptions::default()
        };
        let plan = qatc_int::build(g, ck, opts).unwrap();
        let weights = engine::Weights::new(&plan);
        let mut ws = engine::Workspace::new(&plan);
        let mut want = Vec::new();
        for x in gold.input.chunks_exact(plan.input_len()) {
            let out = engine::run_image(&plan, &weights, x, &mut ws, &Default::default()).unwrap();
            want.extend(out.logits);
        }
        let int_onnx = qatc_onnx::write_int_onnx(&plan).unwrap();
        let jobs = [Job {
            onnx: int_onnx,
            input: gold.input.clone(),
            shape: gold.shape.clone(),
            taps: vec![],
            optimized: true,
        }];
        let ran = run_jobs(&py, &dir.path().join(format!("int-{rounding}")), &jobs);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&ran[0].logits),
            bits(&want),
            "onnx-int {rounding}, optimisations off"
        );
        let opt = ran[0].logits_opt.as_ref().unwrap();
        assert_eq!(
            bits(opt),
            bits(&want),
            "onnx-int {rounding}, optimisations on"
        );
        eprintln!("trained toynet onnx-int {rounding}: {IMAGES} images bit-equal to the engine");
    }
}
