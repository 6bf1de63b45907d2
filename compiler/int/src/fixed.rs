//! Fixed-point numbers and integer rounding, the arithmetic of the integer
//! pipeline.
//!
//! Input: real constants (BN-absorbing multipliers, biases, rescales) and
//! integer sums. Output: integers of a [`FixedFormat`] (`fixed<bits, int_bits>`:
//! `bits - int_bits` fraction bits, stored as `round(v * 2^frac)`), and
//! integer divisions by powers of two or pool sizes under a [`Rounding`].
//!
//! Invariants:
//! - [`fixed_seed`] computes exactly what the seed's `fixed_type` computes
//!   in float32 PyTorch (round half to even, the integer part clamped to
//!   `int_bits` signed bits, the fraction rounded to the frac bits, the sum
//!   rounded to float32, then truncated to int32), so `trunc` plans are bit
//!   exact with the seed; [`fixed_nearest`] rounds the exact (f64) value
//!   once. Both report a value whose integer part does not fit instead of
//!   clamping it silently, unless asked to saturate.
//! - Every division rounds as its mode says: `Trunc` toward zero (the seed's
//!   `torch.div(.., rounding_mode='trunc')`), `Floor` toward minus infinity,
//!   `Nearest` to nearest with halves away from zero.

use serde::Serialize;
use std::fmt;

/// `fixed<bits, int_bits>`: a signed number of `bits` bits of which
/// `int_bits` are the integer part (sign included), stored as an integer
/// scaled by `2^(bits - int_bits)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FixedFormat {
    pub bits: u32,
    pub int_bits: u32,
}

impl FixedFormat {
    pub const fn new(bits: u32, int_bits: u32) -> FixedFormat {
        FixedFormat { bits, int_bits }
    }

    /// Fraction bits: the right shift that undoes the scaling.
    pub fn frac(&self) -> u32 {
        self.bits - self.int_bits
    }

    /// Largest integer part the format holds.
    pub fn int_max(&self) -> i64 {
        (1i64 << (self.int_bits - 1)) - 1
    }

    /// Checks `1 <= int_bits <= bits <= 32` (stored values fit in i32).
    pub fn validate(&self) -> Result<(), String> {
        if self.int_bits == 0 || self.int_bits > self.bits || self.bits > 32 {
            return Err(format!(
                "fixed<{},{}>: need 1 <= int bits <= bits <= 32",
                self.bits, self.int_bits
            ));
        }
        Ok(())
    }
}

impl fmt::Display for FixedFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fixed<{},{}>", self.bits, self.int_bits)
    }
}

impl std::str::FromStr for FixedFormat {
    type Err = String;
    /// `32,16`, `<32,16>` or `fixed<32,16>`.
    fn from_str(s: &str) -> Result<FixedFormat, String> {
        let t = s.trim();
        let t = t.strip_prefix("fixed").unwrap_or(t);
        let t = t.trim_start_matches('<').trim_end_matches('>');
        let parts: Vec<&str> = t.split(',').map(str::trim).collect();
        let [b, i] = parts.as_slice() else {
            return Err(format!("`{s}` is not a fixed format (write it as 32,16)"));
        };
        let bits: u32 = b.parse().map_err(|_| format!("bad bit count in `{s}`"))?;
        let int_bits: u32 = i
            .parse()
            .map_err(|_| format!("bad integer bits in `{s}`"))?;
        let f = FixedFormat { bits, int_bits };
        f.validate()?;
        Ok(f)
    }
}

/// How the integer pipeline rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rounding {
    /// The seed's pipeline, bit for bit: constants through float32
    /// `fixed_type`, truncating shifts and pool divisions, the float stem
    /// truncated, and the seed's floor/clamp after the final pooling.
    Trunc,
    /// Constants rounded once from their exact value, every shift and pool
    /// division rounded to nearest, clamps as the fake quantizers clamp.
    Nearest,
    /// As `Nearest`, but each requantization places its own binary point:
    /// its largest constant uses the format's full `bits` (the format's
    /// integer bits are ignored), so small multipliers keep their precision
    /// (a per-layer shift, as integer accelerators do).
    Scaled,
}

impl Rounding {
    /// Whether this is the seed's truncating pipeline.
    pub fn is_trunc(self) -> bool {
        self == Rounding::Trunc
    }

    /// How a layer of this mode rounds a quotient: toward zero under
    /// `trunc`, to nearest (halves away from zero) otherwise.
    pub fn div(self) -> Div {
        match self {
            Rounding::Trunc => Div::Trunc,
            Rounding::Nearest | Rounding::Scaled => Div::Nearest,
        }
    }
}

impl fmt::Display for Rounding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rounding::Trunc => "trunc",
            Rounding::Nearest => "nearest",
            Rounding::Scaled => "scaled",
        })
    }
}

/// How one division rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Div {
    Trunc,
    Floor,
    Nearest,
}

/// The integer part of a constant does not fit its format.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Overflow {
    pub value: f64,
}

/// PyTorch's `torch.round` on float32: half to even.
fn round_even_f32(v: f32) -> f32 {
    v.round_ties_even()
}

/// The seed's `fixed_type(v, bits, int_bits)` on a float32 value: returns
/// the stored integer. With `saturate`, an integer part out of range is
/// clamped as the seed clamps it; otherwise it is an [`Overflow`].
pub fn fixed_seed(v: f32, fmt: FixedFormat, saturate: bool) -> Result<i64, Overflow> {
    if !v.is_finite() {
        return Err(Overflow { value: v as f64 });
    }
    let frac_scale = (2f64).powi(fmt.frac() as i32) as f32;
    let int_scale = fmt.int_max() as f32;
    let mut int = round_even_f32(v);
    let frac = v - int;
    if int > int_scale || int < -int_scale - 1.0 {
        if !saturate {
            return Err(Overflow { value: v as f64 });
        }
        int = int.clamp(-int_scale - 1.0, int_scale);
    }
    let frac = round_even_f32(frac * frac_scale) / frac_scale;
    let res = int + frac;
    let scaled = res * frac_scale;
    // `.int()`: truncation toward zero into int32 (x86 gives i32::MIN out of range).
    let q = if !(-2147483648.0..2147483648.0).contains(&scaled) {
        i32::MIN as i64
    } else {
        scaled.trunc() as i64
    };
    Ok(q)
}

/// `round(v * 2^frac)` from the exact value (halves away from zero), its
/// integer part checked (or clamped, with `saturate`) against the format.
pub fn fixed_nearest(v: f64, fmt: FixedFormat, saturate: bool) -> Result<i64, Overflow> {
    if !v.is_finite() {
        return Err(Overflow { value: v });
    }
    let scale = (2f64).powi(fmt.frac() as i32);
    let q = (v * scale).round();
    let max = (1i64 << (fmt.bits - 1)) - 1;
    let min = -(1i64 << (fmt.bits - 1));
    if q > max as f64 || q < min as f64 {
        if !saturate {
            return Err(Overflow { value: v });
        }
        return Ok(if q > 0.0 { max } else { min });
    }
    Ok(q as i64)
}

/// `x / 2^shift` rounded as `div` says.
#[inline(always)]
pub fn shift_round(x: i64, shift: u32, div: Div) -> i64 {
    if shift == 0 {
        return x;
    }
    match div {
        Div::Floor => x >> shift,
        Div::Trunc => {
            // Toward zero: floor for x >= 0, ceil for x < 0.
            let bias = (x >> 63) & ((1i64 << shift) - 1);
            (x + bias) >> shift
        }
        Div::Nearest => {
            let half = 1i64 << (shift - 1);
            if x >= 0 {
                (x + half) >> shift
            } else {
                -((-x + half) >> shift)
            }
        }
    }
}

/// [`shift_round`] on i128 (requantizations whose products may pass 2^63).
#[inline(always)]
pub fn shift_round_wide(x: i128, shift: u32, div: Div) -> i64 {
    if shift == 0 {
        return x.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    }
    let r = match div {
        Div::Floor => x >> shift,
        Div::Trunc => {
            let bias = (x >> 127) & ((1i128 << shift) - 1);
            (x + bias) >> shift
        }
        Div::Nearest => {
            let half = 1i128 << (shift - 1);
            if x >= 0 {
                (x + half) >> shift
            } else {
                -((-x + half) >> shift)
            }
        }
    };
    r.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// `x / n` rounded as `div` says (`n > 0`): integer average pooling.
#[inline(always)]
pub fn div_round(x: i64, n: i64, div: Div) -> i64 {
    match div {
        Div::Trunc => x / n,
        Div::Floor => x.div_euclid(n),
        Div::Nearest => {
            if x >= 0 {
                (x + n / 2) / n
            } else {
                -((-x + n / 2) / n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dividing by `2^k` is shifting by `k`, in every rounding (the pools
    /// of power-of-two maps take the shift).
    #[test]
    fn division_by_a_power_of_two_is_the_shift() {
        let xs = (-300i64..=300).chain([i64::MIN / 4, -(1 << 40) - 7, (1 << 40) + 5, i64::MAX / 4]);
        for x in xs {
            for k in 0..24u32 {
                for div in [Div::Trunc, Div::Floor, Div::Nearest] {
                    assert_eq!(
                        shift_round(x, k, div),
                        div_round(x, 1 << k, div),
                        "{x} {k} {div:?}"
                    );
                }
            }
        }
    }

    const F32_16: FixedFormat = FixedFormat::new(32, 16);
    const F16_8: FixedFormat = FixedFormat::new(16, 8);

    #[test]
    fn fixed_seed_by_hand() {
        // 0.75 * 2^16 = 49152 exactly.
        assert_eq!(fixed_seed(0.75, F32_16, false), Ok(49152));
        assert_eq!(fixed_seed(-0.75, F32_16, false), Ok(-49152));
        // 1/3: round(-0.3333 * 65536) = -21845 -> (0 + -21845/65536) * 65536.
        assert_eq!(fixed_seed(1.0 / 3.0, F32_16, false), Ok(21845));
        // fixed<16,8>: 8 fraction bits, 2.5 -> int 2 (half to even), frac 0.5 -> 640.
        assert_eq!(fixed_seed(2.5, F16_8, false), Ok(640));
        // Integer part 128 does not fit 8 signed bits; saturated it is 127.
        assert!(fixed_seed(128.2, F16_8, false).is_err());
        assert_eq!(fixed_seed(128.25, F16_8, true), Ok(127 * 256 + 64));
    }

    #[test]
    fn fixed_seed_works_in_float32() {
        // fixed<32,10>: 22 fraction bits; 300.3 needs 9 + 22 bits, more than
        // float32 holds, so what the seed stores is float32(300.3) * 2^22,
        // not the exact value rounded.
        let fmt = FixedFormat::new(32, 10);
        let got = fixed_seed(300.3, fmt, false).unwrap();
        let exact = (300.3f64 * 4194304.0).round() as i64;
        assert_eq!(got, (300.3f32 as f64 * 4194304.0) as i64);
        assert_ne!(got, exact);
    }

    #[test]
    fn fixed_nearest_by_hand() {
        assert_eq!(fixed_nearest(0.1, F16_8, false), Ok(26)); // 25.6 -> 26
        assert_eq!(fixed_nearest(-0.1, F16_8, false), Ok(-26));
        assert!(fixed_nearest(200.0, F16_8, false).is_err());
        assert_eq!(fixed_nearest(200.0, F16_8, true), Ok(32767));
    }

    #[test]
    fn shifts_round_as_named() {
        for (x, t, f, n) in [
            (7i64, 1, 1, 2),
            (-7, -1, -2, -2),
            (6, 1, 1, 2),
            (-6, -1, -2, -2),
            (-5, -1, -2, -1),
            (5, 1, 1, 1),
        ] {
            assert_eq!(shift_round(x, 2, Div::Trunc), t, "trunc {x}");
            assert_eq!(shift_round(x, 2, Div::Floor), f, "floor {x}");
            assert_eq!(shift_round(x, 2, Div::Nearest), n, "nearest {x}");
            assert_eq!(shift_round_wide(x as i128, 2, Div::Trunc), t);
            assert_eq!(shift_round_wide(x as i128, 2, Div::Floor), f);
            assert_eq!(shift_round_wide(x as i128, 2, Div::Nearest), n);
        }
        assert_eq!(div_round(-7, 2, Div::Trunc), -3);
        assert_eq!(div_round(-7, 2, Div::Floor), -4);
        assert_eq!(div_round(-7, 2, Div::Nearest), -4);
        assert_eq!(div_round(7, 3, Div::Nearest), 2);
    }

    #[test]
    fn formats_parse() {
        assert_eq!("32,16".parse::<FixedFormat>(), Ok(F32_16));
        assert_eq!("<16,8>".parse::<FixedFormat>(), Ok(F16_8));
        assert_eq!("fixed<16,8>".parse::<FixedFormat>(), Ok(F16_8));
        assert!("16,17".parse::<FixedFormat>().is_err());
        assert!("40,8".parse::<FixedFormat>().is_err());
    }
}
