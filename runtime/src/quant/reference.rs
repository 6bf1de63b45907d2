//! The quantizers as first written: the seed's formulas op by op, each an
//! ordinary tch op that autograd differentiates, with the straight-through
//! estimator `q.detach() + (c - c.detach())` (see the parent module).
//!
//! This is the specification of the public quantizers of [`super`], which
//! compute the same values and the same gradients with fewer passes over
//! memory (see "Fast paths" there): `tests/fused_quantizers.rs` checks them
//! against these, and `tests/golden_quantizers.rs` both against the seed's
//! golden tensors. Models should not call these (they are several times
//! slower); the public weight quantizer uses the 1-bit one, which has no
//! faster path.

use super::{check_bits, levels, FLOAT_BITS};
use tch::Tensor;

/// Straight-through estimator: the value of `q`, the gradient of `carrier`.
fn ste(q: &Tensor, carrier: &Tensor) -> Tensor {
    q.detach() + (carrier - carrier.detach())
}

/// A detached 0/1 float mask of the same kind as `like`.
fn mask(condition: &Tensor, like: &Tensor) -> Tensor {
    condition.to_kind(like.kind()).detach()
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
/// # Panics
/// If `bits` is not 1..=16 or 32.
pub fn dorefa_weight(w: &Tensor, bits: u32) -> Tensor {
    check_bits("DoReFa weight quantizer", bits, 1);
    match bits {
        FLOAT_BITS => w.shallow_clone(),
        1 => {
            let scale = w.detach().abs().mean(w.kind());
            let q = w.detach().sign() * scale;
            ste(&q, w)
        }
        _ => {
            let t = w.tanh();
            let t = &t / t.abs().max();
            let q = if bits == 2 {
                t.detach().sign()
            } else {
                let n = levels(bits - 1);
                (t.detach() * n).round() / n
            };
            ste(&q, &t)
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
/// # Panics
/// If `bits` is not 1..=16 or 32.
pub fn dorefa_activation(x: &Tensor, bits: u32) -> Tensor {
    check_bits("DoReFa activation quantizer", bits, 1);
    if bits == FLOAT_BITS {
        return x.shallow_clone();
    }
    let y = (x * 0.1).clamp(0.0, 1.0);
    let q = if bits == 1 {
        y.detach().sign()
    } else {
        let n = levels(bits);
        (y.detach() * n).round() / n
    };
    ste(&q, &y)
}

/// PACT: `y = clamp(x, 0, a)`, `s = (2^b - 1)/a`, `q = round(y*s)/s`, with a
/// learnable clipping value `a` (a scalar tensor).
///
/// Gradients (the seed's own backward): `dx = g * [0 <= x <= a]`,
/// `da = sum(g * [x >= a])`.
///
/// # Panics
/// If `bits` is not 1..=16 or 32.
pub fn pact(x: &Tensor, alpha: &Tensor, bits: u32) -> Tensor {
    check_bits("PACT", bits, 1);
    if bits == FLOAT_BITS {
        return x.shallow_clone();
    }
    let a = alpha.detach();
    let y = x.detach().clamp_min(0.0).clamp_max_tensor(&a);
    let s = a.reciprocal() * levels(bits);
    let q = (y * &s).round() / &s;
    let in_range = mask(&x.ge(0.0).logical_and(&x.le_tensor(&a)), x);
    let clipped = mask(&x.ge_tensor(&a), x);
    let carrier = x * in_range + alpha * clipped;
    ste(&q, &carrier)
}

/// mPACT, the seed's symmetric "ActQuant": `k = b - 1`,
/// `y = clamp(x, -|a|, |a|)`, `s = (2^k - 1)/a`, `q = round(y*s)/s`.
///
/// Gradients (the seed's own backward): `dx = g * [-|a| <= x <= |a|]`,
/// `da = sum(g * ([x >= |a|] - [x <= -|a|]))`.
///
/// # Panics
/// If `bits` is not 2..=16 or 32 (`bits == 1` leaves no level: `k = 0`).
pub fn mpact(x: &Tensor, alpha: &Tensor, bits: u32) -> Tensor {
    check_bits("mPACT", bits, 2);
    if bits == FLOAT_BITS {
        return x.shallow_clone();
    }
    let a = alpha.detach();
    let bound = a.abs();
    let y = x
        .detach()
        .clamp_tensor(Some(-&bound), Some(bound.shallow_clone()));
    let s = a.reciprocal() * levels(bits - 1);
    let q = (y * &s).round() / &s;
    let in_range = mask(&x.ge_tensor(&-&bound).logical_and(&x.le_tensor(&bound)), x);
    let upper = mask(&x.ge_tensor(&bound), x);
    let lower = mask(&x.le_tensor(&-&bound), x);
    let carrier = x * in_range + alpha * (upper - lower);
    ste(&q, &carrier)
}

/// PACT with a fixed scale `s` (a constant, not learned):
/// `y = 0.5*(|x| - |x - s| + s)` (that is, `clamp(x, 0, s)`),
/// `q = round(y/s*n)/n*s` with `n = 2^b - 1`.
///
/// Gradient: straight through the rounding; `y` is differentiated, so
/// `dx = g` inside `(0, s)`, `g/2` at `x = 0` and `x = s`, 0 outside.
///
/// # Panics
/// If `bits` is not 1..=16 or 32, or `scale` is not positive and finite.
pub fn fixed_scale_pact(x: &Tensor, scale: f64, bits: u32) -> Tensor {
    check_bits("fixed-scale PACT", bits, 1);
    assert!(
        scale.is_finite() && scale > 0.0,
        "fixed-scale PACT: scale must be positive and finite, got {scale}"
    );
    if bits == FLOAT_BITS {
        return x.shallow_clone();
    }
    let y = (x.abs() - (x - scale).abs() + scale) * 0.5;
    let n = levels(bits);
    let q = (y.detach() / scale * n).round() / n * scale;
    ste(&q, &y)
}
