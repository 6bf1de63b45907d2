//! Activation fake-quantizer: `act(bits, quantizer?)` written in a spec, or
//! placed by a rule (`quantize_after_add`, ...); the IR op [`ActQuant`].
//! Its output bit-width is its own; shape-only ops after it carry it on.

use super::hooks::*;
use crate::vocab::Quantizer;
use quote::quote;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActQuant {
    pub quantizer: Quantizer,
}

pub const ACT: Builtin<ActQuant> = Builtin {
    name: "act",
    params: &[
        req("bits", ParamKind::Bits),
        opt("quantizer", ParamKind::Quant),
    ],
    lower: |a, env| {
        let bits = a.bits(0, "bits")?.resolve(&env.bits);
        let quantizer = a.quant(1).unwrap_or(env.acts).clone();
        quantizer_bits_ok(&quantizer, bits, env.span, "this places")?;
        Ok(Lowered {
            op: ActQuant { quantizer },
            out: env.input.clone(),
            out_bit: Some(bits),
        })
    },
};

impl NodeOp for ActQuant {
    fn kind(&self) -> &'static str {
        "act"
    }

    fn detail(&self, io: &NodeIo) -> String {
        format!("({}, {} bit)", self.quantizer, io.out_bit)
    }

    /// A learnable clipping value `alpha` (PACT, mPACT).
    fn variables(&self, _io: &NodeIo) -> Vec<(&'static str, Vec<i64>)> {
        if self.quantizer.learnable() {
            vec![("alpha", vec![])]
        } else {
            Vec::new()
        }
    }

    fn counts(&self, _io: &NodeIo) -> Counts {
        let clip = self.quantizer.learnable();
        Counts {
            weight_bytes: if clip { 4 } else { 0 },
            class: CostClass::ActQuant { clip },
            ..Counts::ZERO
        }
    }

    fn emit(&self, io: &NodeIo, cx: &EmitCx) -> Emitted {
        let doc = format!(
            " `{}`: activation quantizer, site {} ({}).",
            io.name, cx.act_site, cx.origin
        );
        let (f, path, inp, method) = (cx.field, cx.path, cx.inputs, cx.act_method);
        let site = int(cx.act_site as i64);
        Emitted {
            field: Some(quote! { #[doc = #doc] pub #f: qatc_runtime::quant::ActQuant }),
            init: Some(
                quote! { #f: qatc_runtime::quant::ActQuant::from_spec(#path, p.acts[#site]) },
            ),
            forward: Some(quote! { self.#f.#method(#(#inp),*) }),
            clip: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::describe;

    #[test]
    fn quantizers_and_bits() {
        insta::assert_snapshot!(describe(
            "3x4x4",
            "act(8) -> act(4, pact(6)) -> act(2, mpact(3)) -> act(16, pact_fixed(0.5)) -> act(8, none)",
            "flatten -> linear(classes)"
        ), @r#"
        stem.act1 = act(dorefa, 8 bit) 3x4x4 -> 3x4x4 (w None, a 32, out 8)
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
        stem.act2 = act(pact(6), 4 bit) 3x4x4 -> 3x4x4 (w None, a 8, out 4)
          params 0 macs 0 seed_ops 0 weight_bytes 4 ActQuant { clip: true }
          | struct Model {
          |     /// `stem.act2`: activation quantizer, site 0 (test).
          |     pub stem_act2: qatc_runtime::quant::ActQuant,
          | }
          | fn new() -> Model {
          |     Model {
          |         stem_act2: qatc_runtime::quant::ActQuant::from_spec(vs / "node", p.acts[0]),
          |     }
          | }
          | fn forward() {
          |     let y = self.stem_act2.forward(&stem_act1);
          | }
        stem.act3 = act(mpact(3), 2 bit) 3x4x4 -> 3x4x4 (w None, a 4, out 2)
          params 0 macs 0 seed_ops 0 weight_bytes 4 ActQuant { clip: true }
          | struct Model {
          |     /// `stem.act3`: activation quantizer, site 0 (test).
          |     pub stem_act3: qatc_runtime::quant::ActQuant,
          | }
          | fn new() -> Model {
          |     Model {
          |         stem_act3: qatc_runtime::quant::ActQuant::from_spec(vs / "node", p.acts[0]),
          |     }
          | }
          | fn forward() {
          |     let y = self.stem_act3.forward(&stem_act2);
          | }
        stem.act4 = act(pact_fixed(0.5), 16 bit) 3x4x4 -> 3x4x4 (w None, a 2, out 16)
          params 0 macs 0 seed_ops 0 weight_bytes 0 ActQuant { clip: false }
          | struct Model {
          |     /// `stem.act4`: activation quantizer, site 0 (test).
          |     pub stem_act4: qatc_runtime::quant::ActQuant,
          | }
          | fn new() -> Model {
          |     Model {
          |         stem_act4: qatc_runtime::quant::ActQuant::from_spec(vs / "node", p.acts[0]),
          |     }
          | }
          | fn forward() {
          |     let y = self.stem_act4.forward(&stem_act3);
          | }
        stem.act5 = act(none, 8 bit) 3x4x4 -> 3x4x4 (w None, a 16, out 8)
          params 0 macs 0 seed_ops 0 weight_bytes 0 ActQuant { clip: false }
          | struct Model {
          |     /// `stem.act5`: activation quantizer, site 0 (test).
          |     pub stem_act5: qatc_runtime::quant::ActQuant,
          | }
          | fn new() -> Model {
          |     Model {
          |         stem_act5: qatc_runtime::quant::ActQuant::from_spec(vs / "node", p.acts[0]),
          |     }
          | }
          | fn forward() {
          |     let y = self.stem_act5.forward(&stem_act4);
          | }
        "#);
    }

    #[test]
    fn mpact_needs_two_bits() {
        insta::assert_snapshot!(describe("3x4x4", "act(1, mpact(3))", "flatten -> linear(classes)"), @"
        error[E0205]: this places an mPACT quantizer at 1 bit
          ┌─ t.qspec:4:9
          │
        4 │   stem: act(1, mpact(3))
          │         ^^^^^^^^^^^^^^^^ mPACT needs at least 2 bits
          │
          = mPACT is symmetric: one bit holds the sign, b - 1 bits the magnitude
          = help: use 2 or more bits here, or `dorefa` / `pact` for 1-bit activations
        ");
    }
}
