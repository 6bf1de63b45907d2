//! The `--device` option of generated binaries and `qatc train` / `eval`.
//!
//! Input: the user's text (`auto`, `cpu`, `cuda`, `cuda:N`). Output: a
//! [`tch::Device`] that exists on this machine, or a message saying why not.
//!
//! Asking for a GPU that is not there is an error here, up front, with a
//! message that names what was asked and what there is; left to libtorch it
//! would surface later as an opaque C++ exception from the first tensor moved
//! to the device. Only `auto` falls back to the CPU silently.
//!
//! Choosing a CUDA device also sets how libtorch computes float32 there
//! ([`CudaMath`]): by default full float32 (no TF32) and deterministic cuDNN
//! algorithms, so that a CUDA run differs from a CPU run only by the order
//! of float sums, as two CPU kernels do (`docs/training.md`, "On a GPU").

use tch::Device;

extern "C" {
    fn qatc_cuda_math(allow_tf32: i32, deterministic: i32);
    fn qatc_cuda_math_tf32() -> i32;
    fn qatc_cpu_capability(buf: *mut std::ffi::c_char, len: i32) -> i32;
}

/// The CPU capability libtorch dispatches its CPU kernels to (`DEFAULT`,
/// `AVX2`, `AVX512`, ...), as PyTorch's
/// `torch.backends.cpu.get_cpu_capability()` reports it: from the CPU's
/// flags, capped by `ATEN_CPU_CAPABILITY`. Two machines of one capability
/// run the same convolution kernels; the golden sets record it
/// (`made_on`).
pub fn cpu_capability() -> String {
    let mut buf = [0u8; 64];
    // SAFETY: `buf` holds `buf.len()` bytes, which the function writes at
    // most (NUL included).
    let n = unsafe { qatc_cpu_capability(buf.as_mut_ptr().cast(), buf.len() as i32) };
    let n = usize::try_from(n).unwrap_or(0).min(buf.len() - 1);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// How float32 is computed on CUDA devices (process-wide libtorch flags).
///
/// - `tf32`: cuDNN convolutions and cuBLAS matrix products may use TF32
///   tensor cores (10-bit mantissa products: faster on Ampere and later,
///   but about 1e-3 relative error per product, which moves values across
///   the fake quantizers' rounding boundaries far more often than a changed
///   summation order does). PyTorch allows it in convolutions by default;
///   qatc does not unless `QATC_CUDA_TF32=1`.
/// - `deterministic`: cuDNN picks deterministic algorithms (the same bits
///   from run to run on one machine; some backward kernels otherwise sum
///   with atomics in varying order). On unless `QATC_CUDA_DETERMINISTIC=0`.
///
/// cuDNN's autotuner (`benchmark`) stays off: it picks kernels by timing
/// them, so results would depend on the machine's load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaMath {
    pub tf32: bool,
    pub deterministic: bool,
}

impl CudaMath {
    /// qatc's default: full float32, deterministic.
    pub const EXACT: CudaMath = CudaMath {
        tf32: false,
        deterministic: true,
    };

    /// The default with `QATC_CUDA_TF32` and `QATC_CUDA_DETERMINISTIC`
    /// (`0` or `1`) applied.
    ///
    /// # Errors
    /// On a value other than `0` or `1`, naming the variable.
    pub fn from_env() -> Result<CudaMath, String> {
        let flag = |name: &str, default: bool| match std::env::var(name) {
            Err(std::env::VarError::NotPresent) => Ok(default),
            Ok(v) if v == "1" => Ok(true),
            Ok(v) if v == "0" => Ok(false),
            Ok(v) => Err(format!("{name}={v:?}: expected 0 or 1")),
            Err(std::env::VarError::NotUnicode(v)) => Err(format!("{name}={v:?}: expected 0 or 1")),
        };
        Ok(CudaMath {
            tf32: flag("QATC_CUDA_TF32", Self::EXACT.tf32)?,
            deterministic: flag("QATC_CUDA_DETERMINISTIC", Self::EXACT.deterministic)?,
        })
    }

    /// Sets libtorch's flags (they apply to every CUDA device of the process).
    pub fn apply(self) {
        // SAFETY: sets plain flags of libtorch's global context; no pointers.
        unsafe { qatc_cuda_math(i32::from(self.tf32), i32::from(self.deterministic)) }
    }

    /// Whether libtorch's cuDNN convolutions may use TF32 now.
    pub fn tf32_now() -> bool {
        // SAFETY: reads a flag of libtorch's global context.
        unsafe { qatc_cuda_math_tf32() != 0 }
    }
}

/// The device `s` names: `auto` (CUDA device 0 if CUDA is available, the CPU
/// otherwise), `cpu`, `cuda` (device 0) or `cuda:N`. A CUDA device gets
/// [`CudaMath::from_env`]'s settings.
///
/// # Errors
/// On any other text, on `cuda` / `cuda:N` when CUDA is not available, on
/// `cuda:N` when there is no device `N`, and on a CUDA device when a
/// `QATC_CUDA_*` variable is malformed.
pub fn parse_device(s: &str) -> Result<Device, String> {
    let cuda_devices = if tch::Cuda::is_available() {
        usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
    } else {
        0
    };
    let device = resolve(s, cuda_devices)?;
    if device.is_cuda() {
        CudaMath::from_env()?.apply();
    }
    Ok(device)
}

/// The name [`parse_device`] reads for `device`: `cpu`, `cuda:N` (`mps`,
/// `vulkan` for the devices qatc does not select itself).
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(index) => format!("cuda:{index}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
    }
}

/// [`parse_device`] on a machine with `cuda_devices` CUDA devices.
fn resolve(s: &str, cuda_devices: usize) -> Result<Device, String> {
    let index = match s {
        "auto" if cuda_devices > 0 => return Ok(Device::Cuda(0)),
        "auto" | "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => {
            let Some(n) = s.strip_prefix("cuda:") else {
                return Err(format!(
                    "unknown device `{s}`; expected `auto`, `cpu`, `cuda` or `cuda:N`"
                ));
            };
            // `usize::from_str` takes a leading `+`; a device index does not.
            match n.parse::<usize>() {
                Ok(index) if n.bytes().all(|b| b.is_ascii_digit()) => index,
                _ => {
                    return Err(format!(
                        "bad device `{s}`: `{n}` is not a CUDA device index (expected `cuda:0`, `cuda:1`, ...)"
                    ))
                }
            }
        }
    };
    if cuda_devices == 0 {
        return Err(format!(
            "device `{s}` asked for, but CUDA is not available here (no GPU, or a CPU-only libtorch); use `cpu` or `auto`"
        ));
    }
    if index >= cuda_devices {
        let last = cuda_devices - 1;
        let plural = if cuda_devices == 1 { "" } else { "s" };
        return Err(format!(
            "device `{s}` does not exist: {cuda_devices} CUDA device{plural} here (cuda:0..=cuda:{last})"
        ));
    }
    Ok(Device::Cuda(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_cuda() {
        assert_eq!(resolve("auto", 0), Ok(Device::Cpu));
        assert_eq!(resolve("cpu", 0), Ok(Device::Cpu));
        for s in ["cuda", "cuda:0", "cuda:1"] {
            let err = resolve(s, 0).unwrap_err();
            assert!(err.contains("CUDA is not available"), "{err}");
            assert!(err.contains(&format!("`{s}`")), "{err}");
        }
    }

    #[test]
    fn with_two_gpus() {
        assert_eq!(resolve("auto", 2), Ok(Device::Cuda(0)));
        assert_eq!(resolve("cpu", 2), Ok(Device::Cpu));
        assert_eq!(resolve("cuda", 2), Ok(Device::Cuda(0)));
        assert_eq!(resolve("cuda:1", 2), Ok(Device::Cuda(1)));
        assert_eq!(
            resolve("cuda:2", 2).unwrap_err(),
            "device `cuda:2` does not exist: 2 CUDA devices here (cuda:0..=cuda:1)"
        );
        assert_eq!(
            resolve("cuda:1", 1).unwrap_err(),
            "device `cuda:1` does not exist: 1 CUDA device here (cuda:0..=cuda:0)"
        );
    }

    #[test]
    fn malformed_names() {
        for s in [
            "", "gpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda:+1", "cuda:0:1",
        ] {
            let err = resolve(s, 2).unwrap_err();
            assert!(err.contains(&format!("`{s}`")), "{s:?}: {err}");
        }
        assert!(resolve("gpu", 2).unwrap_err().starts_with("unknown device"));
        assert!(resolve("cuda:x", 2)
            .unwrap_err()
            .contains("not a CUDA device index"));
    }

    #[test]
    fn cuda_math_flags_are_set_and_read_back() {
        // libtorch's flags exist without a GPU.
        for m in [
            CudaMath {
                tf32: true,
                deterministic: false,
            },
            CudaMath::EXACT,
        ] {
            m.apply();
            assert_eq!(CudaMath::tf32_now(), m.tf32);
        }
    }

    /// libtorch names its CPU capability; on an x86-64 CPU with AVX2 and
    /// FMA (and no cap set) it is one of its vectorised ones.
    #[test]
    fn cpu_capability_is_libtorchs() {
        let c = cpu_capability();
        assert!(
            !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric()),
            "{c:?}"
        );
        #[cfg(target_arch = "x86_64")]
        if std::env::var_os("ATEN_CPU_CAPABILITY").is_none()
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            assert!(c == "AVX2" || c == "AVX512", "{c:?}");
        }
    }

    #[test]
    fn names_read_back() {
        assert_eq!(device_name(Device::Cpu), "cpu");
        assert_eq!(device_name(Device::Cuda(1)), "cuda:1");
        for device in [Device::Cpu, Device::Cuda(0), Device::Cuda(1)] {
            assert_eq!(resolve(&device_name(device), 2), Ok(device));
        }
    }

    #[test]
    fn this_machine() {
        let available = tch::Cuda::is_available();
        assert_eq!(parse_device("cpu"), Ok(Device::Cpu));
        let auto = parse_device("auto").unwrap();
        assert_eq!(
            auto,
            if available {
                Device::Cuda(0)
            } else {
                Device::Cpu
            }
        );
        assert_eq!(parse_device("cuda").is_ok(), available);
        let beyond = format!("cuda:{}", tch::Cuda::device_count());
        assert!(parse_device(&beyond).is_err());
    }
}
