//! The reader of the spanned tree: its diagnostics (wrong kind, missing
//! key), scalars as `.qspec` text and fragments, fixed-key maps, lists,
//! open maps, settings and rules. The model's items are in `model`.

use super::node::{YNode, YVal};
use super::spans::snap;
use crate::ast::*;
use crate::diag::{Diagnostic, Diagnostics};
use crate::syntax::parse::{self, Fragment, FragmentValue};

/// The keys a map may hold; reports unknown and repeated ones.
pub(super) struct Fields<'n> {
    pub(super) entries: Vec<(&'static str, &'n YNode, &'n YNode)>,
}

impl<'n> Fields<'n> {
    pub(super) fn get(&self, key: &str) -> Option<&'n YNode> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, _, v)| *v)
    }
    pub(super) fn key(&self, key: &str) -> Option<&'n YNode> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, k, _)| *k)
    }
}

pub(super) struct Reader<'s> {
    pub(super) src: &'s str,
    pub(super) diags: Diagnostics,
}

impl Reader<'_> {
    // --- diagnostics -----------------------------------------------------

    pub(super) fn wrong_kind(&mut self, n: &YNode, expected: &str) {
        let found = n.val.kind();
        self.diags.push(
            Diagnostic::error("E0007", format!("expected {expected}, found {found}"))
                .primary(self.head(n), format!("expected {expected}")),
        );
    }

    pub(super) fn missing(&mut self, at: Span, key: &str, context: &str, help: &str) {
        self.diags.push(
            Diagnostic::error("E0004", format!("missing `{key}`"))
                .primary(at, format!("{context} has no `{key}`"))
                .help(help.to_string()),
        );
    }

    // --- scalars and fragments -------------------------------------------

    /// The `.qspec` text a scalar spells, with the byte offset it starts at.
    pub(super) fn text(&mut self, n: &YNode, expected: &str) -> Option<(String, usize)> {
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

    pub(super) fn fragment(
        &mut self,
        n: &YNode,
        kind: Fragment,
        expected: &str,
    ) -> Option<FragmentValue> {
        self.fragment_or_help(n, kind, expected, None)
    }

    /// [`Self::fragment`], adding `help` to the syntax errors it reports.
    pub(super) fn fragment_or_help(
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

    pub(super) fn ident(&mut self, n: &YNode, expected: &str) -> Option<Ident> {
        match self.fragment(n, Fragment::Ident, expected)? {
            FragmentValue::Word(i) => Some(i),
            _ => None,
        }
    }

    pub(super) fn expr(&mut self, n: &YNode) -> Option<Expr> {
        match self.fragment(n, Fragment::Expr, "an expression")? {
            FragmentValue::Expr(e) => Some(e),
            _ => None,
        }
    }

    pub(super) fn int(&mut self, n: &YNode, expected: &str) -> Option<IntLit> {
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
    pub(super) fn fields<'n>(
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
    pub(super) fn key_text(&mut self, k: &YNode) -> Option<(String, usize)> {
        self.text(k, "a key (a name)")
    }

    /// The items of a list; `~` is an empty list.
    pub(super) fn items<'n>(&mut self, n: &'n YNode, expected: &str) -> &'n [YNode] {
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
    pub(super) fn entries<'n>(&mut self, n: &'n YNode, expected: &str) -> &'n [(YNode, YNode)] {
        match &n.val {
            YVal::Map(entries) => entries,
            YVal::Null => &[],
            _ => {
                self.wrong_kind(n, expected);
                &[]
            }
        }
    }

    pub(super) fn settings(&mut self, n: &YNode, expected: &str) -> Vec<Setting> {
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

    pub(super) fn rules(&mut self, n: &YNode) -> Vec<RuleUse> {
        let mut out = Vec::new();
        for r in self.items(n, "a list of rules") {
            if let Some(FragmentValue::Rule(r)) = self.fragment(r, Fragment::Rule, "a rule") {
                out.push(r);
            }
        }
        out
    }
}
