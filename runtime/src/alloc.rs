//! Memory allocation policy of processes that train or time models.
//!
//! libtorch's CPU tensors come from `malloc`. glibc serves every block of
//! 32 MiB or more (ToyNet's expanded activations at batch 128 are 32 MiB,
//! MobileNetV2's up to 48 MiB) with a fresh `mmap` and returns it with
//! `munmap` when freed, so each training step pays page faults and the
//! kernel's zeroing of every page of those tensors again, and the fake
//! quantizers, which allocate outputs of that size, pay most. With
//! [`keep_freed_memory`] glibc takes all blocks from its heap and keeps
//! freed memory there for the next step (mallopt `M_MMAP_MAX = 0`,
//! `M_TRIM_THRESHOLD = -1`: never), and one arena serves every thread
//! (`M_ARENA_MAX = 1`: the torch worker threads' own arenas are mapped and
//! trimmed separately). The process keeps its peak footprint, and a
//! MobileNetV2 `cfg-1*` QAT step ran 1.29x -> 1.19x its float step,
//! ToyNet's 1.20x -> 1.14x; one arena took MobileNetV2 from 1.23-1.27x to
//! 1.19-1.21x in six alternating runs (`docs/performance.md`). The
//! generated binaries call it first thing (train, eval, bench, smoke).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::os::raw::c_int;

    // <malloc.h>
    pub const M_TRIM_THRESHOLD: c_int = -1;
    pub const M_MMAP_MAX: c_int = -4;
    pub const M_ARENA_MAX: c_int = -8;

    extern "C" {
        pub fn mallopt(param: c_int, value: c_int) -> c_int;
    }
}

/// Tells the C allocator to keep freed memory for reuse (see the module
/// docs); whether it could (glibc only). Call it before the first large
/// allocation.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use glibc::*;
        // SAFETY: plain mallopt calls with glibc's documented parameters.
        unsafe {
            mallopt(M_MMAP_MAX, 0) == 1
                && mallopt(M_TRIM_THRESHOLD, -1) == 1
                && mallopt(M_ARENA_MAX, 1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    /// glibc accepts every setting (a wrong parameter number would return 0).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_policy() {
        assert!(super::keep_freed_memory());
    }
}
