//! Running a spec's model crate: make sure `generated/<model>` is what the
//! spec generates now (generate it if missing, regenerate it if stale,
//! refuse to overwrite another spec's crate), then `cargo run --release -p
//! <crate> -- <subcommand>` in the workspace. `qatc train`, `eval` and
//! `bench` go through here.

use crate::{fail, read};
use anyhow::Context;
use qatc::driver;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `path` made absolute with its links resolved, also where it (or some of
/// its last components) does not exist yet.
pub fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    match path.canonicalize() {
        Ok(p) => Ok(p),
        Err(e) => {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(e);
            };
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok(resolve(parent)?.join(name))
        }
    }
}

/// The runtime crate as a path relative to `out` (where the generated crate
/// goes), so generated files are the same on every machine.
pub fn runtime_path(out: &Path) -> anyhow::Result<String> {
    let runtime = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runtime");
    let runtime = runtime
        .canonicalize()
        .with_context(|| format!("runtime crate not found at `{}`", runtime.display()))?;
    let out = resolve(out).with_context(|| format!("cannot resolve `{}`", out.display()))?;
    let common = runtime
        .components()
        .zip(out.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut rel = PathBuf::new();
    for _ in out.components().skip(common) {
        rel.push("..");
    }
    for c in runtime.components().skip(common) {
        rel.push(c);
    }
    Ok(rel.to_string_lossy().replace('\\', "/"))
}

/// The value of `--flag VALUE` or `--flag=VALUE` in pass-through arguments.
pub fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&prefix).map(str::to_string)
        }
    })
}

/// `qatc bench` / `train` / `eval`: checks the spec (and that it has
/// `profile`), brings its generated crate in the workspace up to date
/// (generated if missing, regenerated if stale; a crate of another spec
/// under the same model name is an error, never overwritten), then runs
/// `cargo run --release -p <crate> -- <subcommand> <args>` in the workspace.
/// On Unix qatc *becomes* that process (exec), so Ctrl-C, the exit status
/// and the terminal go straight to the model binary.
pub fn run_model(
    spec: &Path,
    subcommand: &str,
    profile: Option<&str>,
    args: &[String],
) -> anyhow::Result<ExitCode> {
    let (mut command, cargo) = match model_command(spec, subcommand, profile, args)? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = command.exec();
        Err(err).with_context(|| format!("cannot run `{}`", cargo.to_string_lossy()))
    }
    #[cfg(not(unix))]
    {
        let status = command
            .status()
            .with_context(|| format!("cannot run `{}`", cargo.to_string_lossy()))?;
        Ok(match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => ExitCode::from(1),
        })
    }
}

/// Runs the model crate's `subcommand` (as [`run_model`], with `env` set and
/// its stderr on the terminal) for the report it prints on stdout.
/// `Ok(Err(code))`: the spec did not check or the model failed (either said
/// why already).
pub fn model_json(
    spec: &Path,
    subcommand: &str,
    profile: Option<&str>,
    args: &[String],
    env: &[(&str, &str)],
) -> anyhow::Result<Result<Vec<u8>, ExitCode>> {
    let (mut command, cargo) = match model_command(spec, subcommand, profile, args)? {
        Ok(c) => c,
        Err(code) => return Ok(Err(code)),
    };
    let output = command
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run `{}`", cargo.to_string_lossy()))?;
    if !output.status.success() {
        return Ok(Err(ExitCode::from(1)));
    }
    Ok(Ok(output.stdout))
}

/// `qatc int bench --libtorch`: libtorch's fake-quant evaluation of the
/// spec's model under `profile` on one thread, in images per second: the
/// model crate's `bench --json` (as `QATC_THREADS=1 qatc bench`), its
/// `qat.eval_images_per_s`.
pub fn libtorch_eval(spec: &Path, profile: &str) -> anyhow::Result<f64> {
    let args: Vec<String> = ["--profile", profile, "--steps", "5", "--json"]
        .map(String::from)
        .to_vec();
    eprintln!("timing libtorch's fake-quant evaluation on 1 thread (the model crate's bench)...");
    let report = match model_json(
        spec,
        "bench",
        Some(profile),
        &args,
        &[("QATC_THREADS", "1")],
    )? {
        Ok(report) => report,
        Err(_) => anyhow::bail!(
            "the model crate's bench failed (said above; libtorch set up? run through `./dev qatc`)"
        ),
    };
    /// The part of the model crate's `bench --json` report read here.
    #[derive(serde::Deserialize)]
    struct Bench {
        qat: BenchSide,
    }
    #[derive(serde::Deserialize)]
    struct BenchSide {
        eval_images_per_s: f64,
    }
    let bench: Bench = serde_json::from_slice(&report)
        .context("the model crate's bench printed no JSON report with `qat.eval_images_per_s`")?;
    Ok(bench.qat.eval_images_per_s)
}

/// The cargo command that runs `subcommand` of the spec's model crate (see
/// [`run_model`]), or the exit code of a spec that failed its checks.
pub fn model_command(
    spec: &Path,
    subcommand: &str,
    profile: Option<&str>,
    args: &[String],
) -> anyhow::Result<Result<(std::process::Command, std::ffi::OsString), ExitCode>> {
    let src = read(spec)?;
    let c = match driver::compile(&src) {
        Ok(c) => c,
        Err(d) => return Ok(Err(fail(&src, &d))),
    };
    let name = c.model_name();
    let known = c.resolved.profile_names();
    if let Some(profile) = profile {
        if !known.iter().any(|k| k == profile) {
            anyhow::bail!(
                "model `{name}` has no profile `{profile}`; known: {}",
                known.join(", ")
            );
        }
    }
    let root = workspace_root(spec)?;
    let dir = root.join("generated").join(name);
    let shown = spec.to_string_lossy().replace('\\', "/");
    // `qatc build` writes the spec's path as given into the headers: accept
    // the crate if it matches the spec as named here or relative to the
    // workspace root (as `./dev generate` names it).
    let mut labels = Vec::new();
    let relative = spec.canonicalize().ok().and_then(|p| {
        p.strip_prefix(&root)
            .ok()
            .map(|rel| rel.to_string_lossy().replace('\\', "/"))
    });
    labels.extend(relative.clone());
    if !labels.contains(&shown) {
        labels.push(shown.clone());
    }
    let files = |k: &qatc::codegen::Crate| {
        [
            ("Cargo.toml", k.cargo_toml.clone()),
            ("src/lib.rs", k.lib_rs.clone()),
            ("src/main.rs", k.main_rs.clone()),
        ]
    };
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create `{}`", dir.display()))?;
    let runtime = runtime_path(&dir)?;
    let crates: Vec<qatc::codegen::Crate> = labels
        .iter()
        .map(|label| qatc::codegen::generate(&c, label, &runtime))
        .collect::<Result<_, _>>()?;
    let up_to_date = crates.iter().find(|k| {
        files(k).iter().all(|(file, text)| {
            std::fs::read_to_string(dir.join(file)).ok().as_deref() == Some(text)
        })
    });
    let package = match up_to_date {
        Some(k) => k.package.clone(),
        None => {
            let existing = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
            let ours = existing.is_empty()
                || labels
                    .iter()
                    .any(|l| existing.contains(&format!("generated by qatc from {l}\"")));
            if !ours {
                anyhow::bail!(
                    "`{}` holds the crate of another spec with a model named `{name}`: rename the model in {shown}, or remove that crate",
                    dir.display()
                );
            }
            let k = &crates[0];
            for (file, text) in files(k) {
                let path = dir.join(file);
                qatc_data::write_atomic(&path, text.as_bytes())
                    .with_context(|| format!("cannot write `{}`", path.display()))?;
            }
            eprintln!(
                "qatc: {} {} from {}",
                if existing.is_empty() {
                    "generated"
                } else {
                    "regenerated (it was stale)"
                },
                dir.display(),
                labels[0]
            );
            k.package.clone()
        }
    };
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_none() {
        anyhow::bail!(
            "libtorch is not set up in this environment (LIBTORCH_USE_PYTORCH is unset): run qatc as `./dev qatc {subcommand} ...`, which sets it up so that `{package}` builds and runs"
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "qatc: cargo run --release -q -p {package} -- {subcommand} {} (in {})",
        args.join(" "),
        root.display()
    );
    let mut command = std::process::Command::new(&cargo);
    command
        .current_dir(&root)
        .args(["run", "--release", "-q", "-p", &package, "--", subcommand])
        .args(args);
    // OpenMP reads this when libtorch loads, so it is set here, before the
    // model process starts: see scripts/libtorch-env.sh.
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        command.env("OMP_WAIT_POLICY", "PASSIVE");
    }
    Ok(Ok((command, cargo)))
}

/// The workspace root for `spec`: the nearest directory holding a
/// `Cargo.toml` with a `[workspace]` table, above the spec or else above
/// the current directory.
pub fn workspace_root(spec: &Path) -> anyhow::Result<PathBuf> {
    let is_root = |dir: &Path| {
        std::fs::read_to_string(dir.join("Cargo.toml"))
            .map(|text| text.lines().any(|line| line.trim() == "[workspace]"))
            .unwrap_or(false)
    };
    let spec_dir = spec
        .canonicalize()
        .with_context(|| format!("cannot resolve `{}`", spec.display()))?
        .parent()
        .map(Path::to_path_buf);
    let cwd = std::env::current_dir().ok();
    for start in [spec_dir, cwd].into_iter().flatten() {
        if let Some(root) = start.ancestors().find(|dir| is_root(dir)) {
            return Ok(root.to_path_buf());
        }
    }
    anyhow::bail!(
        "no Cargo workspace (a Cargo.toml with [workspace]) above `{}` or the current directory: the generated crates live in one",
        spec.display()
    )
}
