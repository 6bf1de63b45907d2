//! Batch normalisation over channels: `bn`; the IR op [`BatchNorm`]. Never
//! folded into the conv during QAT (the seed found folding hurt
//! convergence); stored at the `bn_bits` rule's width.

use super::hooks::*;
use quote::quote;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchNorm;

pub const BN: Builtin<BatchNorm> = Builtin {
    name: "bn",
    params: &[],
    lower: |_, env| {
        env.map()?;
        Ok(Lowered {
            op: BatchNorm,
            out: env.input.clone(),
            out_bit: None,
        })
    },
};

impl NodeOp for BatchNorm {
    fn kind(&self) -> &'static str {
        "bn"
    }

    fn stored_bits(&self) -> StoredBits {
        StoredBits::BatchNorm
    }

    fn variables(&self, io: &NodeIo) -> Vec<(&'static str, Vec<i64>)> {
        ["weight", "bias", "running_mean", "running_var"]
            .into_iter()
            .map(|p| (p, vec![io.cin()]))
            .collect()
    }

    fn counts(&self, io: &NodeIo) -> Counts {
        let cin = io.cin() as u64;
        Counts {
            params: 2 * cin,
            macs: 0,
            seed_ops: 2 * io.out_shape.numel() as u64,
            // BN nodes are stored at `bn_bits`: their out_bit.
            weight_bytes: bytes(2 * cin * io.out_bit as u64),
            class: CostClass::BatchNorm,
        }
    }

    fn emit(&self, io: &NodeIo, cx: &EmitCx) -> Emitted {
        let cin_v = io.cin();
        let doc = format!(
            " `{}`: batch norm over {cin_v} channels (unfolded).",
            io.name
        );
        let (f, path, inp, cin) = (cx.field, cx.path, cx.inputs, int(cin_v));
        Emitted {
            field: Some(quote! { #[doc = #doc] pub #f: qatc_runtime::layers::BatchNorm2d }),
            init: Some(quote! { #f: qatc_runtime::layers::BatchNorm2d::new(#path, #cin) }),
            forward: Some(quote! { self.#f.forward_t(#(#inp)*, train) }),
            clip: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::describe;

    #[test]
    fn batch_norm() {
        insta::assert_snapshot!(describe("3x4x4", "bn", "flatten -> linear(classes)"), @r#"
        stem.bn1 = bn 3x4x4 -> 3x4x4 (w None, a 32, out 32)
          params 6 macs 0 seed_ops 96 weight_bytes 24 BatchNorm
          | struct Model {
          |     /// `stem.bn1`: batch norm over 3 channels (unfolded).
          |     pub stem_bn1: qatc_runtime::layers::BatchNorm2d,
          | }
          | fn new() -> Model {
          |     Model {
          |         stem_bn1: qatc_runtime::layers::BatchNorm2d::new(vs / "node", 3),
          |     }
          | }
          | fn forward() {
          |     let y = self.stem_bn1.forward_t(&input, train);
          | }
        "#);
    }
}
