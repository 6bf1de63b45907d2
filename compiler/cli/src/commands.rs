//! The spec commands: `check`, `summary`, `build`, `import`, `fmt`,
//! `bench`. Each compiles the spec once ([`qatc::driver::compile`]) and
//! turns the library's result into output and an exit status (0 ok, 1 bad
//! input, diagnostics printed).

use crate::model_crate::{run_model, runtime_path};
use crate::{fail, read, Format, To};
use anyhow::Context;
use qatc::driver::{self, Syntax};
use qatc::summary;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `qatc check SPEC [--dump-ir] [--profile P]`: every profile checked and lowered.
pub fn check(spec: &Path, dump_ir: bool, profile: Option<&str>) -> anyhow::Result<ExitCode> {
    let src = read(spec)?;
    let c = match driver::compile(&src) {
        Ok(c) => c,
        Err(d) => return Ok(fail(&src, &d)),
    };
    if dump_ir || profile.is_some() {
        match c.graph(profile) {
            Ok(g) if dump_ir => print!("{}", g.dump()),
            Ok(_) => {}
            Err(d) => return Ok(fail(&src, &d)),
        }
    }
    let nodes: usize = c.graphs.first().map(|g| g.nodes.len()).unwrap_or(0);
    eprintln!(
        "ok: {} (model {}, {} slots, {} nodes, profiles: {})",
        src.name,
        c.model_name(),
        c.resolved.slots.len(),
        nodes,
        c.resolved.profile_names().join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// `qatc summary SPEC [--profile P] [--format table|json]`.
pub fn summary(spec: &Path, profile: Option<&str>, format: Format) -> anyhow::Result<ExitCode> {
    let src = read(spec)?;
    let c = match driver::compile(&src) {
        Ok(c) => c,
        Err(d) => return Ok(fail(&src, &d)),
    };
    let g = match c.graph(profile) {
        Ok(g) => g,
        Err(d) => return Ok(fail(&src, &d)),
    };
    let s = summary::summarize(g);
    match format {
        Format::Table => print!("{}", s.table()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&s)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// `qatc build SPEC [-o DIR] [--check | --diff]`: writes the generated crate
/// (only the files that change), or compares it with the one on disk.
pub fn build(
    spec: &Path,
    output: Option<PathBuf>,
    check: bool,
    diff: bool,
) -> anyhow::Result<ExitCode> {
    let src = read(spec)?;
    let c = match driver::compile(&src) {
        Ok(c) => c,
        Err(d) => return Ok(fail(&src, &d)),
    };
    let out = output.unwrap_or_else(|| PathBuf::from("generated").join(c.model_name()));
    let runtime = runtime_path(&out)?;
    let spec_shown = spec.to_string_lossy().replace('\\', "/");
    let krate = qatc::codegen::generate(&c, &spec_shown, &runtime)?;
    let changes = qatc::build::compare(&out, &krate)
        .with_context(|| format!("cannot read the crate in `{}`", out.display()))?;
    let changed: Vec<&qatc::build::FileChange> = changes.iter().filter(|c| c.changed()).collect();
    let shown = out.to_string_lossy().replace('\\', "/");
    if check || diff {
        if diff {
            use std::io::IsTerminal;
            let color = std::io::stdout().is_terminal();
            for c in &changed {
                print!("{}", c.unified(&shown, color));
            }
        }
        if changed.is_empty() {
            eprintln!("up to date: {shown} is what {} generates", src.name);
            return Ok(ExitCode::SUCCESS);
        }
        let list: Vec<String> = changed.iter().map(|c| c.describe()).collect();
        eprintln!(
            "{} {shown}: {} (run `qatc build {}` to update)",
            if check { "stale:" } else { "would change" },
            list.join(", "),
            src.name
        );
        return Ok(if check {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    std::fs::create_dir_all(out.join("src"))
        .with_context(|| format!("cannot create `{}`", out.display()))?;
    for c in &changed {
        let path = out.join(c.file);
        qatc_data::write_atomic(&path, c.new.as_bytes())
            .with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    let what = if changed.is_empty() {
        "no file changed".to_string()
    } else {
        let list: Vec<String> = changed.iter().map(|c| c.describe()).collect();
        format!("changed: {}", list.join(", "))
    };
    eprintln!(
        "built: {} -> {} (crate {}); {what}",
        src.name,
        out.display(),
        krate.package
    );
    Ok(ExitCode::SUCCESS)
}

/// `qatc import SPEC --from F [--format NAME] [-o OUT]`: maps a checkpoint of
/// another code base onto the model's names, as the spec's `import` says.
pub fn import(
    spec: &Path,
    from: &Path,
    format: &str,
    profile: Option<&str>,
    strip_prefix: &str,
    output: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let src = read(spec)?;
    let c = match driver::compile(&src) {
        Ok(c) => c,
        Err(d) => return Ok(fail(&src, &d)),
    };
    let g = match c.graph(profile) {
        Ok(g) => g,
        Err(d) => return Ok(fail(&src, &d)),
    };
    let plan = match qatc::import::plan(&c.ast, g, format) {
        Ok(p) => p,
        Err(d) => return Ok(fail(&src, &d)),
    };
    let bytes = std::fs::read(from).with_context(|| format!("cannot read `{}`", from.display()))?;
    // A checkpoint qatc wrote must match its digests (`convert`
    // checks again, for its other callers).
    if let Err(c) = qatc_integrity::verify(&bytes) {
        eprintln!(
            "error: {}",
            qatc_integrity::corrupt_message(&from.display().to_string(), &c)
        );
        return Ok(ExitCode::from(1));
    }
    match qatc::import::convert(&plan, &bytes, strip_prefix) {
        Ok(converted) => {
            if let Some(out) = output {
                qatc_data::write_atomic(out, &converted)
                    .with_context(|| format!("cannot write `{}`", out.display()))?;
                eprintln!(
                    "imported: {} tensors from {} -> {}",
                    plan.entries.len(),
                    from.display(),
                    out.display()
                );
            } else {
                for e in &plan.entries {
                    println!("{:<40} <- {}{}", e.ours, strip_prefix, e.theirs);
                }
                eprintln!(
                    "ok: {} maps onto model {} (profile {}), {} tensors",
                    from.display(),
                    g.model,
                    g.profile,
                    plan.entries.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            eprint!("{}", problems.report());
            eprintln!(
                "error: {} does not fit model {} (profile {}) as `import {format}` maps it",
                from.display(),
                g.model,
                g.profile
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// `qatc bench SPEC ...`: the model crate's `bench`.
pub fn bench(spec: &Path, bench: BenchArgs) -> anyhow::Result<ExitCode> {
    let BenchArgs {
        profile,
        batch_size,
        device,
        steps,
        warmup,
        json,
    } = bench;
    let mut args: Vec<String> = Vec::new();
    let options = [
        ("--profile", profile.clone()),
        ("--batch-size", batch_size.map(|n| n.to_string())),
        ("--device", device),
        ("--steps", steps.map(|n| n.to_string())),
        ("--warmup", warmup.map(|n| n.to_string())),
    ];
    for (flag, value) in options {
        if let Some(value) = value {
            args.extend([flag.to_string(), value]);
        }
    }
    if json {
        args.push("--json".into());
    }
    run_model(spec, "bench", profile.as_deref(), &args)
}

/// `qatc fmt SPEC [--to qspec|yaml] [-o FILE]`.
pub fn fmt(spec: &Path, to: Option<To>, output: Option<&Path>) -> anyhow::Result<ExitCode> {
    let src = read(spec)?;
    let model = match driver::parse(&src) {
        Ok(m) => m,
        Err(d) => return Ok(fail(&src, &d)),
    };
    let to = to.unwrap_or(match src.syntax {
        Syntax::Qspec => To::Qspec,
        Syntax::Yaml => To::Yaml,
    });
    let text = match to {
        To::Qspec => qatc::syntax::print_qspec(&model),
        To::Yaml => qatc::syntax::yaml::print_yaml(&model),
    };
    match output {
        Some(path) => qatc_data::write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write `{}`", path.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The flags of `qatc bench` passed on to the model crate.
#[derive(Clone, Debug, Default)]
pub struct BenchArgs {
    pub profile: Option<String>,
    pub batch_size: Option<i64>,
    pub device: Option<String>,
    pub steps: Option<u32>,
    pub warmup: Option<u32>,
    pub json: bool,
}
