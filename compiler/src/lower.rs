//! Lowering: the resolved model + one resolved profile -> [`ir::Graph`].
//!
//! Input: the [`Resolved`] model (calls bound, blocks by index) and one of
//! its [`ResolvedProfile`]s. Nothing is looked up or bound here: lowering
//! evaluates argument expressions, asks each op module for its output shape
//! and applies the placement rules.
//! Output: a graph in topological order whose nodes carry shapes and bits.
//!
//! Blocks are instantiated once per stage repeat with concrete argument
//! values (`cin` bound to the incoming channels; `stride` applies to the
//! first repeat of a stage only). Placement rules are applied while a block
//! is lowered, where the roles they talk about are known: the operands of a
//! `+=`, the block's input and output. Shape errors found here point at the
//! op in the block template, with a note naming the instance.
//!
//! A block instance stops at its first error (later errors would be
//! consequences of it); the static checks in [`crate::check`] have already
//! reported every name-level problem of the file.

use crate::ast::*;
use crate::check::{
    Callee, JoinKind, ParamArg, Resolved, ResolvedBlock, ResolvedCall, ResolvedChain,
    ResolvedProfile, ResolvedSection, ResolvedSource, ResolvedStmt, Rule, SplitParts,
    FLOAT_PROFILE,
};
use crate::diag::{Diagnostic, Diagnostics};
use crate::ir::*;
use crate::ops::hooks::{
    error as err, quantizer_bits_ok, Args, LResult, NodeOp, OpEnv, StoredBits, Value,
};
use crate::ops::{ActQuant, Add, Concat, Input, Mul, NodeIo, Slice};
use crate::vocab::BitRef;
use std::collections::HashMap;
/// Deepest nesting of block calls.
const MAX_CALL_DEPTH: usize = 32;

type Env = HashMap<String, Value>;

/// A value flowing through a block: a node, and whether a conv lies on its
/// path since the block input (what `quantize_shortcut` asks).
#[derive(Clone, Copy, Debug)]
struct Val {
    node: NodeId,
    has_conv: bool,
}

/// Where ops are being lowered.
struct Ctx {
    slot: usize,
    prefix: String,
    env: Env,
    /// "in block `cell` as s2.0 (cout = 32, stride = 2)"; empty in sections.
    note: String,
    depth: usize,
}

/// Lowers the model under one profile.
pub fn lower(m: &Resolved, profile: &ResolvedProfile) -> Result<Graph, Diagnostics> {
    let checked = m;
    let mut l = Lowerer {
        m,
        p: profile,
        nodes: Vec::new(),
        counters: HashMap::new(),
    };
    match l.model() {
        Ok(output) => {
            let (bn_bits, pool_bits) = (l.bn_bits(), l.pool_bits());
            let slots = checked
                .slots
                .iter()
                .zip(&profile.bits)
                .map(|(s, b)| {
                    let (stage, index, block) = match s.stage {
                        Some((si, r)) => (
                            Some(checked.stage_names[si].clone()),
                            Some(r),
                            Some(m.blocks[m.stages[si].block].name.name.clone()),
                        ),
                        None => (None, None, None),
                    };
                    Slot {
                        name: s.name.clone(),
                        kind: s.kind,
                        stage,
                        index,
                        block,
                        w: b.w,
                        ain: b.ain,
                        aout: b.aout,
                    }
                })
                .collect();
            Ok(Graph {
                model: m.name.name.clone(),
                profile: profile.name.clone(),
                classes: m.classes.as_ref().map(|c| c.value).unwrap_or(0),
                weight_quant: profile.weights,
                init: checked.init,
                slots,
                nodes: l.nodes,
                output,
                bn_bits,
                pool_bits,
            })
        }
        Err(d) => {
            let mut ds = Diagnostics::default();
            let mut d = *d;
            if profile.name != FLOAT_PROFILE {
                d = d.note(format!("while lowering profile `{}`", profile.name));
            }
            ds.push(d);
            Err(ds)
        }
    }
}

struct Lowerer<'a> {
    m: &'a Resolved,
    p: &'a ResolvedProfile,
    nodes: Vec<Node>,
    counters: HashMap<String, usize>,
}

impl<'a> Lowerer<'a> {
    fn bn_bits(&self) -> u32 {
        self.stored_bits("bn_bits")
    }

    fn pool_bits(&self) -> u32 {
        self.stored_bits("pool_bits")
    }

    /// The bits a `bn_bits` / `pool_bits` rule sets; 32 without the rule.
    fn stored_bits(&self, rule: &str) -> u32 {
        self.p
            .rule(|r| match r {
                Rule::BnBits(b) | Rule::PoolBits(b) if r.name() == rule => Some(*b),
                _ => None,
            })
            .unwrap_or(32)
    }

    fn model(&mut self) -> LResult<NodeId> {
        let m = self.m;
        let input = self.push(
            0,
            "input".into(),
            Op::Input(Input),
            vec![],
            Shape(m.input.clone()),
            None,
            Origin::Spec { span: m.input_span },
        );
        let classes = m.classes.as_ref().map(|c| c.value).unwrap_or(0);
        let mut cur = Val {
            node: input,
            has_conv: false,
        };
        let mut slot = 0;
        if let Some(stem) = &m.stem {
            cur = self.section(stem, "stem", slot, cur, classes)?;
            slot += 1;
        }
        for stage in &m.stages {
            let block = &m.blocks[stage.block];
            for r in 0..stage.repeats {
                let name = &m.slots[slot].name;
                let mut env = Env::from([
                    ("cin".to_string(), Value::Int(self.channels(cur.node))),
                    ("classes".into(), Value::Int(classes)),
                ]);
                let outer = Ctx {
                    slot,
                    prefix: String::new(),
                    env: env.clone(),
                    note: String::new(),
                    depth: 0,
                };
                let mut given = self.given_args(&stage.args, &outer)?;
                if r > 0 {
                    if let Some(i) = block.params.iter().position(|p| p.name == "stride") {
                        given[i] = Some(Value::Int(1));
                    }
                }
                self.bind_params(block, &stage.args, given, &mut env, &outer)?;
                let args_note = describe_args(block, &env);
                let ctx = Ctx {
                    slot,
                    prefix: name.clone(),
                    env,
                    note: format!(
                        "in block `{}` instantiated as {name}{args_note}",
                        block.name.name
                    ),
                    depth: 0,
                };
                cur = self
                    .block(block, cur, ctx)
                    .map_err(|d| Box::new(d.secondary(stage.span, "instantiated by this stage")))?;
                slot += 1;
            }
        }
        if let Some(head) = &m.head {
            cur = self.section(head, "head", slot, cur, classes)?;
            slot += 1;
        }
        if let Some(fc) = &m.fc {
            cur = self.section(fc, "fc", slot, cur, classes)?;
        }
        let out = &self.nodes[cur.node].out_shape;
        if out.0 != [classes] {
            let span = [&m.fc, &m.head, &m.stem]
                .into_iter()
                .flatten()
                .next()
                .map(|s| s.ops.last().map_or(s.span, |c| c.span))
                .or_else(|| m.stages.last().map(|s| s.span))
                .unwrap_or(m.name.span);
            return Err(Box::new(
                Diagnostic::error(
                    "E0311",
                    format!("the model outputs {out}, not {classes} class scores"),
                )
                .primary(span, format!("the last layer produces {out}"))
                .secondary(
                    m.classes.as_ref().map(|c| c.span).unwrap_or(m.name.span),
                    "classes declared here",
                )
                .help("end the model with `fc: linear(classes)` after a `flatten`"),
            ));
        }
        Ok(cur.node)
    }

    /// The arguments written at a block call, evaluated in the caller's
    /// scope (`None` where the parameter takes its default).
    fn given_args(&self, args: &[ParamArg], ctx: &Ctx) -> LResult<Vec<Option<Value>>> {
        args.iter()
            .map(|a| match a {
                ParamArg::Given(e) => self.eval(e, ctx).map(Some),
                ParamArg::Default(_) => Ok(None),
            })
            .collect()
    }

    /// Binds a block's parameters into `env`: the values given, else each
    /// default evaluated in the block's scope as bound so far.
    fn bind_params(
        &self,
        b: &ResolvedBlock,
        args: &[ParamArg],
        given: Vec<Option<Value>>,
        env: &mut Env,
        ctx: &Ctx,
    ) -> LResult<()> {
        for ((p, a), v) in b.params.iter().zip(args).zip(given) {
            let v = match (v, a) {
                (Some(v), _) => v,
                (None, ParamArg::Default(d) | ParamArg::Given(d)) => {
                    let c = Ctx {
                        slot: ctx.slot,
                        prefix: ctx.prefix.clone(),
                        env: env.clone(),
                        note: ctx.note.clone(),
                        depth: ctx.depth,
                    };
                    self.eval(d, &c)?
                }
            };
            env.insert(p.name.clone(), v);
        }
        Ok(())
    }

    fn section(
        &mut self,
        s: &ResolvedSection,
        name: &str,
        slot: usize,
        cur: Val,
        classes: i64,
    ) -> LResult<Val> {
        let env = Env::from([
            ("cin".to_string(), Value::Int(self.channels(cur.node))),
            ("classes".into(), Value::Int(classes)),
        ]);
        let ctx = Ctx {
            slot,
            prefix: name.to_string(),
            env,
            note: String::new(),
            depth: 0,
        };
        let mut v = cur;
        for op in &s.ops {
            v = self.op(op, v, &ctx)?;
        }
        Ok(v)
    }

    fn channels(&self, n: NodeId) -> i64 {
        self.nodes[n].out_shape.0.first().copied().unwrap_or(0)
    }

    fn block(&mut self, b: &ResolvedBlock, input: Val, ctx: Ctx) -> Result<Val, Diagnostic> {
        self.block_inner(b, input, &ctx, true).map_err(|d| {
            if ctx.note.is_empty() {
                *d
            } else {
                d.note(ctx.note.clone())
            }
        })
    }

    /// Lowers a block body. `top` is true for a stage's block instance (a layer
    /// slot): the block input/output rules apply to those only, not to blocks
    /// called as ops inside another block.
    fn block_inner(&mut self, b: &ResolvedBlock, input: Val, ctx: &Ctx, top: bool) -> LResult<Val> {
        let mut x = Val {
            node: input.node,
            has_conv: false,
        };
        if let Some((bits, q, label)) = self.p.act_rule("quantize_block_input") {
            if top && !self.is_act(x.node) {
                x = self.insert_act(
                    x,
                    (bits, q, label),
                    ctx,
                    "quantize_block_input",
                    b.name.span,
                )?;
            }
        }
        let mut vars: HashMap<String, Val> = HashMap::from([("x".to_string(), x)]);
        let out = self.stmts(&b.body, &mut vars, ctx)?;
        let Some(mut out) = out else {
            return Err(err(
                "E0105",
                format!("block `{}` does not return a value", b.name.name),
                b.name.span,
                "no `return` on the path taken",
            ));
        };
        if let Some((bits, q, label)) = self.p.act_rule("quantize_block_output") {
            if top && !self.is_act(out.node) {
                out = self.insert_act(
                    out,
                    (bits, q, label),
                    ctx,
                    "quantize_block_output",
                    b.name.span,
                )?;
            }
        }
        Ok(out)
    }

    fn stmts(
        &mut self,
        stmts: &[ResolvedStmt],
        vars: &mut HashMap<String, Val>,
        ctx: &Ctx,
    ) -> LResult<Option<Val>> {
        for s in stmts {
            match s {
                ResolvedStmt::Assign { target, value } => {
                    let v = self.chain(value, vars, ctx)?;
                    vars.insert(target.name.clone(), v);
                }
                ResolvedStmt::AddAssign {
                    target,
                    value,
                    span,
                } => {
                    let lhs = *vars.get(&target.name).ok_or_else(|| undefined(target))?;
                    let rhs = self.chain(value, vars, ctx)?;
                    let v = self.add(lhs, target, rhs, value.span, *span, ctx)?;
                    vars.insert(target.name.clone(), v);
                }
                ResolvedStmt::MulAssign {
                    target,
                    value,
                    span,
                } => {
                    let lhs = *vars.get(&target.name).ok_or_else(|| undefined(target))?;
                    let rhs = self.chain(value, vars, ctx)?;
                    let v = self.mul(lhs, target, rhs, value.span, *span, ctx)?;
                    vars.insert(target.name.clone(), v);
                }
                ResolvedStmt::Unpack {
                    targets,
                    value,
                    split,
                    span,
                } => {
                    let v = self.chain(value, vars, ctx)?;
                    let parts = self.split(v, targets.len(), split, *span, ctx)?;
                    for (t, p) in targets.iter().zip(parts) {
                        vars.insert(t.name.clone(), p);
                    }
                }
                ResolvedStmt::If {
                    cond,
                    then,
                    otherwise,
                } => {
                    let taken = match self.eval(cond, ctx)? {
                        Value::Bool(b) => b,
                        other => {
                            return Err(Box::new(
                                Diagnostic::error(
                                    "E0310",
                                    format!("condition is {}, not a boolean", other.type_name()),
                                )
                                .primary(cond.span(), "expected `true` or `false`")
                                .help("compare it, e.g. `if stride != 1 { ... }`"),
                            ))
                        }
                    };
                    let branch = if taken { then } else { otherwise };
                    if let Some(v) = self.stmts(branch, vars, ctx)? {
                        return Ok(Some(v));
                    }
                }
                ResolvedStmt::Return { value } => return Ok(Some(self.chain(value, vars, ctx)?)),
            }
        }
        Ok(None)
    }

    fn chain(&mut self, c: &ResolvedChain, vars: &HashMap<String, Val>, ctx: &Ctx) -> LResult<Val> {
        let mut v =
            match &c.source {
                ResolvedSource::Name(n) => *vars.get(&n.name).ok_or_else(|| undefined(n))?,
                ResolvedSource::Join { kind, inputs, span } => {
                    let vals = inputs
                        .iter()
                        .map(|i| vars.get(&i.name).copied().ok_or_else(|| undefined(i)))
                        .collect::<LResult<Vec<Val>>>()?;
                    match (kind, &vals[..], &inputs[..]) {
                        (JoinKind::Concat, _, _) => self.concat(&vals, inputs, *span, ctx)?,
                        (JoinKind::Add, [a, b], [an, bn]) => {
                            self.add(*a, an, *b, bn.span, *span, ctx)?
                        }
                        (JoinKind::Mul, [a, b], [an, bn]) => {
                            self.mul(*a, an, *b, bn.span, *span, ctx)?
                        }
                        _ => return Err(err(
                            "E0900",
                            "internal error: a join with the wrong number of values",
                            *span,
                            "the checks should have reported this; please report it as a qatc bug",
                        )),
                    }
                }
            };
        for op in &c.ops {
            v = self.op(op, v, ctx)?;
        }
        Ok(v)
    }

    /// `lhs += rhs` (or `add(lhs, rhs)`): the residual add, with the
    /// `quantize_shortcut` and `quantize_after_add` rules.
    fn add(
        &mut self,
        lhs: Val,
        lhs_name: &Ident,
        rhs: Val,
        rhs_span: Span,
        span: Span,
        ctx: &Ctx,
    ) -> LResult<Val> {
        let mut rhs = rhs;
        if let Some((bits, q, label)) = self.p.act_rule("quantize_shortcut") {
            if rhs.has_conv && !self.is_act(rhs.node) {
                rhs = self.insert_act(rhs, (bits, q, label), ctx, "quantize_shortcut", rhs_span)?;
            }
        }
        let (ls, rs) = (
            self.nodes[lhs.node].out_shape.clone(),
            self.nodes[rhs.node].out_shape.clone(),
        );
        if ls != rs {
            return Err(Box::new(
                Diagnostic::error("E0302", format!("residual add of different shapes: {ls} += {rs}"))
                    .primary(rhs_span, format!("this is {rs}"))
                    .secondary(lhs_name.span, format!("`{}` is {ls}", lhs_name.name))
                    .help("give the shortcut a conv that matches channels and stride (e.g. `conv1x1(cout, stride)`)"),
            ));
        }
        let name = self.name(ctx, "add");
        let add = self.push(
            ctx.slot,
            name,
            Op::Add(Add),
            vec![lhs.node, rhs.node],
            ls,
            None,
            Origin::Spec { span },
        );
        let mut v = Val {
            node: add,
            has_conv: lhs.has_conv || rhs.has_conv,
        };
        if let Some((bits, q, label)) = self.p.act_rule("quantize_after_add") {
            v = self.insert_act(v, (bits, q, label), ctx, "quantize_after_add", span)?;
        }
        Ok(v)
    }

    /// `x *= g` (or `mul(x, g)`): `g` has `x`'s shape, or is a `C x 1 x 1`
    /// gate of `x`'s channels; the `quantize_gate` rule quantizes the product.
    fn mul(
        &mut self,
        x: Val,
        x_name: &Ident,
        g: Val,
        g_span: Span,
        span: Span,
        ctx: &Ctx,
    ) -> LResult<Val> {
        let (xs, gs) = (
            self.nodes[x.node].out_shape.clone(),
            self.nodes[g.node].out_shape.clone(),
        );
        let gate = xs.is_map() && gs.0 == [xs.0[0], 1, 1];
        if xs != gs && !gate {
            let help = if xs.is_map() {
                format!(
                    "a gate is {} x 1 x 1 (e.g. `adaptive_avgpool(1) -> conv1x1({}) -> sigmoid`), or {xs}",
                    xs.0[0], xs.0[0]
                )
            } else {
                format!("both values must be {xs}")
            };
            return Err(Box::new(
                Diagnostic::error("E0313", format!("cannot multiply {xs} by {gs}"))
                    .primary(g_span, format!("this is {gs}"))
                    .secondary(x_name.span, format!("`{}` is {xs}", x_name.name))
                    .help(help),
            ));
        }
        let name = self.name(ctx, "mul");
        let node = self.push(
            ctx.slot,
            name,
            Op::Mul(Mul),
            vec![x.node, g.node],
            xs,
            None,
            Origin::Spec { span },
        );
        let mut v = Val {
            node,
            has_conv: x.has_conv || g.has_conv,
        };
        if let Some((bits, q, label)) = self.p.act_rule("quantize_gate") {
            v = self.insert_act(v, (bits, q, label), ctx, "quantize_gate", span)?;
        }
        Ok(v)
    }

    /// `concat(a, b, ...)`: maps of one spatial size, channels summed; the
    /// `quantize_concat` rule places the one quantizer the inputs share.
    fn concat(&mut self, vals: &[Val], names: &[Ident], span: Span, ctx: &Ctx) -> LResult<Val> {
        let shapes: Vec<Shape> = vals
            .iter()
            .map(|v| self.nodes[v.node].out_shape.clone())
            .collect();
        for (s, n) in shapes.iter().zip(names) {
            if !s.is_map() {
                return Err(Box::new(
                    Diagnostic::error(
                        "E0312",
                        format!("`concat` joins feature maps, `{}` is {s}", n.name),
                    )
                    .primary(n.span, format!("this is {s}"))
                    .help("concatenate before `flatten`"),
                ));
            }
        }
        let (h, w) = (shapes[0].0[1], shapes[0].0[2]);
        for (s, n) in shapes.iter().zip(names).skip(1) {
            if (s.0[1], s.0[2]) != (h, w) {
                return Err(Box::new(
                    Diagnostic::error(
                        "E0312",
                        format!(
                            "`concat` of maps of different sizes: {}x{} and {}x{}",
                            h, w, s.0[1], s.0[2]
                        ),
                    )
                    .primary(n.span, format!("`{}` is {s}", n.name))
                    .secondary(
                        names[0].span,
                        format!("`{}` is {}", names[0].name, shapes[0]),
                    )
                    .help("give the branches the same strides (or pool the larger one)"),
                ));
            }
        }
        let channels: i64 = shapes.iter().map(|s| s.0[0]).sum();
        let out = Shape(vec![channels, h, w]);
        let name = self.name(ctx, "concat");
        check_size(&Concat, &shapes[0], &out, span)?;
        let node = self.push(
            ctx.slot,
            name,
            Op::Concat(Concat),
            vals.iter().map(|v| v.node).collect(),
            out,
            None,
            Origin::Spec { span },
        );
        let mut v = Val {
            node,
            has_conv: vals.iter().any(|v| v.has_conv),
        };
        if let Some((bits, q, label)) = self.p.act_rule("quantize_concat") {
            v = self.insert_act(v, (bits, q, label), ctx, "quantize_concat", span)?;
        }
        Ok(v)
    }

    /// `a, b = x -> split(...)`: `n` parts of `x`'s channels, equal or of
    /// the sizes written, one slice node each.
    fn split(
        &mut self,
        x: Val,
        n: usize,
        parts: &SplitParts,
        span: Span,
        ctx: &Ctx,
    ) -> LResult<Vec<Val>> {
        let shape = self.nodes[x.node].out_shape.clone();
        if !shape.is_map() {
            return Err(err(
                "E0303",
                format!("`split` needs a feature map, but its input is {shape}"),
                parts.span,
                "input is already flattened",
            ));
        }
        let c = shape.0[0];
        let sizes: Vec<i64> = if parts.sizes.is_empty() {
            if c % n as i64 != 0 {
                return Err(Box::new(
                    Diagnostic::error(
                        "E0314",
                        format!("{c} channels do not split into {n} equal parts"),
                    )
                    .primary(parts.span, format!("{n} parts of {c} channels"))
                    .help("give each part's channels: `split(c1, c2, ...)`"),
                ));
            }
            vec![c / n as i64; n]
        } else {
            let mut sizes = Vec::new();
            for e in &parts.sizes {
                let v = match self.eval(e, ctx)? {
                    Value::Int(i) if i >= 1 => i,
                    other => {
                        return Err(err(
                            "E0314",
                            format!("a part of a split is {other:?} channels"),
                            e.span(),
                            "expected a positive integer",
                        ))
                    }
                };
                sizes.push(v);
            }
            let total: i64 = sizes.iter().sum();
            if total != c {
                return Err(Box::new(
                    Diagnostic::error(
                        "E0314",
                        format!(
                            "the parts of the split sum to {total} channels, the input has {c}"
                        ),
                    )
                    .primary(parts.span, format!("{total} channels in all"))
                    .help("the sizes must add up to the input's channels"),
                ));
            }
            sizes
        };
        let mut start = 0;
        let mut out = Vec::new();
        for len in sizes {
            let name = self.name(ctx, "part");
            let node = self.push(
                ctx.slot,
                name,
                Op::Slice(Slice { start, len }),
                vec![x.node],
                Shape(vec![len, shape.0[1], shape.0[2]]),
                None,
                Origin::Spec { span },
            );
            out.push(Val {
                node,
                has_conv: x.has_conv,
            });
            start += len;
        }
        Ok(out)
    }

    fn is_act(&self, n: NodeId) -> bool {
        matches!(self.nodes[n].op, Op::ActQuant(_))
    }

    fn insert_act(
        &mut self,
        v: Val,
        (bits, q, label): (BitRef, Option<Quantizer>, Option<String>),
        ctx: &Ctx,
        rule: &str,
        span: Span,
    ) -> LResult<Val> {
        let bits = self.bits(bits, ctx.slot);
        let quantizer = q.unwrap_or_else(|| self.p.acts.clone());
        quantizer_bits_ok(&quantizer, bits, span, &format!("rule `{rule}` places"))?;
        // Named by role, not by count: a profile that switches a rule off
        // must not shift the names (and checkpoint keys) of other sites.
        let role = match rule {
            "quantize_block_input" => "in_act",
            "quantize_block_output" => "out_act",
            "quantize_shortcut" => "shortcut_act",
            "quantize_concat" => "concat_act",
            "quantize_gate" => "gate_act",
            _ => "add_act",
        };
        let name = match label {
            Some(l) => {
                let name = format!("{}.{l}", ctx.prefix);
                if self.nodes.iter().any(|n| n.name == name) {
                    return Err(err(
                        "E0005",
                        format!("rule `{rule}` names its quantizer `{name}`, which is taken"),
                        span,
                        "the rule inserts a quantizer here",
                    ));
                }
                name
            }
            None => self.name(ctx, role),
        };
        let n = self.push_act(
            ctx,
            name,
            quantizer,
            bits,
            v.node,
            Origin::Rule { rule: rule.into() },
        );
        Ok(Val {
            node: n,
            has_conv: v.has_conv,
        })
    }

    fn bits(&self, b: BitRef, slot: usize) -> u32 {
        b.resolve(&self.p.bits[slot])
    }

    /// `prefix.kindN`, counting per prefix and kind from 1.
    /// The node name of an op: `prefix.label` when the spec names it
    /// (`as label`), else `prefix.kindN`. Two nodes of one name are an error.
    fn node_name(&mut self, ctx: &Ctx, label: Option<&Ident>, kind: &str) -> LResult<String> {
        let name = match label {
            Some(l) => format!("{}.{}", ctx.prefix, l.name),
            None => self.name(ctx, kind),
        };
        if let Some(n) = self.nodes.iter().find(|n| n.name == name) {
            let span = label.map(|l| l.span).unwrap_or_default();
            let mut d = Diagnostic::error("E0005", format!("two layers are named `{name}`"))
                .primary(span, "this name is taken")
                .help("give the ops different names with `as NAME`");
            if let Origin::Spec { span: first } = n.origin {
                d = d.secondary(first, "first layer of that name");
            }
            return Err(Box::new(d));
        }
        Ok(name)
    }

    fn name(&mut self, ctx: &Ctx, kind: &str) -> String {
        let key = format!("{}.{kind}", ctx.prefix);
        let n = self.counters.entry(key.clone()).or_insert(0);
        *n += 1;
        format!("{key}{n}")
    }

    /// A fake-quantizer node reading `input`, with the input's shape.
    fn push_act(
        &mut self,
        ctx: &Ctx,
        name: String,
        quantizer: Quantizer,
        bits: u32,
        input: NodeId,
        origin: Origin,
    ) -> NodeId {
        let shape = self.nodes[input].out_shape.clone();
        self.push_full(
            ctx.slot,
            name,
            Op::ActQuant(ActQuant { quantizer }),
            vec![input],
            shape,
            None,
            bits,
            origin,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        slot: usize,
        name: String,
        op: Op,
        inputs: Vec<NodeId>,
        out: Shape,
        w_bit: Option<u32>,
        origin: Origin,
    ) -> NodeId {
        let out_bit = match op.hooks().stored_bits() {
            StoredBits::BatchNorm => self.bn_bits(),
            StoredBits::Pool => self.pool_bits(),
            StoredBits::Float => 32,
        };
        self.push_full(slot, name, op, inputs, out, w_bit, out_bit, origin)
    }

    #[allow(clippy::too_many_arguments)]
    fn push_full(
        &mut self,
        slot: usize,
        name: String,
        op: Op,
        inputs: Vec<NodeId>,
        out: Shape,
        w_bit: Option<u32>,
        out_bit: u32,
        origin: Origin,
    ) -> NodeId {
        let id = self.nodes.len();
        let (in_shape, a_bit) = match inputs.first() {
            Some(&i) => (self.nodes[i].out_shape.clone(), self.carried_bits(i)),
            None => (Shape(vec![]), 32),
        };
        self.nodes.push(Node {
            id,
            name,
            slot,
            op,
            inputs,
            in_shape,
            out_shape: out,
            w_bit,
            a_bit,
            out_bit,
            origin,
        });
        id
    }

    /// Bits of the quantized activation a node carries, seen through
    /// shape-only ops; 32 when it is not quantized.
    fn carried_bits(&self, n: NodeId) -> u32 {
        let node = &self.nodes[n];
        match &node.op {
            Op::ActQuant(a) if a.quantizer != Quantizer::None => node.out_bit,
            // Uniformly quantized only when every input is, at one width.
            Op::Concat(_) => {
                let bits: Vec<u32> = node.inputs.iter().map(|&i| self.carried_bits(i)).collect();
                match bits.split_first() {
                    Some((&b, rest)) if rest.iter().all(|&r| r == b) => b,
                    _ => 32,
                }
            }
            op if op.hooks().passes_input_bits() => node
                .inputs
                .first()
                .map(|&i| self.carried_bits(i))
                .unwrap_or(32),
            _ => 32,
        }
    }

    fn op(&mut self, call: &ResolvedCall, v: Val, ctx: &Ctx) -> LResult<Val> {
        let (op_call, args) = match &call.callee {
            Callee::Block { block, args } => return self.call_block(call, *block, args, v, ctx),
            Callee::Op { call, args } => (call, args),
        };
        let shape = self.nodes[v.node].out_shape.clone();
        let span = call.span;
        // With `weights none` the weights stay float whatever the slot's `w`.
        let w_bit = match self.p.weights {
            WeightQuant::Dorefa => self.p.bits[ctx.slot].w,
            WeightQuant::None => 32,
        };
        let eval = |e: &Expr| self.eval(e, ctx);
        let args = Args {
            bound: args,
            eval: &eval,
            span,
        };
        let env = OpEnv {
            call: op_call.name,
            input: &shape,
            span,
            w_bit,
            bits: self.p.bits[ctx.slot],
            acts: &self.p.acts,
        };
        let lowered = (op_call.lower)(&args, &env)?;
        let hooks = lowered.op.hooks();
        let origin = Origin::Spec { span };
        let has_conv = v.has_conv || matches!(lowered.op, Op::Conv(_));
        let node = match lowered.out_bit {
            // A quantizer sets its own output bits.
            Some(bits) => {
                let name = self.node_name(ctx, call.label.as_ref(), hooks.name_stem())?;
                self.push_full(
                    ctx.slot,
                    name,
                    lowered.op,
                    vec![v.node],
                    lowered.out,
                    None,
                    bits,
                    origin,
                )
            }
            None => {
                check_size(hooks, &shape, &lowered.out, span)?;
                let stem = hooks.name_stem();
                let w = hooks.has_weights().then_some(w_bit);
                let name = self.node_name(ctx, call.label.as_ref(), stem)?;
                self.push(
                    ctx.slot,
                    name,
                    lowered.op,
                    vec![v.node],
                    lowered.out,
                    w,
                    origin,
                )
            }
        };
        Ok(Val { node, has_conv })
    }

    fn call_block(
        &mut self,
        call: &ResolvedCall,
        block: usize,
        args: &[ParamArg],
        v: Val,
        ctx: &Ctx,
    ) -> LResult<Val> {
        let b = &self.m.blocks[block];
        if ctx.depth >= MAX_CALL_DEPTH {
            return Err(err(
                "E0111",
                "blocks nested too deeply",
                call.span,
                format!("more than {MAX_CALL_DEPTH} levels of block calls"),
            ));
        }
        let given = self.given_args(args, ctx)?;
        let classes = ctx.env.get("classes").copied().unwrap_or(Value::Int(0));
        let mut env = Env::from([
            ("cin".to_string(), Value::Int(self.channels(v.node))),
            ("classes".into(), classes),
        ]);
        self.bind_params(b, args, given, &mut env, ctx)?;
        let prefix = self.node_name(ctx, call.label.as_ref(), &b.name.name)?;
        let inner = Ctx {
            slot: ctx.slot,
            prefix,
            env,
            note: ctx.note.clone(),
            depth: ctx.depth + 1,
        };
        let out = self.block_inner(b, v, &inner, false)?;
        Ok(Val {
            node: out.node,
            has_conv: v.has_conv || out.has_conv || self.nodes[out.node].id != v.node,
        })
    }

    fn eval(&self, e: &Expr, ctx: &Ctx) -> LResult<Value> {
        Ok(match e {
            Expr::Int(i) => Value::Int(i.value),
            Expr::Float { value, .. } => Value::Float(*value),
            Expr::Bool { value, .. } => Value::Bool(*value),
            Expr::Name(n) => *ctx.env.get(&n.name).ok_or_else(|| {
                err(
                    "E0108",
                    format!("unknown name `{}`", n.name),
                    n.span,
                    "not in scope",
                )
            })?,
            Expr::Call(c) => {
                return Err(err(
                    "E0109",
                    "a call is not a value here",
                    c.span,
                    "expected a number",
                ))
            }
            Expr::Paren { expr, .. } => self.eval(expr, ctx)?,
            Expr::Unary { op, expr, span } => match (op, self.eval(expr, ctx)?) {
                (UnOp::Neg, Value::Int(i)) => {
                    Value::Int(i.checked_neg().ok_or_else(|| overflow(*span))?)
                }
                (UnOp::Neg, Value::Float(f)) => Value::Float(-f),
                (UnOp::Not, Value::Bool(b)) => Value::Bool(!b),
                (op, v) => {
                    return Err(err(
                        "E0310",
                        format!(
                            "cannot apply `{}` to {}",
                            if *op == UnOp::Neg { "-" } else { "not" },
                            v.type_name()
                        ),
                        *span,
                        "type mismatch",
                    ))
                }
            },
            Expr::Binary { op, lhs, rhs, span } => {
                let (a, b) = (self.eval(lhs, ctx)?, self.eval(rhs, ctx)?);
                binary(*op, a, b, *span)?
            }
        })
    }
}

/// Most elements in one activation tensor, and most weights or MACs in one
/// layer: far beyond any real CNN, and low enough that every total of the
/// summary fits in 64 bits.
const MAX_ELEMENTS: i128 = 1 << 32;
const MAX_LAYER_MACS: i128 = 1 << 44;

fn check_size(op: &dyn NodeOp, input: &Shape, out: &Shape, span: Span) -> LResult<()> {
    let numel = out.0.iter().map(|&d| d as i128).product::<i128>();
    let io = NodeIo {
        name: "",
        in_shape: input,
        out_shape: out,
        w_bit: None,
        out_bit: 32,
    };
    let size = op.size(&io);
    let (weights, macs) = (size.weights, size.macs);
    if numel > MAX_ELEMENTS || weights > MAX_ELEMENTS || macs > MAX_LAYER_MACS {
        return Err(err(
            "E0309",
            "layer too large",
            span,
            format!(
                "{numel} output elements, {weights} weights, {macs} MACs: beyond qatc's limits"
            ),
        ));
    }
    Ok(())
}

fn overflow(span: Span) -> Box<Diagnostic> {
    err(
        "E0309",
        "arithmetic overflow",
        span,
        "value does not fit in 64 bits",
    )
}

fn binary(op: BinOp, a: Value, b: Value, span: Span) -> LResult<Value> {
    use Value::*;
    let mismatch = || {
        err(
            "E0310",
            format!(
                "cannot apply `{}` to {} and {}",
                op.symbol(),
                a.type_name(),
                b.type_name()
            ),
            span,
            "type mismatch",
        )
    };
    Ok(match op {
        BinOp::Or | BinOp::And => match (a, b) {
            (Bool(x), Bool(y)) => Bool(if op == BinOp::Or { x || y } else { x && y }),
            _ => return Err(mismatch()),
        },
        BinOp::Eq | BinOp::Ne => {
            let eq = match (a, b) {
                (Int(x), Int(y)) => x == y,
                (Bool(x), Bool(y)) => x == y,
                (Int(_) | Float(_), Int(_) | Float(_)) => as_f(a) == as_f(b),
                _ => return Err(mismatch()),
            };
            Bool(if op == BinOp::Eq { eq } else { !eq })
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let (x, y) = match (a, b) {
                (Int(_) | Float(_), Int(_) | Float(_)) => (as_f(a), as_f(b)),
                _ => return Err(mismatch()),
            };
            Bool(match op {
                BinOp::Lt => x < y,
                BinOp::Le => x <= y,
                BinOp::Gt => x > y,
                _ => x >= y,
            })
        }
        _ => match (a, b) {
            (Int(x), Int(y)) => {
                if matches!(op, BinOp::Div | BinOp::Rem) && y == 0 {
                    return Err(err("E0309", "division by zero", span, "divisor is 0"));
                }
                let r = match op {
                    BinOp::Add => x.checked_add(y),
                    BinOp::Sub => x.checked_sub(y),
                    BinOp::Mul => x.checked_mul(y),
                    BinOp::Div => x.checked_div(y),
                    _ => x.checked_rem(y),
                };
                Int(r.ok_or_else(|| overflow(span))?)
            }
            (Int(_) | Float(_), Int(_) | Float(_)) => {
                let (x, y) = (as_f(a), as_f(b));
                let r = match op {
                    BinOp::Add => x + y,
                    BinOp::Sub => x - y,
                    BinOp::Mul => x * y,
                    BinOp::Div => x / y,
                    _ => x % y,
                };
                if !r.is_finite() {
                    return Err(overflow(span));
                }
                Float(r)
            }
            _ => return Err(mismatch()),
        },
    })
}

fn as_f(v: Value) -> f64 {
    match v {
        Value::Int(i) => i as f64,
        Value::Float(f) => f,
        Value::Bool(_) => f64::NAN,
    }
}

fn undefined(n: &Ident) -> Box<Diagnostic> {
    err(
        "E0104",
        format!("`{}` has no value on this path", n.name),
        n.span,
        "assigned only in a branch that was not taken",
    )
}

fn describe_args(b: &ResolvedBlock, env: &Env) -> String {
    let parts: Vec<String> = b
        .params
        .iter()
        .filter_map(|p| {
            env.get(&p.name).map(|v| match v {
                Value::Int(i) => format!("{} = {i}", p.name),
                Value::Float(f) => format!("{} = {f}", p.name),
                Value::Bool(x) => format!("{} = {x}", p.name),
            })
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}
