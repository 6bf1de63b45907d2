//! Smooth and hard activations: `sigmoid`, `hardsigmoid`, `hardswish`,
//! `swish` (also `silu`), `gelu`; the IR op [`Activation`].
//!
//! `hardsigmoid` and `hardswish` are piecewise linear with rational
//! constants, so an integer engine computes them exactly; `sigmoid`,
//! `swish` and `gelu` have no exact integer form (the summary marks them),
//! an integer engine needs a lookup table over the quantized input.

use super::hooks::*;
use quote::quote;
use serde::Serialize;

/// Which function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationKind {
    Sigmoid,
    HardSigmoid,
    HardSwish,
    Swish,
    Gelu,
}

impl ActivationKind {
    pub fn name(self) -> &'static str {
        match self {
            ActivationKind::Sigmoid => "sigmoid",
            ActivationKind::HardSigmoid => "hardsigmoid",
            ActivationKind::HardSwish => "hardswish",
            ActivationKind::Swish => "swish",
            ActivationKind::Gelu => "gelu",
        }
    }

    /// Whether integers in, integers out can be computed exactly (piecewise
    /// linear with rational breakpoints and slopes).
    pub fn exact_in_integers(self) -> bool {
        matches!(
            self,
            ActivationKind::HardSigmoid | ActivationKind::HardSwish
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Activation {
    pub function: ActivationKind,
}

const fn form(name: &'static str, kind: ActivationKind) -> Builtin<Activation> {
    Builtin {
        name,
        params: &[],
        lower: match kind {
            ActivationKind::Sigmoid => |_, env| lowered(env, ActivationKind::Sigmoid),
            ActivationKind::HardSigmoid => |_, env| lowered(env, ActivationKind::HardSigmoid),
            ActivationKind::HardSwish => |_, env| lowered(env, ActivationKind::HardSwish),
            ActivationKind::Swish => |_, env| lowered(env, ActivationKind::Swish),
            ActivationKind::Gelu => |_, env| lowered(env, ActivationKind::Gelu),
        },
    }
}

fn lowered(env: &OpEnv, function: ActivationKind) -> LResult<Lowered<Activation>> {
    Lowered::same_shape(Activation { function }, env)
}

pub const SIGMOID: Builtin<Activation> = form("sigmoid", ActivationKind::Sigmoid);
pub const HARDSIGMOID: Builtin<Activation> = form("hardsigmoid", ActivationKind::HardSigmoid);
pub const HARDSWISH: Builtin<Activation> = form("hardswish", ActivationKind::HardSwish);
pub const SWISH: Builtin<Activation> = form("swish", ActivationKind::Swish);
/// `silu` is PyTorch's name of `swish`.
pub const SILU: Builtin<Activation> = form("silu", ActivationKind::Swish);
pub const GELU: Builtin<Activation> = form("gelu", ActivationKind::Gelu);

impl NodeOp for Activation {
    fn kind(&self) -> &'static str {
        self.function.name()
    }

    fn exact_in_integers(&self) -> bool {
        self.function.exact_in_integers()
    }

    fn emit(&self, _io: &NodeIo, cx: &EmitCx) -> Emitted {
        let inp = cx.inputs;
        let f = quote::format_ident!(
            "{}",
            match self.function {
                ActivationKind::Swish => "silu",
                k => k.name(),
            }
        );
        Emitted::forward(quote! { qatc_runtime::ops::#f(#(#inp)*) })
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::describe;

    #[test]
    fn activations() {
        insta::assert_snapshot!(describe(
            "2x2x2",
            "sigmoid -> hardsigmoid -> hardswish -> swish -> silu -> gelu",
            "flatten -> linear(classes)"
        ), @"
        stem.sigmoid1 = sigmoid 2x2x2 -> 2x2x2 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::sigmoid(&input);
          | }
        stem.hardsigmoid1 = hardsigmoid 2x2x2 -> 2x2x2 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::hardsigmoid(&stem_sigmoid1);
          | }
        stem.hardswish1 = hardswish 2x2x2 -> 2x2x2 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::hardswish(&stem_hardsigmoid1);
          | }
        stem.swish1 = swish 2x2x2 -> 2x2x2 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::silu(&stem_hardswish1);
          | }
        stem.swish2 = swish 2x2x2 -> 2x2x2 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::silu(&stem_swish1);
          | }
        stem.gelu1 = gelu 2x2x2 -> 2x2x2 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::gelu(&stem_swish2);
          | }
        ");
    }
}
