//! `cargo bench -p qatc --bench check`: time of `qatc check` on the specs in
//! `spec/` (parse + check + lower every profile), and of summarising one
//! profile. Prints the median and the fastest of many runs; no assertions
//! (the machine is shared and noisy: compare numbers from one run).

use qatc::driver::{self, Source};
use qatc::summary;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

fn measure(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    f(); // warm up
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    (times[runs / 2], times[0])
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec");
    let mut specs: Vec<_> = std::fs::read_dir(&dir)
        .expect("spec dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("qspec" | "yaml")
            )
        })
        .collect();
    specs.sort();
    println!(
        "{:<22} {:>9} {:>12} {:>12} {:>14}",
        "spec", "profiles", "check med", "check min", "summary med"
    );
    for path in specs {
        let src = Source::read(&path).expect("readable");
        let c = match driver::compile(&src) {
            Ok(c) => c,
            Err(_) => continue,
        };
        let (med, min) = measure(200, || {
            black_box(driver::compile(black_box(&src)).is_ok());
        });
        let (smed, _) = measure(200, || {
            black_box(summary::summarize(black_box(&c.graphs[0])));
        });
        println!(
            "{:<22} {:>9} {:>9.3} ms {:>9.3} ms {:>11.3} ms",
            path.file_name().unwrap().to_string_lossy(),
            c.resolved.profiles.len(),
            med.as_secs_f64() * 1e3,
            min.as_secs_f64() * 1e3,
            smed.as_secs_f64() * 1e3
        );
    }
}
