//! Depthwise convolution: `dwconv(kernel, stride?, padding?, bias?)` and
//! `dwconv3x3(stride?, bias?)`. A depthwise conv is a [`Conv`] with
//! `groups = out = in` channels, so only the call forms live here; the IR
//! op and its backends are [`super::conv`]'s.

use super::conv::{self, Conv};
use super::hooks::*;

pub const DWCONV: Builtin<Conv> = Builtin {
    name: "dwconv",
    params: &[
        req("kernel", ParamKind::Int),
        opt("stride", ParamKind::Int),
        opt("padding", ParamKind::Int),
        opt("bias", ParamKind::Bool),
    ],
    lower: |a, env| {
        let (cin, h, w) = env.map()?;
        let k = a.int(0, None, "kernel", 1)?;
        let dw = Conv {
            out: cin,
            kernel: k,
            stride: a.int(1, Some(1), "stride", 1)?,
            padding: a.int(2, Some((k - 1) / 2), "padding", 0)?,
            groups: cin,
            bias: a.bool(3, false)?,
        };
        conv::lower(dw, a, None, env, (cin, h, w))
    },
};

pub const DWCONV3X3: Builtin<Conv> = Builtin {
    name: "dwconv3x3",
    params: &[opt("stride", ParamKind::Int), opt("bias", ParamKind::Bool)],
    lower: |a, env| {
        let (cin, h, w) = env.map()?;
        let dw = Conv {
            out: cin,
            kernel: 3,
            stride: a.int(0, Some(1), "stride", 1)?,
            padding: 1,
            groups: cin,
            bias: a.bool(1, false)?,
        };
        conv::lower(dw, a, None, env, (cin, h, w))
    },
};

#[cfg(test)]
mod tests {
    use crate::testing::describe;

    #[test]
    fn depthwise_forms() {
        insta::assert_snapshot!(describe(
            "4x8x8",
            "dwconv(5, stride: 2) -> dwconv3x3(bias: true)",
            "flatten -> linear(classes)"
        ), @r#"
        stem.conv1 = dwconv(out 4, k 5, s 2, p 2, g 4) 4x8x8 -> 4x4x4 (w Some(32), a 32, out 32)
          params 100 macs 1600 seed_ops 0 weight_bytes 400 Conv
          | struct Model {
          |     /// `stem.conv1`: conv 4 -> 4, 5x5, stride 2, padding 2, 4 groups; weight bits of slot `stem`.
          |     pub stem_conv1: qatc_runtime::layers::QConv2d,
          | }
          | fn new() -> Model {
          |     Model {
          |         stem_conv1: qatc_runtime::layers::QConv2d::new(
          |             vs / "node",
          |             4,
          |             4,
          |             5,
          |             p.w_bits[0],
          |             qatc_runtime::layers::QConv2dConfig {
          |                 stride: 2,
          |                 padding: 2,
          |                 groups: 4,
          |                 bias: false,
          |                 init: CONV_INIT,
          |             },
          |         ),
          |     }
          | }
          | fn forward() {
          |     let y = self.stem_conv1.forward(&input);
          | }
        stem.conv2 = dwconv(out 4, k 3, s 1, p 1, g 4, bias) 4x4x4 -> 4x4x4 (w Some(32), a 32, out 32)
          params 40 macs 576 seed_ops 0 weight_bytes 160 Conv
          | struct Model {
          |     /// `stem.conv2`: conv 4 -> 4, 3x3, stride 1, padding 1, 4 groups, bias; weight bits of slot `stem`.
          |     pub stem_conv2: qatc_runtime::layers::QConv2d,
          | }
          | fn new() -> Model {
          |     Model {
          |         stem_conv2: qatc_runtime::layers::QConv2d::new(
          |             vs / "node",
          |             4,
          |             4,
          |             3,
          |             p.w_bits[0],
          |             qatc_runtime::layers::QConv2dConfig {
          |                 stride: 1,
          |                 padding: 1,
          |                 groups: 4,
          |                 bias: true,
          |                 init: CONV_INIT,
          |             },
          |         ),
          |     }
          | }
          | fn forward() {
          |     let y = self.stem_conv2.forward(&stem_conv1);
          | }
        "#);
    }
}
