// Runs CUDA kernel source on the CPU: every CUDA thread is a std::thread.
//
// Include this, then the kernels (fused_step_kernels.cuh), in a host
// translation unit.  What it maps:
//   - a launch: blockDim.x threads; they run the blocks of the grid in turn,
//     all of a block's threads at once (a block barrier between blocks);
//   - __shared__: function-level statics, one copy, which is right because one
//     block runs at a time (and one launch at a time: launches are serialised);
//   - __syncthreads (and __syncthreads_or): a barrier of the block's threads; a thread that returns
//     from the kernel leaves it (arrive_and_drop), as exited threads do on a GPU;
//   - warp shuffles and reductions: each lane writes its value to its warp's buffer, a warp
//     barrier, each lane reads its partner's (or all 32), a second warp barrier;
//   - bf16/fp16 conversions through c10's (the CPU kernels' own), 128-bit vector
//     types, the streaming load/store intrinsics as plain accesses, __umulhi, __byte_perm,
//     the IEEE __fsqrt_rn and __frcp_rn;
//   - dynamic shared memory (a launch's `smem` bytes, one copy: one block runs at a time) and
//     its size, and the asynchronous copies into it (cp.async: async_copy, async_commit,
//     async_wait_all) at their latest: a copy fills its destination with 0xff bytes when it is
//     issued (a NaN, code 255) and lands at the kernels' visibility point after its thread's
//     wait (async_warp_fence: every lane of the warp arrives, each lands its waited copies, all
//     arrive again), so a read before the wait or before that point sees the filler, whichever
//     lane copied, and a copy never waited for and landed fails the launch.
// What it cannot show: real concurrency (races, memory ordering), launch limits,
// CUDA's own pow and division, streams, graphs, speed.  Those need the GPU and
// compute-sanitizer (scripts/gpu_check.sh).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <atomic>
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __grid_constant__
#define __launch_bounds__(...)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct float4 {
  alignas(16) float x;
  float y, z, w;
};
struct uint4 {
  alignas(16) unsigned x;
  unsigned y, z, w;
};
struct uint2 {
  alignas(8) unsigned x;
  unsigned y;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

template <typename V>
inline V __ldcs(const V* p) { return *p; }
template <typename V>
inline void __stcs(V* p, V v) { *p = v; }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
// byte n of the result: byte (s >> 4n) & 7 of y:x (PRMT's default mode)
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t v = (static_cast<uint64_t>(y) << 32) | x;
  unsigned r = 0;
  for (int n = 0; n < 4; ++n) r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * n)) & 7u))) & 0xffu) << (8 * n);
  return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}

using __nv_bfloat16 = c10::BFloat16;
using __half = c10::Half;
inline float __bfloat162float(__nv_bfloat16 x) { return static_cast<float>(x); }
inline __nv_bfloat16 __float2bfloat16_rn(float x) { return __nv_bfloat16(x); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 x) { return x.x; }
inline float __half2float(__half x) { return static_cast<float>(x); }
inline __half __float2half_rn(float x) { return __half(x); }
inline unsigned short __half_as_ushort(__half x) { return x.x; }
inline __half __ushort_as_half(unsigned short b) { return __half(b, __half::from_bits()); }

namespace adamw8_emu {

// One block's synchronisation: the block barrier and one barrier per warp.
struct BlockSync {
  explicit BlockSync(int threads) : block(threads) {
    for (int w = 0; w < (threads + 31) / 32; ++w) {
      const int n = std::min(32, threads - 32 * w);
      warps.emplace_back(std::make_unique<std::barrier<>>(n));
    }
    exchange.resize(static_cast<size_t>((threads + 31) / 32) * 32);
  }
  std::barrier<> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<uint64_t> exchange;  // one 8-byte slot per thread, for shuffles
  std::atomic<int> any{0};         // __syncthreads_or
};

// A thread's asynchronous copies (cp.async) not yet waited for.
struct AsyncCopy {
  void* dst;
  const void* src;
  unsigned bytes;
};

struct ThreadCtx {
  dim3 thread, block, block_dim, grid_dim;
  BlockSync* sync = nullptr;
  unsigned char* dynamic_smem = nullptr;  // the launch's dynamic shared memory
  unsigned dynamic_smem_bytes = 0;
  std::vector<AsyncCopy> copies;          // issued, committed or not
  size_t committed = 0;                   // the first copies[committed] are committed
  std::vector<AsyncCopy> waited;          // waited for, not yet landed
};
inline thread_local ThreadCtx ctx;

}  // namespace adamw8_emu

#define threadIdx (adamw8_emu::ctx.thread)
#define blockIdx (adamw8_emu::ctx.block)
#define blockDim (adamw8_emu::ctx.block_dim)
#define gridDim (adamw8_emu::ctx.grid_dim)

inline void __syncthreads() { adamw8_emu::ctx.sync->block.arrive_and_wait(); }

// A block barrier that returns whether any thread's predicate was non-zero: set, wait,
// read, wait, the first thread clears, wait (so no thread of a next call sets too early).
inline int __syncthreads_or(int predicate) {
  auto& c = adamw8_emu::ctx;
  if (predicate) c.sync->any.store(1);
  c.sync->block.arrive_and_wait();
  const int any = c.sync->any.load();
  c.sync->block.arrive_and_wait();
  if (c.thread.x == 0) c.sync->any.store(0);
  c.sync->block.arrive_and_wait();
  return any;
}

// One warp exchange: each lane writes its 8-byte slot, a warp barrier, `read` takes what it
// needs of the warp's 32 slots, a second warp barrier (no lane writes again before every lane
// has read).
template <typename Read>
inline auto warp_exchange(uint64_t slot, Read&& read) {
  auto& c = adamw8_emu::ctx;
  const unsigned tid = c.thread.x;
  std::barrier<>& warp = *c.sync->warps[tid >> 5];
  c.sync->exchange[tid] = slot;
  warp.arrive_and_wait();
  const auto out = read(&c.sync->exchange[tid - (tid & 31u)]);
  warp.arrive_and_wait();
  return out;
}

template <typename V>
inline V __shfl_xor_sync(unsigned mask, V value, int lane_mask, int width = 32) {
  static_assert(sizeof(V) <= 8, "shuffle of at most 8 bytes");
  if (mask != 0xffffffffu || width != 32) throw std::logic_error("cuda_emu: only full-warp shuffles are emulated");
  const unsigned partner = (adamw8_emu::ctx.thread.x & 31u) ^ static_cast<unsigned>(lane_mask);
  uint64_t slot = 0;
  std::memcpy(&slot, &value, sizeof(V));
  slot = warp_exchange(slot, [&](const uint64_t* w) { return w[partner]; });
  V out;
  std::memcpy(&out, &slot, sizeof(V));
  return out;
}

inline unsigned __reduce_max_sync(unsigned mask, unsigned value) {
  if (mask != 0xffffffffu) throw std::logic_error("cuda_emu: only full-warp reductions are emulated");
  return warp_exchange(value, [](const uint64_t* w) {
    unsigned out = 0;
    for (int l = 0; l < 32; ++l) out = std::max(out, static_cast<unsigned>(w[l]));
    return out;
  });
}

// Dynamic shared memory: the launch's buffer and its size (%dynamic_smem_size).
inline unsigned char* dynamic_smem() { return adamw8_emu::ctx.dynamic_smem; }
inline unsigned dynamic_smem_size() { return adamw8_emu::ctx.dynamic_smem_bytes; }

// cp.async of kBytes (4, 8 or 16) from global to shared memory, both addresses aligned to it.
template <unsigned kBytes>
inline void async_copy(void* dst, const void* src) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async copies 4, 8 or 16 bytes");
  auto& c = adamw8_emu::ctx;
  const auto d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
  if (d % kBytes != 0 || s % kBytes != 0) throw std::logic_error("cuda_emu: cp.async with a misaligned address");
  if (d < reinterpret_cast<uintptr_t>(c.dynamic_smem) ||
      d + kBytes > reinterpret_cast<uintptr_t>(c.dynamic_smem) + c.dynamic_smem_bytes) {
    throw std::logic_error("cuda_emu: cp.async past the launch's dynamic shared memory");
  }
  std::memset(dst, 0xff, kBytes);
  c.copies.push_back(adamw8_emu::AsyncCopy{dst, src, kBytes});
}
// cp.async.commit_group
inline void async_commit() { adamw8_emu::ctx.committed = adamw8_emu::ctx.copies.size(); }
// cp.async.wait_group 0: every committed copy of this thread is complete (it lands at the next
// async_warp_fence)
inline void async_wait_all() {
  auto& c = adamw8_emu::ctx;
  c.waited.insert(c.waited.end(), c.copies.begin(), c.copies.begin() + static_cast<std::ptrdiff_t>(c.committed));
  c.copies.erase(c.copies.begin(), c.copies.begin() + static_cast<std::ptrdiff_t>(c.committed));
  c.committed = 0;
}
// The kernels' point where waited copies are visible to the lanes that read them
// (stage_fence): all 32 lanes arrive, each lands its waited copies, all arrive again.
inline void async_warp_fence() {
  auto& c = adamw8_emu::ctx;
  std::barrier<>& warp = *c.sync->warps[c.thread.x >> 5];
  warp.arrive_and_wait();
  for (const auto& w : c.waited) std::memcpy(w.dst, w.src, w.bytes);
  c.waited.clear();
  warp.arrive_and_wait();
}

namespace adamw8_emu {

// Runs `kernel()` as grid x block CUDA threads with `smem` bytes of dynamic shared memory;
// returns when all blocks are done.
inline void launch(unsigned grid, unsigned block, const std::function<void()>& kernel, unsigned smem = 0) {
  static std::mutex one_launch_at_a_time;  // __shared__ statics are one copy
  std::lock_guard<std::mutex> lock(one_launch_at_a_time);
  if (grid == 0 || block == 0) throw std::invalid_argument("cuda_emu: empty launch");
  std::unique_ptr<BlockSync> sync = std::make_unique<BlockSync>(static_cast<int>(block));
  std::vector<uint4> dynamic((smem + 15) / 16);  // 16-byte aligned, as the GPU's
  // Between blocks every thread waits here; the completion step gives the next
  // block fresh barriers (a thread that returned early left the old ones).
  std::barrier between(static_cast<std::ptrdiff_t>(block), [&]() noexcept {
    sync = std::make_unique<BlockSync>(static_cast<int>(block));
  });
  std::exception_ptr error;
  std::mutex error_mu;
  std::vector<std::thread> threads;
  threads.reserve(block);
  for (unsigned t = 0; t < block; ++t) {
    threads.emplace_back([&, t] {
      for (unsigned b = 0; b < grid; ++b) {
        ctx.thread = dim3{t, 0, 0};
        ctx.block = dim3{b, 0, 0};
        ctx.block_dim = dim3{block, 1, 1};
        ctx.grid_dim = dim3{grid, 1, 1};
        ctx.sync = sync.get();
        ctx.dynamic_smem = smem > 0 ? reinterpret_cast<unsigned char*>(dynamic.data()) : nullptr;
        ctx.dynamic_smem_bytes = smem;
        ctx.copies.clear();
        ctx.committed = 0;
        ctx.waited.clear();
        try {
          kernel();
          if (!ctx.copies.empty() || !ctx.waited.empty()) {
            throw std::logic_error("cuda_emu: a thread left with cp.async copies not waited for and landed");
          }
        } catch (...) {
          std::lock_guard<std::mutex> g(error_mu);
          if (!error) error = std::current_exception();
        }
        // an exited thread no longer holds back the block's or its warp's barriers
        ctx.sync->block.arrive_and_drop();
        ctx.sync->warps[t >> 5]->arrive_and_drop();
        between.arrive_and_wait();
      }
    });
  }
  for (auto& th : threads) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace adamw8_emu
