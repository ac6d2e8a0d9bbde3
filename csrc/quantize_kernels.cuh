// CUDA kernels of adamw8::quantize and adamw8::dequantize: the 8-bit state
// format as standalone ops (tests, state-dict conversion).  Same rounding as the
// optimizer kernels: adamw8_math.h's rules through nearest_lut.h's table.
//
// Like fused_step_kernels.cuh, compiled by nvcc (quantize_cuda.cu) and as host
// code under csrc/emu/cuda_emu.h for the bit-for-bit tests.  One warp per
// 256-element unit, 8 contiguous elements per lane; a NaN makes its block's
// absmax NaN (max_nan), as on the CPU.
#pragma once

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

#include <cstdint>

#include "adamw8_math.h"
#include "fused_step_cuda.h"
#include "nearest_lut.h"
#include "quantize_cuda.h"

namespace adamw8 {
namespace cuda {

__device__ __forceinline__ float warp_max_nan(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = max_nan(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

struct Map1 {
  float q[256];
  uint8_t lut[kLutSize];
};

// Quantizes one unit's values with `amax`, writes the codes (and the unit's
// absmax when kOwnAbsmax).
template <bool kOwnAbsmax>
__device__ __forceinline__ void quantize_unit(const QuantArgs& a, const Map1& map, int64_t u, int64_t off, bool full,
                                              const float (&x)[kPerLane], float amax) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  uint32_t c[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int nearest = lut_nearest_search(map.lut, map.q, normalize(x[j], amax));
    c[j] = static_cast<uint32_t>(finish_code(map.q, nearest, x[j], a.is_signed != 0));
  }
  if (full) {
    uint2 r;
    r.x = c[0] | (c[1] << 8) | (c[2] << 16) | (c[3] << 24);
    r.y = c[4] | (c[5] << 8) | (c[6] << 16) | (c[7] << 24);
    __stcs(reinterpret_cast<uint2*>(a.codes + off), r);
  } else {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (off + j < a.n) a.codes[off + j] = static_cast<uint8_t>(c[j]);
    }
  }
  if (kOwnAbsmax && lane == 0) a.absmax[u] = amax;
}

// kPass: 0 = blockwise (each unit its absmax), 1 = tensorwise pass 1 (unit maxima
// into scratch), 2 = tensorwise pass 2 (quantize with absmax[0]).
template <int kPass>
__global__ void __launch_bounds__(kThreads) quantize_kernel(const __grid_constant__ QuantArgs a) {
  __shared__ Map1 map;
  if (kPass != 1) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) map.q[i] = a.qmap[i];
    __syncthreads();
    for (int b = threadIdx.x; b < kLutSize; b += blockDim.x) map.lut[b] = lut_entry(map.q, b);
    __syncthreads();
  }
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t units = (a.n + kUnit - 1) / kUnit;
  const int64_t ub = units * blockIdx.x / gridDim.x, ue = units * (blockIdx.x + 1) / gridDim.x;
  for (int64_t u = ub + (threadIdx.x >> 5); u < ue; u += kWarps) {
    const int64_t off = u * kUnit + lane * kPerLane;
    const bool full = a.vec && (u + 1) * kUnit <= a.n;
    float x[kPerLane];
    if (full) {
      const float4 lo = __ldcs(reinterpret_cast<const float4*>(a.x + off));
      const float4 hi = __ldcs(reinterpret_cast<const float4*>(a.x + off + 4));
      x[0] = lo.x; x[1] = lo.y; x[2] = lo.z; x[3] = lo.w;
      x[4] = hi.x; x[5] = hi.y; x[6] = hi.z; x[7] = hi.w;
    } else {
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) x[j] = off + j < a.n ? a.x[off + j] : 0.0f;
    }
    float amax = 0.0f;
    if (kPass != 2) {
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) amax = max_nan(amax, fabsf(x[j]));
      amax = warp_max_nan(amax);
    }
    if (kPass == 1) {
      if (lane == 0) a.unit_max[u] = amax;
    } else {
      quantize_unit<kPass == 0>(a, map, u, off, full, x, kPass == 2 ? a.absmax[0] : amax);
    }
  }
}

// block_wise=False: absmax[0] = max of the units' maxima (one block).
__global__ void __launch_bounds__(kThreads) quantize_reduce_kernel(const __grid_constant__ QuantArgs a) {
  __shared__ float part[kWarps];
  const int64_t units = (a.n + kUnit - 1) / kUnit;
  float m = 0.0f;
  for (int64_t u = threadIdx.x; u < units; u += kThreads) m = max_nan(m, a.unit_max[u]);
  m = warp_max_nan(m);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    float r = 0.0f;
    for (int w = 0; w < kWarps; ++w) r = max_nan(r, part[w]);
    a.absmax[0] = r;
  }
}

__global__ void __launch_bounds__(kThreads) dequantize_kernel(const __grid_constant__ QuantArgs a) {
  __shared__ float q[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) q[i] = a.qmap[i];
  __syncthreads();
  float* out = const_cast<float*>(a.x);
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t units = (a.n + kUnit - 1) / kUnit;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5); u < units;
       u += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t off = u * kUnit + lane * kPerLane;
    const float scale = a.absmax[a.block_wise ? u : 0];
    if (a.vec && (u + 1) * kUnit <= a.n) {
      const uint2 r = __ldcs(reinterpret_cast<const uint2*>(a.codes + off));
      float y[kPerLane];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        y[k] = dequantize_value(q, static_cast<uint8_t>((r.x >> (8 * k)) & 0xffu), scale);
        y[4 + k] = dequantize_value(q, static_cast<uint8_t>((r.y >> (8 * k)) & 0xffu), scale);
      }
      __stcs(reinterpret_cast<float4*>(out + off), make_float4(y[0], y[1], y[2], y[3]));
      __stcs(reinterpret_cast<float4*>(out + off + 4), make_float4(y[4], y[5], y[6], y[7]));
    } else {
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        if (off + j < a.n) out[off + j] = dequantize_value(q, a.codes[off + j], scale);
      }
    }
  }
}

using QuantKernelFn = void (*)(const QuantArgs);

// The kernels of one op call, in order, through `launch(kernel, units, blocks)`
// (as run_step: units > 0 asks for a persistent grid, else `blocks` blocks).
template <typename Launch>
void run_quantize(const QuantArgs& a, Launch&& launch) {
  const int64_t units = (a.n + kUnit - 1) / kUnit;
  if (a.block_wise) {
    if (units > 0) launch(quantize_kernel<0>, units, 0);
    return;
  }
  if (units > 0) launch(quantize_kernel<1>, units, 0);
  launch(quantize_reduce_kernel, 0, 1);
  if (units > 0) launch(quantize_kernel<2>, units, 0);
}

template <typename Launch>
void run_dequantize(const QuantArgs& a, Launch&& launch) {
  const int64_t units = (a.n + kUnit - 1) / kUnit;
  if (units > 0) launch(dequantize_kernel, units, 0);
}

}  // namespace cuda
}  // namespace adamw8
