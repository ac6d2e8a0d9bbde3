// The message of a failed kernel launch, one definition for the glue's launches: CUDA's own,
// and where the build holds no code for the GPU (TORCH_CUDA_ARCH_LIST named other
// architectures), the architecture to rebuild for.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

namespace adamw8 {

inline std::string launch_error(int err, int device) {
  std::string msg = cudaGetErrorString(static_cast<cudaError_t>(err));
  if (err == static_cast<int>(cudaErrorNoKernelImageForDevice)) {
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess) {
      const std::string cc = std::to_string(major) + "." + std::to_string(minor);
      msg += " (adamw8 was built without code for this GPU, compute capability " + cc +
             ": rebuild it with TORCH_CUDA_ARCH_LIST=" + cc + " in the environment; README, Install)";
    } else {
      msg += " (adamw8 was built without code for this GPU: rebuild it with its TORCH_CUDA_ARCH_LIST; README, Install)";
    }
  }
  return msg;
}

}  // namespace adamw8
