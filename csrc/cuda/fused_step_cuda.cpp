// Torch-facing glue of the CUDA kernels: checks, the launch records
// (fused_step_plan.h, shared with the CPU emulation), launch on the current
// stream, registration with TORCH_LIBRARY_IMPL(adamw8, CUDA, ...).
//
// Built where torch is a CUDA build and a CUDA toolkit is found (setup.py); it
// includes c10's CUDA headers but not ATen/cuda/CUDAContext.h, which needs more
// of the toolkit than CI machines have.  Nothing here synchronises with the
// host: a step is capturable in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../fused_step_checks.h"
#include "../fused_step_cuda.h"
#include "../fused_step_plan.h"

namespace adamw8 {
namespace {

void run_cuda(const std::vector<ParamSlot>& slots, const GroupArgs& g) {
  check_call(slots, g);  // everything is checked before anything is written
  if (slots.empty()) return;
  const at::Device dev = slots[0].param.device();
  c10::cuda::CUDAGuard guard(dev);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev.index()).stream();
  run_plan(slots, g, [&](const cuda::LaunchArgs& a, cuda::ParamType type, bool eight, bool ams) {
    const int err = cuda::launch_fused_step(a, type, eight, ams, stream);
    TORCH_CHECK(err == 0, "adamw8: launching the CUDA kernels failed: ",
                cudaGetErrorString(static_cast<cudaError_t>(err)));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(adamw8, CUDA, m) { m.impl("fused_step_multi", &fused_step_multi_op<run_cuda>); }

}  // namespace adamw8
