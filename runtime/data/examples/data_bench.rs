//! Times the data pipeline: `cargo run --release -p qatc-data --example
//! data_bench -- DATA [EPOCHS]` opens DATA twice (the second open hits the
//! decode cache of an image folder or archive) and runs the training
//! `Loader` (batch 128, the data set's augmentation) for EPOCHS epochs
//! (default 3) on 1 and 2 worker threads, with a consumer that does nothing,
//! and `make_batch` on the calling thread alone (no threads, no channel).

use qatc_data::{epoch_order, make_batch, open, BatchConfig, Loader, LoaderError};
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), LoaderError> {
    let mut args = std::env::args().skip(1);
    let Some(data) = args.next() else {
        eprintln!("usage: data_bench DATA [EPOCHS]");
        std::process::exit(1);
    };
    let epochs: u64 = args.next().and_then(|e| e.parse().ok()).unwrap_or(3);
    for round in ["first open", "second open"] {
        let t0 = Instant::now();
        match open(&data) {
            Ok(split) => println!(
                "{round}: {:.3} s ({} train + {} test images, {:?})",
                t0.elapsed().as_secs_f64(),
                split.train.len(),
                split.test.len(),
                split.train.shape
            ),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
    let train = match open(&data) {
        Ok(split) => Arc::new(split.train),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let t0 = Instant::now();
    let mut made = 0usize;
    for epoch in 0..epochs {
        let cfg = BatchConfig::train(&train, 128, 1, epoch);
        let order = epoch_order(train.len(), true, 1, epoch);
        for i in 0..cfg.steps(train.len()) {
            made += std::hint::black_box(make_batch(&train, &cfg, &order, i)?).len;
        }
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "make_batch on the calling thread: {:.3} ms a batch, {:.0} images/s",
        1e3 * s / (made / 128) as f64,
        made as f64 / s
    );
    for workers in [1, 2] {
        let t0 = Instant::now();
        let (mut batches, mut waited) = (0usize, 0f64);
        for epoch in 0..epochs {
            let cfg = BatchConfig::train(&train, 128, 1, epoch);
            let mut loader = Loader::with_workers(train.clone(), cfg, workers)?;
            for batch in loader.by_ref() {
                std::hint::black_box(batch.len);
                batches += 1;
            }
            waited += loader.waited().as_secs_f64();
        }
        let s = t0.elapsed().as_secs_f64();
        println!(
            "loader, {workers} worker(s): {batches} batches of 128 in {s:.3} s: {:.0} batches/s, {:.0} images/s, consumer blocked {waited:.3} s",
            batches as f64 / s,
            batches as f64 * 128.0 / s
        );
    }
    Ok(())
}
