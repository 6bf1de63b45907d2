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

use crate::ast::*;
use crate::diag::{Diagnostic, Diagnostics};
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser;
use std::sync::OnceLock;

#[derive(pest_derive::Parser)]
#[grammar = "syntax/qspec.pest"]
struct QspecParser;

/// Deepest bracket nesting accepted; deeper input is rejected before parsing
/// so that no recursive stage can overflow the stack.
pub const MAX_NESTING: usize = 48;
/// Most operators in one expression (same reason).
pub const MAX_EXPR_OPS: usize = 200;

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

fn describe(rule: &Rule) -> String {
    let s = match rule {
        Rule::EOI => "end of input",
        Rule::ident | Rule::arg_name | Rule::stage_name => "a name",
        Rule::word => "a word",
        Rule::int => "an integer",
        Rule::float => "a number",
        Rule::profile_name => "a profile name",
        Rule::model => "`model NAME { ... }`",
        Rule::shape => "a shape like 3x32x32",
        Rule::expr | Rule::only_expr => "an expression",
        Rule::call | Rule::only_call => "an op such as `conv3x3(16)`",
        Rule::chain => "a chain such as `x -> bn -> relu`",
        Rule::ops => "ops such as `conv3x3(16) -> bn`",
        Rule::setting => "a setting such as `acts dorefa`",
        Rule::rule_use => "a rule such as `quantize_after_add(aout)`",
        Rule::list_binding => "a binding such as `aout = abit[i+1]`",
        Rule::list_entry => "a bit-width (optionally `x N`)",
        Rule::param => "a parameter",
        Rule::arg => "an argument",
        Rule::body => "`{`",
        Rule::params => "a parameter list `(...)`",
        Rule::call_args => "arguments `(...)`",
        Rule::repeats => "a repeat count such as `x3`",
        Rule::cover => "`cover stem blocks head fc`",
        Rule::if_stmt | Rule::return_stmt | Rule::assign | Rule::add_assign => "a statement",
        Rule::input_decl => "`input CxHxW`",
        Rule::classes_decl => "`classes N`",
        Rule::quant_decl => "`quant { ... }`",
        Rule::init_decl => "`init { ... }`",
        Rule::rules_decl | Rule::profile_rules => "`rules { ... }`",
        Rule::lists_decl => "`lists { ... }`",
        Rule::block_def => "`block NAME(...) { ... }`",
        Rule::stem_decl => "`stem: ...`",
        Rule::head_decl => "`head: ...`",
        Rule::fc_decl => "`fc: ...`",
        Rule::stage_decl => "`stage NAME: BLOCK xN (...)`",
        Rule::only_stage => "a stage such as `cell x3 (cout: 32)`",
        Rule::only_ident => "a name",
        Rule::profile => "`profile NAME { ... }`",
        Rule::list_item => "a bit list such as `abit [8 x9]`",
        Rule::scope_item => "a scope such as `stage s2 { w 4 }`",
        Rule::scope_target => "`all`, `stem`, `head`, `fc`, `stage NAME` or `block NAME[i]`",
        Rule::op_or | Rule::op_and => "`and` / `or`",
        Rule::op_eq | Rule::op_ne | Rule::op_lt | Rule::op_le | Rule::op_gt | Rule::op_ge => {
            "a comparison"
        }
        Rule::op_add | Rule::op_sub | Rule::op_mul | Rule::op_div | Rule::op_rem => "an operator",
        Rule::op_neg | Rule::op_not => "`-` or `not`",
        Rule::bool => "`true` or `false`",
        Rule::paren => "`(`",
        Rule::keyword => "a keyword",
        Rule::kw_model => "`model`",
        Rule::kw_as | Rule::op_label => "`as NAME`",
        Rule::kw_import => "`import`",
        Rule::kw_rename => "`rename`",
        Rule::kw_ignore => "`ignore`",
        Rule::label => "a name",
        Rule::string => "a quoted string",
        Rule::import_decl => "`import FORMAT { ... }`",
        Rule::import_item | Rule::import_prefix | Rule::import_rename | Rule::import_ignore => {
            "an import item such as `blocks \"cells.{block}\"`"
        }
        Rule::op => "an op such as `conv3x3(16)`",
        Rule::kw_input => "`input`",
        Rule::kw_classes => "`classes`",
        Rule::kw_quant => "`quant`",
        Rule::kw_init => "`init`",
        Rule::kw_rules => "`rules`",
        Rule::kw_lists => "`lists`",
        Rule::kw_block => "`block`",
        Rule::kw_stem => "`stem`",
        Rule::kw_stage => "`stage`",
        Rule::kw_head => "`head`",
        Rule::kw_fc => "`fc`",
        Rule::kw_all => "`all`",
        Rule::kw_profile => "`profile`",
        Rule::kw_if => "`if`",
        Rule::kw_else => "`else`",
        Rule::kw_return => "`return`",
        Rule::kw_cover => "`cover`",
        other => return format!("{other:?}").replace('_', " "),
    };
    s.to_string()
}

/// Keywords that start a model item; an error that expects most of them is
/// reported as expecting "another model item".
const ITEM_KEYWORDS: &[Rule] = &[
    Rule::kw_input,
    Rule::kw_classes,
    Rule::kw_quant,
    Rule::kw_init,
    Rule::kw_rules,
    Rule::kw_lists,
    Rule::kw_block,
    Rule::kw_stem,
    Rule::kw_stage,
    Rule::kw_head,
    Rule::kw_fc,
    Rule::kw_profile,
    Rule::kw_import,
];

/// The token at or after byte `pos` of `src` (whitespace skipped), with its
/// offset, for "unexpected `...`" labels.
fn token_at(src: &str, pos: usize) -> Option<(usize, &str)> {
    let mut pos = pos;
    let mut rest = src.get(pos..)?;
    loop {
        let t = rest.trim_start();
        pos += rest.len() - t.len();
        rest = t;
        if !rest.starts_with('#') {
            break;
        }
        let skip = rest.find('\n').unwrap_or(rest.len());
        pos += skip;
        rest = &rest[skip..];
    }
    let first = rest.chars().next()?;
    let len = if first.is_ascii_alphanumeric() || first == '_' {
        rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len())
    } else {
        rest.find(|c: char| c.is_whitespace() || c.is_ascii_alphanumeric() || c == '_')
            .unwrap_or(rest.len())
    };
    let mut end = len.min(24);
    while !rest.is_char_boundary(end) {
        end -= 1;
    }
    Some((pos, &rest[..end.max(first.len_utf8())]))
}

/// Byte offsets of the `{` still open at `pos` (comments skipped), outermost first.
fn open_braces(src: &str, pos: usize) -> Vec<usize> {
    let mut open = Vec::new();
    let mut in_comment = false;
    for (i, c) in src.char_indices() {
        if i >= pos {
            break;
        }
        match c {
            '\n' => in_comment = false,
            _ if in_comment => {}
            '#' => in_comment = true,
            '{' => open.push(i),
            '}' => {
                open.pop();
            }
            _ => {}
        }
    }
    open
}

fn syntax_error(e: pest::error::Error<Rule>, src: &str, base: usize) -> Diagnostics {
    use pest::error::{ErrorVariant, InputLocation};
    let (start, end) = match e.location {
        InputLocation::Pos(p) => (p, p),
        InputLocation::Span((s, e)) => (s, e),
    };
    let (at, token) = match token_at(src, start) {
        Some((at, t)) => (at, Some(t)),
        None => (start, None),
    };
    let mut notes = Vec::new();
    let mut unclosed = None;
    let message = match &e.variant {
        ErrorVariant::ParsingError {
            positives,
            negatives,
        } => {
            let items = positives
                .iter()
                .filter(|r| ITEM_KEYWORDS.contains(r))
                .count();
            let mut names: Vec<String> = positives
                .iter()
                .filter(|r| items < 4 || !ITEM_KEYWORDS.contains(r))
                .map(describe)
                .collect();
            if items >= 4 {
                names.push("another model item".to_string());
            }
            names.sort();
            names.dedup();
            let keyword_here = token.is_some_and(|t| {
                [
                    "input", "classes", "quant", "lists", "block", "stem", "stage", "head", "fc",
                    "profile",
                ]
                .contains(&t)
            });
            let open = open_braces(src, start);
            if keyword_here && open.len() >= 2 {
                unclosed = open.last().copied();
                notes.push(format!(
                    "help: `{}` starts a model item, but the `{{` above is still open: is a `}}` missing?",
                    token.unwrap_or_default()
                ));
            } else if token.is_none() && !open.is_empty() {
                unclosed = open.last().copied();
                notes.push(
                    "help: the file ends before every `{` is closed; was it cut off?".to_string(),
                );
            } else if matches!(token, Some("=>" | "-" | ">" | "\u{2192}")) {
                notes.push("help: ops in a chain are joined with `->`".to_string());
            }
            if !names.is_empty() {
                let list = match names.len() {
                    1 => names[0].clone(),
                    _ => format!(
                        "{} or {}",
                        names[..names.len() - 1].join(", "),
                        names[names.len() - 1]
                    ),
                };
                format!("expected {list}")
            } else if !negatives.is_empty() {
                let mut n: Vec<String> = negatives.iter().map(describe).collect();
                n.dedup();
                format!("unexpected {}", n.join(", "))
            } else {
                "unexpected input".to_string()
            }
        }
        ErrorVariant::CustomError { message } => message.clone(),
    };
    let label = match token {
        Some(t) => format!("unexpected `{t}`"),
        None if base == 0 => "unexpected end of file".to_string(),
        None => "unexpected end of text".to_string(),
    };
    let (start, end) = match token {
        Some(t) if end <= start => (at, at + t.len()),
        _ => (start, end.max(start)),
    };
    let mut d = Diagnostic::error("E0001", format!("syntax error: {message}"))
        .primary(Span::new(base + start, base + end), label);
    if let Some(b) = unclosed {
        d = d.secondary(Span::new(base + b, base + b + 1), "this `{` is not closed");
    }
    d.notes.extend(notes);
    d.into()
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

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident::new(p.as_str(), self.span(&p))
    }

    fn int(&mut self, p: Pair<Rule>) -> IntLit {
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

    fn model(&mut self, p: Pair<Rule>) -> Model {
        let span = self.span(&p);
        let mut inner = p.kids();
        let name = self.ident(inner.next().expect("model name"));
        let mut model = Model {
            name,
            input: InputShape {
                dims: Vec::new(),
                span: Span::default(),
            },
            classes: None,
            quant: Vec::new(),
            init: Vec::new(),
            rules: Vec::new(),
            lists: None,
            blocks: Vec::new(),
            stem: None,
            stages: Vec::new(),
            head: None,
            fc: None,
            profiles: Vec::new(),
            imports: Vec::new(),
            span,
        };
        let mut input_seen: Option<Span> = None;
        let mut quant_seen: Option<Span> = None;
        let mut init_seen: Option<Span> = None;
        let mut rules_seen: Option<Span> = None;
        for item in inner {
            let item_span = self.span(&item);
            match item.as_rule() {
                Rule::input_decl => {
                    let shape = self.shape(item.kids().next().expect("shape"));
                    if self.once(&mut input_seen, item_span, "input") {
                        model.input = shape;
                    }
                }
                Rule::classes_decl => {
                    let n = self.int(item.kids().next().expect("int"));
                    let mut seen = model.classes.as_ref().map(|c| c.span);
                    if self.once(&mut seen, item_span, "classes") {
                        model.classes = Some(n);
                    }
                }
                Rule::quant_decl => {
                    let settings = item.kids().map(|s| self.setting(s)).collect();
                    if self.once(&mut quant_seen, item_span, "quant") {
                        model.quant = settings;
                    }
                }
                Rule::init_decl => {
                    let settings = item.kids().map(|s| self.setting(s)).collect();
                    if self.once(&mut init_seen, item_span, "init") {
                        model.init = settings;
                    }
                }
                Rule::rules_decl => {
                    let rules = item.kids().map(|r| self.rule_use(r)).collect();
                    if self.once(&mut rules_seen, item_span, "rules") {
                        model.rules = rules;
                    }
                }
                Rule::lists_decl => {
                    let layout = self.lists(item);
                    let mut seen = model.lists.as_ref().map(|l| l.span);
                    if self.once(&mut seen, item_span, "lists") {
                        model.lists = Some(layout);
                    }
                }
                Rule::block_def => {
                    let b = self.block(item);
                    model.blocks.push(b);
                }
                Rule::stem_decl | Rule::head_decl | Rule::fc_decl => {
                    let rule = item.as_rule();
                    let mut inner = item.kids();
                    let keyword = self.ident(inner.next().expect("keyword"));
                    let ops = self.ops(inner.next().expect("ops"));
                    let section = Section {
                        keyword,
                        ops,
                        span: item_span,
                    };
                    let (slot, what) = match rule {
                        Rule::stem_decl => (&mut model.stem, "stem"),
                        Rule::head_decl => (&mut model.head, "head"),
                        _ => (&mut model.fc, "fc"),
                    };
                    let mut seen = slot.as_ref().map(|s| s.span);
                    if self.once(&mut seen, item_span, what) {
                        *slot = Some(section);
                    }
                }
                Rule::stage_decl => {
                    let s = self.stage(item);
                    model.stages.push(s);
                }
                Rule::import_decl => {
                    let imp = self.import(item);
                    model.imports.push(imp);
                }
                Rule::profile => {
                    let pr = self.profile(item);
                    model.profiles.push(pr);
                }
                r => unreachable!("model item {r:?}"),
            }
        }
        if input_seen.is_none() {
            self.diags.push(
                Diagnostic::error("E0004", "missing `input`")
                    .primary(model.name.span, "this model has no input shape")
                    .help("add `input 3x32x32` (channels x height x width)"),
            );
        }
        model
    }

    /// Records the first occurrence of a single-use item; reports repeats.
    fn once(&mut self, seen: &mut Option<Span>, span: Span, what: &str) -> bool {
        if let Some(first) = *seen {
            self.diags.push(
                Diagnostic::error("E0005", format!("`{what}` is given more than once"))
                    .primary(span, "repeated here")
                    .secondary(first, "first given here"),
            );
            false
        } else {
            *seen = Some(span);
            true
        }
    }

    fn shape(&mut self, p: Pair<Rule>) -> InputShape {
        let span = self.span(&p);
        let dims = p.kids().map(|d| self.int(d)).collect();
        InputShape { dims, span }
    }

    fn setting(&mut self, p: Pair<Rule>) -> Setting {
        let span = self.span(&p);
        let mut inner = p.kids();
        let key = self.ident(inner.next().expect("key"));
        let value = self.expr(inner.next().expect("value"));
        Setting { key, value, span }
    }

    fn rule_use(&mut self, p: Pair<Rule>) -> RuleUse {
        let mut disable = false;
        let mut call = None;
        for q in p.kids() {
            match q.as_rule() {
                Rule::rule_neg => disable = true,
                Rule::call | Rule::op => call = Some(self.call(q)),
                r => unreachable!("rule_use {r:?}"),
            }
        }
        RuleUse {
            disable,
            call: call.expect("rule call"),
        }
    }

    fn lists(&mut self, p: Pair<Rule>) -> ListLayout {
        let span = self.span(&p);
        let mut cover = Vec::new();
        let mut bindings = Vec::new();
        for q in p.kids() {
            match q.as_rule() {
                Rule::cover => cover = q.kids().map(|w| self.ident(w)).collect(),
                Rule::list_binding => bindings.push(self.binding(q)),
                r => unreachable!("lists {r:?}"),
            }
        }
        ListLayout {
            cover,
            bindings,
            span,
        }
    }

    fn binding(&mut self, p: Pair<Rule>) -> ListBinding {
        let span = self.span(&p);
        let mut inner = p.kids();
        let var = self.ident(inner.next().expect("var"));
        let list = self.ident(inner.next().expect("list"));
        let mut offset = 0;
        if let Some(off) = inner.next() {
            let neg = off.as_str().trim_start().starts_with('-');
            let n = self.int(off.kids().next().expect("offset int"));
            offset = if neg { -n.value } else { n.value };
        }
        ListBinding {
            var,
            list,
            offset,
            span,
        }
    }

    fn block(&mut self, p: Pair<Rule>) -> BlockDef {
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

    fn param(&mut self, p: Pair<Rule>) -> Param {
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

    fn stmt(&mut self, p: Pair<Rule>) -> Stmt {
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
        let source = self.ident(inner.next().expect("source"));
        let ops = inner.map(|c| self.call(c)).collect();
        Chain { source, ops, span }
    }

    fn ops(&mut self, p: Pair<Rule>) -> Vec<Call> {
        p.kids().map(|c| self.call(c)).collect()
    }

    fn call(&mut self, p: Pair<Rule>) -> Call {
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

    fn arg(&mut self, p: Pair<Rule>) -> Arg {
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

    fn stage(&mut self, p: Pair<Rule>) -> Stage {
        let span = self.span(&p);
        let mut name = None;
        let mut block = None;
        let mut repeats = None;
        let mut args = Vec::new();
        for q in p.kids() {
            match q.as_rule() {
                Rule::stage_name => name = Some(self.ident(q.kids().next().expect("ident"))),
                Rule::ident => block = Some(self.ident(q)),
                Rule::repeats => repeats = Some(self.int(q.kids().next().expect("int"))),
                Rule::call_args => args = q.kids().map(|a| self.arg(a)).collect(),
                // `only_stage` (the YAML twin's fragment) ends with EOI.
                Rule::EOI => {}
                r => unreachable!("stage {r:?}"),
            }
        }
        Stage {
            name,
            block: block.expect("block"),
            repeats: repeats.expect("repeats"),
            args,
            span,
        }
    }

    fn string(&self, p: Pair<Rule>) -> StrLit {
        let span = self.span(&p);
        let text = p.as_str();
        StrLit {
            value: text[1..text.len() - 1].to_string(),
            span,
        }
    }

    fn import(&mut self, p: Pair<Rule>) -> Import {
        let span = self.span(&p);
        let mut inner = p.kids();
        let format = self.ident(inner.next().expect("format"));
        let items = inner
            .map(|item| {
                let q = item.kids().next().expect("import item");
                let rule = q.as_rule();
                let mut parts = q.kids();
                match rule {
                    Rule::import_rename => {
                        let param = self.ident(parts.next().expect("param"));
                        let to = self.string(parts.next().expect("string"));
                        ImportItem::Rename { param, to }
                    }
                    Rule::import_ignore => ImportItem::Ignore {
                        pattern: self.string(parts.next().expect("string")),
                    },
                    _ => {
                        let part = self.ident(parts.next().expect("part"));
                        let template = self.string(parts.next().expect("string"));
                        ImportItem::Prefix { part, template }
                    }
                }
            })
            .collect();
        Import {
            format,
            items,
            span,
        }
    }

    fn profile(&mut self, p: Pair<Rule>) -> Profile {
        let span = self.span(&p);
        let mut inner = p.kids();
        let name = self.ident(inner.next().expect("profile name"));
        let items = inner.map(|q| self.profile_item(q)).collect();
        Profile { name, items, span }
    }

    fn profile_item(&mut self, p: Pair<Rule>) -> ProfileItem {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::profile_rules => ProfileItem::Rules {
                rules: p.kids().map(|r| self.rule_use(r)).collect(),
                span,
            },
            Rule::list_item => {
                let mut inner = p.kids();
                let name = self.ident(inner.next().expect("list name"));
                let entries = inner.map(|e| self.list_entry(e)).collect();
                ProfileItem::List {
                    name,
                    entries,
                    span,
                }
            }
            Rule::scope_item => {
                let mut inner = p.kids();
                let target = self.scope_target(inner.next().expect("target"));
                let bits = inner.map(|s| self.setting(s)).collect();
                ProfileItem::Scope { target, bits, span }
            }
            Rule::setting => ProfileItem::Setting(self.setting(p)),
            r => unreachable!("profile item {r:?}"),
        }
    }

    fn list_entry(&mut self, p: Pair<Rule>) -> ListEntry {
        let span = self.span(&p);
        let mut inner = p.kids();
        let value = self.int(inner.next().expect("value"));
        let repeat = inner.next().map(|r| self.int(r));
        ListEntry {
            value,
            repeat,
            span,
        }
    }

    fn scope_target(&mut self, p: Pair<Rule>) -> ScopeTarget {
        let q = p.kids().next().expect("scope kind");
        let span = self.span(&q);
        match q.as_rule() {
            Rule::scope_all => ScopeTarget::All(span),
            Rule::scope_stem => ScopeTarget::Stem(span),
            Rule::scope_head => ScopeTarget::Head(span),
            Rule::scope_fc => ScopeTarget::Fc(span),
            Rule::scope_stage => ScopeTarget::Stage(self.ident(q.kids().next().expect("stage"))),
            Rule::scope_block => {
                let mut inner = q.kids();
                let stage = self.ident(inner.next().expect("stage"));
                let index = self.int(inner.next().expect("index"));
                ScopeTarget::Block { stage, index, span }
            }
            r => unreachable!("scope {r:?}"),
        }
    }

    fn expr(&mut self, p: Pair<Rule>) -> Expr {
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
