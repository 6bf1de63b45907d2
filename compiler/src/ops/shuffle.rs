//! Channel shuffle (ShuffleNet): `shuffle(groups)`; the IR op [`Shuffle`].
//! A permutation of the channels, so it carries its input's quantizer bits.

use super::hooks::*;
use crate::diag::Diagnostic;
use quote::quote;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Shuffle {
    pub groups: i64,
}

pub const SHUFFLE: Builtin<Shuffle> = Builtin {
    name: "shuffle",
    params: &[req("groups", ParamKind::Int)],
    lower: |a, env| {
        let (c, _, _) = env.map()?;
        let groups = a.int(0, None, "groups", 1)?;
        if c % groups != 0 {
            return Err(Box::new(
                Diagnostic::error(
                    "E0315",
                    format!("shuffle in {groups} groups of {c} channels"),
                )
                .primary(env.span, format!("{groups} does not divide {c}"))
                .help("the channels must be a multiple of `groups`"),
            ));
        }
        Ok(Lowered {
            op: Shuffle { groups },
            out: env.input.clone(),
            out_bit: None,
        })
    },
};

impl NodeOp for Shuffle {
    fn kind(&self) -> &'static str {
        "shuffle"
    }

    fn detail(&self, _io: &NodeIo) -> String {
        format!("({} groups)", self.groups)
    }

    fn passes_input_bits(&self) -> bool {
        true
    }

    fn emit(&self, _io: &NodeIo, cx: &EmitCx) -> Emitted {
        let (inp, groups) = (cx.inputs, int(self.groups));
        Emitted::forward(quote! { qatc_runtime::ops::channel_shuffle(#(#inp)*, #groups) })
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::describe;

    #[test]
    fn shuffle() {
        insta::assert_snapshot!(describe("4x2x2", "act(4) -> shuffle(2)", "flatten -> linear(classes)"), @r#"
        stem.act1 = act(dorefa, 4 bit) 4x2x2 -> 4x2x2 (w None, a 32, out 4)
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
        stem.shuffle1 = shuffle(2 groups) 4x2x2 -> 4x2x2 (w None, a 4, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::channel_shuffle(&stem_act1, 2);
          | }
        "#);
        insta::assert_snapshot!(describe("6x2x2", "shuffle(4)", "flatten -> linear(classes)"), @"
        error[E0315]: shuffle in 4 groups of 6 channels
          ┌─ t.qspec:4:9
          │
        4 │   stem: shuffle(4)
          │         ^^^^^^^^^^ 4 does not divide 6
          │
          = help: the channels must be a multiple of `groups`
        ");
    }
}
