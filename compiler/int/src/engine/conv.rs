//! A conv layer: the element types the conv kernels compute in ([`Num`]),
//! the choice among the kernel families for each layer ([`run_conv`]), and
//! the accumulator statistics and simulated accumulator width.
//!
//! Which kernel runs (x86-64 with AVX2 detected at run time, else the plain
//! loops of the same files):
//! - the float input: the direct f64 kernel of [`super::float_stem`] for
//!   ungrouped stride-1 convs, else im2col and its f64 GEMM;
//! - i32 sums with 16-bit operands: the direct kernel of [`super::direct`]
//!   for ungrouped k x k convs with rows a multiple of 8 wide, else the
//!   `vpmaddwd` im2col/GEMM of [`super::gemm`];
//! - depthwise convs: with 16-bit operands and outputs of at most 8 x 8
//!   positions, [`super::depthwise_lanes`] (8 channels in the lanes of an
//!   AVX2 register, `vpmaddwd` on pairs of adjacent columns); else
//!   [`super::depthwise`] (with 16-bit operands the whole layer in AVX2
//!   `vpmaddwd` on i16 row pairs, `depthwise_madd`; else per channel, AVX2
//!   `vpmulld` on i32);
//! - everything else (i64 sums, wider operands): [`super::gemm::gemm`].
//!
//! [`run_conv_fused`] runs a conv together with the requantization after
//! it (`fused.rs`): the direct, multiply-add and depthwise lanes kernels
//! requantize in their epilogue, any other conv computes its sums as [`run_conv`] does and
//! then requantizes them in one pass per channel that also takes the
//! statistics.
//!
//! The only unsafe code here calls the depthwise AVX2 kernel (for `i32`)
//! and the AVX2 copy of [`abs_peak`], after checking for AVX2.

#[cfg(target_arch = "x86_64")]
use super::depthwise::depthwise_avx2_kernel;
use super::depthwise::{depthwise, depthwise16, depthwise_from, DwOut, Phased};
use super::depthwise_bytes::{depthwise_bytes, DwDst, DwIn};
use super::direct::{conv_direct_madd, direct_conv};
use super::float_stem::{conv_float_direct, gemm_f64, round_into, StemRound};
use super::fused::{requant_clamped, FusedRequant};
use super::gemm::{
    conv_im2col_madd, gemm, gemm_madd_with, im2col, madd_group_len, packed_len, Dst, Operand,
};
use super::{AccStats, Buf, OverflowMode, SimOptions, Weights, Workspace};
use crate::fixed::Rounding;
use crate::plan::{ConvInput, ConvLayer, IntPlan};

/// A number type the convs compute in (i32, i64 or f64).
pub(super) trait Num:
    Copy + Default + PartialEq + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
    /// A depthwise conv over a channel laid out by `depthwise_body` (in
    /// `depthwise.rs`): `out[oy][ox] = sum w[ky][kx] * x[oy*s + ky][ox*s +
    /// kx]` (see [`Phased`]). i32 takes an AVX2 kernel where the CPU has one.
    fn depthwise_phased(d: &Phased<Self>, w: &[Self], k: usize, out: &mut [Self], ow: usize) {
        depthwise_from(d, w, k, out, ow, 0);
    }
}
impl Num for i32 {
    fn depthwise_phased(d: &Phased<i32>, w: &[i32], k: usize, out: &mut [i32], ow: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            if d.holds(k, out.len() / ow.max(1), ow)
                && w.len() >= k * k
                && std::arch::is_x86_feature_detected!("avx2")
            {
                // SAFETY: the CPU has AVX2, `d` holds every tap of an
                // `out.len() / ow` x `ow` output and `w` has the k * k taps
                // (all checked just above): the kernel's `# Safety`.
                let done = unsafe { depthwise_avx2_kernel(d, w, k, out, ow) };
                depthwise_from(d, w, k, out, ow, done);
                return;
            }
        }
        depthwise_from(d, w, k, out, ow, 0);
    }
}
impl Num for i64 {}
impl Num for f64 {}

/// One conv over typed buffers (the input already converted to `T`).
/// `mm(w, m, k, col, p, out)` does the matrix products of grouped and 1x1
/// convolutions ([`gemm`], or [`gemm_madd`] on 16-bit operands).
/// The first argument is the group.
type MatMul<'a, T> = &'a mut dyn FnMut(usize, &[T], usize, usize, &[T], usize, &mut [T]);

fn conv_typed<T: Num>(
    l: &ConvLayer,
    input: &[T],
    w: &[T],
    col: &mut Vec<T>,
    out: &mut [T],
    mm: MatMul<T>,
) {
    let [ih, iw] = l.in_hw;
    let [oh, ow] = l.out_hw;
    let p = oh * ow;
    let cin_g = l.cin / l.groups;
    let cout_g = l.cout / l.groups;
    let kk = cin_g * l.kernel * l.kernel;
    if l.groups == l.cin && l.groups == l.cout {
        let k2 = l.kernel * l.kernel;
        for c in 0..l.cout {
            depthwise(
                &input[c * ih * iw..(c + 1) * ih * iw],
                ih,
                iw,
                &w[c * k2..(c + 1) * k2],
                l.kernel,
                l.stride,
                l.padding,
                &mut out[c * p..(c + 1) * p],
                oh,
                ow,
                col,
            );
        }
        return;
    }
    for g in 0..l.groups {
        let wg = &w[g * cout_g * kk..(g + 1) * cout_g * kk];
        let og = &mut out[g * cout_g * p..(g + 1) * cout_g * p];
        if l.kernel == 1 && l.stride == 1 && l.padding == 0 {
            mm(
                g,
                wg,
                cout_g,
                kk,
                &input[g * cin_g * p..(g + 1) * cin_g * p],
                p,
                og,
            );
        } else {
            im2col(input, ih, iw, g * cin_g, cin_g, l, col);
            mm(g, wg, cout_g, kk, col, p, og);
        }
    }
}

/// Whether 1x1 conv `l` takes its input tensor `t` as the 16-bit operand
/// the conv before it wrote (`Dst::Packed`, only where `t`'s rows were
/// not written).
fn takes_packed(ws: &Workspace, t: usize, l: &ConvLayer) -> bool {
    let p = l.out_hw[0] * l.out_hw[1];
    ws.stale[t]
        && pointwise_same(l)
        && fits16(l)
        && ws.acts16[t].len() >= packed_len(l.cin.div_ceil(2), p)
}

/// An ungrouped 1x1 conv, stride 1, no padding: a matrix product over the
/// map's positions.
fn pointwise_same(l: &ConvLayer) -> bool {
    l.kernel == 1 && l.stride == 1 && l.padding == 0 && l.groups == 1 && l.in_hw == l.out_hw
}

/// Tensor `t`'s rows (`l`'s input) from its 16-bit operand where only
/// that was written: never so for a plan's layers (the conv before wrote
/// the operand only because every reader takes it), but any layer that
/// reads rows calls this first.
fn restore_rows(ws: &mut Workspace, t: usize, l: &ConvLayer) {
    if !ws.stale[t] || !matches!(ws.bufs[t], Buf::I32(_)) {
        return;
    }
    let p = l.in_hw[0] * l.in_hw[1];
    let Buf::I32(mut rows) = std::mem::replace(&mut ws.bufs[t], Buf::I32(Vec::new())) else {
        return;
    };
    if rows.len() >= l.cin * p && ws.unpack_into(t, l.cin, p, &mut rows) {
        ws.stale[t] = false;
    }
    ws.bufs[t] = Buf::I32(rows);
}

/// Whether tensor `t` holds, instead of rows, bytes `v + z` with the offset
/// `z` of the 8-bit operand of the conv reading it (`Dst::Bytes`).
fn takes_bytes(ws: &Workspace, t: usize, z: Option<i32>) -> bool {
    ws.stale[t] && !ws.acts8[t].is_empty() && z == Some(ws.z8[t])
}

/// Whether the conv's operands go through the 16-bit kernels (the AVX2
/// multiply-add of i16 pairs): both fit i16 and are not both at -2^15,
/// whose pair sum would pass 2^31. The input's width is that of its actual
/// range (`in_bits`): a 16-bit unsigned or seed-pooled activation does not
/// fit i16.
pub(super) fn fits16(l: &ConvLayer) -> bool {
    l.in_bits <= 16 && l.w_bits <= 16 && (l.in_bits < 16 || l.w_bits < 16)
}

/// Runs conv layer `li` of `plan` (`l`) on the workspace's buffers (or on
/// `image`, for a conv of the float input), then records its accumulator
/// statistics and applies the simulated accumulator width of `sim`.
pub(super) fn run_conv(
    plan: &IntPlan,
    li: usize,
    l: &ConvLayer,
    image: &[f32],
    weights: &Weights,
    ws: &mut Workspace,
    sim: &SimOptions,
) {
    let mut out = std::mem::replace(&mut ws.bufs[l.output], Buf::I32(Vec::new()));
    conv_sums(plan, li, l, image, weights, ws, &mut out);
    ws.stale[l.output] = false;
    record(&mut ws.stats[li], sim, &mut out);
    ws.bufs[l.output] = out;
}

/// Conv layer `li`'s sums into `out` (its accumulator tensor, taken out of
/// the workspace).
fn conv_sums(
    plan: &IntPlan,
    li: usize,
    l: &ConvLayer,
    image: &[f32],
    weights: &Weights,
    ws: &mut Workspace,
    out: &mut Buf,
) {
    match (l.input, out) {
        (ConvInput::Float, out) => {
            let mut col = std::mem::take(&mut ws.colf);
            let mut o = std::mem::take(&mut ws.outf);
            o.resize(plan.tensors[l.output].len(), 0.0);
            if !conv_float_direct(l, image, &weights.wf[li], &mut col, &mut o) {
                let input: Vec<f64> = image.iter().map(|&x| x as f64).collect();
                conv_typed(
                    l,
                    &input,
                    &weights.wf[li],
                    &mut col,
                    &mut o,
                    &mut |_, w, m, k, c, p, o| gemm_f64(w, m, k, c, p, o),
                );
            }
            let mode = match plan.options.rounding {
                // The seed: `F.conv2d(...).long()` (`as` truncates).
                Rounding::Trunc => StemRound::Trunc,
                Rounding::Nearest | Rounding::Scaled => StemRound::Nearest(l.float_scale),
            };
            round_into(out, &o, mode, &mut ws.spare32, &mut ws.spare64);
            ws.colf = col;
            ws.outf = o;
        }
        (ConvInput::Tensor(t), Buf::I32(o)) => {
            if takes_packed(ws, t, l) {
                let (cin, p) = (l.cin, l.out_hw[0] * l.out_hw[1]);
                let operand = Operand::Packed(&ws.acts16[t]);
                let pairs = &weights.pairs[li];
                let dst = Dst::Rows(o);
                let bytes = weights.bytes[li].as_ref();
                if gemm_madd_with(
                    pairs,
                    bytes,
                    l.cout,
                    cin,
                    operand,
                    p,
                    dst,
                    &mut ws.packed,
                    None,
                ) {
                    return;
                }
            }
            let bytes = weights.bytes[li].as_ref();
            if pointwise_same(l) && takes_bytes(ws, t, bytes.map(|b| b.z)) {
                let p = l.out_hw[0] * l.out_hw[1];
                let (operand, dst) = (Operand::Bytes(&ws.acts8[t]), Dst::Rows(o));
                let pairs = &weights.pairs[li];
                if gemm_madd_with(
                    pairs,
                    bytes,
                    l.cout,
                    l.cin,
                    operand,
                    p,
                    dst,
                    &mut ws.packed,
                    None,
                ) {
                    return;
                }
            }
            restore_rows(ws, t, l);
            let mut col = std::mem::take(&mut ws.col32);
            let mut packed = std::mem::take(&mut ws.packed);
            let fits16 = fits16(l);
            let pairs = &weights.pairs[li];
            let mut packed2 = std::mem::take(&mut ws.packed2);
            // The 8-bit form: ungrouped 1x1 convs only (`Weights::bytes`).
            let bytes = weights.bytes[li].as_ref().filter(|_| l.groups == 1);
            let mut fast =
                |g: usize, w: &[i32], m: usize, k: usize, c: &[i32], p: usize, out: &mut [i32]| {
                    let per_group = madd_group_len(m, k);
                    let wp = pairs.get(g * per_group..(g + 1) * per_group).unwrap_or(&[]);
                    let (col, dst) = (Operand::Rows(c), Dst::Rows(out));
                    if !(fits16
                        && wp.len() == per_group
                        && gemm_madd_with(wp, bytes, m, k, col, p, dst, &mut packed, None))
                    {
                        gemm(w, m, k, c, p, out)
                    }
                };
            let depthwise = l.groups == l.cin && l.groups == l.cout;
            let pointwise = l.kernel == 1 && l.stride == 1 && l.padding == 0;
            let mut rows = std::mem::take(&mut ws.rows);
            let [ih, iw] = l.in_hw;
            let [oh, ow] = l.out_hw;
            let done = match &ws.bufs[t] {
                Buf::I32(input) if fits16 && depthwise => {
                    let (c, w, k, s, pad) =
                        (l.cout, &weights.w32[li], l.kernel, l.stride, l.padding);
                    depthwise16(
                        input,
                        c,
                        ih,
                        iw,
                        w,
                        weights.dw_bytes[li].as_ref(),
                        k,
                        s,
                        pad,
                        DwOut::Rows(o),
                        oh,
                        ow,
                        &mut col,
                        None,
                    )
                }
                Buf::I32(input) if fits16 && direct_conv(l) => {
                    conv_direct_madd(l, input, &weights.dpairs[li], &mut packed2, o, None)
                }
                Buf::I32(input) if fits16 && !depthwise && !pointwise => {
                    conv_im2col_madd(l, input, pairs, &mut packed2, &mut rows, o, None)
                }
                _ => false,
            };
            ws.rows = rows;
            match &ws.bufs[t] {
                _ if done => {}
                Buf::I32(input) => conv_typed(l, input, &weights.w32[li], &mut col, o, &mut fast),
                Buf::I64(input) => {
                    let input: Vec<i32> = input.iter().map(|&x| x as i32).collect();
                    conv_typed(l, &input, &weights.w32[li], &mut col, o, &mut fast)
                }
            }
            ws.col32 = col;
            ws.packed = packed;
            ws.packed2 = packed2;
        }
        (ConvInput::Tensor(t), Buf::I64(o)) => {
            restore_rows(ws, t, l);
            let mut col = std::mem::take(&mut ws.col64);
            let input: Vec<i64> = ws.bufs[t].to_i64();
            conv_typed(
                l,
                &input,
                &weights.w64[li],
                &mut col,
                o,
                &mut |_, w, m, k, c, p, o| gemm(w, m, k, c, p, o),
            );
            ws.col64 = col;
        }
    }
}

/// Records a conv's accumulator statistics in `st` and applies the
/// simulated accumulator width of `sim` to its sums `out`.
fn record(st: &mut AccStats, sim: &SimOptions, out: &mut Buf) {
    let (min, max) = match sim.acc_bits {
        Some(b) if b < 64 => (-(1i64 << (b - 1)), (1i64 << (b - 1)) - 1),
        _ => (i64::MIN, i64::MAX),
    };
    let fast = sim.acc_bits.is_none();
    let mut apply = |x: i64| -> i64 {
        st.max_abs = st.max_abs.max(x.saturating_abs());
        if x < min || x > max {
            st.overflows += 1;
            match sim.overflow {
                OverflowMode::Saturate => x.clamp(min, max),
                OverflowMode::Wrap => {
                    let b = 64 - sim.acc_bits.unwrap_or(64);
                    (x << b) >> b
                }
            }
        } else {
            x
        }
    };
    match out {
        Buf::I32(v) if fast => {
            // No width to simulate: only the largest value (vectorised).
            st.values += v.len() as u64;
            let m = max_abs(v);
            st.max_abs = st.max_abs.max(m as i64);
        }
        Buf::I32(v) => {
            st.values += v.len() as u64;
            for x in v.iter_mut() {
                *x = apply(*x as i64) as i32;
            }
        }
        Buf::I64(v) if fast => {
            st.values += v.len() as u64;
            let m = v.iter().fold(0u64, |m, &x| m.max(x.unsigned_abs()));
            st.max_abs = st.max_abs.max(m.min(i64::MAX as u64) as i64);
        }
        Buf::I64(v) => {
            st.values += v.len() as u64;
            for x in v.iter_mut() {
                *x = apply(*x);
            }
        }
    }
}

/// Conv layer `li` (`l`, a conv of integers) and the requantization after
/// it (`f`, see `fused.rs`) in one: the direct, multiply-add and depthwise
/// lanes kernels requantize in their epilogue and leave the accumulator
/// tensor unwritten (marked stale); any other kernel (larger depthwise
/// maps, wider operands, no AVX2) computes the sums as [`run_conv`] does, then
/// [`requant_clamped`] takes their statistics and requantizes them row by
/// row. The statistics are those of [`run_conv`] without a simulated
/// width (the caller fuses only then).
pub(super) fn run_conv_fused(
    plan: &IntPlan,
    li: usize,
    l: &ConvLayer,
    image: &[f32],
    weights: &Weights,
    ws: &mut Workspace,
    f: &FusedRequant,
) {
    let mut out = match std::mem::replace(&mut ws.bufs[f.output], Buf::I32(Vec::new())) {
        Buf::I32(v) => v,
        Buf::I64(v) => v.into_iter().map(|x| x as i32).collect(),
    };
    let p = l.out_hw[0] * l.out_hw[1];
    // The second term's tensor (`FusedRequant::ready` checked it is i32).
    fn second<'a>(f: &FusedRequant, bufs: &'a [Buf]) -> Option<&'a [i32]> {
        match f.second.as_ref().map(|s| &bufs[s.src]) {
            Some(Buf::I32(y)) => Some(y.as_slice()),
            _ => None,
        }
    }
    let fits16 = fits16(l);
    let depthwise = l.groups == l.cin && l.groups == l.cout;
    let pointwise = l.kernel == 1 && l.stride == 1 && l.padding == 0;
    let pairs = &weights.pairs[li];
    // The input as the 16-bit operand the conv before left (else its rows),
    // the output as the next 1x1 convs' operand where they all take it.
    // Or as the bytes the conv before wrote, where this conv's 8-bit
    // operand has their offset (an ungrouped 1x1 conv or a depthwise one).
    let bytes_z = match depthwise {
        true => weights.dw_bytes[li].as_ref().map(|b| b.offset()),
        false => weights.bytes[li].as_ref().map(|b| b.z),
    };
    let bytes_in = match l.input {
        ConvInput::Tensor(t) => (depthwise || pointwise_same(l)) && takes_bytes(ws, t, bytes_z),
        ConvInput::Float => false,
    };
    let packed_in = match l.input {
        ConvInput::Tensor(t) if takes_packed(ws, t, l) => true,
        ConvInput::Tensor(_) if bytes_in => false,
        ConvInput::Tensor(t) => {
            restore_rows(ws, t, l);
            false
        }
        ConvInput::Float => false,
    };
    // The output as bytes for the next convs where the 8-bit kernel (AVX-512
    // VNNI or AMX) runs this one with a one-term epilogue in i32 lanes (else
    // as planned below).
    let eight_out = pointwise_same(l)
        && super::isa::avx512_vnni()
        && weights.bytes[li].is_some()
        && f.second.is_none()
        && !f.wide;
    // Or where the byte table runs this depthwise conv with such an
    // epilogue.
    let table_out = depthwise
        && weights.dw_bytes[li].as_ref().is_some_and(|b| b.table())
        && f.second.is_none()
        && !f.wide;
    let mut bytes_out = f.bytes.filter(|_| eight_out || table_out).map(|z| {
        let mut b = std::mem::take(&mut ws.acts8[f.output]);
        b.resize(l.cout * p, 0);
        (b, z)
    });
    // Sized for the output as the next 1x1 convs' operand (every word is
    // written: no clearing).
    let mut packed_out = (f.packed && bytes_out.is_none()).then(|| {
        let mut pk = std::mem::take(&mut ws.acts16[f.output]);
        pk.resize(packed_len(l.cout.div_ceil(2), p), 0);
        pk
    });
    let mut wrote_packed = false;
    let mut wrote_bytes = false;
    let [oh, ow] = l.out_hw;
    // A depthwise conv of bytes, or writing bytes: the 8-bit kernel (one
    // term; where it declines, the rows are restored for the paths below,
    // which write rows).
    let (mut dw_done, mut dw_peak) = (false, 0);
    if let (true, ConvInput::Tensor(t), Some(wb), None, None) = (
        depthwise,
        l.input,
        weights.dw_bytes[li].as_ref(),
        packed_out.as_ref(),
        f.second.as_ref(),
    ) {
        let input = match &ws.bufs[t] {
            _ if bytes_in => Some(DwIn::Bytes(&ws.acts8[t])),
            Buf::I32(v) if bytes_out.is_some() => Some(DwIn::Rows(v)),
            _ => None,
        };
        if let Some(input) = input {
            let mut e = f.epilogue(None, p);
            let dst = match bytes_out.as_mut() {
                Some((b, z)) => DwDst::Bytes(b, *z),
                None => DwDst::Rows(&mut out),
            };
            dw_done = depthwise_bytes(
                input,
                l.cout,
                l.in_hw[0],
                l.in_hw[1],
                wb,
                l.kernel,
                l.stride,
                l.padding,
                dst,
                oh,
                ow,
                &mut ws.col32,
                Some(&mut e),
            );
            dw_peak = e.peak;
            wrote_bytes = dw_done && bytes_out.is_some();
        }
        if bytes_in && !dw_done {
            restore_rows(ws, t, l);
        }
    }
    let mut epi = f.epilogue(second(f, &ws.bufs), p);
    epi.peak = epi.peak.max(dw_peak);
    let done = match (l.input, fits16 && !depthwise) {
        _ if dw_done => true,
        // Depthwise convs with 16-bit operands (`depthwise16`: channels in
        // the lanes, or per channel), the sums requantized as they are
        // made (declines, for the post-pass below, without AVX2 or on
        // shapes no path takes). With `f.packed`, the output as the next
        // 1x1 convs' operand.
        (ConvInput::Tensor(t), false) if fits16 && depthwise => match &ws.bufs[t] {
            Buf::I32(input) => {
                let dst = match packed_out.as_mut() {
                    Some(pk) => DwOut::Packed(pk),
                    None => DwOut::Rows(&mut out),
                };
                let ran = depthwise16(
                    input,
                    l.cout,
                    l.in_hw[0],
                    l.in_hw[1],
                    &weights.w32[li],
                    weights.dw_bytes[li].as_ref(),
                    l.kernel,
                    l.stride,
                    l.padding,
                    dst,
                    oh,
                    ow,
                    &mut ws.col32,
                    Some(&mut epi),
                );
                wrote_packed = ran && packed_out.is_some();
                ran
            }
            Buf::I64(_) => false,
        },
        (ConvInput::Tensor(t), true)
            if pointwise
                && l.groups == 1
                && (packed_in || bytes_in || packed_out.is_some() || bytes_out.is_some()) =>
        {
            let operand = match &ws.bufs[t] {
                _ if packed_in => Some(Operand::Packed(&ws.acts16[t])),
                _ if bytes_in => Some(Operand::Bytes(&ws.acts8[t])),
                Buf::I32(v) => Some(Operand::Rows(v)),
                Buf::I64(_) => None,
            };
            let dst = match (bytes_out.as_mut(), packed_out.as_mut()) {
                (Some((b, z)), _) => Dst::Bytes(b, *z),
                (None, Some(pk)) => Dst::Packed(pk),
                (None, None) => Dst::Rows(&mut out),
            };
            let ran = operand.is_some_and(|operand| {
                let (m, k) = (l.cout, l.cin);
                let bytes = weights.bytes[li].as_ref();
                gemm_madd_with(
                    pairs,
                    bytes,
                    m,
                    k,
                    operand,
                    p,
                    dst,
                    &mut ws.packed,
                    Some(&mut epi),
                )
            });
            wrote_packed = ran && packed_out.is_some();
            wrote_bytes = ran && bytes_out.is_some();
            ran
        }
        (ConvInput::Tensor(t), true) => match &ws.bufs[t] {
            Buf::I32(input) if direct_conv(l) => conv_direct_madd(
                l,
                input,
                &weights.dpairs[li],
                &mut ws.packed2,
                &mut out,
                Some(&mut epi),
            ),
            Buf::I32(input) if !pointwise => conv_im2col_madd(
                l,
                input,
                pairs,
                &mut ws.packed2,
                &mut ws.rows,
                &mut out,
                Some(&mut epi),
            ),
            Buf::I32(input) => {
                let (cin_g, cout_g) = (l.cin / l.groups, l.cout / l.groups);
                let per_group = madd_group_len(cout_g, cin_g);
                // All groups or none: each declines only without AVX2 or
                // on shapes that are the same for every group.
                (0..l.groups).all(|g| {
                    let mut ge = epi.rows_from(g * cout_g);
                    let ran = pairs.len() == l.groups * per_group
                        && input.len() >= l.cin * p
                        && gemm_madd_with(
                            &pairs[g * per_group..(g + 1) * per_group],
                            // The 8-bit form: ungrouped 1x1 convs only.
                            weights.bytes[li].as_ref().filter(|_| l.groups == 1),
                            cout_g,
                            cin_g,
                            Operand::Rows(&input[g * cin_g * p..(g + 1) * cin_g * p]),
                            p,
                            Dst::Rows(&mut out[g * cout_g * p..(g + 1) * cout_g * p]),
                            &mut ws.packed,
                            Some(&mut ge),
                        );
                    epi.peak = epi.peak.max(ge.peak);
                    ran
                })
            }
            Buf::I64(_) => false,
        },
        _ => false,
    };
    let mut peak = epi.peak;
    if done {
        ws.stale[l.output] = true;
    } else {
        let mut acc = std::mem::replace(&mut ws.bufs[l.output], Buf::I32(Vec::new()));
        conv_sums(plan, li, l, image, weights, ws, &mut acc);
        let mut epi = f.epilogue(second(f, &ws.bufs), p);
        match &acc {
            Buf::I32(v) => requant_clamped(v, p, &mut epi, &mut out),
            // Never so: `plan_fusion` takes only 32-bit accumulators.
            Buf::I64(_) => unreachable!("fused conv with a wide accumulator"),
        }
        peak = epi.peak;
        ws.bufs[l.output] = acc;
        ws.stale[l.output] = false;
    }
    let st = &mut ws.stats[li];
    st.values += (l.cout * p) as u64;
    st.max_abs = st.max_abs.max(peak as i64);
    if let Some(pk) = packed_out {
        ws.acts16[f.output] = pk;
    }
    if let Some((b, z)) = bytes_out {
        ws.acts8[f.output] = b;
        ws.z8[f.output] = z;
    }
    // Only the form written is kept.
    if !wrote_bytes {
        ws.acts8[f.output].clear();
    }
    if !wrote_packed {
        ws.acts16[f.output].clear();
    }
    ws.bufs[f.output] = Buf::I32(out);
    // Written as the next convs' operand only: no rows.
    ws.stale[f.output] = wrote_packed || wrote_bytes;
}

/// Largest |x| (vectorised; AVX2 where the CPU has it).
fn max_abs(v: &[i32]) -> u32 {
    /// [`abs_peak`] compiled with AVX2.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 (the body is safe Rust).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(v: &[i32]) -> u32 {
        abs_peak(v)
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { avx2(v) };
        }
    }
    abs_peak(v)
}

/// Largest |x|, inlined into its caller (so vectorised with its features).
#[inline(always)]
pub(super) fn abs_peak(v: &[i32]) -> u32 {
    v.iter().fold(0u32, |m, x| m.max(x.unsigned_abs()))
}

/// Plans and conv layers for the engine's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::plan::{ConvInput, ConvLayer, IntPlan};

    /// A plan with nothing in it, for tests to fill (`..test_plan()`).
    pub(crate) fn test_plan() -> IntPlan {
        IntPlan {
            model: String::new(),
            profile: String::new(),
            options: Default::default(),
            input_shape: [0; 3],
            tensors: vec![],
            layers: vec![],
            output: crate::plan::OutputLayer {
                terms: vec![],
                bias: vec![],
                terms_f32: vec![],
                bias_f32: vec![],
                classes: 0,
                seed_linear: vec![],
            },
            node_tensors: Default::default(),
            clips: Default::default(),
            saturated: vec![],
            folded: vec![],
        }
    }

    /// A test layer: `cin -> cout`, k x k, on an `ih x iw` map, 8-bit operands,
    /// reading tensor 0 into tensor 1.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
        [ih, iw]: [usize; 2],
        weights: Vec<i32>,
    ) -> ConvLayer {
        let oh = (ih + 2 * pad - k) / stride + 1;
        let ow = (iw + 2 * pad - k) / stride + 1;
        ConvLayer {
            name: "t".into(),
            input: ConvInput::Tensor(0),
            output: 1,
            cin,
            cout,
            kernel: k,
            stride,
            padding: pad,
            groups,
            in_hw: [ih, iw],
            out_hw: [oh, ow],
            weights,
            w_bits: 8,
            w_scale: 127.0,
            a_bits: 8,
            in_bits: 8,
            in_range: [-128, 127],
            float_scale: 1.0,
            fan_in: cin / groups * k * k,
            worst_bits: None,
            worst_bits_weights: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{layer, test_plan};
    use super::*;
    use crate::engine::gemm::gemm_madd;
    use crate::engine::gemm::madd_weights;
    use crate::plan::Layer;

    fn naive_conv(l: &ConvLayer, input: &[i32]) -> Vec<i32> {
        let [ih, iw] = l.in_hw;
        let [oh, ow] = l.out_hw;
        let (cin_g, cout_g, k) = (l.cin / l.groups, l.cout / l.groups, l.kernel);
        let mut out = vec![0; l.cout * oh * ow];
        for o in 0..l.cout {
            let g = o / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0;
                    for c in 0..cin_g {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * l.stride + ky) as isize - l.padding as isize;
                                let ix = (ox * l.stride + kx) as isize - l.padding as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < ih && (ix as usize) < iw {
                                    acc += l.weights[((o * cin_g + c) * k + ky) * k + kx]
                                        * input[((g * cin_g + c) * ih + iy as usize) * iw
                                            + ix as usize];
                                }
                            }
                        }
                    }
                    out[(o * oh + oy) * ow + ox] = acc;
                }
            }
        }
        out
    }

    /// The 16-bit kernels (direct, im2col and 1x1 multiply-add) against the
    /// naive conv on edge values: activations at 255 and -256 (nine bits),
    /// weights at -128 and 127 (a `vpmaddwd` pair of both at the extremes),
    /// channel counts that leave partial blocks of eight, strides 1 to 3,
    /// maps of one to five vectors per row and position counts not a
    /// multiple of 8 (the kernels' tails). Without AVX2 every kernel must
    /// decline (the caller then runs the plain loops).
    #[test]
    fn madd_kernels_match_naive_on_edge_values() {
        crate::engine::isa::on_each(madd_kernels_match_naive_on_edge_values_body);
    }

    fn madd_kernels_match_naive_on_edge_values_body() {
        let mut seed = 0x9e37_79b9_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for range in 0..3 {
            for (cin, cout, k, stride, pad, hw) in [
                (3, 5, 3, 1, 1, [5, 8]),
                (16, 16, 3, 1, 1, [9, 24]),
                (7, 12, 3, 2, 1, [11, 16]),
                (16, 17, 3, 1, 1, [3, 40]),
                (2, 9, 2, 2, 0, [6, 32]),
                // The AMX tiles' shapes: chunks of rows (72 channels at
                // stride 1: 54 rows of kernel row and quad, four chunks of
                // 14, the last reaching past the layout into its slack; at
                // stride 2 two of nine quads), two and one tiles of
                // channels, 16 and 8 positions per tile, an odd count of
                // tiles.
                (72, 40, 3, 1, 1, [5, 16]),
                (20, 33, 3, 2, 1, [10, 16]),
                (72, 20, 3, 2, 1, [8, 32]),
                (64, 64, 3, 1, 1, [8, 8]),
                (12, 16, 3, 1, 1, [3, 24]),
                (5, 4, 5, 1, 2, [4, 8]),
                (8, 13, 1, 1, 0, [5, 13]),
                (9, 20, 1, 1, 0, [3, 7]),
                (6, 3, 3, 3, 1, [7, 46]),
                (4, 8, 3, 2, 0, [5, 17]),
                (3, 8, 5, 3, 2, [4, 23]),
                // 1x1 stride 2: the shortcut fast path (even maps, output rows
                // a multiple of 8 wide; an odd channel count), and a map it
                // does not take.
                (16, 32, 1, 2, 0, [8, 32]),
                (5, 9, 1, 2, 0, [5, 16]),
                (4, 6, 1, 2, 0, [6, 17]),
                // 2x2 stride 2: packed straight from the image (an odd row
                // left over), and a width it does not take.
                (3, 8, 2, 2, 0, [7, 16]),
                (4, 5, 2, 2, 0, [4, 12]),
            ] {
                let fan_in = cin * k * k;
                let pick = |r: u32, a: i32, b: i32, mid: i32| match r % 4 {
                    0 => a,
                    1 => b,
                    _ => (r as i32 >> 3).rem_euclid(mid) - mid / 2,
                };
                let weights: Vec<i32> = (0..cout * fan_in)
                    .map(|_| pick(next(), -128, 127, 255))
                    .collect();
                // Nine-bit inputs (16-bit kernels), and inputs that fit the
                // 8-bit kernels (signed, offset by 128, and unsigned), one
                // range per case in turn.
                let (lo, hi, in_bits) = [(-256, 255, 9), (-128, 127, 8), (0, 255, 9)][range];
                let l = ConvLayer {
                    in_bits,
                    in_range: [lo as i64, hi as i64],
                    ..layer(cin, cout, k, stride, pad, 1, hw, weights.clone())
                };
                let input: Vec<i32> = (0..cin * hw[0] * hw[1])
                    .map(|_| match next() {
                        r if r % 4 == 0 => hi,
                        r if r % 4 == 1 => lo,
                        r => lo + (r >> 3) as i32 % (hi - lo + 1),
                    })
                    .collect();
                let want = naive_conv(&l, &input);
                let w = Weights::new(&IntPlan {
                    layers: vec![Layer::Conv(l.clone())],
                    ..test_plan()
                });
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
                let tag = format!("{cin}->{cout} k{k} s{stride} p{pad} {hw:?} in {lo}..={hi}");
                if direct_conv(&l) {
                    let mut out = vec![i32::MIN; want.len()];
                    // A layout buffer left dirty by a larger conv.
                    let mut dirty = vec![-1; 1 << 16];
                    let ran =
                        conv_direct_madd(&l, &input, &w.dpairs[0], &mut dirty, &mut out, None);
                    assert_eq!(ran, avx2, "direct {tag}");
                    if ran {
                        assert_eq!(out, want, "direct {tag}");
                    }
                }
                let pairs = madd_weights(&weights, 1, cout, fan_in);
                let mut out = vec![i32::MIN; want.len()];
                if k == 1 && stride == 1 && pad == 0 {
                    let ran = gemm_madd(
                        &pairs,
                        cout,
                        fan_in,
                        &input,
                        hw[0] * hw[1],
                        &mut out,
                        // A buffer left dirty by a larger conv.
                        &mut vec![-1; 1 << 14],
                        None,
                    );
                    assert_eq!(ran, avx2, "1x1 {tag}");
                    if ran {
                        assert_eq!(out, want, "1x1 {tag}");
                    }
                } else {
                    let (mut p, mut rows) = (vec![-1; 1 << 14], Vec::new());
                    let ran =
                        conv_im2col_madd(&l, &input, &pairs, &mut p, &mut rows, &mut out, None);
                    assert_eq!(ran, avx2, "im2col {tag}");
                    if ran {
                        assert_eq!(out, want, "im2col {tag}");
                    }
                }
            }
        }
    }

    #[test]
    fn grouped_strided_padded_conv_matches_naive() {
        crate::engine::isa::on_each(grouped_strided_padded_conv_matches_naive_body);
    }

    fn grouped_strided_padded_conv_matches_naive_body() {
        for (cin, cout, k, stride, pad, groups) in [
            (4, 6, 3, 2, 1, 2),
            (3, 5, 3, 1, 1, 1),
            (4, 4, 2, 2, 0, 1),
            (6, 9, 1, 1, 0, 3),
            (5, 16, 3, 2, 1, 1),
            (6, 10, 3, 1, 1, 1),
            (2, 3, 5, 1, 2, 1),
            (4, 8, 3, 1, 0, 1),
            (16, 17, 3, 1, 1, 1),
        ] {
            let (ih, iw) = (7, 16);
            let fan_in = cin / groups * k * k;
            let weights: Vec<i32> = (0..cout * fan_in)
                .map(|i| (i as i32 * 37 % 255) - 127)
                .collect();
            let l = layer(cin, cout, k, stride, pad, groups, [ih, iw], weights.clone());
            let input: Vec<i32> = (0..cin * ih * iw)
                .map(|i| (i as i32 * 53 % 255) - 128)
                .collect();
            let want = naive_conv(&l, &input);
            let mut col = Vec::new();
            let mut out = vec![0; want.len()];
            conv_typed(
                &l,
                &input,
                &weights,
                &mut col,
                &mut out,
                &mut |_, w, m, k, c, p, o| gemm(w, m, k, c, p, o),
            );
            assert_eq!(
                out, want,
                "plain {cin} {cout} k{k} s{stride} p{pad} g{groups}"
            );
            // The 16-bit multiply-add path, with its weight pairs.
            let pairs = madd_weights(&weights, groups, cout / groups, fan_in);
            let mut packed = Vec::new();
            let mut out2 = vec![0; want.len()];
            conv_typed(
                &l,
                &input,
                &weights,
                &mut col,
                &mut out2,
                &mut |g, w, m, k, c, p, o| {
                    let per_group = madd_group_len(m, k);
                    if !gemm_madd(
                        &pairs[g * per_group..(g + 1) * per_group],
                        m,
                        k,
                        c,
                        p,
                        o,
                        &mut packed,
                        None,
                    ) {
                        gemm(w, m, k, c, p, o)
                    }
                },
            );
            assert_eq!(
                out2, want,
                "madd {cin} {cout} k{k} s{stride} p{pad} g{groups}"
            );
            // im2col straight into i16 pairs (what non-1x1 convs take).
            let mut out3 = vec![0; want.len()];
            let (mut p2, mut rows) = (Vec::new(), Vec::new());
            if direct_conv(&l) {
                let w = Weights::new(&IntPlan {
                    layers: vec![Layer::Conv(l.clone())],
                    ..test_plan()
                });
                let mut out4 = vec![0; want.len()];
                let mut padded = Vec::new();
                let ran = conv_direct_madd(&l, &input, &w.dpairs[0], &mut padded, &mut out4, None);
                if ran {
                    assert_eq!(out4, want, "direct {cin} {cout} k{k} p{pad}");
                }
                #[cfg(target_arch = "x86_64")]
                assert!(
                    ran || !std::arch::is_x86_feature_detected!("avx2"),
                    "direct kernel refused"
                );
            }
            if conv_im2col_madd(&l, &input, &pairs, &mut p2, &mut rows, &mut out3, None) {
                assert_eq!(
                    out3, want,
                    "fused {cin} {cout} k{k} s{stride} p{pad} g{groups}"
                );
            }
        }
    }
}
