//! Placement rules: `quantize_after_add(bits, quantizer?) as NAME`,
//! `wide_first(...)`, `bn_bits(b)`, ... in the model and in profiles.

use super::binding::{bind_builtin, bit_ref, literal_bits, quantizer};
use super::profiles::SlotOverride;
use super::*;
use crate::ops::hooks::{opt, req, ParamKind::*};
use crate::vocab::{BitRef, Quantizer};
use std::collections::HashMap;

/// Placement rules (documented in docs/qspec.md).
pub const RULES: &[&str] = &[
    "quantize_after_add",
    "quantize_shortcut",
    "quantize_block_output",
    "quantize_block_input",
    "quantize_concat",
    "quantize_gate",
    "wide_first",
    "wide_last",
    "bn_bits",
    "pool_bits",
];

/// A placement rule with its arguments resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    AfterAdd {
        bits: BitRef,
        quant: Option<Quantizer>,
        /// `as NAME`: the name of the inserted quantizer nodes.
        label: Option<String>,
    },
    Shortcut {
        bits: BitRef,
        quant: Option<Quantizer>,
        /// `as NAME`: the name of the inserted quantizer nodes.
        label: Option<String>,
    },
    BlockOutput {
        bits: BitRef,
        quant: Option<Quantizer>,
        /// `as NAME`: the name of the inserted quantizer nodes.
        label: Option<String>,
    },
    BlockInput {
        bits: BitRef,
        quant: Option<Quantizer>,
        /// `as NAME`: the name of the inserted quantizer nodes.
        label: Option<String>,
    },
    /// One quantizer after each `concat`: its inputs share one clipping value.
    Concat {
        bits: BitRef,
        quant: Option<Quantizer>,
        /// `as NAME`: the name of the inserted quantizer nodes.
        label: Option<String>,
    },
    /// A quantizer after each gating product (`y *= g`, `mul(x, g)`).
    Gate {
        bits: BitRef,
        quant: Option<Quantizer>,
        /// `as NAME`: the name of the inserted quantizer nodes.
        label: Option<String>,
    },
    WideFirst(SlotOverride),
    WideLast(SlotOverride),
    BnBits(u32),
    PoolBits(u32),
}

impl Rule {
    pub fn name(&self) -> &'static str {
        match self {
            Rule::AfterAdd { .. } => "quantize_after_add",
            Rule::Shortcut { .. } => "quantize_shortcut",
            Rule::BlockOutput { .. } => "quantize_block_output",
            Rule::BlockInput { .. } => "quantize_block_input",
            Rule::Concat { .. } => "quantize_concat",
            Rule::Gate { .. } => "quantize_gate",
            Rule::WideFirst(_) => "wide_first",
            Rule::WideLast(_) => "wide_last",
            Rule::BnBits(_) => "bn_bits",
            Rule::PoolBits(_) => "pool_bits",
        }
    }
}

impl<'m> Checker<'m> {
    pub(super) fn rules(&mut self, rules: &[RuleUse], in_profile: bool) -> Vec<Rule> {
        let mut out = Vec::new();
        let mut seen: HashMap<String, Span> = HashMap::new();
        for r in rules {
            let name = r.call.name.name.as_str();
            if let Some(first) = seen.insert(name.to_string(), r.call.span) {
                self.diags.push(
                    Diagnostic::error("E0005", format!("rule `{name}` is given more than once"))
                        .primary(r.call.span, "given again here")
                        .secondary(first, "first given here"),
                );
                continue;
            }
            if !RULES.contains(&name) {
                let d = Diagnostic::error("E0120", format!("unknown rule `{name}`"))
                    .primary(r.call.name.span, "not a placement rule");
                self.diags.push(with_suggestion(d, name, RULES.to_vec()));
                continue;
            }
            if r.disable {
                if !in_profile {
                    self.diags.push(
                        Diagnostic::error("E0121", "a rule can only be switched off in a profile")
                            .primary(r.call.span, "`-` switches off a model rule")
                            .help("remove the rule from the model's `rules` instead"),
                    );
                } else if !r.call.args.is_empty() {
                    self.diags.push(
                        Diagnostic::error("E0121", "switching a rule off takes no arguments")
                            .primary(r.call.span, format!("write `-{name}`")),
                    );
                }
                continue;
            }
            if let Some(rule) = rule_from_call(&r.call, &mut self.diags) {
                out.push(rule);
            }
        }
        out
    }
}

pub(super) fn rule_from_call(c: &Call, diags: &mut Diagnostics) -> Option<Rule> {
    let name = c.name.name.as_str();
    let label = c.label.as_ref().map(|l| l.name.clone());
    if let (Some(l), false) = (&c.label, name.starts_with("quantize_")) {
        diags.push(
            Diagnostic::error("E0123", format!("rule `{name}` places no node to name"))
                .primary(
                    l.span,
                    "`as NAME` names the quantizers a `quantize_*` rule inserts",
                )
                .help("remove `as ...`"),
        );
        return None;
    }
    match name {
        "quantize_after_add"
        | "quantize_shortcut"
        | "quantize_block_output"
        | "quantize_block_input"
        | "quantize_concat"
        | "quantize_gate" => {
            let sig = [req("bits", Bits), opt("quantizer", Quant)];
            let bound = bind_builtin(&sig, c, diags);
            let bits = bit_ref(bound[0]?, diags)?;
            let quant = match bound[1] {
                Some(q) => Some(quantizer(q, diags)?),
                None => None,
            };
            Some(match name {
                "quantize_after_add" => Rule::AfterAdd { bits, quant, label },
                "quantize_shortcut" => Rule::Shortcut { bits, quant, label },
                "quantize_block_output" => Rule::BlockOutput { bits, quant, label },
                "quantize_concat" => Rule::Concat { bits, quant, label },
                "quantize_gate" => Rule::Gate { bits, quant, label },
                _ => Rule::BlockInput { bits, quant, label },
            })
        }
        "wide_first" | "wide_last" => {
            let sig = [
                opt("w", Int),
                opt("ain", Int),
                opt("aout", Int),
                opt("a", Int),
            ];
            let bound = bind_builtin(&sig, c, diags);
            if bound.iter().all(Option::is_none) {
                diags.push(
                    Diagnostic::error(
                        "E0115",
                        format!("rule `{name}` needs at least one bit-width"),
                    )
                    .primary(c.span, "e.g. `wide_last(w: 16)`"),
                );
                return None;
            }
            let mut vals = [None; 4];
            for (i, b) in bound.iter().enumerate() {
                if let Some(e) = b {
                    vals[i] = Some(literal_bits(e, diags, "write an integer")?);
                }
            }
            let o = SlotOverride {
                w: vals[0],
                ain: vals[1].or(vals[3]),
                aout: vals[2].or(vals[3]),
            };
            Some(if name == "wide_first" {
                Rule::WideFirst(o)
            } else {
                Rule::WideLast(o)
            })
        }
        _ => {
            let sig = [req("bits", Int)];
            let bound = bind_builtin(&sig, c, diags);
            let v = literal_bits(bound[0]?, diags, "write an integer")?;
            Some(if name == "bn_bits" {
                Rule::BnBits(v)
            } else {
                Rule::PoolBits(v)
            })
        }
    }
}
