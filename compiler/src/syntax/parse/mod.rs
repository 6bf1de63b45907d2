//! `.qspec` text -> [`ast::Model`].
//!
//! pest pairs never leave this module: every rule is converted to AST nodes
//! with spans. Problems the grammar cannot express (a repeated `input`, a
//! number that does not fit, absurd nesting) are collected as diagnostics
//! alongside, so one run reports all of them.
//!
//! The YAML twin reuses the fragment entry points ([`Fragment`]) for the
//! strings it embeds (chains, expressions, calls), with a base offset so
//! spans point into the YAML file.
//!
//! This file holds the grammar binding, the entry points and the converter
//! they share; the converter's rules are split by what they build:
//! `model` (model items, sections, stages, imports, profiles), `block`
//! (blocks, statements, chains) and `expr` (expressions, calls, literals);
//! `error` turns pest's errors into diagnostics.

mod block;
mod error;
mod expr;
mod model;

use crate::ast::*;
use crate::diag::{Diagnostic, Diagnostics};
use error::syntax_error;
use pest::iterators::Pair;
use pest::Parser;

#[derive(pest_derive::Parser)]
#[grammar = "syntax/qspec.pest"]
struct QspecParser;

/// Deepest bracket nesting accepted; deeper input is rejected before parsing
/// so that no recursive stage can overflow the stack.
pub const MAX_NESTING: usize = 48;
/// Most operators in one expression (same reason).
pub const MAX_EXPR_OPS: usize = 200;

/// Parses a whole `.qspec` file.
pub fn parse_qspec(src: &str) -> Result<Model, Diagnostics> {
    check_nesting(src, 0)?;
    let mut pairs = QspecParser::parse(Rule::file, src).map_err(|e| syntax_error(e, src, 0))?;
    let file = pairs.next().expect("file rule");
    let model_pair = file.kids().next().expect("model rule");
    let mut conv = Converter {
        base: 0,
        diags: Diagnostics::default(),
    };
    let model = conv.model(model_pair);
    if conv.diags.has_errors() {
        return Err(conv.diags);
    }
    Ok(model)
}

/// The fragments the YAML twin embeds as strings.
#[derive(Clone, Copy, Debug)]
pub enum Fragment {
    Expr,
    Call,
    Ops,
    Stmt,
    Param,
    Arg,
    Shape,
    Rule,
    Binding,
    Entries,
    Word,
    ProfileName,
    Scope,
    /// One name that is not a keyword (model, block, setting and list names).
    Ident,
    /// A stage without the `stage` keyword: `s2: cell x3 (cout: 32)` or `cell x3`.
    Stage,
}

/// What a fragment parses to.
#[derive(Clone, Debug)]
pub enum FragmentValue {
    Expr(Expr),
    Call(Call),
    Ops(Vec<Call>),
    Stmt(Stmt),
    Param(Param),
    Arg(Arg),
    Shape(InputShape),
    Rule(RuleUse),
    Binding(ListBinding),
    Entries(Vec<ListEntry>),
    Word(Ident),
    ScopeTarget(ScopeTarget),
    Stage(Stage),
}

/// Parses `text` (which starts at byte `base` of its file) as one fragment.
pub fn parse_fragment(
    kind: Fragment,
    text: &str,
    base: usize,
) -> Result<FragmentValue, Diagnostics> {
    check_nesting(text, base)?;
    let rule = match kind {
        Fragment::Expr => Rule::only_expr,
        Fragment::Call => Rule::only_call,
        Fragment::Ops => Rule::only_ops,
        Fragment::Stmt => Rule::only_stmt,
        Fragment::Param => Rule::only_param,
        Fragment::Arg => Rule::only_arg,
        Fragment::Shape => Rule::only_shape,
        Fragment::Rule => Rule::only_rule,
        Fragment::Binding => Rule::only_binding,
        Fragment::Entries => Rule::only_entries,
        Fragment::Word => Rule::only_word,
        Fragment::ProfileName => Rule::only_profile_name,
        Fragment::Scope => Rule::only_scope,
        Fragment::Ident => Rule::only_ident,
        Fragment::Stage => Rule::only_stage,
    };
    let mut pairs = QspecParser::parse(rule, text).map_err(|e| syntax_error(e, text, base))?;
    let outer = pairs.next().expect("fragment rule");
    let mut conv = Converter {
        base,
        diags: Diagnostics::default(),
    };
    if let Fragment::Stage = kind {
        // `only_stage` holds the stage's parts directly (like `stage_decl`).
        let stage = conv.stage(outer);
        if conv.diags.has_errors() {
            return Err(conv.diags);
        }
        return Ok(FragmentValue::Stage(stage));
    }
    let mut inner = outer.kids();
    let first = inner.next();
    let value = match kind {
        Fragment::Entries => {
            let entries = inner_entries(&mut conv, first, inner);
            FragmentValue::Entries(entries)
        }
        _ => {
            let p = first.expect("fragment content");
            match kind {
                Fragment::Expr => FragmentValue::Expr(conv.expr(p)),
                Fragment::Call => FragmentValue::Call(conv.call(p)),
                Fragment::Ops => FragmentValue::Ops(conv.ops(p)),
                Fragment::Stmt => FragmentValue::Stmt(conv.stmt(p)),
                Fragment::Param => FragmentValue::Param(conv.param(p)),
                Fragment::Arg => FragmentValue::Arg(conv.arg(p)),
                Fragment::Shape => FragmentValue::Shape(conv.shape(p)),
                Fragment::Rule => FragmentValue::Rule(conv.rule_use(p)),
                Fragment::Binding => FragmentValue::Binding(conv.binding(p)),
                Fragment::Word | Fragment::ProfileName | Fragment::Ident => {
                    FragmentValue::Word(conv.ident(p))
                }
                Fragment::Scope => FragmentValue::ScopeTarget(conv.scope_target(p)),
                Fragment::Entries | Fragment::Stage => unreachable!("handled above"),
            }
        }
    };
    if conv.diags.has_errors() {
        return Err(conv.diags);
    }
    Ok(value)
}

fn inner_entries<'a>(
    conv: &mut Converter,
    first: Option<Pair<'a, Rule>>,
    rest: impl Iterator<Item = Pair<'a, Rule>>,
) -> Vec<ListEntry> {
    first
        .into_iter()
        .chain(rest)
        .filter(|p| p.as_rule() == Rule::list_entry)
        .map(|p| conv.list_entry(p))
        .collect()
}

/// The children of a pair without keyword tokens.
type KidsIter<'a> =
    std::iter::Filter<pest::iterators::Pairs<'a, Rule>, fn(&Pair<'a, Rule>) -> bool>;

trait Kids<'a> {
    fn kids(self) -> KidsIter<'a>;
}

impl<'a> Kids<'a> for Pair<'a, Rule> {
    fn kids(self) -> KidsIter<'a> {
        self.into_inner()
            .filter(not_keyword as fn(&Pair<'a, Rule>) -> bool)
    }
}

/// Keyword tokens are atomic rules (so `modelx` is a name, not `model x`),
/// which makes them show up as pairs; the converter skips them.
fn not_keyword(p: &Pair<Rule>) -> bool {
    !matches!(
        p.as_rule(),
        Rule::kw_model
            | Rule::kw_input
            | Rule::kw_classes
            | Rule::kw_quant
            | Rule::kw_init
            | Rule::kw_rules
            | Rule::kw_lists
            | Rule::kw_block
            | Rule::kw_stage
            | Rule::kw_profile
            | Rule::kw_if
            | Rule::kw_else
            | Rule::kw_return
            | Rule::kw_cover
            | Rule::kw_as
            | Rule::kw_import
            | Rule::kw_rename
            | Rule::kw_ignore
    )
}

fn check_nesting(src: &str, base: usize) -> Result<(), Diagnostics> {
    let mut depth = 0usize;
    for (i, c) in src.char_indices() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Diagnostic::error("E0002", "brackets nested too deeply")
                        .primary(
                            Span::new(base + i, base + i + 1),
                            format!("nesting deeper than {MAX_NESTING} levels"),
                        )
                        .note("qatc limits nesting so that no input can exhaust its stack")
                        .into());
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// `text` without trailing whitespace and `#` comments (`#` only ever starts
/// a comment in `.qspec`).
fn trim_trailing(text: &str) -> &str {
    let mut t = text.trim_end();
    loop {
        let line_start = t.rfind('\n').map_or(0, |i| i + 1);
        match t[line_start..].find('#') {
            Some(h) => t = t[..line_start + h].trim_end(),
            None => return t,
        }
    }
}

struct Converter {
    base: usize,
    diags: Diagnostics,
}

impl Converter {
    /// The pair's span without trailing whitespace and comments: pest lets a
    /// rule that ends in an optional or repeated part (`bn` before `->`, a
    /// chain before the next line) swallow the whitespace after it.
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        let end = s.start() + trim_trailing(s.as_str()).len();
        Span::new(self.base + s.start(), self.base + end)
    }
}
