// What every CUDA kernel of adamw8::fused_step(_multi) uses: the element access (vector
// loads and stores of parameters, gradients, states and codes), the warp reductions, the walk of
// a warp over its units, and the per-tensor values.  Part of fused_step_kernels.cuh (which says
// how these files are compiled: by nvcc and, as host code, by the emulation).
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#include <type_traits>

#include "adamw8_math.h"
#include "fused_step_cuda.h"

namespace adamw8 {
namespace cuda {

// ------------------------------------------------------------ element access
// 128- and 64-bit global accesses.  The streaming intrinsics (each byte is
// touched once per step) are inline PTX, so the accesses stay vector
// instructions: plain float4 stores were split into scalars by the compiler.
__device__ __forceinline__ float4 ld_f4(const float* p) { return __ldcs(reinterpret_cast<const float4*>(p)); }
__device__ __forceinline__ void st_f4(float* p, float4 v) { __stcs(reinterpret_cast<float4*>(p), v); }
__device__ __forceinline__ uint4 ld_u4(const void* p) { return __ldcs(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ void st_u4(void* p, uint4 v) { __stcs(reinterpret_cast<uint4*>(p), v); }
__device__ __forceinline__ uint2 ld_u2(const void* p) { return __ldcs(reinterpret_cast<const uint2*>(p)); }
__device__ __forceinline__ void st_u2(void* p, uint2 v) { __stcs(reinterpret_cast<uint2*>(p), v); }

template <typename T>
struct Elem;
template <>
struct Elem<float> {
  static constexpr int kChunks = 2;  // 16-byte pieces of a lane's 8 elements
  __device__ __forceinline__ static float load(const float* p, int64_t i) { return p[i]; }
  __device__ __forceinline__ static void store(float* p, int64_t i, float x) { p[i] = x; }
  __device__ __forceinline__ static void load8(const float* __restrict__ p, float (&x)[kPerLane]) {
    const float4 a = ld_f4(p);
    const float4 b = ld_f4(p + 4);
    x[0] = a.x; x[1] = a.y; x[2] = a.z; x[3] = a.w;
    x[4] = b.x; x[5] = b.y; x[6] = b.z; x[7] = b.w;
  }
  // the 8 elements from their two 16-byte pieces (a staged unit, below)
  __device__ __forceinline__ static void unpack(const uint4 (&r)[kChunks], float (&x)[kPerLane]) {
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      x[4 * k] = bits_float(r[k].x); x[4 * k + 1] = bits_float(r[k].y);
      x[4 * k + 2] = bits_float(r[k].z); x[4 * k + 3] = bits_float(r[k].w);
    }
  }
  __device__ __forceinline__ static void store8(float* __restrict__ p, const float (&x)[kPerLane]) {
    st_f4(p, make_float4(x[0], x[1], x[2], x[3]));
    st_f4(p + 4, make_float4(x[4], x[5], x[6], x[7]));
  }
};

// bf16 and fp16: 8 elements are one 128-bit access; conversions round to nearest even.
struct Bf16Bits {
  __device__ __forceinline__ static float to_float(uint32_t b) { return bits_float(b << 16); }
  __device__ __forceinline__ static uint32_t from_float(float x) {
    return static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(x)));
  }
};
struct HalfBits {
  __device__ __forceinline__ static float to_float(uint32_t b) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(b)));
  }
  __device__ __forceinline__ static uint32_t from_float(float x) {
    return static_cast<uint32_t>(__half_as_ushort(__float2half_rn(x)));
  }
};

template <typename T, typename Bits>
struct Elem16 {
  static constexpr int kChunks = 1;
  __device__ __forceinline__ static float load(const T* p, int64_t i) {
    return Bits::to_float(reinterpret_cast<const unsigned short*>(p)[i]);
  }
  __device__ __forceinline__ static void store(T* p, int64_t i, float x) {
    reinterpret_cast<unsigned short*>(p)[i] = static_cast<unsigned short>(Bits::from_float(x));
  }
  __device__ __forceinline__ static void load8(const T* __restrict__ p, float (&x)[kPerLane]) {
    const uint4 r[1] = {ld_u4(p)};
    unpack(r, x);
  }
  __device__ __forceinline__ static void unpack(const uint4 (&r)[kChunks], float (&x)[kPerLane]) {
    const uint32_t w[4] = {r[0].x, r[0].y, r[0].z, r[0].w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      x[2 * k] = Bits::to_float(w[k] & 0xffffu);
      x[2 * k + 1] = Bits::to_float(w[k] >> 16);
    }
  }
  __device__ __forceinline__ static void store8(T* __restrict__ p, const float (&x)[kPerLane]) {
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) w[k] = Bits::from_float(x[2 * k]) | (Bits::from_float(x[2 * k + 1]) << 16);
    st_u4(p, make_uint4(w[0], w[1], w[2], w[3]));
  }
};
template <>
struct Elem<__nv_bfloat16> : Elem16<__nv_bfloat16, Bf16Bits> {};
template <>
struct Elem<__half> : Elem16<__half, HalfBits> {};

__device__ __forceinline__ void unpack_codes(uint2 r, uint32_t (&c)[kPerLane]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    c[k] = (r.x >> (8 * k)) & 0xffu;
    c[4 + k] = (r.y >> (8 * k)) & 0xffu;
  }
}
__device__ __forceinline__ void load8_codes(const uint8_t* __restrict__ p, uint32_t (&c)[kPerLane]) {
  unpack_codes(ld_u2(p), c);
}
// A lane's 8 codes as two words (byte k of word w: element 4w + k), each code taken from byte
// kByte of its value (the bounded route's sums keep it in byte 2, the other routes in byte 0):
// three byte permutes per word.
template <int kByte>
__device__ __forceinline__ uint2 pack8_codes(const uint32_t (&c)[kPerLane]) {
  constexpr unsigned kPair = kByte | ((kByte + 4) << 4);  // bytes 0, 1: byte kByte of a, of b
  uint32_t w[2];
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    w[k] = __byte_perm(__byte_perm(c[4 * k], c[4 * k + 1], kPair), __byte_perm(c[4 * k + 2], c[4 * k + 3], kPair),
                       0x5410);
  }
  uint2 r;
  r.x = w[0];
  r.y = w[1];
  return r;
}

// Code j of a lane's packed codes (pack8_codes), for the tail's byte stores.
__device__ __forceinline__ uint8_t code_at(uint2 w, int j) {
  return static_cast<uint8_t>((j < 4 ? w.x : w.y) >> (8 * (j & 3)));
}

// Row-major index -> offsets of a non-contiguous param (po) and grad (go).
__device__ __forceinline__ void strided_offsets(const StridedDesc& d, int64_t i, int64_t& po, int64_t& go) {
  po = 0;
  go = 0;
  uint32_t n = static_cast<uint32_t>(i);  // < 2^31 (fused_step_plan.h)
  for (int k = d.ndim - 1; k >= 0; --k) {
    const uint32_t q = (__umulhi(n, d.magic[k]) + n) >> d.shift[k];
    const uint32_t idx = n - q * d.sizes[k];
    n = q;
    po += static_cast<int64_t>(idx) * d.pstride[k];
    go += static_cast<int64_t>(idx) * d.gstride[k];
  }
}

// ------------------------------------------------------------------ reductions
// The warp's largest of 32 unsigned values: one warp reduction (REDUX) on sm_80 and later; on
// sm_75 (Turing, the oldest architecture CUDA 13 and torch's CUDA 13 wheels build for), which
// has no __reduce_max_sync, five shuffles and five compare-and-selects.  The emulation (host
// code) runs the reduction; tests/test_emulation.py also builds it with ADAMW8_WARP_REDUX=0, and
// scripts/check_kernels.py compiles the kernels for sm_75 and the wheels' other architectures.
#ifndef ADAMW8_WARP_REDUX
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define ADAMW8_WARP_REDUX 1
#else
#define ADAMW8_WARP_REDUX 0
#endif
#endif

__device__ __forceinline__ uint32_t warp_max_u32(uint32_t x) {
#if ADAMW8_WARP_REDUX
  return __reduce_max_sync(0xffffffffu, x);
#else
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const uint32_t y = __shfl_xor_sync(0xffffffffu, x, o);
    x = y > x ? y : x;
  }
  return x;
#endif
}

// The warp's largest value of lanes' maxima that are never NaN and never -0 (the unit loop's
// maxima of |m|, v and vh, from +0; the scratch maxima made of them): such floats order as
// their bits do, so it is the warp's largest of the bits (with REDUX one instruction, where five
// shuffles and five compare-and-selects took ten).
__device__ __forceinline__ float warp_max(float x) { return bits_float(warp_max_u32(float_bits(x))); }

__device__ __forceinline__ double warp_max(double x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const double y = __shfl_xor_sync(0xffffffffu, x, o);
    x = y > x ? y : x;
  }
  return x;
}

__device__ __forceinline__ double warp_sum(double x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// The AMP skip: every kernel of a step returns at once (uniformly) when found_inf is set.
__device__ __forceinline__ bool skipped(const LaunchArgs& a) { return a.found_inf != nullptr && *a.found_inf != 0.0f; }

// ---------------------------------------------------------------- unit walker
// Calls body(ti, unit_in_tensor, new_tensor, next_ti, next_unit_in_tensor) for the units of
// this warp: block b owns units [b*U/G, (b+1)*U/G), its warps every kWarps-th of them.  The
// tensor of the first unit is a binary search; later units move forward.  kNext: the warp's
// next unit too (next_ti -1 after its last), for the staging of the update kernel.
template <bool kNext = false, typename Body>
__device__ __forceinline__ void for_each_unit(const LaunchArgs& a, Body&& body) {
  const int64_t total = a.unit_start[a.ntensors];
  const int64_t ub = total * blockIdx.x / gridDim.x;
  const int64_t ue = total * (blockIdx.x + 1) / gridDim.x;
  // the warp's index as a warp reduction: with REDUX its result is warp-uniform to the
  // compiler, so the unit and tensor indices, the per-tensor scalars and the tensor's fields
  // derived from it live in uniform registers, not in each thread's
  const int warp = static_cast<int>(warp_max_u32(threadIdx.x >> 5));
  int ti = -1;
  for (int64_t u = ub + warp; u < ue; u += kWarps) {
    bool fresh = false;
    if (ti < 0) {
      int lo = 0, hi = a.ntensors - 1;  // the last ti with unit_start[ti] <= u
      while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (a.unit_start[mid] <= u) lo = mid; else hi = mid - 1;
      }
      ti = lo;
      fresh = true;
    }
    while (u >= a.unit_start[ti + 1]) {
      ++ti;
      fresh = true;
    }
    int tn = -1;
    int64_t un = 0;
    if constexpr (kNext) {
      if (u + kWarps < ue) {
        tn = ti;
        while (u + kWarps >= a.unit_start[tn + 1]) ++tn;
        un = u + kWarps - a.unit_start[tn];
      }
    }
    body(ti, u - a.unit_start[ti], fresh, tn, un);
  }
}

// ------------------------------------------------------------ per-tensor data
struct TensorScalars {
  AdamScalars sc;
  float gnorm_scale;
};

__device__ __forceinline__ TensorScalars tensor_scalars(const LaunchArgs& a, int ti) {
  TensorScalars s;
  const float* h = a.hyper;
  s.sc = make_scalars(h[0], h[1], h[2], h[3], h[4], *a.t[ti].step + 1);
  s.gnorm_scale = a.tensor_scale != nullptr ? a.tensor_scale[ti] : 1.0f;
  return s;
}

// The gradient as the update takes it: g / grad_scale where AMP scaled it (a.grad_scale set),
// times gnorm_scale where percentile clipping is on (a.tensor_scale set; gnorm_scale is 1
// otherwise, and g * 1 is g, NaN included, so leaving the product out keeps the bits).  A
// template argument of the 8-bit lane update, so its unrolled element loop tests neither per
// element (a test and a branch around each division before).
enum GradPrep : int { kPrepPlain = 0, kPrepScaled = 1, kPrepAny = 2 };
template <int kPrep>
__device__ __forceinline__ float prep_grad(bool scaled, float gscale, float gnorm_scale, float g) {
  if constexpr (kPrep == kPrepScaled) return g / gscale;
  if constexpr (kPrep == kPrepAny) return (scaled ? g / gscale : g) * gnorm_scale;
  return g;
}
__device__ __forceinline__ int grad_prep(const LaunchArgs& a) {
  return a.tensor_scale != nullptr ? kPrepAny : a.grad_scale != nullptr ? kPrepScaled : kPrepPlain;
}

// Loads a unit's param and grad (zeros past the end), vectorised when `full`.
template <typename T>
__device__ __forceinline__ void load_pg(const LaunchArgs& a, const TensorArgs& ta, int64_t off, bool full,
                                        float (&p)[kPerLane], float (&g)[kPerLane]) {
  const T* __restrict__ pp = static_cast<const T*>(ta.param);
  const T* __restrict__ gp = static_cast<const T*>(ta.grad);
  if (full) {
    Elem<T>::load8(gp + off, g);
    Elem<T>::load8(pp + off, p);
    return;
  }
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t i = off + j;
    p[j] = g[j] = 0.0f;
    if (i < ta.numel) {
      int64_t po = i, go = i;
      if (ta.strided >= 0) strided_offsets(a.strided[ta.strided], i, po, go);
      g[j] = Elem<T>::load(gp, go);
      p[j] = Elem<T>::load(pp, po);
    }
  }
}

template <typename T>
__device__ __forceinline__ void store_p(const LaunchArgs& a, const TensorArgs& ta, int64_t off, bool full,
                                        const float (&p)[kPerLane]) {
  T* __restrict__ pp = static_cast<T*>(ta.param);
  if (full) {
    Elem<T>::store8(pp + off, p);
    return;
  }
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t i = off + j;
    if (i < ta.numel) {
      int64_t po = i, go = i;
      if (ta.strided >= 0) strided_offsets(a.strided[ta.strided], i, po, go);
      Elem<T>::store(pp, po, p[j]);
    }
  }
}

}  // namespace cuda
}  // namespace adamw8
