//! The cost of checking a checkpoint's digests on load (issue 14), on
//! MobileNetV2's training checkpoint (weights and SGD momentum, as
//! `latest.safetensors` holds them):
//!
//!     ./dev cargo run --release -p qatc-tests --example checkpoint_integrity
//!
//! Times, side by side and interleaved, the best of N rounds of: the
//! runtime's `checkpoint::load` (read, parse, verify, make tensors), the
//! same load without the check (the loader as it was before digests),
//! and the check alone.

use qatc_runtime::train::checkpoint::{self, CheckpointMeta, FORMAT};
use std::time::Instant;
use tch::{nn, Kind, Tensor};

fn unchecked(path: &std::path::Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut n = 0;
    for (_, view) in st.tensors() {
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::from_data_size(view.data(), &shape, Kind::Float);
        n += t.numel();
    }
    n
}

fn main() {
    let meta = &qatc_model_mobilenetv2::META;
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let _model =
        qatc_model_mobilenetv2::Mobilenetv2::new(&vs.root(), meta.default_profile()).unwrap();
    let vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    let params: usize = vars.iter().map(|(_, t)| t.numel()).sum();
    let momentum: Vec<(String, Tensor)> = vars
        .iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(n, t)| (format!("{n}.momentum_buffer"), t.detach().rand_like()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latest.safetensors");
    let cm = CheckpointMeta {
        format: FORMAT.into(),
        model: meta.name.into(),
        profile: meta.default_profile().into(),
        spec: meta.spec.into(),
        spec_hash: meta.spec_hash.into(),
        epoch: 1,
        step: 0,
        optimizer_steps: 1,
        test_top1: None,
        best_top1: None,
        best_epoch: None,
        config: serde_json::json!({}),
        partial: None,
    };
    checkpoint::save(&path, &cm, &vars, &momentum).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let bytes = std::fs::read(&path).unwrap();
    println!(
        "MobileNetV2 ({}): {params} values in {} variables, with momentum {:.1} MB on disk; {} CPU threads",
        meta.default_profile(),
        vars.len(),
        size as f64 / 1e6,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let rounds = 30;
    let (mut with, mut without, mut check) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..rounds {
        let t = Instant::now();
        let ck = checkpoint::load(&path).unwrap();
        with = with.min(t.elapsed().as_secs_f64());
        drop(ck);
        let t = Instant::now();
        std::hint::black_box(unchecked(&path));
        without = without.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        checkpoint::verify(&path, &bytes).unwrap();
        check = check.min(t.elapsed().as_secs_f64());
    }
    println!(
        "best of {rounds}: load with the check {:.1} ms, without {:.1} ms (x{:.2}); the check alone {:.1} ms ({:.2} GB/s)",
        with * 1e3,
        without * 1e3,
        with / without,
        check * 1e3,
        size as f64 / check / 1e9
    );
}
