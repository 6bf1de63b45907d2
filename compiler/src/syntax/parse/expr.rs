//! Expressions, calls and literals -> AST: the Pratt parser of operator
//! precedence, op calls with their arguments and labels, names, integers,
//! numbers and strings.

use super::{Converter, Kids, Rule, MAX_EXPR_OPS};
use crate::ast::*;
use crate::diag::Diagnostic;
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use std::sync::OnceLock;

fn pratt() -> &'static PrattParser<Rule> {
    static PRATT: OnceLock<PrattParser<Rule>> = OnceLock::new();
    PRATT.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::op_or, Assoc::Left))
            .op(Op::infix(Rule::op_and, Assoc::Left))
            .op(Op::prefix(Rule::op_not))
            .op(Op::infix(Rule::op_eq, Assoc::Left)
                | Op::infix(Rule::op_ne, Assoc::Left)
                | Op::infix(Rule::op_lt, Assoc::Left)
                | Op::infix(Rule::op_le, Assoc::Left)
                | Op::infix(Rule::op_gt, Assoc::Left)
                | Op::infix(Rule::op_ge, Assoc::Left))
            .op(Op::infix(Rule::op_add, Assoc::Left) | Op::infix(Rule::op_sub, Assoc::Left))
            .op(Op::infix(Rule::op_mul, Assoc::Left)
                | Op::infix(Rule::op_div, Assoc::Left)
                | Op::infix(Rule::op_rem, Assoc::Left))
            .op(Op::prefix(Rule::op_neg))
    })
}

impl Converter {
    pub(super) fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident::new(p.as_str(), self.span(&p))
    }

    pub(super) fn int(&mut self, p: Pair<Rule>) -> IntLit {
        let span = self.span(&p);
        let value = match p.as_str().parse::<i64>() {
            Ok(v) => v,
            Err(_) => {
                self.diags.push(
                    Diagnostic::error("E0003", "number too large")
                        .primary(span, "does not fit in a 64-bit integer"),
                );
                0
            }
        };
        IntLit { value, span }
    }

    pub(super) fn string(&self, p: Pair<Rule>) -> StrLit {
        let span = self.span(&p);
        let text = p.as_str();
        StrLit {
            value: text[1..text.len() - 1].to_string(),
            span,
        }
    }

    pub(super) fn call(&mut self, p: Pair<Rule>) -> Call {
        if p.as_rule() == Rule::op {
            let mut inner = p.kids();
            let mut call = self.call(inner.next().expect("op call"));
            if let Some(l) = inner.next() {
                let label = l.kids().next().expect("label");
                call.label = Some(self.ident(label));
            }
            return call;
        }
        let span = self.span(&p);
        let mut inner = p.kids();
        let name = self.ident(inner.next().expect("call name"));
        let (args, parens) = match inner.next() {
            Some(a) => (a.kids().map(|x| self.arg(x)).collect(), true),
            None => (Vec::new(), false),
        };
        Call {
            name,
            args,
            parens,
            label: None,
            span,
        }
    }

    pub(super) fn arg(&mut self, p: Pair<Rule>) -> Arg {
        let span = self.span(&p);
        let mut name = None;
        let mut value = None;
        for q in p.kids() {
            match q.as_rule() {
                Rule::arg_name => name = Some(self.ident(q.kids().next().expect("ident"))),
                Rule::expr => value = Some(self.expr(q)),
                r => unreachable!("arg {r:?}"),
            }
        }
        Arg {
            name,
            value: value.expect("arg value"),
            span,
        }
    }

    pub(super) fn expr(&mut self, p: Pair<Rule>) -> Expr {
        let span = self.span(&p);
        let ops = p
            .clone()
            .kids()
            .filter(|q| format!("{:?}", q.as_rule()).starts_with("op_"))
            .count();
        if ops > MAX_EXPR_OPS {
            self.diags.push(
                Diagnostic::error("E0002", "expression too long")
                    .primary(span, format!("more than {MAX_EXPR_OPS} operators")),
            );
            return Expr::Int(IntLit { value: 0, span });
        }
        let this = std::cell::RefCell::new(self);
        let parsed = pratt()
            .map_primary(|q| this.borrow_mut().primary(q))
            .map_prefix(|op, rhs| {
                let span = Span::new(this.borrow().span(&op).start, rhs.span().end);
                let op = if op.as_rule() == Rule::op_neg {
                    UnOp::Neg
                } else {
                    UnOp::Not
                };
                Expr::Unary {
                    op,
                    expr: Box::new(rhs),
                    span,
                }
            })
            .map_infix(|lhs, op, rhs| {
                let span = Span::new(lhs.span().start, rhs.span().end);
                let op = match op.as_rule() {
                    Rule::op_or => BinOp::Or,
                    Rule::op_and => BinOp::And,
                    Rule::op_eq => BinOp::Eq,
                    Rule::op_ne => BinOp::Ne,
                    Rule::op_lt => BinOp::Lt,
                    Rule::op_le => BinOp::Le,
                    Rule::op_gt => BinOp::Gt,
                    Rule::op_ge => BinOp::Ge,
                    Rule::op_add => BinOp::Add,
                    Rule::op_sub => BinOp::Sub,
                    Rule::op_mul => BinOp::Mul,
                    Rule::op_div => BinOp::Div,
                    Rule::op_rem => BinOp::Rem,
                    r => unreachable!("infix {r:?}"),
                };
                Expr::Binary {
                    op,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                    span,
                }
            })
            .parse(p.kids());
        parsed
    }

    fn primary(&mut self, p: Pair<Rule>) -> Expr {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::int => Expr::Int(self.int(p)),
            Rule::float => {
                let text = p.as_str().to_string();
                let value = text.parse::<f64>().unwrap_or(f64::INFINITY);
                if !value.is_finite() {
                    self.diags.push(
                        Diagnostic::error("E0003", "number too large")
                            .primary(span, "not a finite number"),
                    );
                }
                Expr::Float { value, text, span }
            }
            Rule::bool => Expr::Bool {
                value: p.as_str() == "true",
                span,
            },
            Rule::call => {
                let c = self.call(p);
                if c.parens {
                    Expr::Call(c)
                } else {
                    Expr::Name(c.name)
                }
            }
            Rule::paren => {
                let e = self.expr(p.kids().next().expect("inner expr"));
                Expr::Paren {
                    expr: Box::new(e),
                    span,
                }
            }
            r => unreachable!("primary {r:?}"),
        }
    }
}
