//! [`ast::Model`] -> canonical `.qspec` text.
//!
//! Parsing the output gives back an equal AST (the round-trip tests check
//! it). Comments are not part of the AST and are therefore not kept.

use crate::ast::*;
use std::fmt::Write;

/// Prints a model as `.qspec` text in the canonical layout.
pub fn print_qspec(m: &Model) -> String {
    let mut p = Printer {
        out: String::new(),
        indent: 0,
    };
    p.model(m);
    p.out
}

pub fn expr_to_string(e: &Expr) -> String {
    let mut s = String::new();
    write_expr(&mut s, e);
    s
}

pub fn call_to_string(c: &Call) -> String {
    let mut s = String::new();
    write_call(&mut s, c);
    s
}

pub fn ops_to_string(ops: &[Call]) -> String {
    ops.iter()
        .map(call_to_string)
        .collect::<Vec<_>>()
        .join(" -> ")
}

pub fn chain_to_string(c: &Chain) -> String {
    let mut s = match &c.source {
        Source::Name(n) => n.name.clone(),
        Source::Join(j) => {
            let names: Vec<&str> = j.inputs.iter().map(|i| i.name.as_str()).collect();
            format!("{}({})", j.op.name, names.join(", "))
        }
    };
    for op in &c.ops {
        s.push_str(" -> ");
        write_call(&mut s, op);
    }
    s
}

pub fn arg_to_string(a: &Arg) -> String {
    match &a.name {
        Some(n) => format!("{}: {}", n.name, expr_to_string(&a.value)),
        None => expr_to_string(&a.value),
    }
}

pub fn args_to_string(args: &[Arg]) -> String {
    args.iter()
        .map(arg_to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn param_to_string(p: &Param) -> String {
    match &p.default {
        Some(d) => format!("{} = {}", p.name.name, expr_to_string(d)),
        None => p.name.name.clone(),
    }
}

pub fn rule_to_string(r: &RuleUse) -> String {
    format!(
        "{}{}",
        if r.disable { "-" } else { "" },
        call_to_string(&r.call)
    )
}

pub fn binding_to_string(b: &ListBinding) -> String {
    let off = match b.offset {
        0 => String::new(),
        o if o > 0 => format!(" + {o}"),
        o => format!(" - {}", -o),
    };
    format!("{} = {}[i{off}]", b.var.name, b.list.name)
}

pub fn entries_to_string(entries: &[ListEntry]) -> String {
    entries
        .iter()
        .map(|e| match &e.repeat {
            Some(r) => format!("{} x{}", e.value.value, r.value),
            None => e.value.value.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn shape_to_string(s: &InputShape) -> String {
    s.dims
        .iter()
        .map(|d| d.value.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

pub fn scope_to_string(t: &ScopeTarget) -> String {
    match t {
        ScopeTarget::All(_) => "all".into(),
        ScopeTarget::Stem(_) => "stem".into(),
        ScopeTarget::Head(_) => "head".into(),
        ScopeTarget::Fc(_) => "fc".into(),
        ScopeTarget::Stage(s) => format!("stage {}", s.name),
        ScopeTarget::Block { stage, index, .. } => format!("block {}[{}]", stage.name, index.value),
    }
}

pub fn stmt_head_to_string(s: &Stmt) -> Option<String> {
    match s {
        Stmt::Assign { target, value, .. } => {
            Some(format!("{} = {}", target.name, chain_to_string(value)))
        }
        Stmt::AddAssign { target, value, .. } => {
            Some(format!("{} += {}", target.name, chain_to_string(value)))
        }
        Stmt::MulAssign { target, value, .. } => {
            Some(format!("{} *= {}", target.name, chain_to_string(value)))
        }
        Stmt::Unpack { targets, value, .. } => {
            let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
            Some(format!("{} = {}", names.join(", "), chain_to_string(value)))
        }
        Stmt::Return { value, .. } => Some(format!("return {}", chain_to_string(value))),
        Stmt::If { .. } => None,
    }
}

fn write_call(s: &mut String, c: &Call) {
    s.push_str(&c.name.name);
    if c.parens || !c.args.is_empty() {
        s.push('(');
        s.push_str(&args_to_string(&c.args));
        s.push(')');
    }
    if let Some(l) = &c.label {
        s.push_str(" as ");
        s.push_str(&l.name);
    }
}

pub fn import_item_to_string(item: &ImportItem) -> String {
    match item {
        ImportItem::Prefix { part, template } => format!("{} \"{}\"", part.name, template.value),
        ImportItem::Rename { param, to } => format!("rename {} \"{}\"", param.name, to.value),
        ImportItem::Ignore { pattern } => format!("ignore \"{}\"", pattern.value),
    }
}

fn write_expr(s: &mut String, e: &Expr) {
    match e {
        Expr::Int(i) => {
            let _ = write!(s, "{}", i.value);
        }
        Expr::Float { text, .. } => s.push_str(text),
        Expr::Bool { value, .. } => s.push_str(if *value { "true" } else { "false" }),
        Expr::Name(n) => s.push_str(&n.name),
        Expr::Call(c) => write_call(s, c),
        Expr::Unary { op, expr, .. } => {
            s.push_str(match op {
                UnOp::Neg => "-",
                UnOp::Not => "not ",
            });
            write_expr(s, expr);
        }
        Expr::Binary { op, lhs, rhs, .. } => {
            write_expr(s, lhs);
            let _ = write!(s, " {} ", op.symbol());
            write_expr(s, rhs);
        }
        Expr::Paren { expr, .. } => {
            s.push('(');
            write_expr(s, expr);
            s.push(')');
        }
    }
}

struct Printer {
    out: String,
    indent: usize,
}

impl Printer {
    fn line(&mut self, text: &str) {
        for _ in 0..self.indent {
            self.out.push_str("  ");
        }
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn blank(&mut self) {
        if !self.out.ends_with("{\n") && !self.out.ends_with("\n\n") {
            self.out.push('\n');
        }
    }

    fn model(&mut self, m: &Model) {
        self.line(&format!("model {} {{", m.name.name));
        self.indent += 1;
        if !m.input.dims.is_empty() {
            self.line(&format!("input {}", shape_to_string(&m.input)));
        }
        if let Some(c) = &m.classes {
            self.line(&format!("classes {}", c.value));
        }
        for (section, settings) in [("quant", &m.quant), ("init", &m.init)] {
            if !settings.is_empty() {
                self.blank();
                self.line(&format!("{section} {{"));
                self.indent += 1;
                for s in settings {
                    self.line(&format!("{} {}", s.key.name, expr_to_string(&s.value)));
                }
                self.indent -= 1;
                self.line("}");
            }
        }
        if !m.rules.is_empty() {
            self.blank();
            self.rules(&m.rules);
        }
        if let Some(l) = &m.lists {
            self.blank();
            self.line("lists {");
            self.indent += 1;
            let cover: Vec<&str> = l.cover.iter().map(|c| c.name.as_str()).collect();
            self.line(&format!("cover {}", cover.join(" ")));
            for b in &l.bindings {
                self.line(&binding_to_string(b));
            }
            self.indent -= 1;
            self.line("}");
        }
        for b in &m.blocks {
            self.blank();
            let params: Vec<String> = b.params.iter().map(param_to_string).collect();
            self.line(&format!("block {}({}) {{", b.name.name, params.join(", ")));
            self.indent += 1;
            self.stmts(&b.body);
            self.indent -= 1;
            self.line("}");
        }
        let has_macro =
            m.stem.is_some() || !m.stages.is_empty() || m.head.is_some() || m.fc.is_some();
        if has_macro {
            self.blank();
        }
        if let Some(s) = &m.stem {
            self.line(&format!("stem: {}", ops_to_string(&s.ops)));
        }
        for st in &m.stages {
            let name = st
                .name
                .as_ref()
                .map(|n| format!("{}: ", n.name))
                .unwrap_or_default();
            let args = if st.args.is_empty() {
                String::new()
            } else {
                format!(" ({})", args_to_string(&st.args))
            };
            self.line(&format!(
                "stage {name}{} x{}{args}",
                st.block.name, st.repeats.value
            ));
        }
        if let Some(s) = &m.head {
            self.line(&format!("head: {}", ops_to_string(&s.ops)));
        }
        if let Some(s) = &m.fc {
            self.line(&format!("fc: {}", ops_to_string(&s.ops)));
        }
        for imp in &m.imports {
            self.blank();
            self.line(&format!("import {} {{", imp.format.name));
            self.indent += 1;
            for item in &imp.items {
                self.line(&import_item_to_string(item));
            }
            self.indent -= 1;
            self.line("}");
        }
        for p in &m.profiles {
            self.blank();
            self.line(&format!("profile {} {{", p.name.name));
            self.indent += 1;
            for item in &p.items {
                match item {
                    ProfileItem::List { name, entries, .. } => {
                        self.line(&format!("{} [{}]", name.name, entries_to_string(entries)))
                    }
                    ProfileItem::Scope { target, bits, .. } => {
                        let bits: Vec<String> = bits
                            .iter()
                            .map(|b| format!("{} {}", b.key.name, expr_to_string(&b.value)))
                            .collect();
                        self.line(&format!(
                            "{} {{ {} }}",
                            scope_to_string(target),
                            bits.join("  ")
                        ));
                    }
                    ProfileItem::Setting(s) => {
                        self.line(&format!("{} {}", s.key.name, expr_to_string(&s.value)))
                    }
                    ProfileItem::Rules { rules, .. } => self.rules(rules),
                }
            }
            self.indent -= 1;
            self.line("}");
        }
        self.indent -= 1;
        self.line("}");
    }

    fn rules(&mut self, rules: &[RuleUse]) {
        self.line("rules {");
        self.indent += 1;
        for r in rules {
            self.line(&rule_to_string(r));
        }
        self.indent -= 1;
        self.line("}");
    }

    fn stmts(&mut self, stmts: &[Stmt]) {
        for s in stmts {
            match s {
                Stmt::If {
                    cond,
                    then,
                    otherwise,
                    ..
                } => {
                    self.line(&format!("if {} {{", expr_to_string(cond)));
                    self.indent += 1;
                    self.stmts(then);
                    self.indent -= 1;
                    if otherwise.is_empty() {
                        self.line("}");
                    } else {
                        self.line("} else {");
                        self.indent += 1;
                        self.stmts(otherwise);
                        self.indent -= 1;
                        self.line("}");
                    }
                }
                other => {
                    let text = stmt_head_to_string(other).expect("non-if statement");
                    self.line(&text);
                }
            }
        }
    }
}
