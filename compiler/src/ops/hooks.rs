//! The interface an op module implements, one hook per stage.
//!
//! An op has two faces:
//! - **as written** ([`Builtin`]): a call name with a signature that the
//!   semantic checks bind arguments against, and a lowering hook that turns
//!   the bound, evaluated arguments and the input shape into an IR op and its
//!   output shape (tract-style: every edge is typed as it is wired);
//! - **in the IR** ([`NodeOp`]): the op's parameters as a struct, with hooks
//!   for the IR dump, the size limits, the cost summary and Rust codegen.
//!
//! The integer backend (`qatc-int`) plans each op in a module of its own,
//! over the same IR structs. This module depends only on the AST's
//! expressions, diagnostics and [`crate::vocab`]; the op modules depend on
//! it, the stages depend on the op modules.

use crate::ast::{Expr, Span};
use crate::diag::Diagnostic;
use crate::vocab::{BitRef, Quantizer, Shape, SlotBits};
use proc_macro2::{Ident, Literal, TokenStream};

/// A lowering hook's result: an error is one diagnostic.
pub type LResult<T> = Result<T, Box<Diagnostic>>;

/// Largest channel count, kernel, spatial size and the like; keeps every
/// count in the summary far from overflow.
pub const MAX_DIM: i64 = 1 << 20;

/// What kind of value an op parameter takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Int,
    Bool,
    /// A number (integers allowed).
    Float,
    /// A bit-width: `ain`, `aout`, `w` or an integer.
    Bits,
    /// An activation quantizer: `dorefa`, `pact(a)`, `mpact(a)`, `pact_fixed(s)`, `none`.
    Quant,
}

/// A parameter of a builtin op (or of a rule: rules bind the same way).
pub struct OpParam {
    pub name: &'static str,
    pub kind: ParamKind,
    pub required: bool,
}

/// A required parameter.
pub const fn req(name: &'static str, kind: ParamKind) -> OpParam {
    OpParam {
        name,
        kind,
        required: true,
    }
}

/// An optional parameter.
pub const fn opt(name: &'static str, kind: ParamKind) -> OpParam {
    OpParam {
        name,
        kind,
        required: false,
    }
}

/// A value computed from a spec expression while blocks are instantiated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number with a fraction",
            Value::Bool(_) => "a boolean",
        }
    }
}

/// An argument bound to a parameter by the semantic checks: an expression
/// evaluated when the op is lowered (it may name block parameters), or a
/// bit-width / quantizer already interpreted.
#[derive(Clone, Debug, PartialEq)]
pub enum BoundArg {
    Expr(Expr),
    Bits(BitRef),
    Quant(Quantizer),
}

impl BoundArg {
    pub fn span(&self) -> Option<Span> {
        match self {
            BoundArg::Expr(e) => Some(e.span()),
            _ => None,
        }
    }
}

/// A diagnostic with one primary label.
pub fn error(
    code: &'static str,
    msg: impl Into<String>,
    span: Span,
    label: impl Into<String>,
) -> Box<Diagnostic> {
    Box::new(Diagnostic::error(code, msg).primary(span, label))
}

/// An argument the semantic checks guarantee but that is absent: a bug in
/// qatc, reported as an error rather than a panic.
fn internal(span: Span, what: &str) -> Box<Diagnostic> {
    Box::new(
        Diagnostic::error("E0900", format!("internal error: `{what}` was not bound"))
            .primary(span, "while lowering this call")
            .note("the checks should have reported this; please report it as a qatc bug"),
    )
}

/// The arguments of one call, in parameter order, with the evaluator of
/// the scope the call is lowered in.
pub struct Args<'a> {
    pub bound: &'a [Option<BoundArg>],
    pub eval: &'a dyn Fn(&Expr) -> LResult<Value>,
    /// The call's span (for errors about absent arguments).
    pub span: Span,
}

impl Args<'_> {
    /// The expression bound to parameter `i`, if any.
    pub fn expr(&self, i: usize) -> Option<&Expr> {
        match self.bound.get(i) {
            Some(Some(BoundArg::Expr(e))) => Some(e),
            _ => None,
        }
    }

    /// An integer argument in `min..=MAX_DIM`, or `default` when absent.
    pub fn int(&self, i: usize, default: Option<i64>, what: &str, min: i64) -> LResult<i64> {
        match self.expr(i) {
            Some(e) => self.int_of(e, what, min),
            None => default.ok_or_else(|| internal(self.span, what)),
        }
    }

    /// An expression evaluated as an integer in `min..=MAX_DIM`.
    pub fn int_of(&self, e: &Expr, what: &str, min: i64) -> LResult<i64> {
        let v = match (self.eval)(e)? {
            Value::Int(i) => i,
            other => {
                return Err(error(
                    "E0310",
                    format!("`{what}` must be an integer, found {}", other.type_name()),
                    e.span(),
                    "expected an integer",
                ))
            }
        };
        if v < min || v > MAX_DIM {
            return Err(error(
                "E0309",
                format!("`{what}` = {v} is out of range"),
                e.span(),
                format!("must be between {min} and {MAX_DIM}"),
            ));
        }
        Ok(v)
    }

    /// A boolean argument, or `default` when absent.
    pub fn bool(&self, i: usize, default: bool) -> LResult<bool> {
        let Some(e) = self.expr(i) else {
            return Ok(default);
        };
        match (self.eval)(e)? {
            Value::Bool(b) => Ok(b),
            other => Err(error(
                "E0310",
                format!("expected a boolean, found {}", other.type_name()),
                e.span(),
                "expected `true` or `false`",
            )),
        }
    }

    /// A number in `lo..=hi`, or `default` when absent.
    pub fn float(&self, i: usize, default: f64, what: &str, (lo, hi): (f64, f64)) -> LResult<f64> {
        let Some(e) = self.expr(i) else {
            return Ok(default);
        };
        let v = match (self.eval)(e)? {
            Value::Int(i) => i as f64,
            Value::Float(f) => f,
            other => {
                return Err(error(
                    "E0310",
                    format!("`{what}` must be a number, found {}", other.type_name()),
                    e.span(),
                    "expected a number",
                ))
            }
        };
        if !(lo..=hi).contains(&v) {
            return Err(error(
                "E0309",
                format!("`{what}` = {v} is out of range"),
                e.span(),
                format!("must be between {lo} and {hi}"),
            ));
        }
        Ok(v)
    }

    /// A bit-width argument (required).
    pub fn bits(&self, i: usize, what: &str) -> LResult<BitRef> {
        match self.bound.get(i) {
            Some(Some(BoundArg::Bits(b))) => Ok(*b),
            _ => Err(internal(self.span, what)),
        }
    }

    /// A quantizer argument, if given.
    pub fn quant(&self, i: usize) -> Option<&Quantizer> {
        match self.bound.get(i) {
            Some(Some(BoundArg::Quant(q))) => Some(q),
            _ => None,
        }
    }
}

/// What a lowering hook knows of the place an op is called.
pub struct OpEnv<'a> {
    /// The name the call was written with (`conv3x3`).
    pub call: &'a str,
    pub input: &'a Shape,
    pub span: Span,
    /// The weight bit-width of the slot (32 when weights are not quantized).
    pub w_bit: u32,
    /// The slot's bit-widths under the profile being lowered.
    pub bits: SlotBits,
    /// The profile's default activation quantizer.
    pub acts: &'a Quantizer,
}

impl OpEnv<'_> {
    /// The input as a feature map `(C, H, W)`, or an error naming the op.
    pub fn map(&self) -> LResult<(i64, i64, i64)> {
        let shape = self.input;
        if !shape.is_map() {
            return Err(Box::new(
                Diagnostic::error(
                    "E0303",
                    format!(
                        "`{}` needs a feature map, but its input is {shape}",
                        self.call
                    ),
                )
                .primary(self.span, "input is already flattened")
                .help("move `flatten` after this op"),
            ));
        }
        Ok((shape.0[0], shape.0[1], shape.0[2]))
    }

    /// The output size of a sliding window (kernel `k`, stride `s`,
    /// padding `p`) over an `h x w` input.
    pub fn spatial(&self, h: i64, w: i64, k: i64, s: i64, p: i64) -> LResult<(i64, i64)> {
        let span = self.span;
        if p >= k {
            return Err(error(
                "E0306",
                format!("padding {p} is not smaller than the kernel {k}"),
                span,
                "bad padding",
            ));
        }
        let (eh, ew) = (h + 2 * p - k, w + 2 * p - k);
        if eh < 0 || ew < 0 {
            return Err(error(
                "E0306",
                format!(
                    "`{}` kernel {k} is larger than its {h}x{w} input",
                    self.call
                ),
                span,
                "kernel too large",
            ));
        }
        if h % s != 0 || w % s != 0 {
            return Err(Box::new(
                Diagnostic::error(
                    "E0307",
                    format!("stride {s} does not divide the spatial size {h}x{w}"),
                )
                .primary(span, format!("input is {h}x{w} here"))
                .help("use a stride that divides the input size, or change the input shape"),
            ));
        }
        Ok((eh / s + 1, ew / s + 1))
    }
}

/// mPACT keeps a sign bit: `k = b - 1` magnitude bits, so it needs b >= 2
/// (the seed divides by zero at 1 bit).
pub fn quantizer_bits_ok(q: &Quantizer, bits: u32, span: Span, what: &str) -> LResult<()> {
    if matches!(q, Quantizer::Mpact { .. }) && bits < 2 {
        return Err(Box::new(
            Diagnostic::error("E0205", format!("{what} an mPACT quantizer at {bits} bit"))
                .primary(span, "mPACT needs at least 2 bits")
                .note("mPACT is symmetric: one bit holds the sign, b - 1 bits the magnitude")
                .help("use 2 or more bits here, or `dorefa` / `pact` for 1-bit activations"),
        ));
    }
    Ok(())
}

/// A lowered call: the IR op and its output shape.
pub struct Lowered<Op> {
    pub op: Op,
    pub out: Shape,
    /// The output bit-width, for ops that set it themselves (quantizers);
    /// `None`: decided by the graph (32, or the `bn_bits` / `pool_bits` rule).
    pub out_bit: Option<u32>,
}

impl<T> Lowered<T> {
    /// An op whose output has its input's shape.
    pub fn same_shape(op: T, env: &OpEnv) -> LResult<Lowered<T>> {
        Ok(Lowered {
            op,
            out: env.input.clone(),
            out_bit: None,
        })
    }
}

/// A builtin op as written in a spec: its call name, signature and lowering.
pub struct Builtin<Op: 'static> {
    pub name: &'static str,
    pub params: &'static [OpParam],
    pub lower: fn(&Args, &OpEnv) -> LResult<Lowered<Op>>,
}

/// A node's shapes and bits, as the IR-level hooks see them.
pub struct NodeIo<'a> {
    pub name: &'a str,
    pub in_shape: &'a Shape,
    pub out_shape: &'a Shape,
    pub w_bit: Option<u32>,
    pub out_bit: u32,
}

impl NodeIo<'_> {
    /// Input channels (features after a flatten); 0 for the graph input.
    pub fn cin(&self) -> i64 {
        self.in_shape.0.first().copied().unwrap_or(0)
    }
}

/// Which `rules { ... }` entry sets the bit-width an op's output is stored at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredBits {
    /// Not stored at a reduced width (32).
    Float,
    /// `bn_bits(b)`.
    BatchNorm,
    /// `pool_bits(b)`.
    Pool,
}

/// Where a layer's cost is totalled in the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostClass {
    None,
    Conv,
    Fc,
    BatchNorm,
    Pool,
    /// An activation quantizer; `clip`: it has a learnable clipping value.
    ActQuant {
        clip: bool,
    },
}

/// One layer's cost (see [`crate::summary`] for the conventions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub params: u64,
    pub macs: u64,
    /// Extra ops the seed's profiler counted for this layer (BN, pooling).
    pub seed_ops: u64,
    pub weight_bytes: u64,
    pub class: CostClass,
}

impl Counts {
    pub const ZERO: Counts = Counts {
        params: 0,
        macs: 0,
        seed_ops: 0,
        weight_bytes: 0,
        class: CostClass::None,
    };
}

/// A layer's weights and MACs in exact arithmetic, for the size limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerSize {
    pub weights: i128,
    pub macs: i128,
}

/// Bytes to hold `bits` bits, rounded up.
pub fn bytes(bits: u64) -> u64 {
    bits.div_ceil(8)
}

/// What codegen knows of the node an op emits code for.
pub struct EmitCx<'a> {
    /// The model struct's field for this node (`s2_0_conv1`).
    pub field: &'a Ident,
    /// The node's path in the var store (`vs / "s2" / "0" / "conv1"`).
    pub path: &'a TokenStream,
    /// The node's inputs as expressions.
    pub inputs: &'a [TokenStream],
    /// The slot's index into `Profile::w_bits` and its name.
    pub slot: usize,
    pub slot_name: &'a str,
    /// The spec's `init { ... }` as runtime expressions.
    pub conv_init: &'a TokenStream,
    pub linear_init: &'a TokenStream,
    /// For activation quantizers: the site index into `Profile::acts`, a
    /// phrase saying who placed it, and the method that applies it.
    pub act_site: usize,
    pub origin: &'a str,
    pub act_method: &'a Ident,
}

/// An op's generated code: a field of the model struct with its
/// initialiser, and the expression that computes the node in `forward`.
#[derive(Default)]
pub struct Emitted {
    pub field: Option<TokenStream>,
    pub init: Option<TokenStream>,
    pub forward: Option<TokenStream>,
    /// The field holds a learnable clipping value (`clip_values()`).
    pub clip: bool,
}

impl Emitted {
    /// A stateless op: no field, `forward` computes the node.
    pub fn forward(forward: TokenStream) -> Emitted {
        Emitted {
            forward: Some(forward),
            ..Emitted::default()
        }
    }
}

/// An integer literal without suffix.
pub fn int(v: impl Into<i128>) -> Literal {
    Literal::i128_unsuffixed(v.into())
}

/// The IR-level hooks of an op.
pub trait NodeOp {
    /// Short name in dumps and summaries (`conv`, `dwconv`, `bn`, ...).
    fn kind(&self) -> &'static str;
    /// Node names count per stem: `stem.conv1`, `s1.0.pool2`.
    fn name_stem(&self) -> &'static str {
        self.kind()
    }
    /// Parameters in `--dump-ir` (`(out 16, k 3, s 1, p 1, g 1)`).
    fn detail(&self, _io: &NodeIo) -> String {
        String::new()
    }
    /// Conv / linear: the node has a weight tensor quantized at the slot's `w`.
    fn has_weights(&self) -> bool {
        false
    }
    /// Shape-only ops pass the bit-width of their input's quantizer through.
    fn passes_input_bits(&self) -> bool {
        false
    }
    /// Whether an integer engine computes the op exactly from integers
    /// (false: a smooth function, needing a lookup table; the summary marks it).
    fn exact_in_integers(&self) -> bool {
        true
    }
    /// Which rule sets the width the output is stored at.
    fn stored_bits(&self) -> StoredBits {
        StoredBits::Float
    }
    /// Weights and MACs, exactly, for the size limits.
    fn size(&self, _io: &NodeIo) -> LayerSize {
        LayerSize::default()
    }
    /// The tensors the node owns in a checkpoint (the generated model's
    /// variable store): `(name, shape)`, stored as `NODE.name`. Importers,
    /// the integer backend and the runtime's layers agree on this list.
    fn variables(&self, _io: &NodeIo) -> Vec<(&'static str, Vec<i64>)> {
        Vec::new()
    }
    /// The layer's cost for the summary.
    fn counts(&self, _io: &NodeIo) -> Counts {
        Counts::ZERO
    }
    /// The layer's generated Rust.
    fn emit(&self, _io: &NodeIo, _cx: &EmitCx) -> Emitted {
        Emitted::default()
    }
}
