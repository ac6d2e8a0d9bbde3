// The torch-free interface of the CUDA kernels of adamw8::fused_step(_multi).
//
// fused_step_cuda.cu implements it with nvcc and no torch headers (CI compiles
// it without a GPU); cuda/fused_step_cuda.cpp, the torch-facing glue, checks the
// tensors, fills these tables and launches on the current stream.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace adamw8 {
namespace cuda {

// Tensors per launch: the table travels as a kernel argument, which is
// limited to 4 KB on every CUDA version we support (SPEC §9).
constexpr int kMaxTensorsPerLaunch = 32;

enum class ParamType : int { kFloat = 0, kBFloat16 = 1, kHalf = 2 };

struct TensorArgs {
  void* param;
  const void* grad;
  void* state1;  // float (32-bit state) or uint8 codes (8-bit)
  void* state2;
  void* state3;  // amsgrad, else nullptr
  float* absmax1;
  float* absmax2;
  float* absmax3;
  float* step;  // count before this step; incremented by a second launch
  int64_t numel;
};

struct LaunchArgs {
  TensorArgs t[kMaxTensorsPerLaunch];
  // work units (256-element blocks) of tensor i are [unit_start[i], unit_start[i + 1])
  int64_t unit_start[kMaxTensorsPerLaunch + 1];
  int ntensors;
  const float* lr;
  const float* beta1;
  const float* beta2;
  const float* grad_scale;  // nullptr: no AMP scale
  const float* found_inf;   // nullptr: never skip
  const float* qmap1;       // 8-bit only
  const float* qmap2;
  float eps;
  float weight_decay;
};

// One AdamW step for every tensor of `args` (all of one param type and state
// format), then step += 1 for each (unless *found_inf).  Asynchronous on `stream`.
void launch_fused_step(const LaunchArgs& args, ParamType type, bool eight_bit, bool amsgrad, int num_sms,
                       cudaStream_t stream);

}  // namespace cuda
}  // namespace adamw8
