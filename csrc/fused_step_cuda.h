// The torch-free interface of the CUDA kernels of adamw8::fused_step(_multi):
// the launch record and the one entry point.
//
// No torch and no CUDA runtime headers: the kernels (fused_step_kernels.cuh)
// include this under nvcc and, through csrc/emu/cuda_emu.h, as host code; the
// torch-facing code (fused_step_plan.h) fills the record for both.
#pragma once

#include <cstdint>

namespace adamw8 {
namespace cuda {

constexpr int kThreads = 256;             // threads per block
constexpr int kWarps = kThreads / 32;
constexpr int kPerLane = 8;               // contiguous elements per lane and unit
constexpr int kUnit = 32 * kPerLane;      // elements per warp and unit: one absmax block
// Tensors per launch.  The record travels as a kernel argument: about 7.5 KB,
// over the classic 4 KB but within the 32 KB that CUDA >= 12.1 allows (docs/design.md).
constexpr int kMaxTensorsPerLaunch = 64;
// Blocks per SM the 8-bit update kernels are compiled for (__launch_bounds__' second
// argument).  3, the default, caps them at 80 registers, with no spills (check_kernels.py):
// the occupancy of the 2026-11-27 measurements.  Their eight element updates are interleaved
// (no branch per element around a slow path), which took 102-118 registers uncapped, 2 blocks,
// and spilled at 80 until the per-warp values (unit and tensor indices, per-tensor scalars)
// moved to uniform registers (for_each_unit).  0 sets no cap (ptxas's choice: 80-100, one
// kernel spilling); 4 (64 registers) gained nothing on the H200 on 2026-11-27.  A build
// option, ADAMW8_MIN_BLOCKS_8BIT (setup.py; scripts/gpu_variant.sh measures one against the
// default).
#ifndef ADAMW8_MIN_BLOCKS_8BIT
#define ADAMW8_MIN_BLOCKS_8BIT 3
#endif
constexpr int kMinBlocks8 = ADAMW8_MIN_BLOCKS_8BIT;
// The 32-bit update kernels, compiled for 4 blocks per SM (64 registers, no spills:
// check_kernels.py): this latency-bound kernel wants the warps.  The bf16 and amsgrad ones
// spilled at 64 until the per-warp values moved to uniform registers (for_each_unit).
constexpr int kMinBlocks32 = 4;
constexpr int kMaxDims = 4;               // dims of a non-contiguous param/grad, after merging
constexpr int kMaxStrided = 8;            // non-contiguous tensors per launch

enum class ParamType : int { kFloat = 0, kBFloat16 = 1, kHalf = 2 };

// Row-major element index -> element offset of a non-contiguous param and grad
// (numel < 2^31).  Each size carries its magic number for a division by
// multiplication (no 64-bit division, which is a function call on the GPU).
struct StridedDesc {
  int ndim;
  uint32_t sizes[kMaxDims];
  uint32_t magic[kMaxDims];
  uint32_t shift[kMaxDims];
  int64_t pstride[kMaxDims];
  int64_t gstride[kMaxDims];
};

// Magic number and shift of divisor d >= 1: n / d == (umulhi(n, magic) + n) >> shift
// for every n < 2^31 (Granlund and Montgomery; the form torch's IntDivider uses).
inline void divider_magic(uint32_t d, uint32_t& magic, uint32_t& shift) {
  shift = 0;
  while (shift < 32 && (uint64_t{1} << shift) < d) ++shift;
  magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
}

struct TensorArgs {
  void* param;
  const void* grad;
  void* state1;  // float (32-bit state) or uint8 codes (8-bit)
  void* state2;
  void* state3;  // amsgrad, else nullptr
  float* absmax1;
  float* absmax2;
  float* absmax3;
  int64_t* step;     // count before this step; the finish kernel adds 1
  float* gnorm_vec;  // percentile clipping history, else nullptr
  int64_t numel;
  int32_t vec;       // 1: contiguous and every pointer 16-byte aligned: full units use 128-bit accesses
  int32_t strided;   // -1, or the index of this tensor's StridedDesc
};

struct LaunchArgs {
  TensorArgs t[kMaxTensorsPerLaunch];
  // units (256-element blocks) of tensor i are [unit_start[i], unit_start[i + 1])
  int64_t unit_start[kMaxTensorsPerLaunch + 1];
  StridedDesc strided[kMaxStrided];
  int ntensors;
  int percentile;  // < 100: percentile clipping
  int block_wise;  // 0: one absmax per tensor (8-bit)
  const float* hyper;        // lr, beta1, beta2, eps, weight_decay
  const float* grad_scale;  // nullptr: no AMP scale
  const float* found_inf;   // nullptr: never skip
  const float* qmap1;       // 8-bit only
  const float* qmap2;
  // Scratch of one call (device memory), nullptr where unused:
  double* unit_sumsq;   // [units]          percentile: each unit's sum of g^2
  float* unit_max;      // [3 * units]      block_wise=False: each unit's new max |m|, v, vh
  float* tensor_scale;  // [ntensors]       percentile: gnorm_scale
  float* tensor_max;    // [3 * ntensors]   block_wise=False: the new absmax1..3
  // The completion counter of the flat form (the last element of its steps buffer, 0
  // between calls): the last block of the update kernel to finish does the finish work
  // (step += 1, block_wise=False's absmax), so no finish kernel is launched.
  unsigned long long* counter;
};
static_assert(sizeof(LaunchArgs) <= 32764, "the launch record must fit CUDA's kernel-argument space");

// The persistent grid of a unit kernel: one warp per unit, at most what runs
// in one wave (`max_resident`: SMs x resident blocks per SM of that kernel).
inline int64_t persistent_grid(int64_t units, int64_t max_resident) {
  const int64_t want = (units + kWarps - 1) / kWarps;
  return want < max_resident ? want : (max_resident > 0 ? max_resident : 1);
}

// SMs x resident blocks per SM of `kernel` (a __global__ function) on `device`:
// the largest grid that runs in one wave (occupancy API, cached).  `cap_per_sm` > 0
// caps the blocks per SM (a launch config, adamw8/tuning.py): a smaller grid, more
// units per block.
int max_resident_blocks(int device, const void* kernel, int cap_per_sm = 0);

// Bytes of scratch one launch needs (0 for the common blockwise, unclipped step).
inline int64_t scratch_bytes(int64_t units, int ntensors, bool clip, bool tensorwise) {
  int64_t b = 0;
  if (clip) b += 8 * units + 4 * ntensors;
  if (tensorwise) b += 4 * 3 * units + 4 * 3 * ntensors;
  return b;
}

// Points the scratch fields of `a` into `base` (scratch_bytes(...) bytes, 8-byte aligned).
inline void place_scratch(LaunchArgs& a, void* base, int64_t units, bool clip, bool tensorwise) {
  char* p = static_cast<char*>(base);
  a.unit_sumsq = nullptr;
  a.unit_max = a.tensor_scale = a.tensor_max = nullptr;
  if (clip) {
    a.unit_sumsq = reinterpret_cast<double*>(p);
    p += 8 * units;
  }
  if (tensorwise) {
    a.unit_max = reinterpret_cast<float*>(p);
    p += 4 * 3 * units;
    a.tensor_max = reinterpret_cast<float*>(p);
    p += 4 * 3 * a.ntensors;
  }
  if (clip) a.tensor_scale = reinterpret_cast<float*>(p);
}

// Runs one launch record on `stream` (a cudaStream_t): every kernel of the step,
// asynchronously, unit kernels on a persistent grid of at most `blocks_per_sm` blocks
// per SM (0: as many as fit).  Returns the cudaError_t of the launches (0: success).
int launch_fused_step(const LaunchArgs& args, ParamType type, bool eight_bit, bool amsgrad, void* stream,
                      int blocks_per_sm = 0);

// What the update kernel (pass 0) of `type`, `eight_bit`, `amsgrad` gets on the current device:
// its resident blocks per SM and the dynamic shared memory of its staging (0: it runs unstaged;
// launch_fused_step gives the slots only where they cost no resident block).  Returns the
// cudaError_t of the queries (0: success).
int update_kernel_launch(ParamType type, bool eight_bit, bool amsgrad, int* blocks_per_sm, int* stage_bytes);

// The kernels' fast paths of the IEEE operations (adamw8_math.h: rcp_rn, sqrt_fast) against
// the operations themselves, over every float on the device: adds to counts[0] the floats v
// (finite, >= +0) where sqrt_fast's `ok` differs from its stated range or, within it, its bits
// from __fsqrt_rn's, and to counts[1] those with a biased exponent in [1, 252] where rcp_rn
// differs from __frcp_rn.  Asynchronous on `stream`; returns the cudaError_t of the launch.
int launch_fast_path_check(unsigned long long* counts, void* stream);

}  // namespace cuda
}  // namespace adamw8
