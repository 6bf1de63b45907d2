//! Blocks -> AST: block definitions with their parameters, statements
//! (`=`, `+=`, `return`, `if`/`else`) and chains of ops.

use super::{Converter, Kids, Rule};
use crate::ast::*;
use pest::iterators::Pair;

impl Converter {
    pub(super) fn block(&mut self, p: Pair<Rule>) -> BlockDef {
        let span = self.span(&p);
        let mut inner = p.kids();
        let name = self.ident(inner.next().expect("block name"));
        let params = inner
            .next()
            .expect("params")
            .kids()
            .map(|q| self.param(q))
            .collect();
        let body = self.body(inner.next().expect("body"));
        BlockDef {
            name,
            params,
            body,
            span,
        }
    }

    pub(super) fn param(&mut self, p: Pair<Rule>) -> Param {
        let span = self.span(&p);
        let mut inner = p.kids();
        let name = self.ident(inner.next().expect("param name"));
        let default = inner.next().map(|e| self.expr(e));
        Param {
            name,
            default,
            span,
        }
    }

    fn body(&mut self, p: Pair<Rule>) -> Vec<Stmt> {
        p.kids().map(|s| self.stmt(s)).collect()
    }

    pub(super) fn stmt(&mut self, p: Pair<Rule>) -> Stmt {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::assign | Rule::add_assign => {
                let add = p.as_rule() == Rule::add_assign;
                let mut inner = p.kids();
                let target = self.ident(inner.next().expect("target"));
                let value = self.chain(inner.next().expect("chain"));
                if add {
                    Stmt::AddAssign {
                        target,
                        value,
                        span,
                    }
                } else {
                    Stmt::Assign {
                        target,
                        value,
                        span,
                    }
                }
            }
            Rule::mul_assign => {
                let mut inner = p.kids();
                let target = self.ident(inner.next().expect("target"));
                let value = self.chain(inner.next().expect("chain"));
                Stmt::MulAssign {
                    target,
                    value,
                    span,
                }
            }
            Rule::unpack => {
                let mut targets = Vec::new();
                let mut value = None;
                for q in p.kids() {
                    match q.as_rule() {
                        Rule::ident => targets.push(self.ident(q)),
                        _ => value = Some(self.chain(q)),
                    }
                }
                Stmt::Unpack {
                    targets,
                    value: value.expect("chain"),
                    span,
                }
            }
            Rule::return_stmt => {
                let value = self.chain(p.kids().next().expect("chain"));
                Stmt::Return { value, span }
            }
            Rule::if_stmt => {
                let mut inner = p.kids();
                let cond = self.expr(inner.next().expect("cond"));
                let then = self.body(inner.next().expect("then"));
                let otherwise = match inner.next() {
                    None => Vec::new(),
                    Some(q) if q.as_rule() == Rule::body => self.body(q),
                    Some(q) => vec![self.stmt(q)],
                };
                Stmt::If {
                    cond,
                    then,
                    otherwise,
                    span,
                }
            }
            r => unreachable!("stmt {r:?}"),
        }
    }

    fn chain(&mut self, p: Pair<Rule>) -> Chain {
        let span = self.span(&p);
        let mut inner = p.kids();
        let first = inner.next().expect("source");
        let source = match first.as_rule() {
            Rule::join => {
                let join_span = self.span(&first);
                let mut names = first.kids().map(|q| self.ident(q));
                let op = names.next().expect("join op");
                Source::Join(Join {
                    op,
                    inputs: names.collect(),
                    span: join_span,
                })
            }
            _ => Source::Name(self.ident(first)),
        };
        let ops = inner.map(|c| self.call(c)).collect();
        Chain { source, ops, span }
    }

    pub(super) fn ops(&mut self, p: Pair<Rule>) -> Vec<Call> {
        p.kids().map(|c| self.call(c)).collect()
    }
}
