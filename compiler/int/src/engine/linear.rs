//! The output layer: the logits dequantized from the integer terms of the
//! plan's output (in f64 and rounded once, or, under `trunc`, in the seed's
//! float32 arithmetic), and the seed's float32 linear (fc) sum.
//!
//! Plain Rust, no CPU-specific kernel and no unsafe code: [`seed_linear_f32`]
//! uses `f32::mul_add` (one rounding per multiply-add on every target), so
//! its roundings do not depend on the CPU.

use super::{ImageOutput, Workspace};
use crate::fixed::Rounding;
use crate::plan::IntPlan;

/// The logits of the image last run through `ws` (see [`super::run_image`]).
pub(super) fn run_output(plan: &IntPlan, ws: &Workspace) -> ImageOutput {
    let o = &plan.output;
    let classes = o.classes;
    let mut logits = vec![0f32; classes];
    let mut exact = vec![0f64; classes];
    let mut acc = vec![0i64; classes];
    let trunc = plan.options.rounding == Rounding::Trunc;
    for (ti, (src, k)) in o.terms.iter().enumerate() {
        let buf = &ws.bufs[*src];
        // The seed's fc multiplies its integers in float32 (`F.linear`):
        // under `trunc` its sums are recomputed in that arithmetic.
        let linear = plan.seed_linear(ti);
        for c in 0..classes {
            let v = buf.get(c);
            if ti == 0 {
                acc[c] = v;
            }
            // The seed: `(q_x * 1.0) * re_scale`, then `+= bias`, in float32;
            // otherwise summed in f64 and rounded once.
            let v32 = match linear {
                Some((_, l, input)) => {
                    let x = &ws.bufs[input];
                    let row = &l.weights[c * l.cin..(c + 1) * l.cin];
                    seed_linear_f32(l.cin, |i| x.get(i), |i| row[i])
                }
                None => v as f32,
            };
            logits[c] += v32 * o.terms_f32[ti][c];
            exact[c] += v as f64 * k[c];
        }
    }
    for c in 0..classes {
        if trunc {
            logits[c] += o.bias_f32[c];
        } else {
            logits[c] = (exact[c] + o.bias[c]) as f32;
        }
    }
    ImageOutput { logits, acc }
}

/// `sum_i x(i) * w(i)` as the seed's float32 fc computes it (PyTorch's CPU
/// `F.linear` on float copies of the integers): four partial sums over
/// `i mod 4`, each accumulated in order with fused multiply-adds, combined
/// as `(s0 + s2) + (s1 + s3)`. Where every partial sum stays below 2^24
/// this is the exact sum; beyond, it reproduces the seed's roundings (the
/// order was determined on the golden sets: it is the only one among the
/// sequential, blocked and 4- to 64-lane orders tried that gives every fc
/// sum of every set, including the 11 of seed3 whose rounding depends on
/// the order).
pub fn seed_linear_f32(n: usize, x: impl Fn(usize) -> i64, w: impl Fn(usize) -> i32) -> f32 {
    let mut s = [0f32; 4];
    for i in 0..n {
        s[i % 4] = (x(i) as f32).mul_add(w(i) as f32, s[i % 4]);
    }
    (s[0] + s[2]) + (s[1] + s[3])
}
