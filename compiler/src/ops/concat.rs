//! Channel concatenation: the join `concat(a, b, ...)` of two or more
//! values with one spatial size; the IR op [`Concat`]. Lowered by the join
//! itself (see [`crate::lower`]), where the `quantize_concat` rule places
//! the one quantizer its inputs share. Free in the summary.

use super::hooks::*;
use quote::quote;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Concat;

impl NodeOp for Concat {
    fn kind(&self) -> &'static str {
        "concat"
    }

    fn emit(&self, _io: &NodeIo, cx: &EmitCx) -> Emitted {
        let inp = cx.inputs;
        Emitted::forward(quote! { qatc_runtime::ops::concat(&[#(#inp),*]) })
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::describe_slot;

    #[test]
    fn concat_with_its_shared_quantizer() {
        let spec = "model t {\n  input 4x4x4\n  classes 10\n  rules { quantize_concat(4) }\n  block b() {\n    a = x -> conv1x1(2)\n    return concat(x, a)\n  }\n  stage s: b x1\n  fc: flatten -> linear(classes)\n}\n";
        insta::assert_snapshot!(describe_slot(spec, "s.0"), @r#"
        s.0.conv1 = conv(out 2, k 1, s 1, p 0, g 1) 4x4x4 -> 2x4x4 (w Some(32), a 32, out 32)
          params 8 macs 128 seed_ops 0 weight_bytes 32 Conv
          | struct Model {
          |     /// `s.0.conv1`: conv 4 -> 2, 1x1, stride 1, padding 0; weight bits of slot `s.0`.
          |     pub s_0_conv1: qatc_runtime::layers::QConv2d,
          | }
          | fn new() -> Model {
          |     Model {
          |         s_0_conv1: qatc_runtime::layers::QConv2d::new(
          |             vs / "node",
          |             4,
          |             2,
          |             1,
          |             p.w_bits[0],
          |             qatc_runtime::layers::QConv2dConfig {
          |                 stride: 1,
          |                 padding: 0,
          |                 groups: 1,
          |                 bias: false,
          |                 init: CONV_INIT,
          |             },
          |         ),
          |     }
          | }
          | fn forward() {
          |     let y = self.s_0_conv1.forward(&input);
          | }
        s.0.concat1 = concat 4x4x4 -> 6x4x4 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::concat(&[&input, &s_0_conv1]);
          | }
        s.0.concat_act1 = act(dorefa, 4 bit) 6x4x4 -> 6x4x4 (w None, a 32, out 4)
          params 0 macs 0 seed_ops 0 weight_bytes 0 ActQuant { clip: false }
          | struct Model {
          |     /// `s.0.concat_act1`: activation quantizer, site 0 (test).
          |     pub s_0_concat_act1: qatc_runtime::quant::ActQuant,
          | }
          | fn new() -> Model {
          |     Model {
          |         s_0_concat_act1: qatc_runtime::quant::ActQuant::from_spec(vs / "node", p.acts[0]),
          |     }
          | }
          | fn forward() {
          |     let y = self.s_0_concat_act1.forward(&s_0_concat1);
          | }
        "#);
    }
}
