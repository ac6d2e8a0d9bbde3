// The update kernel's staging of each warp's next unit in shared memory (cp.async).  Part of
// fused_step_kernels.cuh.
#pragma once

#include "fused_step_common.cuh"

namespace adamw8 {
namespace cuda {

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

}  // namespace cuda
}  // namespace adamw8
