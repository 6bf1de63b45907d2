//! The YAML twin of the `.qspec` language: YAML text <-> [`ast::Model`].
//!
//! Input: a YAML document ([`parse_yaml`]) or a model ([`print_yaml`]).
//! Output: the same [`ast::Model`] the `.qspec` parser builds for the same
//! model (spans point into the YAML file), or canonical YAML text.
//!
//! # Format
//!
//! The document is one mapping. Structure (maps, lists, names of sections) is
//! YAML; everything inside a value is a `.qspec` *fragment* written as a YAML
//! string and parsed with [`parse::parse_fragment`], so expressions, ops and
//! statements have exactly the `.qspec` syntax. Top-level keys, in the order
//! [`print_yaml`] writes them:
//!
//! ```yaml
//! model: toynet             # name (required)
//! input: 3x32x32            # shape (required)
//! classes: 10               # integer
//! quant:                    # ordered map: key -> expression (ints stay YAML ints)
//!   weights: dorefa
//!   acts: mpact(10)
//! init:                     # ordered map, as quant
//!   conv: kaiming_normal_fan_out
//!   linear: normal(0.001)
//! rules:                    # list of rules (`-name` switches one off)
//!   - quantize_after_add(aout)
//! lists:
//!   cover: [stem, blocks, head, fc]   # required, at least one word
//!   bind:                             # optional
//!     - w = wbit[i]
//!     - aout = abit[i + 1]
//! blocks:
//!   - name: cell
//!     params: [cout, stride, expansion = 4]   # optional: `name` or `name = default`
//!     body:                 # statements: strings (`x = ...`, `x += ...`,
//!       - if: stride != 1 or cin != cout      #   `return ...`) or `if` maps
//!         then:
//!           - "x = x -> bn -> conv(cout, kernel: stride, stride: stride) -> act(ain)"
//!         else: []          # optional; omitted when empty
//!       - identity = x
//!       - return y
//! stem: act(ain, dorefa) -> conv3x3(16)       # ops
//! stages:
//!   - s1: "cell x1 (cout: 16, stride: 1)"     # named stage: a one-key map
//!   - "cell x3 (cout: 32, stride: 2)"         # unnamed stage: a string
//! head: conv1x1(512) -> bn
//! fc: linear(classes)
//! profiles:
//!   - name: cfg-1*
//!     items:                # ordered; each item is a one-key map, and its
//!       - abit: [32, 8 x11, 16]      # value decides what it is: a list is a
//!                                    # bit list (ints or "8 x11" strings),
//!       - stage s2: {w: 6, ain: 6}   # a map is a scope (key: all, stem, head,
//!                                    # fc, stage NAME or block NAME[i]),
//!       - acts: pact(10)             # a scalar is a setting,
//!       - rules: [-quantize_shortcut]  # and the key `rules` holds rules.
//! ```
//!
//! - Everything but `model` and `input` is optional; `~` or an empty value is
//!   an empty list or map. A profile item's kind follows from its value
//!   exactly as `[`, `{` or a bare value decide it in `.qspec`.
//! - Quoting is plain YAML: a value that contains `: ` or starts with `*`,
//!   `&`, `!`, `%`, `@`, `` ` ``, `[` or `{` must be quoted, and inside flow
//!   lists and maps (`[...]`, `{...}`) so must one with `,`, `[`, `]`, `{` or
//!   `}` (e.g. `['w = wbit[i]']`). [`print_yaml`] quotes exactly where needed.
//! - A YAML scalar that is not a string (`10`, `0.5`, `007`) is read as the
//!   `.qspec` text it spells. Only `true`/`false` (any case) are booleans:
//!   `yes`, `no`, `on`, `off` are names.
//! - One document per file; anchors, aliases and merge keys work as in YAML
//!   (positions then point at the alias).
//!
//! # Diagnostics
//!
//! All problems of a file are reported in one run (never a panic):
//! - E0001: a YAML syntax error (with its line and column; one per file, as
//!   YAML cannot go on after one), or a syntax error inside a fragment,
//!   pointing at the exact byte in the YAML file (the fragment is parsed with
//!   the byte offset of the scalar's content as base; inside quoted scalars
//!   with escapes or folded multi-line scalars, positions are approximate);
//! - E0002: lists and maps nested deeper than [`MAX_YAML_DEPTH`] (or a
//!   document over serde-saphyr's size budget);
//! - E0003: an integer that does not fit in 64 bits;
//! - E0004: a missing required key (`model`, `input`, `name`, `cover`, `then`);
//! - E0005: a key given twice in a map with fixed keys (repeated keys in
//!   `quant` and in scope maps are kept, in order, like repeated settings in
//!   `.qspec`);
//! - E0006: an unknown key (the note lists the valid ones);
//! - E0007: a node of the wrong kind (a map where a list is expected, a
//!   profile item that is not a one-key map, an empty `cover`, ...).
//!
//! # Invariants
//!
//! - [`print_yaml`] is deterministic; ints are YAML ints, everything else is a
//!   string that the YAML serializer quotes only where YAML needs it.
//! - `parse_yaml(&print_yaml(m)) == m` for every model the parsers can build
//!   (spans never compare), and `parse_qspec(&print_qspec(&parse_yaml(y)?))`
//!   gives the same model back: the YAML form accepts nothing `.qspec` cannot
//!   print (names are checked as `.qspec` names, `cover` is not empty).
//! - Comments are not part of the AST and are not kept.

use crate::ast::*;
use crate::diag::{Diagnostic, Diagnostics};
use crate::syntax::parse::{self, Fragment, FragmentValue};
use crate::syntax::print;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use std::fmt;

// ---------------------------------------------------------------------------
// Reading: YAML text -> spanned tree -> AST
// ---------------------------------------------------------------------------

/// Deepest nesting of YAML lists and maps accepted (an `if` inside `then`
/// costs two levels; a block body starts at level five). Deeper documents are
/// refused with E0002 before they can exhaust the stack: the spanned
/// deserializer recurses once per level with large frames in debug builds.
pub const MAX_YAML_DEPTH: usize = 32;

/// Parses a YAML model spec.
pub fn parse_yaml(src: &str) -> Result<Model, Diagnostics> {
    let mut options = serde_saphyr::Options::default();
    // Only `true`/`false` are booleans (`no`, `on`, `y` stay strings), errors
    // come without a rendered snippet (we render our own), and repeated keys
    // reach us so that `quant` may repeat a setting like `.qspec` can.
    options.strict_booleans = true;
    options.with_snippet = false;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_YAML_DEPTH;
    options.budget = Some(budget);
    let root: YNode = match serde_saphyr::from_str_with_options(src, options) {
        Ok(root) => root,
        Err(e) => return Err(yaml_error(src, &e)),
    };
    let mut cx = Reader {
        src,
        diags: Diagnostics::default(),
    };
    let model = cx.model(&root);
    let mut diags = cx.diags;
    for d in &mut diags.items {
        for l in &mut d.labels {
            l.span = snap(src, l.span);
        }
    }
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(model)
}

/// A YAML node with where it starts in the file.
struct YNode {
    val: YVal,
    loc: serde_saphyr::Location,
    /// End byte of the node's last scalar (collections: of any descendant).
    end: Option<usize>,
}

enum YVal {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<YNode>),
    Map(Vec<(YNode, YNode)>),
}

impl YVal {
    fn kind(&self) -> &'static str {
        match self {
            YVal::Null => "nothing",
            YVal::Bool(_) => "a boolean",
            YVal::Int(_) => "an integer",
            YVal::Float(_) => "a number",
            YVal::Str(_) => "a string",
            YVal::Seq(_) => "a list",
            YVal::Map(_) => "a map",
        }
    }
}

impl<'de> Deserialize<'de> for YNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<YVal>::deserialize(d)?;
        let span = s.referenced.span();
        let own_end = match (span.byte_offset(), span.byte_len()) {
            (Some(o), Some(l)) => usize::try_from(o.saturating_add(l)).ok(),
            _ => None,
        };
        let child_end = match &s.value {
            YVal::Seq(items) => items.iter().filter_map(|n| n.end).max(),
            YVal::Map(entries) => entries
                .iter()
                .flat_map(|(k, v)| [k.end, v.end])
                .flatten()
                .max(),
            _ => None,
        };
        Ok(YNode {
            val: s.value,
            loc: s.referenced,
            end: own_end.max(child_end),
        })
    }
}

impl<'de> Deserialize<'de> for YVal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(YVisitor)
    }
}

struct YVisitor;

impl<'de> Visitor<'de> for YVisitor {
    type Value = YVal;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<YVal, E> {
        Ok(YVal::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<YVal, E> {
        Ok(YVal::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<YVal, D::Error> {
        d.deserialize_any(YVisitor)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<YVal, E> {
        Ok(YVal::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<YVal, E> {
        Ok(YVal::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<YVal, E> {
        Ok(YVal::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<YVal, E> {
        Ok(YVal::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<YVal, E> {
        match i128::try_from(v) {
            Ok(v) => Ok(YVal::Int(v)),
            Err(_) => Ok(YVal::Float(v as f64)),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<YVal, E> {
        Ok(YVal::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<YVal, E> {
        Ok(YVal::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<YVal, E> {
        Ok(YVal::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<YVal, E> {
        Ok(YVal::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<YVal, A::Error> {
        let mut items = Vec::new();
        while let Some(x) = a.next_element::<YNode>()? {
            items.push(x);
        }
        Ok(YVal::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<YVal, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = a.next_key::<YNode>()? {
            let v = a.next_value::<YNode>()?;
            entries.push((k, v));
        }
        Ok(YVal::Map(entries))
    }
}

/// Byte offset of 1-based `line`/`column` (in characters); clamped to the file.
fn line_col_offset(src: &str, line: u64, column: u64) -> usize {
    if line == 0 {
        return 0;
    }
    let mut start = 0usize;
    for _ in 1..line {
        match src[start..].find('\n') {
            Some(i) => start += i + 1,
            None => return src.len(),
        }
    }
    let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
    let col = usize::try_from(column.saturating_sub(1)).unwrap_or(usize::MAX);
    src[start..line_end]
        .char_indices()
        .nth(col)
        .map_or(line_end, |(i, _)| start + i)
}

/// Clamps a span to the file and widens it to character boundaries.
fn snap(src: &str, s: Span) -> Span {
    let mut start = s.start.min(src.len());
    while !src.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = s.end.clamp(start, src.len());
    while !src.is_char_boundary(end) {
        end += 1;
    }
    Span::new(start, end)
}

fn yaml_error(src: &str, e: &serde_saphyr::Error) -> Diagnostics {
    let e = e.without_snippet();
    let mut message = e.to_string();
    // The position is in the label; drop serde-saphyr's " at line L, column C".
    if let Some(i) = message.rfind(" at line ") {
        if message[i..].contains(", column ") {
            message.truncate(i);
        }
    }
    let start = match e.location() {
        Some(loc) => {
            let by_byte = loc
                .span()
                .byte_offset()
                .and_then(|o| usize::try_from(o).ok())
                .filter(|&o| o <= src.len() && src.is_char_boundary(o));
            by_byte.unwrap_or_else(|| line_col_offset(src, loc.line(), loc.column()))
        }
        None => 0,
    };
    let span = snap(src, Span::new(start, start + 1));
    let d = if message.contains("recursion limit") || message.contains("Depth {") {
        Diagnostic::error("E0002", "YAML nested too deeply")
            .primary(span, format!("nesting deeper than {MAX_YAML_DEPTH} levels"))
            .note("qatc limits nesting so that no input can exhaust its stack")
    } else if message.starts_with("budget breached") {
        Diagnostic::error("E0002", "YAML document too large")
            .primary(span, message)
            .note("qatc limits the size of YAML documents")
    } else {
        let mut d = Diagnostic::error("E0001", format!("YAML syntax error: {message}"));
        if message.contains("mapping values are not allowed") {
            d = d.help("quote a value that contains `: `, e.g. `- s1: \"cell x1 (cout: 16)\"`");
        }
        d.primary(span, message)
    };
    d.into()
}

/// The keys a map may hold; reports unknown and repeated ones.
struct Fields<'n> {
    entries: Vec<(&'static str, &'n YNode, &'n YNode)>,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n YNode> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, _, v)| *v)
    }
    fn key(&self, key: &str) -> Option<&'n YNode> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, k, _)| *k)
    }
}

struct Reader<'s> {
    src: &'s str,
    diags: Diagnostics,
}

impl Reader<'_> {
    // --- positions -------------------------------------------------------

    fn start(&self, n: &YNode) -> usize {
        let by_byte = n
            .loc
            .span()
            .byte_offset()
            .and_then(|o| usize::try_from(o).ok())
            .filter(|&o| o <= self.src.len() && self.src.is_char_boundary(o));
        by_byte.unwrap_or_else(|| line_col_offset(self.src, n.loc.line(), n.loc.column()))
    }

    /// The whole node (collections: up to the end of their last scalar).
    fn span(&self, n: &YNode) -> Span {
        let start = self.start(n);
        let end = n.end.unwrap_or(start).max(start);
        snap(self.src, Span::new(start, end))
    }

    /// Where to point at a node: scalars whole, collections by their first line.
    fn head(&self, n: &YNode) -> Span {
        let s = self.span(n);
        match n.val {
            YVal::Seq(_) | YVal::Map(_) => {
                let line_end = self.src[s.start..]
                    .find('\n')
                    .map_or(self.src.len(), |i| s.start + i);
                let end = s.end.min(line_end).max(s.start + 1);
                snap(self.src, Span::new(s.start, end))
            }
            _ => snap(self.src, Span::new(s.start, s.end.max(s.start + 1))),
        }
    }

    fn join(&self, a: &YNode, b: &YNode) -> Span {
        let (a, b) = (self.span(a), self.span(b));
        Span::new(a.start.min(b.start), a.end.max(b.end))
    }

    // --- diagnostics -----------------------------------------------------

    fn wrong_kind(&mut self, n: &YNode, expected: &str) {
        let found = n.val.kind();
        self.diags.push(
            Diagnostic::error("E0007", format!("expected {expected}, found {found}"))
                .primary(self.head(n), format!("expected {expected}")),
        );
    }

    fn missing(&mut self, at: Span, key: &str, context: &str, help: &str) {
        self.diags.push(
            Diagnostic::error("E0004", format!("missing `{key}`"))
                .primary(at, format!("{context} has no `{key}`"))
                .help(help.to_string()),
        );
    }

    // --- scalars and fragments -------------------------------------------

    /// The `.qspec` text a scalar spells, with the byte offset it starts at.
    fn text(&mut self, n: &YNode, expected: &str) -> Option<(String, usize)> {
        let start = self.start(n);
        match &n.val {
            YVal::Str(s) => {
                // Quoted scalars: the content starts after the quote (plain
                // scalars never start with one; aliases point at `*name`).
                let rest = self.src.get(start..).unwrap_or("");
                let base = if rest.starts_with('"') || rest.starts_with('\'') {
                    start + 1
                } else {
                    start
                };
                Some((s.clone(), base))
            }
            YVal::Int(i) => {
                // Keep the spelling (`007` stays a name, not `7`) unless the
                // node is an alias or a YAML-only form such as `0x10`.
                let raw = n
                    .end
                    .and_then(|e| self.src.get(start..e))
                    .filter(|r| r.parse::<i128>().ok() == Some(*i));
                Some((raw.map_or_else(|| i.to_string(), str::to_string), start))
            }
            YVal::Bool(b) => Some((b.to_string(), start)),
            YVal::Float(f) => {
                // Keep the spelling when the node is written out (not an alias).
                let raw = n
                    .end
                    .and_then(|e| self.src.get(start..e))
                    .filter(|r| r.parse::<f64>().ok() == Some(*f));
                Some((raw.map_or_else(|| format!("{f:?}"), str::to_string), start))
            }
            YVal::Null | YVal::Seq(_) | YVal::Map(_) => {
                self.wrong_kind(n, expected);
                None
            }
        }
    }

    fn fragment(&mut self, n: &YNode, kind: Fragment, expected: &str) -> Option<FragmentValue> {
        self.fragment_or_help(n, kind, expected, None)
    }

    /// [`Self::fragment`], adding `help` to the syntax errors it reports.
    fn fragment_or_help(
        &mut self,
        n: &YNode,
        kind: Fragment,
        expected: &str,
        help: Option<&str>,
    ) -> Option<FragmentValue> {
        let (text, base) = self.text(n, expected)?;
        match parse::parse_fragment(kind, &text, base) {
            Ok(v) => Some(v),
            Err(mut d) => {
                if let Some(help) = help {
                    for x in &mut d.items {
                        x.notes.push(format!("help: {help}"));
                    }
                }
                self.diags.extend(d);
                None
            }
        }
    }

    fn ident(&mut self, n: &YNode, expected: &str) -> Option<Ident> {
        match self.fragment(n, Fragment::Ident, expected)? {
            FragmentValue::Word(i) => Some(i),
            _ => None,
        }
    }

    fn expr(&mut self, n: &YNode) -> Option<Expr> {
        match self.fragment(n, Fragment::Expr, "an expression")? {
            FragmentValue::Expr(e) => Some(e),
            _ => None,
        }
    }

    fn int(&mut self, n: &YNode, expected: &str) -> Option<IntLit> {
        let (text, base) = self.text(n, expected)?;
        let span = snap(self.src, Span::new(base, base + text.len()));
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            self.diags.push(
                Diagnostic::error(
                    "E0007",
                    format!("expected {expected}, found {}", n.val.kind()),
                )
                .primary(span, format!("expected {expected}")),
            );
            return None;
        }
        match text.parse::<i64>() {
            Ok(value) => Some(IntLit { value, span }),
            Err(_) => {
                self.diags.push(
                    Diagnostic::error("E0003", "number too large")
                        .primary(span, "does not fit in a 64-bit integer"),
                );
                None
            }
        }
    }

    /// A map with fixed keys. `None` (after a diagnostic) when `n` is not a map;
    /// `~` is an empty map.
    fn fields<'n>(
        &mut self,
        n: &'n YNode,
        context: &str,
        known: &[&'static str],
    ) -> Option<Fields<'n>> {
        let entries = match &n.val {
            YVal::Map(entries) => entries,
            YVal::Null => return Some(Fields { entries: vec![] }),
            _ => {
                self.wrong_kind(n, &format!("{context} (a map)"));
                return None;
            }
        };
        let mut fields = Fields { entries: vec![] };
        for (k, v) in entries {
            let Some((name, _)) = self.key_text(k) else {
                continue;
            };
            match known.iter().find(|&&x| x == name) {
                Some(&key) => {
                    if let Some(first) = fields.key(key) {
                        self.diags.push(
                            Diagnostic::error("E0005", format!("`{key}` is given more than once"))
                                .primary(self.head(k), "repeated here")
                                .secondary(self.head(first), "first given here"),
                        );
                    } else {
                        fields.entries.push((key, k, v));
                    }
                }
                None => {
                    let valid: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
                    self.diags.push(
                        Diagnostic::error("E0006", format!("unknown key `{name}` in {context}"))
                            .primary(self.head(k), "unknown key")
                            .note(format!("valid keys: {}", valid.join(", "))),
                    );
                }
            }
        }
        Some(fields)
    }

    /// The text of a map key (any scalar), or a diagnostic.
    fn key_text(&mut self, k: &YNode) -> Option<(String, usize)> {
        self.text(k, "a key (a name)")
    }

    /// The items of a list; `~` is an empty list.
    fn items<'n>(&mut self, n: &'n YNode, expected: &str) -> &'n [YNode] {
        match &n.val {
            YVal::Seq(items) => items,
            YVal::Null => &[],
            _ => {
                self.wrong_kind(n, expected);
                &[]
            }
        }
    }

    /// The entries of an open map (`quant`, scopes); `~` is an empty map.
    fn entries<'n>(&mut self, n: &'n YNode, expected: &str) -> &'n [(YNode, YNode)] {
        match &n.val {
            YVal::Map(entries) => entries,
            YVal::Null => &[],
            _ => {
                self.wrong_kind(n, expected);
                &[]
            }
        }
    }

    fn settings(&mut self, n: &YNode, expected: &str) -> Vec<Setting> {
        let mut out = Vec::new();
        for (k, v) in self.entries(n, expected) {
            let key = self.ident(k, "a setting name");
            let value = self.expr(v);
            if let (Some(key), Some(value)) = (key, value) {
                out.push(Setting {
                    key,
                    value,
                    span: self.join(k, v),
                });
            }
        }
        out
    }

    fn rules(&mut self, n: &YNode) -> Vec<RuleUse> {
        let mut out = Vec::new();
        for r in self.items(n, "a list of rules") {
            if let Some(FragmentValue::Rule(r)) = self.fragment(r, Fragment::Rule, "a rule") {
                out.push(r);
            }
        }
        out
    }

    // --- the model -------------------------------------------------------

    fn model(&mut self, root: &YNode) -> Model {
        const KEYS: &[&str] = &[
            "model", "input", "classes", "quant", "init", "rules", "lists", "blocks", "stem",
            "stages", "head", "fc", "profiles", "imports",
        ];
        let root_span = self.head(root);
        let f = self
            .fields(root, "the model", KEYS)
            .unwrap_or(Fields { entries: vec![] });
        let name = match f.get("model") {
            Some(n) => self.ident(n, "the model name"),
            None => {
                self.missing(
                    root_span,
                    "model",
                    "this file",
                    "add `model: NAME` at the top",
                );
                None
            }
        };
        let name_span = name.as_ref().map_or(root_span, |n| n.span);
        let input = match f.get("input") {
            Some(n) => match self.fragment(n, Fragment::Shape, "a shape such as 3x32x32") {
                Some(FragmentValue::Shape(s)) => Some(s),
                _ => None,
            },
            None => {
                self.missing(
                    name_span,
                    "input",
                    "this model",
                    "add `input: 3x32x32` (channels x height x width)",
                );
                None
            }
        };
        let classes = f.get("classes").and_then(|n| self.int(n, "a whole number"));
        let quant = f
            .get("quant")
            .map(|n| self.settings(n, "a map of quantizer settings"))
            .unwrap_or_default();
        let init = f
            .get("init")
            .map(|n| self.settings(n, "a map of initialisation settings"))
            .unwrap_or_default();
        let rules = f.get("rules").map(|n| self.rules(n)).unwrap_or_default();
        let lists = f.get("lists").and_then(|n| self.lists(n));
        let blocks = match f.get("blocks") {
            Some(n) => self
                .items(n, "a list of blocks")
                .iter()
                .filter_map(|b| self.block(b))
                .collect(),
            None => Vec::new(),
        };
        let stem = self.section(&f, "stem");
        let stages = match f.get("stages") {
            Some(n) => self
                .items(n, "a list of stages")
                .iter()
                .filter_map(|s| self.stage(s))
                .collect(),
            None => Vec::new(),
        };
        let head = self.section(&f, "head");
        let fc = self.section(&f, "fc");
        let profiles = match f.get("profiles") {
            Some(n) => self
                .items(n, "a list of profiles")
                .iter()
                .filter_map(|p| self.profile(p))
                .collect(),
            None => Vec::new(),
        };
        let imports = match f.get("imports") {
            Some(n) => self
                .items(n, "a list of imports")
                .iter()
                .filter_map(|i| self.import(i))
                .collect(),
            None => Vec::new(),
        };
        Model {
            imports,
            name: name.unwrap_or_else(|| Ident::new("", root_span)),
            input: input.unwrap_or(InputShape {
                dims: Vec::new(),
                span: Span::default(),
            }),
            classes,
            quant,
            init,
            rules,
            lists,
            blocks,
            stem,
            stages,
            head,
            fc,
            profiles,
            span: Span::new(0, self.src.len()),
        }
    }

    /// `{format: seed, items: [{stem: stem}, {rename alpha: scale_coef}, {ignore: "x.*"}]}`
    fn import(&mut self, n: &YNode) -> Option<Import> {
        let f = self.fields(n, "an import", &["format", "items"])?;
        let format = match f.get("format") {
            Some(x) => self.ident(x, "a checkpoint format name")?,
            None => {
                self.missing(self.head(n), "format", "this import", "add `format: seed`");
                return None;
            }
        };
        let mut items = Vec::new();
        if let Some(list) = f.get("items") {
            for item in self.items(list, "a list of import items") {
                for (k, v) in self.entries(item, "an import item (a one-key map)") {
                    let (Some((key, kbase)), Some((value, vbase))) =
                        (self.key_text(k), self.text(v, "a string"))
                    else {
                        continue;
                    };
                    let lit = StrLit {
                        value: value.clone(),
                        span: snap(self.src, Span::new(vbase, vbase + value.len())),
                    };
                    let key_span = snap(self.src, Span::new(kbase, kbase + key.len()));
                    if key == "ignore" {
                        items.push(ImportItem::Ignore { pattern: lit });
                    } else if let Some(param) = key.strip_prefix("rename ") {
                        let off = kbase + key.len() - param.len();
                        let param = Ident::new(
                            param.trim(),
                            snap(self.src, Span::new(off, off + param.len())),
                        );
                        items.push(ImportItem::Rename { param, to: lit });
                    } else {
                        items.push(ImportItem::Prefix {
                            part: Ident::new(key, key_span),
                            template: lit,
                        });
                    }
                }
            }
        }
        Some(Import {
            format,
            items,
            span: self.head(n),
        })
    }

    fn section(&mut self, f: &Fields, key: &str) -> Option<Section> {
        let (k, v) = (f.key(key)?, f.get(key)?);
        let expected = "ops such as `conv3x3(16) -> bn`";
        match self.fragment(v, Fragment::Ops, expected)? {
            FragmentValue::Ops(ops) => Some(Section {
                keyword: Ident::new(key, self.head(k)),
                ops,
                span: self.join(k, v),
            }),
            _ => None,
        }
    }

    fn lists(&mut self, n: &YNode) -> Option<ListLayout> {
        let f = self.fields(n, "`lists`", &["cover", "bind"])?;
        let mut cover = Vec::new();
        match f.get("cover") {
            Some(c) => {
                for w in self.items(c, "a list of section names") {
                    if let Some(FragmentValue::Word(w)) =
                        self.fragment(w, Fragment::Word, "a section name")
                    {
                        cover.push(w);
                    }
                }
                if cover.is_empty() && matches!(c.val, YVal::Seq(_) | YVal::Null) {
                    self.diags.push(
                        Diagnostic::error("E0007", "expected at least one section in `cover`")
                            .primary(self.head(c), "empty")
                            .help("e.g. `cover: [stem, blocks, head, fc]`"),
                    );
                }
            }
            None => {
                let at = self.head(n);
                self.missing(
                    at,
                    "cover",
                    "`lists`",
                    "add `cover: [stem, blocks, head, fc]`",
                );
            }
        }
        let mut bindings = Vec::new();
        if let Some(b) = f.get("bind") {
            for x in self.items(b, "a list of bindings") {
                if let Some(FragmentValue::Binding(b)) =
                    self.fragment(x, Fragment::Binding, "a binding such as `w = wbit[i]`")
                {
                    bindings.push(b);
                }
            }
        }
        Some(ListLayout {
            cover,
            bindings,
            span: self.span(n),
        })
    }

    fn block(&mut self, n: &YNode) -> Option<BlockDef> {
        let f = self.fields(n, "a block", &["name", "params", "body"])?;
        let name = match f.get("name") {
            Some(x) => self.ident(x, "a block name"),
            None => {
                let at = self.head(n);
                self.missing(at, "name", "this block", "add `name: NAME`");
                None
            }
        };
        let mut params = Vec::new();
        if let Some(p) = f.get("params") {
            for x in self.items(p, "a list of parameters") {
                if let Some(FragmentValue::Param(p)) =
                    self.fragment(x, Fragment::Param, "a parameter")
                {
                    params.push(p);
                }
            }
        }
        let body = f
            .get("body")
            .map(|b| self.stmts(b, "a list of statements"))
            .unwrap_or_default();
        Some(BlockDef {
            name: name?,
            params,
            body,
            span: self.span(n),
        })
    }

    fn stmts(&mut self, n: &YNode, expected: &str) -> Vec<Stmt> {
        self.items(n, expected)
            .iter()
            .filter_map(|s| self.stmt(s))
            .collect()
    }

    fn stmt(&mut self, n: &YNode) -> Option<Stmt> {
        let YVal::Map(entries) = &n.val else {
            return match self.fragment(n, Fragment::Stmt, "a statement")? {
                FragmentValue::Stmt(s) => Some(s),
                _ => None,
            };
        };
        let has_if = entries
            .iter()
            .any(|(k, _)| matches!(&k.val, YVal::Str(s) if s == "if"));
        if !has_if {
            let mut d = Diagnostic::error("E0007", "expected a statement, found a map")
                .primary(self.head(n), "not a statement")
                .help(
                    "statements are strings such as `y = x -> bn`, `y += s` or `return y`, \
                     or maps with `if`, `then` and (optionally) `else`",
                );
            if entries.len() == 1 {
                d = d.help("a statement that contains `: ` must be quoted");
            }
            self.diags.push(d);
            return None;
        }
        let f = self.fields(n, "an `if` statement", &["if", "then", "else"])?;
        let cond = f.get("if").and_then(|c| self.expr(c));
        let then = match f.get("then") {
            Some(t) => self.stmts(t, "a list of statements"),
            None => {
                let at = self.head(n);
                self.missing(at, "then", "this `if`", "add `then: [...]`");
                Vec::new()
            }
        };
        let otherwise = f
            .get("else")
            .map(|e| self.stmts(e, "a list of statements"))
            .unwrap_or_default();
        Some(Stmt::If {
            cond: cond?,
            then,
            otherwise,
            span: self.span(n),
        })
    }

    fn stage(&mut self, n: &YNode) -> Option<Stage> {
        let expected = "a stage such as `cell x3 (cout: 32)`";
        let (name, value, named) = match &n.val {
            YVal::Map(entries) if entries.len() == 1 => {
                let (k, v) = &entries[0];
                // An unquoted `BLOCK xN (name: value)` reads as a map whose
                // key is not a name: say so, and leave the value alone.
                let help = "a named stage is `- NAME: BLOCK xN (args)`; \
                            quote a stage that contains `: `";
                match self.fragment_or_help(k, Fragment::Ident, "a stage name", Some(help))? {
                    FragmentValue::Word(name) => (Some(name), v, true),
                    _ => return None,
                }
            }
            YVal::Map(_) => {
                self.diags.push(
                    Diagnostic::error("E0007", "expected one stage per list item")
                        .primary(self.head(n), "a named stage is a map with one key")
                        .help("write `- NAME: BLOCK xN (args)` or `- BLOCK xN (args)`"),
                );
                return None;
            }
            _ => (None, n, false),
        };
        let FragmentValue::Stage(mut stage) = self.fragment(value, Fragment::Stage, expected)?
        else {
            return None;
        };
        if named {
            // Named by its key: the value must not name it again.
            if let Some(inner) = &stage.name {
                self.diags.push(
                    Diagnostic::error("E0007", "stage named twice")
                        .primary(inner.span, "already named by its key")
                        .help("write `- NAME: BLOCK xN (args)`"),
                );
                return None;
            }
            stage.name = name;
            stage.span = self.span(n);
        }
        Some(stage)
    }

    fn profile(&mut self, n: &YNode) -> Option<Profile> {
        let f = self.fields(n, "a profile", &["name", "items"])?;
        let name = match f.get("name") {
            Some(x) => match self.fragment(x, Fragment::ProfileName, "a profile name")? {
                FragmentValue::Word(w) => Some(w),
                _ => None,
            },
            None => {
                let at = self.head(n);
                self.missing(at, "name", "this profile", "add `name: NAME`");
                None
            }
        };
        let mut items = Vec::new();
        if let Some(list) = f.get("items") {
            for item in self.items(list, "a list of profile items") {
                if let Some(item) = self.profile_item(item) {
                    items.push(item);
                }
            }
        }
        Some(Profile {
            name: name?,
            items,
            span: self.span(n),
        })
    }

    fn profile_item(&mut self, n: &YNode) -> Option<ProfileItem> {
        let (k, v) = match &n.val {
            YVal::Map(entries) if entries.len() == 1 => (&entries[0].0, &entries[0].1),
            _ => {
                self.diags.push(
                    Diagnostic::error(
                        "E0007",
                        format!("expected a one-key map, found {}", n.val.kind()),
                    )
                    .primary(self.head(n), "not a profile item")
                    .help(
                        "items are `- abit: [8 x13]`, `- stage s2: {w: 6}`, \
                         `- acts: pact(10)` or `- rules: [-name]`",
                    ),
                );
                return None;
            }
        };
        let span = self.join(k, v);
        let is_rules = matches!(&k.val, YVal::Str(s) if s == "rules");
        match &v.val {
            _ if is_rules => {
                let rules = self.rules(v);
                Some(ProfileItem::Rules { rules, span })
            }
            YVal::Seq(entries) => {
                let name = self.ident(k, "a bit list name");
                let mut out = Vec::new();
                for e in entries {
                    if let Some(FragmentValue::Entries(es)) =
                        self.fragment(e, Fragment::Entries, "a bit-width such as 8 or `8 x3`")
                    {
                        out.extend(es);
                    }
                }
                Some(ProfileItem::List {
                    name: name?,
                    entries: out,
                    span,
                })
            }
            YVal::Map(_) => {
                let target = match self.fragment(
                    k,
                    Fragment::Scope,
                    "`all`, `stem`, `head`, `fc`, `stage NAME` or `block NAME[i]`",
                )? {
                    FragmentValue::ScopeTarget(t) => Some(t),
                    _ => None,
                };
                let bits = self.settings(v, "a map of settings");
                Some(ProfileItem::Scope {
                    target: target?,
                    bits,
                    span,
                })
            }
            YVal::Null => {
                self.wrong_kind(v, "a value, a bit list or a map of settings");
                None
            }
            _ => {
                let key = self.ident(k, "a setting name");
                let value = self.expr(v);
                Some(ProfileItem::Setting(Setting {
                    key: key?,
                    value: value?,
                    span,
                }))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Writing: AST -> ordered YAML tree -> text
// ---------------------------------------------------------------------------

/// Prints a model as YAML in the canonical layout (see the module docs).
pub fn print_yaml(m: &Model) -> String {
    let tree = model_tree(m);
    let mut options = serde_saphyr::SerializerOptions::default();
    options.compact_list_indent = false;
    options.prefer_block_scalars = false;
    serde_saphyr::to_string_with_options(&tree, options)
        .expect("serializing a tree of strings, ints, lists and maps cannot fail")
}

/// An order-preserving YAML tree to serialize.
enum Out {
    Int(i64),
    Str(String),
    Seq(Vec<Out>),
    FlowSeq(Vec<Out>),
    Map(Vec<(String, Out)>),
    FlowMap(Vec<(String, Out)>),
    /// Followed by a blank line.
    Gap(Box<Out>),
}

struct Items<'a>(&'a [Out]);
struct Entries<'a>(&'a [(String, Out)]);

impl Serialize for Items<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for x in self.0 {
            seq.serialize_element(x)?;
        }
        seq.end()
    }
}

impl Serialize for Entries<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl Serialize for Out {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Out::Int(i) => s.serialize_i64(*i),
            Out::Str(x) => s.serialize_str(x),
            Out::Seq(items) => Items(items).serialize(s),
            Out::FlowSeq(items) => serde_saphyr::FlowSeq(Items(items)).serialize(s),
            Out::Map(entries) => Entries(entries).serialize(s),
            Out::FlowMap(entries) => serde_saphyr::FlowMap(Entries(entries)).serialize(s),
            Out::Gap(inner) => serde_saphyr::SpaceAfter(&**inner).serialize(s),
        }
    }
}

fn s(text: impl Into<String>) -> Out {
    Out::Str(text.into())
}

fn expr_out(e: &Expr) -> Out {
    match e {
        Expr::Int(i) => Out::Int(i.value),
        other => s(print::expr_to_string(other)),
    }
}

fn settings_out(settings: &[Setting]) -> Vec<(String, Out)> {
    settings
        .iter()
        .map(|x| (x.key.name.clone(), expr_out(&x.value)))
        .collect()
}

fn rules_out(rules: &[RuleUse]) -> Vec<Out> {
    rules.iter().map(|r| s(print::rule_to_string(r))).collect()
}

fn stmts_out(stmts: &[Stmt]) -> Out {
    Out::Seq(
        stmts
            .iter()
            .map(|st| match st {
                Stmt::If {
                    cond,
                    then,
                    otherwise,
                    ..
                } => {
                    let mut m = vec![
                        ("if".to_string(), s(print::expr_to_string(cond))),
                        ("then".to_string(), stmts_out(then)),
                    ];
                    if !otherwise.is_empty() {
                        m.push(("else".to_string(), stmts_out(otherwise)));
                    }
                    Out::Map(m)
                }
                other => s(print::stmt_head_to_string(other).unwrap_or_default()),
            })
            .collect(),
    )
}

fn stage_text(st: &Stage) -> String {
    let mut text = format!("{} x{}", st.block.name, st.repeats.value);
    if !st.args.is_empty() {
        text.push_str(&format!(" ({})", print::args_to_string(&st.args)));
    }
    text
}

fn model_tree(m: &Model) -> Out {
    let mut top: Vec<(String, Out)> = Vec::new();
    let mut put = |key: &str, value: Out| top.push((key.to_string(), value));
    put("model", s(&m.name.name));
    if !m.input.dims.is_empty() {
        put("input", s(print::shape_to_string(&m.input)));
    }
    if let Some(c) = &m.classes {
        put("classes", Out::Int(c.value));
    }
    if !m.quant.is_empty() {
        put("quant", Out::Map(settings_out(&m.quant)));
    }
    if !m.init.is_empty() {
        put("init", Out::Map(settings_out(&m.init)));
    }
    if !m.rules.is_empty() {
        put("rules", Out::Seq(rules_out(&m.rules)));
    }
    if let Some(l) = &m.lists {
        let mut lists = vec![(
            "cover".to_string(),
            Out::FlowSeq(l.cover.iter().map(|w| s(&w.name)).collect()),
        )];
        if !l.bindings.is_empty() {
            let bind = l
                .bindings
                .iter()
                .map(|b| s(print::binding_to_string(b)))
                .collect();
            lists.push(("bind".to_string(), Out::Seq(bind)));
        }
        put("lists", Out::Map(lists));
    }
    if !m.blocks.is_empty() {
        let blocks = m
            .blocks
            .iter()
            .map(|b| {
                let mut block = vec![("name".to_string(), s(&b.name.name))];
                if !b.params.is_empty() {
                    let params = b
                        .params
                        .iter()
                        .map(|p| s(print::param_to_string(p)))
                        .collect();
                    block.push(("params".to_string(), Out::FlowSeq(params)));
                }
                block.push(("body".to_string(), stmts_out(&b.body)));
                Out::Map(block)
            })
            .collect();
        put("blocks", Out::Seq(spaced(blocks)));
    }
    if let Some(x) = &m.stem {
        put("stem", s(print::ops_to_string(&x.ops)));
    }
    if !m.stages.is_empty() {
        let stages = m
            .stages
            .iter()
            .map(|st| match &st.name {
                Some(n) => Out::Map(vec![(n.name.clone(), s(stage_text(st)))]),
                None => s(stage_text(st)),
            })
            .collect();
        put("stages", Out::Seq(stages));
    }
    if let Some(x) = &m.head {
        put("head", s(print::ops_to_string(&x.ops)));
    }
    if let Some(x) = &m.fc {
        put("fc", s(print::ops_to_string(&x.ops)));
    }
    if !m.profiles.is_empty() {
        let profiles = m
            .profiles
            .iter()
            .map(|p| {
                let items = p.items.iter().map(profile_item_out).collect();
                Out::Map(vec![
                    ("name".to_string(), s(&p.name.name)),
                    ("items".to_string(), Out::Seq(items)),
                ])
            })
            .collect();
        put("profiles", Out::Seq(spaced(profiles)));
    }
    if !m.imports.is_empty() {
        let imports = m
            .imports
            .iter()
            .map(|i| {
                let items = i
                    .items
                    .iter()
                    .map(|item| {
                        let (k, v) = match item {
                            ImportItem::Prefix { part, template } => {
                                (part.name.clone(), &template.value)
                            }
                            ImportItem::Rename { param, to } => {
                                (format!("rename {}", param.name), &to.value)
                            }
                            ImportItem::Ignore { pattern } => {
                                ("ignore".to_string(), &pattern.value)
                            }
                        };
                        Out::Map(vec![(k, s(v.clone()))])
                    })
                    .collect();
                Out::Map(vec![
                    ("format".to_string(), s(&i.format.name)),
                    ("items".to_string(), Out::Seq(items)),
                ])
            })
            .collect();
        put("imports", Out::Seq(spaced(imports)));
    }
    // Blank lines between the groups of the layout, as in `.qspec`: header,
    // quant, init, rules, lists, blocks, macro-architecture, profiles.
    let group = |key: &str| match key {
        "model" | "input" | "classes" => 0,
        "stem" | "stages" | "head" | "fc" => 6,
        "quant" => 1,
        "init" => 2,
        "rules" => 3,
        "lists" => 4,
        "blocks" => 5,
        _ => 7,
    };
    let n = top.len();
    let keys: Vec<String> = top.iter().map(|(k, _)| k.clone()).collect();
    let entries = top
        .into_iter()
        .enumerate()
        .map(|(i, (k, v))| {
            if i + 1 < n && group(&keys[i]) != group(&keys[i + 1]) {
                (k, Out::Gap(Box::new(v)))
            } else {
                (k, v)
            }
        })
        .collect();
    Out::Map(entries)
}

/// A blank line between the items of a list.
fn spaced(items: Vec<Out>) -> Vec<Out> {
    let n = items.len();
    items
        .into_iter()
        .enumerate()
        .map(|(i, x)| if i + 1 < n { Out::Gap(Box::new(x)) } else { x })
        .collect()
}

fn profile_item_out(item: &ProfileItem) -> Out {
    let (key, value) = match item {
        ProfileItem::List { name, entries, .. } => {
            let entries = entries
                .iter()
                .map(|e| match &e.repeat {
                    Some(r) => s(format!("{} x{}", e.value.value, r.value)),
                    None => Out::Int(e.value.value),
                })
                .collect();
            (name.name.clone(), Out::FlowSeq(entries))
        }
        ProfileItem::Scope { target, bits, .. } => (
            print::scope_to_string(target),
            Out::FlowMap(settings_out(bits)),
        ),
        ProfileItem::Setting(x) => (x.key.name.clone(), expr_out(&x.value)),
        ProfileItem::Rules { rules, .. } => ("rules".to_string(), Out::FlowSeq(rules_out(rules))),
    };
    Out::Map(vec![(key, value)])
}
