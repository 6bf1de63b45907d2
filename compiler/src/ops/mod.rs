//! The op vocabulary: one module per op, registered here.
//!
//! Each module holds everything qatc knows of one op: its call forms and
//! signatures ([`hooks::Builtin`]: what the semantic checks bind), its
//! lowering (argument checks and output shape), and, on its IR struct, the
//! [`hooks::NodeOp`] hooks for the IR dump, the size limits, the summary's
//! counts and the generated Rust. The integer backend plans the same IR
//! structs in `qatc-int`'s `plan` modules. docs/adding-an-op.md lists the
//! files a new op touches.
//!
//! Dependencies point one way: [`hooks`] (the interface) <- the op modules
//! <- this registry <- the stages (check, lower, summary, codegen).

pub mod hooks;

pub mod act_quant;
pub mod activation;
pub mod adaptive_avg_pool;
pub mod add;
pub mod avg_pool;
pub mod batch_norm;
pub mod concat;
pub mod conv;
pub mod dropout;
pub mod dwconv;
pub mod flatten;
pub mod identity;
pub mod input;
pub mod linear;
pub mod max_pool;
pub mod mul;
pub mod relu;
pub mod shuffle;
pub mod slice;

pub use act_quant::ActQuant;
pub use activation::{Activation, ActivationKind};
pub use adaptive_avg_pool::AdaptiveAvgPool;
pub use add::Add;
pub use avg_pool::AvgPool;
pub use batch_norm::BatchNorm;
pub use concat::Concat;
pub use conv::Conv;
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use hooks::{NodeIo, NodeOp, OpParam, ParamKind};
pub use identity::Identity;
pub use input::Input;
pub use linear::Linear;
pub use max_pool::MaxPool;
pub use mul::Mul;
pub use relu::{Relu, Relu6};
pub use shuffle::Shuffle;
pub use slice::Slice;

use hooks::{Args, Builtin, LResult, Lowered, OpEnv};
use serde::Serialize;

/// An op of the IR: one variant per op module's IR struct.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Input(Input),
    Conv(Conv),
    BatchNorm(BatchNorm),
    Relu(Relu),
    Relu6(Relu6),
    ActQuant(ActQuant),
    /// Residual add of `inputs[0]` (main path) and `inputs[1]` (shortcut).
    Add(Add),
    AvgPool(AvgPool),
    MaxPool(MaxPool),
    AdaptiveAvgPool(AdaptiveAvgPool),
    Flatten(Flatten),
    Linear(Linear),
    /// Channel concatenation of all inputs.
    Concat(Concat),
    /// Channels `start..start + len` of the input (a part of a split).
    Slice(Slice),
    Shuffle(Shuffle),
    /// Product of `inputs[0]` and `inputs[1]` (broadcast gate).
    Mul(Mul),
    Activation(Activation),
    Dropout(Dropout),
    Identity(Identity),
}

impl Op {
    /// The op's IR-level hooks.
    pub fn hooks(&self) -> &dyn NodeOp {
        match self {
            Op::Input(o) => o,
            Op::Conv(o) => o,
            Op::BatchNorm(o) => o,
            Op::Relu(o) => o,
            Op::Relu6(o) => o,
            Op::ActQuant(o) => o,
            Op::Add(o) => o,
            Op::AvgPool(o) => o,
            Op::MaxPool(o) => o,
            Op::AdaptiveAvgPool(o) => o,
            Op::Flatten(o) => o,
            Op::Linear(o) => o,
            Op::Concat(o) => o,
            Op::Slice(o) => o,
            Op::Shuffle(o) => o,
            Op::Mul(o) => o,
            Op::Activation(o) => o,
            Op::Dropout(o) => o,
            Op::Identity(o) => o,
        }
    }

    pub fn kind(&self) -> &'static str {
        self.hooks().kind()
    }

    pub fn has_weights(&self) -> bool {
        self.hooks().has_weights()
    }
}

/// A builtin op call form, its lowering producing an [`Op`].
pub struct OpCall {
    pub name: &'static str,
    pub params: &'static [OpParam],
    pub lower: fn(&Args, &OpEnv) -> LResult<Lowered<Op>>,
}

/// Registers a module's call form under the [`Op`] variant it lowers to.
macro_rules! call {
    ($builtin:path => $variant:ident) => {{
        const B: Builtin<$variant> = $builtin;
        OpCall {
            name: B.name,
            params: B.params,
            lower: |a, env| {
                (B.lower)(a, env).map(|l| Lowered {
                    op: Op::$variant(l.op),
                    out: l.out,
                    out_bit: l.out_bit,
                })
            },
        }
    }};
}

/// Every call form a spec can use, in the order docs/qspec.md lists them.
pub const CALLS: &[OpCall] = &[
    call!(conv::CONV => Conv),
    call!(conv::CONV3X3 => Conv),
    call!(conv::CONV1X1 => Conv),
    call!(dwconv::DWCONV => Conv),
    call!(dwconv::DWCONV3X3 => Conv),
    call!(batch_norm::BN => BatchNorm),
    call!(relu::RELU => Relu),
    call!(relu::RELU6 => Relu6),
    call!(act_quant::ACT => ActQuant),
    call!(avg_pool::AVGPOOL => AvgPool),
    call!(max_pool::MAXPOOL => MaxPool),
    call!(adaptive_avg_pool::ADAPTIVE_AVGPOOL => AdaptiveAvgPool),
    call!(flatten::FLATTEN => Flatten),
    call!(linear::LINEAR => Linear),
    call!(shuffle::SHUFFLE => Shuffle),
    call!(activation::SIGMOID => Activation),
    call!(activation::HARDSIGMOID => Activation),
    call!(activation::HARDSWISH => Activation),
    call!(activation::SWISH => Activation),
    call!(activation::SILU => Activation),
    call!(activation::GELU => Activation),
    call!(dropout::DROPOUT => Dropout),
    call!(identity::IDENTITY => Identity),
];

/// The call form of this name.
pub fn call(name: &str) -> Option<&'static OpCall> {
    CALLS.iter().find(|c| c.name == name)
}

/// Names of ops in other frameworks, for did-you-mean hints.
pub const ALIASES: &[(&str, &str)] = &[
    ("batchnorm", "bn"),
    ("batch_norm", "bn"),
    ("batchnorm2d", "bn"),
    ("bn2d", "bn"),
    ("conv2d", "conv"),
    ("depthwise", "dwconv"),
    ("dense", "linear"),
    ("fully_connected", "linear"),
    ("avg_pool", "avgpool"),
    ("avg_pool2d", "avgpool"),
    ("max_pool", "maxpool"),
    ("max_pool2d", "maxpool"),
    ("global_avgpool", "adaptive_avgpool"),
    ("gap", "adaptive_avgpool"),
    ("quant", "act"),
    ("quantize", "act"),
    ("view", "flatten"),
    ("channel_shuffle", "shuffle"),
    ("channelshuffle", "shuffle"),
    ("hard_swish", "hardswish"),
    ("h_swish", "hardswish"),
    ("hswish", "hardswish"),
    ("hard_sigmoid", "hardsigmoid"),
    ("h_sigmoid", "hardsigmoid"),
    ("hsigmoid", "hardsigmoid"),
    ("logistic", "sigmoid"),
    ("drop", "dropout"),
    ("noop", "identity"),
    ("id", "identity"),
];

impl std::fmt::Debug for OpCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpCall({})", self.name)
    }
}
