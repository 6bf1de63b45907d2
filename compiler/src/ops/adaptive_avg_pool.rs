//! Adaptive average pooling: `adaptive_avgpool(size?)` (global pooling at
//! size 1); the IR op [`AdaptiveAvgPool`]. Stored at the `pool_bits`
//! rule's width.

use super::hooks::*;
use crate::vocab::Shape;
use quote::quote;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdaptiveAvgPool {
    pub size: i64,
}

pub const ADAPTIVE_AVGPOOL: Builtin<AdaptiveAvgPool> = Builtin {
    name: "adaptive_avgpool",
    params: &[opt("size", ParamKind::Int)],
    lower: |a, env| {
        let (c, h, w) = env.map()?;
        let size = a.int(0, Some(1), "size", 1)?;
        if size > h || size > w {
            return Err(error(
                "E0306",
                format!("adaptive pooling to {size}x{size} from {h}x{w}"),
                env.span,
                "output larger than input",
            ));
        }
        Ok(Lowered {
            op: AdaptiveAvgPool { size },
            out: Shape(vec![c, size, size]),
            out_bit: None,
        })
    },
};

impl NodeOp for AdaptiveAvgPool {
    fn kind(&self) -> &'static str {
        "adaptive_avgpool"
    }

    fn name_stem(&self) -> &'static str {
        "pool"
    }

    fn detail(&self, _io: &NodeIo) -> String {
        format!("({})", self.size)
    }

    fn stored_bits(&self) -> StoredBits {
        StoredBits::Pool
    }

    fn counts(&self, io: &NodeIo) -> Counts {
        let h = io.in_shape.0.get(1).copied().unwrap_or(1) as u64;
        let w = io.in_shape.0.get(2).copied().unwrap_or(1) as u64;
        let size = self.size as u64;
        let k = (h / size) * (w / size);
        Counts {
            seed_ops: (k + 1) * io.out_shape.numel() as u64,
            class: CostClass::Pool,
            ..Counts::ZERO
        }
    }

    fn emit(&self, _io: &NodeIo, cx: &EmitCx) -> Emitted {
        let (inp, size) = (cx.inputs, int(self.size));
        Emitted::forward(quote! { qatc_runtime::ops::adaptive_avg_pool2d(#(#inp)*, #size) })
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::describe;

    #[test]
    fn adaptive_pooling() {
        insta::assert_snapshot!(describe("3x8x8", "adaptive_avgpool(2)", "flatten -> linear(classes)"), @"
        stem.pool1 = adaptive_avgpool(2) 3x8x8 -> 3x2x2 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 204 weight_bytes 0 Pool
          | fn forward() {
          |     let y = qatc_runtime::ops::adaptive_avg_pool2d(&input, 2);
          | }
        ");
        insta::assert_snapshot!(describe("3x2x2", "adaptive_avgpool(4)", "flatten -> linear(classes)"), @"
        error[E0306]: adaptive pooling to 4x4 from 2x2
          ┌─ t.qspec:4:9
          │
        4 │   stem: adaptive_avgpool(4)
          │         ^^^^^^^^^^^^^^^^^^^ output larger than input
        ");
    }
}
