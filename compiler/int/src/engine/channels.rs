//! Layers that only move integers: a channel gather (a split's part, a
//! channel shuffle: [`Channels`]) and a channel concatenation
//! ([`ConcatLayer`]). Whole rows (`H * W` values) are copied; values are
//! unchanged (an i64 tensor copied into an i32 one holds values the plan
//! proved to fit).
//!
//! Plain Rust, no unsafe code.

use super::{Buf, Workspace};
use crate::plan::{Channels, ConcatLayer, IntPlan};

/// Copies `n` values of `src` from `at` into `out` at `to`.
fn copy_run(src: &Buf, at: usize, out: &mut Buf, to: usize, n: usize) {
    match (src, out) {
        (Buf::I32(s), Buf::I32(o)) => o[to..to + n].copy_from_slice(&s[at..at + n]),
        (Buf::I64(s), Buf::I64(o)) => o[to..to + n].copy_from_slice(&s[at..at + n]),
        (s, Buf::I32(o)) => {
            for i in 0..n {
                o[to + i] = s.get(at + i) as i32;
            }
        }
        (s, Buf::I64(o)) => {
            for i in 0..n {
                o[to + i] = s.get(at + i);
            }
        }
    }
}

/// Runs a channel gather: output channel `j` is input channel `from[j]`.
pub(super) fn run_channels(plan: &IntPlan, l: &Channels, ws: &mut Workspace) {
    let [_, h, w] = plan.tensors[l.output].shape;
    let p = h * w;
    let mut out = std::mem::replace(&mut ws.bufs[l.output], Buf::I32(Vec::new()));
    let src = &ws.bufs[l.input];
    for (j, &c) in l.from.iter().enumerate() {
        copy_run(src, c * p, &mut out, j * p, p);
    }
    ws.bufs[l.output] = out;
}

/// Runs a concat: the inputs' values one after the other.
pub(super) fn run_concat(plan: &IntPlan, l: &ConcatLayer, ws: &mut Workspace) {
    let mut out = std::mem::replace(&mut ws.bufs[l.output], Buf::I32(Vec::new()));
    let mut at = 0;
    for &t in &l.inputs {
        let n = plan.tensors[t].len();
        copy_run(&ws.bufs[t], 0, &mut out, at, n);
        at += n;
    }
    ws.bufs[l.output] = out;
}
