//! Compiles `csrc/fused_quant.cpp`, the fused activation quantizers
//! (`src/quant/fused.rs`), `csrc/c10d.cpp`, libtorch's c10d collectives
//! for data-parallel training (`src/dist.rs`), and `csrc/cuda_math.cpp`,
//! the float32 settings of CUDA devices and libtorch's CPU capability
//! (`src/device.rs`), against the
//! libtorch that torch-sys links.
//!
//! torch-sys (`links = "tch"`) exports its library directory as
//! `DEP_TCH_LIBTORCH_LIB` (this crate depends on it directly for that
//! reason); the headers sit next to it (`../include`, the layout of both
//! the pip wheel and the libtorch archive). The C++ ABI must be libtorch's:
//! `LIBTORCH_CXX11_ABI` (torch-sys's variable) when set, otherwise read from
//! `libc10.so` (the new ABI's symbols contain `__cxx11`).
//!
//! Flags: `-ffp-contract=off` keeps every multiply and add rounded on its
//! own (an FMA would change values against the stock ops), and the file is
//! always optimised (`-O3`), also in debug builds, where the unoptimised
//! loops would dominate a test's run time. `-fopenmp`: `at::parallel_for`
//! is a header template whose parallel form (`#pragma omp parallel`, in
//! ATen/ParallelOpenMP.h) exists only where `_OPENMP` is defined; without
//! the flag every kernel here ran on one thread. The calls go to the
//! libgomp that libtorch itself uses (torch-sys links `gomp`, the binaries'
//! run path finds the wheel's `libgomp.so.1`), so `at::set_num_threads`
//! sets their thread count too.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc/fused_quant.cpp");
    println!("cargo:rerun-if-changed=csrc/c10d.cpp");
    println!("cargo:rerun-if-changed=csrc/cuda_math.cpp");
    println!("cargo:rerun-if-changed=csrc/gloo-decl");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib = PathBuf::from(
        env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not export DEP_TCH_LIBTORCH_LIB (libtorch's lib directory)"),
    );
    let root = lib.parent().expect("libtorch's lib directory has a parent");
    let include = root.join("include");
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| {
        let c10 = std::fs::read(lib.join("libc10.so")).unwrap_or_default();
        let new_abi = c10.windows(7).any(|w| w == b"__cxx11");
        if new_abi { "1" } else { "0" }.to_owned()
    });
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(true)
        // libtorch's headers as system headers: their own warnings are not ours.
        .flag("-isystem")
        .flag(include.display().to_string())
        .flag("-isystem")
        .flag(include.join("torch/csrc/api/include").display().to_string())
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag("-O3")
        .flag("-ffp-contract=off")
        .flag("-fopenmp")
        // gloo's types as c10d's headers name them (the wheel ships c10d's
        // headers, not gloo's: see csrc/gloo-decl/gloo/rendezvous/store.h).
        .include("csrc/gloo-decl")
        .file("csrc/fused_quant.cpp")
        .file("csrc/c10d.cpp")
        .file("csrc/cuda_math.cpp")
        .compile("qatc_fused_quant");
}
