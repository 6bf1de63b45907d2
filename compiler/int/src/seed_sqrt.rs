//! The seed's float32 square root, for the BN constants of `trunc`.
//!
//! The seed computes `gamma / sqrt(var + eps)` with PyTorch's CPU `sqrt`,
//! which libtorch 2.13 hands to MKL's vector math library (`vsSqrt`): on
//! float32 it is not correctly rounded (one ulp off on about 15 % of inputs,
//! measured on 200,000; `torch.sqrt` and `vsSqrt` agree on all of them). A
//! constant computed from an IEEE square root therefore sits one float32 ulp
//! away on some channels, and where it is near a fixed-point rounding
//! boundary the plan's integer constant (and so an output) differs by one.
//!
//! So `trunc` takes libtorch's own `vsSqrt` where libtorch can be loaded: the
//! one `./dev` installs (`$QATC_TORCH_HOME/torch/lib/libtorch_cpu.so`), else
//! whatever `libtorch_cpu.so` the dynamic loader finds (the binaries built by
//! `./dev` carry its directory as their run path). It is loaded once per
//! process (about 0.3 s). Elsewhere the IEEE square root is used and
//! [`source`] says why; the plan is then exact with the seed except where a
//! constant sits on such a boundary.

use std::sync::OnceLock;

/// MKL's `vsSqrt(n, a, r)`: `r[i] = sqrt(a[i])` (float32).
type VsSqrt = unsafe extern "C" fn(i64, *const f32, *mut f32);

/// Where the square roots come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqrtSource {
    /// libtorch's (MKL) `vsSqrt`, from this library file.
    Libtorch(String),
    /// IEEE `sqrt`, with why libtorch's is not used.
    Ieee(String),
}

struct Loaded {
    /// Kept open for the process: `sqrt` points into it.
    _lib: Option<libloading::Library>,
    sqrt: Option<VsSqrt>,
    source: SqrtSource,
}

fn loaded() -> &'static Loaded {
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    LOADED.get_or_init(|| {
        if std::env::var_os("QATC_IEEE_SQRT").is_some() {
            return Loaded {
                _lib: None,
                sqrt: None,
                source: SqrtSource::Ieee("QATC_IEEE_SQRT is set".into()),
            };
        }
        let mut candidates = Vec::new();
        if let Some(home) = std::env::var_os("QATC_TORCH_HOME") {
            let p = std::path::Path::new(&home).join("torch/lib/libtorch_cpu.so");
            candidates.push(p.to_string_lossy().into_owned());
        }
        candidates.push("libtorch_cpu.so".to_string());
        let mut why = Vec::new();
        for name in candidates {
            // SAFETY: loading libtorch runs its initialisers, which only set
            // up its own state; `vsSqrt` has the C signature above (MKL's
            // `void vsSqrt(MKL_INT n, const float a[], float r[])`; on
            // x86-64 an `n` below 2^31 reads the same as a 32- or 64-bit
            // MKL_INT).
            let lib = match unsafe { libloading::Library::new(&name) } {
                Ok(lib) => lib,
                Err(e) => {
                    why.push(format!("{name}: {e}"));
                    continue;
                }
            };
            // SAFETY: `VsSqrt` is `vsSqrt`'s C signature (see above); the
            // function pointer stays valid while `lib` is open, and `lib` is
            // kept in `Loaded` for the life of the process.
            let sqrt = unsafe { lib.get::<VsSqrt>(b"vsSqrt\0") }.map(|s| *s);
            match sqrt {
                Ok(sqrt) => {
                    return Loaded {
                        _lib: Some(lib),
                        sqrt: Some(sqrt),
                        source: SqrtSource::Libtorch(name),
                    };
                }
                Err(e) => why.push(format!("{name}: {e}")),
            }
        }
        Loaded {
            _lib: None,
            sqrt: None,
            source: SqrtSource::Ieee(format!("libtorch not loaded ({})", why.join("; "))),
        }
    })
}

/// Where [`sqrt_f32`] takes its square roots from in this process.
pub fn source() -> SqrtSource {
    loaded().source.clone()
}

/// `sqrt(x)` for every element, as the seed's PyTorch computes it where
/// libtorch can be loaded (see the module docs), else IEEE.
pub fn sqrt_f32(x: &[f32]) -> Vec<f32> {
    let l = loaded();
    match l.sqrt {
        Some(f) if !x.is_empty() => {
            let mut out = vec![0f32; x.len()];
            // SAFETY: `f` is MKL's vsSqrt (see `loaded`), reading `x.len()`
            // floats from `x` and writing as many into `out`.
            unsafe { f(x.len() as i64, x.as_ptr(), out.as_mut_ptr()) };
            out
        }
        _ => x.iter().map(|v| v.sqrt()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the source, the results are square roots within one ulp,
    /// exact on perfect squares, and IEEE where libtorch is not loaded.
    #[test]
    fn square_roots_within_one_ulp() {
        let x: Vec<f32> = (0..5000).map(|i| 0.01 + i as f32 * 0.37).collect();
        let r = sqrt_f32(&x);
        for (a, b) in x.iter().zip(&r) {
            let ieee = a.sqrt();
            let ulps = (b.to_bits() as i64 - ieee.to_bits() as i64).abs();
            assert!(ulps <= 1, "sqrt({a}) = {b}, IEEE {ieee}");
            if matches!(source(), SqrtSource::Ieee(_)) {
                assert_eq!(*b, ieee);
            }
        }
        assert_eq!(sqrt_f32(&[4.0, 9.0, 0.0]), [2.0, 3.0, 0.0]);
        assert!(sqrt_f32(&[]).is_empty());
    }
}
