//! Rectifiers: `relu` and `relu6`; the IR ops [`Relu`] and [`Relu6`].
//! Shape-preserving and free in the seed's profiler.

use super::hooks::*;
use quote::quote;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Relu;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Relu6;

pub const RELU: Builtin<Relu> = Builtin {
    name: "relu",
    params: &[],
    lower: |_, env| Lowered::same_shape(Relu, env),
};

pub const RELU6: Builtin<Relu6> = Builtin {
    name: "relu6",
    params: &[],
    lower: |_, env| Lowered::same_shape(Relu6, env),
};

impl NodeOp for Relu {
    fn kind(&self) -> &'static str {
        "relu"
    }

    fn emit(&self, _io: &NodeIo, cx: &EmitCx) -> Emitted {
        let inp = cx.inputs;
        Emitted::forward(quote! { qatc_runtime::ops::relu(#(#inp)*) })
    }
}

impl NodeOp for Relu6 {
    fn kind(&self) -> &'static str {
        "relu6"
    }

    fn emit(&self, _io: &NodeIo, cx: &EmitCx) -> Emitted {
        let inp = cx.inputs;
        Emitted::forward(quote! { qatc_runtime::ops::relu6(#(#inp)*) })
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::describe;

    #[test]
    fn rectifiers() {
        insta::assert_snapshot!(describe("3x4x4", "relu -> relu6", "flatten -> linear(classes)"), @"
        stem.relu1 = relu 3x4x4 -> 3x4x4 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::relu(&input);
          | }
        stem.relu61 = relu6 3x4x4 -> 3x4x4 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::relu6(&stem_relu1);
          | }
        ");
    }
}
