//! Requantization fused into the conv before it: a `Layer::Conv` of
//! integers followed at once by a one-term `Layer::Requant` of its
//! accumulator computes the requantized activations itself, in the AVX2
//! kernels' epilogue (eight accumulators of one output channel in a
//! register, before they are stored), instead of storing the accumulator
//! tensor for a separate pass of [`super::requant`] to read back.
//!
//! Exactness in i32 lanes. Per output channel the requantization `g(x) =
//! clamp(div(x * m + b, 2^shift), lo, hi)` is monotone in the accumulator
//! `x` (non-decreasing for `m > 0`, non-increasing for `m < 0`), so below
//! some `xlo` and above some `xhi` it is constant: clamping `x` to `[xlo,
//! xhi]` first changes no result ([`clamp_range`] finds the tightest such
//! range once per plan, by bisection on the exact `g`). On the clamped `x`
//! the sum `x * m + b` lies between its values at `xlo` and `xhi`, so where
//! those (plus the rounding offset, `2^shift`) stay below 2^31 every sum is
//! computed exactly in wrapping i32 arithmetic (`vpmulld`, `vpaddd`, then
//! the rounding of `fixed::shift_round` on i32 and the clamp). For 8-bit
//! outputs with shifts up to 22 that always holds, whatever the
//! accumulator's range. Where it does not for some channel (e.g. 16-bit
//! outputs at shift 16: clamped sums over a range of 2^32) but every
//! clamped sum stays below `2^(31 + shift)`, so that the quotients fit i32
//! ([`wide_row_consts`]), the layer is fused in the *i64 form*
//! (`FusedRequant::wide`): the clamped accumulators' sums in i64 lanes
//! (`vpmuldq` on even and odd lanes, `requant.rs`'s `WideRound`), the
//! quotient from their low halves (ToyNet's 16-bit head, MobileNetV2's
//! pre-pooling head). Otherwise (one term) the layer is not fused
//! ([`plan_fusion`] returns `None`) and runs as before. The lanes kernel
//! has no i64 form and declines it.
//!
//! The accumulator statistics (`Workspace::stats`: values, largest |x|) are
//! kept exactly: the kernels take the largest |x| of the accumulators in
//! registers before requantizing them.
//!
//! Which convs: those whose kernel is `madd_kernel` (1x1 and im2col convs,
//! `gemm.rs`), `direct_kernel` (k x k, `direct.rs`) or, for maps up to 8 x
//! 8 and one term, the depthwise lanes kernel (`depthwise_lanes.rs`)
//! requantize in the epilogue; any other (larger depthwise maps, operands
//! wider than i16, no AVX2) computes its accumulators as before and then
//! runs [`requant_clamped`], one
//! pass per channel that takes the statistics and requantizes while the row
//! is in L1 (the same clamped i32 arithmetic, compiled with AVX2).
//!
//! Only where the workspace asks for it (`Workspace::fuse_requant`) and no
//! accumulator width is simulated: a fused conv's accumulator tensor is not
//! written, so `Workspace::tensor` has none for it.
//!
//! Two-term requantizations (residual adds: an accumulator and an
//! activation `y`) go by the same argument in the sum's domain: the output
//! saturates below and above fixed sums, so given a bound on |y| the
//! accumulator is clamped to where it still matters ([`row2`]), and the
//! clamped sums fit i32 for the usual 8-bit outputs.
//! - Fused into the conv of the accumulator (its epilogue loads `y` beside
//!   the sums, [`Regs::block2`]) where `y` is written before the conv by a
//!   requantization, whose clamp `[lo, hi]` bounds |y| once per plan
//!   ([`plan_fusion`], [`SecondTerm`]): a residual block's identity
//!   shortcut, or its shortcut conv, which the plan schedules before the
//!   main path's last conv (`plan/schedule.rs`).
//! - Otherwise (`y` not written by a requantization before the conv, or
//!   sums past i32 with the static bound: 6 of MobileNetV2's 14 adds) run
//!   by [`run_requant2`] in i32 lanes, each row's bound its own largest
//!   |y| (`requant.rs` takes i64 lanes as soon as the row's values could
//!   pass 2^31).
//!
//! Measured on this Zen 3 (docs/performance.md, issue 18): the epilogue
//! costs about what the separate pass it replaces cost (that pass streams
//! from L1/L2, so the saved memory traffic is small); the gain is the i32
//! form where the separate pass took i64 lanes (MobileNetV2's depthwise
//! requantizations, ToyNet's residual adds).

use super::conv::{abs_peak, fits16};
#[cfg(target_arch = "x86_64")]
use super::requant::WideRound;
use super::requant::{requant_row_body, RowScale};
use super::{Buf, Workspace};
use crate::fixed::{shift_round, Div};
use crate::plan::{ConvInput, IntPlan, Layer, TensorId};

/// One output channel's constants: clamp the accumulator to `[xlo, xhi]`,
/// then `x * m + b`, all exact in i32 (see the module doc); `xlo <= xhi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RowConsts {
    pub xlo: i32,
    pub xhi: i32,
    pub m: i32,
    pub b: i32,
}

/// A conv's requantization planned for its epilogue: the `Layer::Requant`
/// at index `requant` (writing `output`) as per-channel [`RowConsts`] and
/// the shared shift, rounding and clamp.
#[derive(Clone, Debug)]
pub(super) struct FusedRequant {
    pub requant: usize,
    pub output: TensorId,
    pub rows: Vec<RowConsts>,
    pub shift: u32,
    pub div: Div,
    pub lo: i32,
    pub hi: i32,
    /// Whether some channel's rounded, clamped-input sums can leave `[lo,
    /// hi]` (see [`needs_clamp`]); if none can, the epilogue skips the
    /// final clamp.
    pub clamp: bool,
    /// A two-term requantization's other term (the `rows` are then
    /// [`row2`]'s for its bound).
    pub second: Option<SecondTerm>,
    /// Write the output as the 16-bit operand of the 1x1 convs that read
    /// it (`gemm::Dst::Packed`) instead of i32 rows ([`packs_output`]).
    pub packed: bool,
    /// Write the output as bytes `v + z` (`gemm::Dst::Bytes`), `Some(z)`,
    /// where the AMX kernel runs the conv and every reader takes bytes
    /// ([`bytes_output`]); before `packed` where both are set.
    pub bytes: Option<i32>,
    /// The clamped sums pass i32 but every quotient fits it
    /// ([`wide_row_consts`]): the epilogue forms the sums in i64 lanes.
    pub wide: bool,
}

/// The second term of a fused two-term requantization: `y * m2[c]` added
/// to channel `c`'s sum, `y` an activation tensor written before the conv.
#[derive(Clone, Debug)]
pub(super) struct SecondTerm {
    pub src: TensorId,
    pub m2: Vec<i32>,
}

impl FusedRequant {
    /// The requantization of all channels, for a kernel's epilogue; `y`:
    /// the second term's tensor (`p` values per channel), where there is one.
    pub(super) fn epilogue<'a>(&'a self, y: Option<&'a [i32]>, p: usize) -> Epilogue<'a> {
        Epilogue {
            rows: &self.rows,
            shift: self.shift,
            div: self.div,
            lo: self.lo,
            hi: self.hi,
            clamp: self.clamp,
            second: self
                .second
                .as_ref()
                .zip(y)
                .map(|(s, y)| Second { y, m2: &s.m2, p }),
            wide: self.wide,
            peak: 0,
        }
    }
}

impl FusedRequant {
    /// Whether the workspace holds what the fused form reads besides the
    /// conv's input: the second term's tensor, as i32 and whole (a
    /// requantization's output always is).
    pub(super) fn ready(&self, plan: &IntPlan, bufs: &[Buf]) -> bool {
        self.second.as_ref().is_none_or(|s| {
            let len = plan.tensors.get(s.src).map_or(usize::MAX, |t| t.len());
            matches!(bufs.get(s.src), Some(Buf::I32(y)) if y.len() >= len)
        })
    }
}

/// A second term as an epilogue reads it: row `r`, position `i` adds
/// `y[r * p + i] * m2[r]`.
#[derive(Clone, Copy)]
pub(super) struct Second<'a> {
    pub y: &'a [i32],
    pub m2: &'a [i32],
    pub p: usize,
}

impl Second<'_> {
    /// Whether it holds `rows` rows of `p` positions.
    pub(super) fn holds(&self, rows: usize, p: usize) -> bool {
        self.p == p && self.y.len() >= rows * p && self.m2.len() >= rows
    }
}

/// What a kernel's epilogue needs: the constants of its output rows (row
/// `r` of the kernel's output is `rows[r]`), and where it leaves the
/// largest |accumulator| it saw (`peak`, kept as the larger of the old and
/// the new).
pub(super) struct Epilogue<'a> {
    pub rows: &'a [RowConsts],
    pub shift: u32,
    pub div: Div,
    pub lo: i32,
    pub hi: i32,
    /// Clamp the rounded values to `[lo, hi]` (false only where
    /// [`needs_clamp`] is false for every row).
    pub clamp: bool,
    /// A two-term requantization's second term.
    pub second: Option<Second<'a>>,
    /// Sums in i64 lanes, quotients in i32 ([`FusedRequant::wide`]; one
    /// term only).
    pub wide: bool,
    pub peak: u32,
}

impl<'a> Epilogue<'a> {
    /// The same requantization for rows `from..` (a group's rows), its
    /// peak starting at 0.
    pub(super) fn rows_from(&self, from: usize) -> Epilogue<'a> {
        Epilogue {
            rows: self.rows.get(from..).unwrap_or(&[]),
            second: self.second.map(|s| Second {
                y: s.y.get(from * s.p..).unwrap_or(&[]),
                m2: s.m2.get(from..).unwrap_or(&[]),
                p: s.p,
            }),
            peak: 0,
            ..*self
        }
    }

    /// Whether it has the constants (and second term) of `rows` rows of
    /// `p` positions.
    pub(super) fn holds(&self, rows: usize, p: usize) -> bool {
        self.rows.len() >= rows && self.second.is_none_or(|s| s.holds(rows, p))
    }
}

/// The exact requantization of one accumulator, as `requant.rs` computes
/// it (i64 sum, `shift_round`, clamp).
fn exact(x: i64, m: i64, b: i64, shift: u32, div: Div, lo: i64, hi: i64) -> i64 {
    shift_round(x * m + b, shift, div).clamp(lo, hi)
}

/// The tightest `[xlo, xhi]` (inside i32) outside which `g(x) = exact(x,
/// m, b, ...)` is constant (so equal to its value at `xlo` or `xhi`).
/// Needs `lo <= hi` and `m`, `b` in i32 (then `x * m + b` fits i64).
pub(super) fn clamp_range(m: i32, b: i32, shift: u32, div: Div, lo: i32, hi: i32) -> (i32, i32) {
    let (m64, b64, lo64, hi64) = (m as i64, b as i64, lo as i64, hi as i64);
    let g = |x: i64| exact(x, m64, b64, shift, div, lo64, hi64);
    if m == 0 || lo == hi {
        return (0, 0);
    }
    let (min, max) = (i32::MIN as i64, i32::MAX as i64);
    // Smallest x in [min, max] with `pred` (false then true), if any.
    let first = |pred: &dyn Fn(i64) -> bool| -> Option<i64> {
        if !pred(max) {
            return None;
        }
        let (mut a, mut z) = (min, max);
        while a < z {
            let mid = a + (z - a) / 2;
            if pred(mid) {
                z = mid;
            } else {
                a = mid + 1;
            }
        }
        Some(a)
    };
    // Largest x in [min, max] with `pred` (true then false), if any.
    let last = |pred: &dyn Fn(i64) -> bool| -> Option<i64> {
        if !pred(min) {
            return None;
        }
        let (mut a, mut z) = (min, max);
        while a < z {
            let mid = a + (z - a + 1) / 2;
            if pred(mid) {
                a = mid;
            } else {
                z = mid - 1;
            }
        }
        Some(a)
    };
    let (xlo, xhi) = if m > 0 {
        (
            last(&|x| g(x) <= lo64).unwrap_or(min),
            first(&|x| g(x) >= hi64).unwrap_or(max),
        )
    } else {
        (
            last(&|x| g(x) >= hi64).unwrap_or(min),
            first(&|x| g(x) <= lo64).unwrap_or(max),
        )
    };
    (xlo as i32, xhi as i32)
}

/// One channel's [`RowConsts`] where the clamped sums fit i32 (see the
/// module doc), else `None`.
pub(super) fn row_consts(
    m: i64,
    b: i64,
    shift: u32,
    div: Div,
    lo: i32,
    hi: i32,
) -> Option<RowConsts> {
    (shift < 31)
        .then(|| clamped_consts(m, b, (shift, div, lo, hi), 31))
        .flatten()
}

/// One channel's [`RowConsts`] where the clamped sums pass i32 (else
/// [`row_consts`] takes it) but stay below `2^(31 + shift)` with the
/// rounding offset, so that every quotient fits i32 (a 16-bit output at
/// shift 16: sums over a range of 2^32), for the epilogue's i64 form;
/// else `None`.
pub(super) fn wide_row_consts(
    m: i64,
    b: i64,
    shift: u32,
    div: Div,
    lo: i32,
    hi: i32,
) -> Option<RowConsts> {
    (shift <= 31)
        .then(|| clamped_consts(m, b, (shift, div, lo, hi), 31 + shift))
        .flatten()
}

/// The clamp range of a channel (`m`, `b` in i32, `lo <= hi`) where its
/// clamped sums plus the rounding offset stay below `2^bits`, else `None`.
fn clamped_consts(
    m: i64,
    b: i64,
    (shift, div, lo, hi): (u32, Div, i32, i32),
    bits: u32,
) -> Option<RowConsts> {
    let (m, b) = (i32::try_from(m).ok()?, i32::try_from(b).ok()?);
    if lo > hi {
        return None;
    }
    let (xlo, xhi) = clamp_range(m, b, shift, div, lo, hi);
    let sum = |x: i32| (x as i64 * m as i64 + b as i64).abs();
    let bound = sum(xlo).max(sum(xhi)) + (1i64 << shift);
    (bound < 1i64 << bits).then_some(RowConsts { xlo, xhi, m, b })
}

/// Whether the rounded sums of the clamped accumulators, `div(x * m + b,
/// 2^shift)` for `x` in `[xlo, xhi]`, can leave `[lo, hi]`: they are
/// monotone in `x`, so they stay inside exactly when both ends do (with a
/// real multiplier `m / 2^shift` of at most 1 the ends are `lo` and `hi`
/// themselves, the usual case).
pub(super) fn needs_clamp(rc: RowConsts, shift: u32, div: Div, lo: i32, hi: i32) -> bool {
    let q = |x: i32| shift_round(x as i64 * rc.m as i64 + rc.b as i64, shift, div);
    let inside = |v: i64| (lo as i64..=hi as i64).contains(&v);
    !(inside(q(rc.xlo)) && inside(q(rc.xhi)))
}

/// The requantization conv layer `li` of `plan` can do in its epilogue:
/// the layer is a conv of integers into a 32-bit accumulator tensor, the
/// next layer a not wide `Layer::Requant` of that tensor, which nothing
/// else reads (no other layer, not the output layer), and every channel's
/// sums fit i32 once clamped ([`row_consts`]). The requantization has one
/// term, or two where the other is an activation that a requantization
/// before the conv writes (and nothing else does), whose clamp bounds it
/// ([`second_term`]). Else `None`.
pub(super) fn plan_fusion(plan: &IntPlan, li: usize) -> Option<FusedRequant> {
    let Some(Layer::Conv(l)) = plan.layers.get(li) else {
        return None;
    };
    let Some(Layer::Requant(r)) = plan.layers.get(li + 1) else {
        return None;
    };
    let ConvInput::Tensor(input) = l.input else {
        return None;
    };
    let acc = l.output;
    let len = l.cout * l.out_hw[0] * l.out_hw[1];
    let fits = |t: TensorId| {
        plan.tensors
            .get(t)
            .is_some_and(|t| !t.wide && t.len() == len)
    };
    let (term, other) = match r.terms.as_slice() {
        [t] => (t, None),
        [a, b] if a.src == acc && b.src != acc => (a, Some(b)),
        [a, b] if b.src == acc && a.src != acc => (b, Some(a)),
        _ => return None,
    };
    if r.wide
        || term.src != acc
        || !fits(acc)
        || !fits(r.output)
        || r.output == input
        || r.output == acc
        || input == acc
        || r.bias.len() != l.cout
        || term.mult.len() != l.cout
    {
        return None;
    }
    let read_elsewhere = plan
        .layers
        .iter()
        .enumerate()
        .any(|(i, layer)| i != li + 1 && layer.inputs().contains(&acc))
        || plan.output.terms.iter().any(|(t, _)| *t == acc);
    if read_elsewhere {
        return None;
    }
    let lo = i32::try_from(r.lo).ok()?;
    let hi = i32::try_from(r.hi).ok()?;
    if let Some(y) = other {
        if !fits(y.src) || y.src == r.output || y.mult.len() != l.cout {
            return None;
        }
        let (rows, second) = second_term(plan, li, r, term, y)?;
        return Some(FusedRequant {
            requant: li + 1,
            output: r.output,
            rows,
            shift: r.shift,
            div: r.div,
            lo,
            hi,
            clamp: true,
            second: Some(second),
            packed: packs_output(plan, l, r),
            bytes: None,
            wide: false,
        });
    }
    let consts = |f: fn(i64, i64, u32, Div, i32, i32) -> Option<RowConsts>| {
        (0..l.cout)
            .map(|c| f(term.mult[c], r.bias[c], r.shift, r.div, lo, hi))
            .collect::<Option<Vec<_>>>()
    };
    // Every channel in i32 lanes, else every one in the i64 form.
    let (rows, wide) = match consts(row_consts) {
        Some(rows) => (rows, false),
        None => (consts(wide_row_consts)?, true),
    };
    let clamp = wide
        || rows
            .iter()
            .any(|&rc| needs_clamp(rc, r.shift, r.div, lo, hi));
    Some(FusedRequant {
        requant: li + 1,
        output: r.output,
        rows,
        shift: r.shift,
        div: r.div,
        lo,
        hi,
        clamp,
        second: None,
        // The lanes kernel (the depthwise convs that write the operand)
        // has no i64 form.
        packed: !wide && packs_output(plan, l, r),
        bytes: (!wide)
            .then(|| bytes_output(plan, l, r, (lo, hi)))
            .flatten(),
        wide,
    })
}

/// Where conv `l`, fused with the one-term requantization `r` (clamp
/// `[lo, hi]`, in i32 lanes), writes `r`'s output as bytes `v + z`
/// (`gemm::Dst::Bytes`), `Some(z)`: `l` is an ungrouped 1x1 conv on 8-bit
/// operands (`direct::byte_offset`) or a depthwise conv that the byte
/// table runs (`depthwise_bytes::DwDst::Bytes`), on a CPU whose 8-bit
/// form (AVX-512 VNNI, or AMX tiles) runs the 1x1 readers
/// (`isa::avx512_vnni`), and every reader of the output (at
/// least one; not the output layer) is a conv of it whose own 8-bit
/// operand has the offset `z` (`byte_offset`, which `[lo, hi]` fits): an
/// ungrouped 1x1 conv, or a depthwise one that an 8-bit depthwise kernel
/// runs (`DwBytes::runs`: the byte table, or the quad layout on maps over
/// the lanes kernel's). The readers lay out their operands from a quarter
/// of the bytes i32 rows take; a reader that declines them at run time
/// restores the rows first (`conv.rs`).
fn bytes_output(
    plan: &IntPlan,
    l: &crate::plan::ConvLayer,
    r: &crate::plan::Requant,
    (lo, hi): (i32, i32),
) -> Option<i32> {
    use super::direct::byte_offset;
    let pointwise = |c: &crate::plan::ConvLayer| {
        c.kernel == 1 && c.stride == 1 && c.padding == 0 && c.groups == 1
    };
    // The producer: a 1x1 conv of the 8-bit form (AVX-512 VNNI or AMX), or
    // a depthwise conv the byte table runs (`DwBytes::table`; its 1x1
    // readers' 8-bit operands are that form's).
    let table = super::depthwise_bytes::DwBytes::in_table(l);
    let producer = (pointwise(l) && byte_offset(l).is_some()) || table;
    if !super::isa::avx512_vnni() || !producer || r.terms.len() != 1 {
        return None;
    }
    let t = r.output;
    let mut zs = plan
        .layers
        .iter()
        .filter(|x| x.inputs().contains(&t))
        .map(|x| match x {
            Layer::Conv(c)
                if c.input == ConvInput::Tensor(t)
                    && c.in_hw == l.out_hw
                    && c.cin == l.cout
                    && pointwise(c) =>
            {
                byte_offset(c)
            }
            Layer::Conv(c) if c.input == ConvInput::Tensor(t) => {
                super::depthwise_bytes::DwBytes::runs(c)
            }
            _ => None,
        });
    let z = zs.next()??;
    let fits = (-z..=255 - z).contains(&lo) && (-z..=255 - z).contains(&hi);
    (fits && zs.all(|x| x == Some(z)) && !plan.output.terms.iter().any(|(s, _)| *s == t))
        .then_some(z)
}

/// Whether conv `l`, fused with requantization `r`, writes `r`'s output
/// only as the operand of the convs that read it: `l` is an ungrouped 1x1
/// conv with 16-bit operands (so `gemm_madd` runs it, with its epilogue)
/// or a depthwise one that the lanes kernel runs, on a CPU with AVX2; `r`'s values fit i16; and every reader (at least
/// one; not the output layer) is such a conv of the same map. The readers
/// then skip packing their operand (`pack_pairs`), and the tensor has no
/// i32 rows (`Workspace::tensor` has none for it).
fn packs_output(plan: &IntPlan, l: &crate::plan::ConvLayer, r: &crate::plan::Requant) -> bool {
    let pointwise = |c: &crate::plan::ConvLayer| {
        c.kernel == 1 && c.stride == 1 && c.padding == 0 && c.groups == 1 && fits16(c)
    };
    let avx2 = {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    };
    let t = r.output;
    let mut readers = plan.layers.iter().filter(|x| x.inputs().contains(&t));
    let all_pointwise = readers.clone().all(|x| {
        matches!(x, Layer::Conv(c) if pointwise(c)
            && c.input == ConvInput::Tensor(t)
            && c.cin == l.cout
            && c.in_hw == l.out_hw)
    });
    // A depthwise conv that the lanes kernel runs (`depthwise16`) packs its
    // output as it requantizes.
    let depthwise = l.groups == l.cin
        && l.groups == l.cout
        && fits16(l)
        && super::depthwise_lanes::takes_lanes(l.out_hw[0], l.out_hw[1], r.terms.len() > 1)
        && super::depthwise_bytes::DwBytes::runs(l).is_none();
    avx2 && (pointwise(l) || depthwise)
        && (i16::MIN as i64..=i16::MAX as i64).contains(&r.lo)
        && (i16::MIN as i64..=i16::MAX as i64).contains(&r.hi)
        && readers.next().is_some()
        && all_pointwise
        && !plan.output.terms.iter().any(|(s, _)| *s == t)
}

/// The constants of a two-term requantization `r` fused into conv `li`:
/// `term` the conv's accumulator, `y` the other term. `y`'s tensor must be
/// written by one layer only, a requantization before the conv, whose
/// clamp `[lo, hi]` then bounds every value of `y` ([`Layer::Requant`]
/// always clamps, fused or not); with that bound each channel's [`row2`]
/// must fit i32. The rows' [`RowConsts`] are `row2`'s `xlo, xhi, m, b`.
fn second_term(
    plan: &IntPlan,
    li: usize,
    r: &crate::plan::Requant,
    term: &crate::plan::RequantTerm,
    y: &crate::plan::RequantTerm,
) -> Option<(Vec<RowConsts>, SecondTerm)> {
    let mut writers = plan
        .layers
        .iter()
        .enumerate()
        .filter(|(_, layer)| layer.output() == y.src);
    let (Some((at, Layer::Requant(producer))), None) = (writers.next(), writers.next()) else {
        return None;
    };
    if at >= li || r.shift >= 31 {
        return None;
    }
    let top = producer.lo.unsigned_abs().max(producer.hi.unsigned_abs());
    let (lo, hi) = (i32::try_from(r.lo).ok()?, i32::try_from(r.hi).ok()?);
    let sat = saturation(r.shift, r.div, lo, hi)?;
    let mut rows = Vec::with_capacity(r.bias.len());
    let mut m2s = Vec::with_capacity(r.bias.len());
    for c in 0..r.bias.len() {
        let m = i32::try_from(term.mult[c]).ok()?;
        let m2 = i32::try_from(y.mult[c]).ok()?;
        let b = i32::try_from(r.bias[c]).ok()?;
        let bound = i64::try_from(top).ok()?.checked_mul((m2 as i64).abs())? + (b as i64).abs();
        let rc = row2(m, m2, b, bound, sat, r.shift)?;
        rows.push(RowConsts {
            xlo: rc.xlo,
            xhi: rc.xhi,
            m,
            b,
        });
        m2s.push(m2);
    }
    Some((
        rows,
        SecondTerm {
            src: y.src,
            m2: m2s,
        },
    ))
}

/// Requantizes `src` (one channel's accumulators) into `out` with the
/// channel's constants: clamp, then the exact sum in i32 (see the module
/// doc), rounded as `div` says, clamped to `[lo, hi]`. One loop per
/// rounding, so none branches inside.
#[inline(always)]
fn row_body(src: &[i32], rc: RowConsts, e: &Epilogue, out: &mut [i32]) {
    let RowConsts { xlo, xhi, m, b } = rc;
    let (shift, lo, hi) = (e.shift, e.lo, e.hi);
    if e.wide {
        // The exact i64 sum of the clamped accumulator (quotients in i32).
        for (o, &x) in out.iter_mut().zip(src) {
            let s = x.clamp(xlo.min(xhi), xhi) as i64 * m as i64 + b as i64;
            *o = shift_round(s, shift, e.div).clamp(lo as i64, hi as i64) as i32;
        }
        return;
    }
    let mask = ((1i64 << shift) - 1) as i32;
    let half = if shift == 0 { 0 } else { 1i32 << (shift - 1) };
    let sum = |x: i32| x.clamp(xlo.min(xhi), xhi).wrapping_mul(m).wrapping_add(b);
    match e.div {
        Div::Floor => {
            for (o, &x) in out.iter_mut().zip(src) {
                *o = (sum(x) >> shift).clamp(lo, hi);
            }
        }
        Div::Trunc => {
            for (o, &x) in out.iter_mut().zip(src) {
                let s = sum(x);
                *o = ((s + ((s >> 31) & mask)) >> shift).clamp(lo, hi);
            }
        }
        Div::Nearest => {
            for (o, &x) in out.iter_mut().zip(src) {
                let s = sum(x);
                let neg = s >> 31;
                let q = (((s ^ neg) - neg) + half) >> shift;
                *o = ((q ^ neg) - neg).clamp(lo, hi);
            }
        }
    }
}

/// [`requant_clamped`]'s body: per channel the largest |x| of its row,
/// then the row requantized.
#[inline(always)]
fn requant_clamped_body(acc: &[i32], p: usize, e: &mut Epilogue, out: &mut [i32]) {
    for c in 0..e.rows.len() {
        let (Some(src), Some(dst)) = (acc.get(c * p..(c + 1) * p), out.get_mut(c * p..(c + 1) * p))
        else {
            break;
        };
        requant_channel(src, c, e, dst);
    }
}

/// Channel `c`'s sums `src` (its `p` positions) requantized into `dst`
/// (`p` values), their largest |x| into `e.peak`: one row of
/// [`requant_clamped`], inlined into its caller (so vectorised with its
/// features; the depthwise layers call it per channel while the channel's
/// sums are in L1). A second term must hold row `c` (`Epilogue::holds`):
/// else this panics.
#[inline(always)]
pub(super) fn requant_channel(src: &[i32], c: usize, e: &mut Epilogue, dst: &mut [i32]) {
    let p = src.len();
    let rc = e.rows[c];
    e.peak = e.peak.max(abs_peak(src));
    match e.second {
        None => row_body(src, rc, e, dst),
        Some(s) => {
            let RowConsts { xlo, xhi, m, b } = rc;
            let y = &s.y[c * p..(c + 1) * p];
            let m2 = s.m2[c];
            row2_body(src, y, Row2 { xlo, xhi, m, m2, b }, e, dst);
        }
    }
}

/// The post-pass of a fused conv whose kernel has no epilogue: `acc` holds
/// its accumulators (`[channels][p]`), `out` gets the requantized values,
/// `e.peak` the largest |x| (at least its old value). AVX2-compiled where
/// the CPU has it. A second term must hold every row (`Epilogue::holds`):
/// else this panics.
pub(super) fn requant_clamped(acc: &[i32], p: usize, e: &mut Epilogue, out: &mut [i32]) {
    /// [`requant_clamped_body`] compiled with AVX2.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 (the body is safe Rust).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(acc: &[i32], p: usize, e: &mut Epilogue, out: &mut [i32]) {
        requant_clamped_body(acc, p, e, out)
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { avx2(acc, p, e, out) };
            return;
        }
    }
    requant_clamped_body(acc, p, e, out)
}

/// `h(s) = clamp(div(s, 2^shift), lo, hi)` is constant below and above
/// some sums: the largest `s` with `h(s) <= lo` and the smallest with `h(s)
/// >= hi`, searched inside i32 (`None` where either lies outside).
fn saturation(shift: u32, div: Div, lo: i32, hi: i32) -> Option<(i64, i64)> {
    let h = |s: i64| shift_round(s, shift, div).clamp(lo as i64, hi as i64);
    let (min, max) = (i32::MIN as i64, i32::MAX as i64);
    if h(min) > lo as i64 || h(max) < hi as i64 {
        return None;
    }
    let (mut a, mut z) = (min, max);
    while a < z {
        let mid = a + (z - a + 1) / 2;
        if h(mid) <= lo as i64 {
            a = mid;
        } else {
            z = mid - 1;
        }
    }
    let s_lo = a;
    let (mut a, mut z) = (min, max);
    while a < z {
        let mid = a + (z - a) / 2;
        if h(mid) >= hi as i64 {
            z = mid;
        } else {
            a = mid + 1;
        }
    }
    Some((s_lo, a))
}

/// One channel of a two-term requantization in i32: `out = clamp(div(x *
/// m + (y * m2 + b), 2^shift), lo, hi)` with `x` first clamped to `[xlo,
/// xhi]` (see [`run_requant2`]).
#[derive(Clone, Copy)]
struct Row2 {
    xlo: i32,
    xhi: i32,
    m: i32,
    m2: i32,
    b: i32,
}

#[inline(always)]
fn row2_body(x: &[i32], y: &[i32], rc: Row2, e: &Epilogue, out: &mut [i32]) {
    let Row2 { xlo, xhi, m, m2, b } = rc;
    let (shift, lo, hi) = (e.shift, e.lo, e.hi);
    let mask = ((1i64 << shift) - 1) as i32;
    let half = if shift == 0 { 0 } else { 1i32 << (shift - 1) };
    let n = out.len().min(x.len()).min(y.len());
    let (out, x, y) = (&mut out[..n], &x[..n], &y[..n]);
    let sum = |i: usize| {
        x[i].clamp(xlo, xhi)
            .wrapping_mul(m)
            .wrapping_add(y[i].wrapping_mul(m2).wrapping_add(b))
    };
    match e.div {
        Div::Floor => {
            for i in 0..n {
                out[i] = (sum(i) >> shift).clamp(lo, hi);
            }
        }
        Div::Trunc => {
            for i in 0..n {
                let s = sum(i);
                out[i] = ((s + ((s >> 31) & mask)) >> shift).clamp(lo, hi);
            }
        }
        Div::Nearest => {
            for i in 0..n {
                let s = sum(i);
                let neg = s >> 31;
                let q = (((s ^ neg) - neg) + half) >> shift;
                out[i] = ((q ^ neg) - neg).clamp(lo, hi);
            }
        }
    }
}

/// `floor(n / d)`, `d != 0`.
fn floor_div(n: i64, d: i64) -> i64 {
    if d > 0 {
        n.div_euclid(d)
    } else {
        (-n).div_euclid(-d)
    }
}

/// The clamp range of `x` for a channel of a two-term requantization whose
/// other part `y * m2 + b` lies in `[-c, c]`, and whether its sums fit i32:
/// beyond `[xlo, xhi]` every sum is past the saturation points `(s_lo,
/// s_hi)` whatever the other part, so clamping `x` changes no result.
fn row2(m: i32, m2: i32, b: i32, c: i64, (s_lo, s_hi): (i64, i64), shift: u32) -> Option<Row2> {
    let (xlo, xhi) = match m.signum() {
        0 => (0, 0),
        1 => (
            floor_div(s_lo - c, m as i64),
            -floor_div(-(s_hi + c), m as i64),
        ),
        _ => (
            floor_div(s_hi + c, m as i64),
            -floor_div(-(s_lo - c), m as i64),
        ),
    };
    let (min, max) = (i32::MIN as i64, i32::MAX as i64);
    let (xlo, xhi) = (xlo.clamp(min, max), xhi.clamp(min, max));
    let bound = (xlo * m as i64).abs().max((xhi * m as i64).abs()) + c + (1i64 << shift);
    (bound < 1 << 31 && xlo <= xhi).then_some(Row2 {
        xlo: xlo as i32,
        xhi: xhi as i32,
        m,
        m2,
        b,
    })
}

/// [`run_requant2`]'s rows: per channel the range of its second term
/// (from the row's own largest |y|), then the row in i32 where it fits,
/// else exactly in i64 as `requant.rs` computes it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn requant2_body(
    x: &[i32],
    y: &[i32],
    ms: (&[i64], &[i64]),
    bias: &[i64],
    p: usize,
    e: &Epilogue,
    sat: (i64, i64),
    out: &mut [i32],
) {
    for ch in 0..bias.len() {
        let rows = (ch * p..(ch + 1) * p, ch * p..(ch + 1) * p);
        let (Some(xr), Some(yr), Some(o)) =
            (x.get(rows.0), y.get(rows.1.clone()), out.get_mut(rows.1))
        else {
            break;
        };
        let (m, m2, b) = (ms.0[ch], ms.1[ch], bias[ch]);
        let fast = match (i32::try_from(m), i32::try_from(m2), i32::try_from(b)) {
            (Ok(m), Ok(m2), Ok(b32)) => {
                let c = (abs_peak(yr) as i64 * (m2 as i64).abs()).saturating_add(b.abs());
                row2(m, m2, b32, c, sat, e.shift)
            }
            _ => None,
        };
        match (fast, i32::try_from(m), i32::try_from(m2)) {
            (Some(rc), _, _) => row2_body(xr, yr, rc, e, o),
            // The row as `requant.rs` computes it: i32, i64-sum or i64
            // lanes as the row's own largest values allow.
            (None, Ok(m), Ok(m2)) => {
                let q = RowScale {
                    m,
                    m2,
                    b,
                    shift: e.shift,
                    div: e.div,
                    lo: e.lo as i64,
                    hi: e.hi as i64,
                };
                requant_row_body(xr, yr, &q, o)
            }
            _ => {
                for i in 0..p {
                    let s = xr[i] as i64 * m + yr[i] as i64 * m2 + b;
                    o[i] = shift_round(s, e.shift, e.div).clamp(e.lo as i64, e.hi as i64) as i32;
                }
            }
        }
    }
}

/// A two-term requantization (a residual add: a conv's accumulator `x`
/// and an activation `y`, both i32, multipliers and bias in 32 bits) in
/// i32 lanes, where `requant.rs` takes i64 lanes as soon as the row's
/// largest values could pass 2^31: the sum `x * m + y * m2 + b` saturates
/// the output below and above fixed sums ([`saturation`]), so `x` is
/// clamped first to where it still matters given the row's largest |y|
/// ([`row2`]); the clamped sums then fit i32 for the usual 8-bit outputs.
/// Returns false (nothing done) for any other requantization, which the
/// caller then runs as `requant.rs` does. Only with
/// `Workspace::fuse_requant`.
pub(super) fn run_requant2(plan: &IntPlan, r: &crate::plan::Requant, ws: &mut Workspace) -> bool {
    let [t0, t1] = r.terms.as_slice() else {
        return false;
    };
    let (Ok(lo), Ok(hi)) = (i32::try_from(r.lo), i32::try_from(r.hi)) else {
        return false;
    };
    if r.wide || lo >= hi || r.shift >= 31 || t0.src == r.output || t1.src == r.output {
        return false;
    }
    let c = r.bias.len();
    let len = plan.tensors.get(r.output).map_or(0, |t| t.len());
    if c == 0 || !len.is_multiple_of(c) || t0.mult.len() != c || t1.mult.len() != c {
        return false;
    }
    let Some(sat) = saturation(r.shift, r.div, lo, hi) else {
        return false;
    };
    let (Buf::I32(x), Buf::I32(y)) = (&ws.bufs[t0.src], &ws.bufs[t1.src]) else {
        return false;
    };
    if x.len() < len || y.len() < len {
        return false;
    }
    let mut out = match std::mem::replace(&mut ws.bufs[r.output], Buf::I32(Vec::new())) {
        Buf::I32(v) => v,
        Buf::I64(v) => v.into_iter().map(|x| x as i32).collect(),
    };
    out.resize(len, 0);
    let e = Epilogue {
        rows: &[],
        shift: r.shift,
        div: r.div,
        lo,
        hi,
        clamp: true,
        second: None,
        wide: false,
        peak: 0,
    };
    let (x, y) = match (&ws.bufs[t0.src], &ws.bufs[t1.src]) {
        (Buf::I32(x), Buf::I32(y)) => (x, y),
        _ => unreachable!("checked above"),
    };
    requant2(
        x,
        y,
        (&t0.mult, &t1.mult),
        &r.bias,
        len / c,
        &e,
        sat,
        &mut out,
    );
    ws.bufs[r.output] = Buf::I32(out);
    true
}

/// [`requant2_body`], AVX2-compiled where the CPU has it.
#[allow(clippy::too_many_arguments)]
fn requant2(
    x: &[i32],
    y: &[i32],
    ms: (&[i64], &[i64]),
    bias: &[i64],
    p: usize,
    e: &Epilogue,
    sat: (i64, i64),
    out: &mut [i32],
) {
    // AVX-512: the rows in i64 lanes (where a channel's sums pass i32)
    // multiply with `vpmullq`, which AVX2 lacks.
    super::isa::vectorised!(requant2_body(
        x: &[i32],
        y: &[i32],
        ms: (&[i64], &[i64]),
        bias: &[i64],
        p: usize,
        e: &Epilogue,
        sat: (i64, i64),
        out: &mut [i32],
    ))
}

/// An [`Epilogue`]'s shared constants in AVX2 registers, for the kernels.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Regs {
    count: std::arch::x86_64::__m128i,
    half: std::arch::x86_64::__m256i,
    lo: std::arch::x86_64::__m256i,
    hi: std::arch::x86_64::__m256i,
    div: Div,
    clamp: bool,
    /// The i64 form ([`Epilogue::wide`]), its shift and rounding offsets.
    wide: Option<WideRound>,
}

#[cfg(target_arch = "x86_64")]
impl Regs {
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn new(e: &Epilogue) -> Regs {
        use std::arch::x86_64::*;
        let half = if e.shift == 0 {
            0
        } else {
            1i32 << (e.shift.min(31) - 1)
        };
        Regs {
            count: _mm_cvtsi32_si128(e.shift as i32),
            half: _mm256_set1_epi32(half),
            lo: _mm256_set1_epi32(e.lo),
            hi: _mm256_set1_epi32(e.hi),
            div: e.div,
            clamp: e.clamp,
            wide: e.wide.then(|| WideRound::new(0, 0, 0, e.shift.min(31))),
        }
    }

    /// Eight accumulators of the channel of `rc` requantized: the
    /// register form of [`row_body`].
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn apply(
        &self,
        acc: std::arch::x86_64::__m256i,
        rc: &RowConsts,
    ) -> std::arch::x86_64::__m256i {
        if let Some(w) = &self.wide {
            return match self.div {
                Div::Floor => self.wide_one::<FLOOR>(w, acc, rc),
                Div::Trunc => self.wide_one::<TRUNC>(w, acc, rc),
                Div::Nearest => self.wide_one::<NEAREST>(w, acc, rc),
            };
        }
        match (self.div, self.clamp) {
            (Div::Floor, true) => self.one::<FLOOR, true>(acc, rc),
            (Div::Floor, false) => self.one::<FLOOR, false>(acc, rc),
            (Div::Trunc, true) => self.one::<TRUNC, true>(acc, rc),
            (Div::Trunc, false) => self.one::<TRUNC, false>(acc, rc),
            (Div::Nearest, true) => self.one::<NEAREST, true>(acc, rc),
            (Div::Nearest, false) => self.one::<NEAREST, false>(acc, rc),
        }
    }

    /// A whole block of eight rows (`acc[r]` of the channel of `rc[r]`):
    /// the largest |acc| into `peak`, then each requantized in place, the
    /// rounding chosen once for the block (so the rows unroll without
    /// branches and `acc` stays in registers).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn apply8(
        &self,
        acc: &mut [std::arch::x86_64::__m256i; 8],
        rc: &[RowConsts; 8],
        peak: &mut std::arch::x86_64::__m256i,
    ) {
        for a in acc.iter() {
            // SAFETY: AVX2 is this function's own feature.
            *peak = unsafe { peak8(*peak, *a) };
        }
        if self.wide.is_some() {
            for (a, rc) in acc.iter_mut().zip(rc) {
                // SAFETY: AVX2 is this function's own feature.
                *a = unsafe { self.apply(*a, rc) };
            }
            return;
        }
        match (self.div, self.clamp) {
            (Div::Floor, true) => self.rows8::<FLOOR, true>(acc, rc),
            (Div::Floor, false) => self.rows8::<FLOOR, false>(acc, rc),
            (Div::Trunc, true) => self.rows8::<TRUNC, true>(acc, rc),
            (Div::Trunc, false) => self.rows8::<TRUNC, false>(acc, rc),
            (Div::Nearest, true) => self.rows8::<NEAREST, true>(acc, rc),
            (Div::Nearest, false) => self.rows8::<NEAREST, false>(acc, rc),
        }
    }

    /// The epilogue of a kernel's block of `rows` (at most eight) output
    /// rows, `acc[r]` of the channel of `rc[r]`: [`Regs::apply8`] for a
    /// full block, else row by row (the largest |acc| into `peak`, then
    /// requantized in place).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn block(
        &self,
        acc: &mut [std::arch::x86_64::__m256i; 8],
        rows: usize,
        rc: &[RowConsts],
        peak: &mut std::arch::x86_64::__m256i,
    ) {
        let full = rc
            .get(..8)
            .and_then(|r| <&[RowConsts; 8]>::try_from(r).ok());
        // SAFETY (both arms): AVX2 is this function's own feature.
        match full {
            Some(rc) if rows == 8 => unsafe { self.apply8(acc, rc, peak) },
            _ => {
                for (r, a) in acc.iter_mut().enumerate().take(rows) {
                    unsafe {
                        *peak = peak8(*peak, *a);
                        *a = self.apply(*a, &rc[r]);
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn rows8<const DIV: u8, const CLAMP: bool>(
        &self,
        acc: &mut [std::arch::x86_64::__m256i; 8],
        rc: &[RowConsts; 8],
    ) {
        for (a, rc) in acc.iter_mut().zip(rc) {
            *a = self.one::<DIV, CLAMP>(*a, rc);
        }
    }

    /// [`Regs::apply`] for one rounding (`DIV`: [`FLOOR`], [`TRUNC`],
    /// [`NEAREST`]) and clamp choice.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn one<const DIV: u8, const CLAMP: bool>(
        &self,
        acc: std::arch::x86_64::__m256i,
        rc: &RowConsts,
    ) -> std::arch::x86_64::__m256i {
        self.round::<DIV, CLAMP>(sum8(acc, rc))
    }

    /// [`Regs::apply`] in the i64 form: the accumulators clamped to the
    /// channel's `[xlo, xhi]`, their sums `x * m + b` in i64 lanes, the
    /// quotients (which fit i32, [`wide_row_consts`]) clamped to `[lo,
    /// hi]`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn wide_one<const DIV: u8>(
        &self,
        w: &WideRound,
        acc: std::arch::x86_64::__m256i,
        rc: &RowConsts,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        let x = _mm256_min_epi32(
            _mm256_max_epi32(acc, _mm256_set1_epi32(rc.xlo)),
            _mm256_set1_epi32(rc.xhi),
        );
        let q = w.channel(rc.m, rc.b as i64).quotients8::<DIV>(x, None);
        _mm256_min_epi32(_mm256_max_epi32(q, self.lo), self.hi)
    }

    /// A whole block of `rows` (at most eight) rows of a two-term
    /// requantization (`acc[r]` of the channel of `rc[r]`, positions `i..i +
    /// 8` of row `row0 + r` of `s`): the largest |acc| into `peak`, then
    /// each row's clamped sum plus `y * m2` of the same positions (those
    /// past `s.p` read as 0), rounded and clamped, in place.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2; `i < s.p` and `s` must hold rows `row0 +
    /// rows` ([`Second::holds`]), `rc` `rows` constants.
    #[target_feature(enable = "avx2")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block2(
        &self,
        acc: &mut [std::arch::x86_64::__m256i; 8],
        rows: usize,
        rc: &[RowConsts],
        s: &Second,
        row0: usize,
        i: usize,
        peak: &mut std::arch::x86_64::__m256i,
    ) {
        // SAFETY (every arm): AVX2 is this function's own feature, and the
        // caller's bounds are `rows2`'s. The rounding is chosen once per
        // block, not per row (a branch per row measured 0.5 % slower).
        match self.div {
            Div::Floor => unsafe { self.rows2::<FLOOR>(acc, rows, rc, s, row0, i, peak) },
            Div::Trunc => unsafe { self.rows2::<TRUNC>(acc, rows, rc, s, row0, i, peak) },
            Div::Nearest => unsafe { self.rows2::<NEAREST>(acc, rows, rc, s, row0, i, peak) },
        }
    }

    /// [`Regs::block2`] for one rounding.
    ///
    /// # Safety
    ///
    /// As [`Regs::block2`].
    #[target_feature(enable = "avx2")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows2<const DIV: u8>(
        &self,
        acc: &mut [std::arch::x86_64::__m256i; 8],
        rows: usize,
        rc: &[RowConsts],
        s: &Second,
        row0: usize,
        i: usize,
        peak: &mut std::arch::x86_64::__m256i,
    ) {
        use std::arch::x86_64::*;
        let n = (s.p - i).min(8);
        let mask = first_lanes(n);
        for (r, a) in acc.iter_mut().enumerate().take(rows) {
            let at = (row0 + r) * s.p + i;
            // SAFETY: `at + n <= (row0 + r + 1) * s.p <= s.y.len()` (the
            // caller's bounds): the whole load (n = 8) or the lanes the
            // mask keeps lie inside `s.y`.
            let y = unsafe {
                let ptr = s.y.as_ptr().add(at);
                if n == 8 {
                    _mm256_loadu_si256(ptr as *const __m256i)
                } else {
                    _mm256_maskload_epi32(ptr, mask)
                }
            };
            // SAFETY: AVX2 is this function's own feature.
            *peak = unsafe { peak8(*peak, *a) };
            let y = _mm256_mullo_epi32(y, _mm256_set1_epi32(s.m2[row0 + r]));
            *a = self.round::<DIV, true>(_mm256_add_epi32(sum8(*a, &rc[r]), y));
        }
    }

    /// A sum `s` (exact in i32) rounded as `DIV` says by `2^shift` and,
    /// with `CLAMP`, clamped to `[lo, hi]`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn round<const DIV: u8, const CLAMP: bool>(
        &self,
        s: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        let q = round8::<DIV>(s, self.count, self.half);
        if CLAMP {
            _mm256_min_epi32(_mm256_max_epi32(q, self.lo), self.hi)
        } else {
            q
        }
    }
}

/// `clamp(acc, xlo, xhi) * m + b` of the channel of `rc`, per lane
/// (wrapping; exact where [`row_consts`] or [`row2`] made `rc`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn sum8(acc: std::arch::x86_64::__m256i, rc: &RowConsts) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let x = _mm256_min_epi32(
        _mm256_max_epi32(acc, _mm256_set1_epi32(rc.xlo)),
        _mm256_set1_epi32(rc.xhi),
    );
    _mm256_add_epi32(
        _mm256_mullo_epi32(x, _mm256_set1_epi32(rc.m)),
        _mm256_set1_epi32(rc.b),
    )
}

/// Sums `s` (exact in i32) divided by `2^count` rounded as `DIV` says
/// ([`FLOOR`], [`TRUNC`], [`NEAREST`]: `fixed::shift_round` per lane;
/// `half` is `2^(count - 1)`, or 0). Shared by the kernels' epilogues.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn round8<const DIV: u8>(
    s: std::arch::x86_64::__m256i,
    count: std::arch::x86_64::__m128i,
    half: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    match DIV {
        FLOOR => _mm256_sra_epi32(s, count),
        TRUNC => {
            // |s| shifted, the sign restored: toward zero (|s| < 2^31).
            let a = _mm256_srl_epi32(_mm256_abs_epi32(s), count);
            _mm256_sign_epi32(a, s)
        }
        _ => {
            // |s| + half, shifted, the sign restored (`vpsignd` keeps a
            // zero quotient zero).
            let a = _mm256_abs_epi32(s);
            let q = _mm256_sra_epi32(_mm256_add_epi32(a, half), count);
            _mm256_sign_epi32(q, s)
        }
    }
}

/// [`Regs::one`]'s rounding parameter: `Div::Floor`, `Div::Trunc`,
/// `Div::Nearest`.
#[cfg(target_arch = "x86_64")]
pub(super) const FLOOR: u8 = 0;
#[cfg(target_arch = "x86_64")]
pub(super) const TRUNC: u8 = 1;
#[cfg(target_arch = "x86_64")]
pub(super) const NEAREST: u8 = 2;

/// The largest unsigned lane of `v`.
///
/// # Safety
///
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn hmax_u32(v: std::arch::x86_64::__m256i) -> u32 {
    use std::arch::x86_64::*;
    let v = _mm256_max_epu32(v, _mm256_permute2x128_si256::<1>(v, v));
    let v = _mm256_max_epu32(v, _mm256_shuffle_epi32::<0b0100_1110>(v));
    let v = _mm256_max_epu32(v, _mm256_shuffle_epi32::<0b1011_0001>(v));
    _mm256_cvtsi256_si32(v) as u32
}

/// All bits set in the first `n` lanes (at most 8), zero in the rest: the
/// mask of a block's positions below the end of its row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn first_lanes(n: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n.min(8) as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// `max(peak, |acc|)` per lane (unsigned, so |i32::MIN| is 2^31).
///
/// # Safety
///
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn peak8(
    peak: std::arch::x86_64::__m256i,
    acc: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_max_epu32(peak, _mm256_abs_epi32(acc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conv::testing::{layer, test_plan};
    use crate::engine::depthwise::ConvShape;
    use crate::engine::depthwise_table::TableGeom;
    use crate::engine::{run_image, Buf, SimOptions, Weights, Workspace};
    use crate::plan::{Requant, RequantTerm, TensorInfo, TensorKind};
    use crate::FixedFormat;

    /// xorshift32: reproducible pseudo-random numbers.
    struct Rng(u32);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 17;
            self.0 ^= self.0 << 5;
            self.0
        }
        /// Uniform in `[lo, hi]`.
        fn range(&mut self, lo: i64, hi: i64) -> i64 {
            let r = ((self.next() as u64) << 32 | self.next() as u64) % ((hi - lo + 1) as u64);
            lo + r as i64
        }
    }

    const DIVS: [Div; 3] = [Div::Trunc, Div::Floor, Div::Nearest];

    /// Both row forms (the post-pass and, with AVX2, the kernels'
    /// register epilogue) on `xs` against the exact requantization.
    fn check_row(xs: &[i32], rc: RowConsts, shift: u32, div: Div, lo: i32, hi: i32, tag: &str) {
        check_row_in(xs, rc, (shift, div, lo, hi), false, tag)
    }

    /// [`check_row`] in i32 lanes or (`wide`) i64 sums.
    fn check_row_in(
        xs: &[i32],
        rc: RowConsts,
        (shift, div, lo, hi): (u32, Div, i32, i32),
        wide: bool,
        tag: &str,
    ) {
        let rows = [rc];
        let mut e = Epilogue {
            rows: &rows,
            shift,
            div,
            lo,
            hi,
            clamp: wide || needs_clamp(rc, shift, div, lo, hi),
            second: None,
            wide,
            peak: 0,
        };
        let want: Vec<i32> = xs
            .iter()
            .map(|&x| {
                exact(
                    x as i64,
                    rc.m as i64,
                    rc.b as i64,
                    shift,
                    div,
                    lo as i64,
                    hi as i64,
                ) as i32
            })
            .collect();
        let mut out = vec![0; xs.len()];
        requant_clamped(xs, xs.len(), &mut e, &mut out);
        assert_eq!(out, want, "post-pass {tag} {rc:?}");
        assert_eq!(e.peak, abs_peak(xs), "peak {tag}");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            use std::arch::x86_64::*;
            for (c, w) in xs.chunks(8).zip(want.chunks(8)) {
                let mut v = [0i32; 8];
                v[..c.len()].copy_from_slice(c);
                let mut got = [0i32; 8];
                // SAFETY: AVX2 is present (checked above); the load and
                // store read and write eight i32 of `v` and `got`.
                unsafe {
                    let regs = Regs::new(&e);
                    let r = regs.apply(_mm256_loadu_si256(v.as_ptr() as _), &rc);
                    _mm256_storeu_si256(got.as_mut_ptr() as _, r);
                }
                assert_eq!(&got[..c.len()], w, "register epilogue {tag} {rc:?}");
            }
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            for (c, w) in xs.chunks(16).zip(want.chunks(16)) {
                let mut v = [0i32; 16];
                v[..c.len()].copy_from_slice(c);
                let mut got = [0i32; 16];
                // SAFETY: AVX-512 F is present (checked above); the load
                // and store read and write sixteen i32 of `v` and `got`.
                unsafe { epilogue16(&v, &e, &rc, &mut got) };
                assert_eq!(&got[..c.len()], w, "512-bit epilogue {tag} {rc:?}");
            }
        }
    }

    /// The 512-bit epilogue's arithmetic ([`Regs16`], the one-term form of
    /// `BlockOut::rows16`: in i32 lanes or the i64 form) on sixteen sums.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512 F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f")]
    unsafe fn epilogue16(v: &[i32; 16], e: &Epilogue, rc: &RowConsts, got: &mut [i32; 16]) {
        use crate::engine::gemm::{by_rounding, Regs16, TRUNC_ADD};
        use std::arch::x86_64::*;
        // SAFETY: AVX-512 F, this function's own feature; sixteen i32.
        let x = unsafe { _mm512_loadu_si512(v.as_ptr() as *const _) };
        let r = unsafe { Regs16::of(e) };
        let q = if e.wide {
            let (lo, hi) = (_mm512_set1_epi32(e.lo), _mm512_set1_epi32(e.hi));
            let x = _mm512_min_epi32(
                _mm512_max_epi32(x, _mm512_set1_epi32(rc.xlo)),
                _mm512_set1_epi32(rc.xhi),
            );
            let q = match r.div() {
                FLOOR => r.wide_quotients::<FLOOR>(x, rc.m, rc.b),
                TRUNC | TRUNC_ADD => r.wide_quotients::<TRUNC>(x, rc.m, rc.b),
                _ => r.wide_quotients::<NEAREST>(x, rc.m, rc.b),
            };
            _mm512_min_epi32(_mm512_max_epi32(q, lo), hi)
        } else {
            let set = _mm512_set1_epi32;
            let s = Regs16::scale(x, set(rc.xlo), set(rc.xhi), set(rc.m), set(rc.b));
            macro_rules! go {
                ($div:ident, $clamp:literal) => {
                    r.round::<$div, $clamp>(s)
                };
            }
            by_rounding!(r, go)
        };
        // SAFETY: sixteen i32 of `got`.
        unsafe { _mm512_storeu_si512(got.as_mut_ptr() as *mut _, q) };
    }

    /// Accumulators around every place the result can change: the i32
    /// extremes, zero, both clamp bounds and random values.
    fn probes(rc: RowConsts, rng: &mut Rng) -> Vec<i32> {
        let mut xs = vec![i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX - 1, i32::MAX];
        for c in [rc.xlo, rc.xhi] {
            for d in -3..=3i64 {
                xs.push((c as i64 + d).clamp(i32::MIN as i64, i32::MAX as i64) as i32);
            }
        }
        for _ in 0..40 {
            xs.push(rng.next() as i32);
            xs.push(rng.range(-(1 << 20), 1 << 20) as i32);
            xs.push(rng.range(rc.xlo as i64, rc.xhi as i64) as i32);
        }
        xs
    }

    #[test]
    fn clamped_i32_requantization_is_exact() {
        let mut rng = Rng(0x2545_f491);
        let (mut fused, mut refused, mut wide) = (0, 0, 0);
        for shift in 0..=31u32 {
            for div in DIVS {
                for (lo, hi) in [
                    (-128, 127),
                    (0, 255),
                    (0, 127),
                    (-5, 5),
                    (7, 7),
                    (-32768, 32767),
                ] {
                    for _ in 0..6 {
                        let m = match rng.next() % 4 {
                            0 => rng.range(-100, 100),
                            1 => rng.range(-(1 << 20), 1 << 20),
                            2 => rng.range(i32::MIN as i64, i32::MAX as i64),
                            _ => -rng.range(1, 70_000),
                        };
                        let b = match rng.next() % 3 {
                            0 => 0,
                            1 => rng.range(-(1 << 28), 1 << 28),
                            _ => rng.range(i32::MIN as i64, i32::MAX as i64),
                        };
                        let tag = format!("m {m} b {b} shift {shift} {div:?} [{lo}, {hi}]");
                        match row_consts(m, b, shift, div, lo, hi) {
                            Some(rc) => {
                                fused += 1;
                                assert!(rc.xlo <= rc.xhi, "{tag}");
                                check_row(&probes(rc, &mut rng), rc, shift, div, lo, hi, &tag);
                            }
                            None => {
                                refused += 1;
                                // Refused only where a clamped sum (or its
                                // rounding) would not fit i32.
                                let (xlo, xhi) =
                                    clamp_range(m as i32, b as i32, shift, div, lo, hi);
                                let s = |x: i32| (x as i64 * m + b).abs();
                                assert!(
                                    shift >= 31 || s(xlo).max(s(xhi)) + (1i64 << shift) >= 1 << 31,
                                    "{tag} refused"
                                );
                                // The i64 form, where the quotients fit i32.
                                if let Some(rc) = wide_row_consts(m, b, shift, div, lo, hi) {
                                    wide += 1;
                                    let xs = probes(rc, &mut rng);
                                    check_row_in(&xs, rc, (shift, div, lo, hi), true, &tag);
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(
            fused > 500 && refused > 100 && wide > 50,
            "{fused} fused, {refused} refused, {wide} in i64 sums"
        );
    }

    #[test]
    fn the_i32_bound_is_taken_on_both_sides() {
        let mut rng = Rng(7);
        // x / 2^16 clamped to [-32766, hi]. Floor and trunc: hi = 32766
        // puts the largest clamped sum at 2^31 - 2^17 (fits with the
        // rounding offset 2^16), 32767 at 2^31 - 2^16 (with the offset
        // 2^31: does not). Nearest reaches hi half a step earlier, so its
        // edge is one further (32767 fits, 32768 does not).
        for div in DIVS {
            let edge = if div == Div::Nearest { 32767 } else { 32766 };
            let rc = row_consts(1, 0, 16, div, -32766, edge)
                .unwrap_or_else(|| panic!("{div:?}: {edge} fits"));
            check_row(&probes(rc, &mut rng), rc, 16, div, -32766, edge, "edge");
            assert_eq!(row_consts(1, 0, 16, div, -32766, edge + 1), None, "{div:?}");
            // A negative multiplier: the same sums mirrored.
            let rc = row_consts(-1, 0, 16, div, -32766, 32766).unwrap();
            check_row(&probes(rc, &mut rng), rc, 16, div, -32766, 32766, "neg");
        }
        // A bias moves the bound: one more unit of bias past 2^31.
        let rc = row_consts(1, (1 << 16) - 1, 16, Div::Floor, 0, 32766).unwrap();
        check_row(&probes(rc, &mut rng), rc, 16, Div::Floor, 0, 32766, "bias");
        // Multipliers and biases past i32, shifts of 31: not fused.
        assert_eq!(row_consts(1 << 31, 0, 22, Div::Trunc, -128, 127), None);
        assert_eq!(row_consts(1, 1 << 31, 22, Div::Trunc, -128, 127), None);
        assert_eq!(row_consts(1, 0, 31, Div::Trunc, 0, 0), None);
    }

    fn act(name: &str, shape: [usize; 3]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            shape,
            kind: TensorKind::Act {
                scale: 1.0,
                lo: -128,
                hi: 127,
                bits: 8,
            },
            wide: false,
        }
    }

    /// A plan of one conv (`cin -> cout`, k x k, on tensor 0 of `[cin, ih,
    /// iw]`) into tensor 1 and its requantization into tensor 2.
    #[allow(clippy::too_many_arguments)]
    fn conv_plan(
        (cin, cout, k, stride, pad, groups): (usize, usize, usize, usize, usize, usize),
        [ih, iw]: [usize; 2],
        in_bits: u32,
        weights: Vec<i32>,
        mult: Vec<i64>,
        bias: Vec<i64>,
        (shift, div, lo, hi): (u32, Div, i64, i64),
    ) -> IntPlan {
        let mut conv = layer(cin, cout, k, stride, pad, groups, [ih, iw], weights);
        conv.name = "c".into();
        conv.in_bits = in_bits;
        // `conv_input`'s range.
        conv.in_range = [-(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1];
        let [oh, ow] = conv.out_hw;
        let req = Requant {
            name: "q".into(),
            terms: vec![RequantTerm {
                src: 1,
                real: vec![0.0; cout],
                mult,
            }],
            bias_real: vec![0.0; cout],
            bias,
            format: FixedFormat::new(32, 16),
            shift,
            div,
            lo,
            hi,
            output: 2,
            wide: false,
        };
        IntPlan {
            tensors: vec![
                act("x", [cin, ih, iw]),
                TensorInfo {
                    name: "acc".into(),
                    shape: [cout, oh, ow],
                    kind: TensorKind::Acc { scale: 1.0 },
                    wide: false,
                },
                act("y", [cout, oh, ow]),
            ],
            layers: vec![Layer::Conv(conv), Layer::Requant(req)],
            ..test_plan()
        }
    }

    /// Convs of every kernel family: `((cin, cout, k, stride, pad, groups),
    /// [ih, iw], input bits)`: direct, strided, im2col, grouped, 1x1,
    /// depthwise, operands wider than i16, a 1 x 1 map.
    #[allow(clippy::type_complexity)]
    const SHAPES: [((usize, usize, usize, usize, usize, usize), [usize; 2], u32); 16] = [
        ((16, 16, 3, 1, 1, 1), [8, 16], 8),
        // Depthwise on the flat row-pair layouts (stride 1 and 2, maps of
        // 72 and 256 positions) with their per-channel requantization.
        ((8, 8, 3, 1, 1, 8), [9, 8], 8),
        ((16, 16, 3, 1, 1, 16), [16, 16], 8),
        ((12, 12, 3, 2, 1, 12), [16, 16], 8),
        ((5, 12, 3, 2, 1, 1), [9, 16], 9),
        ((16, 32, 2, 2, 0, 1), [16, 16], 10),
        ((3, 5, 3, 1, 1, 1), [5, 6], 8),
        ((6, 8, 3, 1, 1, 2), [7, 10], 8),
        ((8, 13, 1, 1, 0, 1), [5, 13], 8),
        ((6, 9, 1, 1, 0, 3), [4, 5], 8),
        ((8, 16, 1, 2, 0, 1), [8, 8], 8),
        ((8, 8, 3, 1, 1, 8), [6, 10], 8),
        ((4, 6, 3, 1, 1, 1), [5, 8], 17),
        ((20, 3, 1, 1, 0, 1), [1, 1], 9),
        ((17, 17, 3, 2, 1, 17), [7, 5], 8),
        ((9, 9, 5, 1, 2, 9), [4, 3], 16),
    ];

    /// A conv's input of `len` values of `in_bits`, a fifth at each extreme.
    fn conv_input(rng: &mut Rng, len: usize, in_bits: u32) -> Vec<i32> {
        let top = (1i64 << (in_bits - 1)) - 1;
        (0..len)
            .map(|_| match rng.next() % 5 {
                0 => top as i32,
                1 => -(top as i32) - 1,
                _ => rng.range(-top - 1, top) as i32,
            })
            .collect()
    }

    /// Fused against unfused on random convs of every kernel family
    /// (direct, im2col, 1x1, grouped, depthwise, operands wider than i16),
    /// every rounding, shifts 0 to 24, negative multipliers, clamps: the
    /// requantized tensor and the accumulator statistics are identical, over
    /// two images (the statistics accumulate).
    #[test]
    fn fused_convs_match_the_separate_requantization() {
        crate::engine::isa::on_each(fused_convs_match_the_separate_requantization_body);
    }

    fn fused_convs_match_the_separate_requantization_body() {
        let mut rng = Rng(0x9e37_79b9);
        let (mut fused_layers, mut in_kernel, mut wide_layers) = (0, 0, 0);
        for (case, &(dims, hw, in_bits)) in SHAPES.iter().enumerate() {
            let (cin, cout, k, _, _, groups) = dims;
            for div in DIVS {
                for (shift, lo, hi) in [
                    (0, -128, 127),
                    (8, 0, 255),
                    (16, 0, 127),
                    (22, -128, 127),
                    (24, -5, 5),
                    // Shifts past 30: truncation in its four-operation form.
                    (31, -2, 1),
                    (33, -1, 1),
                    // 16-bit outputs: sums over 2^32, the i64 form.
                    (16, -32768, 32767),
                ] {
                    let fan_in = cin / groups * k * k;
                    let weights: Vec<i32> = (0..cout * fan_in)
                        .map(|_| rng.range(-128, 127) as i32)
                        .collect();
                    let mult: Vec<i64> = (0..cout)
                        .map(|c| match c % 4 {
                            0 => rng.range(1, 1 << 16),
                            1 => -rng.range(1, 1 << 16),
                            2 => rng.range(-(1 << 22), 1 << 22),
                            _ => rng.range(-3, 3),
                        })
                        .collect();
                    let bias: Vec<i64> =
                        (0..cout).map(|_| rng.range(-(1 << 26), 1 << 26)).collect();
                    let plan =
                        conv_plan(dims, hw, in_bits, weights, mult, bias, (shift, div, lo, hi));
                    let w = Weights::new(&plan);
                    let fusable = w.fused[0].is_some();
                    fused_layers += usize::from(fusable);
                    wide_layers += usize::from(w.fused[0].as_ref().is_some_and(|f| f.wide));
                    let (mut plain, mut fused) = (Workspace::new(&plan), Workspace::new(&plan));
                    fused.fuse_requant(true);
                    let tag = format!("case {case} {dims:?} {div:?} shift {shift}");
                    for _ in 0..2 {
                        let input = conv_input(&mut rng, plan.tensors[0].len(), in_bits);
                        plain.bufs[0] = Buf::I32(input.clone());
                        fused.bufs[0] = Buf::I32(input);
                        let sim = SimOptions::default();
                        run_image(&plan, &w, &[], &mut plain, &sim).unwrap();
                        run_image(&plan, &w, &[], &mut fused, &sim).unwrap();
                        let (a, b) = (plain.tensor(2).unwrap(), fused.tensor(2).unwrap());
                        assert_eq!(a.to_i64(), b.to_i64(), "{tag}");
                        assert_eq!(plain.stats, fused.stats, "{tag}");
                        // The accumulators: written unless the kernel fused.
                        match fused.tensor(1) {
                            Some(acc) => {
                                assert_eq!(acc.to_i64(), plain.tensor(1).unwrap().to_i64(), "{tag}")
                            }
                            None => in_kernel += 1,
                        }
                    }
                    // A simulated accumulator width: never fused.
                    let sim = SimOptions {
                        acc_bits: Some(40),
                        ..SimOptions::default()
                    };
                    run_image(&plan, &w, &[], &mut fused, &sim).unwrap();
                    assert!(fused.tensor(1).is_some(), "{tag}: simulated width fused");
                }
            }
        }
        assert!(fused_layers > 100, "only {fused_layers} layers fused");
        assert!(
            wide_layers > 20,
            "only {wide_layers} layers fused in i64 sums"
        );
        // In the kernels' epilogue (the 17-bit case takes the post-pass;
        // depthwise convs of at most 64 outputs requantize in the lanes
        // kernel, `depthwise_lanes.rs`) wherever the CPU has AVX2.
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(in_kernel > 100, "only {in_kernel} in the epilogue");
        }
    }

    /// `conv_plan` with a residual add: tensor 3 (set by the test) is
    /// requantized into tensor 4 (`y`, clamped to `[ylo, yhi]`) before the
    /// conv, and the conv's requantization takes `y * m2` as a second term
    /// (first or second in its term list, as `y_first`).
    fn residual_plan(
        plan: IntPlan,
        (ym, yshift, ylo, yhi): (i64, u32, i64, i64),
        m2: Vec<i64>,
        y_first: bool,
    ) -> IntPlan {
        let mut plan = plan;
        let shape = plan.tensors[2].shape;
        plan.tensors.push(act("y0", shape));
        plan.tensors.push(act("y", shape));
        let cout = shape[0];
        let yq = Requant {
            name: "yq".into(),
            terms: vec![RequantTerm {
                src: 3,
                mult: vec![ym; cout],
                real: vec![0.0; cout],
            }],
            bias: vec![0; cout],
            bias_real: vec![0.0; cout],
            format: FixedFormat::new(32, 16),
            shift: yshift,
            div: Div::Floor,
            lo: ylo,
            hi: yhi,
            output: 4,
            wide: false,
        };
        if let Layer::Requant(r) = &mut plan.layers[1] {
            let t = RequantTerm {
                src: 4,
                mult: m2,
                real: vec![0.0; cout],
            };
            if y_first {
                r.terms.insert(0, t);
            } else {
                r.terms.push(t);
            }
        }
        plan.layers.insert(0, Layer::Requant(yq));
        plan
    }

    /// A residual add fused into the conv before it (the second term in
    /// the kernels' epilogue, or the depthwise and wide convs' post-pass)
    /// against the conv and the two-term requantization run apart: every
    /// kernel family, rounding, clamp and term order, residuals at their
    /// bounds; the output and the accumulator statistics are identical.
    #[test]
    fn fused_residual_adds_match_the_separate_requantization() {
        crate::engine::isa::on_each(fused_residual_adds_match_the_separate_requantization_body);
    }

    fn fused_residual_adds_match_the_separate_requantization_body() {
        let mut rng = Rng(0x5bd1_e995);
        let (mut fused_layers, mut in_kernel) = (0, 0);
        for (case, &(dims, hw, in_bits)) in SHAPES.iter().enumerate() {
            let (cin, cout, k, _, _, groups) = dims;
            for (n, div) in DIVS.into_iter().enumerate() {
                for (shift, lo, hi, ylo, yhi) in [
                    (0, -128, 127, -128, 127),
                    (8, 0, 255, 0, 255),
                    (16, 0, 127, -128, 127),
                    (16, -128, 127, 0, 255),
                    (22, -128, 127, -128, 127),
                ] {
                    let fan_in = cin / groups * k * k;
                    let weights: Vec<i32> = (0..cout * fan_in)
                        .map(|_| rng.range(-128, 127) as i32)
                        .collect();
                    let mult = |rng: &mut Rng| -> Vec<i64> {
                        (0..cout)
                            .map(|c| match c % 4 {
                                0 => rng.range(1, 1 << 16),
                                1 => -rng.range(1, 1 << 16),
                                2 => rng.range(-(1 << 12), 1 << 12),
                                _ => rng.range(-3, 3),
                            })
                            .collect()
                    };
                    let (m, m2) = (mult(&mut rng), mult(&mut rng));
                    let bias: Vec<i64> =
                        (0..cout).map(|_| rng.range(-(1 << 20), 1 << 20)).collect();
                    let plan = residual_plan(
                        conv_plan(dims, hw, in_bits, weights, m, bias, (shift, div, lo, hi)),
                        (1 << 8, 8, ylo, yhi),
                        m2,
                        (case + n) % 2 == 0,
                    );
                    let w = Weights::new(&plan);
                    assert!(w.fused[0].is_none());
                    let fusable = w.fused[1].as_ref().is_some_and(|f| f.second.is_some());
                    fused_layers += usize::from(fusable);
                    let (mut plain, mut fused) = (Workspace::new(&plan), Workspace::new(&plan));
                    fused.fuse_requant(true);
                    let tag = format!("case {case} {dims:?} {div:?} shift {shift}");
                    for _ in 0..2 {
                        let input = conv_input(&mut rng, plan.tensors[0].len(), in_bits);
                        // Past the clamp of `y` on both sides, often.
                        let y0: Vec<i32> = (0..plan.tensors[3].len())
                            .map(|_| rng.range(2 * ylo - 9, 2 * yhi + 9) as i32)
                            .collect();
                        for ws in [&mut plain, &mut fused] {
                            ws.bufs[0] = Buf::I32(input.clone());
                            ws.bufs[3] = Buf::I32(y0.clone());
                        }
                        let sim = SimOptions::default();
                        run_image(&plan, &w, &[], &mut plain, &sim).unwrap();
                        run_image(&plan, &w, &[], &mut fused, &sim).unwrap();
                        let (a, b) = (plain.tensor(2).unwrap(), fused.tensor(2).unwrap());
                        assert_eq!(a.to_i64(), b.to_i64(), "{tag}");
                        assert_eq!(plain.stats, fused.stats, "{tag}");
                        if fusable && fused.tensor(1).is_none() {
                            in_kernel += 1;
                        }
                    }
                }
            }
        }
        assert!(
            fused_layers > 100,
            "only {fused_layers} residual adds fused"
        );
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(in_kernel > 100, "only {in_kernel} in the epilogue");
        }
    }

    /// A residual add is fused only where a requantization before the conv
    /// (and nothing else) writes its second term.
    #[test]
    fn residual_fusion_needs_a_clamped_second_term_written_before() {
        let base = || {
            residual_plan(
                conv_plan(
                    (4, 4, 1, 1, 0, 1),
                    [2, 8],
                    8,
                    vec![1; 16],
                    vec![3; 4],
                    vec![0; 4],
                    (4, Div::Trunc, -128, 127),
                ),
                (1 << 8, 8, -128, 127),
                vec![5; 4],
                false,
            )
        };
        let plan = base();
        assert!(plan_fusion(&plan, 1).is_some_and(|f| f.second.is_some()));
        // `y` written after the conv.
        let mut late = base();
        let yq = late.layers.remove(0);
        late.layers.insert(1, yq);
        assert!(plan_fusion(&late, 0).is_none());
        // `y` written by something other than a requantization.
        let mut unbounded = base();
        if let Layer::Requant(r) = &mut unbounded.layers[0] {
            r.output = 5;
        }
        unbounded.tensors.push(act("z", unbounded.tensors[4].shape));
        let pool = Layer::Pool(crate::plan::Pool {
            name: "p".into(),
            kind: crate::plan::PoolKind::Max {
                kernel: 1,
                stride: 1,
                padding: 0,
            },
            input: 5,
            output: 4,
            div: Div::Floor,
            sum_only: false,
        });
        unbounded.layers.insert(1, pool);
        assert!(plan_fusion(&unbounded, 2).is_none());
        // A bound so wide that the sums do not fit i32.
        let mut wide = base();
        if let Layer::Requant(r) = &mut wide.layers[0] {
            (r.lo, r.hi) = (-(1 << 30), 1 << 30);
        }
        assert!(plan_fusion(&wide, 1).is_none());
    }

    /// Two 1x1 convs in a row (`conv_plan`'s, then tensor 2 into 3 and 4)
    /// and, with `second`, another conv reading tensor 2 (into 5 and 6) of
    /// kernel `second_k`.
    fn chain_plan(
        (cin, mid, cout): (usize, usize, usize),
        hw: [usize; 2],
        second: Option<usize>,
        rng: &mut Rng,
        div: Div,
    ) -> IntPlan {
        let w = |rng: &mut Rng, n: usize| -> Vec<i32> {
            (0..n).map(|_| rng.range(-128, 127) as i32).collect()
        };
        let mult = |rng: &mut Rng, n: usize| -> Vec<i64> {
            (0..n).map(|_| rng.range(-(1 << 14), 1 << 14)).collect()
        };
        let bias = |rng: &mut Rng, n: usize| -> Vec<i64> {
            (0..n).map(|_| rng.range(-(1 << 20), 1 << 20)).collect()
        };
        let first = (mult(rng, mid), bias(rng, mid));
        let mut plan = conv_plan(
            (cin, mid, 1, 1, 0, 1),
            hw,
            8,
            w(rng, mid * cin),
            first.0,
            first.1,
            (12, div, -128, 127),
        );
        let mut follow = |plan: &mut IntPlan, k: usize, name: &str| {
            let c = layer(mid, cout, k, 1, k / 2, 1, hw, w(rng, cout * mid * k * k));
            let (m, b) = (mult(rng, cout), bias(rng, cout));
            append_conv(plan, c, name, 2, (m, b), None);
        };
        follow(&mut plan, 1, "b");
        if let Some(k) = second {
            follow(&mut plan, k, "c");
        }
        plan
    }

    /// Conv `c` of tensor `input` appended to `plan` with its accumulator
    /// and its requantization (`conv_plan`'s, with the multipliers and
    /// biases and, where given, the clamp `range`) as two new tensors.
    fn append_conv(
        plan: &mut IntPlan,
        mut c: crate::plan::ConvLayer,
        name: &str,
        input: usize,
        (mult, bias): (Vec<i64>, Vec<i64>),
        range: Option<(i64, i64)>,
    ) {
        let acc = plan.tensors.len();
        c.name = name.into();
        c.input = ConvInput::Tensor(input);
        c.output = acc;
        let [oh, ow] = c.out_hw;
        plan.tensors.push(TensorInfo {
            name: format!("{name}.acc"),
            shape: [c.cout, oh, ow],
            kind: TensorKind::Acc { scale: 1.0 },
            wide: false,
        });
        plan.tensors.push(act(name, [c.cout, oh, ow]));
        let Layer::Requant(mut q) = plan.layers[1].clone() else {
            unreachable!()
        };
        q.terms[0].src = acc;
        q.terms[0].mult = mult;
        q.bias = bias;
        if let Some((lo, hi)) = range {
            (q.lo, q.hi) = (lo, hi);
        }
        q.output = acc + 1;
        plan.layers.push(Layer::Conv(c));
        plan.layers.push(Layer::Requant(q));
    }

    /// A fused 1x1 conv whose output only 1x1 convs read writes it as
    /// their 16-bit operand, and they read it from there: the same outputs
    /// and statistics as unfused, on maps not a multiple of 8 and odd
    /// channel counts; with a 3 x 3 reader the rows are written instead.
    #[test]
    fn a_1x1_conv_hands_its_output_to_the_next_as_their_operand() {
        let avx2 = {
            #[cfg(target_arch = "x86_64")]
            {
                std::arch::is_x86_feature_detected!("avx2")
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        };
        let mut rng = Rng(0x0bad_cafe);
        for (dims, hw) in [
            ((6, 5, 7), [5, 13]),
            ((16, 16, 9), [8, 8]),
            ((3, 24, 4), [1, 3]),
        ] {
            for second in [None, Some(1), Some(3)] {
                for div in DIVS {
                    let plan = chain_plan(dims, hw, second, &mut rng, div);
                    let w = Weights::new(&plan);
                    let f = w.fused[0].as_ref().expect("fused");
                    assert_eq!(f.packed, avx2 && second != Some(3), "{dims:?} {second:?}");
                    let (mut plain, mut fused) = (Workspace::new(&plan), Workspace::new(&plan));
                    fused.fuse_requant(true);
                    let tag = format!("{dims:?} {hw:?} {second:?} {div:?}");
                    for _ in 0..2 {
                        let input = conv_input(&mut rng, plan.tensors[0].len(), 8);
                        plain.bufs[0] = Buf::I32(input.clone());
                        fused.bufs[0] = Buf::I32(input);
                        let sim = SimOptions::default();
                        run_image(&plan, &w, &[], &mut plain, &sim).unwrap();
                        run_image(&plan, &w, &[], &mut fused, &sim).unwrap();
                        assert_eq!(plain.stats, fused.stats, "{tag}");
                        for t in (4..plan.tensors.len()).step_by(2) {
                            let (a, b) = (plain.tensor(t).unwrap(), fused.tensor(t).unwrap());
                            assert_eq!(a.to_i64(), b.to_i64(), "{tag} tensor {t}");
                        }
                        let mid = fused.tensor(2).cloned().or(fused.unpacked(&plan, 2));
                        assert_eq!(fused.tensor(2).is_none(), f.packed, "{tag}");
                        let want = plain.tensor(2).unwrap().to_i64();
                        assert_eq!(mid.unwrap().to_i64(), want, "{tag}");
                    }
                    // Unfused again on the same workspace: rows written.
                    fused.fuse_requant(false);
                    run_image(&plan, &w, &[], &mut fused, &SimOptions::default()).unwrap();
                    assert!(fused.tensor(2).is_some(), "{tag}");
                }
            }
        }
    }

    /// Random 8-bit weights, multipliers and biases of the byte hand-off
    /// tests.
    fn bytes_w(rng: &mut Rng, n: usize) -> Vec<i32> {
        (0..n).map(|_| rng.range(-128, 127) as i32).collect()
    }

    fn bytes_mb(rng: &mut Rng, n: usize) -> (Vec<i64>, Vec<i64>) {
        let m = (0..n).map(|_| rng.range(1 << 8, 1 << 13)).collect();
        let b = (0..n).map(|_| rng.range(-(1 << 20), 1 << 20)).collect();
        (m, b)
    }

    /// The byte hand-off plan (a fused conv writing tensor 2, a reader
    /// writing tensor 4) run `rounds` times fused and unfused on random
    /// inputs: the same statistics and outputs, no rows of tensor 2 exactly
    /// where the fused conv wrote bytes (`bytes`, or the 16-bit operand),
    /// and those unpack to the unfused rows.
    fn assert_hands_over(plan: &IntPlan, bytes: bool, rounds: usize, rng: &mut Rng, tag: &str) {
        let weights = Weights::new(plan);
        let f = weights.fused[0].as_ref().expect("fused");
        let (mut plain, mut fused) = (Workspace::new(plan), Workspace::new(plan));
        fused.fuse_requant(true);
        for _ in 0..rounds {
            let input = conv_input(rng, plan.tensors[0].len(), 8);
            plain.bufs[0] = Buf::I32(input.clone());
            fused.bufs[0] = Buf::I32(input);
            let sim = SimOptions::default();
            run_image(plan, &weights, &[], &mut plain, &sim).unwrap();
            run_image(plan, &weights, &[], &mut fused, &sim).unwrap();
            assert_eq!(plain.stats, fused.stats, "{tag}");
            let want = plain.tensor(4).unwrap().to_i64();
            assert_eq!(fused.tensor(4).unwrap().to_i64(), want, "{tag}");
            assert_eq!(fused.tensor(2).is_none(), bytes || f.packed, "{tag}");
            let mid_t = fused.tensor(2).cloned().or(fused.unpacked(plan, 2));
            let want = plain.tensor(2).unwrap().to_i64();
            assert_eq!(mid_t.unwrap().to_i64(), want, "{tag}");
        }
    }

    /// A fused depthwise conv that the byte table runs writes its output as
    /// bytes `v + z` for its 1x1 readers where their 8-bit form runs them
    /// (AVX-512 VNNI or AMX): the same
    /// outputs and statistics as unfused, 3 x 3 at stride 1 and 2 on 16 x
    /// 16, 8 x 8 and 7 x 5 maps, both offsets (outputs in `-128..=127`,
    /// `0..=255` and `0..=15`), every rounding; the bytes unpack to the
    /// unfused rows. Without the table or AVX-512 VNNI: rows.
    #[test]
    fn a_depthwise_conv_hands_bytes_to_its_1x1_readers() {
        crate::engine::isa::on_each(|| {
            let mut rng = Rng(0xd3b7_b17e);
            let eight = crate::engine::isa::avx512_vnni();
            let mut wrote = 0;
            for (hw, mid) in [([16, 16], 24), ([8, 8], 40), ([7, 5], 9)] {
                for (lo, hi) in [(-128i64, 127i64), (0, 255), (0, 15)] {
                    for stride in [1, 2] {
                        for div in DIVS {
                            let (m0, b0) = bytes_mb(&mut rng, mid);
                            let mut plan = conv_plan(
                                (mid, mid, 3, stride, 1, mid),
                                hw,
                                8,
                                bytes_w(&mut rng, mid * 9),
                                m0,
                                b0,
                                (12, div, lo, hi),
                            );
                            let Layer::Conv(d) = &plan.layers[0] else {
                                unreachable!()
                            };
                            let (dhw, dshape) = (d.out_hw, d.clone());
                            // The reader: a 1x1 conv to 9 channels.
                            let mut c = layer(mid, 9, 1, 1, 0, 1, dhw, bytes_w(&mut rng, 9 * mid));
                            c.in_range = [lo, hi];
                            let mb = bytes_mb(&mut rng, 9);
                            append_conv(&mut plan, c, "r", 2, mb, Some((-128, 127)));
                            let f = plan_fusion(&plan, 0).expect("fused");
                            let z = if lo < 0 { 128 } else { 0 };
                            let table = crate::engine::depthwise_bytes::DwBytes::in_table(&dshape);
                            let bytes = eight && table;
                            let tag = format!("{hw:?} [{lo}, {hi}] s {stride} {div:?}");
                            assert_eq!(f.bytes, bytes.then_some(z), "{tag}");
                            wrote += bytes as usize;
                            assert_hands_over(&plan, bytes, 1, &mut rng, &tag);
                        }
                    }
                }
            }
            let vbmi = crate::engine::isa::avx512_vbmi();
            assert!(!vbmi || wrote >= 30, "{wrote} wrote bytes");
        });
    }

    /// A fused 1x1 conv whose readers all take 8-bit operands writes its
    /// output as bytes `v + z` where its 8-bit form runs it (AVX-512 VNNI or
    /// AMX), and they read them: the
    /// same outputs and statistics as unfused, with a 1x1 reader and
    /// depthwise 3 x 3 readers (stride 1 and 2, 16 x 16 and 24 x 19 maps;
    /// without the byte table, the 8 x 8 output is the lanes kernel's and
    /// 19 columns at stride 2 not the quad layout's, nor do its windows fit
    /// the table: rows there),
    /// both offsets (outputs in `-128..=127`, `0..=255` and `0..=15`), every
    /// rounding; and the bytes unpack to the unfused rows.
    #[test]
    fn a_1x1_conv_hands_bytes_to_its_8_bit_readers() {
        crate::engine::isa::on_each(a_1x1_conv_hands_bytes_to_its_8_bit_readers_body);
    }

    fn a_1x1_conv_hands_bytes_to_its_8_bit_readers_body() {
        let mut rng = Rng(0x5eed_b17e);
        let eight = crate::engine::isa::avx512_vnni();
        for (hw, cin, mid) in [([16, 16], 24, 40), ([24, 19], 7, 17)] {
            for (lo, hi) in [(-128i64, 127i64), (0, 255), (0, 15)] {
                for (k, stride) in [(1, 1), (3, 1), (3, 2)] {
                    for div in DIVS {
                        let (m0, b0) = bytes_mb(&mut rng, mid);
                        let mut plan = conv_plan(
                            (cin, mid, 1, 1, 0, 1),
                            hw,
                            8,
                            bytes_w(&mut rng, mid * cin),
                            m0,
                            b0,
                            (12, div, lo, hi),
                        );
                        // The reader: a 1x1 conv to 9 channels or a depthwise
                        // conv, its operand's range the clamp above.
                        let (cout, groups) = if k == 1 { (9, 1) } else { (mid, mid) };
                        let ws_n = cout * (mid / groups) * k * k;
                        let mut c = layer(
                            mid,
                            cout,
                            k,
                            stride,
                            k / 2,
                            groups,
                            hw,
                            bytes_w(&mut rng, ws_n),
                        );
                        c.in_range = [lo, hi];
                        let [oh, ow] = c.out_hw;
                        let mb = bytes_mb(&mut rng, cout);
                        append_conv(&mut plan, c, "r", 2, mb, Some((-128, 127)));
                        let f = plan_fusion(&plan, 0).expect("fused");
                        let z = if lo < 0 { 128 } else { 0 };
                        // The byte table (with AVX-512 VBMI) takes the
                        // shapes whose windows fit it; else the lanes kernel
                        // (8 x 8 outputs) takes rows, the quad layout no odd
                        // width at stride 2.
                        let shape = ConvShape::new(hw[0], hw[1], k, stride, k / 2, oh, ow);
                        let table = crate::engine::isa::avx512_vbmi()
                            && shape.and_then(|s| TableGeom::new(s, z)).is_some();
                        let quads = oh * ow > 64 && (stride == 1 || hw[1] % 2 == 0);
                        let bytes = eight && (k == 1 || table || quads);
                        assert_eq!(f.bytes, bytes.then_some(z), "{hw:?} {lo} {k}");
                        let tag = format!("{hw:?} [{lo}, {hi}] k {k} s {stride} {div:?}");
                        assert_hands_over(&plan, bytes, 2, &mut rng, &tag);
                    }
                }
            }
        }
    }

    /// A conv whose accumulator something else reads too, or whose
    /// requantization has two terms, is not fused.
    #[test]
    fn fusion_needs_the_only_reader() {
        let plan = conv_plan(
            (4, 4, 1, 1, 0, 1),
            [2, 8],
            8,
            vec![1; 16],
            vec![3; 4],
            vec![0; 4],
            (4, Div::Trunc, -128, 127),
        );
        assert!(plan_fusion(&plan, 0).is_some());
        assert!(plan_fusion(&plan, 1).is_none());
        let mut two = plan.clone();
        if let Layer::Requant(r) = &mut two.layers[1] {
            r.terms.push(r.terms[0].clone());
        }
        assert!(plan_fusion(&two, 0).is_none());
        let mut read = plan.clone();
        read.output.terms.push((1, vec![]));
        assert!(plan_fusion(&read, 0).is_none());
        let mut big = plan;
        if let Layer::Requant(r) = &mut big.layers[1] {
            r.terms[0].mult[0] = 1 << 40;
        }
        assert!(plan_fusion(&big, 0).is_none());
    }

    /// The two-term requantization in i32 (`run_requant2`) against
    /// `requant.rs` on random rows with accumulators up to the i32 extremes,
    /// every rounding, shifts 0 to 30, negative and large multipliers, and
    /// second terms whose range leaves some rows to the exact i64 loop.
    #[test]
    fn two_term_requantization_matches_requant_rs() {
        let mut rng = Rng(0x1234_5679);
        let (c, hw) = (6, [3, 7]);
        let len = c * hw[0] * hw[1];
        let (mut handled, mut total) = (0, 0);
        for shift in 0..=30u32 {
            for div in DIVS {
                for (lo, hi) in [(-128, 127), (0, 255), (-32768, 32767), (3, 9)] {
                    let mult = |rng: &mut Rng, big: bool| -> Vec<i64> {
                        (0..c)
                            .map(|_| match rng.next() % 4 {
                                0 => rng.range(-300, 300),
                                1 if big => rng.range(i32::MIN as i64, i32::MAX as i64),
                                _ => rng.range(-(1 << 23), 1 << 23),
                            })
                            .collect()
                    };
                    let (m0, m1) = (mult(&mut rng, true), mult(&mut rng, shift % 3 == 0));
                    let bias: Vec<i64> = (0..c).map(|_| rng.range(-(1 << 28), 1 << 28)).collect();
                    let mut plan = conv_plan(
                        (1, c, 1, 1, 0, 1),
                        hw,
                        8,
                        vec![1; c],
                        vec![1; c],
                        vec![0; c],
                        (shift, div, lo, hi),
                    );
                    plan.tensors[0] = act("y", [c, hw[0], hw[1]]);
                    plan.layers = vec![Layer::Requant(Requant {
                        name: "add".into(),
                        terms: vec![
                            RequantTerm {
                                src: 1,
                                mult: m0,
                                real: vec![0.0; c],
                            },
                            RequantTerm {
                                src: 0,
                                mult: m1,
                                real: vec![0.0; c],
                            },
                        ],
                        bias,
                        bias_real: vec![0.0; c],
                        format: FixedFormat::new(32, 16),
                        shift,
                        div,
                        lo,
                        hi,
                        output: 2,
                        wide: false,
                    })];
                    let x: Vec<i32> = (0..len)
                        .map(|_| match rng.next() % 6 {
                            0 => i32::MIN,
                            1 => i32::MAX,
                            2 => rng.next() as i32,
                            _ => rng.range(-(1 << 20), 1 << 20) as i32,
                        })
                        .collect();
                    let top = if rng.next().is_multiple_of(2) {
                        255
                    } else {
                        1 << 16
                    };
                    let y: Vec<i32> = (0..len).map(|_| rng.range(-top, top) as i32).collect();
                    let w = Weights::new(&plan);
                    let (mut plain, mut fast) = (Workspace::new(&plan), Workspace::new(&plan));
                    fast.fuse_requant(true);
                    for ws in [&mut plain, &mut fast] {
                        ws.bufs[0] = Buf::I32(y.clone());
                        ws.bufs[1] = Buf::I32(x.clone());
                        run_image(&plan, &w, &[], ws, &SimOptions::default()).unwrap();
                    }
                    total += 1;
                    let Layer::Requant(r) = &plan.layers[0] else {
                        unreachable!()
                    };
                    handled += usize::from(run_requant2(&plan, r, &mut fast));
                    assert_eq!(
                        plain.tensor(2).unwrap().to_i64(),
                        fast.tensor(2).unwrap().to_i64(),
                        "shift {shift} {div:?} [{lo}, {hi}]"
                    );
                }
            }
        }
        assert!(handled > total / 2, "{handled} of {total} in i32");
    }
}
