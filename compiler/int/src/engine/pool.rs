//! Pooling layers on integers: average (the sum divided and rounded as the
//! plan says, or the sum alone), max (with padding) and adaptive average.
//!
//! Plain Rust loops on every CPU, no unsafe code; a pool whose one window
//! is the whole map (global pooling: the adaptive pool to 1 x 1, or an
//! average or max pool of the map's size) sums or maximises each channel's
//! contiguous i32 plane in one loop, compiled with AVX2 where the CPU has
//! it ([`plane_sums`]), with the same result as the window loop.

use super::{Buf, Workspace};
use crate::fixed::{div_round, shift_round};
use crate::plan::{IntPlan, Pool, PoolKind};

/// Runs a pooling layer on the workspace's buffers.
pub(super) fn run_pool(plan: &IntPlan, l: &Pool, ws: &mut Workspace) {
    let [c, ih, iw] = plan.tensors[l.input].shape;
    let [_, oh, ow] = plan.tensors[l.output].shape;
    let mut out = match std::mem::replace(&mut ws.bufs[l.output], Buf::I32(Vec::new())) {
        Buf::I32(v) => v,
        Buf::I64(v) => v.into_iter().map(|x| x as i32).collect(),
    };
    let src = &ws.bufs[l.input];
    // One window covering the whole unpadded map: one pass per plane.
    let whole = oh == 1
        && ow == 1
        && ih * iw > 0
        && match l.kind {
            PoolKind::Adaptive { size } => size == 1,
            PoolKind::Avg { kernel, .. } => kernel == ih && kernel == iw,
            PoolKind::Max {
                kernel, padding, ..
            } => kernel == ih && kernel == iw && padding == 0,
        };
    if let (true, Buf::I32(v)) = (whole, src) {
        let n = (ih * iw) as i64;
        let max = matches!(l.kind, PoolKind::Max { .. });
        let (sum_only, div) = (l.sum_only, l.div);
        // What the window loop below stores for a window's sum or maximum;
        // a power-of-two count (every seed model's 4 x 4 or 8 x 8 map)
        // divides by a shift, the same rounding without a division per
        // channel.
        let pow2 = (n as u64).is_power_of_two().then(|| n.trailing_zeros());
        let finish = |x: i64| -> i32 {
            if max || sum_only {
                x as i32
            } else if let Some(k) = pow2 {
                shift_round(x, k, div) as i32
            } else {
                div_round(x, n.max(1), div) as i32
            }
        };
        plane_pool(&v[..c * ih * iw], ih * iw, max, &mut out[..c], finish);
        ws.bufs[l.output] = Buf::I32(out);
        return;
    }
    for ch in 0..c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (y0, y1, x0, x1, pad) = match l.kind {
                    PoolKind::Avg { kernel, stride } => (
                        oy * stride,
                        oy * stride + kernel,
                        ox * stride,
                        ox * stride + kernel,
                        0,
                    ),
                    PoolKind::Max {
                        kernel,
                        stride,
                        padding,
                    } => (
                        oy * stride,
                        oy * stride + kernel,
                        ox * stride,
                        ox * stride + kernel,
                        padding,
                    ),
                    PoolKind::Adaptive { .. } => (
                        oy * ih / oh,
                        ((oy + 1) * ih).div_ceil(oh),
                        ox * iw / ow,
                        ((ox + 1) * iw).div_ceil(ow),
                        0,
                    ),
                };
                // The window's rows and columns inside the image (padding
                // counts for nothing, not even in the average's divisor).
                let (ya, yb) = (y0.max(pad) - pad, y1.min(ih + pad).saturating_sub(pad));
                let (xa, xb) = (x0.max(pad) - pad, x1.min(iw + pad).saturating_sub(pad));
                let n = (yb.saturating_sub(ya) * xb.saturating_sub(xa)) as i64;
                let (mut sum, mut best) = (0i64, i64::MIN);
                for y in ya..yb {
                    let row = (ch * ih + y) * iw;
                    match src {
                        Buf::I32(v) => pool_row(&v[row + xa..row + xb], &mut sum, &mut best),
                        Buf::I64(v) => pool_row(&v[row + xa..row + xb], &mut sum, &mut best),
                    }
                }
                let v = match l.kind {
                    PoolKind::Max { .. } => best,
                    _ if l.sum_only => sum,
                    _ => div_round(sum, n.max(1), l.div),
                };
                out[(ch * oh + oy) * ow + ox] = v as i32;
            }
        }
    }
    ws.bufs[l.output] = Buf::I32(out);
}

/// Global pooling of the planes of `len` values in `v`, one per `out`:
/// each plane's sum (in i64) or maximum, stored as `finish` makes it.
/// Compiled with AVX2 where the CPU has it (the same Rust code: the sums
/// vectorised in i64 lanes, the maxima in i32).
fn plane_pool(v: &[i32], len: usize, max: bool, out: &mut [i32], finish: impl Fn(i64) -> i32) {
    #[inline(always)]
    fn body(v: &[i32], len: usize, max: bool, out: &mut [i32], finish: impl Fn(i64) -> i32) {
        for (o, plane) in out.iter_mut().zip(v.chunks_exact(len.max(1))) {
            *o = finish(if max {
                plane.iter().copied().max().unwrap_or(i32::MIN) as i64
            } else {
                plane.iter().map(|&x| x as i64).sum()
            });
        }
    }
    /// [`body`] compiled with AVX2.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 (the body is safe Rust).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(v: &[i32], len: usize, max: bool, out: &mut [i32], finish: impl Fn(i64) -> i32) {
        body(v, len, max, out, finish)
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { avx2(v, len, max, out, finish) };
            return;
        }
    }
    body(v, len, max, out, finish)
}

/// Adds a row of a pooling window to its sum and maximum.
#[inline(always)]
fn pool_row<T: Copy + Into<i64>>(row: &[T], sum: &mut i64, best: &mut i64) {
    for &v in row {
        let v: i64 = v.into();
        *sum += v;
        *best = (*best).max(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::Div;

    /// Global pooling per plane: the i64 sum (past i32 too) or the
    /// maximum, finished as asked, on planes of lengths around the vector
    /// widths and at the ends of i32.
    #[test]
    fn plane_pool_sums_and_maxima_match_the_plain_loop() {
        for len in [1usize, 3, 4, 7, 8, 9, 16, 63, 64, 65] {
            let c = 5;
            let v: Vec<i32> = (0..c * len)
                .map(|i| match i % 11 {
                    0 => i32::MAX,
                    1 => i32::MIN,
                    _ => ((i * 7919) % 2001) as i32 - 1000,
                })
                .collect();
            for max in [false, true] {
                for div in [Div::Trunc, Div::Floor, Div::Nearest] {
                    let n = len as i64;
                    let finish = |x: i64| {
                        if max {
                            x as i32
                        } else {
                            div_round(x, n, div) as i32
                        }
                    };
                    let mut out = vec![0; c];
                    plane_pool(&v, len, max, &mut out, finish);
                    for (ch, &o) in out.iter().enumerate() {
                        let plane = &v[ch * len..(ch + 1) * len];
                        let (mut sum, mut best) = (0i64, i64::MIN);
                        pool_row(plane, &mut sum, &mut best);
                        let want = finish(if max { best } else { sum });
                        assert_eq!(o, want, "len {len} max {max} {div:?} channel {ch}");
                    }
                }
            }
        }
    }
}
