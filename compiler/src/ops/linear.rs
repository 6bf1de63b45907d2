//! Fully connected layer: `linear(out, bias?, in?)` over a flattened input;
//! the IR op [`Linear`]. Weights are quantized at the slot's `w`; the
//! runtime layer is `qatc_runtime::layers::QLinear`.

use super::hooks::*;
use crate::diag::Diagnostic;
use crate::vocab::Shape;
use quote::quote;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Linear {
    pub out: i64,
    pub bias: bool,
}

pub const LINEAR: Builtin<Linear> = Builtin {
    name: "linear",
    params: &[
        req("out", ParamKind::Int),
        opt("bias", ParamKind::Bool),
        opt("in", ParamKind::Int),
    ],
    lower: |a, env| {
        let shape = env.input;
        if shape.0.len() != 1 {
            return Err(Box::new(
                Diagnostic::error(
                    "E0308",
                    format!("`linear` expects a flattened input, gets {shape}"),
                )
                .primary(env.span, "input is a feature map")
                .help("add `flatten` before `linear`"),
            ));
        }
        let fin = shape.0[0];
        let out = a.int(0, None, "out", 1)?;
        let bias = a.bool(1, true)?;
        if let Some(e) = a.expr(2) {
            let declared = a.int_of(e, "in", 1)?;
            if declared != fin {
                return Err(Box::new(
                    Diagnostic::error(
                        "E0304",
                        format!(
                            "channel mismatch: `linear` expects {declared} input features, gets {fin}"
                        ),
                    )
                    .primary(e.span(), format!("declared {declared}"))
                    .secondary(env.span, format!("the previous layer produces {fin} features")),
                ));
            }
        }
        Ok(Lowered {
            op: Linear { out, bias },
            out: Shape(vec![out]),
            out_bit: None,
        })
    },
};

impl NodeOp for Linear {
    fn kind(&self) -> &'static str {
        "linear"
    }

    fn detail(&self, _io: &NodeIo) -> String {
        format!(
            "(out {}{})",
            self.out,
            if self.bias { ", bias" } else { "" }
        )
    }

    fn has_weights(&self) -> bool {
        true
    }

    fn size(&self, io: &NodeIo) -> LayerSize {
        let weights = (self.out as i128) * io.cin() as i128;
        LayerSize {
            weights,
            macs: weights,
        }
    }

    fn variables(&self, io: &NodeIo) -> Vec<(&'static str, Vec<i64>)> {
        let mut v = vec![("weight", vec![self.out, io.cin()])];
        if self.bias {
            v.push(("bias", vec![self.out]));
        }
        v
    }

    fn counts(&self, io: &NodeIo) -> Counts {
        let (co, cin) = (self.out as u64, io.cin() as u64);
        let w_bit = io.w_bit.unwrap_or(32) as u64;
        let w = cin * co;
        let bias = if self.bias { co } else { 0 };
        Counts {
            params: w + bias,
            macs: w,
            seed_ops: 0,
            weight_bytes: bytes(w * w_bit) + 4 * bias,
            class: CostClass::Fc,
        }
    }

    fn emit(&self, io: &NodeIo, cx: &EmitCx) -> Emitted {
        let cin_v = io.cin();
        let doc = format!(
            " `{}`: linear {cin_v} -> {}{}; weight bits of slot `{}`.",
            io.name,
            self.out,
            if self.bias { ", bias" } else { "" },
            cx.slot_name
        );
        let (f, path, inp, slot) = (cx.field, cx.path, cx.inputs, int(cx.slot as i64));
        let (cin, out, bias, init) = (int(cin_v), int(self.out), self.bias, cx.linear_init);
        Emitted {
            field: Some(quote! { #[doc = #doc] pub #f: qatc_runtime::layers::QLinear }),
            init: Some(quote! {
                #f: qatc_runtime::layers::QLinear::new(
                    #path, #cin, #out, p.w_bits[#slot],
                    qatc_runtime::layers::QLinearConfig { bias: #bias, init: #init },
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
    fn linear_with_and_without_bias() {
        insta::assert_snapshot!(describe("2x2x2", "flatten -> linear(6, bias: false, in: 8)", "linear(classes)"), @r#"
        stem.flatten1 = flatten 2x2x2 -> 8 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::flatten(&input);
          | }
        stem.linear1 = linear(out 6) 8 -> 6 (w Some(32), a 32, out 32)
          params 48 macs 48 seed_ops 0 weight_bytes 192 Fc
          | struct Model {
          |     /// `stem.linear1`: linear 8 -> 6; weight bits of slot `stem`.
          |     pub stem_linear1: qatc_runtime::layers::QLinear,
          | }
          | fn new() -> Model {
          |     Model {
          |         stem_linear1: qatc_runtime::layers::QLinear::new(
          |             vs / "node",
          |             8,
          |             6,
          |             p.w_bits[0],
          |             qatc_runtime::layers::QLinearConfig {
          |                 bias: false,
          |                 init: LINEAR_INIT,
          |             },
          |         ),
          |     }
          | }
          | fn forward() {
          |     let y = self.stem_linear1.forward(&stem_flatten1);
          | }
        "#);
    }

    #[test]
    fn linear_needs_a_flat_input() {
        insta::assert_snapshot!(describe("2x2x2", "linear(6)", "flatten -> linear(classes)"), @"
        error[E0308]: `linear` expects a flattened input, gets 2x2x2
          ┌─ t.qspec:4:9
          │
        4 │   stem: linear(6)
          │         ^^^^^^^^^ input is a feature map
          │
          = help: add `flatten` before `linear`
        ");
    }
}
