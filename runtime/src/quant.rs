//! Fake quantizers of the seed (its section 1), as tch ops with the seed's
//! exact forward values and gradients.
//!
//! Input: float tensors (weights or activations) and a bit-width `bits`;
//! `bits == 32` ([`FLOAT_BITS`]) always means "not quantized" and returns the
//! input unchanged. Output: a tensor of the same shape whose value is the
//! quantized tensor and whose gradient is the seed's.
//!
//! Invariants, checked against the golden tensors of the seed's PyTorch code
//! (`tests/golden_quantizers.rs`):
//! - Gradients come from autograd on ordinary differentiable ops: a
//!   straight-through estimator gives the value of the quantized `q` and
//!   the gradient of a "gradient carrier" `c` (see "Fast paths" for how).
//! - PACT and mPACT have hand-written backward rules in the seed
//!   (`dx = g*[0 <= x <= a]`, `da = sum(g*[x >= a])`, ties included on both
//!   sides); their carriers are `x * mask + a * mask'` with detached masks, so
//!   autograd reproduces those rules exactly, including at `x == a`, where
//!   `clamp`'s own gradient would not.
//! - Scales are computed the way the seed's PyTorch code evaluates
//!   `(2**k - 1) / alpha`: `alpha.reciprocal() * (2**k - 1)`. A true division
//!   differs in the last bit on a few percent of the elements.
//! - Only `alpha`'s value enters the quantization grid; its gradient is the
//!   seed's rule above, not the derivative of the grid.
//!
//! # Fast paths
//!
//! [`reference`](mod@reference) holds the quantizers as first written, op by op: the STE is
//! `q.detach() + (c - c.detach())` (the carrier's value cancels exactly, so
//! the value is `q` bit for bit; `c + (q - c).detach()` would be one ulp off
//! at times). On a CPU the cost of these quantizers is the number of
//! element-wise passes over an activation tensor (and fresh allocations),
//! not their arithmetic; comparisons into `bool` tensors, `where` and
//! mixed-kind products are several times slower than float ops of the same
//! size because libtorch does not vectorise them. The reference mPACT makes
//! about 18 passes forward, several of them of that slow kind, plus
//! `clamp`'s backward; `examples/quant_cost.rs` times each quantizer against
//! a conv, and `docs/performance.md` has the numbers.
//!
//! On CPU float tensors, DoReFa activations, PACT and mPACT run as one
//! libtorch autograd function each, written in C++ (`csrc/fused_quant.cpp`,
//! compiled by `build.rs`; Rust side in `quant/fused.rs`): forward is one
//! pass that writes `q` and a one-byte code per element (inside the clipping
//! range, clipped above, clipped below), backward one pass that writes
//! `dx = g * inside` and sums `dalpha`, both vectorised for AVX2 with a
//! scalar fallback. Values and `dx` are the stock ops' bit for bit (same
//! float operations in the same order, no FMA contraction); `dalpha` is the
//! same sum in another order (float lanes flushed into doubles), equal within
//! float rounding. On other devices and kinds (CUDA, f64), where
//! [`set_fused_kernels`] switched them off, or where a kernel raised an
//! error ([`QuantError::FusedKernel`], reported once), the quantizers take
//! the stock-op path below, which computes the same values and gradients
//! with fewer and cheaper passes than the reference (`fused`):
//! - The carrier is one product per term: `x * slope` for DoReFa,
//!   `x * mask + alpha * mask'` for PACT and mPACT, with float masks (same
//!   kind, so vectorised) made without autograd in chunks of `CHUNK`
//!   elements that stay in cache through their ops. Its backward is one
//!   product per term (and the sum for `alpha`), against `clamp`'s four
//!   passes with a `where`.
//! - The STE writes `q` into the carrier's own storage after the carrier is
//!   built (PyTorch's `c.data = q` without the new tensor), instead of
//!   adding `q.detach()` and `c - c.detach()`: no extra passes or
//!   allocations. Sound because the carrier's backward uses `x`, `alpha`
//!   and the masks, never its own output; were a backward function to need
//!   it, autograd would refuse to run (the write bumps the version counter)
//!   rather than give a wrong gradient.
//! - `q` is computed in the same chunks with the reference's ops in the
//!   reference's order (scale, clamp, round, rescale; in place), so values
//!   are bit for bit the same.
//! - Where nothing is tracked (evaluation under `no_grad`) there is no mask
//!   and no carrier: only the passes that compute `q`. The weight quantizer
//!   and fixed-scale PACT keep the reference's differentiable ops and round
//!   in place in their last op's output.
//!
//! `tests/fused_quantizers.rs` checks values and gradients of both paths
//! against the reference on large tensors with ties, zeros of both signs
//! and NaNs.
//!
//! Where this module departs from the seed's formulas, the golden tensors
//! decide, and each function says so.
//!
//! Generated models describe each activation-quantizer site per profile with
//! an [`ActSpec`], plain data that fits in a `const` profile table, and build
//! the site with [`ActQuant::from_spec`]. A site that a placement rule
//! switches off in one profile but not in another is [`ActSpec::Off`]: the
//! model keeps the same structure (the same fields and forward code) under
//! every profile, and only the quantizer's behaviour changes.

use tch::nn::{self, Init};
use tch::Tensor;

/// The bit-width that means "not quantized" (identity).
pub const FLOAT_BITS: u32 = 32;

/// Coefficient of the L2 penalty on learnable clipping values
/// (see [`alpha_penalty`]).
pub const ALPHA_L2_COEF: f64 = 0.0002;

/// Name of the learnable clipping value under an [`ActQuant`]'s path.
pub const ALPHA_VAR: &str = "alpha";

/// `2^k - 1` as a float: the number of quantization steps on each side.
fn levels(k: u32) -> f64 {
    f64::from((1u32 << k) - 1)
}

pub mod reference;

pub(crate) mod error;
mod fused;

pub use error::QuantError;
pub(crate) use error::{bits_supported, check_bits, check_scale, scale_supported};

thread_local! {
    /// Whether the activation quantizers take the fused C++ kernels on CPU
    /// float tensors (see "Fast paths"); on by default.
    static FUSED_KERNELS: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Switches the fused C++ kernels of the activation quantizers on or off
/// for the calling thread. Off, CPU tensors take the stock-op path that other
/// devices take; the values and input gradients are the same bit for bit.
/// For tests and benchmarks that compare the two paths.
pub fn set_fused_kernels(on: bool) {
    FUSED_KERNELS.with(|f| f.set(on));
}

/// Elements per chunk of a fused pass (1 MiB of `f32`): small enough that
/// a chunk of the input, the output and the masks stays in cache from the
/// first op on it to the last, large enough that the ops on a chunk still
/// split across threads and cost little to dispatch.
const CHUNK: i64 = 1 << 18;

/// Whether autograd records ops on `t` here: `t` requires a gradient and
/// grad mode is on (outside `tch::no_grad`).
pub(crate) fn tracked(t: &Tensor) -> bool {
    t.requires_grad() && grad_mode()
}

/// Whether grad mode is on. tch does not say, so this asks a fresh 0-d
/// leaf: a view of a leaf that requires a gradient requires one too, except
/// under `no_grad` (a few microseconds).
fn grad_mode() -> bool {
    Tensor::from(0f32)
        .set_requires_grad(true)
        .alias()
        .requires_grad()
}

/// `(start, len)` of the chunks of `n` elements.
fn chunks(n: i64) -> impl Iterator<Item = (i64, i64)> {
    (0..n)
        .step_by(CHUNK as usize)
        .map(move |start| (start, CHUNK.min(n - start)))
}

/// The skeleton of the fused activation quantizers (see "Fast paths").
///
/// Without a gradient to track, `value(x_chunk, out_chunk)` writes the
/// quantized values chunk by chunk into a fresh tensor. With one,
/// `masks(x_chunk, mask_chunks, scratch_chunk)` first fills `M` masks of
/// `x`'s size (its kind: mixed-kind ops are not vectorised), chunk by
/// chunk; `carrier(x, masks)` builds the gradient carrier from them, whose
/// storage then takes the values: its backward uses `x` and the masks,
/// never its own output.
fn fused<const M: usize>(
    x: &Tensor,
    track: bool,
    masks: impl Fn(&Tensor, &[Tensor; M], &Tensor),
    carrier: impl FnOnce(&Tensor, [Tensor; M]) -> Tensor,
    value: impl Fn(&Tensor, &mut Tensor),
) -> Tensor {
    let x = if x.is_contiguous() {
        x.shallow_clone()
    } else {
        x.contiguous()
    };
    let size = x.size();
    let xs = x.detach().view([-1]);
    let n = xs.numel() as i64;
    let out = if track {
        let bufs: [Tensor; M] = std::array::from_fn(|_| xs.empty_like());
        let scratch = Tensor::empty([CHUNK.min(n)], (xs.kind(), xs.device()));
        for (start, len) in chunks(n) {
            let parts = bufs.each_ref().map(|m| m.narrow(0, start, len));
            masks(
                &xs.narrow(0, start, len),
                &parts,
                &scratch.narrow(0, 0, len),
            );
        }
        carrier(&x, bufs.map(|m| m.view(size.as_slice())))
    } else {
        xs.empty_like().view(size.as_slice())
    };
    // The carrier of a contiguous input and contiguous masks is contiguous.
    let out_flat = out.detach().view([-1]);
    for (start, len) in chunks(n) {
        value(
            &xs.narrow(0, start, len),
            &mut out_flat.narrow(0, start, len),
        );
    }
    out
}

/// `q = round(q * n) / n` in place, the seed's rounding to the grid of `n`
/// steps.
fn round_to_grid_(q: &mut Tensor, n: f64) {
    let _ = q.g_mul_scalar_(n);
    let _ = q.round_();
    let _ = q.g_div_scalar_(n);
}

/// [`round_to_grid_`] with a tensor scale `s` (a 0-d tensor).
fn round_to_scale_(q: &mut Tensor, s: &Tensor) {
    let _ = q.g_mul_(s);
    let _ = q.round_();
    let _ = q.g_div_(s);
}

/// DoReFa weight quantizer, modified to be symmetric:
/// `t = tanh(w) / max|tanh(w)|`, `q = round(t*n)/n` with `n = 2^(b-1) - 1`.
///
/// Gradient: straight through the rounding, while `tanh` and the
/// max-normalisation are differentiated (the gradient flows through `max`).
///
/// Special cases:
/// - `bits == 2`: `q = sign(t)` (values -1, 1). The seed rounds with
///   `k = b - 1` bits and its rounding function takes the sign when `k == 1`;
///   the golden tensors confirm it (`round(t)` would give mostly zeros).
/// - `bits == 1`: the seed divides by zero here (NaN). qatc defines binary
///   weights as `sign(w) * mean(|w|)` (XNOR-Net / DoReFa's scaled sign), with
///   the mean treated as a constant and the gradient passed straight through
///   to `w`.
///
/// Computed as [`reference::dorefa_weight`] is, except that the rounding
/// happens in place in `t`'s storage (see "Fast paths"). On CPU float
/// tensors (2 bits and more) the same ops run as one autograd node on the
/// calling thread alone, its backward PyTorch's derivatives of the same
/// graph (`FusedWeightQuant` in `csrc/fused_quant.cpp`): a weight is too small to gain from
/// splitting a dozen ops over threads that must be woken for each.
///
/// # Panics
/// If `bits` is not 1..=16 or 32.
pub fn dorefa_weight(w: &Tensor, bits: u32) -> Tensor {
    check_bits("DoReFa weight quantizer", bits, 1);
    match bits {
        FLOAT_BITS => w.shallow_clone(),
        1 => reference::dorefa_weight(w, 1),
        _ => {
            if fused::applies(w, None) {
                if let Some(q) = fused::or_report(fused::dorefa_weight(w, bits)) {
                    return q;
                }
            }
            let t = w.tanh();
            // The division's backward uses its inputs, never its output:
            // its storage may take the quantized values.
            let t = &t / t.abs().max();
            let mut q = t.detach();
            if bits == 2 {
                let _ = q.sign_();
            } else {
                round_to_grid_(&mut q, levels(bits - 1));
            }
            t
        }
    }
}

/// DoReFa activation quantizer: `y = clamp(0.1*x, 0, 1)`,
/// `q = round(y*n)/n` with `n = 2^b - 1`; `bits == 1` gives `q = sign(y)`.
/// The output stays in `[0, 1]`: the seed never undoes the 0.1.
///
/// Gradient: straight through the rounding (or sign), `clamp` differentiated
/// (`0.1 * g` where `0 <= 0.1*x <= 1`).
///
/// Fused (see "Fast paths"): the carrier is `x * slope` with the slope
/// `0.1 * [0 <= 0.1*x <= 1]`.
///
/// # Panics
/// If `bits` is not 1..=16 or 32.
pub fn dorefa_activation(x: &Tensor, bits: u32) -> Tensor {
    check_bits("DoReFa activation quantizer", bits, 1);
    if bits == FLOAT_BITS {
        return x.shallow_clone();
    }
    if fused::applies(x, None) {
        let fast = fused::quantize(
            x,
            None,
            fused::Mode::Dorefa,
            bits,
            fused::Act::None,
            tracked(x),
        );
        if let Some(q) = fused::or_report(fast) {
            return q;
        }
    }
    fused(
        x,
        tracked(x),
        |xc, [slope]: &[Tensor; 1], y| {
            let _ = xc.mul_scalar_out(y, 0.1);
            let _ = y.clamp_out(slope, 0.0, 1.0);
            // Clamping leaves y unchanged exactly where 0 <= y <= 1.
            let mut slope = slope.eq_tensor_out(slope, y);
            let _ = slope.g_mul_scalar_(0.1);
        },
        |x, [slope]| x * slope,
        |xc, q| {
            let _ = xc.mul_scalar_out(q, 0.1);
            let _ = q.clamp_(0.0, 1.0);
            if bits == 1 {
                let _ = q.sign_();
            } else {
                round_to_grid_(q, levels(bits));
            }
        },
    )
}

/// PACT: `y = clamp(x, 0, a)`, `s = (2^b - 1)/a`, `q = round(y*s)/s`, with a
/// learnable clipping value `a` (a scalar tensor).
///
/// Gradients (the seed's own backward): `dx = g * [0 <= x <= a]`,
/// `da = sum(g * [x >= a])`.
///
/// Fused (see "Fast paths"): the carrier is
/// `x * [0 <= x <= a] + alpha * [x >= a]`.
///
/// # Panics
/// If `bits` is not 1..=16 or 32.
pub fn pact(x: &Tensor, alpha: &Tensor, bits: u32) -> Tensor {
    check_bits("PACT", bits, 1);
    if bits == FLOAT_BITS {
        return x.shallow_clone();
    }
    let track = tracked(x) || tracked(alpha);
    if fused::applies(x, Some(alpha)) {
        let fast = fused::quantize(
            x,
            Some(alpha),
            fused::Mode::Pact,
            bits,
            fused::Act::None,
            track,
        );
        if let Some(q) = fused::or_report(fast) {
            return q;
        }
    }
    let a = alpha.detach();
    let s = a.reciprocal() * levels(bits);
    fused(
        x,
        track,
        |xc, [inside, clipped]: &[Tensor; 2], below| {
            let mut inside = xc.ge_scalar_out(inside, 0.0);
            let _ = xc.le_tensor_out(below, &a);
            let _ = inside.g_mul_(below);
            let _ = xc.ge_tensor_out(clipped, &a);
        },
        |x, [inside, clipped]| {
            let mut carrier = x * inside;
            let _ = carrier.g_add_(&(alpha * clipped));
            carrier
        },
        |xc, q| {
            let _ = xc.clamp_min_out(q, 0.0);
            let _ = q.clamp_max_tensor_(&a);
            round_to_scale_(q, &s);
        },
    )
}

/// mPACT, the seed's symmetric "ActQuant": `k = b - 1`,
/// `y = clamp(x, -|a|, |a|)`, `s = (2^k - 1)/a`, `q = round(y*s)/s`.
///
/// Gradients (the seed's own backward): `dx = g * [-|a| <= x <= |a|]`,
/// `da = sum(g * ([x >= |a|] - [x <= -|a|]))`.
///
/// Fused (see "Fast paths"): the carrier is
/// `x * [-|a| <= x <= |a|] + alpha * ([x >= |a|] - [x <= -|a|])`.
///
/// # Panics
/// If `bits` is not 2..=16 or 32 (`bits == 1` leaves no level: `k = 0`).
pub fn mpact(x: &Tensor, alpha: &Tensor, bits: u32) -> Tensor {
    check_bits("mPACT", bits, 2);
    if bits == FLOAT_BITS {
        return x.shallow_clone();
    }
    let track = tracked(x) || tracked(alpha);
    if fused::applies(x, Some(alpha)) {
        let fast = fused::quantize(
            x,
            Some(alpha),
            fused::Mode::Mpact,
            bits,
            fused::Act::None,
            track,
        );
        if let Some(q) = fused::or_report(fast) {
            return q;
        }
    }
    let a = alpha.detach();
    let bound = a.abs();
    let neg_bound = -&bound;
    let s = a.reciprocal() * levels(bits - 1);
    fused(
        x,
        track,
        |xc, [inside, side]: &[Tensor; 2], scratch| {
            let _ = xc.clamp_tensor_out(scratch, Some(&neg_bound), Some(&bound));
            // Clamping leaves x unchanged exactly where -|a| <= x <= |a|.
            let _ = scratch.eq_tensor_out(inside, xc);
            let mut side = xc.ge_tensor_out(side, &bound);
            let _ = xc.le_tensor_out(scratch, &neg_bound);
            let _ = side.g_sub_(scratch);
        },
        |x, [inside, side]| {
            let mut carrier = x * inside;
            let _ = carrier.g_add_(&(alpha * side));
            carrier
        },
        |xc, q| {
            let _ = xc.clamp_tensor_out(q, Some(&neg_bound), Some(&bound));
            round_to_scale_(q, &s);
        },
    )
}

/// PACT with a fixed scale `s` (a constant, not learned):
/// `y = 0.5*(|x| - |x - s| + s)` (that is, `clamp(x, 0, s)`),
/// `q = round(y/s*n)/n*s` with `n = 2^b - 1`.
///
/// Gradient: straight through the rounding; `y` is differentiated, so
/// `dx = g` inside `(0, s)`, `g/2` at `x = 0` and `x = s`, 0 outside.
///
/// Computed as [`reference::fixed_scale_pact`] is, except that the rounding
/// happens in place in `y`'s storage (see "Fast paths").
///
/// # Panics
/// If `bits` is not 1..=16 or 32, or `scale` is not positive and finite.
pub fn fixed_scale_pact(x: &Tensor, scale: f64, bits: u32) -> Tensor {
    check_bits("fixed-scale PACT", bits, 1);
    check_scale(scale);
    if bits == FLOAT_BITS {
        return x.shallow_clone();
    }
    // The last op (times 0.5) does not keep its output for backward: its
    // storage may take the quantized values.
    let y = (x.abs() - (x - scale).abs() + scale) * 0.5;
    let mut q = y.detach();
    let _ = q.g_div_scalar_(scale);
    round_to_grid_(&mut q, levels(bits));
    let _ = q.g_mul_scalar_(scale);
    y
}

/// The L2 penalty the seed adds to the loss for learnable clipping values:
/// `0.0002 * sum(a^2)`. `None` when there are no clipping values.
pub fn alpha_penalty<'a>(alphas: impl IntoIterator<Item = &'a Tensor>) -> Option<Tensor> {
    alpha_penalty_with(alphas, ALPHA_L2_COEF)
}

/// [`alpha_penalty`] with another coefficient (`qatc train --alpha-decay`);
/// `None` when there are no clipping values or the coefficient is 0.
pub fn alpha_penalty_with<'a>(
    alphas: impl IntoIterator<Item = &'a Tensor>,
    coef: f64,
) -> Option<Tensor> {
    if coef == 0.0 {
        return None;
    }
    alphas
        .into_iter()
        .map(Tensor::square)
        .reduce(|sum, a2| sum + a2)
        .map(|sum| sum * coef)
}

/// What one activation-quantizer site does under one profile.
///
/// Data only (no tensors), so that generated code can list it in `const`
/// profile tables; [`ActQuant::from_spec`] turns it into a quantizer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActSpec {
    /// No quantizer: the identity. The site exists in another profile of the
    /// model but a placement rule switched it off in this one.
    Off,
    /// [`dorefa_activation`] at `bits`.
    Dorefa {
        /// Bit-width (32: identity).
        bits: u32,
    },
    /// [`pact`] at `bits`, the clipping value starting at `alpha`.
    Pact {
        /// Bit-width (32: identity).
        bits: u32,
        /// Initial clipping value.
        alpha: f64,
    },
    /// [`mpact`] at `bits`, the clipping value starting at `alpha`.
    Mpact {
        /// Bit-width (32: identity).
        bits: u32,
        /// Initial clipping value.
        alpha: f64,
    },
    /// [`fixed_scale_pact`] at `bits` with the constant clipping value
    /// `scale`.
    PactFixed {
        /// Bit-width (32: identity).
        bits: u32,
        /// The constant clipping value `s`.
        scale: f64,
    },
}

impl ActSpec {
    /// Whether the runtime supports this site: a bit-width it quantizes at
    /// (1..=16 or 32; mPACT 2..=16), a positive finite fixed scale. What
    /// [`ActQuant::try_from_spec`] checks before building the quantizer.
    pub fn validate(self) -> Result<(), QuantError> {
        match self {
            ActSpec::Off => Ok(()),
            ActSpec::Dorefa { bits } => bits_supported("DoReFa activation quantizer", bits, 1),
            ActSpec::Pact { bits, .. } => bits_supported("PACT", bits, 1),
            ActSpec::Mpact { bits, .. } => bits_supported("mPACT", bits, 2),
            ActSpec::PactFixed { bits, scale } => {
                bits_supported("fixed-scale PACT", bits, 1)?;
                scale_supported(scale)
            }
        }
    }

    /// DoReFa activation at `bits` (one line each in generated profile tables).
    pub const fn dorefa(bits: u32) -> Self {
        ActSpec::Dorefa { bits }
    }

    /// PACT at `bits` with initial clipping value `alpha`.
    pub const fn pact(bits: u32, alpha: f64) -> Self {
        ActSpec::Pact { bits, alpha }
    }

    /// mPACT at `bits` with initial clipping value `alpha`.
    pub const fn mpact(bits: u32, alpha: f64) -> Self {
        ActSpec::Mpact { bits, alpha }
    }

    /// Fixed-scale PACT at `bits` with scale `scale`.
    pub const fn pact_fixed(bits: u32, scale: f64) -> Self {
        ActSpec::PactFixed { bits, scale }
    }

    /// The bit-width the site quantizes to; [`FLOAT_BITS`] for
    /// [`ActSpec::Off`].
    pub fn bits(&self) -> u32 {
        match *self {
            ActSpec::Off => FLOAT_BITS,
            ActSpec::Dorefa { bits }
            | ActSpec::Pact { bits, .. }
            | ActSpec::Mpact { bits, .. }
            | ActSpec::PactFixed { bits, .. } => bits,
        }
    }

    /// Whether the site has a learnable clipping value (PACT and mPACT).
    pub fn has_alpha(&self) -> bool {
        matches!(self, ActSpec::Pact { .. } | ActSpec::Mpact { .. })
    }
}

/// Which activation quantizer an [`ActQuant`] applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActQuantKind {
    /// No quantizer: the identity ([`ActSpec::Off`]).
    Off,
    /// [`dorefa_activation`]: no parameter.
    DoReFa,
    /// [`pact`]: unsigned, learnable clipping value.
    Pact,
    /// [`mpact`]: symmetric, learnable clipping value.
    MPact,
    /// [`fixed_scale_pact`] with a constant scale.
    FixedScalePact {
        /// The constant clipping value `s`.
        scale: f64,
    },
}

/// An activation quantizer: its kind, bit-width and, for PACT and mPACT, the
/// learnable clipping value, a scalar variable named [`ALPHA_VAR`] under the
/// path it was built with. The variable exists at every bit-width (also 32,
/// where it is unused) so that checkpoints do not depend on the bits.
#[derive(Debug)]
pub struct ActQuant {
    kind: ActQuantKind,
    bits: u32,
    alpha: Option<Tensor>,
}

impl ActQuant {
    /// The quantizer `spec` describes. PACT and mPACT create their clipping
    /// value under `path` exactly as [`ActQuant::pact`] and
    /// [`ActQuant::mpact`] do, so a variable store has the same names
    /// whichever way it was built; the other kinds create no variable.
    ///
    /// Note that checkpoints of two profiles differ where a site has a
    /// clipping value in one profile and none in the other (e.g. PACT in
    /// one, [`ActSpec::Off`] in the other).
    ///
    /// # Panics
    /// As the constructor of the spec's kind does ([`ActQuant::try_from_spec`]
    /// returns those problems as errors).
    pub fn from_spec(path: &nn::Path, spec: ActSpec) -> ActQuant {
        match spec {
            ActSpec::Off => Self::off(),
            ActSpec::Dorefa { bits } => Self::dorefa(bits),
            ActSpec::Pact { bits, alpha } => Self::pact(path, bits, alpha),
            ActSpec::Mpact { bits, alpha } => Self::mpact(path, bits, alpha),
            ActSpec::PactFixed { bits, scale } => Self::fixed_scale_pact(bits, scale),
        }
    }

    /// [`ActQuant::from_spec`] after checking the spec's numbers: a
    /// bit-width the kind does not support or a fixed scale that is not
    /// positive and finite is an error instead of a panic. For profiles
    /// that come from outside the generated crate's own tables.
    pub fn try_from_spec(path: &nn::Path, spec: ActSpec) -> Result<ActQuant, QuantError> {
        spec.validate()?;
        Ok(Self::from_spec(path, spec))
    }

    /// The identity: a site switched off in this profile. Its bit-width is
    /// [`FLOAT_BITS`].
    pub fn off() -> Self {
        Self {
            kind: ActQuantKind::Off,
            bits: FLOAT_BITS,
            alpha: None,
        }
    }

    /// A DoReFa activation quantizer at `bits`.
    ///
    /// # Panics
    /// If `bits` is not 1..=16 or 32.
    pub fn dorefa(bits: u32) -> Self {
        check_bits("DoReFa activation quantizer", bits, 1);
        Self {
            kind: ActQuantKind::DoReFa,
            bits,
            alpha: None,
        }
    }

    /// A PACT quantizer at `bits` whose clipping value starts at `alpha_init`.
    ///
    /// # Panics
    /// If `bits` is not 1..=16 or 32.
    pub fn pact(path: &nn::Path, bits: u32, alpha_init: f64) -> Self {
        check_bits("PACT", bits, 1);
        let alpha = path.var(ALPHA_VAR, &[], Init::Const(alpha_init));
        Self {
            kind: ActQuantKind::Pact,
            bits,
            alpha: Some(alpha),
        }
    }

    /// An mPACT quantizer at `bits` whose clipping value starts at
    /// `alpha_init`.
    ///
    /// # Panics
    /// If `bits` is not 2..=16 or 32.
    pub fn mpact(path: &nn::Path, bits: u32, alpha_init: f64) -> Self {
        check_bits("mPACT", bits, 2);
        let alpha = path.var(ALPHA_VAR, &[], Init::Const(alpha_init));
        Self {
            kind: ActQuantKind::MPact,
            bits,
            alpha: Some(alpha),
        }
    }

    /// A fixed-scale PACT quantizer at `bits` with clipping value `scale`.
    ///
    /// # Panics
    /// If `bits` is not 1..=16 or 32, or `scale` is not positive and finite.
    pub fn fixed_scale_pact(bits: u32, scale: f64) -> Self {
        check_bits("fixed-scale PACT", bits, 1);
        check_scale(scale);
        Self {
            kind: ActQuantKind::FixedScalePact { scale },
            bits,
            alpha: None,
        }
    }

    /// The quantizer's kind.
    pub fn kind(&self) -> ActQuantKind {
        self.kind
    }

    /// The bit-width (32: identity).
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// The learnable clipping value, for PACT and mPACT.
    pub fn alpha(&self) -> Option<&Tensor> {
        self.alpha.as_ref()
    }

    /// `self.forward(&ops::relu(x))`: the same values and gradients, with
    /// the ReLU done inside the quantizer's one pass where the fused kernels
    /// serve this quantizer (no ReLU output, no ReLU backward pass).
    pub fn forward_relu(&self, x: &Tensor) -> Tensor {
        self.forward_after(x, fused::Act::Relu)
    }

    /// `self.forward(&ops::relu6(x))`, fused as [`ActQuant::forward_relu`].
    pub fn forward_relu6(&self, x: &Tensor) -> Tensor {
        self.forward_after(x, fused::Act::Relu6)
    }

    /// `self.forward(&ops::hardswish(x))`, fused as [`ActQuant::forward_relu`]
    /// (the hardswish's value computed in the quantizer's pass, its
    /// backward, PyTorch's, run on the quantizer's input gradient).
    pub fn forward_hardswish(&self, x: &Tensor) -> Tensor {
        self.forward_after(x, fused::Act::Hardswish)
    }

    /// `self.forward(&ops::concat(parts))` where each part is read through
    /// its activation (`Pre::Relu`: `ops::relu(part)`, ...): one pass that
    /// quantizes the parts into the joined map without writing the
    /// concatenation (nor the activations' outputs); backward writes each
    /// part's gradient directly. The same values and gradients.
    pub fn forward_concat(&self, parts: &[(&Tensor, Pre)]) -> Tensor {
        let alpha = self.alpha.as_ref();
        if let Some(mode) = self.fused_mode().filter(|_| {
            parts.len() > 1
                && parts
                    .iter()
                    .all(|(x, _)| x.dim() == 4 && fused::applies(x, alpha))
        }) {
            let track = parts.iter().any(|(x, _)| tracked(x)) || alpha.is_some_and(tracked);
            let xs: Vec<(&Tensor, fused::Act)> = parts.iter().map(|&(x, p)| (x, p.act())).collect();
            let fast = fused::quantize_concat(&xs, alpha, mode, self.bits, track);
            if let Some(q) = fused::or_report(fast) {
                return q;
            }
        }
        let applied: Vec<Tensor> = parts.iter().map(|&(x, p)| p.act().apply(x)).collect();
        let refs: Vec<&Tensor> = applied.iter().collect();
        nn::Module::forward(self, &crate::ops::concat(&refs))
    }

    /// `self.forward(&ops::mul(x, gate))` for a gate of shape `[N, C, 1, 1]`
    /// (a squeeze-excitation gate) on `x` `[N, C, H, W]`: one pass that never
    /// writes the product, the same values and gradients. Other shapes take
    /// the unfused ops.
    pub fn forward_mul(&self, x: &Tensor, gate: &Tensor) -> Tensor {
        let alpha = self.alpha.as_ref();
        let gated = x.dim() == 4 && gate.dim() == 4 && {
            let (xs, gs) = (x.size(), gate.size());
            gs == [xs[0], xs[1], 1, 1]
        };
        if let Some(mode) = self
            .fused_mode()
            .filter(|_| gated && fused::applies(x, alpha) && fused::applies(gate, None))
        {
            let track = tracked(x) || tracked(gate) || alpha.is_some_and(tracked);
            let fast = fused::quantize_mul(x, gate, alpha, mode, self.bits, track);
            if let Some(q) = fused::or_report(fast) {
                return q;
            }
        }
        nn::Module::forward(self, &crate::ops::mul(x, gate))
    }

    /// The fused kernels' mode of this quantizer, `None` where it has none
    /// (off, fixed-scale PACT, 32 bits).
    fn fused_mode(&self) -> Option<fused::Mode> {
        let mode = match self.kind {
            ActQuantKind::DoReFa => Some(fused::Mode::Dorefa),
            ActQuantKind::Pact => Some(fused::Mode::Pact),
            ActQuantKind::MPact => Some(fused::Mode::Mpact),
            ActQuantKind::Off | ActQuantKind::FixedScalePact { .. } => None,
        };
        mode.filter(|_| self.bits != FLOAT_BITS)
    }

    fn forward_after(&self, x: &Tensor, act: fused::Act) -> Tensor {
        let alpha = self.alpha.as_ref();
        if let Some(mode) = self.fused_mode().filter(|_| fused::applies(x, alpha)) {
            let track = tracked(x) || alpha.is_some_and(tracked);
            let fast = fused::quantize(x, alpha, mode, self.bits, act, track);
            if let Some(q) = fused::or_report(fast) {
                return q;
            }
        }
        nn::Module::forward(self, &act.apply(x))
    }
}

/// The activation a part of [`ActQuant::forward_concat`] is read through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pre {
    /// The part as it is.
    None,
    /// `ops::relu(part)`.
    Relu,
    /// `ops::relu6(part)`.
    Relu6,
}

impl Pre {
    fn act(self) -> fused::Act {
        match self {
            Pre::None => fused::Act::None,
            Pre::Relu => fused::Act::Relu,
            Pre::Relu6 => fused::Act::Relu6,
        }
    }
}

impl nn::Module for ActQuant {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let alpha = || {
            self.alpha
                .as_ref()
                .expect("PACT and mPACT always hold alpha")
        };
        match self.kind {
            ActQuantKind::Off => xs.shallow_clone(),
            ActQuantKind::DoReFa => dorefa_activation(xs, self.bits),
            ActQuantKind::Pact => pact(xs, alpha(), self.bits),
            ActQuantKind::MPact => mpact(xs, alpha(), self.bits),
            ActQuantKind::FixedScalePact { scale } => fixed_scale_pact(xs, scale, self.bits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Module;
    use tch::{Device, Kind};

    fn leaf(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).set_requires_grad(true)
    }

    fn grad_of_sum(out: &Tensor, input: &Tensor) -> Vec<f32> {
        out.sum(Kind::Float).backward();
        Vec::<f32>::try_from(input.grad()).unwrap()
    }

    #[test]
    fn tracked_means_requires_grad_outside_no_grad() {
        let leaf = Tensor::from(1.0f32).set_requires_grad(true);
        assert!(tracked(&leaf));
        assert!(!tch::no_grad(|| tracked(&leaf)));
        assert!(!tracked(&Tensor::from(1.0f32)));
        assert!(tracked(&(&leaf * 2.0)));
        let nonleaf = &leaf * 2.0;
        assert!(!tch::no_grad(|| tracked(&nonleaf)));
    }

    #[test]
    fn thirty_two_bits_is_identity() {
        let x = Tensor::from_slice(&[-3.0f32, -0.4, 0.0, 0.7, 12.5]);
        let alpha = Tensor::from(1.5f32);
        for out in [
            dorefa_weight(&x, 32),
            dorefa_activation(&x, 32),
            pact(&x, &alpha, 32),
            mpact(&x, &alpha, 32),
            fixed_scale_pact(&x, 2.0, 32),
        ] {
            assert!(out.equal(&x));
        }
    }

    #[test]
    fn binary_weights_are_scaled_signs_with_identity_gradient() {
        let w = leaf(&[-0.5, 0.25, 1.0, -0.25]);
        let q = dorefa_weight(&w, 1);
        assert_eq!(
            Vec::<f32>::try_from(&q).unwrap(),
            vec![-0.5, 0.5, 0.5, -0.5]
        );
        assert_eq!(grad_of_sum(&q, &w), vec![1.0; 4]);
    }

    #[test]
    fn two_bit_weights_are_signs() {
        let w = Tensor::from_slice(&[-0.01f32, 0.02, 1.0, -3.0]);
        let q = dorefa_weight(&w, 2);
        assert_eq!(
            Vec::<f32>::try_from(&q).unwrap(),
            vec![-1.0, 1.0, 1.0, -1.0]
        );
    }

    #[test]
    fn pact_gradients_include_ties_on_both_sides() {
        // 2 bits with a = 3: steps of 1, so q = clamp(x, 0, 3) here.
        let x = leaf(&[-1.0, 0.0, 1.0, 3.0, 4.0]);
        let quant = ActQuant::pact(&nn::VarStore::new(Device::Cpu).root(), 2, 3.0);
        let q = quant.forward(&x);
        assert_eq!(
            Vec::<f32>::try_from(&q).unwrap(),
            vec![0.0, 0.0, 1.0, 3.0, 3.0]
        );
        // x == a counts for both dx and da.
        assert_eq!(grad_of_sum(&q, &x), vec![0.0, 1.0, 1.0, 1.0, 0.0]);
        assert_eq!(f64::try_from(quant.alpha().unwrap().grad()).unwrap(), 2.0);
    }

    #[test]
    fn mpact_gradients_follow_the_seed() {
        let x = leaf(&[-3.0, -2.0, -0.5, 2.0, 3.0]);
        let quant = ActQuant::mpact(&nn::VarStore::new(Device::Cpu).root(), 3, 2.0);
        let q = quant.forward(&x);
        assert_eq!(grad_of_sum(&q, &x), vec![0.0, 1.0, 1.0, 1.0, 0.0]);
        // [x >= 2] - [x <= -2] summed: 2 - 2.
        assert_eq!(f64::try_from(quant.alpha().unwrap().grad()).unwrap(), 0.0);
        // k = 2: three steps of 2/3 on each side.
        let want = [-2.0f32, -2.0, -2.0 / 3.0, 2.0, 2.0];
        let got = Vec::<f32>::try_from(&q).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn fixed_scale_pact_clips_to_the_scale() {
        let x = leaf(&[-1.0, 0.0, 0.5, 1.0, 4.0]);
        let q = ActQuant::fixed_scale_pact(2, 1.0).forward(&x);
        let got = Vec::<f32>::try_from(&q).unwrap();
        let want = [0.0f32, 0.0, 2.0 / 3.0, 1.0, 1.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        assert_eq!(grad_of_sum(&q, &x), vec![0.0, 0.5, 1.0, 0.5, 0.0]);
    }

    #[test]
    fn alpha_penalty_is_scaled_sum_of_squares() {
        let (a, b) = (Tensor::from(2.0f32), Tensor::from(3.0f32));
        let penalty = alpha_penalty([&a, &b]).unwrap();
        assert!((f64::try_from(penalty).unwrap() - 0.0002 * 13.0).abs() < 1e-9);
        assert!(alpha_penalty(std::iter::empty()).is_none());
        let penalty = alpha_penalty_with([&a, &b], 0.5).unwrap();
        assert!((f64::try_from(penalty).unwrap() - 6.5).abs() < 1e-9);
        assert!(alpha_penalty_with([&a, &b], 0.0).is_none());
    }

    #[test]
    fn off_is_the_identity_without_variables() {
        let vs = nn::VarStore::new(Device::Cpu);
        let quant = ActQuant::from_spec(&vs.root(), ActSpec::Off);
        assert_eq!(quant.kind(), ActQuantKind::Off);
        assert_eq!(quant.bits(), FLOAT_BITS);
        assert!(quant.alpha().is_none());
        let x = leaf(&[-3.0, -0.4, 0.0, 0.7, 12.5]);
        let y = quant.forward(&x);
        assert!(y.equal(&x));
        assert_eq!(grad_of_sum(&y, &x), vec![1.0; 5]);
        assert!(vs.variables().is_empty());
    }

    #[test]
    fn from_spec_builds_the_same_quantizer_as_the_constructors() {
        let x = Tensor::from_slice(&[-3.0f32, -0.4, 0.0, 0.7, 1.9, 2.6, 12.5]);
        type Build = fn(&nn::Path) -> ActQuant;
        let cases: [(ActSpec, Build); 4] = [
            (ActSpec::Dorefa { bits: 4 }, |_| ActQuant::dorefa(4)),
            (
                ActSpec::Pact {
                    bits: 3,
                    alpha: 2.5,
                },
                |p| ActQuant::pact(p, 3, 2.5),
            ),
            (
                ActSpec::Mpact {
                    bits: 4,
                    alpha: 1.7,
                },
                |p| ActQuant::mpact(p, 4, 1.7),
            ),
            (
                ActSpec::PactFixed {
                    bits: 2,
                    scale: 2.0,
                },
                |_| ActQuant::fixed_scale_pact(2, 2.0),
            ),
        ];
        for (spec, build) in cases {
            let (vs_spec, vs_ctor) = (
                nn::VarStore::new(Device::Cpu),
                nn::VarStore::new(Device::Cpu),
            );
            let from_spec = ActQuant::from_spec(&(vs_spec.root() / "act"), spec);
            let from_ctor = build(&(vs_ctor.root() / "act"));
            assert_eq!(from_spec.kind(), from_ctor.kind(), "{spec:?}");
            assert_eq!(from_spec.bits(), spec.bits(), "{spec:?}");
            assert_eq!(from_spec.alpha().is_some(), spec.has_alpha(), "{spec:?}");
            assert!(
                from_spec.forward(&x).equal(&from_ctor.forward(&x)),
                "{spec:?}"
            );
            let names = |vs: &nn::VarStore| {
                let mut names: Vec<String> = vs.variables().into_keys().collect();
                names.sort();
                names
            };
            assert_eq!(names(&vs_spec), names(&vs_ctor), "{spec:?}");
            let want: &[&str] = if spec.has_alpha() {
                &["act.alpha"]
            } else {
                &[]
            };
            assert_eq!(names(&vs_spec), want, "{spec:?}");
        }
    }

    #[test]
    fn spec_bits_of_off_is_float() {
        assert_eq!(ActSpec::Off.bits(), FLOAT_BITS);
        assert!(!ActSpec::Off.has_alpha());
        assert_eq!(
            ActSpec::PactFixed {
                bits: 5,
                scale: 1.0
            }
            .bits(),
            5
        );
    }

    #[test]
    #[should_panic(expected = "mPACT: bit-width 1 not supported")]
    fn from_spec_checks_bits() {
        ActQuant::from_spec(
            &nn::VarStore::new(Device::Cpu).root(),
            ActSpec::Mpact {
                bits: 1,
                alpha: 1.0,
            },
        );
    }

    #[test]
    fn try_from_spec_returns_the_error_from_spec_panics_with() {
        let vs = nn::VarStore::new(Device::Cpu);
        let err = ActQuant::try_from_spec(&vs.root(), ActSpec::mpact(1, 1.0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mPACT: bit-width 1 not supported (expected 2..=16 or 32)"
        );
        let err = ActQuant::try_from_spec(&vs.root(), ActSpec::pact_fixed(4, -1.0)).unwrap_err();
        assert_eq!(err, QuantError::Scale { scale: -1.0 });
        assert!(vs.variables().is_empty(), "nothing is made on an error");
        let q = ActQuant::try_from_spec(&vs.root(), ActSpec::pact(4, 6.0)).unwrap();
        assert_eq!((q.kind(), q.bits()), (ActQuantKind::Pact, 4));
    }

    #[test]
    #[should_panic(expected = "mPACT: bit-width 1 not supported")]
    fn mpact_rejects_one_bit() {
        ActQuant::mpact(&nn::VarStore::new(Device::Cpu).root(), 1, 1.0);
    }
}
