//! `qatc plot` and `qatc compare`: training runs as PNGs and tables.

use crate::Format;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `qatc plot`: reads the run, renders it and writes the PNG atomically.
pub fn plot(run_dir: &Path, output: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let run = crate::plot::read_run(run_dir)?;
    let png = crate::plot::render_run(&run)?;
    let out = output.unwrap_or_else(|| run_dir.join("metrics.png"));
    qatc_data::write_atomic(&out, &png)
        .with_context(|| format!("cannot write `{}`", out.display()))?;
    println!("{}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// `qatc compare`: the table (or JSON) on stdout, the PNG to `output`.
pub fn compare(
    run_dirs: &[PathBuf],
    output: Option<PathBuf>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let runs = run_dirs
        .iter()
        .map(|dir| crate::plot::read_run(dir))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = crate::plot::summarize_runs(&runs);
    match format {
        Format::Table => print!("{}", crate::plot::comparison_table(&rows)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
    }
    for run in runs.iter().filter(|r| r.epochs.is_empty()) {
        eprintln!(
            "note: `{}` has no finished epoch yet: left out of the plot",
            run.metrics_path().display()
        );
    }
    let labels: Vec<String> = rows.into_iter().map(|r| r.label).collect();
    let png = crate::plot::render_comparison(&runs, &labels)?;
    let out = output.unwrap_or_else(|| PathBuf::from("compare.png"));
    qatc_data::write_atomic(&out, &png)
        .with_context(|| format!("cannot write `{}`", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}
