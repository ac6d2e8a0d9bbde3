// nvcc's half of the CUDA kernels: instantiates fused_step_kernels.cuh and
// launches one step's kernels on a stream, with a persistent grid sized per
// kernel by the occupancy API.
//
// No torch headers: CI compiles this file with nvcc on machines without a GPU
// (scripts/check_kernels.py checks its spills and vector accesses).
#include <cuda_runtime.h>

#include <mutex>
#include <unordered_map>

#include "fused_step_kernels.cuh"

#if CUDART_VERSION < 12010
#error "adamw8: the launch record needs CUDA >= 12.1 (kernel arguments over 4 KB)"
#endif

namespace adamw8 {
namespace cuda {
namespace {
struct DeviceInfo {
  int sms = 0;
  std::unordered_map<const void*, int> blocks_per_sm;  // per kernel
};
}  // namespace

int max_resident_blocks(int device, const void* kernel, int cap_per_sm) {
  static std::mutex mu;
  static std::unordered_map<int, DeviceInfo> info;
  std::lock_guard<std::mutex> lock(mu);
  DeviceInfo& d = info[device];
  if (d.sms == 0 && cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    d.sms = 1;
  }
  auto it = d.blocks_per_sm.find(kernel);
  if (it == d.blocks_per_sm.end()) {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, 0) != cudaSuccess || n < 1) n = 1;
    it = d.blocks_per_sm.emplace(kernel, n).first;
  }
  return d.sms * (cap_per_sm > 0 && cap_per_sm < it->second ? cap_per_sm : it->second);
}

int launch_fused_step(const LaunchArgs& args, ParamType type, bool eight_bit, bool amsgrad, void* stream,
                      int blocks_per_sm) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return static_cast<int>(err);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  run_step(args, type, eight_bit, amsgrad, [&](KernelFn kernel, int64_t units, int blocks) {
    if (err != cudaSuccess) return;
    const int64_t grid =
        units > 0 ? persistent_grid(units, max_resident_blocks(device, reinterpret_cast<const void*>(kernel),
                                                               blocks_per_sm))
                  : blocks;
    kernel<<<static_cast<unsigned>(grid), kThreads, 0, s>>>(args);
    err = cudaGetLastError();
  });
  return static_cast<int>(err);
}

namespace {
__global__ void __launch_bounds__(kThreads) fast_path_check_kernel(unsigned long long* counts) {
  unsigned long long bad_root = 0, bad_rcp = 0;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (uint64_t{1} << 32); i += stride) {
    const uint32_t b = static_cast<uint32_t>(i);
    const float x = __uint_as_float(b);
    if (b <= 0x7f7fffffu) {  // sqrt_fast's inputs: finite, >= +0
      bool ok = true;
      const float r = sqrt_fast(x, ok);
      const bool in_range = b == 0u || b >= 0x0d000000u;
      bad_root += ok != in_range || (ok && __float_as_uint(r) != __float_as_uint(__fsqrt_rn(x)));
    }
    const uint32_t e = (b >> 23) & 0xffu;
    bad_rcp += e >= 1u && e <= 252u && __float_as_uint(rcp_rn(x)) != __float_as_uint(__frcp_rn(x));
  }
  if (bad_root != 0) atomicAdd(counts, bad_root);
  if (bad_rcp != 0) atomicAdd(counts + 1, bad_rcp);
}
}  // namespace

int launch_fast_path_check(unsigned long long* counts, void* stream) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return static_cast<int>(err);
  const int grid = max_resident_blocks(device, reinterpret_cast<const void*>(fast_path_check_kernel));
  fast_path_check_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(counts);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace adamw8
