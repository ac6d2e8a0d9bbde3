// The AdamW arithmetic and the 8-bit (de)quantization, shared by every kernel.
//
// Host and device: the CPU kernels (fused_step_cpu.cpp) and the CUDA kernels
// include this one header, so the 8-bit and 32-bit paths and both devices
// compute the same fp32 operations in the same order as the reference
// (adamw8/ops/reference.py, docs/design.md, "The update").  Build with -ffp-contract=off (host) and
// --fmad=false (device) so no multiply-add is fused behind our back: the
// reference and the kernels then agree bit for bit.
//
// No torch headers here: CI compiles the CUDA kernels with nvcc without them.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ADAMW8_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// always inlined: a call inside the CPU kernels' loops would stop their vectorisation
#define ADAMW8_HD inline __attribute__((always_inline))
#else
#define ADAMW8_HD inline
#endif

namespace adamw8 {

// Host code finds these in std::, device code in CUDA's math library.
using std::isfinite;
using std::signbit;

constexpr int64_t kBlockSize = 256;     // elements per absmax block (docs/design.md, "8-bit state")
constexpr int kGnormHistory = 100;      // percentile clipping window (docs/design.md, "Percentile clipping")

// A float's bits and back (the CUDA intrinsics on the device, memcpy on the host).
ADAMW8_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

ADAMW8_HD float bits_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

// Per-call scalars, computed once per parameter from lr/betas/step (docs/design.md, "The update").
struct AdamScalars {
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float step_size;  // lr / (1 - beta1^t)
  float c2_sqrt;    // sqrt(1 - beta2^t)
  float c2_rcp;     // 1 / c2_sqrt, rounded: div_rn's reciprocal
  bool c2_rcp_exact;  // c2_sqrt in [2^-60, 1] (every beta2 in [0, 1)): div_rn by it is exact
  float decay;      // 1 - lr * weight_decay
  float eps;
};

// `t` is the step count after the increment (exact: an int64 count, as double
// up to 2^53).  pow in double, rounded once.
ADAMW8_HD AdamScalars make_scalars(float lr, float beta1, float beta2, float eps,
                                   float weight_decay, int64_t t) {
  AdamScalars s;
  s.beta1 = beta1;
  s.one_minus_beta1 = 1.0f - beta1;
  s.beta2 = beta2;
  s.one_minus_beta2 = 1.0f - beta2;
  const float c1 = static_cast<float>(1.0 - pow(static_cast<double>(beta1), static_cast<double>(t)));
  const float c2 = static_cast<float>(1.0 - pow(static_cast<double>(beta2), static_cast<double>(t)));
  s.step_size = lr / c1;
  s.c2_sqrt = sqrtf(c2);
  s.c2_rcp = 1.0f / s.c2_sqrt;
  s.c2_rcp_exact = s.c2_sqrt >= 0x1p-60f && s.c2_sqrt <= 1.0f;
  s.decay = 1.0f - lr * weight_decay;
  s.eps = eps;
  return s;
}

// Percentile clipping's per-step work (docs/design.md): `gn2` (this step's
// squared gradient norm) goes into the 100-slot history `hist` (every slot on
// the first step), and the gradient's scale is returned: clip / current when
// the current norm exceeds the percentile-th smallest of the history, else 1.
// `t` is the step count after the increment.  An insertion sort, the same on
// every backend: one thread per tensor runs it on the GPU.
ADAMW8_HD float percentile_scale(float* hist, float gn2, int64_t t, int percentile) {
  const int slot = static_cast<int>(t % kGnormHistory);
  if (t == 1) {
    for (int i = 0; i < kGnormHistory; ++i) hist[i] = gn2;
  } else {
    hist[slot] = gn2;
  }
  float sorted[kGnormHistory];
  for (int i = 0; i < kGnormHistory; ++i) {
    const float x = hist[i];
    int j = i;
    for (; j > 0 && sorted[j - 1] > x; --j) sorted[j] = sorted[j - 1];
    sorted[j] = x;
  }
  const float clip = sqrtf(sorted[percentile]);
  const float current = sqrtf(hist[slot]);
  return current > clip ? clip / current : 1.0f;
}

// One gradient element's share of the squared norm that percentile clipping
// records, in double.  A non-finite element counts 0: it is reset anyway (the
// non-finite rule), and one NaN must not poison the 100-step history.
ADAMW8_HD double norm_term(float g) {
  const double d = static_cast<double>(g);
  return isfinite(g) ? d * d : 0.0;
}

// The squared norm as the fp32 history keeps it: saturated at the largest
// float rather than inf (|g| > 1.8e19 squares past fp32), so the history stays
// finite and such a step is clipped hard instead of poisoning the percentile.
ADAMW8_HD float history_value(double gn2) {
  constexpr double kMax = 3.4028234663852886e38;  // FLT_MAX
  return gn2 >= kMax ? static_cast<float>(kMax) : static_cast<float>(gn2);
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

// a / b rounded to nearest without a division, given rb = 1 / b rounded to nearest: a * rb is
// within an ulp of the quotient, the residual a - q0 * b is exact in one fused multiply-add, and
// one more corrects q0 to the correctly rounded quotient (Markstein's theorem: the bits of a / b).
// It holds while the residual is exact and nothing overflows: ilogb(a / b) + ilogb(b) >= -100
// (the residual stays a multiple of the smallest subnormal) and rb normal; a = +0 gives +0, and
// a = -0 gives +0 too.  The kernels' uses: sqrt(vh) / c2_sqrt (c2_sqrt in [2^-12, 1] for a float
// beta2 < 1, sqrt(vh) = 0 or >= 2^-75) and a state over its absmax in [2^-64, 2^64] (exact for
// quotients from 2^-36; below, within 2^-86 of the division: see the quantizers).
// tests/test_emulation.py checks it against the division over every mantissa of a.  Three
// multiply-adds where a correctly rounded division costs a reciprocal, Newton steps and a
// slow-path branch on the GPU, and a divider (one per 6 cycles) on the CPU.
ADAMW8_HD float div_rn(float a, float b, float rb) {
  const float q0 = a * rb;
  const float r = fmaf(-q0, b, a);
  return fmaf(r, rb, q0);
}

// 1 / b rounded to nearest, div_rn's reciprocal, for b with a biased exponent in [1, 252] (every
// absmax div_rn_absmax admits).  On the GPU it is the fast path of nvcc's own 1.0f / b
// (__frcp_rn: MUFU.RCP, then one Newton step as two multiply-adds), which nvcc takes for exactly
// those b, without its range test and the branch around the slow path; the residual b * y - 1
// is zero or at least 2^-48 in magnitude, so the flush to zero of its negation there changes
// nothing.  The two instruction sequences were compared in cuobjdump's SASS (docs/design.md);
// tests/test_cuda.py compares rcp_rn with __frcp_rn for every such b on the device
// (fast_path_check_kernel).  Elsewhere: the division.
ADAMW8_HD float rcp_rn(float b) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(b));
  const float e = fmaf(b, y, -1.0f);
  return fmaf(y, -e, y);
#else
  return 1.0f / b;
#endif
}

// A block's absmax the bounded quantizers divide by through div_rn (CPU and CUDA): in
// [2^-64, 2^64] its reciprocal and div_rn's residuals stay normal, so quotients from 2^-36 up
// get the division's bits.
ADAMW8_HD bool div_rn_absmax(float absmax) { return absmax >= 0x1p-64f && absmax <= 0x1p64f; }

// sqrtf(v) for a finite v >= +0 where `ok` stays true.  On the GPU it is the fast path of
// nvcc's own sqrtf (MUFU.RSQ, then s = v * r corrected by two multiply-adds with r / 2), which
// nvcc takes for exactly v in [2^-101, FLT_MAX], without its range test's branch around the
// slow path; v = +0 gives +0 (the reciprocal root, +inf, capped at 2^64 first: at most 2^50.5
// elsewhere).  For v in (0, 2^-101) `ok` is cleared and the result is not sqrtf's: the caller
// runs the update again with kFastRoot off.  Elsewhere sqrtf, with the same `ok` (so the
// emulated kernels take the same second run).
ADAMW8_HD float sqrt_fast(float v, bool& ok) {
  ok = ok && float_bits(v) - 1u >= 0x0cffffffu;  // v is +0 or at least 2^-101 (bits 0x0d000000)
#if defined(__CUDA_ARCH__)
  float r;
  asm("rsqrt.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  r = fminf(r, 0x1p64f);
  const float s0 = v * r, h = r * 0.5f;
  return fmaf(fmaf(-s0, s0, v), h, s0);
#else
  return sqrtf(v);
#endif
}

// Decoupled weight decay first (torch.optim.AdamW order), then the Adam step
// with the new, unquantized m and vh (= v, or max(vmax, v) with amsgrad).
// kRcp: sqrt(vh) / c2_sqrt through div_rn (the same bits; only where c2_rcp_exact: then
// sqrt(vh) is +0 or in [2^-75, 2^64] and the quotient in range); otherwise a division.
// kFastRoot: sqrt(vh) by sqrt_fast, which clears `root_ok` where the result is not sqrtf's.
template <bool kRcp = false, bool kFastRoot = false>
ADAMW8_HD float update_param(const AdamScalars& s, float p, float m, float vh, bool& root_ok) {
  const float r = kFastRoot ? sqrt_fast(vh, root_ok) : sqrtf(vh);
  const float denom = (kRcp ? div_rn(r, s.c2_sqrt, s.c2_rcp) : r / s.c2_sqrt) + s.eps;
  const float q = m / denom;
  const float pd = p * s.decay;
  return pd - s.step_size * q;
}


ADAMW8_HD bool is_finite(float x) { return isfinite(x); }

// The non-finite rule (docs/design.md), in every state format: an element whose
// gradient, new m or new v is not finite (a NaN/inf gradient, or g*g that
// overflows) gets m = v = 0 and keeps its parameter, so nothing non-finite
// ever reaches a parameter, a state or a block's absmax.  bitsandbytes' 8-bit
// kernels reset on a non-finite gradient; the overflow case is ours.
// The gradient needs no test of its own: a NaN or infinite g makes g*g NaN or
// inf, and (1 - beta2) * g*g is then NaN or inf whatever beta2 (0 * inf is NaN),
// so the new v is not finite either (the reference tests all three).
ADAMW8_HD bool update_is_finite(float m, float v) {
  return static_cast<bool>(static_cast<int>(is_finite(m)) & static_cast<int>(is_finite(v)));  // no branches: vectorisable
}

// One element's whole step, the one every kernel runs (32-bit and 8-bit, CPU and
// CUDA; the reference mirrors it).  In: `g` (unscaled, clipped), the old `p`,
// `m`, `v` and, with amsgrad, the old max `vh`.  Out: the new values, with the
// non-finite rule applied (moments reset, parameter kept).
template <bool kAms, bool kRcp = false, bool kFastRoot = false>
ADAMW8_HD void adamw_element(const AdamScalars& s, float g, float& p, float& m, float& v, float& vh, bool& root_ok) {
  update_moments(s, g, m, v);
  const bool ok = update_is_finite(m, v);
  m = ok ? m : 0.0f;
  v = ok ? v : 0.0f;
  if constexpr (kAms) {
    vh = vh > v ? vh : v;
  } else {
    vh = v;
  }
  const float pn = update_param<kRcp, kFastRoot>(s, p, m, vh, root_ok);
  p = ok ? pn : p;
}

// adamw_element with sqrtf: every kernel but the CUDA 8-bit one's first try.
template <bool kAms, bool kRcp = false>
ADAMW8_HD void adamw_element(const AdamScalars& s, float g, float& p, float& m, float& v, float& vh) {
  bool root_ok = true;
  adamw_element<kAms, kRcp, false>(s, g, p, m, v, vh, root_ok);
}

// max that propagates NaN (torch.amax's rule), for absmax reductions: a NaN in
// a block makes its absmax NaN, so NaN stays NaN through quantize/dequantize.
ADAMW8_HD float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }

// The floor index of x in the sorted 256-entry map: the largest i <= 254 with
// map[i] <= x, 0 when x < map[0] (searchsorted(right=True) - 1 clamped to
// [0, 254], the reference's rule).  A branchless binary descent: the
// comparisons are data dependent and would mispredict half the time.
ADAMW8_HD int floor_index(const float* qmap, float x) {
  int idx = 0;
#pragma unroll
  for (int stride = 128; stride > 0; stride >>= 1) idx += (qmap[idx + stride] <= x) ? stride : 0;
  return idx < 254 ? idx : 254;
}

// Nearest code of `x` in the map; ties go to the lower code.  The kernels use
// the same rule through a lookup table (nearest_lut.h); this is its definition.
ADAMW8_HD int quantize_nearest(const float* qmap, float x) {
  const int idx = floor_index(qmap, x);
  const float lo = qmap[idx];
  const float hi = qmap[idx + 1];
  return idx + static_cast<int>((x - lo) > (hi - x));
}

// The value a state is rounded as: state / absmax, 0 for an all-zero (or NaN)
// absmax, and 0 where the division gives NaN (inf / inf), so no search ever
// sees a NaN.
ADAMW8_HD float normalize(float value, float absmax) {
  const bool positive = absmax > 0.0f;
  const float q = value / (positive ? absmax : 1.0f);  // divided either way: no branch around it
  const float x = positive ? q : 0.0f;
  return x == x ? x : 0.0f;
}

// bnb's sign fix for the signed state (m): a small negative never becomes +0.
// NaN is left alone: its sign bit is not a sign (x86 and CUDA make NaNs of
// different sign), so a fix would make the backends disagree.
ADAMW8_HD int sign_fix(const float* qmap, int code, float value) {
  // the sign bits compared as bits (what signbit reads): an xor and a shift on the GPU
  const bool differ = ((float_bits(qmap[code]) ^ float_bits(value)) >> 31) != 0u;
  if (value == value && differ) code += value > 0.0f ? 1 : -1;
  return code;
}

// The unsigned state (v, and max(v) with amsgrad) never rounds a positive value
// to code 0: a zero v turns the next step with a zero gradient into a move of
// lr * m_hat / eps (docs/design.md, "the zero point").  Code 1, the smallest
// positive code, is still a valid bitsandbytes code.
ADAMW8_HD int positive_floor(int code, float value) { return (code == 0 && value > 0.0f) ? 1 : code; }

// Everything after the nearest-code search, shared by every search (the
// binary descent here, the CPU's lookup table, the CUDA kernels' table).
ADAMW8_HD int finish_code(const float* qmap, int nearest, float value, bool is_signed) {
  return is_signed ? sign_fix(qmap, nearest, value) : positive_floor(nearest, value);
}

// sign_fix as a clamp, for the fused step's bounded quantizers (CPU and CUDA), whose values are
// never NaN: with z the code nearest 0, if q[z - 1] has its sign bit set and q[z] has not (a
// sorted map: the codes below z are then all sign-set and those from z all clear), a value
// with its sign bit set has a nearest code c <= z and sign_fix gives min(c, z - 1), and any
// other value keeps its code.  Returns z - 1, or -1 where the map is not like that.
ADAMW8_HD int sign_clamp_code(const float* qmap) {
  const int z = quantize_nearest(qmap, 0.0f);
  return (z >= 1 && signbit(qmap[z - 1]) && !signbit(qmap[z])) ? z - 1 : -1;
}

ADAMW8_HD uint8_t quantize_value(const float* qmap, float value, float absmax, bool is_signed) {
  return static_cast<uint8_t>(finish_code(qmap, quantize_nearest(qmap, normalize(value, absmax)), value, is_signed));
}

ADAMW8_HD float dequantize_value(const float* qmap, uint8_t code, float absmax) {
  return qmap[code] * absmax;
}

}  // namespace adamw8
