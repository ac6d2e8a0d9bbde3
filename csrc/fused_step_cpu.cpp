// CPU kernels of adamw8::fused_step and adamw8::fused_step_multi (docs/design.md: "The update", "The ops").
//
// One templated kernel per state format; the AdamW arithmetic and the
// quantization come from adamw8_math.h, shared with the CUDA kernels.  Work is
// split over cores with at::parallel_for; inner loops are plain fp32 loops the
// compiler vectorises.  Schemas live in adamw8/ops/schemas.py; this file only
// registers implementations.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <string>

#include "adamw8_math.h"
#include "fused_step_checks.h"
#include "cpu/kernel_args.h"
#include "quant_lut_cpu.h"

namespace adamw8 {
namespace {

constexpr int64_t kGrain = 4096;  // elements per parallel task of the norm pass (percentile clipping)

float read_scalar(const at::Tensor& t) { return t.data_ptr<float>()[0]; }

// Per-element inputs shared by the two state formats.
struct GradPrep {
  bool has_scale;
  float grad_scale;  // AMP's scale: divided out, as in the reference
  float gnorm_scale;
};

// Percentile clipping: the squared norm of the unscaled gradient, summed in
// double, then adamw8_math.h's history update.  `t` is the count after the increment.
float clip_scale(const at::Tensor& grad, const GradPrep& prep, int64_t n, float* hist, int64_t t,
                       int64_t percentile) {
  double gn2 = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "adamw8_gnorm", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    gn2 = at::parallel_reduce(
        0, n, kGrain, 0.0,
        [&](int64_t b, int64_t e, double acc) {
          for (int64_t i = b; i < e; ++i) {
            float x = static_cast<float>(g[i]);
            if (prep.has_scale) x = x / prep.grad_scale;
            acc += norm_term(x);
          }
          return acc;
        },
        std::plus<double>());
  });
  return adamw8::percentile_scale(hist, history_value(gn2), t, static_cast<int>(percentile));
}

// A profiler label naming the launch (the tuning's choice is visible in every trace): built only
// while a profiler records.
std::string launch_label(const char* what, const cpu::Launch& l, int64_t n) {
  const int64_t tasks = n == 0 ? 0 : std::min<int64_t>(at::get_num_threads(), (n + l.grain - 1) / l.grain);
  return std::string("adamw8::cpu_") + what + "[" + l.kernels->name + " grain=" + std::to_string(l.grain) +
         " tasks<=" + std::to_string(tasks) + "]";
}

// The loops live in csrc/cpu/kernels.h, one build per instruction set; here the work is split
// over cores as the tuning table says (csrc/cpu/dispatch.cpp).
void step_32bit(const cpu::Step32Args& a, int64_t n) {
  const cpu::Launch l = cpu::launch_for(0, a.dtype, n);
  RECORD_FUNCTION(launch_label("step32", l, n), std::vector<c10::IValue>());
  at::parallel_for(0, n, l.grain, [&](int64_t b, int64_t e) { l.kernels->step32(a, b, e); });
}

void step_8bit(const cpu::Step8Args& a) {
  const cpu::Launch l = cpu::launch_for(1, a.dtype, a.n);
  RECORD_FUNCTION(launch_label("step8", l, a.n), std::vector<c10::IValue>());
  const cpu::Kernels& k = *l.kernels;
  const int64_t nchunks = expected_blocks(a.n, true);
  const int64_t grain = std::max<int64_t>(1, l.grain / kBlockSize);  // in blocks
  // block_wise=False (docs/design.md, "block_wise=False"): the per-tensor absmax needs a first
  // pass that reduces the new maxima without writing anything.
  float global[3] = {0.0f, 0.0f, 0.0f};
  if (!a.block_wise) {
    using Max3 = std::array<int32_t, 3>;
    const Max3 mx = at::parallel_reduce(
        0, nchunks, grain, Max3{0, 0, 0},
        [&](int64_t cb, int64_t ce, Max3 acc) {
          k.reduce8(a, cb, ce, acc.data());
          return acc;
        },
        [](Max3 x, Max3 y) { return Max3{std::max(x[0], y[0]), std::max(x[1], y[1]), std::max(x[2], y[2])}; });
    for (int i = 0; i < 3; ++i) global[i] = bits_float(static_cast<uint32_t>(mx[i]));
  }
  at::parallel_for(0, nchunks, grain, [&](int64_t cb, int64_t ce) { k.step8(a, cb, ce, global); });
  if (!a.block_wise) {
    a.a1[0] = global[0];
    a.a2[0] = global[1];
    if (a.a3 != nullptr) a.a3[0] = global[2];
  }
}

void step_one(const ParamSlot& s, const GroupArgs& ga, const NearestCodeLut* lut1, const NearestCodeLut* lut2) {
  const int64_t n = s.param.numel();
  const int64_t t = s.step.data_ptr<int64_t>()[0] + 1;
  const float* h = ga.hyper.data_ptr<float>();
  const AdamScalars sc = make_scalars(h[0], h[1], h[2], h[3], h[4], t);
  // Non-contiguous parameters are updated through a contiguous copy (flat
  // row-major order, docs/design.md, "8-bit state") and written back.
  at::Tensor p = s.param.contiguous();
  const at::Tensor g = s.grad.contiguous();
  GradPrep prep{ga.grad_scale.defined(), ga.grad_scale.defined() ? read_scalar(ga.grad_scale) : 1.0f, 1.0f};
  if (ga.percentile < 100 && s.gnorm_vec.defined()) {
    prep.gnorm_scale = clip_scale(g, prep, n, s.gnorm_vec.data_ptr<float>(), t, ga.percentile);
  }
  const bool ams = s.state3.defined();
  const cpu::DType dt = cpu_dtype(p.scalar_type());
  if (s.state1.scalar_type() == at::kFloat) {
    const cpu::Step32Args a{dt, p.data_ptr(), g.data_ptr(), s.state1.data_ptr<float>(), s.state2.data_ptr<float>(),
                            ams ? s.state3.data_ptr<float>() : nullptr, sc, prep.has_scale, prep.grad_scale,
                            prep.gnorm_scale};
    step_32bit(a, n);
  } else {
    const cpu::Step8Args a{dt, p.data_ptr(), g.data_ptr(), s.state1.data_ptr<uint8_t>(),
                           s.state2.data_ptr<uint8_t>(), ams ? s.state3.data_ptr<uint8_t>() : nullptr,
                           s.absmax1.data_ptr<float>(), s.absmax2.data_ptr<float>(),
                           ams ? s.absmax3.data_ptr<float>() : nullptr, lut1->table(), lut2->table(), n,
                           ga.block_wise, sc, prep.has_scale, prep.grad_scale, prep.gnorm_scale};
    step_8bit(a);
  }
  if (!p.is_same(s.param)) s.param.copy_(p);
  s.step.data_ptr<int64_t>()[0] = t;  // as the kernels write the rest: no dispatch per parameter
}

void check_values(const GroupArgs& g) {
  // On the CPU the per-step scalars can be read for free, so check them too.
  const float* h = g.hyper.data_ptr<float>();
  // lr, eps and weight_decay finite: an infinite lr or weight decay makes every parameter inf
  // or NaN in one step
  TORCH_CHECK(h[0] >= 0.0f && std::isfinite(h[0]), "adamw8: lr must be finite and >= 0, got ", h[0]);
  TORCH_CHECK(h[1] >= 0.0f && h[1] < 1.0f, "adamw8: beta1 must be in [0, 1), got ", h[1]);
  TORCH_CHECK(h[2] >= 0.0f && h[2] < 1.0f, "adamw8: beta2 must be in [0, 1), got ", h[2]);
  TORCH_CHECK(h[3] >= 0.0f && std::isfinite(h[3]), "adamw8: eps must be finite and >= 0, got ", h[3]);
  TORCH_CHECK(h[4] >= 0.0f && std::isfinite(h[4]), "adamw8: weight_decay must be finite and >= 0, got ", h[4]);
}

void run_cpu(const std::vector<ParamSlot>& slots, const GroupArgs& g) {
  check_call(slots, g);  // everything is checked before anything is written
  if (slots.empty()) return;
  check_values(g);
  if (g.found_inf.defined() && read_scalar(g.found_inf) != 0.0f) return;  // AMP skip: nothing changes
  std::shared_ptr<const NearestCodeLut> lut1, lut2;
  if (slots[0].state1.scalar_type() == at::kByte) {
    lut1 = lut_for(g.qmap1.data_ptr<float>());
    lut2 = lut_for(g.qmap2.data_ptr<float>());
  }
  for (const auto& s : slots) step_one(s, g, lut1.get(), lut2.get());
}

}  // namespace

TORCH_LIBRARY_IMPL(adamw8, CPU, m) { m.impl("fused_step_multi", &fused_step_multi_op<run_cpu>); }

}  // namespace adamw8
