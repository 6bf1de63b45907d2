//! The training loop end to end on a small hand-written model and the
//! built-in digits: an interrupted and resumed run ends exactly like an
//! uninterrupted one (weights and records), and the run directory holds the
//! records `qatc_records` reads back (`run.json`, metrics, sidecars with the
//! spec hash).

use qatc_records::run_dir::{BEST, LATEST, METRICS_JSONL, RUN_JSON};
use qatc_runtime::layers::{QLinear, QLinearConfig};
use qatc_runtime::model::{ModelMeta, QatModel};
use qatc_runtime::profile::UnknownProfile;
use qatc_runtime::quant::ActQuant;
use qatc_runtime::train::checkpoint;
use qatc_runtime::train::metrics::{self, EpochRecord};
use qatc_runtime::train::options::TrainOptions;
use qatc_runtime::train::run::{train, Outcome, TrainArgs};
use std::path::Path;
use tch::nn::{self, Module};
use tch::Tensor;

const META: ModelMeta = ModelMeta {
    name: "tiny",
    spec: "tiny.qspec",
    spec_hash: "0123456789abcdef",
    profiles: &["w4a4"],
};

/// A PACT-quantized input and a 4-bit linear layer over the 8x8 digits.
#[derive(Debug)]
struct Tiny {
    act: ActQuant,
    fc: QLinear,
}

impl Tiny {
    fn new(p: &nn::Path, profile: &str) -> Result<Tiny, UnknownProfile> {
        if profile != "w4a4" {
            return Err(UnknownProfile {
                name: profile.into(),
                known: vec!["w4a4".into()],
            });
        }
        Ok(Tiny {
            act: ActQuant::pact(&(p / "act"), 4, 3.0),
            fc: QLinear::new(&(p / "fc"), 64, 10, 4, QLinearConfig::default()),
        })
    }
}

impl nn::ModuleT for Tiny {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        self.fc.forward(&self.act.forward(&xs.flatten(1, -1)))
    }
}

impl QatModel for Tiny {
    fn name(&self) -> &'static str {
        "tiny"
    }
    fn input_shape(&self) -> [i64; 3] {
        [1, 8, 8]
    }
    fn classes(&self) -> i64 {
        10
    }
    fn clip_values(&self) -> Vec<&Tensor> {
        self.act.alpha().into_iter().collect()
    }
}

fn run(out: &Path, epochs: Option<usize>, resume: bool, stop_after: Option<usize>) -> Outcome {
    let options = TrainOptions {
        data: Some("digits".into()),
        epochs,
        batch_size: Some(64),
        lr: Some(0.05),
        limit_train: Some(640),
        limit_test: Some(200),
        seed: Some(3),
        device: Some("cpu".into()),
        out: Some(out.to_path_buf()),
        ..Default::default()
    };
    let args = TrainArgs {
        options,
        config: None,
        resume,
        stop_after,
        ..Default::default()
    };
    train(&META, &Tiny::new, args).unwrap()
}

/// Records without their timings (which differ run to run).
fn untimed(records: Vec<EpochRecord>) -> Vec<EpochRecord> {
    records
        .into_iter()
        .map(|mut r| {
            r.epoch_seconds = 0.0;
            r.train_images_per_s = 0.0;
            r.data_wait_seconds = 0.0;
            r
        })
        .collect()
}

fn assert_same_weights(a: &Path, b: &Path) {
    let (a, b) = (checkpoint::load(a).unwrap(), checkpoint::load(b).unwrap());
    assert_eq!(a.tensors.len(), b.tensors.len());
    for ((na, ta), (nb, tb)) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs");
    }
}

#[test]
fn a_resumed_run_ends_like_a_whole_one_and_its_records_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    assert_eq!(run(&whole, Some(3), false, None), Outcome::Finished);

    // Stopped mid-epoch (10 steps an epoch), again in the next epoch, then
    // resumed to the end.
    let split = tmp.path().join("split");
    assert_eq!(run(&split, Some(3), false, Some(4)), Outcome::Interrupted);
    let meta = checkpoint::load(&split.join(LATEST)).unwrap().meta.unwrap();
    assert_eq!(
        (meta.epoch, meta.step, meta.partial.unwrap().seen),
        (0, 4, 256)
    );
    assert_eq!(run(&split, None, true, Some(9)), Outcome::Interrupted);
    let meta = checkpoint::load(&split.join(LATEST)).unwrap().meta.unwrap();
    assert_eq!((meta.epoch, meta.step), (1, 3));
    assert_eq!(run(&split, None, true, None), Outcome::Finished);

    assert_same_weights(&whole.join(LATEST), &split.join(LATEST));
    assert_same_weights(&whole.join(BEST), &split.join(BEST));
    let records = metrics::read_jsonl(&whole.join(METRICS_JSONL)).unwrap();
    assert_eq!(
        untimed(records.clone()),
        untimed(metrics::read_jsonl(&split.join(METRICS_JSONL)).unwrap())
    );
    assert_eq!(records.len(), 3);
    assert_eq!(records[2].clip.keys().collect::<Vec<_>>(), ["act"]);
    // A finished run resumed does nothing more.
    assert_eq!(run(&split, None, true, None), Outcome::Finished);

    // The records as a reader that does not know the runtime's types sees
    // them.
    let info: qatc_records::RunInfo = qatc_records::run_info::read(&split.join(RUN_JSON)).unwrap();
    assert_eq!(
        (info.model.as_str(), info.profile.as_str()),
        ("tiny", "w4a4")
    );
    assert_eq!(
        (info.spec_hash.as_str(), info.planned_epochs()),
        (META.spec_hash, Some(3))
    );
    let text = std::fs::read_to_string(split.join(RUN_JSON)).unwrap();
    assert!(
        text.starts_with("{\n  \"model\": \"tiny\",\n  \"profile\": \"w4a4\",\n  \"spec\": \"tiny.qspec\",\n  \"spec_hash\": \"0123456789abcdef\",\n  \"data\": \"digits\",\n  \"config\": {\n    \"data\": \"digits\",\n    \"profile\": \"w4a4\",\n    \"epochs\": 3,\n"),
        "{text}"
    );
    let sidecar = qatc_records::run_dir::sidecar(&split.join(BEST));
    let best = qatc_records::checkpoint::read_sidecar_checked(&sidecar, META.spec_hash).unwrap();
    assert_eq!(
        best.best_top1,
        records.iter().map(|r| r.test_top1).reduce(f64::max)
    );
    let err = qatc_records::checkpoint::read_sidecar_checked(&sidecar, "fedcba").unwrap_err();
    assert!(
        err.to_string().contains("0123456789abcdef, not fedcba"),
        "{err}"
    );
}
