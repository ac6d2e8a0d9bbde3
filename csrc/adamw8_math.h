// The AdamW arithmetic and the 8-bit (de)quantization, shared by every kernel.
//
// Host and device: the CPU kernels (fused_step_cpu.cpp) and the CUDA kernels
// include this one header, so the 8-bit and 32-bit paths and both devices
// compute the same fp32 operations in the same order as the reference
// (adamw8/ops/reference.py, SPEC §2).  Build with -ffp-contract=off (host) and
// --fmad=false (device) so no multiply-add is fused behind our back: the
// reference and the kernels then agree bit for bit.
//
// No torch headers here: CI compiles the CUDA kernels with nvcc without them.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ADAMW8_HD __host__ __device__ __forceinline__
#else
#define ADAMW8_HD inline
#endif

namespace adamw8 {

// Host code finds these in std::, device code in CUDA's math library.
using std::isfinite;
using std::signbit;

constexpr int64_t kBlockSize = 256;     // elements per absmax block (SPEC §2.1)
constexpr int kGnormHistory = 100;      // percentile clipping window (SPEC §2.4)

// Per-call scalars, computed once per parameter from lr/betas/step (SPEC §2).
struct AdamScalars {
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float step_size;  // lr / (1 - beta1^t)
  float c2_sqrt;    // sqrt(1 - beta2^t)
  float decay;      // 1 - lr * weight_decay
  float eps;
};

// `t` is the step count after the increment.  pow in double, rounded once.
ADAMW8_HD AdamScalars make_scalars(float lr, float beta1, float beta2, float eps,
                                   float weight_decay, float t) {
  AdamScalars s;
  s.beta1 = beta1;
  s.one_minus_beta1 = 1.0f - beta1;
  s.beta2 = beta2;
  s.one_minus_beta2 = 1.0f - beta2;
  const float c1 = static_cast<float>(1.0 - pow(static_cast<double>(beta1), static_cast<double>(t)));
  const float c2 = static_cast<float>(1.0 - pow(static_cast<double>(beta2), static_cast<double>(t)));
  s.step_size = lr / c1;
  s.c2_sqrt = sqrtf(c2);
  s.decay = 1.0f - lr * weight_decay;
  s.eps = eps;
  return s;
}

// Moment updates: m = b1*m + (1-b1)*g ; v = b2*v + (1-b2)*g*g.
ADAMW8_HD void update_moments(const AdamScalars& s, float g, float& m, float& v) {
  const float a = s.beta1 * m;
  const float b = s.one_minus_beta1 * g;
  m = a + b;
  const float gg = g * g;
  const float c = s.beta2 * v;
  const float d = s.one_minus_beta2 * gg;
  v = c + d;
}

// Decoupled weight decay first (torch.optim.AdamW order), then the Adam step
// with the new, unquantized m and vh (= v, or max(vmax, v) with amsgrad).
ADAMW8_HD float update_param(const AdamScalars& s, float p, float m, float vh) {
  const float denom = sqrtf(vh) / s.c2_sqrt + s.eps;
  const float q = m / denom;
  const float pd = p * s.decay;
  return pd - s.step_size * q;
}

ADAMW8_HD bool is_finite(float x) { return isfinite(x); }

// Nearest code of `x` in the sorted 256-entry map; ties go to the lower code.
// The branchless binary descent finds the largest i with map[i] <= x (0 when
// x < map[0]); clamped to 254 it is searchsorted(right=True) - 1 clamped to
// [0, 254], the reference's rule.  Branchless: the comparisons are data
// dependent and would mispredict half the time.
ADAMW8_HD int quantize_nearest(const float* qmap, float x) {
  int idx = 0;
#pragma unroll
  for (int stride = 128; stride > 0; stride >>= 1) idx += (qmap[idx + stride] <= x) ? stride : 0;
  idx = idx < 254 ? idx : 254;
  const float lo = qmap[idx];
  const float hi = qmap[idx + 1];
  return idx + static_cast<int>((x - lo) > (hi - x));
}

// bnb's sign fix for the signed state (m): a small negative never becomes +0.
ADAMW8_HD int sign_fix(const float* qmap, int code, float value) {
  if (signbit(qmap[code]) != signbit(value)) code += value > 0.0f ? 1 : -1;
  return code;
}

ADAMW8_HD uint8_t quantize_value(const float* qmap, float value, float absmax, bool is_signed) {
  const float x = absmax > 0.0f ? value / absmax : 0.0f;
  int code = quantize_nearest(qmap, x);
  if (is_signed) code = sign_fix(qmap, code, value);
  return static_cast<uint8_t>(code);
}

ADAMW8_HD float dequantize_value(const float* qmap, uint8_t code, float absmax) {
  return qmap[code] * absmax;
}

}  // namespace adamw8
