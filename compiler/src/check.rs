//! Static checks on the AST: names, arities, argument kinds, duplicates,
//! recursion, rules, bit lists and profiles.
//!
//! Input: an [`ast::Model`]. Output: [`Checked`] (the model's layer slots and
//! every profile resolved to concrete bit-widths) or all diagnostics found.
//!
//! Everything that can be decided without instantiating blocks is decided
//! here, for every block (used or not) and every profile, so one run reports
//! all such errors. Value-dependent problems (shapes, strides, groups) are
//! found by [`crate::lower`] when blocks are instantiated.

use crate::ast::*;
use crate::diag::{Diagnostic, Diagnostics};
use crate::ir::{ConvInit, LinearInit, Quantizer, SlotKind, WeightInit, WeightQuant};
use std::collections::{HashMap, HashSet};

/// What kind of value an op parameter takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Int,
    Bool,
    /// A bit-width: `ain`, `aout`, `w` or an integer.
    Bits,
    /// An activation quantizer: `dorefa`, `pact(a)`, `mpact(a)`, `pact_fixed(s)`, `none`.
    Quant,
}

/// A parameter of a builtin op.
pub struct OpParam {
    pub name: &'static str,
    pub kind: ParamKind,
    pub required: bool,
}

const fn req(name: &'static str, kind: ParamKind) -> OpParam {
    OpParam {
        name,
        kind,
        required: true,
    }
}
const fn opt(name: &'static str, kind: ParamKind) -> OpParam {
    OpParam {
        name,
        kind,
        required: false,
    }
}

use ParamKind::*;

/// The builtin ops and their parameters (documented in docs/qspec.md).
pub const OPS: &[(&str, &[OpParam])] = &[
    (
        "conv",
        &[
            req("out", Int),
            req("kernel", Int),
            opt("stride", Int),
            opt("padding", Int),
            opt("groups", Int),
            opt("bias", Bool),
            opt("in", Int),
        ],
    ),
    (
        "conv3x3",
        &[
            req("out", Int),
            opt("stride", Int),
            opt("groups", Int),
            opt("bias", Bool),
            opt("in", Int),
        ],
    ),
    (
        "conv1x1",
        &[
            req("out", Int),
            opt("stride", Int),
            opt("groups", Int),
            opt("bias", Bool),
            opt("in", Int),
        ],
    ),
    (
        "dwconv",
        &[
            req("kernel", Int),
            opt("stride", Int),
            opt("padding", Int),
            opt("bias", Bool),
        ],
    ),
    ("dwconv3x3", &[opt("stride", Int), opt("bias", Bool)]),
    ("bn", &[]),
    ("relu", &[]),
    ("relu6", &[]),
    ("act", &[req("bits", Bits), opt("quantizer", Quant)]),
    (
        "avgpool",
        &[
            req("kernel", Int),
            opt("stride", Int),
            opt("functional", Bool),
        ],
    ),
    (
        "maxpool",
        &[req("kernel", Int), opt("stride", Int), opt("padding", Int)],
    ),
    ("adaptive_avgpool", &[opt("size", Int)]),
    ("flatten", &[]),
    (
        "linear",
        &[req("out", Int), opt("bias", Bool), opt("in", Int)],
    ),
];

/// Names of ops in other frameworks, for did-you-mean hints.
const OP_ALIASES: &[(&str, &str)] = &[
    ("batchnorm", "bn"),
    ("batch_norm", "bn"),
    ("batchnorm2d", "bn"),
    ("bn2d", "bn"),
    ("conv2d", "conv"),
    ("depthwise", "dwconv"),
    ("dense", "linear"),
    ("fully_connected", "linear"),
    ("avg_pool", "avgpool"),
    ("avg_pool2d", "avgpool"),
    ("max_pool", "maxpool"),
    ("max_pool2d", "maxpool"),
    ("global_avgpool", "adaptive_avgpool"),
    ("gap", "adaptive_avgpool"),
    ("quant", "act"),
    ("quantize", "act"),
    ("view", "flatten"),
];

pub fn op_sig(name: &str) -> Option<&'static [OpParam]> {
    OPS.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

/// Quantizer names and the number of arguments each takes.
pub const QUANTIZERS: &[(&str, usize)] = &[
    ("dorefa", 0),
    ("pact", 1),
    ("mpact", 1),
    ("pact_fixed", 1),
    ("none", 0),
];

/// Placement rules (documented in docs/qspec.md).
pub const RULES: &[&str] = &[
    "quantize_after_add",
    "quantize_shortcut",
    "quantize_block_output",
    "quantize_block_input",
    "wide_first",
    "wide_last",
    "bn_bits",
    "pool_bits",
];

/// Names a block parameter may not take.
const RESERVED: &[&str] = &["x", "cin", "classes", "ain", "aout", "w"];

/// A bit variable of a layer slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitVar {
    W,
    Ain,
    Aout,
}

impl BitVar {
    pub fn parse(s: &str) -> Option<BitVar> {
        match s {
            "w" => Some(BitVar::W),
            "ain" => Some(BitVar::Ain),
            "aout" => Some(BitVar::Aout),
            _ => None,
        }
    }
}

/// A bit-width written in an `act(...)` or a rule: a slot variable or a literal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitRef {
    Var(BitVar),
    Lit(u32),
}

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
            Rule::WideFirst(_) => "wide_first",
            Rule::WideLast(_) => "wide_last",
            Rule::BnBits(_) => "bn_bits",
            Rule::PoolBits(_) => "pool_bits",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotOverride {
    pub w: Option<u32>,
    pub ain: Option<u32>,
    pub aout: Option<u32>,
}

/// Bit-widths of one layer slot under one profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotBits {
    pub w: u32,
    pub ain: u32,
    pub aout: u32,
}

impl SlotBits {
    pub fn get(&self, v: BitVar) -> u32 {
        match v {
            BitVar::W => self.w,
            BitVar::Ain => self.ain,
            BitVar::Aout => self.aout,
        }
    }
    fn set(&mut self, o: &SlotOverride) {
        if let Some(w) = o.w {
            self.w = w;
        }
        if let Some(a) = o.ain {
            self.ain = a;
        }
        if let Some(a) = o.aout {
            self.aout = a;
        }
    }
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
                if r.name() == name =>
            {
                Some((*bits, quant.clone(), label.clone()))
            }
            _ => None,
        })
    }
}

/// The result of checking: slots and all profiles, ready for lowering.
#[derive(Clone, Debug)]
pub struct Checked {
    pub slots: Vec<SlotInfo>,
    pub profiles: Vec<ResolvedProfile>,
    /// The model's weight initialisation (`init { ... }`).
    pub init: WeightInit,
    /// Stage names (explicit or `stage1`, `stage2`, ...), one per `model.stages`.
    pub stage_names: Vec<String>,
}

/// The profile every model has: all bit-widths 32 (float), rules as declared.
pub const FLOAT_PROFILE: &str = "float";

impl Checked {
    /// Looks a profile up by name; `None` picks the spec's first profile (or `float`).
    pub fn profile(&self, name: Option<&str>) -> Option<&ResolvedProfile> {
        match name {
            None => self
                .profiles
                .iter()
                .find(|p| p.name != FLOAT_PROFILE)
                .or_else(|| self.profiles.first()),
            Some(n) => self.profiles.iter().find(|p| p.name == n),
        }
    }

    pub fn profile_names(&self) -> Vec<String> {
        self.profiles.iter().map(|p| p.name.clone()).collect()
    }
}

/// Runs every static check.
pub fn check(m: &Model) -> Result<Checked, Diagnostics> {
    let mut c = Checker {
        m,
        diags: Diagnostics::default(),
    };
    c.model_header();
    let block_names = c.duplicates(m.blocks.iter().map(|b| &b.name), "block");
    let _ = block_names;
    for b in &m.blocks {
        c.block(b);
    }
    c.recursion();
    crate::import::check(m, &mut c.diags);
    for sec in [&m.stem, &m.head, &m.fc].into_iter().flatten() {
        let mut vars = HashSet::new();
        c.ops(&sec.ops, &Scope::Section, &mut vars);
    }
    let stage_names = c.stages();
    let slots = c.slots(&stage_names);
    let model_acts = c.model_quant();
    let init = c.init();
    let model_rules = c.rules(&m.rules, false);
    let layout = c.layout();
    let mut profiles = Vec::new();
    let mut seen = HashSet::new();
    for p in &m.profiles {
        if !seen.insert(p.name.name.clone()) {
            let first = m
                .profiles
                .iter()
                .find(|q| q.name.name == p.name.name)
                .expect("seen");
            c.diags.push(
                Diagnostic::error(
                    "E0005",
                    format!("profile `{}` is defined more than once", p.name.name),
                )
                .primary(p.name.span, "defined again here")
                .secondary(first.name.span, "first defined here"),
            );
            continue;
        }
        if let Some(r) = c.profile(p, &slots, &stage_names, &layout, &model_acts, &model_rules) {
            profiles.push(r);
        }
    }
    if !seen.contains(FLOAT_PROFILE) {
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
    Ok(Checked {
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

impl<'m> Checker<'m> {
    fn model_header(&mut self) {
        let m = self.m;
        if !m.input.dims.is_empty() {
            if m.input.dims.len() != 3 {
                self.diags.push(
                    Diagnostic::error("E0203", "input shape must be channels x height x width")
                        .primary(
                            m.input.span,
                            format!("{} dimensions given", m.input.dims.len()),
                        ),
                );
            }
            for d in &m.input.dims {
                if d.value <= 0 || d.value > 1 << 20 {
                    self.diags.push(
                        Diagnostic::error("E0203", "input dimension out of range")
                            .primary(d.span, "must be between 1 and 1048576"),
                    );
                }
            }
        }
        match &m.classes {
            None => self.diags.push(
                Diagnostic::error("E0004", "missing `classes`")
                    .primary(
                        m.name.span,
                        "this model does not say how many classes it predicts",
                    )
                    .help("add `classes 10`"),
            ),
            Some(c) if c.value <= 0 || c.value > 1 << 24 => self.diags.push(
                Diagnostic::error("E0203", "number of classes out of range")
                    .primary(c.span, "must be at least 1"),
            ),
            _ => {}
        }
        if m.stem.is_none() && m.stages.is_empty() && m.head.is_none() && m.fc.is_none() {
            self.diags.push(
                Diagnostic::error("E0004", "the model has no layers")
                    .primary(m.name.span, "no stem, stage, head or fc")
                    .help("add at least `fc: flatten -> linear(classes)`"),
            );
        }
    }

    /// Reports repeated names; returns the set of names.
    fn duplicates<'a>(
        &mut self,
        names: impl Iterator<Item = &'a Ident>,
        what: &str,
    ) -> HashSet<String> {
        let mut seen: HashMap<String, Span> = HashMap::new();
        for n in names {
            if let Some(first) = seen.get(&n.name) {
                self.diags.push(
                    Diagnostic::error(
                        "E0005",
                        format!("{what} `{}` is defined more than once", n.name),
                    )
                    .primary(n.span, "defined again here")
                    .secondary(*first, "first defined here"),
                );
            } else {
                seen.insert(n.name.clone(), n.span);
            }
        }
        seen.into_keys().collect()
    }

    fn block(&mut self, b: &BlockDef) {
        self.duplicates(b.params.iter().map(|p| &p.name), "parameter");
        for p in &b.params {
            if RESERVED.contains(&p.name.name.as_str()) {
                self.diags.push(
                    Diagnostic::error("E0106", format!("`{}` cannot be a block parameter", p.name.name))
                        .primary(p.name.span, "reserved name")
                        .note("`x` is the block input, `cin` its channels, `classes` the model's; `ain`, `aout`, `w` are bit-widths"),
                );
            }
            if let Some(d) = &p.default {
                self.expr_names(d, &Scope::Block(b));
            }
        }
        let mut vars: HashSet<String> = HashSet::from(["x".to_string()]);
        let returns = self.stmts(&b.body, b, &mut vars);
        if !returns {
            self.diags.push(
                Diagnostic::error(
                    "E0105",
                    format!("block `{}` does not return a value", b.name.name),
                )
                .primary(
                    b.name.span,
                    "not every path through this block ends in `return`",
                )
                .help("end the block with `return y`"),
            );
        }
    }

    /// Checks statements; returns whether every path returns.
    fn stmts(&mut self, stmts: &[Stmt], b: &BlockDef, vars: &mut HashSet<String>) -> bool {
        let scope = Scope::Block(b);
        for (i, s) in stmts.iter().enumerate() {
            let returned = match s {
                Stmt::Assign { target, value, .. } => {
                    self.chain(value, &scope, vars);
                    vars.insert(target.name.clone());
                    false
                }
                Stmt::AddAssign { target, value, .. } => {
                    if !vars.contains(&target.name) {
                        self.undefined(target, vars);
                    }
                    self.chain(value, &scope, vars);
                    false
                }
                Stmt::If {
                    cond,
                    then,
                    otherwise,
                    ..
                } => {
                    self.expr_names(cond, &scope);
                    let mut v1 = vars.clone();
                    let mut v2 = vars.clone();
                    let r1 = self.stmts(then, b, &mut v1);
                    let r2 = self.stmts(otherwise, b, &mut v2);
                    // A name assigned in either branch counts as defined after
                    // the `if`; lowering reports it if the branch taken left it unset.
                    vars.extend(v1);
                    vars.extend(v2);
                    r1 && r2 && !otherwise.is_empty()
                }
                Stmt::Return { value, .. } => {
                    self.chain(value, &scope, vars);
                    true
                }
            };
            if returned {
                if let Some(next) = stmts.get(i + 1) {
                    self.diags.push(
                        Diagnostic::error("E0107", "statement after `return`")
                            .primary(next.span(), "never runs")
                            .secondary(s.span(), "the block returns here"),
                    );
                }
                return true;
            }
        }
        false
    }

    fn undefined(&mut self, name: &Ident, vars: &HashSet<String>) {
        let mut known: Vec<&str> = vars.iter().map(String::as_str).collect();
        known.sort();
        let d = Diagnostic::error("E0104", format!("undefined value `{}`", name.name))
            .primary(name.span, "not assigned before this point");
        self.diags.push(with_suggestion(d, &name.name, known));
    }

    fn chain(&mut self, c: &Chain, scope: &Scope, vars: &mut HashSet<String>) {
        if !vars.contains(&c.source.name) {
            self.undefined(&c.source, vars);
        }
        self.ops(&c.ops, scope, vars);
    }

    fn ops(&mut self, ops: &[Call], scope: &Scope, _vars: &mut HashSet<String>) {
        for op in ops {
            self.op_call(op, scope);
        }
    }

    fn op_call(&mut self, op: &Call, scope: &Scope) {
        let name = op.name.name.as_str();
        if let Some(sig) = op_sig(name) {
            let bound = bind_builtin(sig, op, &mut self.diags);
            for (p, e) in sig.iter().zip(bound) {
                let Some(e) = e else { continue };
                match p.kind {
                    ParamKind::Int | ParamKind::Bool => self.expr_names(e, scope),
                    ParamKind::Bits => {
                        bit_ref(e, &mut self.diags);
                    }
                    ParamKind::Quant => {
                        quantizer(e, &mut self.diags);
                    }
                }
            }
        } else if let Some(b) = self.m.blocks.iter().find(|b| b.name.name == name) {
            let bound = bind_block(b, &op.args, op.span, &mut self.diags);
            for e in bound.into_iter().flatten() {
                self.expr_names(e, scope);
            }
        } else {
            let mut known: Vec<&str> = OPS.iter().map(|(n, _)| *n).collect();
            known.extend(self.m.blocks.iter().map(|b| b.name.name.as_str()));
            let d = Diagnostic::error("E0110", format!("unknown op `{name}`")).primary(
                op.name.span,
                "neither a builtin op nor a block of this model",
            );
            let alias = OP_ALIASES
                .iter()
                .find(|(a, _)| name.eq_ignore_ascii_case(a))
                .map(|(_, op)| *op);
            self.diags.push(match alias {
                Some(op) => d
                    .help(format!("did you mean `{op}`?"))
                    .note(format!("known: {}", known.join(", "))),
                None => with_suggestion(d, name, known),
            });
        }
    }

    /// Checks that every name in an expression is in scope.
    fn expr_names(&mut self, e: &Expr, scope: &Scope) {
        match e {
            Expr::Name(n) => {
                let known = match scope {
                    Scope::Block(b) => {
                        n.name == "cin"
                            || n.name == "classes"
                            || b.params.iter().any(|p| p.name.name == n.name)
                    }
                    Scope::Section => n.name == "cin" || n.name == "classes",
                };
                if !known {
                    let mut cands = vec!["cin", "classes"];
                    if let Scope::Block(b) = scope {
                        cands.extend(b.params.iter().map(|p| p.name.name.as_str()));
                    }
                    let d = Diagnostic::error("E0108", format!("unknown name `{}`", n.name))
                        .primary(n.span, "not a parameter in scope");
                    self.diags.push(with_suggestion(d, &n.name, cands));
                }
            }
            Expr::Call(c) => {
                self.diags.push(
                    Diagnostic::error("E0109", "a call is not a value here")
                        .primary(c.span, "expected a number, a boolean or a parameter"),
                );
            }
            Expr::Unary { expr, .. } | Expr::Paren { expr, .. } => self.expr_names(expr, scope),
            Expr::Binary { lhs, rhs, .. } => {
                self.expr_names(lhs, scope);
                self.expr_names(rhs, scope);
            }
            Expr::Int(_) | Expr::Float { .. } | Expr::Bool { .. } => {}
        }
    }

    /// Block references form a graph; a cycle would instantiate forever.
    fn recursion(&mut self) {
        let m = self.m;
        let callees = |b: &BlockDef| -> Vec<(String, Span)> {
            let mut out = Vec::new();
            visit_calls(&b.body, &mut |c: &Call| {
                if m.blocks.iter().any(|x| x.name.name == c.name.name) {
                    out.push((c.name.name.clone(), c.name.span));
                }
            });
            out
        };
        let mut reported = HashSet::new();
        for start in &m.blocks {
            // Depth-first search for a path back to `start`.
            let mut stack: Vec<(String, Vec<(String, Span)>)> =
                vec![(start.name.name.clone(), Vec::new())];
            let mut visited = HashSet::new();
            while let Some((name, path)) = stack.pop() {
                if !visited.insert(name.clone()) {
                    continue;
                }
                let Some(b) = m.blocks.iter().find(|x| x.name.name == name) else {
                    continue;
                };
                for (callee, span) in callees(b) {
                    let mut p = path.clone();
                    p.push((callee.clone(), span));
                    if callee == start.name.name {
                        // Every block on the cycle refers to itself; report the cycle once.
                        let on_cycle = p.iter().any(|(n, _)| reported.contains(n));
                        if !on_cycle && reported.insert(start.name.name.clone()) {
                            reported.extend(p.iter().map(|(n, _)| n.clone()));
                            let cycle: Vec<String> = std::iter::once(start.name.name.clone())
                                .chain(p.iter().map(|(n, _)| n.clone()))
                                .collect();
                            let mut d = Diagnostic::error(
                                "E0111",
                                format!("block `{}` refers to itself", start.name.name),
                            )
                            .primary(p[0].1, "this use starts the cycle")
                            .note(format!("cycle: {}", cycle.join(" -> ")));
                            d = d.secondary(start.name.span, "block defined here");
                            self.diags.push(d);
                        }
                    } else {
                        stack.push((callee, p));
                    }
                }
            }
        }
    }

    fn stages(&mut self) -> Vec<String> {
        let m = self.m;
        let names: Vec<String> = m
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.name
                    .as_ref()
                    .map(|n| n.name.clone())
                    .unwrap_or_else(|| format!("stage{}", i + 1))
            })
            .collect();
        let idents: Vec<Ident> = m
            .stages
            .iter()
            .zip(&names)
            .map(|(s, n)| Ident::new(n.clone(), s.name.as_ref().map(|i| i.span).unwrap_or(s.span)))
            .collect();
        self.duplicates(idents.iter(), "stage");
        for s in &m.stages {
            if s.repeats.value < 1 || s.repeats.value > 4096 {
                self.diags.push(
                    Diagnostic::error("E0203", "stage repeats out of range")
                        .primary(s.repeats.span, "a stage repeats its block 1 to 4096 times"),
                );
            }
            match m.blocks.iter().find(|b| b.name.name == s.block.name) {
                Some(b) => {
                    let bound = bind_block(b, &s.args, s.span, &mut self.diags);
                    for e in bound.into_iter().flatten() {
                        self.expr_names(e, &Scope::Section);
                    }
                }
                None => {
                    let known: Vec<&str> = m.blocks.iter().map(|b| b.name.name.as_str()).collect();
                    let d = Diagnostic::error("E0101", format!("unknown block `{}`", s.block.name))
                        .primary(s.block.span, "no block of this name");
                    self.diags.push(with_suggestion(d, &s.block.name, known));
                }
            }
        }
        names
    }

    fn slots(&self, stage_names: &[String]) -> Vec<SlotInfo> {
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
    fn model_quant(&mut self) -> (Quantizer, WeightQuant) {
        let mut acts = Quantizer::Dorefa;
        let mut weights = WeightQuant::Dorefa;
        self.duplicates(self.m.quant.iter().map(|s| &s.key), "setting");
        for s in &self.m.quant {
            self.quant_setting(s, &mut acts, &mut weights);
        }
        (acts, weights)
    }

    fn quant_setting(&mut self, s: &Setting, acts: &mut Quantizer, weights: &mut WeightQuant) {
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
    fn init(&mut self) -> WeightInit {
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

    fn rules(&mut self, rules: &[RuleUse], in_profile: bool) -> Vec<Rule> {
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

    fn layout(&mut self) -> Option<Layout> {
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
    fn profile(
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
                    bits.iter_mut().for_each(|s| s.set(&o));
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
                        bits[s].set(o)
                    }
                }
                Rule::WideLast(o) => {
                    if let Some(s) = slots.iter().rposition(|s| s.kind != SlotKind::Stem) {
                        bits[s].set(o)
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
                    bits[t].set(&o);
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

    fn apply_list(
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

    fn overrides(&mut self, settings: &[Setting]) -> Option<SlotOverride> {
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

    fn scope_slots(
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

fn var_name(v: BitVar) -> &'static str {
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

/// Calls `f` on every op call in a body.
pub fn visit_calls(stmts: &[Stmt], f: &mut impl FnMut(&Call)) {
    for s in stmts {
        match s {
            Stmt::Assign { value, .. }
            | Stmt::AddAssign { value, .. }
            | Stmt::Return { value, .. } => value.ops.iter().for_each(&mut *f),
            Stmt::If {
                then, otherwise, ..
            } => {
                visit_calls(then, f);
                visit_calls(otherwise, f);
            }
        }
    }
}

/// Binds a builtin op's arguments to its parameters (positional, then named).
/// Reports unknown, repeated, missing and surplus arguments.
pub fn bind_builtin<'a>(
    sig: &[OpParam],
    call: &'a Call,
    diags: &mut Diagnostics,
) -> Vec<Option<&'a Expr>> {
    let names: Vec<&str> = sig.iter().map(|p| p.name).collect();
    let required: Vec<bool> = sig.iter().map(|p| p.required).collect();
    bind(
        &call.name.name,
        "op",
        &names,
        &required,
        &call.args,
        call.span,
        diags,
    )
}

/// Same for a block's parameters (a parameter with a default is optional;
/// `cin` is bound by the compiler).
pub fn bind_block<'a>(
    b: &BlockDef,
    args: &'a [Arg],
    span: Span,
    diags: &mut Diagnostics,
) -> Vec<Option<&'a Expr>> {
    let names: Vec<&str> = b.params.iter().map(|p| p.name.name.as_str()).collect();
    let required: Vec<bool> = b.params.iter().map(|p| p.default.is_none()).collect();
    bind(&b.name.name, "block", &names, &required, args, span, diags)
}

fn bind<'a>(
    what: &str,
    kind: &str,
    names: &[&str],
    required: &[bool],
    args: &'a [Arg],
    span: Span,
    diags: &mut Diagnostics,
) -> Vec<Option<&'a Expr>> {
    let mut bound: Vec<Option<&Expr>> = vec![None; names.len()];
    let mut positional = 0;
    let mut seen_named = false;
    let mut misplaced = false;
    for a in args {
        match &a.name {
            None => {
                if seen_named {
                    diags.push(
                        Diagnostic::error("E0114", "positional argument after a named one")
                            .primary(a.span, "move it before the named arguments"),
                    );
                    // What it was meant for is unknown: do not also report it missing.
                    misplaced = true;
                    continue;
                }
                if positional >= names.len() {
                    diags.push(
                        Diagnostic::error(
                            "E0115",
                            format!(
                                "{kind} `{what}` takes {} argument{}, got more",
                                names.len(),
                                plural(names.len())
                            ),
                        )
                        .primary(a.span, "surplus argument")
                        .note(signature(what, names, required)),
                    );
                    continue;
                }
                bound[positional] = Some(&a.value);
                positional += 1;
            }
            Some(n) => {
                seen_named = true;
                match names.iter().position(|p| *p == n.name) {
                    Some(i) if bound[i].is_some() => diags.push(
                        Diagnostic::error("E0116", format!("argument `{}` is given twice", n.name))
                            .primary(a.span, "given again here"),
                    ),
                    Some(i) => bound[i] = Some(&a.value),
                    None => {
                        let d = Diagnostic::error(
                            "E0103",
                            format!("{kind} `{what}` has no parameter `{}`", n.name),
                        )
                        .primary(n.span, "unknown parameter")
                        .note(signature(what, names, required));
                        let s = suggest(&n.name, names.iter().copied());
                        diags.push(match s {
                            Some(s) => d.help(format!("did you mean `{s}`?")),
                            None => d,
                        });
                    }
                }
            }
        }
    }
    // A repeated parameter name (reported as E0005) counts as given when
    // any parameter of that name is.
    let given = |n: &str| {
        names
            .iter()
            .zip(&bound)
            .any(|(m, b)| *m == n && b.is_some())
    };
    let mut missing: Vec<&str> = names
        .iter()
        .zip(required)
        .filter(|(n, r)| **r && !given(n))
        .map(|(n, _)| *n)
        .collect();
    missing.dedup();
    if !missing.is_empty() && !misplaced {
        let list: Vec<String> = missing.iter().map(|m| format!("`{m}`")).collect();
        diags.push(
            Diagnostic::error(
                "E0115",
                format!(
                    "{kind} `{what}` is missing argument{} {}",
                    plural(missing.len()),
                    list.join(", ")
                ),
            )
            .primary(span, "missing arguments")
            .note(signature(what, names, required)),
        );
    }
    bound
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn signature(what: &str, names: &[&str], required: &[bool]) -> String {
    let ps: Vec<String> = names
        .iter()
        .zip(required)
        .map(|(n, r)| if *r { n.to_string() } else { format!("{n}?") })
        .collect();
    format!("signature: {what}({})", ps.join(", "))
}

/// Interprets a bit-width argument: `ain`, `aout`, `w` or an integer literal.
pub fn bit_ref(e: &Expr, diags: &mut Diagnostics) -> Option<BitRef> {
    match e {
        Expr::Name(n) => match BitVar::parse(&n.name) {
            Some(v) => Some(BitRef::Var(v)),
            None => {
                let d = Diagnostic::error("E0131", format!("unknown bit variable `{}`", n.name))
                    .primary(n.span, "expected `ain`, `aout`, `w` or a bit-width");
                diags.push(with_suggestion(d, &n.name, vec!["ain", "aout", "w"]));
                None
            }
        },
        other => {
            literal_bits(other, diags, "expected `ain`, `aout`, `w` or an integer").map(BitRef::Lit)
        }
    }
}

/// Interprets a quantizer expression such as `mpact(10)`.
pub fn quantizer(e: &Expr, diags: &mut Diagnostics) -> Option<Quantizer> {
    let (name, args, span) = match e {
        Expr::Name(n) => (n, &[][..], n.span),
        Expr::Call(c) => (&c.name, &c.args[..], c.span),
        other => {
            diags.push(Diagnostic::error("E0117", "expected a quantizer").primary(
                other.span(),
                "write `dorefa`, `pact(a)`, `mpact(a)`, `pact_fixed(s)` or `none`",
            ));
            return None;
        }
    };
    let Some((_, arity)) = QUANTIZERS.iter().find(|(n, _)| *n == name.name) else {
        let d = Diagnostic::error("E0117", format!("unknown quantizer `{}`", name.name))
            .primary(name.span, "not a quantizer");
        diags.push(with_suggestion(
            d,
            &name.name,
            QUANTIZERS.iter().map(|(n, _)| *n).collect(),
        ));
        return None;
    };
    if args.len() != *arity {
        diags.push(
            Diagnostic::error(
                "E0115",
                format!(
                    "quantizer `{}` takes {} argument{}, got {}",
                    name.name,
                    arity,
                    plural(*arity),
                    args.len()
                ),
            )
            .primary(
                span,
                if *arity == 1 {
                    "give its initial clipping value, e.g. `mpact(10)`"
                } else {
                    "takes no arguments"
                },
            ),
        );
        return None;
    }
    let value = match args.first() {
        None => 0.0,
        Some(a) => {
            if a.name.is_some() {
                diags.push(
                    Diagnostic::error("E0103", "quantizer arguments are positional")
                        .primary(a.span, "remove the name"),
                );
                return None;
            }
            match &a.value {
                Expr::Int(i) => i.value as f64,
                Expr::Float { value, .. } => *value,
                other => {
                    diags.push(
                        Diagnostic::error("E0118", "expected a number")
                            .primary(other.span(), "the clipping value is a positive number"),
                    );
                    return None;
                }
            }
        }
    };
    if args.len() == 1 && !(value > 0.0 && value.is_finite()) {
        diags.push(
            Diagnostic::error("E0118", "clipping value must be positive")
                .primary(args[0].span, "must be > 0"),
        );
        return None;
    }
    Some(match name.name.as_str() {
        "dorefa" => Quantizer::Dorefa,
        "pact" => Quantizer::Pact { alpha: value },
        "mpact" => Quantizer::Mpact { alpha: value },
        "pact_fixed" => Quantizer::PactFixed { scale: value },
        _ => Quantizer::None,
    })
}

fn rule_from_call(c: &Call, diags: &mut Diagnostics) -> Option<Rule> {
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
        | "quantize_block_input" => {
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

/// An integer literal that is a valid bit-width; `label` says what else was expected.
fn literal_bits(e: &Expr, diags: &mut Diagnostics, label: &str) -> Option<u32> {
    match e {
        Expr::Int(i) if valid_bits(i.value) => Some(i.value as u32),
        Expr::Int(i) => {
            diags.push(bits_error(i.span, i.value));
            None
        }
        other => {
            diags.push(
                Diagnostic::error("E0204", "expected a bit-width").primary(other.span(), label),
            );
            None
        }
    }
}
