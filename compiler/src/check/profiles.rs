//! Layer slots, model-wide settings (`quant`, `init`), bit lists and
//! profiles, resolved to concrete bit-widths per slot.

use super::binding::{plural, quantizer};
use super::rules::Rule;
use super::*;
use crate::vocab::{
    BitRef, BitVar, ConvInit, LinearInit, Quantizer, SlotBits, SlotKind, WeightInit, WeightQuant,
};
use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotOverride {
    pub w: Option<u32>,
    pub ain: Option<u32>,
    pub aout: Option<u32>,
}

/// A layer slot as laid out by the macro-architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotInfo {
    pub name: String,
    pub kind: SlotKind,
    /// Stage index (into `model.stages`) and repeat index, for blocks.
    pub stage: Option<(usize, usize)>,
}

/// A profile resolved to concrete values.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedProfile {
    pub name: String,
    pub bits: Vec<SlotBits>,
    /// Default activation quantizer (model `quant { acts }`, overridden by the profile).
    pub acts: Quantizer,
    pub weights: WeightQuant,
    pub rules: Vec<Rule>,
}

impl ResolvedProfile {
    pub fn rule<T>(&self, f: impl Fn(&Rule) -> Option<T>) -> Option<T> {
        self.rules.iter().find_map(f)
    }

    /// The bits and quantizer of an active activation-placing rule, by name.
    /// The bits, quantizer and node name (`as NAME`) of an active
    /// activation-placing rule, by rule name.
    pub fn act_rule(&self, name: &str) -> Option<(BitRef, Option<Quantizer>, Option<String>)> {
        self.rule(|r| match r {
            Rule::AfterAdd { bits, quant, label }
            | Rule::Shortcut { bits, quant, label }
            | Rule::BlockOutput { bits, quant, label }
            | Rule::BlockInput { bits, quant, label }
            | Rule::Concat { bits, quant, label }
            | Rule::Gate { bits, quant, label }
                if r.name() == name =>
            {
                Some((*bits, quant.clone(), label.clone()))
            }
            _ => None,
        })
    }
}

impl<'m> Checker<'m> {
    pub(super) fn slots(&self, stage_names: &[String]) -> Vec<SlotInfo> {
        let m = self.m;
        let mut slots = Vec::new();
        if m.stem.is_some() {
            slots.push(SlotInfo {
                name: "stem".into(),
                kind: SlotKind::Stem,
                stage: None,
            });
        }
        for (si, s) in m.stages.iter().enumerate() {
            for r in 0..s.repeats.value.clamp(0, 4096) as usize {
                slots.push(SlotInfo {
                    name: format!("{}.{}", stage_names[si], r),
                    kind: SlotKind::Block,
                    stage: Some((si, r)),
                });
            }
        }
        if m.head.is_some() {
            slots.push(SlotInfo {
                name: "head".into(),
                kind: SlotKind::Head,
                stage: None,
            });
        }
        if m.fc.is_some() {
            slots.push(SlotInfo {
                name: "fc".into(),
                kind: SlotKind::Fc,
                stage: None,
            });
        }
        slots
    }

    /// Model-level quantizer defaults.
    pub(super) fn model_quant(&mut self) -> (Quantizer, WeightQuant) {
        let mut acts = Quantizer::Dorefa;
        let mut weights = WeightQuant::Dorefa;
        self.duplicates(self.m.quant.iter().map(|s| &s.key), "setting");
        for s in &self.m.quant {
            self.quant_setting(s, &mut acts, &mut weights);
        }
        (acts, weights)
    }

    pub(super) fn quant_setting(
        &mut self,
        s: &Setting,
        acts: &mut Quantizer,
        weights: &mut WeightQuant,
    ) {
        match s.key.name.as_str() {
            "acts" => {
                if let Some(q) = quantizer(&s.value, &mut self.diags) {
                    *acts = q;
                }
            }
            "weights" => match &s.value {
                Expr::Name(n) if n.name == "dorefa" => *weights = WeightQuant::Dorefa,
                Expr::Name(n) if n.name == "none" => *weights = WeightQuant::None,
                other => self.diags.push(
                    Diagnostic::error("E0112", "unknown weight quantizer")
                        .primary(other.span(), "expected `dorefa` or `none`"),
                ),
            },
            other => {
                let d = Diagnostic::error("E0113", format!("unknown setting `{other}`"))
                    .primary(s.key.span, "not a quantizer setting");
                self.diags
                    .push(with_suggestion(d, other, vec!["acts", "weights"]));
            }
        }
    }

    /// `init { conv ...  linear ... }`: the model's weight initialisation.
    pub(super) fn init(&mut self) -> WeightInit {
        let mut init = WeightInit::default();
        self.duplicates(self.m.init.iter().map(|s| &s.key), "setting");
        for s in &self.m.init {
            let (name, args, span) = match &s.value {
                Expr::Name(n) => (n.name.as_str(), &[][..], n.span),
                Expr::Call(c) => (c.name.name.as_str(), &c.args[..], c.span),
                other => ("", &[][..], other.span()),
            };
            let choices: &[&str] = match s.key.name.as_str() {
                "conv" => &["default", "kaiming_uniform", "kaiming_normal_fan_out"],
                "linear" => &["default", "kaiming_uniform", "normal"],
                other => {
                    let d = Diagnostic::error("E0119", format!("unknown setting `{other}`"))
                        .primary(s.key.span, "not an init setting");
                    self.diags
                        .push(with_suggestion(d, other, vec!["conv", "linear"]));
                    continue;
                }
            };
            if !choices.contains(&name) {
                let d = Diagnostic::error("E0119", "unknown weight initialisation").primary(
                    span,
                    format!(
                        "expected {}",
                        choices
                            .iter()
                            .map(|c| format!("`{c}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                self.diags.push(with_suggestion(d, name, choices.to_vec()));
                continue;
            }
            let arity = usize::from(name == "normal");
            if args.len() != arity {
                self.diags.push(
                    Diagnostic::error(
                        "E0115",
                        format!(
                            "`{name}` takes {arity} argument{}, got {}",
                            plural(arity),
                            args.len()
                        ),
                    )
                    .primary(
                        span,
                        if arity == 1 {
                            "give the standard deviation, e.g. `normal(0.001)`"
                        } else {
                            "takes no arguments"
                        },
                    ),
                );
                continue;
            }
            match (s.key.name.as_str(), name) {
                ("conv", "kaiming_uniform") => init.conv = ConvInit::KaimingUniform,
                ("conv", "kaiming_normal_fan_out") => init.conv = ConvInit::KaimingNormalFanOut,
                ("conv", _) => init.conv = ConvInit::Default,
                ("linear", "kaiming_uniform") => init.linear = LinearInit::KaimingUniform,
                ("linear", "normal") => {
                    let std = match &args[0].value {
                        Expr::Int(i) => Some(i.value as f64),
                        Expr::Float { value, .. } => Some(*value),
                        _ => None,
                    };
                    match std {
                        Some(v) if v > 0.0 && v.is_finite() && args[0].name.is_none() => {
                            init.linear = LinearInit::Normal(v)
                        }
                        _ => self.diags.push(
                            Diagnostic::error("E0119", "bad standard deviation")
                                .primary(args[0].span, "a positive number, e.g. `normal(0.001)`"),
                        ),
                    }
                }
                _ => init.linear = LinearInit::Default,
            }
        }
        init
    }

    pub(super) fn layout(&mut self) -> Option<Layout> {
        let default = Layout {
            cover: vec![
                SlotKind::Stem,
                SlotKind::Block,
                SlotKind::Head,
                SlotKind::Fc,
            ],
            bindings: vec![
                (BitVar::W, "wbit".into(), 0),
                (BitVar::Ain, "abit".into(), 0),
                (BitVar::Aout, "abit".into(), 1),
            ],
        };
        let Some(l) = &self.m.lists else {
            return Some(default);
        };
        let mut ok = true;
        let mut cover = Vec::new();
        for c in &l.cover {
            let kind = match c.name.as_str() {
                "stem" => SlotKind::Stem,
                "blocks" => SlotKind::Block,
                "head" => SlotKind::Head,
                "fc" => SlotKind::Fc,
                other => {
                    let d =
                        Diagnostic::error("E0130", format!("`{other}` is not a part of the model"))
                            .primary(c.span, "lists can cover `stem`, `blocks`, `head` and `fc`");
                    self.diags.push(with_suggestion(
                        d,
                        other,
                        vec!["stem", "blocks", "head", "fc"],
                    ));
                    ok = false;
                    continue;
                }
            };
            if cover.contains(&kind) {
                self.diags.push(
                    Diagnostic::error("E0005", format!("`{}` is covered twice", c.name))
                        .primary(c.span, "repeated"),
                );
                ok = false;
            }
            cover.push(kind);
        }
        let mut bindings = Vec::new();
        let mut seen = HashSet::new();
        for b in &l.bindings {
            let Some(var) = BitVar::parse(&b.var.name) else {
                let d =
                    Diagnostic::error("E0131", format!("unknown bit variable `{}`", b.var.name))
                        .primary(b.var.span, "lists bind `w`, `ain` or `aout`");
                self.diags
                    .push(with_suggestion(d, &b.var.name, vec!["w", "ain", "aout"]));
                ok = false;
                continue;
            };
            if !seen.insert(b.var.name.clone()) {
                self.diags.push(
                    Diagnostic::error("E0005", format!("`{}` is bound twice", b.var.name))
                        .primary(b.span, "repeated"),
                );
                ok = false;
            }
            if b.offset.abs() > 4096 {
                self.diags.push(
                    Diagnostic::error("E0203", "list offset out of range")
                        .primary(b.span, "offsets are small integers"),
                );
                ok = false;
                continue;
            }
            bindings.push((var, b.list.name.clone(), b.offset));
        }
        ok.then_some(Layout { cover, bindings })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn profile(
        &mut self,
        p: &Profile,
        slots: &[SlotInfo],
        stage_names: &[String],
        layout: &Option<Layout>,
        model_quant: &(Quantizer, WeightQuant),
        model_rules: &[Rule],
    ) -> Option<ResolvedProfile> {
        let errors_before = self.diags.error_count();
        let mut bits = vec![
            SlotBits {
                w: 32,
                ain: 32,
                aout: 32
            };
            slots.len()
        ];
        let (mut acts, mut weights) = model_quant.clone();
        let mut rules: Vec<Rule> = model_rules.to_vec();
        // Rule toggles and quantizer settings first: they do not depend on order.
        for item in &p.items {
            match item {
                ProfileItem::Rules { rules: uses, .. } => {
                    for u in uses {
                        if u.disable {
                            let name = u.call.name.name.as_str();
                            if !rules.iter().any(|r| r.name() == name) && RULES.contains(&name) {
                                self.diags.push(
                                    Diagnostic::error(
                                        "E0122",
                                        format!("rule `{name}` is not on in this model"),
                                    )
                                    .primary(u.call.span, "nothing to switch off")
                                    .note(
                                        if rules.is_empty() {
                                            "no placement rule is on here".to_string()
                                        } else {
                                            let on: Vec<&str> =
                                                rules.iter().map(Rule::name).collect();
                                            format!("rules on here: {}", on.join(", "))
                                        },
                                    ),
                                );
                            }
                            rules.retain(|r| r.name() != name);
                        }
                    }
                    for r in self.rules(uses, true) {
                        rules.retain(|x| x.name() != r.name());
                        rules.push(r);
                    }
                }
                ProfileItem::Setting(s) => self.quant_setting(s, &mut acts, &mut weights),
                _ => {}
            }
        }
        // Precedence: all < lists < wide_first/wide_last < stage < block/stem/head/fc.
        for item in &p.items {
            if let ProfileItem::Scope {
                target: ScopeTarget::All(_),
                bits: b,
                ..
            } = item
            {
                if let Some(o) = self.overrides(b) {
                    bits.iter_mut().for_each(|s| set(s, &o));
                }
            }
        }
        let mut lists_seen: HashMap<String, Span> = HashMap::new();
        for item in &p.items {
            let ProfileItem::List {
                name,
                entries,
                span,
            } = item
            else {
                continue;
            };
            if let Some(first) = lists_seen.insert(name.name.clone(), *span) {
                self.diags.push(
                    Diagnostic::error(
                        "E0005",
                        format!("list `{}` is given more than once", name.name),
                    )
                    .primary(*span, "given again here")
                    .secondary(first, "first given here"),
                );
                continue;
            }
            let Some(layout) = layout else { continue };
            self.apply_list(name, entries, *span, slots, layout, &mut bits);
        }
        for r in &rules {
            match r {
                Rule::WideFirst(o) => {
                    if let Some(s) = slots.iter().position(|s| s.kind != SlotKind::Fc) {
                        set(&mut bits[s], o)
                    }
                }
                Rule::WideLast(o) => {
                    if let Some(s) = slots.iter().rposition(|s| s.kind != SlotKind::Stem) {
                        set(&mut bits[s], o)
                    }
                }
                _ => {}
            }
        }
        let scoped = |t: &ScopeTarget| match t {
            ScopeTarget::Stage(_) => 0,
            ScopeTarget::All(_) => -1,
            _ => 1,
        };
        for level in [0, 1] {
            for item in &p.items {
                let ProfileItem::Scope {
                    target, bits: b, ..
                } = item
                else {
                    continue;
                };
                if scoped(target) != level {
                    continue;
                }
                let Some(o) = self.overrides(b) else { continue };
                let targets = self.scope_slots(target, slots, stage_names);
                for t in targets {
                    set(&mut bits[t], &o);
                }
            }
        }
        (self.diags.error_count() == errors_before).then(|| ResolvedProfile {
            name: p.name.name.clone(),
            bits,
            acts,
            weights,
            rules,
        })
    }

    pub(super) fn apply_list(
        &mut self,
        name: &Ident,
        entries: &[ListEntry],
        span: Span,
        slots: &[SlotInfo],
        layout: &Layout,
        bits: &mut [SlotBits],
    ) {
        let uses: Vec<&(BitVar, String, i64)> = layout
            .bindings
            .iter()
            .filter(|(_, l, _)| *l == name.name)
            .collect();
        if uses.is_empty() {
            let mut known: Vec<&str> = layout.bindings.iter().map(|(_, l, _)| l.as_str()).collect();
            known.dedup();
            let d = Diagnostic::error("E0132", format!("unknown bit list `{}`", name.name))
                .primary(
                    name.span,
                    "the model's `lists` layout does not bind this list",
                );
            self.diags.push(with_suggestion(d, &name.name, known));
            return;
        }
        let mut values: Vec<(u32, Span)> = Vec::new();
        for e in entries {
            let n = e.repeat.as_ref().map(|r| r.value).unwrap_or(1);
            if !(0..=4096).contains(&n) {
                self.diags.push(
                    Diagnostic::error("E0203", "repeat count out of range")
                        .primary(e.span, "repeat 0 to 4096 times"),
                );
                return;
            }
            if !valid_bits(e.value.value) {
                self.diags.push(bits_error(e.value.span, e.value.value));
                continue;
            }
            for _ in 0..n {
                values.push((e.value.value as u32, e.span));
            }
        }
        let covered: Vec<usize> = layout
            .cover
            .iter()
            .flat_map(|k| {
                slots
                    .iter()
                    .enumerate()
                    .filter(move |(_, s)| s.kind == *k)
                    .map(|(i, _)| i)
            })
            .collect();
        if values.len() != covered.len() {
            // Entry j of a list of the expected length feeds these layers' variables.
            let covered = &covered;
            let mapping: Vec<String> = (0..covered.len())
                .map(|j| {
                    let targets: Vec<String> = covered
                        .iter()
                        .enumerate()
                        .flat_map(|(i, s)| {
                            uses.iter()
                                .filter(move |(_, _, off)| i as i64 + off == j as i64)
                                .map(move |(v, _, _)| {
                                    format!("{} {}", slots[*s].name, var_name(*v))
                                })
                        })
                        .collect();
                    let targets = if targets.is_empty() {
                        "nothing".to_string()
                    } else {
                        targets.join(", ")
                    };
                    format!("[{j}] {targets}")
                })
                .collect();
            let covered_names: Vec<&str> = layout
                .cover
                .iter()
                .map(|k| match k {
                    SlotKind::Stem => "stem",
                    SlotKind::Block => "blocks",
                    SlotKind::Head => "head",
                    SlotKind::Fc => "fc",
                })
                .collect();
            let mut d = Diagnostic::error(
                "E0202",
                format!(
                    "bit list `{}` has {} entries, expected {}",
                    name.name,
                    values.len(),
                    covered.len()
                ),
            )
            .primary(
                span,
                format!("{} entries, expected {}", values.len(), covered.len()),
            )
            .note(format!(
                "the lists cover {} ({} layers), one entry per layer",
                covered_names.join(", "),
                covered.len()
            ));
            let shown = mapping.len().min(24);
            d = d.note(format!(
                "entries of `{}` feed: {}{}",
                name.name,
                mapping[..shown].join("; "),
                if shown < mapping.len() { "; ..." } else { "" }
            ));
            let unfed: Vec<String> = uses
                .iter()
                .flat_map(|(v, _, off)| {
                    covered.iter().enumerate().filter_map(move |(i, s)| {
                        let j = i as i64 + off;
                        (j < 0 || j as usize >= covered.len())
                            .then(|| format!("{} {}", slots[*s].name, var_name(*v)))
                    })
                })
                .collect();
            if !unfed.is_empty() {
                d = d.note(format!(
                    "no entry of `{}` feeds {} (it keeps 32, or what a scope sets)",
                    name.name,
                    unfed.join(", ")
                ));
            }
            self.diags.push(d);
            return;
        }
        for (var, _, off) in uses {
            for (i, s) in covered.iter().enumerate() {
                let j = i as i64 + off;
                if j < 0 || j as usize >= values.len() {
                    continue;
                }
                let v = values[j as usize].0;
                match var {
                    BitVar::W => bits[*s].w = v,
                    BitVar::Ain => bits[*s].ain = v,
                    BitVar::Aout => bits[*s].aout = v,
                }
            }
        }
    }

    pub(super) fn overrides(&mut self, settings: &[Setting]) -> Option<SlotOverride> {
        let mut o = SlotOverride::default();
        let mut ok = true;
        for s in settings {
            let v = match &s.value {
                Expr::Int(i) if valid_bits(i.value) => i.value as u32,
                Expr::Int(i) => {
                    self.diags.push(bits_error(i.span, i.value));
                    ok = false;
                    continue;
                }
                other => {
                    self.diags.push(
                        Diagnostic::error("E0204", "expected a bit-width")
                            .primary(other.span(), "write an integer: 1 to 16, or 32"),
                    );
                    ok = false;
                    continue;
                }
            };
            match s.key.name.as_str() {
                "w" => o.w = Some(v),
                "ain" => o.ain = Some(v),
                "aout" => o.aout = Some(v),
                "a" => {
                    o.ain = Some(v);
                    o.aout = Some(v);
                }
                other => {
                    let d = Diagnostic::error("E0131", format!("unknown bit variable `{other}`"))
                        .primary(s.key.span, "scopes set `w`, `ain`, `aout` or `a` (both)");
                    self.diags
                        .push(with_suggestion(d, other, vec!["w", "ain", "aout", "a"]));
                    ok = false;
                }
            }
        }
        ok.then_some(o)
    }

    pub(super) fn scope_slots(
        &mut self,
        t: &ScopeTarget,
        slots: &[SlotInfo],
        stage_names: &[String],
    ) -> Vec<usize> {
        let find_kind = |k: SlotKind| {
            slots
                .iter()
                .position(|s| s.kind == k)
                .into_iter()
                .collect::<Vec<_>>()
        };
        let (found, what, span) = match t {
            ScopeTarget::All(_) => return (0..slots.len()).collect(),
            ScopeTarget::Stem(s) => (find_kind(SlotKind::Stem), "stem", *s),
            ScopeTarget::Head(s) => (find_kind(SlotKind::Head), "head", *s),
            ScopeTarget::Fc(s) => (find_kind(SlotKind::Fc), "fc", *s),
            ScopeTarget::Stage(name) => {
                let Some(si) = stage_names.iter().position(|n| *n == name.name) else {
                    let d = Diagnostic::error("E0133", format!("unknown stage `{}`", name.name))
                        .primary(name.span, "no stage of this name");
                    self.diags.push(with_suggestion(
                        d,
                        &name.name,
                        stage_names.iter().map(String::as_str).collect(),
                    ));
                    return Vec::new();
                };
                return slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.stage.map(|x| x.0) == Some(si))
                    .map(|(i, _)| i)
                    .collect();
            }
            ScopeTarget::Block { stage, index, span } => {
                let Some(si) = stage_names.iter().position(|n| *n == stage.name) else {
                    let d = Diagnostic::error("E0133", format!("unknown stage `{}`", stage.name))
                        .primary(stage.span, "no stage of this name");
                    self.diags.push(with_suggestion(
                        d,
                        &stage.name,
                        stage_names.iter().map(String::as_str).collect(),
                    ));
                    return Vec::new();
                };
                let n = slots
                    .iter()
                    .filter(|s| s.stage.map(|x| x.0) == Some(si))
                    .count();
                if index.value < 0 || index.value as usize >= n {
                    self.diags.push(
                        Diagnostic::error(
                            "E0134",
                            format!("stage `{}` has no block {}", stage.name, index.value),
                        )
                        .primary(
                            *span,
                            format!("stage `{}` has {} blocks, numbered from 0", stage.name, n),
                        ),
                    );
                    return Vec::new();
                }
                return slots
                    .iter()
                    .position(|s| s.stage == Some((si, index.value as usize)))
                    .into_iter()
                    .collect();
            }
        };
        if found.is_empty() {
            self.diags.push(
                Diagnostic::error("E0134", format!("this model has no {what}"))
                    .primary(span, "nothing to set bit-widths for"),
            );
        }
        found
    }
}

pub(super) fn var_name(v: BitVar) -> &'static str {
    match v {
        BitVar::W => "w",
        BitVar::Ain => "ain",
        BitVar::Aout => "aout",
    }
}

/// Bit lists layout, resolved.
#[derive(Clone, Debug)]
pub struct Layout {
    pub cover: Vec<SlotKind>,
    pub bindings: Vec<(BitVar, String, i64)>,
}

/// Applies an override (`wide_first(w: 16)`, a profile's `stem { w 8 }`) to
/// a slot's bits.
fn set(bits: &mut SlotBits, o: &SlotOverride) {
    if let Some(w) = o.w {
        bits.w = w;
    }
    if let Some(a) = o.ain {
        bits.ain = a;
    }
    if let Some(a) = o.aout {
        bits.aout = a;
    }
}
