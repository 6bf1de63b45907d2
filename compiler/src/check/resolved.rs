//! The resolved model: what the semantic checks produce and lowering
//! consumes.
//!
//! Every call is bound once, here: an op call carries its [`OpCall`] and its
//! arguments in parameter order (bit-widths and quantizers already
//! interpreted), a block call the index of its block and, per parameter, the
//! argument given or the default to evaluate. Lowering therefore never looks
//! a name up, binds an argument or meets a missing one: it evaluates
//! expressions and computes shapes. Spans are kept for the value-dependent
//! errors lowering reports.

use super::profiles::{ResolvedProfile, SlotInfo};
use crate::ast::{Expr, Ident, IntLit, Span};
use crate::ops::hooks::BoundArg;
use crate::ops::OpCall;
use crate::vocab::WeightInit;

/// Index into [`Resolved::blocks`].
pub type BlockId = usize;

/// The checked model, every name resolved, ready for lowering.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub name: Ident,
    /// `input CxHxW`, checked to be three positive dimensions.
    pub input: Vec<i64>,
    pub input_span: Span,
    pub classes: Option<IntLit>,
    pub blocks: Vec<ResolvedBlock>,
    pub stem: Option<ResolvedSection>,
    pub stages: Vec<ResolvedStage>,
    pub head: Option<ResolvedSection>,
    pub fc: Option<ResolvedSection>,
    /// Layer slots in order: stem, each block instance, head, fc.
    pub slots: Vec<SlotInfo>,
    pub profiles: Vec<ResolvedProfile>,
    /// The model's weight initialisation (`init { ... }`).
    pub init: WeightInit,
    /// Stage names (explicit or `stage1`, `stage2`, ...), one per stage.
    pub stage_names: Vec<String>,
}

/// The profile every model has: all bit-widths 32 (float), rules as declared.
pub const FLOAT_PROFILE: &str = "float";

impl Resolved {
    /// Looks a profile up by name; `None` picks the spec's first profile (or `float`).
    pub fn profile(&self, name: Option<&str>) -> Option<&ResolvedProfile> {
        match name {
            None => self
                .profiles
                .iter()
                .find(|p| p.name != FLOAT_PROFILE)
                .or_else(|| self.profiles.first()),
            Some(n) => self.profiles.iter().find(|p| p.name == n),
        }
    }

    pub fn profile_names(&self) -> Vec<String> {
        self.profiles.iter().map(|p| p.name.clone()).collect()
    }
}

/// `stem: ...`, `head: ...`, `fc: ...`.
#[derive(Clone, Debug)]
pub struct ResolvedSection {
    pub ops: Vec<ResolvedCall>,
    pub span: Span,
}

/// `stage name: block(args) x repeats`.
#[derive(Clone, Debug)]
pub struct ResolvedStage {
    pub block: BlockId,
    pub args: Vec<ParamArg>,
    pub repeats: usize,
    pub span: Span,
}

/// A block definition with its body resolved.
#[derive(Clone, Debug)]
pub struct ResolvedBlock {
    pub name: Ident,
    /// Parameter names, in order.
    pub params: Vec<Ident>,
    pub body: Vec<ResolvedStmt>,
}

/// The value of one block parameter at a call: the argument written, or the
/// parameter's default (evaluated in the block's scope).
#[derive(Clone, Debug)]
pub enum ParamArg {
    Given(Expr),
    Default(Expr),
}

#[derive(Clone, Debug)]
pub enum ResolvedStmt {
    /// `y = chain`
    Assign { target: Ident, value: ResolvedChain },
    /// `y += chain`
    AddAssign {
        target: Ident,
        value: ResolvedChain,
        span: Span,
    },
    /// `y *= chain`: multiply by a gate.
    MulAssign {
        target: Ident,
        value: ResolvedChain,
        span: Span,
    },
    /// `a, b = chain -> split(...)`: the chain without its `split`, and the
    /// parts: one per target.
    Unpack {
        targets: Vec<Ident>,
        value: ResolvedChain,
        split: SplitParts,
        span: Span,
    },
    /// `if cond { ... } else { ... }`
    If {
        cond: Expr,
        then: Vec<ResolvedStmt>,
        otherwise: Vec<ResolvedStmt>,
    },
    /// `return chain`
    Return { value: ResolvedChain },
}

/// `x -> op -> op`.
#[derive(Clone, Debug)]
pub struct ResolvedChain {
    pub source: ResolvedSource,
    pub ops: Vec<ResolvedCall>,
    pub span: Span,
}

/// Where a chain starts.
#[derive(Clone, Debug)]
pub enum ResolvedSource {
    Name(Ident),
    /// `concat(a, b)`, `add(a, b)`, `mul(x, g)`.
    Join {
        kind: JoinKind,
        inputs: Vec<Ident>,
        span: Span,
    },
}

/// How a join combines its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    /// Channel concatenation of two or more values of one spatial size.
    Concat,
    /// Element-wise sum of two values of one shape (as `+=`).
    Add,
    /// Element-wise product; a `C x 1 x 1` second input broadcasts (as `*=`).
    Mul,
}

impl JoinKind {
    pub const NAMES: [&'static str; 3] = ["concat", "add", "mul"];

    pub fn parse(name: &str) -> Option<JoinKind> {
        match name {
            "concat" => Some(JoinKind::Concat),
            "add" => Some(JoinKind::Add),
            "mul" => Some(JoinKind::Mul),
            _ => None,
        }
    }
}

/// The parts of a `split`: equal (one per target), or the sizes written.
#[derive(Clone, Debug)]
pub struct SplitParts {
    /// Channel counts (expressions), or empty for equal parts.
    pub sizes: Vec<Expr>,
    pub span: Span,
}

/// One call in a chain, bound.
#[derive(Clone, Debug)]
pub struct ResolvedCall {
    pub callee: Callee,
    /// `as NAME`.
    pub label: Option<Ident>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum Callee {
    /// A builtin op with its arguments in parameter order.
    Op {
        call: &'static OpCall,
        args: Vec<Option<BoundArg>>,
    },
    /// A block of the model, one argument per parameter.
    Block { block: BlockId, args: Vec<ParamArg> },
}
