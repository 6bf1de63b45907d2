//! Element-wise product: `y *= g` or the join `mul(x, g)`; the IR op
//! [`Mul`] of `inputs[0]` (the map) and `inputs[1]` (a gate of the same
//! shape, or `C x 1 x 1`, broadcast over the map: squeeze-excitation).
//! Lowered by the statement or join (see [`crate::lower`]), where the
//! `quantize_gate` rule quantizes the product.

use super::hooks::*;
use quote::quote;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mul;

impl NodeOp for Mul {
    fn kind(&self) -> &'static str {
        "mul"
    }

    fn emit(&self, _io: &NodeIo, cx: &EmitCx) -> Emitted {
        let inp = cx.inputs;
        Emitted::forward(quote! { qatc_runtime::ops::mul(#(#inp),*) })
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::describe_slot;

    #[test]
    fn gate_and_join_forms() {
        let spec = "model t {\n  input 4x4x4\n  classes 10\n  rules { quantize_gate(4) }\n  block b() {\n    g = x -> adaptive_avgpool(1) -> sigmoid\n    y = mul(x, x)\n    y *= g\n    return y\n  }\n  stage s: b x1\n  fc: flatten -> linear(classes)\n}\n";
        insta::assert_snapshot!(describe_slot(spec, "s.0"), @r#"
        s.0.pool1 = adaptive_avgpool(1) 4x4x4 -> 4x1x1 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 68 weight_bytes 0 Pool
          | fn forward() {
          |     let y = qatc_runtime::ops::adaptive_avg_pool2d(&input, 1);
          | }
        s.0.sigmoid1 = sigmoid 4x1x1 -> 4x1x1 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::sigmoid(&s_0_pool1);
          | }
        s.0.mul1 = mul 4x4x4 -> 4x4x4 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::mul(&input, &input);
          | }
        s.0.gate_act1 = act(dorefa, 4 bit) 4x4x4 -> 4x4x4 (w None, a 32, out 4)
          params 0 macs 0 seed_ops 0 weight_bytes 0 ActQuant { clip: false }
          | struct Model {
          |     /// `s.0.gate_act1`: activation quantizer, site 0 (test).
          |     pub s_0_gate_act1: qatc_runtime::quant::ActQuant,
          | }
          | fn new() -> Model {
          |     Model {
          |         s_0_gate_act1: qatc_runtime::quant::ActQuant::from_spec(vs / "node", p.acts[0]),
          |     }
          | }
          | fn forward() {
          |     let y = self.s_0_gate_act1.forward(&s_0_mul1);
          | }
        s.0.mul2 = mul 4x4x4 -> 4x4x4 (w None, a 4, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::mul(&s_0_gate_act1, &s_0_sigmoid1);
          | }
        s.0.gate_act2 = act(dorefa, 4 bit) 4x4x4 -> 4x4x4 (w None, a 32, out 4)
          params 0 macs 0 seed_ops 0 weight_bytes 0 ActQuant { clip: false }
          | struct Model {
          |     /// `s.0.gate_act2`: activation quantizer, site 0 (test).
          |     pub s_0_gate_act2: qatc_runtime::quant::ActQuant,
          | }
          | fn new() -> Model {
          |     Model {
          |         s_0_gate_act2: qatc_runtime::quant::ActQuant::from_spec(vs / "node", p.acts[0]),
          |     }
          | }
          | fn forward() {
          |     let y = self.s_0_gate_act2.forward(&s_0_mul2);
          | }
        "#);
    }
}
