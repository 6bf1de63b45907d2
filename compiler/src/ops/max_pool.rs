//! Max pooling: `maxpool(kernel, stride?, padding?)`; the IR op
//! [`MaxPool`]. It selects values, so it carries its input's quantizer
//! bits on; free in the seed's profiler.

use super::hooks::*;
use crate::vocab::Shape;
use quote::quote;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MaxPool {
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
}

pub const MAXPOOL: Builtin<MaxPool> = Builtin {
    name: "maxpool",
    params: &[
        req("kernel", ParamKind::Int),
        opt("stride", ParamKind::Int),
        opt("padding", ParamKind::Int),
    ],
    lower: |a, env| {
        let (c, h, w) = env.map()?;
        let kernel = a.int(0, None, "kernel", 1)?;
        let stride = a.int(1, Some(kernel), "stride", 1)?;
        let padding = a.int(2, Some(0), "padding", 0)?;
        let (oh, ow) = env.spatial(h, w, kernel, stride, padding)?;
        Ok(Lowered {
            op: MaxPool {
                kernel,
                stride,
                padding,
            },
            out: Shape(vec![c, oh, ow]),
            out_bit: None,
        })
    },
};

impl NodeOp for MaxPool {
    fn kind(&self) -> &'static str {
        "maxpool"
    }

    fn name_stem(&self) -> &'static str {
        "pool"
    }

    fn detail(&self, _io: &NodeIo) -> String {
        format!("(k {}, s {}, p {})", self.kernel, self.stride, self.padding)
    }

    fn passes_input_bits(&self) -> bool {
        true
    }

    fn emit(&self, _io: &NodeIo, cx: &EmitCx) -> Emitted {
        let (inp, kernel, stride, padding) = (
            cx.inputs,
            int(self.kernel),
            int(self.stride),
            int(self.padding),
        );
        Emitted::forward(
            quote! { qatc_runtime::ops::max_pool2d(#(#inp)*, #kernel, #stride, #padding) },
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::describe;

    #[test]
    fn max_pooling() {
        insta::assert_snapshot!(describe("3x8x8", "act(4) -> maxpool(3, stride: 2, padding: 1)", "flatten -> linear(classes)"), @r#"
        stem.act1 = act(dorefa, 4 bit) 3x8x8 -> 3x8x8 (w None, a 32, out 4)
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
        stem.pool1 = maxpool(k 3, s 2, p 1) 3x8x8 -> 3x4x4 (w None, a 4, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::max_pool2d(&stem_act1, 3, 2, 1);
          | }
        "#);
    }
}
