//! A part of a channel split: `a, b = x -> split(...)` makes one
//! [`Slice`] per name, channels `start .. start + len` of the input.
//! Lowered by the statement (see [`crate::lower`]); shape-only, so it
//! carries its input's quantizer bits on.

use super::hooks::*;
use quote::quote;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Slice {
    pub start: i64,
    pub len: i64,
}

impl NodeOp for Slice {
    fn kind(&self) -> &'static str {
        "split"
    }

    fn name_stem(&self) -> &'static str {
        "part"
    }

    fn detail(&self, _io: &NodeIo) -> String {
        format!("(channels {}..{})", self.start, self.start + self.len)
    }

    fn passes_input_bits(&self) -> bool {
        true
    }

    fn emit(&self, _io: &NodeIo, cx: &EmitCx) -> Emitted {
        let (inp, start, len) = (cx.inputs, int(self.start), int(self.len));
        Emitted::forward(quote! { qatc_runtime::ops::channels(#(#inp)*, #start, #len) })
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::describe_slot;

    #[test]
    fn equal_and_given_parts() {
        let spec = "model t {\n  input 6x4x4\n  classes 10\n  block b() {\n    p, q = x -> split\n    r, s, t = x -> split(1, 2, 3)\n    return concat(p, q, r, s, t)\n  }\n  stage s: b x1\n  fc: flatten -> linear(classes)\n}\n";
        insta::assert_snapshot!(describe_slot(spec, "s.0"), @"
        s.0.part1 = split(channels 0..3) 6x4x4 -> 3x4x4 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::channels(&input, 0, 3);
          | }
        s.0.part2 = split(channels 3..6) 6x4x4 -> 3x4x4 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::channels(&input, 3, 3);
          | }
        s.0.part3 = split(channels 0..1) 6x4x4 -> 1x4x4 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::channels(&input, 0, 1);
          | }
        s.0.part4 = split(channels 1..3) 6x4x4 -> 2x4x4 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::channels(&input, 1, 2);
          | }
        s.0.part5 = split(channels 3..6) 6x4x4 -> 3x4x4 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::channels(&input, 3, 3);
          | }
        s.0.concat1 = concat 3x4x4 -> 12x4x4 (w None, a 32, out 32)
          params 0 macs 0 seed_ops 0 weight_bytes 0 None
          | fn forward() {
          |     let y = qatc_runtime::ops::concat(
          |         &[&s_0_part1, &s_0_part2, &s_0_part3, &s_0_part4, &s_0_part5],
          |     );
          | }
        ");
        let bad = spec.replace("split(1, 2, 3)", "split(1, 2, 4)");
        insta::assert_snapshot!(describe_slot(&bad, "s.0"), @"
        error[E0314]: the parts of the split sum to 7 channels, the input has 6
          ┌─ t.qspec:6:20
          │
        6 │     r, s, t = x -> split(1, 2, 4)
          │                    ^^^^^^^^^^^^^^ 7 channels in all
          ·
        9 │   stage s: b x1
          │   ------------- instantiated by this stage
          │
          = help: the sizes must add up to the input's channels
          = in block `b` instantiated as s.0
        ");
    }
}
