//! The abstract syntax tree of a model spec.
//!
//! Input: produced by [`crate::syntax`] from `.qspec` text or its YAML twin.
//! Output: consumed by [`crate::check`] and [`crate::lower`].
//!
//! Invariants:
//! - Every node carries a [`Span`] (byte offsets into the file it came from).
//!   Spans never take part in equality: the AST parsed from a `.qspec` file and
//!   the one parsed from its YAML twin compare equal when they describe the
//!   same model, which is what the round-trip tests rely on.
//! - The AST is purely syntactic: names are not resolved and values are not
//!   checked. Item order inside the model is canonical (fields, not a list),
//!   so printing is deterministic.

use std::fmt;

/// Byte range `start..end` in the source file. Equality ignores it (see module docs).
#[derive(Clone, Copy, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start..self.end
    }
}

impl PartialEq for Span {
    fn eq(&self, _: &Span) -> bool {
        true
    }
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// A name written in the spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

impl Ident {
    pub fn new(name: impl Into<String>, span: Span) -> Self {
        Ident {
            name: name.into(),
            span,
        }
    }
}

/// A whole model spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub name: Ident,
    pub input: InputShape,
    pub classes: Option<IntLit>,
    /// `quant { weights dorefa  acts mpact(10) }`: model-wide quantizer defaults.
    pub quant: Vec<Setting>,
    /// `init { conv kaiming_uniform  linear normal(0.001) }`: how weights start.
    pub init: Vec<Setting>,
    /// `rules { quantize_after_add(aout) ... }`: placement rules.
    pub rules: Vec<RuleUse>,
    /// `lists { cover stem blocks head fc  w = wbit[i] ... }`: how the seed's
    /// bit lists map onto layers. `None` means the default layout.
    pub lists: Option<ListLayout>,
    pub blocks: Vec<BlockDef>,
    pub stem: Option<Section>,
    pub stages: Vec<Stage>,
    pub head: Option<Section>,
    pub fc: Option<Section>,
    pub profiles: Vec<Profile>,
    /// `import seed { ... }`: how checkpoints of another code base map onto this model.
    pub imports: Vec<Import>,
    pub span: Span,
}

/// A quoted string.
#[derive(Clone, Debug, PartialEq)]
pub struct StrLit {
    pub value: String,
    pub span: Span,
}

/// `import FORMAT { ... }`
#[derive(Clone, Debug, PartialEq)]
pub struct Import {
    pub format: Ident,
    pub items: Vec<ImportItem>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ImportItem {
    /// `blocks "cells.{block}"`: where a part of the model lives in the checkpoint.
    Prefix { part: Ident, template: StrLit },
    /// `rename alpha "scale_coef"`: a parameter's name in the checkpoint.
    Rename { param: Ident, to: StrLit },
    /// `ignore "cells.*.act_quant_bn.*"`: checkpoint entries the model does not use.
    Ignore { pattern: StrLit },
}

#[derive(Clone, Debug, PartialEq)]
pub struct IntLit {
    pub value: i64,
    pub span: Span,
}

/// `input 3x32x32`
#[derive(Clone, Debug, PartialEq)]
pub struct InputShape {
    pub dims: Vec<IntLit>,
    pub span: Span,
}

/// `key value`, e.g. `acts mpact(10)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    pub key: Ident,
    pub value: Expr,
    pub span: Span,
}

/// A placement rule, possibly switched off (`-quantize_shortcut`, in profiles).
#[derive(Clone, Debug, PartialEq)]
pub struct RuleUse {
    pub disable: bool,
    pub call: Call,
}

/// `name(args)`; also used for ops in chains and for rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub name: Ident,
    pub args: Vec<Arg>,
    /// Whether the call was written with parentheses (`bn` vs `bn()`): kept so
    /// that printing gives back what the user wrote.
    pub parens: bool,
    /// `as name`: names the node (and its checkpoint entries); ops only.
    pub label: Option<Ident>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

/// `lists { cover stem blocks head fc  w = wbit[i]  ain = abit[i]  aout = abit[i+1] }`
#[derive(Clone, Debug, PartialEq)]
pub struct ListLayout {
    pub cover: Vec<Ident>,
    pub bindings: Vec<ListBinding>,
    pub span: Span,
}

/// `aout = abit[i+1]`
#[derive(Clone, Debug, PartialEq)]
pub struct ListBinding {
    pub var: Ident,
    pub list: Ident,
    pub offset: i64,
    pub span: Span,
}

/// `block name(params) { statements }`
#[derive(Clone, Debug, PartialEq)]
pub struct BlockDef {
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub default: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `y = x -> conv3x3(cout) -> bn`
    Assign {
        target: Ident,
        value: Chain,
        span: Span,
    },
    /// `y += s -> act(aout)`: residual add.
    AddAssign {
        target: Ident,
        value: Chain,
        span: Span,
    },
    /// `y *= g`: multiply by a gate (squeeze-excitation).
    MulAssign {
        target: Ident,
        value: Chain,
        span: Span,
    },
    /// `a, b = x -> split(2)`: one name per part of a split.
    Unpack {
        targets: Vec<Ident>,
        value: Chain,
        span: Span,
    },
    /// `if cond { ... } else { ... }`
    If {
        cond: Expr,
        then: Vec<Stmt>,
        otherwise: Vec<Stmt>,
        span: Span,
    },
    /// `return y`
    Return { value: Chain, span: Span },
}

impl Stmt {
    pub fn span(&self) -> Span {
        match self {
            Stmt::Assign { span, .. }
            | Stmt::AddAssign { span, .. }
            | Stmt::MulAssign { span, .. }
            | Stmt::Unpack { span, .. }
            | Stmt::If { span, .. }
            | Stmt::Return { span, .. } => *span,
        }
    }
}

/// `source -> op -> op ...`
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    pub source: Source,
    pub ops: Vec<Call>,
    pub span: Span,
}

/// Where a chain starts: a named value, or values joined into one.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// `x`
    Name(Ident),
    /// `concat(a, b)`, `mul(x, g)`, `add(a, b)`
    Join(Join),
}

/// `concat(a, b, c)`: a join of named values.
#[derive(Clone, Debug, PartialEq)]
pub struct Join {
    pub op: Ident,
    pub inputs: Vec<Ident>,
    pub span: Span,
}

/// `stem: op -> op ...` (and `head:`, `fc:`): a chain applied to the running value.
#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    pub keyword: Ident,
    pub ops: Vec<Call>,
    pub span: Span,
}

/// `stage s2: cell x3 (cout: 32, stride: 2)`
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    pub name: Option<Ident>,
    pub block: Ident,
    pub repeats: IntLit,
    pub args: Vec<Arg>,
    pub span: Span,
}

/// `profile cfg-1* { ... }`
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: Ident,
    pub items: Vec<ProfileItem>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ProfileItem {
    /// `abit [32, 8 x10, 32, 32]`
    List {
        name: Ident,
        entries: Vec<ListEntry>,
        span: Span,
    },
    /// `stage s2 { w 6 }`, `all { w 8 }`, `block s2[0] { ain 16 }`, `stem { w 32 }`
    Scope {
        target: ScopeTarget,
        bits: Vec<Setting>,
        span: Span,
    },
    /// `acts pact(10)` / `weights dorefa`: quantizer override.
    Setting(Setting),
    /// `rules { -quantize_shortcut }`
    Rules { rules: Vec<RuleUse>, span: Span },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ListEntry {
    pub value: IntLit,
    pub repeat: Option<IntLit>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ScopeTarget {
    All(Span),
    Stem(Span),
    Head(Span),
    Fc(Span),
    Stage(Ident),
    Block {
        stage: Ident,
        index: IntLit,
        span: Span,
    },
}

impl ScopeTarget {
    pub fn span(&self) -> Span {
        match self {
            ScopeTarget::All(s)
            | ScopeTarget::Stem(s)
            | ScopeTarget::Head(s)
            | ScopeTarget::Fc(s) => *s,
            ScopeTarget::Stage(i) => i.span,
            ScopeTarget::Block { span, .. } => *span,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Int(IntLit),
    Float {
        value: f64,
        text: String,
        span: Span,
    },
    Bool {
        value: bool,
        span: Span,
    },
    Name(Ident),
    Call(Call),
    Unary {
        op: UnOp,
        expr: Box<Expr>,
        span: Span,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
        span: Span,
    },
    Paren {
        expr: Box<Expr>,
        span: Span,
    },
}

impl Expr {
    pub fn span(&self) -> Span {
        match self {
            Expr::Int(i) => i.span,
            Expr::Name(i) => i.span,
            Expr::Call(c) => c.span,
            Expr::Float { span, .. }
            | Expr::Bool { span, .. }
            | Expr::Unary { span, .. }
            | Expr::Binary { span, .. }
            | Expr::Paren { span, .. } => *span,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}
