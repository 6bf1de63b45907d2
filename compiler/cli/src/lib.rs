//! The `qatc` command line as a library: one function per command, each
//! taking the parsed flags and returning the exit status (0 ok, 1 bad
//! input; problems are printed). The binary (`main.rs`) is clap and
//! dispatch only.
//!
//! The compiler itself is the `qatc` crate; the integer engine is
//! `qatc-int`; the run records `qatc-records`. This crate adds what only a
//! command line needs: argument handling, output formatting, running the
//! generated model crates, plots and downloads.

pub mod commands;
pub mod download;
pub mod eval_int;
pub mod int_cli;
pub mod model_crate;
pub mod plot;
pub mod runs;

use qatc::driver::Source;
use std::path::Path;
use std::process::ExitCode;

/// Output format of `summary` and `compare`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Target syntax of `qatc fmt`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum To {
    Qspec,
    Yaml,
}

/// Reads a spec; the error names the file.
pub fn read(spec: &Path) -> anyhow::Result<Source> {
    Source::read(spec).map_err(anyhow::Error::msg)
}

/// Prints diagnostics and returns exit status 1.
pub fn fail(src: &Source, diags: &qatc::diag::Diagnostics) -> ExitCode {
    diags.emit_stderr(&src.name, &src.text);
    let n = diags.error_count();
    eprintln!(
        "error: {} failed its checks with {n} error{}",
        src.name,
        if n == 1 { "" } else { "s" }
    );
    ExitCode::from(1)
}
