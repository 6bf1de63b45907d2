//! [`QuantError`]: a quantizer asked for what it does not support, or the
//! fused kernel refusing a tensor.
//!
//! The constructors that take a profile's numbers (`ActQuant::try_from_spec`,
//! `QConv2d::try_new`, `QLinear::try_new`) check them with
//! [`bits_supported`] / [`scale_supported`] and return these errors; the
//! older constructors panic with the same message ([`check_bits`]).

use super::FLOAT_BITS;

/// Why a quantizer cannot be built or run as asked.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum QuantError {
    /// A bit-width outside `min..=16` that is not [`FLOAT_BITS`].
    #[error("{quantizer}: bit-width {bits} not supported (expected {min}..=16 or {FLOAT_BITS})")]
    Bits {
        quantizer: &'static str,
        bits: u32,
        min: u32,
    },
    /// A fixed-scale PACT scale that is not positive and finite.
    #[error("fixed-scale PACT: scale must be positive and finite, got {scale}")]
    Scale { scale: f64 },
    /// libtorch raised an error inside the fused C++ kernel
    /// (`csrc/fused_quant.cpp`); its message.
    #[error("fused quantizer: {message}")]
    FusedKernel { message: String },
}

/// `Ok` where `bits` is [`FLOAT_BITS`] or in `min..=16`: the seed quantizes
/// to at most 16 bits, and the checked spec never asks for more.
pub(crate) fn bits_supported(
    quantizer: &'static str,
    bits: u32,
    min: u32,
) -> Result<(), QuantError> {
    if bits == FLOAT_BITS || (min..=16).contains(&bits) {
        Ok(())
    } else {
        Err(QuantError::Bits {
            quantizer,
            bits,
            min,
        })
    }
}

/// `Ok` where a fixed-scale PACT `scale` is positive and finite.
pub(crate) fn scale_supported(scale: f64) -> Result<(), QuantError> {
    if scale.is_finite() && scale > 0.0 {
        Ok(())
    } else {
        Err(QuantError::Scale { scale })
    }
}

/// Panics with [`bits_supported`]'s error: for the functions whose
/// signatures have no room for one (documented under their `# Panics`).
pub(crate) fn check_bits(quantizer: &'static str, bits: u32, min: u32) {
    if let Err(e) = bits_supported(quantizer, bits, min) {
        panic!("{e}");
    }
}

/// Panics with [`scale_supported`]'s error (see [`check_bits`]).
pub(crate) fn check_scale(scale: f64) {
    if let Err(e) = scale_supported(scale) {
        panic!("{e}");
    }
}
