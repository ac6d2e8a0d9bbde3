// Throughput and latency of the AVX-512 instructions the avx512vbmi 8-bit step is made of, on
// the machine it runs on, in cycles at the clock a chain of dependent scalar adds measures
// (one add a cycle).  benchmarks/RESULTS.md quotes it for a Zen 5 core.
//
//   g++ -O2 -o /tmp/op_costs benchmarks/cpu_ab/op_costs.cpp && /tmp/op_costs
//
// Throughput: 16 independent chains of one instruction (zmm0-15), cycles per instruction.
// Latency: one chain, cycles per instruction (a mask route: the compare or move into a mask
// register and the masked instruction that reads it, together).  Needs AVX-512 BW and VBMI.
#include <chrono>
#include <cstdio>

#pragma GCC target("avx512f,avx512bw,avx512vbmi")

namespace {

constexpr long kIters = 4000000;
alignas(64) char g_buf[4096];

double g_ghz = 0.0;  // the clock, from the scalar chain

template <typename F>
double ns_per_iter(F&& body) {
  double best = 1e30;
  for (int r = 0; r < 3; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    body();
    const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / kIters;
    best = ns < best ? ns : best;
  }
  return best;
}

void report(const char* what, const char* kind, double ns, int per_iter) {
  std::printf("%-34s %-10s %6.2f cycles\n", what, kind, ns * g_ghz / per_iter);
}

}  // namespace

#define CLOBBER16 "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"
#define X16(I) I("0") I("1") I("2") I("3") I("4") I("5") I("6") I("7") I("8") I("9") I("10") I("11") I("12") I("13") I("14") I("15")
#define THROUGHPUT(name, I)                                                                                       \
  report(name, "throughput", ns_per_iter([] {                                                                      \
           for (long i = 0; i < kIters; ++i) asm volatile(X16(I)::"r"(g_buf) : CLOBBER16, "k1", "memory");        \
         }), 16)
#define LATENCY(name, seq)                                                                                        \
  report(name, "latency", ns_per_iter([] {                                                                         \
           for (long i = 0; i < kIters; ++i) asm volatile(seq seq seq seq::"r"(g_buf) : CLOBBER16, "k1", "memory"); \
         }), 4)

#define DIV(r) "vdivps %%zmm30, %%zmm" r ", %%zmm" r "\n\t"
#define SQRT(r) "vsqrtps %%zmm" r ", %%zmm" r "\n\t"
#define MUL(r) "vmulps %%zmm30, %%zmm" r ", %%zmm" r "\n\t"
#define FMA(r) "vfmadd231ps %%zmm30, %%zmm31, %%zmm" r "\n\t"
#define ADD(r) "vaddps %%zmm30, %%zmm" r ", %%zmm" r "\n\t"
#define PERM2B(r) "vpermt2b %%zmm30, %%zmm31, %%zmm" r "\n\t"
#define PERM2B_MEM(r) "vpermt2b 64(%0), %%zmm31, %%zmm" r "\n\t"
#define LOAD_PERM2B(r) "vmovdqu8 128(%0), %%zmm" r "\n\tvpermt2b 192(%0), %%zmm31, %%zmm" r "\n\t"
#define LOAD(r) "vmovdqu8 128(%0), %%zmm" r "\n\t"
#define UNPACK(r) "vpunpcklbw %%zmm30, %%zmm" r ", %%zmm" r "\n\t"
#define PADD(r) "vpaddd %%zmm30, %%zmm" r ", %%zmm" r "\n\t"
#define CMPK(r) "vcmpps $13, %%zmm30, %%zmm" r ", %%k1\n\t"
#define PERM_CMP(r) "vpermt2b %%zmm30, %%zmm31, %%zmm" r "\n\tvcmpps $13, %%zmm30, %%zmm" r ", %%k1\n\t"
#define PERM_MUL(r) "vpermt2b %%zmm30, %%zmm31, %%zmm" r "\n\tvmulps %%zmm30, %%zmm" r ", %%zmm" r "\n\t"

int main() {
  {  // the clock: four dependent adds per iteration, one cycle each
    const long n = 200000000;
    long x = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < n; ++i) asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    g_ghz = 4.0 * n / ns;
    std::printf("clock: %.2f GHz (a chain of dependent scalar adds)\n", g_ghz);
  }
  asm volatile("vbroadcastss %0, %%zmm30\n\tvbroadcastss %0, %%zmm31\n\tvmovaps %%zmm30, %%zmm0"
               ::"m"(*reinterpret_cast<const float*>("\0\0\x80\x3f")) : "xmm0");
  THROUGHPUT("vdivps zmm", DIV);
  THROUGHPUT("vsqrtps zmm", SQRT);
  THROUGHPUT("vmulps zmm", MUL);
  THROUGHPUT("vfmadd231ps zmm", FMA);
  THROUGHPUT("vaddps zmm", ADD);
  THROUGHPUT("vpermt2b zmm", PERM2B);
  THROUGHPUT("vpermt2b zmm, table from memory", PERM2B_MEM);
  THROUGHPUT("zmm load + vpermt2b from memory", LOAD_PERM2B);
  THROUGHPUT("zmm load", LOAD);
  THROUGHPUT("vpunpcklbw zmm", UNPACK);
  THROUGHPUT("vpaddd zmm", PADD);
  THROUGHPUT("vcmpps zmm -> mask", CMPK);
  THROUGHPUT("vpermt2b + vcmpps -> mask (a pair)", PERM_CMP);
  THROUGHPUT("vpermt2b + vmulps (a pair)", PERM_MUL);
  LATENCY("vpermt2b zmm", "vpermi2b %%zmm30, %%zmm31, %%zmm0\n\t");
  LATENCY("vpaddd zmm", "vpaddd %%zmm30, %%zmm0, %%zmm0\n\t");
  LATENCY("vmulps zmm", "vmulps %%zmm30, %%zmm0, %%zmm0\n\t");
  LATENCY("vfmadd231ps zmm", "vfmadd231ps %%zmm30, %%zmm31, %%zmm0\n\t");
  LATENCY("vdivps zmm", "vdivps %%zmm30, %%zmm0, %%zmm0\n\t");
  LATENCY("vsqrtps zmm", "vsqrtps %%zmm0, %%zmm0\n\t");
  LATENCY("vcmpps -> mask -> masked vpaddb", "vcmpps $13, %%zmm30, %%zmm0, %%k1\n\tvpaddb %%zmm30, %%zmm0, %%zmm0%{%%k1%}\n\t");
  return 0;
}
