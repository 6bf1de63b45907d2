//! pest's parse errors -> E0001 diagnostics: what was expected (in words,
//! not rule names), the token found, and hints for the usual slips (an
//! unclosed `{`, a chain joined with something other than `->`).

use super::Rule;
use crate::ast::Span;
use crate::diag::{Diagnostic, Diagnostics};

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

pub(super) fn syntax_error(e: pest::error::Error<Rule>, src: &str, base: usize) -> Diagnostics {
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
