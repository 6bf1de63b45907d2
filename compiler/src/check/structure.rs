//! Names and structure: the model header, blocks and their statements,
//! op and block calls (bound once, here), recursion, stages.

use super::binding::{bind_block, bind_builtin, bit_ref, quantizer};
use super::*;
use crate::ops::{self, hooks::BoundArg, ParamKind};
use std::collections::{HashMap, HashSet};

/// Names a block parameter may not take.
const RESERVED: &[&str] = &["x", "cin", "classes", "ain", "aout", "w"];

impl<'m> Checker<'m> {
    pub(super) fn model_header(&mut self) {
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
    pub(super) fn duplicates<'a>(
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

    /// Checks a block definition and resolves its body.
    pub(super) fn block(&mut self, b: &BlockDef) -> ResolvedBlock {
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
        let mut body = Vec::new();
        let returns = self.stmts(&b.body, b, &mut vars, &mut body);
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
        ResolvedBlock {
            name: b.name.clone(),
            params: b.params.iter().map(|p| p.name.clone()).collect(),
            body,
        }
    }

    /// Checks statements into `out`; returns whether every path returns.
    pub(super) fn stmts(
        &mut self,
        stmts: &[Stmt],
        b: &BlockDef,
        vars: &mut HashSet<String>,
        out: &mut Vec<ResolvedStmt>,
    ) -> bool {
        let scope = Scope::Block(b);
        for (i, s) in stmts.iter().enumerate() {
            let returned = match s {
                Stmt::Assign { target, value, .. } => {
                    let value = self.chain(value, &scope, vars);
                    out.push(ResolvedStmt::Assign {
                        target: target.clone(),
                        value,
                    });
                    vars.insert(target.name.clone());
                    false
                }
                Stmt::AddAssign {
                    target,
                    value,
                    span,
                } => {
                    if !vars.contains(&target.name) {
                        self.undefined(target, vars);
                    }
                    let value = self.chain(value, &scope, vars);
                    out.push(ResolvedStmt::AddAssign {
                        target: target.clone(),
                        value,
                        span: *span,
                    });
                    false
                }
                Stmt::MulAssign {
                    target,
                    value,
                    span,
                } => {
                    if !vars.contains(&target.name) {
                        self.undefined(target, vars);
                    }
                    let value = self.chain(value, &scope, vars);
                    out.push(ResolvedStmt::MulAssign {
                        target: target.clone(),
                        value,
                        span: *span,
                    });
                    false
                }
                Stmt::Unpack {
                    targets,
                    value,
                    span,
                } => {
                    self.duplicates(targets.iter(), "name");
                    if let Some(s) = self.unpack(targets, value, &scope, vars, *span) {
                        out.push(s);
                    }
                    vars.extend(targets.iter().map(|t| t.name.clone()));
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
                    let (mut s1, mut s2) = (Vec::new(), Vec::new());
                    let r1 = self.stmts(then, b, &mut v1, &mut s1);
                    let r2 = self.stmts(otherwise, b, &mut v2, &mut s2);
                    out.push(ResolvedStmt::If {
                        cond: cond.clone(),
                        then: s1,
                        otherwise: s2,
                    });
                    // A name assigned in either branch counts as defined after
                    // the `if`; lowering reports it if the branch taken left it unset.
                    vars.extend(v1);
                    vars.extend(v2);
                    r1 && r2 && !otherwise.is_empty()
                }
                Stmt::Return { value, .. } => {
                    let value = self.chain(value, &scope, vars);
                    out.push(ResolvedStmt::Return { value });
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

    pub(super) fn undefined(&mut self, name: &Ident, vars: &HashSet<String>) {
        let mut known: Vec<&str> = vars.iter().map(String::as_str).collect();
        known.sort();
        let d = Diagnostic::error("E0104", format!("undefined value `{}`", name.name))
            .primary(name.span, "not assigned before this point");
        self.diags.push(with_suggestion(d, &name.name, known));
    }

    pub(super) fn chain(
        &mut self,
        c: &Chain,
        scope: &Scope,
        vars: &mut HashSet<String>,
    ) -> ResolvedChain {
        let source = self.source(&c.source, vars);
        ResolvedChain {
            source,
            ops: self.ops(&c.ops, scope),
            span: c.span,
        }
    }

    /// A chain's source: a name in scope, or a join of names.
    fn source(&mut self, s: &Source, vars: &HashSet<String>) -> ResolvedSource {
        match s {
            Source::Name(n) => {
                if !vars.contains(&n.name) {
                    self.undefined(n, vars);
                }
                ResolvedSource::Name(n.clone())
            }
            Source::Join(j) => {
                for i in &j.inputs {
                    if !vars.contains(&i.name) {
                        self.undefined(i, vars);
                    }
                }
                let kind = match JoinKind::parse(&j.op.name) {
                    Some(k) => k,
                    None => {
                        let d = Diagnostic::error("E0124", format!("unknown join `{}`", j.op.name))
                            .primary(j.op.span, "not a way to join values");
                        let alias = JOIN_ALIASES
                            .iter()
                            .find(|(a, _)| j.op.name.eq_ignore_ascii_case(a))
                            .map(|(_, k)| *k);
                        self.diags.push(match alias {
                            Some(k) => d
                                .help(format!("did you mean `{k}`?"))
                                .note(format!("joins: {}", JoinKind::NAMES.join(", "))),
                            None => with_suggestion(d, &j.op.name, JoinKind::NAMES.to_vec()),
                        });
                        JoinKind::Concat
                    }
                };
                let n = j.inputs.len();
                let ok = match kind {
                    JoinKind::Concat => n >= 2,
                    JoinKind::Add | JoinKind::Mul => n == 2,
                };
                if !ok {
                    let want = if kind == JoinKind::Concat {
                        "two or more values"
                    } else {
                        "two values"
                    };
                    self.diags.push(
                        Diagnostic::error(
                            "E0125",
                            format!("`{}` joins {want}, got {n}", j.op.name),
                        )
                        .primary(
                            j.span,
                            format!("{n} value{} here", if n == 1 { "" } else { "s" }),
                        ),
                    );
                }
                ResolvedSource::Join {
                    kind,
                    inputs: j.inputs.clone(),
                    span: j.span,
                }
            }
        }
    }

    /// `a, b = chain -> split(...)`: the chain must end in `split`, whose
    /// parts match the names.
    fn unpack(
        &mut self,
        targets: &[Ident],
        value: &Chain,
        scope: &Scope,
        vars: &mut HashSet<String>,
        span: Span,
    ) -> Option<ResolvedStmt> {
        let Some((last, rest)) = value
            .ops
            .split_last()
            .filter(|(l, _)| l.name.name == "split")
        else {
            self.diags.push(
                Diagnostic::error("E0126", format!("{} names for one value", targets.len()))
                    .primary(value.span, "this gives one value")
                    .help("end the chain in `split` to name its parts: `a, b = x -> split(2)`"),
            );
            return None;
        };
        if last.label.is_some() || last.args.iter().any(|a| a.name.is_some()) {
            self.diags.push(
                Diagnostic::error("E0126", "`split` takes channel counts only").primary(
                    last.span,
                    "write `split`, `split(n)` or `split(c1, c2, ...)`",
                ),
            );
            return None;
        }
        let n = targets.len();
        let sizes: Vec<Expr> = match last.args.len() {
            0 => Vec::new(),
            1 => {
                // `split(n)`: n equal parts, one per name.
                let Expr::Int(i) = &last.args[0].value else {
                    self.diags.push(
                        Diagnostic::error(
                            "E0126",
                            "`split(n)` takes the number of parts as a literal",
                        )
                        .primary(last.args[0].span, "write the number of names here")
                        .help("or give each part's channels: `split(c1, c2)`"),
                    );
                    return None;
                };
                if i.value != n as i64 {
                    self.diags.push(
                        Diagnostic::error(
                            "E0126",
                            format!("`split({})` gives {} parts, named {n}", i.value, i.value),
                        )
                        .primary(last.span, format!("{} parts", i.value))
                        .secondary(targets[0].span, format!("{n} names")),
                    );
                    return None;
                }
                Vec::new()
            }
            k if k == n => last.args.iter().map(|a| a.value.clone()).collect(),
            k => {
                self.diags.push(
                    Diagnostic::error("E0126", format!("`split` into {k} parts, named {n}"))
                        .primary(last.span, format!("{k} parts"))
                        .secondary(targets[0].span, format!("{n} names")),
                );
                return None;
            }
        };
        for e in &sizes {
            self.expr_names(e, scope);
        }
        let chain = Chain {
            source: value.source.clone(),
            ops: rest.to_vec(),
            span: value.span,
        };
        let value = self.chain(&chain, scope, vars);
        Some(ResolvedStmt::Unpack {
            targets: targets.to_vec(),
            value,
            split: SplitParts {
                sizes,
                span: last.span,
            },
            span,
        })
    }

    /// Checks and binds the calls of a chain or section. A call that does
    /// not resolve is reported and left out (the model is not lowered then).
    pub(super) fn ops(&mut self, ops: &[Call], scope: &Scope) -> Vec<ResolvedCall> {
        let mut out = Vec::new();
        for op in ops {
            if op.name.name == "split" {
                // Only the last op of `a, b = ...` (taken off the chain there).
                self.diags.push(
                    Diagnostic::error("E0126", "`split` gives several values")
                        .primary(op.span, "its parts need names")
                        .help("split last in a chain and name each part: `a, b = x -> split(2)`"),
                );
                continue;
            }
            out.extend(self.op_call(op, scope));
        }
        out
    }

    pub(super) fn op_call(&mut self, op: &Call, scope: &Scope) -> Option<ResolvedCall> {
        let name = op.name.name.as_str();
        let callee = if let Some(call) = ops::call(name) {
            let before = self.diags.items.len();
            let bound = bind_builtin(call.params, op, &mut self.diags);
            let mut args = Vec::with_capacity(bound.len());
            for (p, e) in call.params.iter().zip(bound) {
                args.push(match e {
                    None => None,
                    Some(e) => match p.kind {
                        ParamKind::Int | ParamKind::Bool | ParamKind::Float => {
                            self.expr_names(e, scope);
                            Some(BoundArg::Expr(e.clone()))
                        }
                        ParamKind::Bits => bit_ref(e, &mut self.diags).map(BoundArg::Bits),
                        ParamKind::Quant => quantizer(e, &mut self.diags).map(BoundArg::Quant),
                    },
                });
            }
            if self.diags.items.len() > before {
                return None;
            }
            Callee::Op { call, args }
        } else if let Some(block) = self.m.blocks.iter().position(|b| b.name.name == name) {
            let b = &self.m.blocks[block];
            let bound = bind_block(b, &op.args, op.span, &mut self.diags);
            for e in bound.iter().flatten() {
                self.expr_names(e, scope);
            }
            let args = param_args(b, &bound)?;
            Callee::Block { block, args }
        } else {
            let mut known: Vec<&str> = ops::CALLS.iter().map(|c| c.name).collect();
            known.extend(self.m.blocks.iter().map(|b| b.name.name.as_str()));
            let d = Diagnostic::error("E0110", format!("unknown op `{name}`")).primary(
                op.name.span,
                "neither a builtin op nor a block of this model",
            );
            // Another framework's name, or ours in another case (`SiLU`).
            let alias = ops::ALIASES
                .iter()
                .find(|(a, _)| name.eq_ignore_ascii_case(a))
                .map(|(_, op)| *op)
                .or_else(|| known.iter().copied().find(|k| name.eq_ignore_ascii_case(k)));
            self.diags.push(match alias {
                Some(op) => d
                    .help(format!("did you mean `{op}`?"))
                    .note(format!("known: {}", known.join(", "))),
                None => with_suggestion(d, name, known),
            });
            return None;
        };
        Some(ResolvedCall {
            callee,
            label: op.label.clone(),
            span: op.span,
        })
    }

    /// Checks that every name in an expression is in scope.
    pub(super) fn expr_names(&mut self, e: &Expr, scope: &Scope) {
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
    pub(super) fn recursion(&mut self) {
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

    /// Checks the stages; returns their names and the resolved stages.
    pub(super) fn stages(&mut self) -> (Vec<String>, Vec<ResolvedStage>) {
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
        let mut resolved = Vec::new();
        for s in &m.stages {
            if s.repeats.value < 1 || s.repeats.value > 4096 {
                self.diags.push(
                    Diagnostic::error("E0203", "stage repeats out of range")
                        .primary(s.repeats.span, "a stage repeats its block 1 to 4096 times"),
                );
            }
            match m.blocks.iter().position(|b| b.name.name == s.block.name) {
                Some(block) => {
                    let b = &m.blocks[block];
                    let bound = bind_block(b, &s.args, s.span, &mut self.diags);
                    for e in bound.iter().flatten() {
                        self.expr_names(e, &Scope::Section);
                    }
                    if let Some(args) = param_args(b, &bound) {
                        resolved.push(ResolvedStage {
                            block,
                            args,
                            repeats: s.repeats.value.clamp(1, 4096) as usize,
                            span: s.span,
                        });
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
        (names, resolved)
    }
}

/// Per parameter of block `b`, the argument bound to it or its default;
/// `None` when a required one is missing (already reported).
fn param_args(b: &BlockDef, bound: &[Option<&Expr>]) -> Option<Vec<ParamArg>> {
    b.params
        .iter()
        .zip(bound)
        .map(|(p, e)| match (e, &p.default) {
            (Some(e), _) => Some(ParamArg::Given((*e).clone())),
            (None, Some(d)) => Some(ParamArg::Default(d.clone())),
            (None, None) => None,
        })
        .collect()
}

/// Names of joins in other frameworks, for did-you-mean hints.
const JOIN_ALIASES: &[(&str, &str)] = &[
    ("cat", "concat"),
    ("concatenate", "concat"),
    ("stack", "concat"),
    ("multiply", "mul"),
    ("prod", "mul"),
    ("sum", "add"),
    ("plus", "add"),
];

/// Calls `f` on every op call in a body.
pub fn visit_calls(stmts: &[Stmt], f: &mut impl FnMut(&Call)) {
    for s in stmts {
        match s {
            Stmt::Assign { value, .. }
            | Stmt::AddAssign { value, .. }
            | Stmt::MulAssign { value, .. }
            | Stmt::Unpack { value, .. }
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
