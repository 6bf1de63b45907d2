//! Residual add: `y += chain` in a block; the IR op [`Add`] of
//! `inputs[0]` (main path) and `inputs[1]` (shortcut). Lowered by the
//! statement itself (see [`crate::lower`]), where the placement rules for
//! its operands apply; it has no call form.

use super::hooks::*;
use quote::quote;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Add;

impl NodeOp for Add {
    fn kind(&self) -> &'static str {
        "add"
    }

    fn emit(&self, _io: &NodeIo, cx: &EmitCx) -> Emitted {
        let inp = cx.inputs;
        Emitted::forward(quote! { qatc_runtime::ops::add(#(#inp),*) })
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::describe_slot;

    #[test]
    fn residual_add() {
        let spec = "model t {\n  input 4x4x4\n  classes 10\n  block res() {\n    y = x -> conv3x3(cin)\n    y += x\n    return y\n  }\n  stage s: res x1\n  fc: flatten -> linear(classes)\n}\n";
        insta::assert_snapshot!(describe_slot(spec, "s.0"), @r#"
        s.0.conv1 = conv(out 4, k 3, s 1, p 1, g 1) 4x4x4 -> 4x4x4 (w Some(32), a 32, out 32)
          params 144 macs 2304 seed_ops 0 weight_bytes 576 Conv
          | struct Model {
          |     /// `s.0.conv1`: conv 4 -> 4, 3x3, stride 1, padding 1; weight bits of slot `s.0`.
          |     pub s_0_conv1: qatc_runtime::layers::QConv2d,
          | }
          | fn new() -> Model {
          |     Model {
          |         s_0_conv1: qatc_runtime::layers::QConv2d::new(
          |             vs / "node",
          |             4,
          |             4,
          |             3,
          |             p.w_bits[0],
          |             qatc_runtime::layers::QConv2dConfig {
          |                 stride: 1,
          |                 padding: 1,
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
        s.0.add1 = add 4x4x4 -> 4x4x4 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::add(&s_0_conv1, &input);
          | }
        "#);
    }
}
