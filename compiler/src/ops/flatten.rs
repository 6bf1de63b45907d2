//! `flatten`: a `C x H x W` map to `C*H*W` features; the IR op [`Flatten`].
//! Shape-only: it carries its input's quantizer bits on.

use super::hooks::*;
use crate::vocab::Shape;
use quote::quote;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Flatten;

pub const FLATTEN: Builtin<Flatten> = Builtin {
    name: "flatten",
    params: &[],
    lower: |_, env| {
        Ok(Lowered {
            op: Flatten,
            out: Shape(vec![env.input.numel()]),
            out_bit: None,
        })
    },
};

impl NodeOp for Flatten {
    fn kind(&self) -> &'static str {
        "flatten"
    }

    fn passes_input_bits(&self) -> bool {
        true
    }

    fn emit(&self, _io: &NodeIo, cx: &EmitCx) -> Emitted {
        let inp = cx.inputs;
        Emitted::forward(quote! { qatc_runtime::ops::flatten(#(#inp)*) })
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::describe;

    #[test]
    fn flatten_carries_bits() {
        insta::assert_snapshot!(describe("3x4x4", "act(4) -> flatten", "linear(classes)"), @r#"
        stem.act1 = act(dorefa, 4 bit) 3x4x4 -> 3x4x4 (w None, a 32, out 4)
          params 0 macs 0 seed_ops 0 weight_bytes 0 ActQuant { clip: false }
          | struct Model {
          |     /// `stem.act1`: activation quantizer, site 0 (test).
          |     pub stem_act1: qatc_runtime::quant::ActQuant,
          | }
          | fn new() -> Model {
          |     Model {
          |         stem_act1: qatc_runtime::quant::ActQuant::from_spec(vs / "node", p.acts[0]),
          |     }
          | }
          | fn forward() {
          |     let y = self.stem_act1.forward(&input);
          | }
        stem.flatten1 = flatten 3x4x4 -> 48 (w None, a 4, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::flatten(&stem_act1);
          | }
        "#);
    }
}
