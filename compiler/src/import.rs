//! Checkpoint import: the parameter names of another code base (the seed's
//! PyTorch state dict) mapped onto a model's variables, as the spec's
//! `import FORMAT { ... }` section says.
//!
//! Input: the AST (for the import sections) and one profile's [`Graph`]
//! (which variables exist, with which shapes). Output: a [`Plan`], one
//! [`Entry`] per variable: our name (`s2.0.conv1.weight`, the variable-store
//! path of the generated model) and the checkpoint's name
//! (`cells.1.conv1.weight`), and the shape both must have.
//!
//! A variable's checkpoint name is the template of its part of the model
//! (`stem`, `blocks`, `head`, `fc`; default: the slot's own name) with
//! `{block}`, `{stage}`, `{stage_index}`, `{stage_index1}`, `{index}`,
//! `{index1}` filled in, then the node's name inside the slot, then the
//! parameter name, renamed by `rename` items (`alpha` -> `scale_coef`).
//! Empty parts are skipped, so `fc ""` maps `fc.output.weight` to `output.weight`.

use crate::ast::{ImportItem, Model};
use crate::diag::{Diagnostic, Diagnostics};
use crate::ir::{Graph, SlotKind};
use std::collections::HashMap;

/// Template variables of a block part.
pub const VARS: &[&str] = &[
    "block",
    "stage",
    "stage_index",
    "stage_index1",
    "index",
    "index1",
];
/// Parts of a model an import maps.
pub const PARTS: &[&str] = &["stem", "blocks", "head", "fc"];
/// Parameters a rename can apply to.
pub const PARAMS: &[&str] = &["weight", "bias", "running_mean", "running_var", "alpha"];

/// One variable of the model and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ours: String,
    pub theirs: String,
    pub shape: Vec<i64>,
}

/// How one checkpoint format maps onto one profile of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub format: String,
    pub entries: Vec<Entry>,
    /// Glob patterns (`*` matches anything) of checkpoint entries the model does not use.
    pub ignore: Vec<String>,
}

impl Plan {
    pub fn ignored(&self, name: &str) -> bool {
        self.ignore.iter().any(|p| glob(p, name))
    }
}

/// `*` matches any run of characters, everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Static checks of the import sections (part names, template variables,
/// renames, duplicates).
pub fn check(m: &Model, diags: &mut Diagnostics) {
    let mut formats: HashMap<&str, crate::ast::Span> = HashMap::new();
    for imp in &m.imports {
        if let Some(first) = formats.insert(&imp.format.name, imp.format.span) {
            diags.push(
                Diagnostic::error(
                    "E0005",
                    format!("import `{}` is given more than once", imp.format.name),
                )
                .primary(imp.format.span, "given again here")
                .secondary(first, "first given here"),
            );
        }
        let mut seen: HashMap<String, crate::ast::Span> = HashMap::new();
        for item in &imp.items {
            let (key, span) = match item {
                ImportItem::Prefix { part, template } => {
                    if !PARTS.contains(&part.name.as_str()) {
                        diags.push(
                            Diagnostic::error(
                                "E0135",
                                format!("`{}` is not a part of the model", part.name),
                            )
                            .primary(part.span, "imports map `stem`, `blocks`, `head` and `fc`"),
                        );
                    }
                    check_template(&template.value, template.span, part.name == "blocks", diags);
                    (part.name.clone(), part.span)
                }
                ImportItem::Rename { param, .. } => {
                    if !PARAMS.contains(&param.name.as_str()) {
                        diags.push(
                            Diagnostic::error(
                                "E0135",
                                format!("`{}` is not a parameter name", param.name),
                            )
                            .primary(
                                param.span,
                                "renames apply to weight, bias, running_mean, running_var, alpha",
                            ),
                        );
                    }
                    (format!("rename {}", param.name), param.span)
                }
                ImportItem::Ignore { .. } => continue,
            };
            if let Some(first) = seen.insert(key.clone(), span) {
                diags.push(
                    Diagnostic::error("E0005", format!("`{key}` is mapped more than once"))
                        .primary(span, "mapped again here")
                        .secondary(first, "first mapped here"),
                );
            }
        }
    }
}

fn check_template(t: &str, span: crate::ast::Span, blocks: bool, diags: &mut Diagnostics) {
    let mut rest = t;
    let mut offset = 0;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            diags.push(
                Diagnostic::error("E0136", "unclosed `{` in an import template")
                    .primary(span, "add the closing `}`"),
            );
            return;
        };
        let var = &rest[open + 1..open + close];
        if !blocks || !VARS.contains(&var) {
            let start = span.start + 1 + offset + open;
            let d = Diagnostic::error("E0136", format!("unknown template variable `{{{var}}}`"))
                .primary(
                    crate::ast::Span::new(start, start + close + 1),
                    "not a template variable here",
                );
            diags.push(if blocks {
                d.note(format!(
                    "block templates know {}",
                    VARS.iter()
                        .map(|v| format!("{{{v}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            } else {
                d.note("only the `blocks` template has variables")
            });
        }
        offset += open + close + 1;
        rest = &rest[open + close + 1..];
    }
}

/// The variables of `g` with the names `format` gives them.
pub fn plan(m: &Model, g: &Graph, format: &str) -> Result<Plan, Diagnostics> {
    let Some(imp) = m.imports.iter().find(|i| i.format.name == format) else {
        let known: Vec<&str> = m.imports.iter().map(|i| i.format.name.as_str()).collect();
        return Err(Diagnostic::error(
            "E0137",
            format!("the spec has no `import {format}` section"),
        )
        .primary(m.name.span, "no mapping for this checkpoint format")
        .note(if known.is_empty() {
            "the spec has no import sections".to_string()
        } else {
            format!("it has: {}", known.join(", "))
        })
        .help(format!(
            "add `import {format} {{ blocks \"...\" }}` to the spec"
        ))
        .into());
    };
    let mut templates: HashMap<&str, &str> = HashMap::new();
    let mut renames: HashMap<&str, &str> = HashMap::new();
    let mut ignore = Vec::new();
    for item in &imp.items {
        match item {
            ImportItem::Prefix { part, template } => {
                templates.insert(&part.name, &template.value);
            }
            ImportItem::Rename { param, to } => {
                renames.insert(&param.name, &to.value);
            }
            ImportItem::Ignore { pattern } => ignore.push(pattern.value.clone()),
        }
    }
    // Where each slot lives in the checkpoint.
    let mut stage_order: Vec<&str> = Vec::new();
    let mut block = 0usize;
    let mut slot_prefix = Vec::new();
    for s in &g.slots {
        let part = match s.kind {
            SlotKind::Stem => "stem",
            SlotKind::Block => "blocks",
            SlotKind::Head => "head",
            SlotKind::Fc => "fc",
        };
        let prefix = match templates.get(part) {
            None => s.name.clone(),
            Some(t) if s.kind == SlotKind::Block => {
                let stage = s.stage.as_deref().unwrap_or_default();
                if !stage_order.contains(&stage) {
                    stage_order.push(stage);
                }
                let si = stage_order.iter().position(|x| *x == stage).unwrap_or(0);
                let index = s.index.unwrap_or(0);
                let out = t
                    .replace("{block}", &block.to_string())
                    .replace("{stage}", stage)
                    .replace("{stage_index}", &si.to_string())
                    .replace("{stage_index1}", &(si + 1).to_string())
                    .replace("{index}", &index.to_string())
                    .replace("{index1}", &(index + 1).to_string());
                block += 1;
                out
            }
            Some(t) => t.to_string(),
        };
        slot_prefix.push(prefix);
    }
    let mut entries = Vec::new();
    for n in &g.nodes {
        let params = n.op.hooks().variables(&n.io());
        if params.is_empty() {
            continue;
        }
        let slot = &g.slots[n.slot];
        let inner = n
            .name
            .strip_prefix(&slot.name)
            .map(|r| r.trim_start_matches('.'))
            .unwrap_or(&n.name);
        for (param, shape) in params {
            let theirs_param = renames.get(param).copied().unwrap_or(param);
            let theirs = [slot_prefix[n.slot].as_str(), inner, theirs_param]
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(".");
            entries.push(Entry {
                ours: format!("{}.{param}", n.name),
                theirs,
                shape,
            });
        }
    }
    Ok(Plan {
        format: format.to_string(),
        entries,
        ignore,
    })
}

/// What a checkpoint conversion found wrong, all at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub wrong_shape: Vec<String>,
    pub other: Vec<String>,
}

impl Problems {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.wrong_shape.is_empty()
            && self.other.is_empty()
    }

    /// One line per problem, grouped.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for (what, list) in [
            ("missing", &self.missing),
            ("unexpected", &self.unexpected),
            ("wrongly shaped", &self.wrong_shape),
            ("unreadable", &self.other),
        ] {
            for item in list {
                out.push_str(&format!("{what}: {item}\n"));
            }
        }
        out
    }
}

/// Converts a safetensors checkpoint in the plan's format into one with the
/// model's own names. Only entries whose name starts with `strip_prefix`
/// are considered (the prefix is removed first). Every missing, unexpected
/// or wrongly shaped tensor is reported; nothing is written then.
pub fn convert(plan: &Plan, bytes: &[u8], strip_prefix: &str) -> Result<Vec<u8>, Problems> {
    use safetensors::tensor::{SafeTensors, TensorView};
    let mut problems = Problems::default();
    let st = match SafeTensors::deserialize(bytes) {
        Ok(st) => st,
        Err(e) => {
            problems.other.push(format!("not a safetensors file: {e}"));
            return Err(problems);
        }
    };
    // A checkpoint qatc wrote is checked against its digests; another
    // tool's has none (one-line notice).
    match qatc_integrity::verify(bytes) {
        Ok(qatc_integrity::Status::Verified { .. }) => {}
        Ok(qatc_integrity::Status::Unsealed) => {
            eprintln!(
                "{}",
                qatc_integrity::unsealed_notice("the checkpoint to import")
            )
        }
        Err(c) => {
            problems
                .other
                .push(format!("the checkpoint is corrupt: {c}"));
            return Err(problems);
        }
    }
    let available: HashMap<String, String> = st
        .names()
        .into_iter()
        .filter_map(|n| {
            n.strip_prefix(strip_prefix)
                .map(|short| (short.to_string(), n.to_string()))
        })
        .collect();
    let mut used = std::collections::HashSet::new();
    let mut out: Vec<(String, TensorView)> = Vec::new();
    for e in &plan.entries {
        let Some(full) = available.get(&e.theirs) else {
            problems.missing.push(format!(
                "`{strip_prefix}{}` (for `{}`, shape {:?})",
                e.theirs, e.ours, e.shape
            ));
            continue;
        };
        used.insert(e.theirs.clone());
        let view = match st.tensor(full) {
            Ok(v) => v,
            Err(err) => {
                problems.other.push(format!("`{full}`: {err}"));
                continue;
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if shape != e.shape {
            problems.wrong_shape.push(format!(
                "`{full}` is {shape:?}, `{}` needs {:?}",
                e.ours, e.shape
            ));
            continue;
        }
        match TensorView::new(view.dtype(), view.shape().to_vec(), view.data()) {
            Ok(v) => out.push((e.ours.clone(), v)),
            Err(err) => problems.other.push(format!("`{full}`: {err}")),
        }
    }
    let mut unexpected: Vec<String> = available
        .iter()
        .filter(|(short, _)| !used.contains(*short) && !plan.ignored(short))
        .map(|(_, full)| format!("`{full}`"))
        .collect();
    unexpected.sort();
    problems.unexpected = unexpected;
    if !problems.is_empty() {
        return Err(problems);
    }
    // What qatc writes records its digests (`qatc_integrity`).
    qatc_integrity::serialize_sealed(out, HashMap::new()).map_err(|e| Problems {
        other: vec![e],
        ..Problems::default()
    })
}
