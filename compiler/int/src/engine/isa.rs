//! Which vector extensions beyond AVX2 the kernels may use: AVX-512 with
//! VNNI (`vpdpwssd` on 512-bit registers: sixteen lanes of i16 pair
//! products added into i32 in one instruction, where AVX2 takes
//! `vpmaddwd` and `vpaddd` on eight).
//!
//! Detected at run time, once per thread. `QATC_INT_ISA=avx2` keeps the
//! kernels on AVX2 on a CPU that has more (to compare the two side by side
//! in one sitting, `qatc int bench`); the tests pin either choice on their
//! own thread with [`with_avx512`]. Both paths compute the same sums
//! (integer multiply-adds that wrap alike, `vpdpwssd` being `vpmaddwd`
//! followed by `vpaddd`), so the choice changes speed only.

use std::cell::Cell;

thread_local! {
    static AVX512: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether the CPU has AVX-512 F, BW and VNNI (and AVX2) and the kernels
/// may use them: not where `QATC_INT_ISA` is `avx2`, or inside
/// [`with_avx512`]`(false, ..)`.
pub(super) fn avx512_vnni() -> bool {
    AVX512.with(|c| match c.get() {
        Some(v) => v,
        None => {
            let v = detected() && std::env::var("QATC_INT_ISA").map_or(true, |s| s != "avx2");
            c.set(Some(v));
            v
        }
    })
}

/// What the CPU has (ignoring `QATC_INT_ISA`).
fn detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The name of the widest kernels this thread runs (for reports).
pub fn kernels() -> &'static str {
    if avx512_vnni() {
        "avx512-vnni"
    } else if avx2() {
        "avx2"
    } else {
        "portable"
    }
}

/// Runs `f` with the AVX-512 kernels on (where the CPU has them) or off,
/// on this thread; restores the choice before. For tests that cover both
/// paths.
#[cfg(test)]
pub(super) fn with_avx512<R>(on: bool, f: impl FnOnce() -> R) -> R {
    let before = AVX512.with(|c| c.replace(Some(on && detected())));
    let r = f();
    AVX512.with(|c| c.set(before));
    r
}

/// Runs `f` on this thread with the AVX-512 kernels off, then on (where
/// the CPU has them): the tests of the kernels that have both forms.
#[cfg(test)]
pub(super) fn on_each(f: impl Fn()) {
    with_avx512(false, &f);
    if detected() {
        with_avx512(true, &f);
    }
}
