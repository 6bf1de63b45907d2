//! Average pooling: `avgpool(kernel, stride?, functional?)`; the IR op
//! [`AvgPool`]. Stored at the `pool_bits` rule's width.

use super::hooks::*;
use crate::vocab::Shape;
use quote::quote;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AvgPool {
    pub kernel: i64,
    pub stride: i64,
    /// Called as a function in the seed (`F.avg_pool2d`), so its legacy
    /// profiler did not count it; matters only for the seed-compatible total.
    pub functional: bool,
}

pub const AVGPOOL: Builtin<AvgPool> = Builtin {
    name: "avgpool",
    params: &[
        req("kernel", ParamKind::Int),
        opt("stride", ParamKind::Int),
        opt("functional", ParamKind::Bool),
    ],
    lower: |a, env| {
        let (c, h, w) = env.map()?;
        let kernel = a.int(0, None, "kernel", 1)?;
        let stride = a.int(1, Some(kernel), "stride", 1)?;
        let functional = a.bool(2, false)?;
        let (oh, ow) = env.spatial(h, w, kernel, stride, 0)?;
        Ok(Lowered {
            op: AvgPool {
                kernel,
                stride,
                functional,
            },
            out: Shape(vec![c, oh, ow]),
            out_bit: None,
        })
    },
};

impl NodeOp for AvgPool {
    fn kind(&self) -> &'static str {
        "avgpool"
    }

    fn name_stem(&self) -> &'static str {
        "pool"
    }

    fn detail(&self, _io: &NodeIo) -> String {
        format!(
            "(k {}, s {}{})",
            self.kernel,
            self.stride,
            if self.functional { ", functional" } else { "" }
        )
    }

    fn stored_bits(&self) -> StoredBits {
        StoredBits::Pool
    }

    fn counts(&self, io: &NodeIo) -> Counts {
        Counts {
            seed_ops: if self.functional {
                0
            } else {
                io.out_shape.numel() as u64
            },
            class: CostClass::Pool,
            ..Counts::ZERO
        }
    }

    fn emit(&self, _io: &NodeIo, cx: &EmitCx) -> Emitted {
        let (inp, kernel, stride) = (cx.inputs, int(self.kernel), int(self.stride));
        Emitted::forward(quote! { qatc_runtime::ops::avg_pool2d(#(#inp)*, #kernel, #stride) })
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::describe;

    #[test]
    fn average_pooling() {
        insta::assert_snapshot!(describe("3x8x8", "avgpool(2) -> avgpool(2, stride: 2, functional: true)", "flatten -> linear(classes)"), @"
        stem.pool1 = avgpool(k 2, s 2) 3x8x8 -> 3x4x4 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 48 weight_bytes 0 Pool
          | fn forward() {
          |     let y = qatc_runtime::ops::avg_pool2d(&input, 2, 2);
          | }
        stem.pool2 = avgpool(k 2, s 2, functional) 3x4x4 -> 3x2x2 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 Pool
          | fn forward() {
          |     let y = qatc_runtime::ops::avg_pool2d(&stem_pool1, 2, 2);
          | }
        ");
    }

    #[test]
    fn stride_must_divide() {
        insta::assert_snapshot!(describe("3x7x7", "avgpool(2)", "flatten -> linear(classes)"), @"
        error[E0307]: stride 2 does not divide the spatial size 7x7
          ┌─ t.qspec:4:9
          │
        4 │   stem: avgpool(2)
          │         ^^^^^^^^^^ input is 7x7 here
          │
          = help: use a stride that divides the input size, or change the input shape
        ");
    }
}
