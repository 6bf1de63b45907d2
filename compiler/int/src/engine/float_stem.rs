//! The float stem: the first conv, of the float input, in f64, and the
//! rounding of its sums into the integer accumulator buffer.
//!
//! - [`gemm_f64`]: on x86-64 with AVX2 (detected at run time)
//!   `gemm_f64_avx2`, four output rows x eight positions per pass with
//!   separate `vmulpd` and `vaddpd` (no FMA), else the plain [`gemm`]: the
//!   same sums in the same order, so bit for bit the same results (and the
//!   C reference's).
//! - [`round_into`]: the sums truncated or rounded as the plan's mode says,
//!   compiled with AVX2 where present (so `f64::round` is inlined).

use super::gemm::gemm;
use super::Buf;

/// [`gemm`] of a float conv (f64), in an AVX2 kernel where the CPU has
/// one: the same sums in the same order (`0 + w0 x0 + w1 x1 + ...`, each
/// product rounded, then each addition: no fused multiply-add), so the
/// results are bit for bit [`gemm`]'s and the C reference's.
pub(super) fn gemm_f64(w: &[f64], m: usize, k: usize, col: &[f64], p: usize, out: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && w.len() >= m * k
            && col.len() >= k * p
            && out.len() >= m * p
        {
            // SAFETY: AVX2 is present and `w`, `col`, `out` hold `m * k`,
            // `k * p`, `m * p` values (checked just above): the kernel's
            // `# Safety`.
            unsafe { gemm_f64_avx2(w, m, k, col, p, out) };
            return;
        }
    }
    gemm(w, m, k, col, p, out)
}

/// Four output rows x eight positions per pass (eight accumulators of four
/// f64); the last positions (under eight) in scalar code, same order.
///
/// # Safety
///
/// - The CPU must support AVX2.
/// - `w.len() >= m * k`, `col.len() >= k * p` and `out.len() >= m * p`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemm_f64_avx2(w: &[f64], m: usize, k: usize, col: &[f64], p: usize, out: &mut [f64]) {
    use std::arch::x86_64::*;
    const R: usize = 4;
    let p8 = p / 8 * 8;
    for o in (0..m).step_by(R) {
        let rows = (m - o).min(R);
        // Rows past `m` repeat the last one (computed, not stored).
        // SAFETY: row `o + min(r, rows - 1) < m` starts inside `w`
        // (`m * k` values, the caller's length).
        let wr: [*const f64; R] =
            unsafe { std::array::from_fn(|r| w.as_ptr().add((o + r.min(rows - 1)) * k)) };
        for i in (0..p8).step_by(8) {
            // SAFETY: AVX2 is this function's own feature. The weights read
            // are `wr[r] + kk`, `kk < k`, inside their row of `w`; `x` is
            // `col + kk * p + i` at each load of 8 values, `i + 8 <= p`,
            // inside row `kk < k` of `col` (`k * p`); the stores write
            // `(o + r) * p + i..+8`, `o + r < m`, inside `out` (`m * p`).
            // (`x` steps with `wrapping_add`: past the last row it may point
            // beyond `col`, and is never read there.)
            unsafe {
                let mut acc = [[_mm256_setzero_pd(); 2]; R];
                let mut x = col.as_ptr().add(i);
                for kk in 0..k {
                    let (x0, x1) = (_mm256_loadu_pd(x), _mm256_loadu_pd(x.add(4)));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let wv = _mm256_set1_pd(*wr[r].add(kk));
                        a[0] = _mm256_add_pd(a[0], _mm256_mul_pd(x0, wv));
                        a[1] = _mm256_add_pd(a[1], _mm256_mul_pd(x1, wv));
                    }
                    x = x.wrapping_add(p);
                }
                for (r, a) in acc.iter().enumerate().take(rows) {
                    let dst = out.as_mut_ptr().add((o + r) * p + i);
                    _mm256_storeu_pd(dst, a[0]);
                    _mm256_storeu_pd(dst.add(4), a[1]);
                }
            }
        }
        for r in 0..rows {
            for i in p8..p {
                let mut s = 0.0;
                for kk in 0..k {
                    // SAFETY: `wr[r] + kk`, `kk < k`, is inside row
                    // `o + r < m` of `w` (`m * k` values).
                    s += unsafe { *wr[r].add(kk) } * col[kk * p + i];
                }
                out[(o + r) * p + i] = s;
            }
        }
    }
}

/// A float conv's sums, rounded by `round`, into an integer buffer (with
/// AVX2 where the CPU has it, so `f64::round` is inlined, not a libm call).
pub(super) fn round_into(out: &mut Buf, sums: &[f64], round: impl Fn(f64) -> i64) {
    #[cfg(target_arch = "x86_64")]
    {
        /// [`round_into_body`] compiled with AVX2.
        ///
        /// # Safety
        ///
        /// The CPU must support AVX2 (the body is safe Rust).
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(out: &mut Buf, sums: &[f64], round: impl Fn(f64) -> i64) {
            round_into_body(out, sums, round)
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { avx2(out, sums, round) };
            return;
        }
    }
    round_into_body(out, sums, round)
}

#[inline(always)]
fn round_into_body(out: &mut Buf, sums: &[f64], round: impl Fn(f64) -> i64) {
    match out {
        Buf::I64(v) => v.iter_mut().zip(sums).for_each(|(a, &x)| *a = round(x)),
        Buf::I32(v) => v
            .iter_mut()
            .zip(sums)
            .for_each(|(a, &x)| *a = round(x) as i32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_gemm_kernel_is_bit_for_bit_the_plain_one() {
        let (m, k, p) = (6, 27, 37);
        let w: Vec<f64> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 7.0)
            .collect();
        let col: Vec<f64> = (0..k * p)
            .map(|i| ((i * 53 % 97) as f64 - 48.0) / 3.1)
            .collect();
        let (mut a, mut b) = (vec![0.0; m * p], vec![1.0; m * p]);
        gemm(&w, m, k, &col, p, &mut a);
        gemm_f64(&w, m, k, &col, p, &mut b);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
    }
}
