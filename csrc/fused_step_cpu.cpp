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
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>

#include "adamw8_math.h"
#include "fused_step_checks.h"
#include "quant_lut_cpu.h"

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

// The 32-bit update over [b, e): restrict pointers, the AMP branch hoisted and the
// element update branch-free, so the compiler vectorises the loop (-fno-math-errno lets
// sqrtf become the correctly rounded vector square root).
template <typename scalar_t, bool kAms, bool kScale>
void step_32bit_range(scalar_t* __restrict__ p, const scalar_t* __restrict__ g, float* __restrict__ s1,
                      float* __restrict__ s2, float* __restrict__ s3, int64_t b, int64_t e, const AdamScalars sc,
                      const float grad_scale, const float gnorm_scale) {
  for (int64_t i = b; i < e; ++i) {
    float gi = static_cast<float>(g[i]);
    if constexpr (kScale) gi = gi / grad_scale;
    gi = gi * gnorm_scale;  // GradPrep::apply, unrolled
    float pi = static_cast<float>(p[i]), m = s1[i], v = s2[i], vh = kAms ? s3[i] : 0.0f;
    adamw_element<kAms>(sc, gi, pi, m, v, vh);
    p[i] = static_cast<scalar_t>(pi);
    s1[i] = m;
    s2[i] = v;
    if constexpr (kAms) s3[i] = vh;
  }
}

template <typename scalar_t, bool kAms>
void step_32bit(scalar_t* p, const scalar_t* g, float* s1, float* s2, float* s3, int64_t n,
                const AdamScalars& sc, const GradPrep& prep) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    if (prep.has_scale) {
      step_32bit_range<scalar_t, kAms, true>(p, g, s1, s2, s3, b, e, sc, prep.grad_scale, prep.gnorm_scale);
    } else {
      step_32bit_range<scalar_t, kAms, false>(p, g, s1, s2, s3, b, e, sc, 1.0f, prep.gnorm_scale);
    }
  });
}

// One 256-element chunk of the 8-bit update, in stages: gather (dequantize
// the codes into fp32 buffers), the AdamW arithmetic over the buffers (plain
// loops the compiler vectorises), and the caller quantizes.  On return
// m/v/vh hold the new fp32 states; the parameters are written when `write`.
template <typename scalar_t, bool kAms>
struct Chunk8 {
  scalar_t* p;
  const scalar_t* g;
  const uint8_t *c1, *c2, *c3;
  const float *q1, *q2;
  const AdamScalars& sc;
  const GradPrep& prep;

  std::array<float, 3> operator()(int64_t off, int64_t len, float a1, float a2, float a3, float* m, float* v,
                                   float* vh, bool write) const {
    float gb[kBlockSize], pb[kBlockSize];
    for (int64_t j = 0; j < len; ++j) {
      m[j] = dequantize_value(q1, c1[off + j], a1);
      v[j] = dequantize_value(q2, c2[off + j], a2);
      if constexpr (kAms) vh[j] = dequantize_value(q2, c3[off + j], a3);
    }
    for (int64_t j = 0; j < len; ++j) {
      gb[j] = prep.apply(static_cast<float>(g[off + j]));
      pb[j] = static_cast<float>(p[off + j]);
    }
    float m1 = 0.0f, m2 = 0.0f, m3 = 0.0f;
    for (int64_t j = 0; j < len; ++j) {
      float hj = kAms ? vh[j] : 0.0f;
      adamw_element<kAms>(sc, gb[j], pb[j], m[j], v[j], hj);
      vh[j] = hj;
      m1 = std::max(m1, std::fabs(m[j]));
      m2 = std::max(m2, v[j]);
      m3 = std::max(m3, hj);
    }
    if (write) {
      for (int64_t j = 0; j < len; ++j) p[off + j] = static_cast<scalar_t>(pb[j]);
    }
    return {m1, m2, m3};
  }
};

template <typename scalar_t, bool kAms>
void step_8bit(scalar_t* p, const scalar_t* g, uint8_t* c1, uint8_t* c2, uint8_t* c3, float* a1, float* a2,
               float* a3, const float* q1, const float* q2, const NearestCodeLut& lut1, const NearestCodeLut& lut2,
               int64_t n, bool block_wise, const AdamScalars& sc, const GradPrep& prep) {
  const Chunk8<scalar_t, kAms> chunk{p, g, c1, c2, c3, q1, q2, sc, prep};
  const int64_t nchunks = expected_blocks(n, true);
  const int64_t grain = std::max<int64_t>(1, kGrain / kBlockSize);
  using Max3 = std::array<float, 3>;
  auto max3 = [](Max3 x, Max3 y) { return Max3{std::max(x[0], y[0]), std::max(x[1], y[1]), std::max(x[2], y[2])}; };
  // block_wise=False (docs/design.md, "block_wise=False"): the per-tensor absmax needs a first pass that
  // reduces the new maxima without writing anything.
  Max3 global{0.0f, 0.0f, 0.0f};
  const float ta1 = block_wise ? 0.0f : a1[0], ta2 = block_wise ? 0.0f : a2[0];
  const float ta3 = (kAms && !block_wise) ? a3[0] : 0.0f;
  if (!block_wise) {
    global = at::parallel_reduce(
        0, nchunks, grain, Max3{0.0f, 0.0f, 0.0f},
        [&](int64_t cb, int64_t ce, Max3 acc) {
          float mb[kBlockSize], vb[kBlockSize], hb[kBlockSize];
          for (int64_t blk = cb; blk < ce; ++blk) {
            const int64_t off = blk * kBlockSize;
            acc = max3(acc, chunk(off, std::min(kBlockSize, n - off), ta1, ta2, ta3, mb, vb, hb, false));
          }
          return acc;
        },
        max3);
  }
  at::parallel_for(0, nchunks, grain, [&](int64_t cb, int64_t ce) {
    float mb[kBlockSize], vb[kBlockSize], hb[kBlockSize];
    for (int64_t blk = cb; blk < ce; ++blk) {
      const int64_t off = blk * kBlockSize;
      const int64_t len = std::min(kBlockSize, n - off);
      Max3 na = block_wise ? chunk(off, len, a1[blk], a2[blk], kAms ? a3[blk] : 0.0f, mb, vb, hb, true)
                           : chunk(off, len, ta1, ta2, ta3, mb, vb, hb, true);
      if (!block_wise) na = global;
      lut1.quantize(mb, len, na[0], true, c1 + off);
      lut2.quantize(vb, len, na[1], false, c2 + off);
      if constexpr (kAms) lut2.quantize(hb, len, na[2], false, c3 + off);
      if (block_wise) {
        a1[blk] = na[0];
        a2[blk] = na[1];
        if constexpr (kAms) a3[blk] = na[2];
      }
    }
  });
  if (!block_wise) {
    a1[0] = global[0];
    a2[0] = global[1];
    if constexpr (kAms) a3[0] = global[2];
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
                                  ga.qmap1.data_ptr<float>(), ga.qmap2.data_ptr<float>(), *lut1, *lut2, n,
                                  ga.block_wise, sc, prep);
      };
      ams ? run(std::true_type{}) : run(std::false_type{});
    }
  });
  if (!p.is_same(s.param)) s.param.copy_(p);
  s.step.fill_(t);
}

void check_values(const GroupArgs& g) {
  // On the CPU the per-step scalars can be read for free, so check them too.
  const float* h = g.hyper.data_ptr<float>();
  TORCH_CHECK(h[0] >= 0.0f, "adamw8: lr must be >= 0, got ", h[0]);
  TORCH_CHECK(h[1] >= 0.0f && h[1] < 1.0f, "adamw8: beta1 must be in [0, 1), got ", h[1]);
  TORCH_CHECK(h[2] >= 0.0f && h[2] < 1.0f, "adamw8: beta2 must be in [0, 1), got ", h[2]);
  TORCH_CHECK(h[3] >= 0.0f, "adamw8: eps must be >= 0, got ", h[3]);
  TORCH_CHECK(h[4] >= 0.0f, "adamw8: weight_decay must be >= 0, got ", h[4]);
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
