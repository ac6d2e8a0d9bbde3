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
