// CPU kernels of adamw8::fused_step and adamw8::fused_step_multi (SPEC §2-§3).
//
// One templated kernel per state format; the AdamW arithmetic and the
// quantization come from adamw8_math.h, shared with the CUDA kernels.  Work is
// split over cores with at::parallel_for; inner loops are plain fp32 loops the
// compiler vectorises.  Schemas live in adamw8/ops/schemas.py; this file only
// registers implementations.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "adamw8_math.h"
#include "fused_step_checks.h"

namespace adamw8 {
namespace {

constexpr int64_t kGrain = 4096;  // elements per parallel task (32-bit path)

float read_scalar(const at::Tensor& t) { return t.data_ptr<float>()[0]; }

// Per-element inputs shared by the two state formats.
struct GradPrep {
  bool has_scale;
  float grad_scale;  // AMP's scale: divided out, as in the reference
  float gnorm_scale;
  float apply(float g) const {
    if (has_scale) g = g / grad_scale;
    return g * gnorm_scale;
  }
};

// SPEC §2.4: squared norm of the unscaled gradient into the history, then the
// clipping factor.  `t` is the step count after the increment.
float percentile_scale(const at::Tensor& grad, const GradPrep& prep, int64_t n, float* hist, int64_t t,
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
            const double d = static_cast<double>(x);
            acc += d * d;
          }
          return acc;
        },
        std::plus<double>());
  });
  const float v = static_cast<float>(gn2);
  const int64_t slot = t % kGnormHistory;
  if (t == 1) {
    std::fill(hist, hist + kGnormHistory, v);
  } else {
    hist[slot] = v;
  }
  std::array<float, kGnormHistory> sorted;
  std::copy(hist, hist + kGnormHistory, sorted.begin());
  std::sort(sorted.begin(), sorted.end());
  const float clip = sqrtf(sorted[percentile]);
  const float current = sqrtf(hist[slot]);
  return current > clip ? clip / current : 1.0f;
}

template <typename scalar_t, bool kAms>
void step_32bit(scalar_t* p, const scalar_t* g, float* s1, float* s2, float* s3, int64_t n,
                const AdamScalars& sc, const GradPrep& prep) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float gi = prep.apply(static_cast<float>(g[i]));
      float m = s1[i], v = s2[i];
      update_moments(sc, gi, m, v);
      float vh = v;
      if constexpr (kAms) {
        vh = s3[i] > v ? s3[i] : v;
        s3[i] = vh;
      }
      p[i] = static_cast<scalar_t>(update_param(sc, static_cast<float>(p[i]), m, vh));
      s1[i] = m;
      s2[i] = v;
    }
  });
}

// The 8-bit element update: dequantize, update, (bnb) reset on a non-finite
// gradient.  Returns the new parameter value; m/v/vh are the new fp32 states.
template <typename scalar_t, bool kAms>
struct Elem8 {
  const scalar_t* g;
  const scalar_t* p;
  const uint8_t *c1, *c2, *c3;
  const float *q1, *q2;
  const AdamScalars& sc;
  const GradPrep& prep;
  float operator()(int64_t i, float a1, float a2, float a3, float& m, float& v, float& vh) const {
    const float gi = prep.apply(static_cast<float>(g[i]));
    m = dequantize_value(q1, c1[i], a1);
    v = dequantize_value(q2, c2[i], a2);
    update_moments(sc, gi, m, v);
    const bool ok = is_finite(gi);
    if (!ok) {
      m = 0.0f;
      v = 0.0f;
    }
    vh = v;
    if constexpr (kAms) {
      const float vmax = dequantize_value(q2, c3[i], a3);
      vh = vmax > v ? vmax : v;
    }
    const float pi = static_cast<float>(p[i]);
    return ok ? update_param(sc, pi, m, vh) : pi;
  }
};

template <typename scalar_t, bool kAms>
void step_8bit(scalar_t* p, const scalar_t* g, uint8_t* c1, uint8_t* c2, uint8_t* c3, float* a1, float* a2,
               float* a3, const float* q1, const float* q2, int64_t n, bool block_wise, const AdamScalars& sc,
               const GradPrep& prep) {
  const Elem8<scalar_t, kAms> elem{g, p, c1, c2, c3, q1, q2, sc, prep};
  if (block_wise) {
    // One pass: each block's new fp32 states stay in registers/stack until
    // its new absmax is known.
    const int64_t nb = expected_blocks(n, true);
    at::parallel_for(0, nb, std::max<int64_t>(1, kGrain / kBlockSize), [&](int64_t bb, int64_t be) {
      float mb[kBlockSize], vb[kBlockSize], hb[kBlockSize];
      for (int64_t blk = bb; blk < be; ++blk) {
        const int64_t off = blk * kBlockSize;
        const int64_t len = std::min(kBlockSize, n - off);
        const float oa1 = a1[blk], oa2 = a2[blk], oa3 = kAms ? a3[blk] : 0.0f;
        float na1 = 0.0f, na2 = 0.0f, na3 = 0.0f;
        for (int64_t j = 0; j < len; ++j) {
          p[off + j] = static_cast<scalar_t>(elem(off + j, oa1, oa2, oa3, mb[j], vb[j], hb[j]));
          na1 = std::max(na1, std::fabs(mb[j]));
          na2 = std::max(na2, vb[j]);
          na3 = std::max(na3, hb[j]);
        }
        for (int64_t j = 0; j < len; ++j) {
          c1[off + j] = quantize_value(q1, mb[j], na1, true);
          c2[off + j] = quantize_value(q2, vb[j], na2, false);
          if constexpr (kAms) c3[off + j] = quantize_value(q2, hb[j], na3, false);
        }
        a1[blk] = na1;
        a2[blk] = na2;
        if constexpr (kAms) a3[blk] = na3;
      }
    });
    return;
  }
  // block_wise=False (SPEC §2.3): pass 1 reduces the new absmax over the whole
  // tensor without writing; pass 2 recomputes the same values and writes.
  const float oa1 = a1[0], oa2 = a2[0], oa3 = kAms ? a3[0] : 0.0f;
  using Max3 = std::array<float, 3>;
  const Max3 na = at::parallel_reduce(
      0, n, kGrain, Max3{0.0f, 0.0f, 0.0f},
      [&](int64_t b, int64_t e, Max3 acc) {
        float m, v, vh;
        for (int64_t i = b; i < e; ++i) {
          elem(i, oa1, oa2, oa3, m, v, vh);
          acc[0] = std::max(acc[0], std::fabs(m));
          acc[1] = std::max(acc[1], v);
          acc[2] = std::max(acc[2], vh);
        }
        return acc;
      },
      [](Max3 x, Max3 y) { return Max3{std::max(x[0], y[0]), std::max(x[1], y[1]), std::max(x[2], y[2])}; });
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    float m, v, vh;
    for (int64_t i = b; i < e; ++i) {
      p[i] = static_cast<scalar_t>(elem(i, oa1, oa2, oa3, m, v, vh));
      c1[i] = quantize_value(q1, m, na[0], true);
      c2[i] = quantize_value(q2, v, na[1], false);
      if constexpr (kAms) c3[i] = quantize_value(q2, vh, na[2], false);
    }
  });
  a1[0] = na[0];
  a2[0] = na[1];
  if constexpr (kAms) a3[0] = na[2];
}

void step_one(const ParamSlot& s, const GroupArgs& ga) {
  const int64_t n = s.param.numel();
  const float t = read_scalar(s.step) + 1.0f;
  const AdamScalars sc = make_scalars(read_scalar(ga.lr), read_scalar(ga.beta1), read_scalar(ga.beta2),
                                      static_cast<float>(ga.eps), static_cast<float>(ga.weight_decay), t);
  // Non-contiguous parameters are updated through a contiguous copy (flat
  // row-major order, SPEC §2.1) and written back.
  at::Tensor p = s.param.contiguous();
  const at::Tensor g = s.grad.contiguous();
  GradPrep prep{ga.grad_scale.defined(), ga.grad_scale.defined() ? read_scalar(ga.grad_scale) : 1.0f, 1.0f};
  if (ga.percentile < 100 && s.gnorm_vec.defined()) {
    prep.gnorm_scale = percentile_scale(g, prep, n, s.gnorm_vec.data_ptr<float>(),
                                        static_cast<int64_t>(t), ga.percentile);
  }
  const bool ams = s.state3.defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.scalar_type(), "adamw8_fused_step_cpu", [&] {
    scalar_t* pp = p.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    if (s.state1.scalar_type() == at::kFloat) {
      auto run = [&](auto ams_tag) {
        constexpr bool kAms = decltype(ams_tag)::value;
        step_32bit<scalar_t, kAms>(pp, gp, s.state1.data_ptr<float>(), s.state2.data_ptr<float>(),
                                   kAms ? s.state3.data_ptr<float>() : nullptr, n, sc, prep);
      };
      ams ? run(std::true_type{}) : run(std::false_type{});
    } else {
      auto run = [&](auto ams_tag) {
        constexpr bool kAms = decltype(ams_tag)::value;
        step_8bit<scalar_t, kAms>(pp, gp, s.state1.data_ptr<uint8_t>(), s.state2.data_ptr<uint8_t>(),
                                  kAms ? s.state3.data_ptr<uint8_t>() : nullptr, s.absmax1.data_ptr<float>(),
                                  s.absmax2.data_ptr<float>(), kAms ? s.absmax3.data_ptr<float>() : nullptr,
                                  ga.qmap1.data_ptr<float>(), ga.qmap2.data_ptr<float>(), n, ga.block_wise, sc,
                                  prep);
      };
      ams ? run(std::true_type{}) : run(std::false_type{});
    }
  });
  if (!p.is_same(s.param)) s.param.copy_(p);
  s.step.fill_(t);
}

void check_values(const GroupArgs& g) {
  // On the CPU the per-step scalars can be read for free, so check them too.
  const float lr = read_scalar(g.lr), b1 = read_scalar(g.beta1), b2 = read_scalar(g.beta2);
  TORCH_CHECK(lr >= 0.0f, "adamw8: lr must be >= 0, got ", lr);
  TORCH_CHECK(b1 >= 0.0f && b1 < 1.0f, "adamw8: beta1 must be in [0, 1), got ", b1);
  TORCH_CHECK(b2 >= 0.0f && b2 < 1.0f, "adamw8: beta2 must be in [0, 1), got ", b2);
}

void run_cpu(const std::vector<ParamSlot>& slots, const GroupArgs& g) {
  check_call(slots, g);  // everything is checked before anything is written
  if (slots.empty()) return;
  check_values(g);
  if (g.found_inf.defined() && read_scalar(g.found_inf) != 0.0f) return;  // AMP skip: nothing changes
  for (const auto& s : slots) step_one(s, g);
}

GroupArgs make_group(const std::optional<at::Tensor>& qmap1, const std::optional<at::Tensor>& qmap2,
                     const at::Tensor& lr, const at::Tensor& beta1, const at::Tensor& beta2, double eps,
                     double weight_decay, bool block_wise, int64_t percentile,
                     const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  return GroupArgs{opt(qmap1), opt(qmap2), lr, beta1, beta2, opt(grad_scale), opt(found_inf),
                   eps, weight_decay, block_wise, percentile};
}

void fused_step_cpu(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& state1,
                    const at::Tensor& state2, const std::optional<at::Tensor>& state3,
                    const std::optional<at::Tensor>& absmax1, const std::optional<at::Tensor>& absmax2,
                    const std::optional<at::Tensor>& absmax3, const std::optional<at::Tensor>& qmap1,
                    const std::optional<at::Tensor>& qmap2, const at::Tensor& step,
                    const std::optional<at::Tensor>& gnorm_vec, const at::Tensor& lr, const at::Tensor& beta1,
                    const at::Tensor& beta2, double eps, double weight_decay, bool block_wise, int64_t percentile,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  std::vector<ParamSlot> slots{ParamSlot{param, grad, state1, state2, opt(state3), opt(absmax1), opt(absmax2),
                                         opt(absmax3), step, opt(gnorm_vec)}};
  run_cpu(slots, make_group(qmap1, qmap2, lr, beta1, beta2, eps, weight_decay, block_wise, percentile, grad_scale,
                            found_inf));
}

void fused_step_multi_cpu(at::TensorList params, at::TensorList grads, at::TensorList state1, at::TensorList state2,
                          at::TensorList state3, at::TensorList absmax1, at::TensorList absmax2,
                          at::TensorList absmax3, const std::optional<at::Tensor>& qmap1,
                          const std::optional<at::Tensor>& qmap2, at::TensorList steps, at::TensorList gnorm_vecs,
                          const at::Tensor& lr, const at::Tensor& beta1, const at::Tensor& beta2, double eps,
                          double weight_decay, bool block_wise, int64_t percentile,
                          const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  run_cpu(make_slots(params, grads, state1, state2, state3, absmax1, absmax2, absmax3, steps, gnorm_vecs),
          make_group(qmap1, qmap2, lr, beta1, beta2, eps, weight_decay, block_wise, percentile, grad_scale,
                     found_inf));
}

}  // namespace

TORCH_LIBRARY_IMPL(adamw8, CPU, m) {
  m.impl("fused_step", &fused_step_cpu);
  m.impl("fused_step_multi", &fused_step_multi_cpu);
}

}  // namespace adamw8
