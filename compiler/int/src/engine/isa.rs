//! Which vector extensions beyond AVX2 the kernels may use, in three
//! levels: AVX2; AVX-512 with VNNI (`vpdpwssd` / `vpdpbusd` on 512-bit
//! registers: sixteen lanes of i16 pair or u8 quad products added into i32
//! in one instruction, where AVX2 takes `vpmaddwd` and `vpaddd` on eight);
//! and AMX with INT8 (`tdpbsud`: a 16 x 64 tile of s8 weights times a 64 x
//! 16 tile of u8 operand quads into a 16 x 16 tile of i32 sums, 16,384
//! products in one instruction, [`super::amx`]).
//!
//! Detected at run time, once per thread; AMX also needs the kernel's
//! permission to use the tile data state (Linux: `arch_prctl(
//! ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, asked once per process).
//! `QATC_INT_ISA=avx2` or `avx512` caps the level on a CPU that has more
//! (to compare them side by side in one sitting, `qatc int bench`); the
//! tests pin a level on their own thread with `with_level`. Every level
//! computes the same sums (exact integer multiply-adds that wrap alike), so
//! the choice changes speed only.

use std::cell::Cell;

/// The kernels' level, ordered: each has everything the one before has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Level {
    /// AVX2 or nothing (the plain loops check AVX2 themselves).
    Avx2,
    /// AVX-512 F, BW and VNNI.
    Avx512,
    /// AVX-512 as above and AMX-TILE, AMX-INT8, the tile state permitted.
    Amx,
}

thread_local! {
    static LEVEL: Cell<Option<Level>> = const { Cell::new(None) };
}

/// This thread's level: what the CPU has, capped by `QATC_INT_ISA` or
/// `with_level`.
fn level() -> Level {
    LEVEL.with(|c| match c.get() {
        Some(v) => v,
        None => {
            let cap = match std::env::var("QATC_INT_ISA").as_deref() {
                Ok("avx2") => Level::Avx2,
                Ok("avx512") => Level::Avx512,
                _ => Level::Amx,
            };
            let v = detected().min(cap);
            c.set(Some(v));
            v
        }
    })
}

/// Whether the CPU has AVX-512 F, BW and VNNI (and AVX2) and the kernels
/// may use them: not where `QATC_INT_ISA` is `avx2`, or inside
/// `with_level(Level::Avx2, ..)`.
pub(super) fn avx512_vnni() -> bool {
    level() >= Level::Avx512
}

/// Whether the CPU also has AVX-512 VBMI (`vpermi2b`: sixty-four bytes
/// picked from a 128-byte table in one instruction) and the AVX-512
/// kernels may run ([`avx512_vnni`]).
pub(super) fn avx512_vbmi() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512_vnni() && std::arch::is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU also has AVX-512 DQ and VL (`vpmullq`: i64 lanes
/// multiplied, for the requantization passes the compiler vectorises) and
/// the AVX-512 kernels may run ([`avx512_vnni`]).
pub(super) fn avx512_dq() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512_vnni()
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Calls the safe function `$body` with `$args` (each `name: type`)
/// compiled for the widest of AVX-512 F, BW, DQ and VL ([`avx512_dq`]),
/// AVX2, or neither, that this thread may use: for loops the compiler
/// vectorises (an integer loop computes the same in every form).
macro_rules! vectorised {
    ($body:ident($($arg:ident: $ty:ty),* $(,)?)) => {{
        /// The body compiled with AVX-512.
        ///
        /// # Safety
        ///
        /// The CPU must support AVX-512 F, BW, DQ and VL (the body is
        /// safe Rust).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,avx512f,avx512bw,avx512dq,avx512vl")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn avx512($($arg: $ty),*) {
            $body($($arg),*)
        }
        /// The body compiled with AVX2.
        ///
        /// # Safety
        ///
        /// The CPU must support AVX2 (the body is safe Rust).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn avx2($($arg: $ty),*) {
            $body($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        let done = if $crate::engine::isa::avx512_dq() {
            // SAFETY: the CPU has AVX-512 F, BW, DQ and VL (`avx512_dq`).
            unsafe { avx512($($arg),*) };
            true
        } else if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { avx2($($arg),*) };
            true
        } else {
            false
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = false;
        if !done {
            $body($($arg),*)
        }
    }};
}
pub(super) use vectorised;

/// Whether the AMX kernels may run (the CPU has them, the OS let this
/// process use the tiles, and no cap below).
pub(super) fn amx() -> bool {
    level() >= Level::Amx
}

/// What the CPU has (ignoring `QATC_INT_ISA`).
fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = avx2()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni");
        match (avx512, avx512 && super::amx::permitted()) {
            (_, true) => Level::Amx,
            (true, false) => Level::Avx512,
            _ => Level::Avx2,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Level::Avx2
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
    match level() {
        Level::Amx => "amx-int8 + avx512-vnni",
        Level::Avx512 => "avx512-vnni",
        Level::Avx2 if avx2() => "avx2",
        Level::Avx2 => "portable",
    }
}

/// Runs `f` with the kernels of at most `cap` (as far as the CPU has them)
/// on this thread; restores the choice before. For tests that cover every
/// path.
#[cfg(test)]
pub(super) fn with_level<R>(cap: Level, f: impl FnOnce() -> R) -> R {
    let before = LEVEL.with(|c| c.replace(Some(cap.min(detected()))));
    let r = f();
    LEVEL.with(|c| c.set(before));
    r
}

/// Runs `f` on this thread at each level the CPU has, AVX2 first: the
/// tests of the kernels that have several forms.
#[cfg(test)]
pub(super) fn on_each(f: impl Fn()) {
    for cap in [Level::Avx2, Level::Avx512, Level::Amx] {
        if cap <= detected() {
            with_level(cap, &f);
        }
    }
}
