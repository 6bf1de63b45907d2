//! The IR: a typed layer graph, one per (model, bit profile).
//!
//! Input: built by [`crate::lower`] from a checked AST and a resolved profile.
//! Output: read by the summary, `--dump-ir`, and later stages (codegen, the
//! integer engine).
//!
//! Invariants:
//! - `nodes` is in topological order; a node's `inputs` refer to earlier nodes.
//! - Every node knows its output shape, its layer slot (stem, a block
//!   instance, head, fc) and its bit-widths from the moment it is created
//!   (tract-style): nothing is inferred later.
//! - Fake quantizers are explicit `ActQuant` nodes, whether the spec wrote them
//!   or a placement rule inserted them (`origin` says which).

use crate::ast::Span;
use serde::Serialize;
use std::fmt;

pub type NodeId = usize;

/// Per-sample tensor shape: `[C, H, W]` for feature maps, `[F]` after flatten.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Shape(pub Vec<i64>);

impl Shape {
    pub fn numel(&self) -> i64 {
        self.0.iter().product()
    }
    pub fn channels(&self) -> i64 {
        self.0[0]
    }
    pub fn is_map(&self) -> bool {
        self.0.len() == 3
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|d| d.to_string()).collect();
        write!(f, "{}", parts.join("x"))
    }
}

/// Activation quantizer kinds (seed reference section 1).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Quantizer {
    /// DoReFa activation: `round(clamp(0.1 x, 0, 1) n) / n`.
    Dorefa,
    /// PACT with a learnable clipping value `alpha` (initial value).
    Pact { alpha: f64 },
    /// Symmetric "modified PACT" (the seed's ActQuant), learnable `alpha`.
    Mpact { alpha: f64 },
    /// PACT with a constant scale.
    PactFixed { scale: f64 },
    /// No quantization (identity), whatever the bit-width.
    None,
}

impl Quantizer {
    /// Whether the quantizer has a learnable clipping value.
    pub fn learnable(&self) -> bool {
        matches!(self, Quantizer::Pact { .. } | Quantizer::Mpact { .. })
    }
}

impl fmt::Display for Quantizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quantizer::Dorefa => write!(f, "dorefa"),
            Quantizer::Pact { alpha } => write!(f, "pact({alpha})"),
            Quantizer::Mpact { alpha } => write!(f, "mpact({alpha})"),
            Quantizer::PactFixed { scale } => write!(f, "pact_fixed({scale})"),
            Quantizer::None => write!(f, "none"),
        }
    }
}

/// Weight quantizer kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightQuant {
    /// The seed's modified symmetric DoReFa (tanh, max-normalised).
    Dorefa,
    /// Weights stay float.
    None,
}

/// How conv weights start (`init { conv ... }`); biases as each names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvInit {
    /// PyTorch's `nn.Conv2d` default: weight and bias uniform in `±1/sqrt(fan_in)`.
    #[default]
    Default,
    /// Kaiming-uniform, fan-in, ReLU gain (`±sqrt(6/fan_in)`); bias 0.
    KaimingUniform,
    /// Kaiming-normal, fan-out, ReLU gain (`std sqrt(2/fan_out)`); bias 0.
    KaimingNormalFanOut,
}

/// How linear (fc) weights start (`init { linear ... }`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinearInit {
    /// PyTorch's `nn.Linear` default: weight and bias uniform in `±1/sqrt(fan_in)`.
    #[default]
    Default,
    /// Kaiming-uniform, fan-in, ReLU gain; bias 0.
    KaimingUniform,
    /// Weight normal with this standard deviation; bias 0.
    Normal(f64),
}

/// The model's weight initialisation (`init { ... }`; PyTorch's defaults when absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct WeightInit {
    pub conv: ConvInit,
    pub linear: LinearInit,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Input,
    Conv {
        out: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
        groups: i64,
        bias: bool,
    },
    BatchNorm,
    Relu,
    Relu6,
    ActQuant {
        quantizer: Quantizer,
    },
    /// Residual add of `inputs[0]` (main path) and `inputs[1]` (shortcut).
    Add,
    AvgPool {
        kernel: i64,
        stride: i64,
        /// Called as a function in the seed (`F.avg_pool2d`), so its legacy
        /// profiler did not count it; matters only for the seed-compatible total.
        functional: bool,
    },
    MaxPool {
        kernel: i64,
        stride: i64,
        padding: i64,
    },
    AdaptiveAvgPool {
        size: i64,
    },
    Flatten,
    Linear {
        out: i64,
        bias: bool,
    },
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv { groups, out, .. } if *groups > 1 && *groups == *out => "dwconv",
            Op::Conv { .. } => "conv",
            Op::BatchNorm => "bn",
            Op::Relu => "relu",
            Op::Relu6 => "relu6",
            Op::ActQuant { .. } => "act",
            Op::Add => "add",
            Op::AvgPool { .. } => "avgpool",
            Op::MaxPool { .. } => "maxpool",
            Op::AdaptiveAvgPool { .. } => "adaptive_avgpool",
            Op::Flatten => "flatten",
            Op::Linear { .. } => "linear",
        }
    }

    pub fn has_weights(&self) -> bool {
        matches!(self, Op::Conv { .. } | Op::Linear { .. })
    }
}

/// Where a node came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Origin {
    /// Written in the spec (span of the op call).
    Spec {
        #[serde(skip)]
        span: Span,
    },
    /// Inserted by a placement rule.
    Rule { rule: String },
}

/// One layer of the graph.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Node {
    pub id: NodeId,
    /// Unique, readable, derived from the spec: `s2.0.conv1`, `stem.bn1`, `fc.linear1`.
    pub name: String,
    /// Index into [`Graph::slots`].
    pub slot: usize,
    #[serde(flatten)]
    pub op: Op,
    pub inputs: Vec<NodeId>,
    /// Shape of the first input (`[]` for the graph input).
    pub in_shape: Shape,
    pub out_shape: Shape,
    /// Weight bit-width (conv / linear), 32 = float.
    pub w_bit: Option<u32>,
    /// Bit-width of the activation this node reads (32 = float): the bits of
    /// the fake quantizer feeding it, seen through shape-only ops.
    pub a_bit: u32,
    /// Output bit-width: an `ActQuant`'s bits; BN / pooling nodes carry the
    /// `bn_bits` / `pool_bits` rule's value; otherwise 32.
    pub out_bit: u32,
    pub origin: Origin,
}

/// What kind of layer slot (bit-list position) this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotKind {
    Stem,
    Block,
    Head,
    Fc,
}

/// A layer slot: the unit bit-widths are assigned to (seed: "layer i" of
/// `layer_abit` / `layer_wbit`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Slot {
    pub name: String,
    pub kind: SlotKind,
    /// Stage name and index within the stage, for blocks.
    pub stage: Option<String>,
    pub index: Option<usize>,
    /// Block template name, for blocks.
    pub block: Option<String>,
    pub w: u32,
    pub ain: u32,
    pub aout: u32,
}

/// The lowered model for one profile.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Graph {
    pub model: String,
    pub profile: String,
    pub classes: i64,
    pub weight_quant: WeightQuant,
    pub init: WeightInit,
    pub slots: Vec<Slot>,
    pub nodes: Vec<Node>,
    pub output: NodeId,
    pub bn_bits: u32,
    pub pool_bits: u32,
}

impl Graph {
    /// Readable dump for `qatc check --dump-ir`.
    pub fn dump(&self) -> String {
        use fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "graph {} (profile {}, weights {:?}, bn {} bit, pool {} bit)",
            self.model, self.profile, self.weight_quant, self.bn_bits, self.pool_bits
        );
        let mut last_slot = usize::MAX;
        for n in &self.nodes {
            if n.slot != last_slot {
                let sl = &self.slots[n.slot];
                let what = match (&sl.block, &sl.stage) {
                    (Some(b), Some(st)) => format!(" ({b} in stage {st})"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    s,
                    "  slot {} {}{}: w{} ain{} aout{}",
                    n.slot, sl.name, what, sl.w, sl.ain, sl.aout
                );
                last_slot = n.slot;
            }
            let inputs: Vec<String> = n.inputs.iter().map(|i| format!("%{i}")).collect();
            let detail = match &n.op {
                Op::Input => String::new(),
                Op::Conv {
                    out,
                    kernel,
                    stride,
                    padding,
                    groups,
                    bias,
                } => {
                    format!(
                        "(out {out}, k {kernel}, s {stride}, p {padding}, g {groups}{})",
                        if *bias { ", bias" } else { "" }
                    )
                }
                Op::ActQuant { quantizer } => format!("({quantizer}, {} bit)", n.out_bit),
                Op::AvgPool {
                    kernel,
                    stride,
                    functional,
                } => {
                    format!(
                        "(k {kernel}, s {stride}{})",
                        if *functional { ", functional" } else { "" }
                    )
                }
                Op::MaxPool {
                    kernel,
                    stride,
                    padding,
                } => format!("(k {kernel}, s {stride}, p {padding})"),
                Op::AdaptiveAvgPool { size } => format!("({size})"),
                Op::Linear { out, bias } => {
                    format!("(out {out}{})", if *bias { ", bias" } else { "" })
                }
                _ => String::new(),
            };
            let bits = match n.w_bit {
                Some(w) => format!(" w{} a{}", w, n.a_bit),
                None => String::new(),
            };
            let origin = match &n.origin {
                Origin::Rule { rule } => format!("  [rule {rule}]"),
                Origin::Spec { .. } => String::new(),
            };
            let _ = writeln!(
                s,
                "    %{:<3} {:<24} = {}{} {} -> {}{}{}",
                n.id,
                n.name,
                n.op.kind(),
                detail,
                inputs.join(", "),
                n.out_shape,
                bits,
                origin
            );
        }
        let _ = writeln!(s, "  output %{}", self.output);
        s
    }
}
