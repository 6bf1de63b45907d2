// How libtorch computes float32 on CUDA: TF32 tensor cores or full float32
// in cuDNN convolutions and cuBLAS matrix products, and whether cuDNN picks
// deterministic algorithms (src/device.rs, `CudaMath`). These are flags of
// libtorch's global context; setting them needs no GPU (on a machine
// without one they are simply never read). Also which CPU kernels libtorch
// dispatches to (`qatc_cpu_capability`).
#include <ATen/Context.h>
#include <ATen/Version.h>

#include <algorithm>
#include <cstring>
#include <string>

// libtorch's CPU capability ("DEFAULT", "AVX2", "AVX512", ...: what
// `torch.backends.cpu.get_cpu_capability()` says; `ATEN_CPU_CAPABILITY`
// caps it), copied into `buf` (`len` bytes, NUL-terminated, cut short if
// it does not fit); returns its whole length.
extern "C" int qatc_cpu_capability(char* buf, int len) {
  const std::string c = at::get_cpu_capability();
  if (len > 0) {
    const size_t n = std::min(c.size(), static_cast<size_t>(len - 1));
    std::memcpy(buf, c.data(), n);
    buf[n] = '\0';
  }
  return static_cast<int>(c.size());
}

extern "C" void qatc_cuda_math(int allow_tf32, int deterministic) {
  auto& ctx = at::globalContext();
  ctx.setAllowTF32CuDNN(allow_tf32 != 0);
  ctx.setAllowTF32CuBLAS(allow_tf32 != 0);
  ctx.setDeterministicCuDNN(deterministic != 0);
  // Autotuning picks kernels by timing them: results then depend on the
  // machine's load. Off, as PyTorch's default.
  ctx.setBenchmarkCuDNN(false);
}

extern "C" int qatc_cuda_math_tf32() {
  return at::globalContext().allowTF32CuDNN() ? 1 : 0;
}
