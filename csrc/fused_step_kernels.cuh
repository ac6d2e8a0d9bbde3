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
//
// The pieces: fused_step_common.cuh (element access, warp reductions, the unit walker,
// per-tensor values), fused_step_stage.cuh (the staging of a warp's next unit),
// fused_step_units.cuh (a unit's update for 32-bit and 8-bit state); this file has the
// kernels and the order of one step's launches (run_step).
#pragma once

#include "fused_step_units.cuh"

namespace adamw8 {
namespace cuda {

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
