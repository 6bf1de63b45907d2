//! The model's items from the spanned tree: the top-level map, imports,
//! sections, `lists`, blocks and their statements, stages and profiles.

use super::node::{YNode, YVal};
use super::read::{Fields, Reader};
use super::spans::snap;
use crate::ast::*;
use crate::diag::Diagnostic;
use crate::syntax::parse::{Fragment, FragmentValue};

impl Reader<'_> {
    pub(super) fn model(&mut self, root: &YNode) -> Model {
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
