//! Convolution: `conv(out, kernel, stride?, padding?, groups?, bias?, in?)`
//! and its square shorthands `conv3x3` / `conv1x1`; the IR op [`Conv`]
//! (also what `dwconv` lowers to, see [`super::dwconv`]).
//!
//! Weights are quantized at the slot's `w`; the runtime layer is
//! `qatc_runtime::layers::QConv2d`.

use super::hooks::*;
use crate::ast::Expr;
use crate::diag::Diagnostic;
use crate::vocab::Shape;
use quote::quote;
use serde::Serialize;

/// A 2-D convolution over a `C x H x W` map.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Conv {
    pub out: i64,
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
    pub groups: i64,
    pub bias: bool,
}

pub const CONV: Builtin<Conv> = Builtin {
    name: "conv",
    params: &[
        req("out", ParamKind::Int),
        req("kernel", ParamKind::Int),
        opt("stride", ParamKind::Int),
        opt("padding", ParamKind::Int),
        opt("groups", ParamKind::Int),
        opt("bias", ParamKind::Bool),
        opt("in", ParamKind::Int),
    ],
    lower: |a, env| {
        let (cin, h, w) = env.map()?;
        let k = a.int(1, None, "kernel", 1)?;
        let conv = Conv {
            out: a.int(0, None, "out", 1)?,
            kernel: k,
            stride: a.int(2, Some(1), "stride", 1)?,
            padding: a.int(3, Some((k - 1) / 2), "padding", 0)?,
            groups: a.int(4, Some(1), "groups", 1)?,
            bias: a.bool(5, false)?,
        };
        lower(conv, a, a.expr(6), env, (cin, h, w))
    },
};

pub const CONV3X3: Builtin<Conv> = Builtin {
    name: "conv3x3",
    params: SQUARE,
    lower: |a, env| square(3, a, env),
};

pub const CONV1X1: Builtin<Conv> = Builtin {
    name: "conv1x1",
    params: SQUARE,
    lower: |a, env| square(1, a, env),
};

const SQUARE: &[OpParam] = &[
    req("out", ParamKind::Int),
    opt("stride", ParamKind::Int),
    opt("groups", ParamKind::Int),
    opt("bias", ParamKind::Bool),
    opt("in", ParamKind::Int),
];

fn square(k: i64, a: &Args, env: &OpEnv) -> LResult<Lowered<Conv>> {
    let (cin, h, w) = env.map()?;
    let conv = Conv {
        out: a.int(0, None, "out", 1)?,
        kernel: k,
        stride: a.int(1, Some(1), "stride", 1)?,
        padding: (k - 1) / 2,
        groups: a.int(2, Some(1), "groups", 1)?,
        bias: a.bool(3, false)?,
    };
    lower(conv, a, a.expr(4), env, (cin, h, w))
}

/// Checks a conv whose parameters are known against its input and computes
/// its output shape. `declared_in`: the `in` argument, if written.
pub fn lower(
    conv: Conv,
    a: &Args,
    declared_in: Option<&Expr>,
    env: &OpEnv,
    (cin, h, w): (i64, i64, i64),
) -> LResult<Lowered<Conv>> {
    let name = env.call;
    if let Some(e) = declared_in {
        let declared = a.int_of(e, "in", 1)?;
        if declared != cin {
            return Err(Box::new(
                Diagnostic::error(
                    "E0304",
                    format!(
                        "channel mismatch: `{name}` expects {declared} input channels, gets {cin}"
                    ),
                )
                .primary(e.span(), format!("declared {declared}"))
                .secondary(
                    env.span,
                    format!("the previous layer produces {cin} channels"),
                ),
            ));
        }
    }
    let (out, groups) = (conv.out, conv.groups);
    if cin % groups != 0 || out % groups != 0 {
        return Err(Box::new(
            Diagnostic::error(
                "E0305",
                format!("groups = {groups} does not divide the channels ({cin} in, {out} out)"),
            )
            .primary(env.span, "bad groups")
            .note("input and output channels must both be multiples of `groups`; a depthwise conv has groups = in = out channels"),
        ));
    }
    let (oh, ow) = env.spatial(h, w, conv.kernel, conv.stride, conv.padding)?;
    Ok(Lowered {
        op: conv,
        out: Shape(vec![out, oh, ow]),
        out_bit: None,
    })
}

impl NodeOp for Conv {
    fn kind(&self) -> &'static str {
        if self.groups > 1 && self.groups == self.out {
            "dwconv"
        } else {
            "conv"
        }
    }

    fn name_stem(&self) -> &'static str {
        "conv"
    }

    fn detail(&self, _io: &NodeIo) -> String {
        let Conv {
            out,
            kernel,
            stride,
            padding,
            groups,
            bias,
        } = self;
        format!(
            "(out {out}, k {kernel}, s {stride}, p {padding}, g {groups}{})",
            if *bias { ", bias" } else { "" }
        )
    }

    fn has_weights(&self) -> bool {
        true
    }

    fn size(&self, io: &NodeIo) -> LayerSize {
        let numel = io.out_shape.0.iter().map(|&d| d as i128).product::<i128>();
        let cin = io.cin() as i128;
        let weights =
            (self.out as i128) * (cin / self.groups as i128) * (self.kernel as i128).pow(2);
        let out = io.out_shape.0.first().copied().unwrap_or(0).max(1) as i128;
        LayerSize {
            weights,
            macs: numel * weights / out,
        }
    }

    fn variables(&self, io: &NodeIo) -> Vec<(&'static str, Vec<i64>)> {
        let cin = io.cin();
        let mut v = vec![(
            "weight",
            vec![self.out, cin / self.groups.max(1), self.kernel, self.kernel],
        )];
        if self.bias {
            v.push(("bias", vec![self.out]));
        }
        v
    }

    fn counts(&self, io: &NodeIo) -> Counts {
        let (co, cin) = (self.out as u64, io.cin() as u64);
        let w_bit = io.w_bit.unwrap_or(32) as u64;
        let per = cin / self.groups as u64 * (self.kernel as u64).pow(2);
        let w = co * per;
        let bias = if self.bias { co } else { 0 };
        Counts {
            params: w + bias,
            macs: io.out_shape.numel() as u64 * per,
            seed_ops: 0,
            weight_bytes: bytes(w * w_bit) + 4 * bias,
            class: CostClass::Conv,
        }
    }

    fn emit(&self, io: &NodeIo, cx: &EmitCx) -> Emitted {
        let Conv {
            out,
            kernel,
            stride,
            padding,
            groups,
            bias,
        } = self;
        let cin_v = io.cin();
        let doc = format!(
            " `{}`: conv {cin_v} -> {out}, {kernel}x{kernel}, stride {stride}, padding {padding}{}{}; weight bits of slot `{}`.",
            io.name,
            if *groups > 1 { format!(", {groups} groups") } else { String::new() },
            if *bias { ", bias" } else { "" },
            cx.slot_name
        );
        let (f, path, inp, slot) = (cx.field, cx.path, cx.inputs, int(cx.slot as i64));
        let (cin, out, kernel, stride, padding, groups) = (
            int(cin_v),
            int(*out),
            int(*kernel),
            int(*stride),
            int(*padding),
            int(*groups),
        );
        let init = cx.conv_init;
        Emitted {
            field: Some(quote! { #[doc = #doc] pub #f: qatc_runtime::layers::QConv2d }),
            init: Some(quote! {
                #f: qatc_runtime::layers::QConv2d::new(
                    #path, #cin, #out, #kernel, p.w_bits[#slot],
                    qatc_runtime::layers::QConv2dConfig { stride: #stride, padding: #padding, groups: #groups, bias: #bias, init: #init },
                )
            }),
            forward: Some(quote! { self.#f.forward(#(#inp)*) }),
            clip: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::describe;

    #[test]
    fn conv_forms() {
        insta::assert_snapshot!(describe(
            "3x8x8",
            "conv(4, kernel: 3, stride: 2, bias: true) -> conv3x3(8, groups: 2) -> conv1x1(6, in: 8)",
            "flatten -> linear(classes)"
        ), @r#"
        stem.conv1 = conv(out 4, k 3, s 2, p 1, g 1, bias) 3x8x8 -> 4x4x4 (w Some(32), a 32, out 32)
          params 112 macs 1728 seed_ops 0 weight_bytes 448 Conv
          | struct Model {
          |     /// `stem.conv1`: conv 3 -> 4, 3x3, stride 2, padding 1, bias; weight bits of slot `stem`.
          |     pub stem_conv1: qatc_runtime::layers::QConv2d,
          | }
          | fn new() -> Model {
          |     Model {
          |         stem_conv1: qatc_runtime::layers::QConv2d::new(
          |             vs / "node",
          |             3,
          |             4,
          |             3,
          |             p.w_bits[0],
          |             qatc_runtime::layers::QConv2dConfig {
          |                 stride: 2,
          |                 padding: 1,
          |                 groups: 1,
          |                 bias: true,
          |                 init: CONV_INIT,
          |             },
          |         ),
          |     }
          | }
          | fn forward() {
          |     let y = self.stem_conv1.forward(&input);
          | }
        stem.conv2 = conv(out 8, k 3, s 1, p 1, g 2) 4x4x4 -> 8x4x4 (w Some(32), a 32, out 32)
          params 144 macs 2304 seed_ops 0 weight_bytes 576 Conv
          | struct Model {
          |     /// `stem.conv2`: conv 4 -> 8, 3x3, stride 1, padding 1, 2 groups; weight bits of slot `stem`.
          |     pub stem_conv2: qatc_runtime::layers::QConv2d,
          | }
          | fn new() -> Model {
          |     Model {
          |         stem_conv2: qatc_runtime::layers::QConv2d::new(
          |             vs / "node",
          |             4,
          |             8,
          |             3,
          |             p.w_bits[0],
          |             qatc_runtime::layers::QConv2dConfig {
          |                 stride: 1,
          |                 padding: 1,
          |                 groups: 2,
          |                 bias: false,
          |                 init: CONV_INIT,
          |             },
          |         ),
          |     }
          | }
          | fn forward() {
          |     let y = self.stem_conv2.forward(&stem_conv1);
          | }
        stem.conv3 = conv(out 6, k 1, s 1, p 0, g 1) 8x4x4 -> 6x4x4 (w Some(32), a 32, out 32)
          params 48 macs 768 seed_ops 0 weight_bytes 192 Conv
          | struct Model {
          |     /// `stem.conv3`: conv 8 -> 6, 1x1, stride 1, padding 0; weight bits of slot `stem`.
          |     pub stem_conv3: qatc_runtime::layers::QConv2d,
          | }
          | fn new() -> Model {
          |     Model {
          |         stem_conv3: qatc_runtime::layers::QConv2d::new(
          |             vs / "node",
          |             8,
          |             6,
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
          |     let y = self.stem_conv3.forward(&stem_conv2);
          | }
        "#);
    }

    #[test]
    fn channel_and_group_errors() {
        insta::assert_snapshot!(describe("3x8x8", "conv1x1(4, in: 5)", "flatten -> linear(classes)"), @"
        error[E0304]: channel mismatch: `conv1x1` expects 5 input channels, gets 3
          ┌─ t.qspec:4:24
          │
        4 │   stem: conv1x1(4, in: 5)
          │         ---------------^-
          │         │              │
          │         │              declared 5
          │         the previous layer produces 3 channels
        ");
        insta::assert_snapshot!(describe("3x8x8", "conv3x3(4, groups: 2)", "flatten -> linear(classes)"), @"
        error[E0305]: groups = 2 does not divide the channels (3 in, 4 out)
          ┌─ t.qspec:4:9
          │
        4 │   stem: conv3x3(4, groups: 2)
          │         ^^^^^^^^^^^^^^^^^^^^^ bad groups
          │
          = input and output channels must both be multiples of `groups`; a depthwise conv has groups = in = out channels
        ");
    }
}
