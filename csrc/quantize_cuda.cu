// nvcc's half of the quantize/dequantize kernels (quantize_kernels.cuh): the
// launches on a stream, with the persistent grid of fused_step_cuda.cu.
#include <cuda_runtime.h>

#include "quantize_kernels.cuh"

namespace adamw8 {
namespace cuda {

int launch_quantize(const QuantArgs& args, bool dequant, void* stream) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return static_cast<int>(err);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  auto launch = [&](QuantKernelFn kernel, int64_t units, int blocks) {
    if (err != cudaSuccess) return;
    const int64_t grid =
        units > 0 ? persistent_grid(units, max_resident_blocks(device, reinterpret_cast<const void*>(kernel))) : blocks;
    kernel<<<static_cast<unsigned>(grid), kThreads, 0, s>>>(args);
    err = cudaGetLastError();
  };
  if (dequant) {
    run_dequantize(args, launch);
  } else {
    run_quantize(args, launch);
  }
  return static_cast<int>(err);
}

}  // namespace cuda
}  // namespace adamw8
