// How libtorch computes float32 on CUDA: TF32 tensor cores or full float32
// in cuDNN convolutions and cuBLAS matrix products, and whether cuDNN picks
// deterministic algorithms (src/device.rs, `CudaMath`). These are flags of
// libtorch's global context; setting them needs no GPU (on a machine
// without one they are simply never read).
#include <ATen/Context.h>

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
