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
use crate::ops::NodeIo;
pub use crate::ops::Op;
pub use crate::vocab::{ConvInit, LinearInit, Quantizer, Shape, SlotKind, WeightInit, WeightQuant};
use serde::Serialize;
use std::fmt;

pub type NodeId = usize;

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

impl Node {
    /// The node's shapes and bits, as the op hooks see them.
    pub fn io(&self) -> NodeIo<'_> {
        NodeIo {
            name: &self.name,
            in_shape: &self.in_shape,
            out_shape: &self.out_shape,
            w_bit: self.w_bit,
            out_bit: self.out_bit,
        }
    }
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
    /// The weight bit-width of a slot under this graph's profile: the
    /// slot's `w`, or 32 when weights are not quantized (`weights none`).
    pub fn weight_bits(&self, slot: &Slot) -> u32 {
        match self.weight_quant {
            WeightQuant::Dorefa => slot.w,
            WeightQuant::None => 32,
        }
    }

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
            let detail = n.op.hooks().detail(&n.io());
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
