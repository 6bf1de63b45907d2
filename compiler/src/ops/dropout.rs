//! `dropout(p)`: zeroes each value with probability `p` in training
//! (survivors scaled by `1 / (1 - p)`), the identity in evaluation and in
//! integer inference; the IR op [`Dropout`].

use super::hooks::*;
use quote::quote;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dropout {
    pub p: f64,
}

pub const DROPOUT: Builtin<Dropout> = Builtin {
    name: "dropout",
    params: &[opt("p", ParamKind::Float)],
    lower: |a, env| {
        // p < 1: at p = 1 every value is dropped and the scale is infinite.
        let p = a.float(0, 0.5, "p", (0.0, 0.999))?;
        Ok(Lowered {
            op: Dropout { p },
            out: env.input.clone(),
            out_bit: None,
        })
    },
};

impl NodeOp for Dropout {
    fn kind(&self) -> &'static str {
        "dropout"
    }

    fn detail(&self, _io: &NodeIo) -> String {
        format!("(p {})", self.p)
    }

    fn passes_input_bits(&self) -> bool {
        true
    }

    fn emit(&self, _io: &NodeIo, cx: &EmitCx) -> Emitted {
        let inp = cx.inputs;
        let p = proc_macro2::Literal::f64_unsuffixed(self.p);
        Emitted::forward(quote! { qatc_runtime::ops::dropout(#(#inp)*, #p, train) })
    }
}
