//! The QDQ export run by ONNX Runtime against the seed's fake-quant eval
//! forward: the golden ToyNet (`cfg-1*`: mPACT, 16-bit head, so opset 21)
//! and ResNet20 (`w8a8`: DoReFa, float stem, 16-bit fc weights, opset 13),
//! exported from the seed's state dicts through the specs' `import seed`
//! sections, checked by `onnx.checker.check_model(full_check=True)` and run
//! in ONNX Runtime's CPU provider on the golden set's eight input images.
//!
//! Reference: the golden set's `logits_eval`, the seed's own eval-mode
//! fake-quant forward in PyTorch, which qatc's generated model crates
//! reproduce (`tests/tests/golden_models.rs`; this crate has no libtorch).
//! Two checks:
//! - **Every activation quantizer, teacher-forced**: ONNX Runtime's output
//!   of each quantizer equals the seed's quantizer applied to ONNX
//!   Runtime's own input of it, up to float rounding, except at rounding
//!   ties, which may land one step apart (`common::check_sites`).
//! - **Logits**: a row is exact when it lies within [`LOGIT_TOL`] of the
//!   seed's, relative to its largest logit. Convolutions summed in another
//!   order than PyTorch's (and the tie flips above) move some quantizer
//!   inputs across a rounding boundary, which changes that image's logits
//!   (as the generated crates' own rows flip, `golden_models.rs`): such
//!   rows are bounded by [`FLIP_ROW_TOL`], and at least [`MIN_EXACT_ROWS`]
//!   must be exact (a wrong structure, scale or rounding spoils every row).
//!
//! With graph optimisations on, the largest logit difference and top-1
//! agreement are printed only.
//!
//! Needs python3 with onnx and onnxruntime: `QATC_ONNX_PYTHONPATH`, which
//! `scripts/onnx-env.sh` sets (`./dev test` sources it); without it the test
//! is skipped with a line, or fails with `QATC_REQUIRE_SHARED`.

mod common;

use common::{check_sites, load, onnx_python, run_jobs, sites, tap_names, Job};
use qatc_int::Checkpoint;
use safetensors::tensor::SafeTensors;

/// A row is exact within this, relative to the row's largest seed logit.
const LOGIT_TOL: f64 = 1e-4;
/// Bound on a flipped row's error, relative to its largest seed logit
/// (observed up to 0.051 on the three golden sets).
const FLIP_ROW_TOL: f64 = 0.25;
/// Rows that must be exact per model (observed 1 to 6 of 8).
const MIN_EXACT_ROWS: usize = 1;
/// Images the quantizers are teacher-forced on.
const TAP_IMAGES: usize = 2;

fn f32s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("`{name}`: {e}"));
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Per row: max |a - b| relative to the row's max |b|; and the absolute max.
fn row_errors(a: &[f32], b: &[f32], classes: usize) -> (Vec<f64>, f64) {
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

fn show(rows: &[f64]) -> String {
    let v: Vec<String> = rows.iter().map(|e| format!("{e:.1e}")).collect();
    v.join(" ")
}

fn same_top1(a: &[f32], b: &[f32], classes: usize) -> usize {
    a.chunks(classes)
        .zip(b.chunks(classes))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count()
}

#[test]
fn qdq_export_matches_fake_quant_eval_in_onnxruntime() {
    let test = "qdq_export_matches_fake_quant_eval_in_onnxruntime";
    let Some(py) = onnx_python(test) else {
        return;
    };
    let golden = qatc_testdata::golden_set();
    let dir = tempfile::tempdir().unwrap();
    for (file, profile, want_opset) in [("toynet", "cfg-1*", 21), ("resnet20", "w8a8", 13)] {
        let bytes = std::fs::read(golden.require(&format!("{file}.safetensors"))).unwrap();
        let (model, g) = load(file, profile);
        let ck = Checkpoint::import(&bytes, &model, &g, "seed", "state.").unwrap();
        assert_eq!(qatc_onnx::min_opset(&g), want_opset, "{file}");
        let onnx = qatc_onnx::write_qdq(&g, &ck).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (shape, input) = f32s(&st, "input");
        let (_, seed) = f32s(&st, "logits_eval");
        let per_image = input.len() / shape[0];
        let mut tap_shape = shape.clone();
        tap_shape[0] = TAP_IMAGES;
        let sites = sites(&g, &ck, &onnx);
        let jobs = [
            Job {
                onnx: onnx.clone(),
                input: input.clone(),
                shape: shape.clone(),
                taps: vec![],
                optimized: true,
            },
            Job {
                onnx: onnx.clone(),
                input: input[..TAP_IMAGES * per_image].to_vec(),
                shape: tap_shape,
                taps: tap_names(&sites),
                optimized: false,
            },
        ];
        let ran = run_jobs(&py, &dir.path().join(file), &jobs);
        let (elements, flips) = check_sites(file, &sites, &ran[1].taps);

        let classes = g.classes as usize;
        let (off, on) = (&ran[0].logits, ran[0].logits_opt.as_ref().unwrap());
        assert_eq!(off.len(), seed.len(), "{file}: logits");
        let (rows, max_off) = row_errors(off, &seed, classes);
        let (_, max_on) = row_errors(on, &seed, classes);
        let (_, on_off) = row_errors(on, off, classes);
        let exact = rows.iter().filter(|e| **e <= LOGIT_TOL).count();
        let n = rows.len();
        eprintln!(
            "{file} ({profile}, opset {want_opset}, {} KiB): {} activation quantizers \
             teacher-forced on {TAP_IMAGES} images: {elements} values, {flips} one-step flips at \
             rounding ties, the rest equal within float rounding",
            onnx.len() / 1024,
            sites.len(),
        );
        eprintln!(
            "{file}: optimisations off: {exact} of {n} rows exact, max |logit diff| {max_off:.3e}, \
             same top-1 {}/{n} (per row, relative: {}); optimisations on: max |logit diff| \
             {max_on:.3e} (against off: {on_off:.3e}), same top-1 {}/{n}; largest seed logit {:.3}",
            same_top1(off, &seed, classes),
            show(&rows),
            same_top1(on, &seed, classes),
            seed.iter().fold(0f32, |m, v| m.max(v.abs())),
        );
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
    }
}
