// The CPU kernels' loops, compiled once per instruction set (csrc/cpu/kernels_*.cpp), the way
// ATen builds its CPU_CAPABILITY kernels: each kernels_<isa>.cpp includes its headers, turns on
// its instruction set with `#pragma GCC target`, defines ADAMW8_CPU_NS and includes this file,
// so every function here lands in that translation unit's own namespace and nothing compiled for
// AVX-512 can be picked by the linker for a machine without it.  dispatch.cpp picks the best set
// the CPU has at run time (ADAMW8_CPU_CAPABILITY overrides it).
//
// The loops are plain, branch-free fp32 loops that the compiler vectorises, gathers included:
// the map lookups of the 8-bit state are indexed loads from 256-entry (and, for the nearest-code
// table, 3,074-entry) int/float tables.  The element update is adamw_element (adamw8_math.h), the
// one every kernel runs; with -ffp-contract=off no multiply-add is fused, and vector division and
// square root are correctly rounded, so every instruction set gives the reference's bits.
//
// Include only after adamw8_math.h, nearest_lut.h, kernel_args.h and the c10 scalar types, with
// ADAMW8_CPU_NS defined.
#ifndef ADAMW8_CPU_NS
#error "define ADAMW8_CPU_NS before including csrc/cpu/kernels.h"
#endif

namespace adamw8 {
namespace cpu {
namespace ADAMW8_CPU_NS {

#ifdef ADAMW8_CPU_PERMUTE_LOOKUPS
#include "avx512_lookup.h"
#define ADAMW8_BF16_STORE 1
#else
#define ADAMW8_BF16_STORE 0
#endif

// The 32-bit update over [b, e): restrict pointers, the AMP branch hoisted, the element update
// branch-free.
template <typename T, bool kAms, bool kScale>
void step32_loop(T* __restrict__ p, const T* __restrict__ g, float* __restrict__ s1, float* __restrict__ s2,
                 float* __restrict__ s3, int64_t b, int64_t e, const AdamScalars sc, const float grad_scale,
                 const float gnorm_scale) {
  for (int64_t i = b; i < e; ++i) {
    float gi = static_cast<float>(g[i]);
    if constexpr (kScale) gi = gi / grad_scale;
    gi = gi * gnorm_scale;
    float pi = static_cast<float>(p[i]), m = s1[i], v = s2[i], vh = kAms ? s3[i] : 0.0f;
    adamw_element<kAms>(sc, gi, pi, m, v, vh);
    p[i] = static_cast<T>(pi);
    s1[i] = m;
    s2[i] = v;
    if constexpr (kAms) s3[i] = vh;
  }
}

template <typename T, bool kAms>
void step32_typed(const Step32Args& a, int64_t b, int64_t e) {
  T* p = static_cast<T*>(a.p);
  const T* g = static_cast<const T*>(a.g);
  if (a.has_scale) {
    step32_loop<T, kAms, true>(p, g, a.s1, a.s2, a.s3, b, e, a.sc, a.grad_scale, a.gnorm_scale);
  } else {
    step32_loop<T, kAms, false>(p, g, a.s1, a.s2, a.s3, b, e, a.sc, 1.0f, a.gnorm_scale);
  }
}

// The largest of non-negative finite floats through their bits as int32 (the same order), a max
// reduction the vectoriser takes without -ffast-math; -0 (a negative int) counts as +0.
inline int32_t bits_max(int32_t acc, float x) {
  const int32_t b = static_cast<int32_t>(float_bits(x));
  return acc > b ? acc : b;
}

// The nearest code of x (normalised, not NaN) by the threshold route (quant_lut_cpu.h).  No
// __restrict__ on these pointers: with it GCC stops vectorising the callers' loops.
template <int kSpan>
__attribute__((always_inline)) inline int threshold_code(const int32_t* ce, const float* thr, float x) {
  const int e = ce[lut_bucket(x)];
  int c = e + static_cast<int>(x >= thr[e]);
  if constexpr (kSpan == 2) c += static_cast<int>(x >= thr[e + 1]);
  return c;
}

// The threshold route for `len` values sharing one absmax, with finish_code's two rules.
template <int kSpan>
inline void quantize_thresholds(const QuantTable& t, const float* __restrict__ values, int64_t len, float absmax,
                                bool is_signed, uint8_t* __restrict__ out) {
  const int32_t* __restrict__ ce = t.code_entry;
  const float* __restrict__ thr = t.thr;
  const int neg = t.neg_count;
  if (is_signed) {
    for (int64_t j = 0; j < len; ++j) {
      const float value = values[j];
      const int c = threshold_code<kSpan>(ce, thr, normalize(value, absmax));
      // sign_fix: a code whose sign differs from a non-NaN value's moves one step toward it
      const int differs = static_cast<int>((c < neg) != signbit(value)) & static_cast<int>(value == value);
      out[j] = static_cast<uint8_t>(c + (differs ? (value > 0.0f ? 1 : -1) : 0));
    }
  } else {
    for (int64_t j = 0; j < len; ++j) {
      const float value = values[j];
      out[j] = static_cast<uint8_t>(positive_floor(threshold_code<kSpan>(ce, thr, normalize(value, absmax)), value));
    }
  }
}

// quantize_value (adamw8_math.h) for `len` values sharing one absmax: the threshold route where
// the map allows it (the dynamic maps; the AVX-512 build takes the packed form of it, one lookup
// fewer), else nearest_lut.h's table with the forward steps the map needs and finish_code (a
// scalar loop: maps with repeated values, or a span over 2).  The packed form as a portable loop
// measured no faster than the threshold route with AVX2 and slower without.
inline void quantize_block(const QuantTable& t, const float* __restrict__ values, int64_t len, float absmax,
                           bool is_signed, uint8_t* __restrict__ out) {
#ifdef ADAMW8_CPU_PERMUTE_LOOKUPS
  if (t.packed != nullptr) return lookup512::quantize_packed(t, values, len, absmax, is_signed, out);
  if (t.thr != nullptr) {
    return t.span == 1 ? lookup512::quantize<1>(t, values, len, absmax, is_signed, out)
                       : lookup512::quantize<2>(t, values, len, absmax, is_signed, out);
  }
#else
  if (t.thr != nullptr) {
    return t.span == 1 ? quantize_thresholds<1>(t, values, len, absmax, is_signed, out)
                       : quantize_thresholds<2>(t, values, len, absmax, is_signed, out);
  }
#endif
  for (int64_t j = 0; j < len; ++j) {
    const float x = normalize(values[j], absmax);
    out[j] = static_cast<uint8_t>(
        finish_code(t.qmap, lut_finish(t.qmap, t.entry[lut_bucket(x)], t.steps, x), values[j], is_signed));
  }
}

#if !defined(ADAMW8_CPU_PERMUTE_LOOKUPS) && ADAMW8_CPU_FMA
// The bounded route (lookup512::quantize_bounded) as a plain loop the vectoriser takes, gathers
// included: the builds with FMA but without the AVX-512 lookups (avx2).  packed_code's bucket
// and word arithmetic written out for |x| <= 1 (no upper clamp): through lut_bucket and
// packed_code the loop measured 8% slower (2.62 against 2.42 ns per 8-bit element).
template <bool kSigned>
inline void quantize_bounded_loop(const QuantTable& t, const float* __restrict__ values, int64_t len, float absmax,
                                  uint8_t* __restrict__ out) {
  const float rcp = 1.0f / absmax;
  const uint32_t* pk = t.packed;
  const int neg_last = t.clamp_code;
  for (int64_t j = 0; j < len; ++j) {
    const uint32_t vb = float_bits(values[j]);
    const uint32_t s = static_cast<uint32_t>(static_cast<int32_t>(vb) >> 31);
    const uint32_t xb = float_bits(div_rn(bits_float(vb & 0x7fffffffu), absmax, rcp));
    const uint32_t key = xb >> kLutShift;
    const uint32_t b = (key > kLutKeyLo - 1u ? key - (kLutKeyLo - 1u) : 0u) + (s & static_cast<uint32_t>(kLutHalf));
    int c = static_cast<int>((pk[b] + ((xb ^ s) & 0xffffu)) >> 16);
    if constexpr (kSigned) {
      c = s != 0u && c > neg_last ? neg_last : c;
    } else {
      const int pos = static_cast<int32_t>(vb) > 0 ? 1 : 0;
      c = c > pos ? c : pos;
    }
    out[j] = static_cast<uint8_t>(c);
  }
}
#endif

// quantize_block for the fused step's states: `len` finite values with |value| <= absmax (the
// block's own absmax, or the tensor's).  Where the block's absmax is in [2^-64, 2^64] and the
// map allows it, the bounded route (no division, the sign fix a clamp): AVX-512's, or the
// plain loop in a build with FMA; elsewhere, and in the base x86 build, quantize_block.
// kNonNegative: every value is +0, -0 or positive (the unsigned map's states; the plane route
// then skips the sign's half).
template <bool kNonNegative = false>
#ifdef ADAMW8_CPU_VBMI
__attribute__((always_inline))  // into step8_blocks: 5% faster than as calls (benchmarks/RESULTS.md)
#endif
inline void quantize_state(const QuantTable& t, const float* __restrict__ values, int64_t len, float absmax,
                           bool is_signed, uint8_t* __restrict__ out) {
  if (t.packed != nullptr && (!is_signed || t.clamp_code >= 0) && div_rn_absmax(absmax)) {
#ifdef ADAMW8_CPU_VBMI
    if (t.plane_code != nullptr) {
      return lookup512::quantize_planes<kNonNegative>(t, values, len, absmax, is_signed, out);
    }
#endif
#ifdef ADAMW8_CPU_PERMUTE_LOOKUPS
    return lookup512::quantize_bounded(t, values, len, absmax, is_signed, out);
#elif ADAMW8_CPU_FMA
    return is_signed ? quantize_bounded_loop<true>(t, values, len, absmax, out)
                     : quantize_bounded_loop<false>(t, values, len, absmax, out);
#endif
  }
  quantize_block(t, values, len, absmax, is_signed, out);
}

// One block (at most 256 elements) of the 8-bit update: dequantize, AdamW, and, when kWrite,
// the parameters.  Returns the new absmax of m, v and vh as bits.  kRcp: adamw_element's
// division by c2_sqrt through div_rn (rcp_ok says where it is exact).
template <typename T, bool kAms, bool kScale, bool kRcp, bool kWrite>
inline void block8(const Step8Args& a, int64_t off, int64_t len, float a1, float a2, float a3, float* __restrict__ m,
                   float* __restrict__ v, float* __restrict__ vh, int32_t* mx) {
  T* __restrict__ p = static_cast<T*>(a.p) + off;
  const T* __restrict__ g = static_cast<const T*>(a.g) + off;
  const uint8_t* __restrict__ c1 = a.c1 + off;
  const uint8_t* __restrict__ c2 = a.c2 + off;
  [[maybe_unused]] const float* __restrict__ q1 = a.t1.qmap;
  [[maybe_unused]] const float* __restrict__ q2 = a.t2.qmap;
  const AdamScalars sc = a.sc;
  const float grad_scale = a.grad_scale, gnorm_scale = a.gnorm_scale;
#ifdef ADAMW8_CPU_PERMUTE_LOOKUPS
  // dequantize_value through register tables (avx512_lookup.h), into the state buffers
#ifdef ADAMW8_CPU_VBMI
  lookup512::dequantize_vbmi(a.t1.planes, c1, a1, len, m);
  lookup512::dequantize_vbmi(a.t2.planes, c2, a2, len, v);
  if constexpr (kAms) lookup512::dequantize_vbmi(a.t2.planes, a.c3 + off, a3, len, vh);
#else
  lookup512::dequantize(a.t1.halves, c1, a1, len, m);
  lookup512::dequantize(a.t2.halves, c2, a2, len, v);
  if constexpr (kAms) lookup512::dequantize(a.t2.halves, a.c3 + off, a3, len, vh);
#endif
#define ADAMW8_DEQ(buf, q, k, am) buf[j]
#else
  // the codes widened first: the compiler gathers only through int32 indices
  int32_t k1[kBlockSize], k2[kBlockSize], k3[kAms ? kBlockSize : 1];
  for (int64_t j = 0; j < len; ++j) {
    k1[j] = c1[j];
    k2[j] = c2[j];
    if constexpr (kAms) k3[j] = a.c3[off + j];
  }
#define ADAMW8_DEQ(buf, q, k, am) q[k[j]] * am  // dequantize_value
#endif
  // bf16 parameters in the AVX-512 builds: the new values as floats, rounded after the loop
  // (lookup512::to_bf16), where GCC's vectorised c10::BFloat16(float) in this loop made the
  // avx512vbmi build's bf16 step 4-6% slower (benchmarks/RESULTS.md, 2026-11-28)
  constexpr bool kBf16Out = kWrite && ADAMW8_BF16_STORE && std::is_same_v<T, c10::BFloat16>;
  [[maybe_unused]] float pf[kBf16Out ? kBlockSize : 1];
  int32_t m1 = 0, m2 = 0, m3 = 0;
  // The arrays never overlap; without ivdep GCC guards the loop with a run-time alias check of
  // the parameter stores against the map gathers and state buffers, and the builds without
  // register lookups (avx2, base) ran it 2.1x (avx2) and 1.16x (base) slower.
#pragma GCC ivdep
  for (int64_t j = 0; j < len; ++j) {
    float gj = static_cast<float>(g[j]);
    if constexpr (kScale) gj = gj / grad_scale;  // a conditional division would stop the vectoriser
    gj = gj * gnorm_scale;
    float mj = ADAMW8_DEQ(m, q1, k1, a1);
    float vj = ADAMW8_DEQ(v, q2, k2, a2);
    float hj = 0.0f;
    if constexpr (kAms) hj = ADAMW8_DEQ(vh, q2, k3, a3);
    float pj = static_cast<float>(p[j]);
    adamw_element<kAms, kRcp>(sc, gj, pj, mj, vj, hj);
    m[j] = mj;
    v[j] = vj;
    if constexpr (kAms) vh[j] = hj;
    if constexpr (kBf16Out) {
      pf[j] = pj;
    } else if constexpr (kWrite) {
      p[j] = static_cast<T>(pj);
    }
    m1 = bits_max(m1, std::fabs(mj));
    m2 = bits_max(m2, vj);
    if constexpr (kAms) m3 = bits_max(m3, hj);
  }
#undef ADAMW8_DEQ
#if ADAMW8_BF16_STORE
  if constexpr (kBf16Out) lookup512::to_bf16(pf, reinterpret_cast<uint16_t*>(p), len);
#endif
  mx[0] = m1 > mx[0] ? m1 : mx[0];
  mx[1] = m2 > mx[1] ? m2 : mx[1];
  mx[2] = m3 > mx[2] ? m3 : mx[2];
}

// Whether a block's update may divide by c2_sqrt through div_rn (only where the FMA is an
// instruction): always exact for beta2 in [0, 1) and a finite sqrt(vh), which amsgrad's old max
// (its map times the block's absmax) may not be.
template <bool kAms>
inline bool rcp_ok(const Step8Args& a, float a3) {
  return a.sc.c2_rcp_exact && (!kAms || (a.t2.finite && is_finite(a3)));
}

template <typename T, bool kAms, bool kScale, bool kWrite>
inline void block8_any(const Step8Args& a, int64_t off, int64_t len, float a1, float a2, float a3, float* m, float* v,
                       float* vh, int32_t* mx) {
  if constexpr (ADAMW8_CPU_FMA) {
    if (rcp_ok<kAms>(a, a3)) return block8<T, kAms, kScale, true, kWrite>(a, off, len, a1, a2, a3, m, v, vh, mx);
  }
  block8<T, kAms, kScale, false, kWrite>(a, off, len, a1, a2, a3, m, v, vh, mx);
}

// The 8-bit update reads each block's codes first (dequantize), and the hardware prefetchers
// did not have them there in time: on a Zen 5 core the load of the codes took two thirds of the
// dequantize's time, and touching them kCodePrefetchBlocks blocks ahead made the whole step 17%
// faster (one thread, 2^24 fp32 elements, benchmarks/RESULTS.md).  The parameters and gradients
// stream well without help: prefetching them too made the step slower.
constexpr int64_t kCodePrefetchBlocks = 4;

// The four cache lines of one block's codes.  always_inline on both helpers: GCC counts a
// prefetch as free of side effects, so a helper left out of line is found to be `const` and
// every call to it is deleted (GCC 12 kept none of them).
static_assert(kBlockSize == 256, "prefetch_block touches 4 lines of 64 bytes");
__attribute__((always_inline)) inline void prefetch_block(const uint8_t* c) {
  __builtin_prefetch(c, 1, 3);
  __builtin_prefetch(c + 64, 1, 3);
  __builtin_prefetch(c + 128, 1, 3);
  __builtin_prefetch(c + 192, 1, 3);
}

__attribute__((always_inline)) inline void prefetch_codes(const Step8Args& a, int64_t blk) {
  const int64_t off = (blk + kCodePrefetchBlocks) * kBlockSize;
  if (off >= a.n) return;
  prefetch_block(a.c1 + off);
  prefetch_block(a.c2 + off);
  if (a.c3 != nullptr) prefetch_block(a.c3 + off);
}

// Blocks [cb, ce) of the 8-bit update, quantized and written.  block_wise: each block's own
// absmax (read from and written to a.a1/a2/a3); otherwise the tensor's, with the new one in
// `global` (from reduce8).
template <typename T, bool kAms, bool kScale>
void step8_blocks(const Step8Args& a, int64_t cb, int64_t ce, const float* global) {
  float m[kBlockSize], v[kBlockSize], vh[kBlockSize];
  for (int64_t blk = cb; blk < ce; ++blk) {
    const int64_t off = blk * kBlockSize;
    const int64_t len = std::min<int64_t>(kBlockSize, a.n - off);
    const int64_t ab = a.block_wise ? blk : 0;
    int32_t mx[3] = {0, 0, 0};
    prefetch_codes(a, blk);
    block8_any<T, kAms, kScale, true>(a, off, len, a.a1[ab], a.a2[ab], kAms ? a.a3[ab] : 0.0f, m, v, vh, mx);
    float n1, n2, n3;
    if (!a.block_wise) {
      n1 = global[0];
      n2 = global[1];
      n3 = global[2];
    } else {
      n1 = bits_float(static_cast<uint32_t>(mx[0]));
      n2 = bits_float(static_cast<uint32_t>(mx[1]));
      n3 = bits_float(static_cast<uint32_t>(mx[2]));
      a.a1[blk] = n1;
      a.a2[blk] = n2;
      if constexpr (kAms) a.a3[blk] = n3;
    }
    quantize_state(a.t1, m, len, n1, true, a.c1 + off);
    quantize_state<true>(a.t2, v, len, n2, false, a.c2 + off);  // v, vh >= +0
    if constexpr (kAms) quantize_state<true>(a.t2, vh, len, n3, false, a.c3 + off);
  }
}

template <typename T, bool kAms>
void step8_typed(const Step8Args& a, int64_t cb, int64_t ce, const float* global) {
  a.has_scale ? step8_blocks<T, kAms, true>(a, cb, ce, global) : step8_blocks<T, kAms, false>(a, cb, ce, global);
}

// block_wise=False's first pass over blocks [cb, ce): the new maxima, nothing written.
template <typename T, bool kAms, bool kScale>
void reduce8_blocks(const Step8Args& a, int64_t cb, int64_t ce, int32_t* mx) {
  float m[kBlockSize], v[kBlockSize], vh[kBlockSize];
  for (int64_t blk = cb; blk < ce; ++blk) {
    const int64_t off = blk * kBlockSize;
    prefetch_codes(a, blk);
    block8_any<T, kAms, kScale, false>(a, off, std::min<int64_t>(kBlockSize, a.n - off), a.a1[0], a.a2[0],
                                       kAms ? a.a3[0] : 0.0f, m, v, vh, mx);
  }
}

template <typename T, bool kAms>
void reduce8_typed(const Step8Args& a, int64_t cb, int64_t ce, int32_t* mx) {
  a.has_scale ? reduce8_blocks<T, kAms, true>(a, cb, ce, mx) : reduce8_blocks<T, kAms, false>(a, cb, ce, mx);
}

template <template <typename, bool> class F, typename... Args>
void dispatch(DType dtype, bool ams, Args&&... args) {
  switch (dtype) {
    case DType::kFloat:
      return ams ? F<float, true>::run(args...) : F<float, false>::run(args...);
    case DType::kDouble:
      return ams ? F<double, true>::run(args...) : F<double, false>::run(args...);
    case DType::kBFloat16:
      return ams ? F<c10::BFloat16, true>::run(args...) : F<c10::BFloat16, false>::run(args...);
    case DType::kHalf:
      return ams ? F<c10::Half, true>::run(args...) : F<c10::Half, false>::run(args...);
  }
}

template <typename T, bool kAms>
struct Step32 {
  static void run(const Step32Args& a, int64_t b, int64_t e) { step32_typed<T, kAms>(a, b, e); }
};
template <typename T, bool kAms>
struct Step8 {
  static void run(const Step8Args& a, int64_t cb, int64_t ce, const float* global) {
    step8_typed<T, kAms>(a, cb, ce, global);
  }
};
template <typename T, bool kAms>
struct Reduce8 {
  static void run(const Step8Args& a, int64_t cb, int64_t ce, int32_t* mx) { reduce8_typed<T, kAms>(a, cb, ce, mx); }
};

void step32(const Step32Args& a, int64_t b, int64_t e) { dispatch<Step32>(a.dtype, a.s3 != nullptr, a, b, e); }
void step8(const Step8Args& a, int64_t cb, int64_t ce, const float* global) {
  dispatch<Step8>(a.dtype, a.c3 != nullptr, a, cb, ce, global);
}
void reduce8(const Step8Args& a, int64_t cb, int64_t ce, int32_t* mx) {
  dispatch<Reduce8>(a.dtype, a.c3 != nullptr, a, cb, ce, mx);
}
void quantize(const QuantTable& t, const float* values, int64_t len, float absmax, bool is_signed, uint8_t* out) {
  // the bounded routes' precondition, |value| <= absmax for finite values, holds for the op's
  // absmax (max |value|); a NaN or inf makes it NaN or inf, which quantize_state sends to
  // quantize_block
  quantize_state(t, values, len, absmax, is_signed, out);
}

const Kernels kKernels{ADAMW8_CPU_NAME, &step32, &step8, &reduce8, &quantize};

}  // namespace ADAMW8_CPU_NS
}  // namespace cpu
}  // namespace adamw8
