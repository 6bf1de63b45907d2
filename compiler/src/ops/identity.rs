//! `identity`: the value unchanged (a named point in a chain, a branch
//! that only passes its input on); the IR op [`Identity`].

use super::hooks::*;
use quote::quote;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Identity;

pub const IDENTITY: Builtin<Identity> = Builtin {
    name: "identity",
    params: &[],
    lower: |_, env| Lowered::same_shape(Identity, env),
};

impl NodeOp for Identity {
    fn kind(&self) -> &'static str {
        "identity"
    }

    fn passes_input_bits(&self) -> bool {
        true
    }

    fn emit(&self, _io: &NodeIo, cx: &EmitCx) -> Emitted {
        let inp = cx.inputs;
        Emitted::forward(quote! { qatc_runtime::ops::identity(#(#inp)*) })
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::describe;

    #[test]
    fn dropout_and_identity() {
        insta::assert_snapshot!(describe("2x2x2", "act(4) -> dropout(0.2) -> identity -> dropout", "flatten -> linear(classes)"), @r#"
        stem.act1 = act(dorefa, 4 bit) 2x2x2 -> 2x2x2 (w None, a 32, out 4)
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
        stem.dropout1 = dropout(p 0.2) 2x2x2 -> 2x2x2 (w None, a 4, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::dropout(&stem_act1, 0.2, train);
          | }
        stem.identity1 = identity 2x2x2 -> 2x2x2 (w None, a 4, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::identity(&stem_dropout1);
          | }
        stem.dropout2 = dropout(p 0.5) 2x2x2 -> 2x2x2 (w None, a 4, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::dropout(&stem_identity1, 0.5, train);
          | }
        "#);
        insta::assert_snapshot!(describe("2x2x2", "dropout(1)", "flatten -> linear(classes)"), @"
        error[E0309]: `p` = 1 is out of range
          ┌─ t.qspec:4:17
          │
        4 │   stem: dropout(1)
          │                 ^ must be between 0 and 0.999
        ");
    }
}
