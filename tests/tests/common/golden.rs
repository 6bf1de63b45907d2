//! The golden sets as the `golden_*` targets read them: the tensors of a
//! model (`qatc_testdata::golden_set` picks the set), a spec's model, graph
//! and `import seed` plan, and a golden state dict copied into a generated
//! model through that plan.

use qatc::driver::{self, Source};
use qatc::import::{self, Plan};
use qatc::ir::Graph;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

/// The "tiny" of the relative errors' denominators.
pub const TINY: f64 = 1e-30;

/// The device the models run on: `QATC_TEST_DEVICE` (`qatc_testdata::test_device`).
pub fn device() -> Device {
    let name = qatc_testdata::test_device();
    qatc_runtime::device::parse_device(&name)
        .unwrap_or_else(|e| panic!("QATC_TEST_DEVICE={name}: {e}"))
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The golden tensors of `model`, or `None` when the golden set is the
/// compact one and leaves the model out (MobileNetV2): then the test says so
/// and checks nothing for it.
pub fn read_golden(model: &str, what: &str) -> Option<HashMap<String, Tensor>> {
    let path = qatc_testdata::golden_set()
        .file(&format!("{model}: {what}"), &format!("{model}.safetensors"))?;
    Some(
        Tensor::read_safetensors(&path)
            .unwrap_or_else(|e| panic!("cannot read `{}`: {e}", path.display()))
            .into_iter()
            .collect(),
    )
}

pub fn get<'a>(golden: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    golden
        .get(name)
        .unwrap_or_else(|| panic!("golden tensor `{name}` is missing"))
}

/// The spec's model, its graph under `profile` and its `import seed` plan.
pub fn spec_plan(spec: &str, profile: &str) -> (qatc::ast::Model, Graph, Plan) {
    let path = workspace().join("spec").join(spec);
    let src = Source::read(&path).expect("spec readable");
    let render = |d: qatc::diag::Diagnostics| d.render_plain(&src.name, &src.text);
    let ast = driver::parse(&src).unwrap_or_else(|d| panic!("{}", render(d)));
    let graph = driver::compile(&src)
        .and_then(|c| c.into_graph(Some(profile)))
        .unwrap_or_else(|d| panic!("{}", render(d)));
    let plan = import::plan(&ast, &graph, "seed").unwrap_or_else(|d| panic!("{}", render(d)));
    (ast, graph, plan)
}

/// Copies every golden `state.<theirs>` into the model variable `<ours>`.
/// Every variable of the store must be covered by the plan.
pub fn load(vs: &nn::VarStore, plan: &Plan, golden: &HashMap<String, Tensor>, model: &str) {
    let vars = vs.variables();
    let planned: HashSet<&str> = plan.entries.iter().map(|e| e.ours.as_str()).collect();
    let mut uncovered: Vec<&String> = vars
        .keys()
        .filter(|k| !planned.contains(k.as_str()))
        .collect();
    uncovered.sort();
    assert!(
        uncovered.is_empty(),
        "{model}: variables not covered by the import plan: {uncovered:?}"
    );
    for e in &plan.entries {
        let mut var = vars
            .get(&e.ours)
            .unwrap_or_else(|| panic!("{model}: plan names `{}`, not a model variable", e.ours))
            .shallow_clone();
        let src = get(golden, &format!("state.{}", e.theirs));
        assert_eq!(
            src.size(),
            var.size(),
            "{model}: shape of `state.{}` for `{}`",
            e.theirs,
            e.ours
        );
        tch::no_grad(|| var.copy_(src));
    }
}
