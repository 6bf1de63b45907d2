//! The output layer: the logits dequantized from the integer terms of the
//! plan's output (in f64 and rounded once, or, under `trunc`, in the seed's
//! float32 arithmetic), and the seed's float32 linear (fc) sum.
//!
//! [`seed_linear_f32`] uses `f32::mul_add` (one rounding per multiply-add
//! on every target), so its roundings do not depend on the CPU; where the
//! CPU has FMA it runs compiled with it. [`seed_linear_rows`], the output
//! layer's form (every class of one image), takes two classes per AVX2
//! register where the CPU has AVX2 and FMA: each lane one of the scalar
//! loop's partial sums, its `vfmadd`s in the same order, so the same
//! roundings (a test compares them on sums that round).

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
    let mut sums = vec![0f32; classes];
    let mut xs = Vec::new();
    for (ti, (src, k)) in o.terms.iter().enumerate() {
        let buf = &ws.bufs[*src];
        // The seed's fc multiplies its integers in float32 (`F.linear`):
        // under `trunc` its sums are recomputed in that arithmetic.
        let linear = plan.seed_linear(ti);
        if let Some((_, l, input)) = linear {
            let x = &ws.bufs[input];
            xs.clear();
            xs.extend((0..l.cin).map(|i| x.get(i) as f32));
            seed_linear_rows(&xs, &l.weights, &mut sums);
        }
        for c in 0..classes {
            let v = buf.get(c);
            if ti == 0 {
                acc[c] = v;
            }
            // The seed: `(q_x * 1.0) * re_scale`, then `+= bias`, in float32;
            // otherwise summed in f64 and rounded once.
            let v32 = if linear.is_some() { sums[c] } else { v as f32 };
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

/// [`seed_linear_f32`] of every row of `w` (`out.len()` rows of
/// `x.len()` weights) with the same `x` (already in float32, `x(i) as
/// f32`), into `out`: bit for bit the row-by-row results. With AVX2 and
/// FMA (detected at run time) two rows at a time, their eight partial
/// sums (`i mod 4` of each row) in the lanes of one register, each lane's
/// fused multiply-adds in the order of the scalar loop; an odd last row
/// and other CPUs take [`seed_linear_f32`].
pub fn seed_linear_rows(x: &[f32], w: &[i32], out: &mut [f32]) {
    let n = x.len();
    assert!(w.len() >= out.len() * n, "seed_linear_rows: short weights");
    let mut from = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            from = out.len() / 2 * 2;
            for (c, pair) in out[..from].chunks_exact_mut(2).enumerate() {
                let rows = &w[2 * c * n..(2 * c + 2) * n];
                // SAFETY: the CPU has AVX2 and FMA (checked just above);
                // `rows` holds two rows of `n` (a checked slice).
                let (a, b) = unsafe { linear_pair_fma(x, rows) };
                pair[0] = a;
                pair[1] = b;
            }
        }
    }
    for (c, o) in out.iter_mut().enumerate().skip(from) {
        let row = &w[c * n..(c + 1) * n];
        *o = seed_linear_f32(n, |i| x[i] as i64, |i| row[i]);
    }
}

/// Two rows (`rows`: `2 x.len()` weights) of [`seed_linear_rows`]: lanes
/// 0-3 the partial sums `i mod 4` of the first row, 4-7 of the second; per
/// step of four inputs one `vfmadd` (the same single rounding as
/// `f32::mul_add`), the last `n mod 4` inputs in the scalar loop's order
/// on the lanes they belong to, then `(s0 + s2) + (s1 + s3)` per row.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA; `rows.len() >= 2 * x.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn linear_pair_fma(x: &[f32], rows: &[i32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let n = x.len();
    let (w0, w1) = rows.split_at(n);
    let mut s = _mm256_setzero_ps();
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: inputs and weights `i..i + 4 <= n` of `x`, `w0`, `w1`.
        unsafe {
            let xv = _mm_loadu_ps(x.as_ptr().add(i));
            let wv = _mm256_loadu2_m128i(
                w1.as_ptr().add(i) as *const __m128i,
                w0.as_ptr().add(i) as *const __m128i,
            );
            s = _mm256_fmadd_ps(_mm256_set_m128(xv, xv), _mm256_cvtepi32_ps(wv), s);
        }
        i += 4;
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` is 8 f32 (an unaligned store).
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
    for j in i..n {
        lanes[j % 4] = x[j].mul_add(w0[j] as f32, lanes[j % 4]);
        lanes[4 + j % 4] = x[j].mul_add(w1[j] as f32, lanes[4 + j % 4]);
    }
    let sum = |l: &[f32]| (l[0] + l[2]) + (l[1] + l[3]);
    (sum(&lanes[..4]), sum(&lanes[4..]))
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

    /// All rows at once (two per register where the CPU has AVX2 and FMA,
    /// an odd last row alone) are bit for bit the scalar body's per row, on
    /// sums that round and on every length mod 4.
    #[test]
    fn seed_linear_rows_is_the_scalar_sum_of_each_row() {
        for (n, rows) in [
            (1usize, 1usize),
            (3, 2),
            (4, 3),
            (7, 10),
            (64, 10),
            (513, 5),
            (1280, 10),
        ] {
            let x: Vec<f32> = (0..n)
                .map(|i| (((i * 7919) % 65_521) as i64 * 37 - 1_200_000) as f32)
                .collect();
            let w: Vec<i32> = (0..n * rows)
                .map(|i| ((i * 104_729) % 255) as i32 - 127)
                .collect();
            let mut got = vec![0f32; rows];
            seed_linear_rows(&x, &w, &mut got);
            for (c, g) in got.iter().enumerate() {
                let row = &w[c * n..(c + 1) * n];
                let want = seed_linear_body(n, |i| x[i] as i64, |i| row[i]);
                assert_eq!(g.to_bits(), want.to_bits(), "n {n} row {c}");
            }
        }
    }
}
