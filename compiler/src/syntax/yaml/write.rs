//! Writing: AST -> ordered YAML tree ([`Out`]) in the canonical layout of
//! the module docs, which [`super::print_yaml`] serializes. Values are
//! printed with the `.qspec` printer; ints stay YAML ints.

use crate::ast::*;
use crate::syntax::print;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// An order-preserving YAML tree to serialize.
pub(super) enum Out {
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

pub(super) fn model_tree(m: &Model) -> Out {
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
