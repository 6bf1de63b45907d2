//! Model items -> AST: the model and its single-use items, settings and
//! rules, the `lists` layout, sections, stages, imports and profiles.

use super::{Converter, Kids, Rule};
use crate::ast::*;
use crate::diag::Diagnostic;
use pest::iterators::Pair;

impl Converter {
    pub(super) fn model(&mut self, p: Pair<Rule>) -> Model {
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

    pub(super) fn shape(&mut self, p: Pair<Rule>) -> InputShape {
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

    pub(super) fn rule_use(&mut self, p: Pair<Rule>) -> RuleUse {
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

    pub(super) fn binding(&mut self, p: Pair<Rule>) -> ListBinding {
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

    pub(super) fn stage(&mut self, p: Pair<Rule>) -> Stage {
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

    pub(super) fn list_entry(&mut self, p: Pair<Rule>) -> ListEntry {
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

    pub(super) fn scope_target(&mut self, p: Pair<Rule>) -> ScopeTarget {
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
}
