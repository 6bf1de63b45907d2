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
//! The DoReFa weight quantizer has a node of its own ([`dorefa_weight`]):
//! the stock ops, run on the calling thread alone.
//!
//! Other devices and kinds (CUDA, f64) take the stock-op path, and so does
//! a call whose kernel raised an error ([`or_report`]).

use super::QuantError;
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
    /// PyTorch's hardswish; its gradient is not a 0/1 mask, so the kernel
    /// keeps `x` and runs PyTorch's own hardswish backward on the
    /// quantizer's input gradient.
    Hardswish = 3,
}

impl Act {
    /// The activation alone, as the unfused path applies it.
    pub(crate) fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Act::None => x.shallow_clone(),
            Act::Relu => crate::ops::relu(x),
            Act::Relu6 => crate::ops::relu6(x),
            Act::Hardswish => crate::ops::hardswish(x),
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
    fn qatc_fq_quantize_concat(
        xs: *const *const torch_sys::C_tensor,
        count: i64,
        alpha: *const torch_sys::C_tensor,
        mode: i64,
        bits: i64,
        acts: i64,
        track: i32,
    ) -> *mut torch_sys::C_tensor;
    fn qatc_fq_quantize_mul(
        x: *const torch_sys::C_tensor,
        gate: *const torch_sys::C_tensor,
        alpha: *const torch_sys::C_tensor,
        mode: i64,
        bits: i64,
        track: i32,
    ) -> *mut torch_sys::C_tensor;
    fn qatc_fq_dorefa_weight(w: *const torch_sys::C_tensor, bits: i64) -> *mut torch_sys::C_tensor;
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
/// `x` and `alpha` (see the module docs). An error carries libtorch's
/// message where the kernel raised one (a tensor [`applies`] rejects, an
/// allocation that failed).
pub(crate) fn quantize(
    x: &Tensor,
    alpha: Option<&Tensor>,
    mode: Mode,
    bits: u32,
    act: Act,
    track: bool,
) -> Result<Tensor, QuantError> {
    let alpha_ptr = alpha.map_or(std::ptr::null(), Tensor::as_ptr);
    // SAFETY: the pointers are live tensors borrowed for the call; the
    // result is a new tensor the caller owns, or null on an error.
    let out = unsafe {
        qatc_fq_quantize(
            x.as_ptr(),
            alpha_ptr,
            mode as i64,
            i64::from(bits),
            act as i64,
            i32::from(track),
        )
    };
    take(out)
}

/// The kernel's result as a tensor, or its error message.
fn take(out: *mut torch_sys::C_tensor) -> Result<Tensor, QuantError> {
    if out.is_null() {
        // SAFETY: after a null result the kernel's thread-local error
        // message is a NUL-terminated string that lives until the next
        // call on this thread; it is copied at once.
        let message = unsafe { std::ffi::CStr::from_ptr(qatc_fq_last_error()) }
            .to_string_lossy()
            .into_owned();
        return Err(QuantError::FusedKernel { message });
    }
    // SAFETY: a non-null result is a tensor allocated by the kernel for
    // this call, owned by no one else: the `Tensor` takes it over.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// The quantized `concat(act_0(x_0), act_1(x_1), ...)` along the channels
/// (4-D inputs; ReLU / ReLU6 / none per input), in one pass that writes the
/// quantized map and its code but never the concatenation; backward writes
/// each input's gradient directly. Values and input gradients are those of
/// [`quantize`] on `ops::concat` of the activations, bit for bit.
pub(crate) fn quantize_concat(
    xs: &[(&Tensor, Act)],
    alpha: Option<&Tensor>,
    mode: Mode,
    bits: u32,
    track: bool,
) -> Result<Tensor, QuantError> {
    let ptrs: Vec<*const torch_sys::C_tensor> = xs.iter().map(|(x, _)| x.as_ptr()).collect();
    let acts = xs.iter().enumerate().try_fold(0i64, |packed, (i, (_, act))| {
        if *act == Act::Hardswish || i >= 31 {
            Err(QuantError::FusedKernel {
                message: "fused concat quantizer: ReLU, ReLU6 or no activation per input, at most 31 inputs".into(),
            })
        } else {
            Ok(packed | ((*act as i64) << (2 * i)))
        }
    })?;
    let alpha_ptr = alpha.map_or(std::ptr::null(), Tensor::as_ptr);
    // SAFETY: as in `quantize`; `ptrs` lives through the call.
    let out = unsafe {
        qatc_fq_quantize_concat(
            ptrs.as_ptr(),
            ptrs.len() as i64,
            alpha_ptr,
            mode as i64,
            i64::from(bits),
            acts,
            i32::from(track),
        )
    };
    take(out)
}

/// The quantized gating product `x * gate` (`x` `[N, C, H, W]`, `gate`
/// `[N, C, 1, 1]`) in one pass that never writes the product; backward is
/// the quantizer's followed by the product's (`dx = dq * gate`, `dgate =
/// (dq * x)` summed to the gate's shape, as autograd computes them), so
/// values and gradients are those of the unfused ops bit for bit.
pub(crate) fn quantize_mul(
    x: &Tensor,
    gate: &Tensor,
    alpha: Option<&Tensor>,
    mode: Mode,
    bits: u32,
    track: bool,
) -> Result<Tensor, QuantError> {
    let alpha_ptr = alpha.map_or(std::ptr::null(), Tensor::as_ptr);
    // SAFETY: as in `quantize`.
    let out = unsafe {
        qatc_fq_quantize_mul(
            x.as_ptr(),
            gate.as_ptr(),
            alpha_ptr,
            mode as i64,
            i64::from(bits),
            i32::from(track),
        )
    };
    take(out)
}

/// The DoReFa weight quantizer (2 to 16 bits) as one autograd node whose
/// forward and backward run on the calling thread alone: the same ops as
/// [`super::dorefa_weight`]'s stock path, and in backward PyTorch's own
/// derivatives of them (the graph built again and differentiated), so the
/// same values and gradients. A weight is small (a few thousand to a few
/// hundred thousand elements): split over threads, each of its dozen ops
/// would wait longer for a sleeping thread than it computes.
pub(crate) fn dorefa_weight(w: &Tensor, bits: u32) -> Result<Tensor, QuantError> {
    // SAFETY: as in `quantize`.
    let out = unsafe { qatc_fq_dorefa_weight(w.as_ptr(), i64::from(bits)) };
    take(out)
}

/// The fused kernel's result, or `None` after reporting its error (once
/// per process, on stderr): the caller then takes the stock-op path, which
/// computes the same values and gradients (see the module docs), so a
/// tensor the kernel refuses costs speed, never a wrong number or a panic.
/// The quantizers' signatures (`nn::Module::forward` among them) have no
/// room for an error.
pub(crate) fn or_report(result: Result<Tensor, QuantError>) -> Option<Tensor> {
    static REPORTED: std::sync::Once = std::sync::Once::new();
    match result {
        Ok(q) => Some(q),
        Err(e) => {
            REPORTED.call_once(|| {
                eprintln!(
                    "warning: {e}; using the stock-op quantizers, which give the same values"
                );
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_error_is_an_error_value_and_the_stock_path_takes_over() {
        let x = Tensor::from_slice(&[0.5f32, 2.0, 7.0]);
        // Not a scalar: the kernel's `alpha.item()` raises.
        let alpha = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let err = quantize(&x, Some(&alpha), Mode::Pact, 4, Act::None, false).unwrap_err();
        assert!(
            matches!(&err, QuantError::FusedKernel { message } if !message.is_empty()),
            "{err}"
        );
        assert!(or_report(Err(err)).is_none());
        let alpha = Tensor::from(6.0f32);
        let q = quantize(&x, Some(&alpha), Mode::Pact, 4, Act::None, false).unwrap();
        assert!(or_report(Ok(q.shallow_clone())).unwrap().equal(&q));
    }
}
