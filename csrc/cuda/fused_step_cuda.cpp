// Torch-facing glue of the CUDA kernels: checks, tables, launch on the current
// stream, registration with TORCH_LIBRARY_IMPL(adamw8, CUDA, ...).
//
// Built only where torch is a CUDA build and nvcc is found (setup.py); it
// includes c10's CUDA headers but not ATen/cuda/CUDAContext.h, which needs
// more of the toolkit than CI machines have.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../fused_step_checks.h"
#include "../fused_step_cuda.h"

namespace adamw8 {
namespace {

int num_sms(int device) {
  static int cache[64] = {0};
  if (device < 0 || device >= 64) return 0;
  if (cache[device] == 0) {
    int v = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
    cache[device] = v;
  }
  return cache[device];
}

cuda::ParamType param_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::ParamType::kFloat;
    case at::kBFloat16: return cuda::ParamType::kBFloat16;
    case at::kHalf: return cuda::ParamType::kHalf;
    default: TORCH_CHECK(false, "adamw8: unsupported parameter dtype ", t);
  }
}

float* f32(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
void* raw(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

void run_cuda(const std::vector<ParamSlot>& slots, const GroupArgs& g) {
  check_call(slots, g);  // everything is checked before anything is written
  if (slots.empty()) return;
  const bool eight = slots[0].state1.scalar_type() == at::kByte;
  TORCH_CHECK(g.percentile == 100, "adamw8: percentile clipping is not implemented in the CUDA kernels yet (got "
              "percentile=", g.percentile, ")");
  TORCH_CHECK(g.block_wise || !eight, "adamw8: block_wise=False is not implemented in the CUDA kernels yet");
  const at::Device dev = slots[0].param.device();
  c10::cuda::CUDAGuard guard(dev);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev.index()).stream();
  const bool ams = slots[0].state3.defined();

  // Non-contiguous parameters and gradients go through contiguous copies
  // (flat row-major order, SPEC §2.1); parameters are copied back after.
  std::vector<at::Tensor> params(slots.size()), grads(slots.size());
  for (size_t i = 0; i < slots.size(); ++i) {
    params[i] = slots[i].param.contiguous();
    grads[i] = slots[i].grad.contiguous();
  }
  cuda::LaunchArgs a{};
  a.lr = f32(g.lr);
  a.beta1 = f32(g.beta1);
  a.beta2 = f32(g.beta2);
  a.grad_scale = f32(g.grad_scale);
  a.found_inf = f32(g.found_inf);
  a.qmap1 = eight ? f32(g.qmap1) : nullptr;
  a.qmap2 = eight ? f32(g.qmap2) : nullptr;
  a.eps = static_cast<float>(g.eps);
  a.weight_decay = static_cast<float>(g.weight_decay);
  const auto type = param_type(slots[0].param.scalar_type());
  const int sms = num_sms(dev.index());
  for (size_t start = 0; start < slots.size(); start += cuda::kMaxTensorsPerLaunch) {
    const size_t end = std::min(slots.size(), start + cuda::kMaxTensorsPerLaunch);
    a.ntensors = static_cast<int>(end - start);
    a.unit_start[0] = 0;
    for (size_t i = start; i < end; ++i) {
      const ParamSlot& s = slots[i];
      const int k = static_cast<int>(i - start);
      a.t[k] = cuda::TensorArgs{raw(params[i]), raw(grads[i]), raw(s.state1), raw(s.state2), raw(s.state3),
                                f32(s.absmax1), f32(s.absmax2), f32(s.absmax3), f32(s.step), s.param.numel()};
      a.unit_start[k + 1] = a.unit_start[k] + expected_blocks(s.param.numel(), true);
    }
    cuda::launch_fused_step(a, type, eight, ams, sms, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  for (size_t i = 0; i < slots.size(); ++i) {
    if (!params[i].is_same(slots[i].param)) slots[i].param.copy_(params[i]);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(adamw8, CUDA, m) {
  m.impl("fused_step", &fused_step_op<run_cuda>);
  m.impl("fused_step_multi", &fused_step_multi_op<run_cuda>);
}

}  // namespace adamw8
