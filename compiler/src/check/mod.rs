//! Static checks on the AST: names, arities, argument kinds, duplicates,
//! recursion, rules, bit lists and profiles.
//!
//! Input: an [`ast::Model`](crate::ast::Model). Output: the [`Resolved`] model (every call
//! bound once, blocks by index, the layer slots, every profile resolved to
//! concrete bit-widths) or all diagnostics found. One module per concern:
//! [`structure`] (names, blocks, calls, stages), [`binding`] (arguments to
//! parameters), [`rules`], [`profiles`] (slots, settings, bit lists), and
//! [`resolved`], the output types.
//!
//! Everything that can be decided without instantiating blocks is decided
//! here, for every block (used or not) and every profile, so one run reports
//! all such errors. Value-dependent problems (shapes, strides, groups) are
//! found by [`crate::lower`] when blocks are instantiated.

mod binding;
mod profiles;
mod resolved;
mod rules;
mod structure;

pub use binding::{bind_block, bind_builtin, bit_ref, quantizer, QUANTIZERS};
pub use profiles::{Layout, ResolvedProfile, SlotInfo, SlotOverride};
pub use resolved::*;
pub use rules::{Rule, RULES};
pub use structure::visit_calls;

use crate::ast::*;
use crate::diag::{Diagnostic, Diagnostics};
use crate::vocab::SlotBits;
use std::collections::HashMap;

/// Runs every static check.
pub fn check(m: &Model) -> Result<Resolved, Diagnostics> {
    let mut c = Checker {
        m,
        diags: Diagnostics::default(),
    };
    c.model_header();
    let block_names = c.duplicates(m.blocks.iter().map(|b| &b.name), "block");
    let _ = block_names;
    let blocks: Vec<ResolvedBlock> = m.blocks.iter().map(|b| c.block(b)).collect();
    c.recursion();
    crate::import::check(m, &mut c.diags);
    let mut section = |s: &Option<Section>| {
        s.as_ref().map(|s| ResolvedSection {
            ops: c.ops(&s.ops, &Scope::Section),
            span: s.span,
        })
    };
    let (stem, head, fc) = (section(&m.stem), section(&m.head), section(&m.fc));
    let (stage_names, stages) = c.stages();
    let slots = c.slots(&stage_names);
    let model_acts = c.model_quant();
    let init = c.init();
    let model_rules = c.rules(&m.rules, false);
    let layout = c.layout();
    let mut profiles = Vec::new();
    let mut seen: HashMap<String, Span> = HashMap::new();
    for p in &m.profiles {
        if let Some(&first) = seen.get(&p.name.name) {
            c.diags.push(
                Diagnostic::error(
                    "E0005",
                    format!("profile `{}` is defined more than once", p.name.name),
                )
                .primary(p.name.span, "defined again here")
                .secondary(first, "first defined here"),
            );
            continue;
        }
        seen.insert(p.name.name.clone(), p.name.span);
        if let Some(r) = c.profile(p, &slots, &stage_names, &layout, &model_acts, &model_rules) {
            profiles.push(r);
        }
    }
    if !seen.contains_key(FLOAT_PROFILE) {
        let mut rules = model_rules.clone();
        rules.retain(|r| !matches!(r, Rule::WideFirst(_) | Rule::WideLast(_)));
        profiles.push(ResolvedProfile {
            name: FLOAT_PROFILE.to_string(),
            bits: vec![
                SlotBits {
                    w: 32,
                    ain: 32,
                    aout: 32
                };
                slots.len()
            ],
            acts: model_acts.0.clone(),
            weights: model_acts.1,
            rules,
        });
    }
    if c.diags.has_errors() {
        return Err(c.diags);
    }
    Ok(Resolved {
        name: m.name.clone(),
        input: m.input.dims.iter().map(|d| d.value).collect(),
        input_span: m.input.span,
        classes: m.classes.clone(),
        blocks,
        stem,
        stages,
        head,
        fc,
        slots,
        profiles,
        init,
        stage_names,
    })
}

/// Where a call appears: decides which names are in scope.
enum Scope<'a> {
    Block(&'a BlockDef),
    Section,
}

struct Checker<'m> {
    m: &'m Model,
    diags: Diagnostics,
}

pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(name, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < c.len())
        .min()
        .map(|(_, c)| c.to_string())
}

fn with_suggestion(d: Diagnostic, name: &str, candidates: Vec<&str>) -> Diagnostic {
    let s = suggest(name, candidates.iter().copied());
    let d = match s {
        Some(s) => d.help(format!("did you mean `{s}`?")),
        None => d,
    };
    if candidates.is_empty() {
        d
    } else {
        d.note(format!("known: {}", candidates.join(", ")))
    }
}

/// A valid bit-width: 1..=16 or 32.
pub fn valid_bits(v: i64) -> bool {
    (1..=16).contains(&v) || v == 32
}

pub fn bits_error(span: Span, v: i64) -> Diagnostic {
    Diagnostic::error("E0201", format!("bit-width {v} is out of range"))
        .primary(span, "not a valid bit-width")
        .note("bit-widths are 1 to 16, or 32 for \"not quantized\"")
}
