//! The words every stage shares: tensor shapes, quantizer and
//! initialisation kinds, bit variables and layer-slot kinds.
//!
//! The semantic checks ([`crate::check`]) produce these values, the op
//! modules ([`crate::ops`]) and the IR ([`crate::ir`]) carry them, the
//! backends read them. This module depends on nothing else in the crate, so
//! no stage has to import another stage to name a quantizer.

use serde::Serialize;
use std::fmt;

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

/// What kind of layer slot (bit-list position) this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotKind {
    Stem,
    Block,
    Head,
    Fc,
}

/// A bit variable of a layer slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitVar {
    W,
    Ain,
    Aout,
}

impl BitVar {
    pub fn parse(s: &str) -> Option<BitVar> {
        match s {
            "w" => Some(BitVar::W),
            "ain" => Some(BitVar::Ain),
            "aout" => Some(BitVar::Aout),
            _ => None,
        }
    }
}

/// A bit-width written in an `act(...)` or a rule: a slot variable or a literal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitRef {
    Var(BitVar),
    Lit(u32),
}

impl BitRef {
    /// The bit-width under a slot's bits.
    pub fn resolve(self, slot: &SlotBits) -> u32 {
        match self {
            BitRef::Lit(v) => v,
            BitRef::Var(v) => slot.get(v),
        }
    }
}

/// Bit-widths of one layer slot under one profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotBits {
    pub w: u32,
    pub ain: u32,
    pub aout: u32,
}

impl SlotBits {
    pub fn get(&self, v: BitVar) -> u32 {
        match v {
            BitVar::W => self.w,
            BitVar::Ain => self.ain,
            BitVar::Aout => self.aout,
        }
    }
}
