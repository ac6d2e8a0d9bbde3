// Two versions of the CPU 8-bit step (csrc/cpu/kernels.h and avx512_lookup.h, from two git
// revisions) compiled into one binary and timed taking turns on the same tensors: the machine's
// drift (2-10% between runs on a shared core) cancels out of the paired ratio.  Built and run by
// ab_step8.sh, which says how.  Both versions must give the same bits: checked first, and the
// run fails otherwise.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "adamw8_math.h"
#include "nearest_lut.h"
#include "cpu/isa.h"
#include "cpu/kernel_args.h"
#include "quant_lut_cpu.h"

#include <immintrin.h>

#pragma GCC push_options
#if AB_ISA == 3
ADAMW8_TARGET(ADAMW8_ISA_AVX512VBMI)
#define ADAMW8_CPU_VBMI 1
#define ADAMW8_CPU_PERMUTE_LOOKUPS 1
#elif AB_ISA == 2
ADAMW8_TARGET(ADAMW8_ISA_AVX512)
#define ADAMW8_CPU_PERMUTE_LOOKUPS 1
#else
ADAMW8_TARGET(ADAMW8_ISA_AVX2)
#endif
#define ADAMW8_CPU_FMA 1
#define ADAMW8_CPU_NS va
#define ADAMW8_CPU_NAME "A"
#include AB_KERNELS_A
#undef ADAMW8_CPU_NS
#undef ADAMW8_CPU_NAME
#define ADAMW8_CPU_NS vb
#define ADAMW8_CPU_NAME "B"
#include AB_KERNELS_B
#pragma GCC pop_options

namespace adamw8 {
namespace cpu {
bool divide_quotients() { return std::getenv("AB_DIVIDE") == nullptr || std::getenv("AB_DIVIDE")[0] == '1'; }
}  // namespace cpu
}  // namespace adamw8

using namespace adamw8;

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs the paired timing with parameters and gradients of storage type S (float, c10::BFloat16 or
// c10::Half).
template <typename S>
int run(int64_t n, int rounds, cpu::DType dtype, const char* name, const float* q1, const float* q2) {
  NearestCodeLut l1(q1), l2(q2);
  // page-aligned tensors, as torch's large allocations are
  const auto page_aligned = [](std::vector<S>& buf) {
    return reinterpret_cast<S*>((reinterpret_cast<uintptr_t>(buf.data()) + 4095) & ~uintptr_t{4095});
  };
  std::vector<S> pbuf(n + 4096 / sizeof(S)), gbuf(n + 4096 / sizeof(S));
  S* p = page_aligned(pbuf);
  S* g = page_aligned(gbuf);
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<S>(normal(rng) * 0.02f);
  for (int64_t i = 0; i < n; ++i) g[i] = static_cast<S>(normal(rng) * 1e-3f);
  const int64_t blocks = (n + kBlockSize - 1) / kBlockSize;
  std::vector<uint8_t> c1(n, 127), c2(n, 0);  // zero state: the codes of 0
  std::vector<float> a1(blocks, 0.0f), a2(blocks, 0.0f);
  cpu::Step8Args a{};
  a.dtype = dtype;
  a.p = p;
  a.g = g;
  a.c1 = c1.data();
  a.c2 = c2.data();
  a.a1 = a1.data();
  a.a2 = a2.data();
  a.t1 = l1.table();
  a.t2 = l2.table();
  a.n = n;
  a.block_wise = true;
  a.grad_scale = a.gnorm_scale = 1.0f;
  int64_t t = 0;
  const auto step = [&](const cpu::Kernels& k) {
    a.sc = make_scalars(1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f, ++t);
    const auto t0 = std::chrono::steady_clock::now();
    k.step8(a, 0, blocks, nullptr);
    return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / n;
  };
  for (int i = 0; i < 3; ++i) step(cpu::va::kKernels);
  {  // one step of each from the same state: the same bits
    const std::vector<S> p0(p, p + n);
    const std::vector<float> a10 = a1, a20 = a2;
    const std::vector<uint8_t> c10 = c1, c20 = c2;
    const int64_t t0 = t;
    step(cpu::va::kKernels);
    const std::vector<S> pa(p, p + n);
    const std::vector<float> a1a = a1, a2a = a2;
    const std::vector<uint8_t> c1a = c1, c2a = c2;
    std::copy(p0.begin(), p0.end(), p);
    a1 = a10, a2 = a20, c1 = c10, c2 = c20, t = t0;
    step(cpu::vb::kKernels);
    if (std::memcmp(pa.data(), p, n * sizeof(S)) != 0 || c1a != c1 || c2a != c2 || a1a != a1 || a2a != a2) {
      std::fprintf(stderr, "A and B give different bits\n");
      return 1;
    }
  }
  std::vector<double> ta, tb, ratio;
  for (int r = 0; r < rounds; ++r) {
    ta.push_back(step(cpu::va::kKernels));
    tb.push_back(step(cpu::vb::kKernels));
    ratio.push_back(tb.back() / ta.back());
  }
  std::printf("same bits; %lld %s elements, %d rounds: A %.4f, B %.4f ns per element (medians); B / A %.4f "
              "(median of the paired ratios)\n",
              static_cast<long long>(n), name, rounds, median(ta), median(tb), median(ratio));
  return 0;
}

int main(int argc, char** argv) {
  const char* usage = "usage: ab_step8 ELEMENTS ROUNDS [fp32|bf16|fp16] (ab_step8.sh builds and runs it)\n";
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "%s", usage);
    return 2;
  }
  const char* dt = argc == 4 ? argv[3] : "fp32";
  const int64_t n = std::atol(argv[1]);
  const int rounds = std::atoi(argv[2]);
  if (n < 1 || rounds < 1) {
    std::fprintf(stderr, "ELEMENTS and ROUNDS must be positive\n");
    return 2;
  }
  static const float q1[256] = {
#include "map_signed.inc"
  };
  static const float q2[256] = {
#include "map_unsigned.inc"
  };
  if (std::strcmp(dt, "fp32") == 0) return run<float>(n, rounds, cpu::DType::kFloat, dt, q1, q2);
  if (std::strcmp(dt, "bf16") == 0) return run<c10::BFloat16>(n, rounds, cpu::DType::kBFloat16, dt, q1, q2);
  if (std::strcmp(dt, "fp16") == 0) return run<c10::Half>(n, rounds, cpu::DType::kHalf, dt, q1, q2);
  std::fprintf(stderr, "%s", usage);
  return 2;
}
