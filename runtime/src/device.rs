//! The `--device` option of generated binaries and `qatc train` / `eval`.
//!
//! Input: the user's text (`auto`, `cpu`, `cuda`, `cuda:N`). Output: a
//! [`tch::Device`] that exists on this machine, or a message saying why not.
//!
//! Asking for a GPU that is not there is an error here, up front, with a
//! message that names what was asked and what there is; left to libtorch it
//! would surface later as an opaque C++ exception from the first tensor moved
//! to the device. Only `auto` falls back to the CPU silently.

use tch::Device;

/// The device `s` names: `auto` (CUDA device 0 if CUDA is available, the CPU
/// otherwise), `cpu`, `cuda` (device 0) or `cuda:N`.
///
/// # Errors
/// On any other text, on `cuda` / `cuda:N` when CUDA is not available, and
/// on `cuda:N` when there is no device `N`.
pub fn parse_device(s: &str) -> Result<Device, String> {
    let cuda_devices = if tch::Cuda::is_available() {
        usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
    } else {
        0
    };
    resolve(s, cuda_devices)
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
