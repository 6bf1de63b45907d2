//! Integer widths and weights as integers: the widths a plan sizes its
//! tensors and accumulators by ([`signed_bits`], `bits_of`), a layer's
//! trained weights as the integers its conv reads ([`weight_int`]: the
//! seed's DoReFa weights; [`weight_fixed`]: a float stem's weights as
//! fixed-point numbers), and the bounds a float stem is planned with.
//!
//! Pure functions of their arguments, no checkpoint or graph access.
//! Weights of any value (non-finite ones included) give integers, never a
//! panic; `bits` is a width the graph allows (1 to 31 for [`weight_int`]).

/// The smallest signed width `n` with `-2^(n-1) <= lo` and `hi < 2^(n-1)`.
pub fn signed_bits(lo: i64, hi: i64) -> u32 {
    (1..64)
        .find(|&n| lo >= -(1i64 << (n - 1)) && hi < (1i64 << (n - 1)))
        .unwrap_or(64)
}

pub(super) fn bits_of(x: f64) -> u32 {
    // Signed width holding |x|.
    if x < 1.0 {
        1
    } else {
        (x.log2().floor() as u32) + 2
    }
}

/// The magnitude up to which the integer pipeline sizes the values of a
/// float stem (normalised images: CIFAR-10's lie within 2.8); larger inputs
/// are not an error, the stem's materialised output saturates.
pub const FLOAT_INPUT_BOUND: f64 = 8.0;

/// Bits of the fixed-point numbers that hold a float stem's weights (a
/// first conv with 32-bit weights that reads the float input).
pub const FLOAT_STEM_WEIGHT_BITS: u32 = 16;

/// Float weights as `bits`-bit fixed-point integers, one power-of-two scale
/// per tensor: `w ~ q / 2^f` with the largest `f` that keeps every `|q|`
/// within `2^(bits-1) - 1` (nearest rounding). Returns `(q, 2^f)`. The
/// relative error of the largest weight is at most `2^-(bits-1)`.
pub fn weight_fixed(w: &[f32], bits: u32) -> (Vec<i32>, f64) {
    let limit = ((1i64 << (bits - 1)) - 1) as f64;
    let max = w.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let f = if max > 0.0 && max.is_finite() {
        (limit / max).log2().floor() as i32
    } else {
        0
    };
    let scale = 2f64.powi(f);
    let q = w
        .iter()
        .map(|&x| ((x as f64) * scale).round().clamp(-limit, limit) as i32)
        .collect();
    (q, scale)
}

/// The seed's `weight_int`: `t = tanh(w) / max|tanh(w)|`,
/// `q = clamp(round(t * (2^(b-1)-1)))`, in float32; 2-bit weights take
/// `sign(t)` as the fake quantizer does, 1-bit ones `sign(w)` with scale
/// `1 / mean|w|`. Returns the integers and their scale.
pub fn weight_int(w: &[f32], bits: u32) -> (Vec<i32>, f64) {
    if bits == 1 {
        let mean = w.iter().map(|x| x.abs() as f64).sum::<f64>() / w.len().max(1) as f64;
        let q = w.iter().map(|&x| if x >= 0.0 { 1 } else { -1 }).collect();
        return (q, if mean > 0.0 { 1.0 / mean } else { 1.0 });
    }
    let t: Vec<f32> = w.iter().map(|&x| (x as f64).tanh() as f32).collect();
    let max = t.iter().fold(0f32, |m, x| m.max(x.abs()));
    let max = if max > 0.0 { max } else { 1.0 };
    if bits == 2 {
        let q = t
            .iter()
            .map(|&x| {
                let v = x / max;
                if v > 0.0 {
                    1
                } else if v < 0.0 {
                    -1
                } else {
                    0
                }
            })
            .collect();
        return (q, 1.0);
    }
    let n = ((1i64 << (bits - 1)) - 1) as f32;
    let q = t
        .iter()
        .map(|&x| ((x / max) * n).round_ties_even().clamp(-n - 1.0, n) as i32)
        .collect();
    (q, n as f64)
}
