// The CUDA kernels' own source, run on the CPU (cuda_emu.h), as ops of a test
// library: tests/test_emulation.py builds this file with
// torch.utils.cpp_extension.load and compares the results with the CPU kernels
// bit for bit.  Not part of the package.
//
//   adamw8_emu::fused_step_multi(<adamw8::fused_step_multi's arguments>,
//                                int sms, int blocks_per_sm, int max_tensors)
//       the CUDA kernels through the same launch records as the CUDA glue
//       (fused_step_plan.h); the grid is the persistent grid of `sms` SMs with
//       `blocks_per_sm` resident blocks (tiny values force many units per warp),
//       `max_tensors` the tensors per launch (small values force several launches).
//   adamw8_emu::quantize / dequantize(<adamw8's arguments>, int sms, int blocks_per_sm)
//       the quantize_kernels.cuh kernels through the CUDA glue's records.
//   adamw8_emu::lut_mismatches(Tensor qmap, int stride) -> int
//       floats (every `stride`-th bit pattern; 1: all 2^32) whose nearest code
//       differs from the exact rule by any route the map takes: nearest_lut.h's
//       table with the CPU's step count and with the CUDA kernels' search until it
//       stops, the CPU's threshold, packed and plane routes, the CUDA kernels' packed route
//       and its bounded form (|x| <= 1; with finish_code, which they fold in part into the table).
//   adamw8_emu::lut_routes(Tensor qmap) -> int[]
//       [CPU threshold route, its span, CPU packed route, CUDA packed route]
//   adamw8_emu::div_rn_mismatches(float b, int lo, int hi) -> int
//       dividends a = m * 2^(e + ilogb(b)), every mantissa m in [1, 2), e in [lo, hi] (so a / b
//       is within a factor 2 of 2^e), where adamw8_math.h's div_rn(a, b, 1 / b) and a / b
//       differ in any bit
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

#include "../fused_step_checks.h"
#include "../fused_step_plan.h"
#include "../quant_lut_cpu.h"
#include "../quantize_ops.h"
// last: the shim's macros (__shared__, threadIdx, ...) reach only the kernels
#include "cuda_emu.h"
#include "../fused_step_kernels.cuh"
#include "../quantize_kernels.cuh"

namespace adamw8 {
namespace {

// The launch of the emulated kernels: the persistent grid of `sms` x `blocks_per_sm`.
// Dynamic shared memory (the update kernel's staging) is given as asked.
auto emu_launcher(int64_t sms, int64_t blocks_per_sm) {
  return [=](auto kernel, const auto& args, int64_t units, int blocks, int smem = 0) {
    const int64_t grid = units > 0 ? cuda::persistent_grid(units, sms * blocks_per_sm) : blocks;
    adamw8_emu::launch(static_cast<unsigned>(grid), cuda::kThreads, [&] { kernel(args); }, static_cast<unsigned>(smem));
  };
}

void emu_fused_step_multi(at::TensorList params, at::TensorList grads, at::TensorList state1,
                          at::TensorList state2, at::TensorList state3, at::TensorList absmax1,
                          at::TensorList absmax2, at::TensorList absmax3, const std::optional<at::Tensor>& qmap1,
                          const std::optional<at::Tensor>& qmap2, at::TensorList steps, at::TensorList gnorm_vecs,
                          const at::Tensor& hyper, bool block_wise, int64_t percentile,
                          const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                          at::IntArrayRef layout, int64_t sms, int64_t blocks_per_sm, int64_t max_tensors) {
  const auto slots =
      layout.empty()
          ? make_slots(params, grads, state1, state2, state3, absmax1, absmax2, absmax3, steps, gnorm_vecs)
          : flat_slots(params, grads, state1, state2, state3, absmax1, absmax2, absmax3, steps, gnorm_vecs, layout,
                       block_wise);
  GroupArgs g = make_group(qmap1, qmap2, hyper, block_wise, percentile, grad_scale, found_inf);
  if (!layout.empty() && steps.size() == 1) g.steps_flat = steps[0];  // as fused_step_multi_op
  check_call(slots, g);
  if (slots.empty()) return;
  TORCH_CHECK(max_tensors >= 1 && max_tensors <= cuda::kMaxTensorsPerLaunch, "adamw8_emu: max_tensors must be in 1..",
              cuda::kMaxTensorsPerLaunch, ", got ", max_tensors);
  const auto launch = emu_launcher(sms, blocks_per_sm);
  run_plan(
      slots, g,
      [&](const cuda::LaunchArgs& a, cuda::ParamType type, bool eight, bool ams) {
        cuda::run_step(a, type, eight, ams,
                       [&](cuda::KernelFn kernel, int64_t units, int blocks, int smem = 0) {
                         launch(kernel, a, units, blocks, smem);
                       });
      },
      static_cast<int>(max_tensors));
}

std::tuple<at::Tensor, at::Tensor> emu_quantize(const at::Tensor& x, const at::Tensor& qmap, bool block_wise,
                                                bool is_signed, int64_t sms, int64_t blocks_per_sm) {
  const QuantCall c = prepare_quantize(x, qmap, block_wise, is_signed);
  const at::Tensor scratch = quant_scratch(c, false);  // alive until the kernels are done
  const auto args = quant_args(c, scratch);
  const auto launch = emu_launcher(sms, blocks_per_sm);
  cuda::run_quantize(args, [&](cuda::QuantKernelFn k, int64_t units, int blocks) { launch(k, args, units, blocks); });
  return {c.codes, c.absmax};
}

at::Tensor emu_dequantize(const at::Tensor& codes, const at::Tensor& absmax, const at::Tensor& qmap, bool block_wise,
                          int64_t sms, int64_t blocks_per_sm) {
  const QuantCall c = prepare_dequantize(codes, absmax, qmap, block_wise);
  const auto args = quant_args(c, at::Tensor());
  const auto launch = emu_launcher(sms, blocks_per_sm);
  cuda::run_dequantize(args, [&](cuda::QuantKernelFn k, int64_t units, int blocks) { launch(k, args, units, blocks); });
  return c.values;
}

// The CUDA kernels' packed tables of one map, built on the host by the functions the kernels'
// blocks run (nearest_lut.h, load_maps): as map 1 (word1: both sign halves, the set-sign one
// from kLutNegBase with the sign clamp folded in; ok1: every entry valid) and as map 2 (word2:
// the plain clear-sign half the kernels keep; ok2: its entries valid).
struct CudaPacked {
  std::vector<uint32_t> word1 = std::vector<uint32_t>(kLutWords1);
  std::vector<uint32_t> word2 = std::vector<uint32_t>(kLutHalf);
  int clamp = -1;
  bool ok1 = false, ok2 = false;
  explicit CudaPacked(const float* q) {
    for (int k = 0; k < 255; ++k) {
      if (!(q[k] < q[k + 1])) return;
    }
    float thr[256] = {};
    for (int k = 0; k < 255; ++k) thr[k] = nearest_threshold(q, k);
    clamp = sign_clamp_code(q);
    ok1 = ok2 = true;
    for (int b = 0; b < kLutSize; ++b) {
      const PackedEntry e1 = packed_entry_clamped(q, thr, b, clamp);
      word1[packed_slot(b)] = packed_word(e1);
      ok1 = ok1 && e1.ok;
      if (b < kLutHalf) {
        const PackedEntry e2 = packed_entry(q, thr, b);
        word2[b] = packed_word(e2);
        ok2 = ok2 && e2.ok;
      }
    }
  }
  bool ok() const { return ok1 && ok2; }
};

// The code in a bounded-route sum (nearest_lut.h: bits 16..23).
int bounded_code(uint32_t sum) { return static_cast<int>((sum >> 16) & 0xffu); }

std::vector<int64_t> lut_routes(const at::Tensor& qmap) {
  TORCH_CHECK(qmap.scalar_type() == at::kFloat && qmap.numel() == 256 && qmap.is_contiguous() && qmap.is_cpu(),
              "adamw8_emu: qmap must be a contiguous float32 CPU tensor of 256 values");
  const NearestCodeLut cpu(qmap.data_ptr<float>());
  const CudaPacked cuda(qmap.data_ptr<float>());
  return {cpu.has_thresholds() ? 1 : 0, cpu.span(), cpu.has_packed() ? 1 : 0, cuda.ok() ? 1 : 0, cpu.has_planes() ? 1 : 0};
}

int64_t lut_mismatches(const at::Tensor& qmap, int64_t stride) {
  TORCH_CHECK(qmap.scalar_type() == at::kFloat && qmap.numel() == 256 && qmap.is_contiguous() && qmap.is_cpu(),
              "adamw8_emu: qmap must be a contiguous float32 CPU tensor of 256 values");
  TORCH_CHECK(stride >= 1, "adamw8_emu: stride must be >= 1, got ", stride);
  const float* q = qmap.data_ptr<float>();
  const NearestCodeLut cpu(q);
  const CudaPacked cuda(q);
  std::vector<uint8_t> table(kLutSize);
  for (int b = 0; b < kLutSize; ++b) table[b] = lut_entry(q, b);
  std::atomic<int64_t> bad{0};
  const int64_t total = int64_t{1} << 32;
  // The exact floor index walks along with x (monotone in x: up for a clear
  // sign bit as the bits grow, down for a set one), so each value costs O(1);
  // a chunk starts from quantize_nearest's own descent.
  at::parallel_for(0, (total + stride - 1) / stride, 1 << 20, [&](int64_t b, int64_t e) {
    int64_t local = 0;
    int f = -1;
    bool neg = false;
    for (int64_t k = b; k < e; ++k) {
      const uint32_t bits = static_cast<uint32_t>(k * stride);
      const float x = bits_float(bits);
      if (!(x == x)) continue;  // NaN: normalize() never passes one
      if (f < 0 || neg != (bits >> 31 != 0)) {
        f = floor_index(q, x);
        neg = bits >> 31 != 0;
      }
      while (f < 254 && q[f + 1] <= x) ++f;
      while (f > 0 && q[f] > x) --f;
      const int want = f + static_cast<int>((x - q[f]) > (q[f + 1] - x));
      const bool clear = !(bits >> 31), bounded = std::fabs(x) <= 1.0f;
      local += (cpu.nearest(x) != want) + (lut_nearest_search(table.data(), q, x) != want) +
               (cpu.has_thresholds() && cpu.nearest_by_thresholds(x) != want) +
               (cpu.has_packed() && cpu.nearest_packed(x) != want) +
               (cpu.has_planes() && bounded && cpu.nearest_by_planes(x) != want) +  // the route's domain
               // the CUDA kernels' packed route: map 1 (the clamp folded in: what finish_code
               // makes of the code), map 2 (clear-sign x only)
               (cuda.ok1 && finish_code(q, packed_word_nearest(cuda.word1[packed_slot(lut_bucket(x))], x), x, true) !=
                                finish_code(q, want, x, true)) +
               (cuda.ok2 && clear && packed_word_nearest(cuda.word2[lut_bucket(x)], x) != want) +
               // and its bounded route, on its domain |x| <= 1 (value x, absmax 1)
               (cuda.ok1 && cuda.clamp >= 0 && bounded &&
                bounded_code(packed_sum_signed(cuda.word1.data(), bits, bits)) != finish_code(q, want, x, true)) +
               (cuda.ok2 && clear && bounded &&
                bounded_code(packed_sum_unsigned(cuda.word2.data(), bits, bits)) != finish_code(q, want, x, false));
    }
    bad += local;
  });
  // where the value and its quotient differ in more than scale: value -0, whose quotient by
  // div_rn is +0, and a positive value whose quotient underflows to +0
  const int z = quantize_nearest(q, 0.0f);
  if (cuda.ok1 && cuda.clamp >= 0) bad += bounded_code(packed_sum_signed(cuda.word1.data(), 0x80000000u, 0u)) != finish_code(q, z, -0.0f, true);
  if (cuda.ok2) bad += bounded_code(packed_sum_unsigned(cuda.word2.data(), 1u, 0u)) != finish_code(q, z, 0x1p-149f, false);
  return bad.load();
}

int64_t div_rn_mismatches(double b_in, int64_t lo, int64_t hi) {
  const float b = static_cast<float>(b_in);
  TORCH_CHECK(b > 0.0f && std::isfinite(b) && lo <= hi, "adamw8_emu: div_rn_mismatches needs b > 0 finite, lo <= hi");
  const float rb = 1.0f / b;
  const int eb = std::ilogb(b);
  std::atomic<int64_t> bad{0};
  const int64_t per_exp = int64_t{1} << 23;
  at::parallel_for(0, (hi - lo + 1) * per_exp, 1 << 18, [&](int64_t begin, int64_t end) {
    int64_t local = 0;
    for (int64_t k = begin; k < end; ++k) {
      const int e = static_cast<int>(lo + k / per_exp) + eb;
      const float a = std::ldexp(bits_float(0x3f800000u | static_cast<uint32_t>(k & 0x7fffff)), e);
      local += float_bits(div_rn(a, b, rb)) != float_bits(a / b);
    }
    bad += local;
  });
  return bad.load();
}

}  // namespace

// The namespace is a macro so a test can build a second, deliberately broken copy beside it.
#ifndef ADAMW8_EMU_NS
#define ADAMW8_EMU_NS adamw8_emu
#endif

TORCH_LIBRARY(ADAMW8_EMU_NS, m) {
  m.def(
      "fused_step_multi(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] state1, Tensor(c!)[] state2, "
      "Tensor(d!)[] state3, Tensor(e!)[] absmax1, Tensor(f!)[] absmax2, Tensor(g!)[] absmax3, "
      "Tensor? qmap1, Tensor? qmap2, Tensor(h!)[] steps, Tensor(i!)[] gnorm_vecs, Tensor hyper, "
      "bool block_wise, int percentile, Tensor? grad_scale, "
      "Tensor? found_inf, int[] layout, int sms, int blocks_per_sm, int max_tensors) -> ()");
  m.def("quantize(Tensor x, Tensor qmap, bool block_wise, bool signed, int sms, int blocks_per_sm) -> (Tensor, Tensor)");
  m.def("dequantize(Tensor codes, Tensor absmax, Tensor qmap, bool block_wise, int sms, int blocks_per_sm) -> Tensor");
  m.def("lut_mismatches(Tensor qmap, int stride) -> int");
  m.def("lut_routes(Tensor qmap) -> int[]");
  m.def("div_rn_mismatches(float b, int lo, int hi) -> int", &div_rn_mismatches);  // no tensors: a catch-all kernel
}

TORCH_LIBRARY_IMPL(ADAMW8_EMU_NS, CPU, m) {
  m.impl("fused_step_multi", &emu_fused_step_multi);
  m.impl("quantize", &emu_quantize);
  m.impl("dequantize", &emu_dequantize);
  m.impl("lut_mismatches", &lut_mismatches);
  m.impl("lut_routes", &lut_routes);
}

}  // namespace adamw8
