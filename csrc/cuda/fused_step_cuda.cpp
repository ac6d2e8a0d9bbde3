// Torch-facing glue of the CUDA kernels: checks, the launch records
// (fused_step_plan.h, shared with the CPU emulation), launch on the current
// stream, registration with TORCH_LIBRARY_IMPL(adamw8, CUDA, ...).
//
// Built where torch is a CUDA build and a CUDA toolkit is found (setup.py); it
// includes c10's CUDA headers but not ATen/cuda/CUDAContext.h, which needs more
// of the toolkit than CI machines have.  Nothing here synchronises with the
// host: a step is capturable in a CUDA graph.
#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <atomic>
#include <string>
#include <vector>

#include "../fused_step_checks.h"
#include "../fused_step_cuda.h"
#include "../fused_step_plan.h"
#include "launch_error.h"

namespace adamw8 {
namespace {

// The CUDA launch table (adamw8/tuning.py), entries keyed as the CPU one's (cpu::tuning_index:
// state format, parameter dtype, size bucket, here of the call's elements): the blocks per SM of
// the persistent grid (0: as many as fit) and the tensors per launch (1..64).
constexpr int kEntries = cpu::kTuningEntries;
std::atomic<int64_t> g_blocks_per_sm[kEntries];
std::atomic<int64_t> g_tensors_per_launch[kEntries];
struct TableInit {
  TableInit() {
    for (int i = 0; i < kEntries; ++i) {
      g_blocks_per_sm[i].store(0);
      g_tensors_per_launch[i].store(cuda::kMaxTensorsPerLaunch);
    }
  }
} g_table_init;

int table_index(const std::vector<ParamSlot>& slots) {
  int64_t n = 0;
  for (const ParamSlot& s : slots) n += s.param.numel();
  const int fmt = slots[0].state1.scalar_type() == at::kByte ? 1 : 0;
  return cpu::tuning_index(fmt, cpu_dtype(slots[0].param.scalar_type()), n);
}

std::vector<int64_t> cuda_tuning(c10::IntArrayRef table) {
  TORCH_CHECK(table.empty() || static_cast<int64_t>(table.size()) == 2 * kEntries, "adamw8: the CUDA tuning table has ",
              2 * kEntries, " ints (", kEntries, " entries of blocks per SM, tensors per launch), got ", table.size());
  for (size_t i = 0; i < table.size(); i += 2) {
    TORCH_CHECK_VALUE(table[i] >= 0 && table[i] <= 64, "adamw8: CUDA tuning entry ", i / 2,
                      ": blocks per SM must be in 0..64 (0: as many as fit), got ", table[i]);
    TORCH_CHECK_VALUE(table[i + 1] >= 1 && table[i + 1] <= cuda::kMaxTensorsPerLaunch, "adamw8: CUDA tuning entry ",
                      i / 2, ": tensors per launch must be in 1..", cuda::kMaxTensorsPerLaunch, ", got ", table[i + 1]);
  }
  for (size_t i = 0; i < table.size(); i += 2) {
    g_blocks_per_sm[i / 2].store(table[i]);
    g_tensors_per_launch[i / 2].store(table[i + 1]);
  }
  std::vector<int64_t> out(2 * kEntries);
  for (int i = 0; i < kEntries; ++i) {
    out[2 * i] = g_blocks_per_sm[i].load();
    out[2 * i + 1] = g_tensors_per_launch[i].load();
  }
  return out;
}

void run_cuda(const std::vector<ParamSlot>& slots, const GroupArgs& g) {
  check_call(slots, g);  // everything is checked before anything is written
  if (slots.empty()) return;
  const at::Device dev = slots[0].param.device();
  c10::cuda::CUDAGuard device_guard(dev);  // not `guard`: RECORD_FUNCTION declares one
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev.index()).stream();
  const int entry = table_index(slots);
  const int bps = static_cast<int>(g_blocks_per_sm[entry].load(std::memory_order_relaxed));
  const int tpl = static_cast<int>(g_tensors_per_launch[entry].load(std::memory_order_relaxed));
  // the launch config in every profiler trace (built only while a profiler records)
  RECORD_FUNCTION(std::string(slots[0].state1.scalar_type() == at::kByte ? "adamw8::cuda_step8" : "adamw8::cuda_step32") +
                      "[blocks_per_sm=" + std::to_string(bps) + " tensors_per_launch=" + std::to_string(tpl) + "]",
                  std::vector<c10::IValue>());
  run_plan(
      slots, g,
      [&](const cuda::LaunchArgs& a, cuda::ParamType type, bool eight, bool ams) {
        const int err = cuda::launch_fused_step(a, type, eight, ams, stream, bps);
        TORCH_CHECK(err == 0, "adamw8: launching the CUDA kernels failed: ", launch_error(err, dev.index()));
      },
      tpl);
}

// adamw8::_cuda_fast_path_check(counts): launch_fast_path_check into a CUDA int64 tensor of 2
// (tests/test_cuda.py: zeros after the call).
void fast_path_check(const at::Tensor& counts) {
  TORCH_CHECK(counts.is_cuda() && counts.scalar_type() == at::kLong && counts.numel() == 2 && counts.is_contiguous(),
              "adamw8: _cuda_fast_path_check takes a contiguous CUDA int64 tensor of 2 counters");
  c10::cuda::CUDAGuard device_guard(counts.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(counts.device().index()).stream();
  const int err = cuda::launch_fast_path_check(reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()), stream);
  TORCH_CHECK(err == 0, "adamw8: launching the fast-path check failed: ", launch_error(err, counts.device().index()));
}

// adamw8::_cuda_launch_info(dtype, eight_bit, amsgrad) -> [blocks per SM, staging bytes]: what the
// update kernel of a step of `dtype` parameters gets on the current CUDA device
// (cuda::update_kernel_launch; tests/test_cuda.py).
std::vector<int64_t> launch_info(c10::ScalarType dtype, bool eight_bit, bool amsgrad) {
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                    "adamw8: _cuda_launch_info takes float32, bfloat16 or float16 parameters, got ", dtype);
  int blocks_per_sm = 0, stage_bytes = 0;
  const int err = cuda::update_kernel_launch(param_type(dtype), eight_bit, amsgrad, &blocks_per_sm, &stage_bytes);
  TORCH_CHECK(err == 0, "adamw8: querying the CUDA device failed: ", launch_error(err, 0));
  return {blocks_per_sm, stage_bytes};
}

}  // namespace

TORCH_LIBRARY_IMPL(adamw8, CUDA, m) {
  m.impl("fused_step_multi", &fused_step_multi_op<run_cuda>);
  m.impl("_cuda_fast_path_check", &fast_path_check);
}

TORCH_LIBRARY_FRAGMENT(adamw8, m) {
  m.def("_cuda_tuning(int[] table) -> int[]", &cuda_tuning);
  m.def("_cuda_fast_path_check(Tensor(a!) counts) -> ()");
  m.def("_cuda_launch_info(ScalarType dtype, bool eight_bit, bool amsgrad) -> int[]", &launch_info);
}

}  // namespace adamw8
