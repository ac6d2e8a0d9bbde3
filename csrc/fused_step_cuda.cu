// CUDA kernels of adamw8::fused_step(_multi): multi-tensor 32-bit and 8-bit
// blockwise AdamW (SPEC §2, §2.1, §3).
//
// No torch headers: CI compiles this file with nvcc (-arch=sm_90) on machines
// without a GPU.  The arithmetic and the quantization are adamw8_math.h's,
// shared with the CPU kernels and mirrored by the PyTorch reference.
//
// Layout of the work: one warp per 256-element unit (one absmax block of the
// 8-bit format); lane l handles elements l, l+32, ..., l+224, so every load
// and store of a warp instruction is contiguous.  The block's new absmax is a
// warp-shuffle max; the maps sit in shared memory for the binary search.
// Units of all tensors of a launch form one index space, walked grid-stride.
// Per-step scalars (lr, betas, step, grad_scale, found_inf) are read from
// device memory, so a captured CUDA graph replays with new values.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "adamw8_math.h"
#include "fused_step_cuda.h"

namespace adamw8 {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPerLane = kBlockSize / 32;  // 8 elements per lane and unit

template <typename T>
struct Conv;
template <>
struct Conv<float> {
  __device__ static float load(float x) { return x; }
  __device__ static float store(float x) { return x; }
};
template <>
struct Conv<__nv_bfloat16> {
  __device__ static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};
template <>
struct Conv<__half> {
  __device__ static float load(__half x) { return __half2float(x); }
  __device__ static __half store(float x) { return __float2half_rn(x); }
};

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ int find_tensor(const LaunchArgs& a, int64_t unit) {
  int i = 0;
  while (unit >= a.unit_start[i + 1]) ++i;
  return i;
}

template <typename T, bool kEight, bool kAms>
__global__ void __launch_bounds__(kThreads) fused_step_kernel(const __grid_constant__ LaunchArgs a) {
  __shared__ float sq1[kEight ? 256 : 1];
  __shared__ float sq2[kEight ? 256 : 1];
  if (a.found_inf != nullptr && *a.found_inf != 0.0f) return;  // AMP: skip everything (uniform)
  if constexpr (kEight) {
    for (int i = threadIdx.x; i < 256; i += kThreads) {
      sq1[i] = a.qmap1[i];
      sq2[i] = a.qmap2[i];
    }
    __syncthreads();
  }
  const int lane = threadIdx.x & 31;
  const float lr = *a.lr, b1 = *a.beta1, b2 = *a.beta2;
  const bool has_scale = a.grad_scale != nullptr;
  const float gscale = has_scale ? *a.grad_scale : 1.0f;
  const int64_t total = a.unit_start[a.ntensors];
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5); u < total;
       u += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int ti = find_tensor(a, u);
    const TensorArgs& ta = a.t[ti];
    const int64_t blk = u - a.unit_start[ti];
    const int64_t off = blk * kBlockSize;
    const int64_t n = ta.numel;
    const AdamScalars sc = make_scalars(lr, b1, b2, a.eps, a.weight_decay, *ta.step + 1.0f);
    T* p = static_cast<T*>(ta.param);
    const T* g = static_cast<const T*>(ta.grad);
    if constexpr (!kEight) {
      float* s1 = static_cast<float*>(ta.state1);
      float* s2 = static_cast<float*>(ta.state2);
      float* s3 = static_cast<float*>(ta.state3);
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t i = off + j * 32 + lane;
        if (i >= n) break;
        float gi = Conv<T>::load(g[i]);
        if (has_scale) gi = gi / gscale;
        float m = s1[i], v = s2[i];
        update_moments(sc, gi, m, v);
        float vh = v;
        if constexpr (kAms) {
          const float vmax = s3[i];
          vh = vmax > v ? vmax : v;
          s3[i] = vh;
        }
        p[i] = Conv<T>::store(update_param(sc, Conv<T>::load(p[i]), m, vh));
        s1[i] = m;
        s2[i] = v;
      }
    } else {
      uint8_t* c1 = static_cast<uint8_t*>(ta.state1);
      uint8_t* c2 = static_cast<uint8_t*>(ta.state2);
      uint8_t* c3 = static_cast<uint8_t*>(ta.state3);
      const float oa1 = ta.absmax1[blk], oa2 = ta.absmax2[blk];
      const float oa3 = kAms ? ta.absmax3[blk] : 0.0f;
      float m[kPerLane], v[kPerLane], h[kPerLane], pn[kPerLane];
      float na1 = 0.0f, na2 = 0.0f, na3 = 0.0f;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t i = off + j * 32 + lane;
        m[j] = v[j] = h[j] = pn[j] = 0.0f;
        if (i >= n) continue;
        float gi = Conv<T>::load(g[i]);
        if (has_scale) gi = gi / gscale;
        float mj = dequantize_value(sq1, c1[i], oa1);
        float vj = dequantize_value(sq2, c2[i], oa2);
        update_moments(sc, gi, mj, vj);
        const bool ok = update_is_finite(gi, mj, vj);  // else: moments reset, parameter kept
        mj = ok ? mj : 0.0f;
        vj = ok ? vj : 0.0f;
        float hj = vj;
        if constexpr (kAms) {
          const float vmax = dequantize_value(sq2, c3[i], oa3);
          hj = vmax > vj ? vmax : vj;
        }
        const float pi = Conv<T>::load(p[i]);
        pn[j] = ok ? update_param(sc, pi, mj, hj) : pi;
        m[j] = mj;
        v[j] = vj;
        h[j] = hj;
        na1 = fmaxf(na1, fabsf(mj));
        na2 = fmaxf(na2, vj);
        na3 = fmaxf(na3, hj);
      }
      // every lane has read the old absmax before the shuffles; lane 0 writes after
      na1 = warp_max(na1);
      na2 = warp_max(na2);
      if constexpr (kAms) na3 = warp_max(na3);
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t i = off + j * 32 + lane;
        if (i >= n) continue;
        p[i] = Conv<T>::store(pn[j]);
        c1[i] = quantize_value(sq1, m[j], na1, true);
        c2[i] = quantize_value(sq2, v[j], na2, false);
        if constexpr (kAms) c3[i] = quantize_value(sq2, h[j], na3, false);
      }
      if (lane == 0) {
        ta.absmax1[blk] = na1;
        ta.absmax2[blk] = na2;
        if constexpr (kAms) ta.absmax3[blk] = na3;
      }
    }
  }
}

// step += 1 for every tensor of the launch, after the update kernel (same
// stream), so no update reads a half-incremented count.
__global__ void increment_steps_kernel(const __grid_constant__ LaunchArgs a) {
  if (a.found_inf != nullptr && *a.found_inf != 0.0f) return;
  const int i = threadIdx.x;
  if (i < a.ntensors) *a.t[i].step += 1.0f;
}

template <typename T>
void launch_typed(const LaunchArgs& a, bool eight, bool ams, dim3 grid, cudaStream_t s) {
  if (eight) {
    if (ams) fused_step_kernel<T, true, true><<<grid, kThreads, 0, s>>>(a);
    else fused_step_kernel<T, true, false><<<grid, kThreads, 0, s>>>(a);
  } else {
    if (ams) fused_step_kernel<T, false, true><<<grid, kThreads, 0, s>>>(a);
    else fused_step_kernel<T, false, false><<<grid, kThreads, 0, s>>>(a);
  }
}

}  // namespace

void launch_fused_step(const LaunchArgs& a, ParamType type, bool eight_bit, bool amsgrad, int num_sms,
                       cudaStream_t stream) {
  const int64_t units = a.unit_start[a.ntensors];
  if (units > 0) {
    const int64_t blocks = (units + kWarps - 1) / kWarps;
    const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 132) * (2048 / kThreads);
    const dim3 grid(static_cast<unsigned>(blocks < cap ? blocks : cap));
    switch (type) {
      case ParamType::kFloat: launch_typed<float>(a, eight_bit, amsgrad, grid, stream); break;
      case ParamType::kBFloat16: launch_typed<__nv_bfloat16>(a, eight_bit, amsgrad, grid, stream); break;
      case ParamType::kHalf: launch_typed<__half>(a, eight_bit, amsgrad, grid, stream); break;
    }
  }
  if (a.ntensors > 0) increment_steps_kernel<<<1, kMaxTensorsPerLaunch, 0, stream>>>(a);
}

}  // namespace cuda
}  // namespace adamw8
