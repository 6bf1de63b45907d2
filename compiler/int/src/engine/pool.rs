//! Pooling layers on integers: average (the sum divided and rounded as the
//! plan says, or the sum alone), max (with padding) and adaptive average.
//!
//! Plain Rust loops on every CPU, no unsafe code.

use super::{Buf, Workspace};
use crate::fixed::div_round;
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

/// Adds a row of a pooling window to its sum and maximum.
#[inline(always)]
fn pool_row<T: Copy + Into<i64>>(row: &[T], sum: &mut i64, best: &mut i64) {
    for &v in row {
        let v: i64 = v.into();
        *sum += v;
        *best = (*best).max(v);
    }
}
