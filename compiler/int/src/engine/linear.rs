//! The output layer: the logits dequantized from the integer terms of the
//! plan's output (in f64 and rounded once, or, under `trunc`, in the seed's
//! float32 arithmetic), and the seed's float32 linear (fc) sum.
//!
//! Plain Rust, no CPU-specific kernel: [`seed_linear_f32`] uses
//! `f32::mul_add` (one rounding per multiply-add on every target), so its
//! roundings do not depend on the CPU; where the CPU has FMA it runs
//! compiled with it (the only unsafe code: that call, after the check).

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
///
/// `f32::mul_add` is one rounding on every target; where the CPU has FMA
/// (detected at run time) this runs compiled with it, so each is one
/// `vfmadd` instead of a call to libm's software `fmaf`: the same results.
pub fn seed_linear_f32(n: usize, x: impl Fn(usize) -> i64, w: impl Fn(usize) -> i32) -> f32 {
    /// [`seed_linear_body`] compiled with FMA.
    ///
    /// # Safety
    ///
    /// The CPU must support FMA (the body is safe Rust).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "fma")]
    unsafe fn fma(n: usize, x: impl Fn(usize) -> i64, w: impl Fn(usize) -> i32) -> f32 {
        seed_linear_body(n, x, w)
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has FMA (checked just above).
            return unsafe { fma(n, x, w) };
        }
    }
    seed_linear_body(n, x, w)
}

#[inline(always)]
fn seed_linear_body(n: usize, x: impl Fn(usize) -> i64, w: impl Fn(usize) -> i32) -> f32 {
    let mut s = [0f32; 4];
    for i in 0..n {
        s[i % 4] = (x(i) as f32).mul_add(w(i) as f32, s[i % 4]);
    }
    (s[0] + s[2]) + (s[1] + s[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FMA-compiled sum (where the CPU has FMA) is bit for bit the
    /// plain body's, on sums that round (partial sums past 2^24).
    #[test]
    fn seed_linear_is_the_same_with_and_without_fma() {
        for n in [1usize, 3, 4, 5, 64, 513] {
            let x = |i: usize| ((i * 7919) % 65_521) as i64 * 37 - 1_200_000;
            let w = |i: usize| ((i * 104_729) % 255) as i32 - 127;
            let a = seed_linear_f32(n, x, w);
            let b = seed_linear_body(n, x, w);
            assert_eq!(a.to_bits(), b.to_bits(), "n {n}");
        }
    }
}
