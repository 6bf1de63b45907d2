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
//! - **Logits**: a row is exact when it lies within `common::LOGIT_TOL` of the
//!   seed's, relative to its largest logit. Convolutions summed in another
//!   order than PyTorch's (and the tie flips above) move some quantizer
//!   inputs across a rounding boundary, which changes that image's logits
//!   (as the generated crates' own rows flip, `golden_models.rs`): such
//!   rows are bounded by `common::FLIP_ROW_TOL`, and at least
//!   `common::MIN_EXACT_ROWS` must be exact (a wrong structure, scale or rounding spoils every row).
//!
//! With graph optimisations on, the largest logit difference and top-1
//! agreement are printed only.
//!
//! Needs python3 with onnx and onnxruntime: `QATC_ONNX_PYTHONPATH`, which
//! `scripts/onnx-env.sh` sets (`./dev test` sources it); without it the test
//! is skipped with a line, or fails with `QATC_REQUIRE_SHARED`.

mod common;

use common::{check_sites, onnx_python, row_errors, run_jobs, same_top1, sites, tap_names};
use common::{Golden, Job, TAP_IMAGES};

#[test]
fn qdq_export_matches_fake_quant_eval_in_onnxruntime() {
    let test = "qdq_export_matches_fake_quant_eval_in_onnxruntime";
    let Some(py) = onnx_python(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (file, profile, want_opset) in [("toynet", "cfg-1*", 21), ("resnet20", "w8a8", 13)] {
        let gold = Golden::load(file, profile);
        let (g, ck) = (&gold.g, &gold.ck);
        assert_eq!(qatc_onnx::min_opset(g), want_opset, "{file}");
        let onnx = qatc_onnx::write_qdq(g, ck).unwrap();
        let (tap_shape, tap_input) = gold.tap_input();
        let sites = sites(g, ck, &onnx);
        let jobs = [
            Job {
                onnx: onnx.clone(),
                input: gold.input.clone(),
                shape: gold.shape.clone(),
                taps: vec![],
                optimized: true,
            },
            Job {
                onnx: onnx.clone(),
                input: tap_input,
                shape: tap_shape,
                taps: tap_names(&sites),
                optimized: false,
            },
        ];
        let ran = run_jobs(&py, &dir.path().join(file), &jobs);
        let (elements, flips) = check_sites(file, &sites, &ran[1].taps);
        eprintln!(
            "{file} ({profile}, opset {want_opset}, {} KiB): {} activation quantizers \
             teacher-forced on {TAP_IMAGES} images: {elements} values, {flips} one-step flips at \
             rounding ties, the rest equal within float rounding",
            onnx.len() / 1024,
            sites.len(),
        );
        let classes = g.classes as usize;
        let (off, on) = (&ran[0].logits, ran[0].logits_opt.as_ref().unwrap());
        let (_, max_on) = row_errors(on, &gold.reference, classes);
        let (_, on_off) = row_errors(on, off, classes);
        eprintln!(
            "{file}: optimisations off: {}; optimisations on: max |logit diff| {max_on:.3e} \
             (against off: {on_off:.3e}), same top-1 {}/{}",
            gold.check_logits(off),
            same_top1(on, &gold.reference, classes),
            gold.reference.len() / classes,
        );
    }
}
