// From checked op arguments to the CUDA kernels' launch records: shared by the
// CUDA glue (cuda/fused_step_cuda.cpp) and the CPU emulation of the kernels
// (emu/emu_ops.cpp), so the emulation tests the very tables the GPU gets.
//
// ATen only: no CUDA headers.  Per call it allocates nothing for the common
// step; percentile clipping and block_wise=False take one scratch tensor of
// the call (cuda::scratch_bytes, from the caching allocator on CUDA).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "fused_step_checks.h"
#include "fused_step_cuda.h"

namespace adamw8 {

inline cuda::ParamType param_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::ParamType::kFloat;
    case at::kBFloat16: return cuda::ParamType::kBFloat16;
    case at::kHalf: return cuda::ParamType::kHalf;
    default: TORCH_CHECK(false, "adamw8: unsupported parameter dtype ", t);
  }
}

inline bool aligned16(const at::Tensor& t) {
  return !t.defined() || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

// The row-major -> memory mapping of a non-contiguous param and its grad, with
// size-1 dims dropped and dims merged where both tensors allow; false when more
// than cuda::kMaxDims dims remain or the tensor has 2^31 elements or more.
inline bool strided_desc(const at::Tensor& p, const at::Tensor& g, cuda::StridedDesc& d) {
  std::vector<int64_t> size, ps, gs;
  for (int64_t k = 0; k < p.dim(); ++k) {
    if (p.size(k) == 1) continue;
    if (!size.empty() && ps.back() == p.stride(k) * p.size(k) && gs.back() == g.stride(k) * p.size(k)) {
      size.back() *= p.size(k);  // dim k continues the previous one in both tensors
      ps.back() = p.stride(k);
      gs.back() = g.stride(k);
      continue;
    }
    size.push_back(p.size(k));
    ps.push_back(p.stride(k));
    gs.push_back(g.stride(k));
  }
  if (size.size() > static_cast<size_t>(cuda::kMaxDims) || p.numel() >= (int64_t{1} << 31)) return false;
  d.ndim = static_cast<int>(size.size());
  for (int k = 0; k < d.ndim; ++k) {
    d.sizes[k] = static_cast<uint32_t>(size[k]);
    cuda::divider_magic(d.sizes[k], d.magic[k], d.shift[k]);
    d.pstride[k] = ps[k];
    d.gstride[k] = gs[k];
  }
  return true;
}

// A planned call: its launch records, and the contiguous copies of the rare
// params with more than kMaxDims non-mergeable dims (written back after).
struct Plan {
  std::vector<cuda::LaunchArgs> launches;
  std::vector<std::pair<at::Tensor, at::Tensor>> copies;  // (param, contiguous copy)
  cuda::ParamType type = cuda::ParamType::kFloat;
  bool eight = false, ams = false;
};

inline float* f32(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
inline void* raw(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// `max_tensors`: tensors per launch (cuda::kMaxTensorsPerLaunch, less to test the split).
// `counter`: the flat form's completion counter, or nullptr.
inline Plan make_plan(const std::vector<ParamSlot>& slots, const GroupArgs& g,
                      int max_tensors = cuda::kMaxTensorsPerLaunch, unsigned long long* counter = nullptr) {
  Plan plan;
  if (slots.empty()) return plan;
  plan.eight = slots[0].state1.scalar_type() == at::kByte;
  plan.ams = slots[0].state3.defined();
  plan.type = param_type(slots[0].param.scalar_type());
  cuda::LaunchArgs a{};
  a.hyper = f32(g.hyper);
  a.grad_scale = f32(g.grad_scale);
  a.found_inf = f32(g.found_inf);
  a.qmap1 = plan.eight ? f32(g.qmap1) : nullptr;
  a.qmap2 = plan.eight ? f32(g.qmap2) : nullptr;
  a.percentile = static_cast<int>(g.percentile);
  a.block_wise = g.block_wise ? 1 : 0;
  a.counter = counter;
  a.ntensors = 0;
  a.unit_start[0] = 0;
  int nstrided = 0;
  for (const ParamSlot& s : slots) {
    at::Tensor p = s.param, gr = s.grad;
    cuda::StridedDesc desc{};
    bool strided = !(p.is_contiguous() && gr.is_contiguous());
    if (strided && !strided_desc(p, gr, desc)) {
      p = s.param.contiguous();
      gr = s.grad.contiguous();
      plan.copies.emplace_back(s.param, p);
      strided = false;
    }
    if (a.ntensors == max_tensors || (strided && nstrided == cuda::kMaxStrided)) {
      plan.launches.push_back(a);
      a.ntensors = 0;
      nstrided = 0;
    }
    const int k = a.ntensors++;
    int32_t sidx = -1;
    if (strided) {
      sidx = nstrided++;
      a.strided[sidx] = desc;
    }
    const bool vec = !strided && aligned16(p) && aligned16(gr) && aligned16(s.state1) && aligned16(s.state2) &&
                     aligned16(s.state3);
    a.t[k] = cuda::TensorArgs{raw(p), raw(gr), raw(s.state1), raw(s.state2), raw(s.state3), f32(s.absmax1),
                              f32(s.absmax2), f32(s.absmax3), s.step.data_ptr<int64_t>(), f32(s.gnorm_vec), p.numel(),
                              vec ? 1 : 0, sidx};
    a.unit_start[k + 1] = a.unit_start[k] + expected_blocks(p.numel(), true);
  }
  plan.launches.push_back(a);
  return plan;
}

// The completion counter of the flat form: the last element of its steps buffer.
inline unsigned long long* completion_counter(const GroupArgs& g) {
  if (!g.steps_flat.defined()) return nullptr;
  return reinterpret_cast<unsigned long long*>(g.steps_flat.data_ptr<int64_t>() + g.steps_flat.numel() - 1);
}

// Runs a call: `launch(args)` runs one record's kernels (the call's scratch, if any, is
// kept alive until they are queued).
template <typename Launch>
void run_plan(const std::vector<ParamSlot>& slots, const GroupArgs& g, Launch&& launch,
              int max_tensors = cuda::kMaxTensorsPerLaunch) {
  Plan plan = make_plan(slots, g, max_tensors, completion_counter(g));
  const auto dev = slots.empty() ? at::Device(at::kCPU) : slots[0].param.device();
  for (cuda::LaunchArgs& a : plan.launches) {
    const int64_t units = a.unit_start[a.ntensors];
    const bool clip = a.percentile < 100, tensorwise = plan.eight && !a.block_wise;
    const int64_t bytes = cuda::scratch_bytes(units, a.ntensors, clip, tensorwise);
    at::Tensor scratch;
    if (bytes > 0) {
      scratch = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(dev));
      cuda::place_scratch(a, scratch.data_ptr(), units, clip, tensorwise);
    }
    launch(a, plan.type, plan.eight, plan.ams);
  }
  for (auto& [param, copy] : plan.copies) param.copy_(copy);
}

}  // namespace adamw8
