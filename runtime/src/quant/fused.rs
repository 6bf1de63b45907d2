//! The fused activation quantizers: one C++ autograd function
//! (`csrc/fused_quant.cpp`, compiled by `build.rs` against libtorch) for
//! DoReFa activations, PACT and mPACT on CPU float tensors.
//!
//! Forward is one pass over the input writing the quantized values and a
//! one-byte code per element (inside the clipping range, clipped at `+|a|`,
//! clipped at `-|a|`); backward is one pass writing `dx = g * inside` (times
//! 0.1 for DoReFa) and summing `dalpha`. The values and `dx` are those of the
//! stock-op path in `quant.rs` bit for bit (the same float operations in the
//! same order, no FMA contraction); `dalpha` is the same sum in another
//! order (float lanes flushed into doubles), so equal within float rounding.
//! `tests/fused_quantizers.rs` checks all three against the reference.
//!
//! Other devices and kinds (CUDA, f64) take the stock-op path.

use tch::{Device, Kind, Tensor};

/// Which quantizer (the C++ `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub(crate) enum Mode {
    Dorefa = 0,
    Pact = 1,
    Mpact = 2,
}

/// An activation applied to the input inside the same pass (the C++ `act`):
/// the quantizer reads `relu(x)` / `relu6(x)`, and `x` gets the gradient of
/// the composition, as `quantize(ops::relu(x))` would give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub(crate) enum Act {
    None = 0,
    Relu = 1,
    Relu6 = 2,
}

impl Act {
    /// The activation alone, as the unfused path applies it.
    pub(crate) fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Act::None => x.shallow_clone(),
            Act::Relu => crate::ops::relu(x),
            Act::Relu6 => crate::ops::relu6(x),
        }
    }
}

extern "C" {
    fn qatc_fq_quantize(
        x: *const torch_sys::C_tensor,
        alpha: *const torch_sys::C_tensor,
        mode: i64,
        bits: i64,
        act: i64,
        track: i32,
    ) -> *mut torch_sys::C_tensor;
    fn qatc_fq_last_error() -> *const std::os::raw::c_char;
}

/// Whether the fused path serves `x` (and `alpha`): CPU float tensors,
/// unless [`super::set_fused_kernels`] switched it off.
pub(crate) fn applies(x: &Tensor, alpha: Option<&Tensor>) -> bool {
    if !super::FUSED_KERNELS.with(|f| f.get()) {
        return false;
    }
    let cpu_float = |t: &Tensor| t.device() == Device::Cpu && t.kind() == Kind::Float;
    cpu_float(x) && alpha.is_none_or(cpu_float)
}

/// The quantized `act(x)`; with `track`, carrying the seed's gradients to
/// `x` and `alpha` (see the module docs).
///
/// # Panics
/// If libtorch raises an error (a tensor [`applies`] rejects).
pub(crate) fn quantize(
    x: &Tensor,
    alpha: Option<&Tensor>,
    mode: Mode,
    bits: u32,
    act: Act,
    track: bool,
) -> Tensor {
    let alpha_ptr = alpha.map_or(std::ptr::null(), Tensor::as_ptr);
    // SAFETY: the pointers are live tensors borrowed for the call; the
    // result is a new tensor the caller owns (or null on an error).
    unsafe {
        let out = qatc_fq_quantize(
            x.as_ptr(),
            alpha_ptr,
            mode as i64,
            i64::from(bits),
            act as i64,
            i32::from(track),
        );
        if out.is_null() {
            let msg = std::ffi::CStr::from_ptr(qatc_fq_last_error()).to_string_lossy();
            panic!("fused quantizer: {msg}");
        }
        Tensor::from_ptr(out)
    }
}
