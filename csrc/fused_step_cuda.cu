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
struct KernelInfo {
  int blocks_per_sm = 1;  // resident blocks per SM, with the dynamic shared memory it is given
  int smem = 0;           // the dynamic shared memory it is given (the update kernel's staging)
};
struct DeviceInfo {
  int sms = 0;
  int major = 0;  // compute capability
  std::unordered_map<const void*, KernelInfo> kernels;
};

int occupancy(const void* kernel, int smem) {
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, static_cast<size_t>(smem)) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

// What `kernel` gets on `device` (cached per kernel: a kernel always asks for the same
// `stage_bytes`), and the device's SMs: its staging's `stage_bytes` of dynamic shared memory
// where the GPU has cp.async (sm_80 on) and they cost no resident block per SM (the 228 KB per SM
// of an H100 or H200 hold three 8-bit blocks with their tables and slots, an A100's 164 KB two),
// else none.
KernelInfo kernel_info(int device, const void* kernel, int stage_bytes, int& sms) {
  static std::mutex mu;
  static std::unordered_map<int, DeviceInfo> info;
  std::lock_guard<std::mutex> lock(mu);
  DeviceInfo& d = info[device];
  if (d.sms == 0) {
    if (cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
      (void)cudaGetLastError();
      d.sms = 1;
      d.major = 0;
    }
  }
  sms = d.sms;
  auto it = d.kernels.find(kernel);
  if (it == d.kernels.end()) {
    KernelInfo k;
    k.blocks_per_sm = occupancy(kernel, 0);
    // more than the 48 KB a block has without asking (with the 8-bit kernels' tables)
    if (stage_bytes > 0 && d.major >= 8 &&
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, stage_bytes) == cudaSuccess) {
      const int staged = occupancy(kernel, stage_bytes);
      if (staged >= k.blocks_per_sm && staged > 0) k.smem = stage_bytes;
    }
    (void)cudaGetLastError();
    if (k.blocks_per_sm < 1) k.blocks_per_sm = 1;
    it = d.kernels.emplace(kernel, k).first;
  }
  return it->second;
}

// SMs x resident blocks per SM, at most `cap_per_sm` (> 0) per SM
int resident_blocks(int sms, const KernelInfo& k, int cap_per_sm) {
  return sms * (cap_per_sm > 0 && cap_per_sm < k.blocks_per_sm ? cap_per_sm : k.blocks_per_sm);
}
}  // namespace

int max_resident_blocks(int device, const void* kernel, int cap_per_sm) {
  int sms = 1;
  const KernelInfo k = kernel_info(device, kernel, 0, sms);
  return resident_blocks(sms, k, cap_per_sm);
}

int launch_fused_step(const LaunchArgs& args, ParamType type, bool eight_bit, bool amsgrad, void* stream,
                      int blocks_per_sm) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return static_cast<int>(err);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  run_step(args, type, eight_bit, amsgrad, [&](KernelFn kernel, int64_t units, int blocks, int stage_bytes = 0) {
    if (err != cudaSuccess) return;
    int sms = 1;
    const KernelInfo k = kernel_info(device, reinterpret_cast<const void*>(kernel), stage_bytes, sms);
    const int64_t grid = units > 0 ? persistent_grid(units, resident_blocks(sms, k, blocks_per_sm)) : blocks;
    kernel<<<static_cast<unsigned>(grid), kThreads, static_cast<size_t>(k.smem), s>>>(args);
    err = cudaGetLastError();
  });
  return static_cast<int>(err);
}

int update_kernel_launch(ParamType type, bool eight_bit, bool amsgrad, int* blocks_per_sm, int* stage_bytes) {
  int device = 0;
  const cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return static_cast<int>(err);
  KernelFn kernel = nullptr;
  int bytes = 0;
  with_param_type(type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    kernel = main_kernel<T>(eight_bit, amsgrad, 0);
    bytes = staged_bytes<T>(eight_bit, amsgrad);
  });
  int sms = 1;
  const KernelInfo k = kernel_info(device, reinterpret_cast<const void*>(kernel), bytes, sms);
  *blocks_per_sm = k.blocks_per_sm;
  *stage_bytes = k.smem;
  return 0;
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
