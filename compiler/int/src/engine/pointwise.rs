//! Element-wise layers: the gating product ([`MulLayer`], exact),
//! hardswish into a quantizer's grid ([`HardSwishLayer`]: the piecewise
//! polynomial with integer coefficients, one rounded shift, a clamp; i128
//! where the plan says the sums may pass 2^62) and the lookup tables of
//! sigmoid, swish and gelu ([`LutLayer`]: a binary search of the input
//! among the table's steps).
//!
//! Plain Rust, no unsafe code.

use super::{Buf, Workspace};
use crate::fixed::{shift_round, shift_round_wide};
use crate::plan::{HardSwishLayer, IntPlan, LutLayer, MulLayer};

/// Writes `f(i)` for every `i` into `out`, whatever its width (the plan
/// sized i32 tensors to hold every value).
fn fill(out: &mut Buf, f: impl Fn(usize) -> i64) {
    match out {
        Buf::I32(o) => o.iter_mut().enumerate().for_each(|(i, v)| *v = f(i) as i32),
        Buf::I64(o) => o.iter_mut().enumerate().for_each(|(i, v)| *v = f(i)),
    }
}

/// Runs a gating product: `out[c, i] = x[c, i] * gate[c, i]` (or
/// `gate[c, 0]` broadcast).
pub(super) fn run_mul(plan: &IntPlan, l: &MulLayer, ws: &mut Workspace) {
    let [_, h, w] = plan.tensors[l.output].shape;
    let p = (h * w).max(1);
    let mut out = std::mem::replace(&mut ws.bufs[l.output], Buf::I32(Vec::new()));
    let (x, g) = (&ws.bufs[l.input], &ws.bufs[l.gate]);
    if l.broadcast {
        fill(&mut out, |i| x.get(i) * g.get(i / p));
    } else {
        fill(&mut out, |i| x.get(i) * g.get(i));
    }
    ws.bufs[l.output] = out;
}

/// One value of a hardswish layer (see [`HardSwishLayer`]): exact sums,
/// one rounded shift, the clamp.
#[inline(always)]
pub fn hardswish_int(l: &HardSwishLayer, q: i64) -> i64 {
    let ([a2, a1, a0], [l2, l1, l0]) = (l.c, l.shl);
    let r = if q <= l.neg {
        0
    } else if l.wide {
        let (q, a2, a1, a0) = (q as i128, a2 as i128, a1 as i128, a0 as i128);
        let s = if q >= l.pos as i128 {
            (a0 * q) << l0
        } else {
            ((a2 * q * q) << l2) + ((a1 * q) << l1)
        };
        shift_round_wide(s, l.shift, l.div)
    } else {
        // Multiplications by powers of two: the plan bounds every sum
        // below 2^62 here.
        let s = if q >= l.pos {
            a0 * q * (1i64 << l0)
        } else {
            a2 * q * q * (1i64 << l2) + a1 * q * (1i64 << l1)
        };
        shift_round(s, l.shift, l.div)
    };
    r.clamp(l.lo, l.hi)
}

/// Runs a hardswish layer.
pub(super) fn run_hardswish(l: &HardSwishLayer, ws: &mut Workspace) {
    let mut out = std::mem::replace(&mut ws.bufs[l.output], Buf::I32(Vec::new()));
    let x = &ws.bufs[l.input];
    fill(&mut out, |i| hardswish_int(l, x.get(i)));
    ws.bufs[l.output] = out;
}

/// One value of a lookup-table layer (see [`LutLayer`]): the value of the
/// step `q` falls in.
#[inline(always)]
pub fn lut_int(l: &LutLayer, q: i64) -> i64 {
    l.values[l.breaks.partition_point(|&b| b <= q)]
}

/// Runs a lookup-table layer.
pub(super) fn run_lut(l: &LutLayer, ws: &mut Workspace) {
    let mut out = std::mem::replace(&mut ws.bufs[l.output], Buf::I32(Vec::new()));
    let x = &ws.bufs[l.input];
    fill(&mut out, |i| lut_int(l, x.get(i)));
    ws.bufs[l.output] = out;
}
