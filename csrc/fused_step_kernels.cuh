// The CUDA kernels of adamw8::fused_step(_multi): multi-tensor AdamW with
// 32-bit or 8-bit state (docs/design.md, "CUDA kernels").
//
// This file is compiled twice: by nvcc (fused_step_cuda.cu) and as host code
// under csrc/emu/cuda_emu.h, which runs every CUDA thread as a std::thread so
// the tests can compare this very source with the CPU kernels bit for bit.  So:
// no torch headers, and only the CUDA features the shim provides (thread and
// block indices, __shared__, __syncthreads, __shfl_xor_sync, bf16/half
// conversions, 128-bit vector types).
//
// Work: the 256-element units of all tensors of a launch form one index space;
// each block of a persistent grid takes a contiguous range of it, and its warps
// take every 8th unit of that range.  Lane l of a warp owns elements
// 8l..8l+7 of the unit, so a full unit is read and written with 128-bit
// accesses (two float4 of fp32, one uint4 of bf16/fp16, one uint2 of codes per
// state), every load issued before the first use.  One unit is one absmax
// block of the 8-bit format: its new absmax is a warp max.  Tail units,
// misaligned and non-contiguous tensors take a guarded scalar path through the
// same arithmetic (adamw8_math.h).  Per-step values (lr, betas, step,
// grad_scale, found_inf) are read from device memory, so a CUDA graph replays
// with new values.
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#include <type_traits>

#include "adamw8_math.h"
#include "fused_step_cuda.h"
#include "nearest_lut.h"

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

// ------------------------------------------------------------------ staging
// The update kernel (pass 0) on sm_80 and later: while a warp updates a unit, the bytes of its
// next unit (parameters, gradients, states; the 8-bit absmax) are copied into the warp's slot of
// the block's dynamic shared memory by cp.async, so the loads are in flight during the update
// instead of between updates (in the 2026-11-27 profiles the warps waited on global loads in
// 58% (H100, 8-bit) and 43% (H200, 32-bit) of their cycles).  A lane reads its current unit from
// the slot after waiting for its copies (cp.async.wait_group 0), and issues the next unit's
// copies after reading.  Full units only (vec, not the tail): the first unit of a warp and the
// others load as before.  Two forms of copy:
//   - an array of 16 bytes per lane (bf16/fp16 parameters and gradients; 8 bytes of codes, the
//     absmax): each lane copies its own bytes, which a warp's instruction takes as one
//     contiguous run, and reads only them: no lane waits for another, no barrier, and the reads
//     of a slot come before the copies into it in the lane's program order, as in the CUDA
//     programming guide's single-stage loops;
//   - an array of 32 bytes per lane (fp32 parameters, 32-bit states; kCross): a lane's own 32
//     bytes would take two copies of half a sector each, and .cg copies bypass L1, so the second
//     half would come from L2 again.  Instead instruction k of the warp copies the unit's bytes
//     512k..512k+511, lane l the 16 at 512k + 16l, into the slot of their owner lane (16k + l/2,
//     piece l%2); a __syncwarp after the wait makes them visible to the owners, and one before
//     the next copies keeps them from overwriting a piece its owner has not read.
// Which kernels stage (Stage::kOn), as measured on an H100 (2026-11-27, benchmarks/RESULTS.md):
// with ADAMW8_STAGE=1, the default, the 8-bit kernels of bf16 and fp16 parameters, 15% faster
// (7.32-7.67 ms a step of the SPEC section 7 set to 6.39-6.41).  The kernels of 32 bytes per
// lane, staged with lanes' own copies, were 10-25% slower: L2 hit rates rose from 40-56% to
// 67-77%, L1's fell from 49-56% to 19-23%, and the 32-bit kernel's L2 was 81% busy with DRAM at
// 64%.  ADAMW8_STAGE=2 stages them too, by the cross-lane copies (not yet measured).  Never the
// 32-bit amsgrad kernels, whose five arrays and the slot's addresses spill at their 64 registers.
// The launch gives the slots (launch_fused_step: where the extra shared memory costs no block
// per SM; staged_bytes), and the kernel stages where its dynamic shared memory holds them, so a
// launch without it is the unstaged kernel.  ADAMW8_STAGE=0 builds without the staging code
// (sm_75 has no cp.async; tests/test_emulation.py builds that form too).
#ifndef ADAMW8_STAGE
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define ADAMW8_STAGE 1
#else
#define ADAMW8_STAGE 0
#endif
#endif

#if defined(__CUDACC__)
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char adamw8_dynamic_smem[];
  return adamw8_dynamic_smem;
}
__device__ __forceinline__ unsigned dynamic_smem_size() {
  unsigned r;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
  return r;
}
// cp.async (sm_80 on): 16 bytes bypass L1 (.cg), 4 and 8 bytes may only take .ca
template <unsigned kBytes>
__device__ __forceinline__ void async_copy(void* dst, const void* src) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  if constexpr (kBytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;" ::"r"(s), "l"(src), "n"(kBytes) : "memory");
  }
#else
  __trap();  // ADAMW8_STAGE is 0 below sm_80: never called
#endif
}
__device__ __forceinline__ void async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
__device__ __forceinline__ void async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group 0;" ::: "memory");
#endif
}
#endif

// Where a lane's landed copies become visible to the lanes that read them: a __syncwarp for the
// cross-lane copies, nothing for a lane's own (its wait was enough).  The emulation lands every
// lane's waited copies at this point (cuda_emu.h: async_warp_fence), so a read before it sees
// the slot's filler, whichever lane copied.
template <bool kCross>
__device__ __forceinline__ void stage_fence() {
#if defined(__CUDACC__)
  if constexpr (kCross) __syncwarp();
#else
  async_warp_fence();
#endif
}

// A warp's slot: one unit's bytes, lane l's 16-byte piece k at q(k)[l] (so a warp's access to
// one piece is 512 contiguous bytes, free of bank conflicts), its 8 codes of state s at d(s),
// the unit's absmax of state s (each lane its own copy) at w(s).
template <typename T, bool kEight, bool kAms>
struct Stage {
  static constexpr bool kCross = sizeof(T) == 4 || !kEight;  // an array of 32 bytes per lane
  static constexpr bool kOn = kCross ? ADAMW8_STAGE >= 2 && (kEight || !kAms) : ADAMW8_STAGE >= 1;
  static constexpr int kPG = static_cast<int>(sizeof(T)) * kPerLane / 16;  // pieces of p (of g)
  static constexpr int kStates = kAms ? 3 : 2;
  static constexpr int kQ = 2 * kPG + (kEight ? 0 : 2 * kStates);  // 32-bit states: 2 pieces each
  static constexpr int kD = kEight ? kStates : 0;
  static constexpr int kWarpBytes = 32 * (16 * kQ + 12 * kD);
  static constexpr int kBytes = kWarps * kWarpBytes;  // a block's

  unsigned char* base;  // the warp's slot
  int lane;

  __device__ __forceinline__ uint4* q(int k) const { return reinterpret_cast<uint4*>(base) + 32 * k + lane; }
  __device__ __forceinline__ uint2* d(int s) const {
    return reinterpret_cast<uint2*>(base + 512 * kQ) + 32 * s + lane;
  }
  __device__ __forceinline__ float* w(int s) const {
    return reinterpret_cast<float*>(base + 512 * kQ + 256 * kD) + 32 * s + lane;
  }

  // The unit's bytes of one array (from `unit_bytes`, its first) into pieces b..b+kPieces-1:
  // one piece per lane, the lane's own; two, the warp's contiguous runs into their owners' pieces.
  template <int kPieces>
  __device__ __forceinline__ void copy_array(int b, const void* unit_bytes) const {
    const unsigned char* src = static_cast<const unsigned char*>(unit_bytes);
    if constexpr (kPieces == 1) {
      async_copy<16>(q(b), src + 16 * lane);
    } else {
      static_assert(kPieces == 2, "8 elements of at most 4 bytes");
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        async_copy<16>(reinterpret_cast<uint4*>(base) + 32 * (b + (lane & 1)) + 16 * k + (lane >> 1),
                       src + 512 * k + 16 * lane);
      }
    }
  }

  // Copies unit `unit` of `ta` (full, vec) into the slot, as one group.
  __device__ __forceinline__ void issue(const TensorArgs& ta, int64_t unit) const {
    const int64_t first = unit * kUnit;  // the unit's first element
    copy_array<kPG>(0, static_cast<const T*>(ta.param) + first);
    copy_array<kPG>(kPG, static_cast<const T*>(ta.grad) + first);
    void* const states[3] = {ta.state1, ta.state2, ta.state3};
    float* const absmax[3] = {ta.absmax1, ta.absmax2, ta.absmax3};
#pragma unroll
    for (int s = 0; s < kStates; ++s) {
      if constexpr (kEight) {
        async_copy<8>(d(s), static_cast<const uint8_t*>(states[s]) + first + lane * kPerLane);
        async_copy<4>(w(s), absmax[s] + unit);
      } else {
        copy_array<2>(2 * kPG + 2 * s, static_cast<const float*>(states[s]) + first);
      }
    }
    async_commit();
  }

  // The unit's parameters and gradients, once its copies have landed.
  __device__ __forceinline__ void read_pg(float (&p)[kPerLane], float (&g)[kPerLane]) const {
    uint4 rp[kPG], rg[kPG];
#pragma unroll
    for (int k = 0; k < kPG; ++k) {
      rp[k] = *q(k);
      rg[k] = *q(kPG + k);
    }
    Elem<T>::unpack(rp, p);
    Elem<T>::unpack(rg, g);
  }
  // 32-bit state s
  __device__ __forceinline__ void read_state(int s, float (&x)[kPerLane]) const {
    const uint4 r[2] = {*q(2 * kPG + 2 * s), *q(2 * kPG + 2 * s + 1)};
    Elem<float>::unpack(r, x);
  }
};

// A unit of the current warp: where its bytes come from (`from_stage`: the warp's slot, where
// they were copied while it updated the unit before) and the next unit to stage (`next`:
// nullptr for none).
// A kernel that does not stage (Stage::kOn false) has none of this code: kOn is a constant.
template <typename T, bool kEight, bool kAms>
struct StageStep {
  static constexpr bool kOn = Stage<T, kEight, kAms>::kOn;
  const Stage<T, kEight, kAms>* stage;
  bool from_stage;
  const TensorArgs* next;
  int64_t next_unit;
  __device__ __forceinline__ bool staged() const { return kOn && from_stage; }
  // before reading the slot
  __device__ __forceinline__ void wait() const {
    async_wait_all();
    stage_fence<Stage<T, kEight, kAms>::kCross>();
  }
  // after reading it
  __device__ __forceinline__ void issue_next() const {
    if (kOn && next != nullptr) {
      stage_fence<Stage<T, kEight, kAms>::kCross>();
      stage->issue(*next, next_unit);
    }
  }
};

// ------------------------------------------------------------- 32-bit state
template <typename T, bool kAms>
__device__ __forceinline__ void unit_32bit(const LaunchArgs& a, const TensorArgs& ta, const TensorScalars& ts,
                                           float gscale, int64_t unit, const StageStep<T, false, kAms>& st) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t off = unit * kUnit + lane * kPerLane;
  const bool full = ta.vec && (unit + 1) * kUnit <= ta.numel;
  float* __restrict__ s1 = static_cast<float*>(ta.state1);
  float* __restrict__ s2 = static_cast<float*>(ta.state2);
  float* __restrict__ s3 = static_cast<float*>(ta.state3);
  float p[kPerLane], g[kPerLane], m[kPerLane], v[kPerLane], h[kPerLane];
  if (st.staged()) {  // a full unit
    st.wait();
    st.stage->read_pg(p, g);
    st.stage->read_state(0, m);
    st.stage->read_state(1, v);
    if constexpr (kAms) st.stage->read_state(2, h);
  } else {
    load_pg<T>(a, ta, off, full, p, g);
  }
  // the next unit's copies before this unstaged unit's state loads: the other order holds more
  // registers live, and the bf16 32-bit kernel of ADAMW8_STAGE=2 spilled (check_kernels.py)
  st.issue_next();
  if (st.staged()) {
  } else if (full) {
    Elem<float>::load8(s1 + off, m);
    Elem<float>::load8(s2 + off, v);
    if constexpr (kAms) Elem<float>::load8(s3 + off, h);
  } else {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const bool in = off + j < ta.numel;
      m[j] = in ? s1[off + j] : 0.0f;
      v[j] = in ? s2[off + j] : 0.0f;
      if constexpr (kAms) h[j] = in ? s3[off + j] : 0.0f;
    }
  }
  // one path, testing per element: one per GradPrep (as the 8-bit kernels have) took the fp32
  // kernel from 64 registers to 78, a block per SM fewer for this latency-bound kernel
  const bool scaled = a.grad_scale != nullptr;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    float vh = kAms ? h[j] : 0.0f;
    adamw_element<kAms>(ts.sc, prep_grad<kPrepAny>(scaled, gscale, ts.gnorm_scale, g[j]), p[j], m[j], v[j], vh);
    if constexpr (kAms) h[j] = vh;
  }
  store_p<T>(a, ta, off, full, p);
  if (full) {
    Elem<float>::store8(s1 + off, m);
    Elem<float>::store8(s2 + off, v);
    if constexpr (kAms) Elem<float>::store8(s3 + off, h);
  } else {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (off + j < ta.numel) {
        s1[off + j] = m[j];
        s2[off + j] = v[j];
        if constexpr (kAms) s3[off + j] = h[j];
      }
    }
  }
}

// -------------------------------------------------------------- 8-bit state
// Shared memory of the 8-bit kernels: both maps and their nearest-code tables
// (40,992 bytes, under the 48 KB of static shared memory a block may have).
struct Maps8 {
  float q1[256];
  float q2[256];
  float thr1[256];  // the thresholds (nearest_lut.h), 255 used: packed route only
  float thr2[256];
  union {
    // packed route: one packed_word per bucket (nearest_lut.h); map 1's set-sign half from
    // kLutNegBase, with the bounded route's sign clamp folded in (packed_entry_clamped); for
    // map 2 only the buckets of a clear sign bit, as the states it quantizes (v, amsgrad's max)
    // are never negative, not even -0 (b2*v + (1-b2)*g*g with a non-negative second term;
    // max(old, v) >= v)
    struct {
      uint32_t word1[kLutWords1];
      uint32_t word2[kLutHalf];
    } packed;
    struct {  // search route: the floor index of each bucket's smallest value
      uint8_t code1[kLutSize];
      uint8_t code2[kLutSize];
    } search;
  } t;
  int packed;  // 1: both maps take the packed route
  int clamp1;  // sign_clamp_code(q1): the bounded route's sign fix, or -1
};

// Every thread of the block helps.  Strictly increasing maps (the dynamic maps)
// get the packed route: one table read, an add and a shift per value.  Any other
// sorted map, or one whose thresholds the packed tables cannot hold, gets
// nearest_lut.h's table with its floor search run per lookup until it stops.
// Both are exact for every float (tests/test_emulation.py).
__device__ __forceinline__ void load_maps(const LaunchArgs& a, Maps8& s) {
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    s.q1[i] = a.qmap1[i];
    s.q2[i] = a.qmap2[i];
  }
  __syncthreads();
  int bad = 0;
  for (int k = threadIdx.x; k < 255; k += blockDim.x) bad |= !(s.q1[k] < s.q1[k + 1]) || !(s.q2[k] < s.q2[k + 1]);
  bool packed = !__syncthreads_or(bad);
  const int clamp1 = sign_clamp_code(s.q1);  // every thread: a binary descent
  if (packed) {
    for (int k = threadIdx.x; k < 255; k += blockDim.x) {
      s.thr1[k] = nearest_threshold(s.q1, k);
      s.thr2[k] = nearest_threshold(s.q2, k);
    }
    __syncthreads();
    bad = 0;
    for (int b = threadIdx.x; b < kLutSize; b += blockDim.x) {
      const PackedEntry e1 = packed_entry_clamped(s.q1, s.thr1, b, clamp1);
      s.t.packed.word1[packed_slot(b)] = packed_word(e1);
      bad |= !e1.ok;
      if (b < kLutHalf) {
        const PackedEntry e2 = packed_entry(s.q2, s.thr2, b);
        s.t.packed.word2[b] = packed_word(e2);
        bad |= !e2.ok;
      }
    }
    packed = !__syncthreads_or(bad);
  }
  if (!packed) {
    for (int b = threadIdx.x; b < kLutSize; b += blockDim.x) {
      s.t.search.code1[b] = lut_entry(s.q1, b);
      s.t.search.code2[b] = lut_entry(s.q2, b);
    }
  }
  if (threadIdx.x == 0) {
    s.packed = packed ? 1 : 0;
    s.clamp1 = clamp1;
  }
  __syncthreads();
}

// The code of value / absmax in map `which` (1 or 2) by the packed route or the search route,
// then finish_code: any value.  (The fused step's states mostly take the bounded route,
// quantize_lane_bounded.)  On the packed route map 2's x is never negative (Maps8): its bucket
// is in the clear-sign half; map 1's clamped set-sign half gives the codes finish_code would.
template <bool kPacked>
__device__ __forceinline__ uint32_t quantize_8bit(const Maps8& s, int which, float value, float absmax, bool is_signed) {
  const float* q = which == 1 ? s.q1 : s.q2;
  const float x = normalize(value, absmax);
  int nearest;
  if constexpr (kPacked) {
    nearest = packed_word_nearest(which == 1 ? s.t.packed.word1[packed_slot(lut_bucket(x))] : s.t.packed.word2[lut_bucket(x)], x);
  } else {
    nearest = lut_nearest_search(which == 1 ? s.t.search.code1 : s.t.search.code2, q, x);
  }
  return static_cast<uint32_t>(finish_code(q, nearest, value, is_signed));
}

// A lane's codes of m, v (and vh) with the unit's new absmax by the packed or the search route:
// in byte 0 of c1, c2, c3.
template <bool kPacked, bool kAms>
__device__ __forceinline__ void quantize_lane(const Maps8& s, const float (&m)[kPerLane], const float (&v)[kPerLane],
                                              const float (&h)[kPerLane], float na1, float na2, float na3,
                                              uint32_t (&c1)[kPerLane], uint32_t (&c2)[kPerLane],
                                              uint32_t (&c3)[kPerLane]) {
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    c1[j] = quantize_8bit<kPacked>(s, 1, m[j], na1, true);
    c2[j] = quantize_8bit<kPacked>(s, 2, v[j], na2, false);
    if constexpr (kAms) c3[j] = quantize_8bit<kPacked>(s, 2, h[j], na3, false);
  }
}

// The bounded route (nearest_lut.h, packed_sum_*): states that are finite, at most their absmax,
// with the absmax in [2^-64, 2^64] (div_rn_absmax) and map 1's sign fix a clamp (s.clamp1 >= 0),
// divided by div_rn (the division's bits down to quotients of 2^-36; a smaller quotient lands in
// bucket 0 either way, which holds no threshold on the packed route).  The codes in byte 2 of
// c1, c2, c3.
template <bool kAms>
__device__ __forceinline__ void quantize_lane_bounded(const Maps8& s, const float (&m)[kPerLane],
                                                      const float (&v)[kPerLane], const float (&h)[kPerLane],
                                                      float na1, float na2, float na3, uint32_t (&c1)[kPerLane],
                                                      uint32_t (&c2)[kPerLane], uint32_t (&c3)[kPerLane]) {
  const float r1 = rcp_rn(na1), r2 = rcp_rn(na2);  // once per unit and lane
  const float r3 = kAms ? rcp_rn(na3) : 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    c1[j] = packed_sum_signed(s.t.packed.word1, float_bits(m[j]), float_bits(div_rn(m[j], na1, r1)));
    c2[j] = packed_sum_unsigned(s.t.packed.word2, float_bits(v[j]), float_bits(div_rn(v[j], na2, r2)));
    if constexpr (kAms) c3[j] = packed_sum_unsigned(s.t.packed.word2, float_bits(h[j]), float_bits(div_rn(h[j], na3, r3)));
  }
}

// Requantizes a unit's new m, v (vh) with the new absmax and writes it back
// with the parameters; `kOwnAbsmax`: the unit's absmax is written too.
template <typename T, bool kAms, bool kOwnAbsmax>
__device__ __forceinline__ void write_unit_8bit(const LaunchArgs& a, const Maps8& s, const TensorArgs& ta,
                                                int64_t off, bool full, int64_t blk, const float (&p)[kPerLane],
                                                const float (&m)[kPerLane], const float (&v)[kPerLane],
                                                const float (&h)[kPerLane], float na1, float na2, float na3) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  uint8_t* __restrict__ c1p = static_cast<uint8_t*>(ta.state1);
  uint8_t* __restrict__ c2p = static_cast<uint8_t*>(ta.state2);
  uint8_t* __restrict__ c3p = static_cast<uint8_t*>(ta.state3);
  store_p<T>(a, ta, off, full, p);
  uint32_t c1[kPerLane], c2[kPerLane], c3[kPerLane];
  uint2 w1, w2, w3;
  // m, v and vh are finite (the non-finite rule; an infinite old vh makes na3 infinite) and
  // bounded by their absmax (the unit's or the tensor's maximum)
  if (s.packed && s.clamp1 >= 0 && div_rn_absmax(na1) && div_rn_absmax(na2) && (!kAms || div_rn_absmax(na3))) {
    quantize_lane_bounded<kAms>(s, m, v, h, na1, na2, na3, c1, c2, c3);  // the same for the whole warp
    w1 = pack8_codes<2>(c1);
    w2 = pack8_codes<2>(c2);
    w3 = kAms ? pack8_codes<2>(c3) : w2;
  } else {
    if (s.packed) {  // the same for the whole block
      quantize_lane<true, kAms>(s, m, v, h, na1, na2, na3, c1, c2, c3);
    } else {
      quantize_lane<false, kAms>(s, m, v, h, na1, na2, na3, c1, c2, c3);
    }
    w1 = pack8_codes<0>(c1);
    w2 = pack8_codes<0>(c2);
    w3 = kAms ? pack8_codes<0>(c3) : w2;
  }
  if (full) {
    st_u2(c1p + off, w1);
    st_u2(c2p + off, w2);
    if constexpr (kAms) st_u2(c3p + off, w3);
  } else {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (off + j < ta.numel) {
        c1p[off + j] = code_at(w1, j);
        c2p[off + j] = code_at(w2, j);
        if constexpr (kAms) c3p[off + j] = code_at(w3, j);
      }
    }
  }
  // every lane read the old absmax before the warp max; lane 0 writes after
  if (kOwnAbsmax && lane == 0) {
    ta.absmax1[blk] = na1;
    ta.absmax2[blk] = na2;
    if constexpr (kAms) ta.absmax3[blk] = na3;
  }
}

// A lane's dequantize, element update and running maxima (unit_8bit).
// kRcp (no amsgrad): the division by c2_sqrt through div_rn, and the square root by sqrt_fast,
// which clears root_ok where its result is not sqrtf's (the caller then runs the lane again
// without kRcp): no branch per element around a slow path, so the compiler interleaves the
// eight elements' arithmetic.
template <bool kAms, bool kRcp, int kPrep>
__device__ __forceinline__ void update_lane_8bit(bool scaled, const Maps8& s, const TensorScalars& ts,
                                                 float gscale, float oa1, float oa2, float oa3,
                                                 const uint32_t (&c1)[kPerLane], const uint32_t (&c2)[kPerLane],
                                                 const uint32_t (&c3)[kPerLane], float (&p)[kPerLane],
                                                 const float (&g)[kPerLane], float (&m)[kPerLane],
                                                 float (&v)[kPerLane], float (&h)[kPerLane], float& na1, float& na2,
                                                 float& na3, bool& root_ok) {
  static_assert(!(kAms && kRcp), "sqrt_fast takes a finite root; amsgrad's old max may be infinite");
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    float mj = dequantize_value(s.q1, static_cast<uint8_t>(c1[j]), oa1);
    float vj = dequantize_value(s.q2, static_cast<uint8_t>(c2[j]), oa2);
    float hj = kAms ? dequantize_value(s.q2, static_cast<uint8_t>(c3[j]), oa3) : 0.0f;
    adamw_element<kAms, kRcp, kRcp>(ts.sc, prep_grad<kPrep>(scaled, gscale, ts.gnorm_scale, g[j]), p[j], mj, vj, hj,
                                    root_ok);
    m[j] = mj;
    v[j] = vj;
    h[j] = hj;
    // fmaxf (one instruction; a compare and a select before): no operand is NaN (the
    // non-finite rule), and none is -0 (|m|; v and vh are sums with a non-negative second
    // term, or their max), so it is the larger value, as the CPU kernels take it
    na1 = fmaxf(fabsf(mj), na1);
    na2 = fmaxf(vj, na2);
    na3 = fmaxf(hj, na3);
  }
}

// kPass: 0 = update (one absmax per unit), 1 = block_wise=False pass 1 (each
// unit's new maxima into scratch, nothing else written), 2 = block_wise=False
// pass 2 (update with the tensor's new absmax from scratch).
template <typename T, bool kAms, int kPass>
__device__ __forceinline__ void unit_8bit(const LaunchArgs& a, const Maps8& s, const TensorArgs& ta,
                                          const TensorScalars& ts, float gscale, const float (&old_absmax)[3],
                                          const float (&new_absmax)[3], int64_t unit, int64_t gunit,
                                          const StageStep<T, true, kAms>& st) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t off = unit * kUnit + lane * kPerLane;
  const bool full = ta.vec && (unit + 1) * kUnit <= ta.numel;
  uint8_t* __restrict__ c1p = static_cast<uint8_t*>(ta.state1);
  uint8_t* __restrict__ c2p = static_cast<uint8_t*>(ta.state2);
  uint8_t* __restrict__ c3p = static_cast<uint8_t*>(ta.state3);
  const int64_t blk = kPass == 0 ? unit : 0;
  float oa1, oa2, oa3 = 0.0f;
  float p[kPerLane], g[kPerLane];
  uint32_t c1[kPerLane], c2[kPerLane], c3[kPerLane];
  if (st.staged()) {  // pass 0, a full unit
    st.wait();
    st.stage->read_pg(p, g);
    unpack_codes(*st.stage->d(0), c1);
    unpack_codes(*st.stage->d(1), c2);
    if constexpr (kAms) unpack_codes(*st.stage->d(2), c3);
    oa1 = *st.stage->w(0);
    oa2 = *st.stage->w(1);
    if constexpr (kAms) oa3 = *st.stage->w(2);
  } else {
    oa1 = kPass == 0 ? ta.absmax1[blk] : old_absmax[0];
    oa2 = kPass == 0 ? ta.absmax2[blk] : old_absmax[1];
    if constexpr (kAms) oa3 = kPass == 0 ? ta.absmax3[blk] : old_absmax[2];
    load_pg<T>(a, ta, off, full, p, g);
  }
  st.issue_next();  // before this unstaged unit's code loads, as in unit_32bit
  if (st.staged()) {
  } else if (full) {
    load8_codes(c1p + off, c1);
    load8_codes(c2p + off, c2);
    if constexpr (kAms) load8_codes(c3p + off, c3);
  } else {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const bool in = off + j < ta.numel;
      c1[j] = in ? c1p[off + j] : 127u;  // past the end: m = v = 0 (signed code 127 is 0)
      c2[j] = in ? c2p[off + j] : 0u;
      if constexpr (kAms) c3[j] = in ? c3p[off + j] : 0u;
    }
  }
  float m[kPerLane], v[kPerLane], h[kPerLane];
  float na1 = 0.0f, na2 = 0.0f, na3 = 0.0f;
  // the gradient's preparation (GradPrep), and adamw_element's division by c2_sqrt through
  // div_rn where it is exact (every beta2 in [0, 1); not with amsgrad, whose old max may be
  // infinite) with its root by sqrt_fast (kRcp): the same for the whole warp, one
  // instantiation of the lane update each
  const bool scaled = a.grad_scale != nullptr;
  bool root_ok = true;
  const auto update = [&](auto rcp, auto prep) {
    update_lane_8bit<kAms, decltype(rcp)::value, decltype(prep)::value>(scaled, s, ts, gscale, oa1, oa2, oa3, c1, c2,
                                                                         c3, p, g, m, v, h, na1, na2, na3, root_ok);
  };
  const auto by_prep = [&](auto rcp) {
    switch (grad_prep(a)) {
      case kPrepPlain: update(rcp, std::integral_constant<int, kPrepPlain>{}); break;
      case kPrepScaled: update(rcp, std::integral_constant<int, kPrepScaled>{}); break;
      default: update(rcp, std::integral_constant<int, kPrepAny>{}); break;
    }
  };
  if constexpr (!kAms) {
    if (ts.sc.c2_rcp_exact) by_prep(std::true_type{});
  }
  if (kAms || !ts.sc.c2_rcp_exact || !root_ok) {
    if (!root_ok) {  // a square root sqrt_fast does not take (v in (0, 2^-101)): the lane again
      load_pg<T>(a, ta, off, full, p, g);
      na1 = na2 = na3 = 0.0f;
    }
    by_prep(std::false_type{});
  }
  na1 = warp_max(na1);
  na2 = warp_max(na2);
  if constexpr (kAms) na3 = warp_max(na3);
  if constexpr (kPass == 1) {
    if (lane == 0) {
      const int64_t units = a.unit_start[a.ntensors];
      a.unit_max[gunit] = na1;
      a.unit_max[units + gunit] = na2;
      a.unit_max[2 * units + gunit] = na3;
    }
  } else {
    if constexpr (kPass == 2) {
      na1 = new_absmax[0];
      na2 = new_absmax[1];
      na3 = new_absmax[2];
    }
    write_unit_8bit<T, kAms, kPass == 0>(a, s, ta, off, full, blk, p, m, v, h, na1, na2, na3);
  }
}

// -------------------------------------------------------------- the finish
// The last work of a step, after every unit has been updated: step += 1 for every tensor,
// and the new per-tensor absmax of block_wise=False (written only now: every unit read
// the old one).
__device__ __forceinline__ void finish_work(const LaunchArgs& a) {
  for (int i = threadIdx.x; i < a.ntensors; i += blockDim.x) {
    *a.t[i].step += 1;
    if (a.tensor_max != nullptr) {
      a.t[i].absmax1[0] = a.tensor_max[3 * i];
      a.t[i].absmax2[0] = a.tensor_max[3 * i + 1];
      if (a.t[i].absmax3 != nullptr) a.t[i].absmax3[0] = a.tensor_max[3 * i + 2];
    }
  }
}

// The update kernel's last block does the finish work (the flat form's counter): each
// block, once all its warps are done (every read of a step count and of the old absmax
// is behind it), takes a ticket; the last ticket sees every other block done.  The
// pattern of CUDA's threadFenceReduction sample.
__device__ __forceinline__ void finish_if_last(const LaunchArgs& a) {
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(a.counter, 1ull) == static_cast<unsigned long long>(gridDim.x) - 1ull;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  finish_work(a);
  if (threadIdx.x == 0) *a.counter = 0ull;  // ready for the next launch on this buffer
}

// ------------------------------------------------------------------ kernels
struct NoShared {
  char unused;
};
template <bool kEight>
struct SharedFor {
  using type = NoShared;
};
template <>
struct SharedFor<true> {
  using type = Maps8;
};
template <bool kEight>
using SharedOf = typename SharedFor<kEight>::type;

// The update kernels' blocks per SM (__launch_bounds__).  sm_75 (Turing) has 64 KB of shared
// memory and 1024 threads per SM: one 8-bit block (45 KB of tables) fits, so its registers are
// not capped for more, and the 32-bit kernel is compiled for 3 blocks (80 registers), where 4
// (64 registers) spill without the uniform warp index (warp_max_u32).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
constexpr int kBoundBlocks8 = 1, kBoundBlocks32 = 3;
#else
constexpr int kBoundBlocks8 = kMinBlocks8, kBoundBlocks32 = kMinBlocks32;
#endif

template <typename T, bool kEight, bool kAms, int kPass>
__global__ void __launch_bounds__(kThreads, kEight ? kBoundBlocks8 : kBoundBlocks32)
    fused_step_kernel(const __grid_constant__ LaunchArgs a) {
  if (skipped(a)) return;
  __shared__ SharedOf<kEight> smem;  // the maps and tables (8-bit only)
  if constexpr (kEight) load_maps(a, smem);
  const float gscale = a.grad_scale != nullptr ? *a.grad_scale : 1.0f;
  TensorScalars ts{};
  float old_absmax[3] = {0.0f, 0.0f, 0.0f}, new_absmax[3] = {0.0f, 0.0f, 0.0f};
  // staging (pass 0, where the launch gave the slots): the unit's bytes are in the slot when
  // the warp staged them while updating its unit before
  using St = Stage<T, kEight, kAms>;
  const bool stage = St::kOn && kPass == 0 && dynamic_smem_size() >= static_cast<unsigned>(St::kBytes);
  const St slot{stage ? dynamic_smem() + (threadIdx.x >> 5) * St::kWarpBytes : nullptr,
                static_cast<int>(threadIdx.x & 31)};
  bool staged = false;
  for_each_unit<St::kOn>(a, [&](int ti, int64_t unit, bool fresh, int tn, int64_t next_unit) {
    const TensorArgs& ta = a.t[ti];
    StageStep<T, kEight, kAms> st{&slot, staged, nullptr, next_unit};
    if constexpr (St::kOn) {
      if (stage && tn >= 0 && a.t[tn].vec && (next_unit + 1) * kUnit <= a.t[tn].numel) st.next = &a.t[tn];
      staged = st.next != nullptr;
    }
    if (fresh) {  // per-tensor values, once per tensor and warp
      ts = tensor_scalars(a, ti);
      if constexpr (kEight && kPass != 0) {
        old_absmax[0] = ta.absmax1[0];
        old_absmax[1] = ta.absmax2[0];
        old_absmax[2] = kAms ? ta.absmax3[0] : 0.0f;
      }
      if constexpr (kEight && kPass == 2) {
        new_absmax[0] = a.tensor_max[3 * ti];
        new_absmax[1] = a.tensor_max[3 * ti + 1];
        new_absmax[2] = a.tensor_max[3 * ti + 2];
      }
    }
    if constexpr (kEight) {
      unit_8bit<T, kAms, kPass>(a, smem, ta, ts, gscale, old_absmax, new_absmax, unit,
                                a.unit_start[ti] + unit, st);
    } else {
      unit_32bit<T, kAms>(a, ta, ts, gscale, unit, st);
    }
  });
  if (kPass != 1 && a.counter != nullptr) finish_if_last(a);
}

// Percentile clipping, pass 1: each unit's sum of squares of the unscaled
// gradient, in double (as the CPU kernel sums).
template <typename T>
__global__ void __launch_bounds__(kThreads) gnorm_kernel(const __grid_constant__ LaunchArgs a) {
  if (skipped(a)) return;
  const float gscale = a.grad_scale != nullptr ? *a.grad_scale : 1.0f;
  for_each_unit(a, [&](int ti, int64_t unit, bool, int, int64_t) {
    const TensorArgs& ta = a.t[ti];
    const int lane = static_cast<int>(threadIdx.x & 31);
    const int64_t off = unit * kUnit + lane * kPerLane;
    float p[kPerLane], g[kPerLane];
    load_pg<T>(a, ta, off, ta.vec && (unit + 1) * kUnit <= ta.numel, p, g);
    double acc = 0.0;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      acc += norm_term(a.grad_scale != nullptr ? g[j] / gscale : g[j]);
    }
    acc = warp_sum(acc);
    if (lane == 0) a.unit_sumsq[a.unit_start[ti] + unit] = acc;
  });
}

// Per-tensor reductions over the units' scratch, one block per tensor:
// kClip: the squared norm, the history and gnorm_scale; !kClip: the new absmax
// of block_wise=False (max of the units' maxima).
template <bool kClip>
__global__ void __launch_bounds__(kThreads) tensor_reduce_kernel(const __grid_constant__ LaunchArgs a) {
  if (skipped(a)) return;
  __shared__ double part[kWarps][3];
  const int ti = blockIdx.x;
  const int64_t u0 = a.unit_start[ti], u1 = a.unit_start[ti + 1];
  const int64_t units = a.unit_start[a.ntensors];
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  double acc[3] = {0.0, 0.0, 0.0};
  for (int64_t u = u0 + threadIdx.x; u < u1; u += kThreads) {
    if constexpr (kClip) {
      acc[0] += a.unit_sumsq[u];
    } else {
#pragma unroll
      for (int k = 0; k < 3; ++k) {
        const double x = a.unit_max[k * units + u];
        acc[k] = x > acc[k] ? x : acc[k];
      }
    }
  }
#pragma unroll
  for (int k = 0; k < 3; ++k) acc[k] = kClip ? warp_sum(acc[k]) : warp_max(acc[k]);
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < 3; ++k) part[warp][k] = acc[k];
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  double r[3] = {0.0, 0.0, 0.0};
  for (int w = 0; w < kWarps; ++w) {
#pragma unroll
    for (int k = 0; k < 3; ++k) r[k] = kClip ? r[k] + part[w][k] : (part[w][k] > r[k] ? part[w][k] : r[k]);
  }
  if constexpr (kClip) {
    const int64_t t = *a.t[ti].step + 1;
    a.tensor_scale[ti] = percentile_scale(a.t[ti].gnorm_vec, history_value(r[0]), t, a.percentile);
  } else {
#pragma unroll
    for (int k = 0; k < 3; ++k) a.tensor_max[3 * ti + k] = static_cast<float>(r[k]);
  }
}

// The finish as a kernel of its own: the one-tensor-per-parameter form, which has no
// completion counter, and calls whose tensors are all empty.
__global__ void finish_kernel(const __grid_constant__ LaunchArgs a) {
  if (skipped(a)) return;
  finish_work(a);
}


// The fast paths of the IEEE operations the 8-bit kernels take (adamw8_math.h: sqrt_fast,
// rcp_rn) against the operations, over all 2^32 floats: counts[0] += the v (finite, >= +0)
// where sqrt_fast's flag differs from its stated range or, within it, its bits from
// __fsqrt_rn's; counts[1] += the b with a biased exponent in [1, 252] where rcp_rn's bits differ
// from __frcp_rn's (launch_fast_path_check; tests/test_cuda.py).
__global__ void __launch_bounds__(kThreads) fast_path_check_kernel(unsigned long long* counts) {
  unsigned long long bad_root = 0, bad_rcp = 0;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (uint64_t{1} << 32); i += stride) {
    const uint32_t b = static_cast<uint32_t>(i);
    const float x = bits_float(b);
    if (b <= 0x7f7fffffu) {  // sqrt_fast's inputs: finite, >= +0
      bool ok = true;
      const float r = sqrt_fast(x, ok);
      const bool in_range = b == 0u || b >= 0x0d000000u;
      bad_root += ok != in_range || (ok && float_bits(r) != float_bits(__fsqrt_rn(x)));
    }
    const uint32_t e = (b >> 23) & 0xffu;
    bad_rcp += e >= 1u && e <= 252u && float_bits(rcp_rn(x)) != float_bits(__frcp_rn(x));
  }
  if (bad_root != 0) atomicAdd(counts, bad_root);
  if (bad_rcp != 0) atomicAdd(counts + 1, bad_rcp);
}

// ------------------------------------------------------------ the sequence
using KernelFn = void (*)(const LaunchArgs);

template <typename T>
KernelFn main_kernel(bool eight, bool ams, int pass) {
  if (!eight) return ams ? fused_step_kernel<T, false, true, 0> : fused_step_kernel<T, false, false, 0>;
  switch (pass) {
    case 1: return ams ? fused_step_kernel<T, true, true, 1> : fused_step_kernel<T, true, false, 1>;
    case 2: return ams ? fused_step_kernel<T, true, true, 2> : fused_step_kernel<T, true, false, 2>;
    default: return ams ? fused_step_kernel<T, true, true, 0> : fused_step_kernel<T, true, false, 0>;
  }
}

// Calls f(TypeTag<T>{}) with the parameters' element type T of `type`.
template <typename T>
struct TypeTag {
  using type = T;
};
template <typename F>
void with_param_type(ParamType type, F&& f) {
  switch (type) {
    case ParamType::kFloat: f(TypeTag<float>{}); break;
    case ParamType::kBFloat16: f(TypeTag<__nv_bfloat16>{}); break;
    case ParamType::kHalf: f(TypeTag<__half>{}); break;
  }
}

// Bytes of dynamic shared memory for the staging of the update kernel (pass 0; per block).
template <typename T, bool kEight, bool kAms>
int staged_bytes() {
  using St = Stage<T, kEight, kAms>;
  return St::kOn ? St::kBytes : 0;
}
template <typename T>
int staged_bytes(bool eight, bool ams) {
  if (eight) return ams ? staged_bytes<T, true, true>() : staged_bytes<T, true, false>();
  return ams ? staged_bytes<T, false, true>() : staged_bytes<T, false, false>();
}

template <typename T, typename Launch>
void run_typed(const LaunchArgs& a, bool eight, bool ams, Launch& launch) {
  const bool clip = a.percentile < 100;
  const bool tensorwise = eight && !a.block_wise;
  const int64_t units = a.unit_start[a.ntensors];
  if (clip) {
    if (units > 0) launch(gnorm_kernel<T>, units, 0);
    launch(tensor_reduce_kernel<true>, 0, a.ntensors);
  }
  if (tensorwise) {
    if (units > 0) launch(main_kernel<T>(eight, ams, 1), units, 0);
    launch(tensor_reduce_kernel<false>, 0, a.ntensors);
    if (units > 0) launch(main_kernel<T>(eight, ams, 2), units, 0);
  } else if (units > 0) {
    launch(main_kernel<T>(eight, ams, 0), units, 0, staged_bytes<T>(eight, ams));
  }
  if (a.counter == nullptr || units == 0) launch(finish_kernel, 0, 1);  // else the update kernel finishes
}

// Every kernel of one step, in order, through `launch(kernel, units, blocks[, stage_bytes])`:
// a unit kernel (units > 0) gets a persistent grid for `units` work units, a
// per-tensor or single kernel (units == 0) exactly `blocks` blocks.  `stage_bytes` (the
// update kernel of pass 0): the dynamic shared memory its staging takes, which the launch
// gives or not (0 where it would cost resident blocks).
template <typename Launch>
void run_step(const LaunchArgs& a, ParamType type, bool eight, bool ams, Launch&& launch) {
  with_param_type(type, [&](auto tag) { run_typed<typename decltype(tag)::type>(a, eight, ams, launch); });
}

}  // namespace cuda
}  // namespace adamw8
