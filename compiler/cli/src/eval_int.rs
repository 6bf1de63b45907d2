//! `qatc eval SPEC --checkpoint F --int`: the model crate's fake-quant
//! evaluation next to the integer-only engine on the same images, in both
//! rounding modes.

use crate::model_crate::{flag_value, model_json};
use anyhow::Context;
use qatc_records::EvalReport;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `qatc eval SPEC --int [--format table|json] [--fixed CLASS=B,I]...
/// [--saturate-constants] ...`: the fake-quant
/// evaluation of the model crate (its `eval`, all other flags passed on)
/// next to the integer-only engine on the same images, in both rounding
/// modes: accuracies, the agreement of their top-1 predictions with
/// fake-quant, and the largest logit difference.
pub fn eval_int(spec: &Path, profile: Option<&str>, args: &[String]) -> anyhow::Result<ExitCode> {
    use crate::int_cli::{load_plan, DataImages, PlanArgs, RoundingArg};
    use qatc_int::{evaluate, EvalOptions};
    let json = flag_value(args, "--format").as_deref() == Some("json");
    // The integer plan's own flags (`--fixed CLASS=B,I`, repeatable, and
    // `--saturate-constants`) stay here; the rest goes to the model's eval.
    let mut passed: Vec<String> = Vec::new();
    let mut fixed: Vec<String> = Vec::new();
    let mut saturate_constants = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--format" {
            it.next();
        } else if a == "--fixed" {
            match it.next() {
                Some(v) => fixed.push(v.clone()),
                None => anyhow::bail!("--fixed needs a value: CLASS=BITS,INT_BITS"),
            }
        } else if let Some(v) = a.strip_prefix("--fixed=") {
            fixed.push(v.to_string());
        } else if a == "--saturate-constants" {
            saturate_constants = true;
        } else if a == "--rounding" || a.starts_with("--rounding=") {
            anyhow::bail!(
                "`qatc eval --int` reports both rounding modes (trunc and nearest); \
                 --rounding picks one in `qatc int`"
            );
        } else if a != "--int" && !a.starts_with("--format=") {
            passed.push(a.clone());
        }
    }
    let Some(checkpoint) = flag_value(args, "--checkpoint") else {
        anyhow::bail!("--checkpoint is required: qatc eval SPEC --checkpoint F --int");
    };
    let tmp = std::env::temp_dir().join(format!("qatc-eval-int-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create `{}`", tmp.display()))?;
    let logits_path = tmp.join("logits.csv");
    passed.extend([
        "--format".to_string(),
        "json".to_string(),
        "--logits".to_string(),
        logits_path.to_string_lossy().into_owned(),
    ]);
    let fake = match model_json(spec, "eval", profile, &passed, &[]) {
        Ok(Ok(stdout)) => stdout,
        failed => {
            let _ = std::fs::remove_dir_all(&tmp);
            return failed.map(|f| f.err().unwrap_or(ExitCode::FAILURE));
        }
    };
    let logits_text = std::fs::read_to_string(&logits_path);
    let _ = std::fs::remove_dir_all(&tmp);
    let fake_logits: Vec<Vec<f32>> = logits_text
        .context("the model's eval wrote no logits")?
        .lines()
        .map(|l| {
            l.split(',')
                .map(|v| v.parse::<f32>().unwrap_or(f32::NAN))
                .collect()
        })
        .collect();
    let fake = EvalReport::from_json(&fake, Path::new("the model's `eval --format json` report"))?;
    let fake_top1 = fake.top1;
    let data = fake.data.clone();
    let profile = fake.profile.clone();
    let split = qatc_data::open(&data).with_context(|| format!("cannot open data `{data}`"))?;
    let ds = match fake.split.as_str() {
        "train" => split.train,
        "test" => split.test,
        other => anyhow::bail!("the model's eval report names an unknown split `{other}`"),
    }
    .spread(fake.images);
    if ds.len() != fake_logits.len() {
        anyhow::bail!(
            "the model evaluated {} images but {} logit rows came back",
            ds.len(),
            fake_logits.len()
        );
    }
    let mut rows = Vec::new();
    for rounding in [RoundingArg::Trunc, RoundingArg::Nearest] {
        let plan_args = PlanArgs {
            spec: Some(spec.to_path_buf()),
            profile: Some(profile.clone()),
            checkpoint: Some(PathBuf::from(&checkpoint)),
            import_format: None,
            strip_prefix: String::new(),
            rounding,
            fixed: fixed.clone(),
            saturate_constants,
        };
        let plan = load_plan(&plan_args, None)?;
        let report = evaluate(
            &plan,
            &DataImages {
                ds: &ds,
                n: ds.len(),
            },
            EvalOptions {
                sim: Default::default(),
                threads: 0,
                keep_logits: true,
            },
        )?;
        let agree = qatc_int::agreement(&report, &fake_logits);
        let name = match rounding {
            RoundingArg::Trunc => "trunc",
            RoundingArg::Nearest => "nearest",
        };
        rows.push(serde_json::json!({
            "rounding": name,
            "top1": report.top1,
            "agreement": 100.0 * agree.same_top1,
            "max_logit_diff": agree.max_logit_diff,
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": fake.model, "profile": profile, "checkpoint": checkpoint,
                "data": data, "split": fake.split, "images": ds.len(),
                "fake_quant_top1": fake_top1, "int": rows,
            })
        );
    } else {
        println!(
            "{} (profile {profile}) on {data} {} ({} images), checkpoint {checkpoint}",
            fake.model,
            fake.split,
            ds.len()
        );
        println!(
            "{:<22} {:>8} {:>16} {:>15}",
            "", "top-1 %", "same top-1 as FQ", "max |logit diff|"
        );
        println!(
            "{:<22} {:>8.2} {:>16} {:>15}",
            "fake-quant (libtorch)", fake_top1, "-", "-"
        );
        for r in &rows {
            println!(
                "{:<22} {:>8.2} {:>15.2}% {:>15.4}",
                format!("integer, {}", r["rounding"].as_str().unwrap_or("?")),
                r["top1"].as_f64().unwrap_or(f64::NAN),
                r["agreement"].as_f64().unwrap_or(f64::NAN),
                r["max_logit_diff"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
