// Which build of the CPU kernels runs (kernel_args.h): the tuning table's choice per format,
// dtype and size; "auto" is the best instruction set the CPU has, or the one
// ADAMW8_CPU_CAPABILITY names (base, avx2, avx512, avx512vbmi), as ATen's ATEN_CPU_CAPABILITY.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernel_args.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace adamw8 {
namespace cpu {
namespace {

bool supported(const char* name) {
  if (std::strcmp(name, "base") == 0) return true;
#ifdef ADAMW8_CPU_X86
  __builtin_cpu_init();
  if (std::strcmp(name, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
                                             __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("fma");
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
                      __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("fma");
  if (std::strcmp(name, "avx512") == 0) return avx512;
  if (std::strcmp(name, "avx512vbmi") == 0) return avx512 && __builtin_cpu_supports("avx512vbmi");
#endif
  return false;
}

// The build of capability id `cap` (kCapNames), null where this machine has none compiled.
const Kernels* by_id(int cap) {
  if (cap == 0) return &base::kKernels;
#ifdef ADAMW8_CPU_X86
  if (cap == 1) return &avx2::kKernels;
  if (cap == 2) return &avx512::kKernels;
  if (cap == 3) return &avx512vbmi::kKernels;
#endif
  return nullptr;
}

// The id "auto" stands for, chosen once: ADAMW8_CPU_CAPABILITY's build where this CPU runs it
// (a bad value must not kill the import: adamw8.tuning warns), else the best one.
int auto_cap() {
  static const int cap = [] {
    const char* env = std::getenv("ADAMW8_CPU_CAPABILITY");
    for (int c = 0; env != nullptr && c < kNumCaps; ++c) {
      if (std::strcmp(env, kCapNames[c]) == 0 && cap_supported(c)) return c;
    }
    for (int c = kNumCaps - 1; c > 0; --c) {
      if (cap_supported(c)) return c;
    }
    return 0;
  }();
  return cap;
}

std::atomic<int64_t> g_cap[kTuningEntries];
std::atomic<int64_t> g_grain[kTuningEntries];

struct TuningInit {
  TuningInit() {
    for (int i = 0; i < kTuningEntries; ++i) {
      g_cap[i].store(kCapAuto);
      g_grain[i].store(kDefaultGrain);
    }
  }
} g_tuning_init;

// AMD family 0x1a (Zen 5) and later: the CPUs the plane route's division was measured faster on.
bool cpu_divides_fast() {
#ifdef ADAMW8_CPU_X86
  static const bool fast = [] {
    __builtin_cpu_init();
    if (!__builtin_cpu_is("amd")) return false;
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
    const unsigned family = ((eax >> 8) & 0xfu) + (((eax >> 8) & 0xfu) == 0xfu ? (eax >> 20) & 0xffu : 0u);
    return family >= 0x1au;
  }();
  return fast;
#else
  return false;
#endif
}

std::atomic<int> g_divide{-1};

}  // namespace

bool divide_quotients() {
  const int mode = g_divide.load(std::memory_order_relaxed);
  return mode < 0 ? cpu_divides_fast() : mode != 0;
}

void set_divide_quotients(int mode) { g_divide.store(mode); }  // -1, 0 or 1: the op checks

const Kernels& kernels() { return *by_id(auto_cap()); }

bool cap_supported(int cap) { return cap >= 0 && cap < kNumCaps && by_id(cap) != nullptr && supported(kCapNames[cap]); }

Launch launch_for(int format, DType dtype, int64_t n) {
  const int i = tuning_index(format, dtype, n);
  int cap = static_cast<int>(g_cap[i].load(std::memory_order_relaxed));
  if (cap == kCapAuto) cap = auto_cap();
  // set_tuning admits only ids this CPU runs
  return Launch{by_id(cap), g_grain[i].load(std::memory_order_relaxed)};
}

void get_tuning(int64_t* out) {
  for (int i = 0; i < kTuningEntries; ++i) {
    out[2 * i] = g_cap[i].load();
    out[2 * i + 1] = g_grain[i].load();
  }
}

void set_tuning(const int64_t* in) {
  for (int i = 0; i < kTuningEntries; ++i) {
    const int64_t cap = in[2 * i], grain = in[2 * i + 1];
    if (cap != kCapAuto && !(cap >= 0 && cap < kNumCaps)) {
      throw std::invalid_argument("adamw8: tuning entry " + std::to_string(i) + ": unknown capability id " +
                                  std::to_string(cap) + " (expected -1 for auto, 0 base, 1 avx2, 2 avx512, 3 avx512vbmi)");
    }
    if (cap != kCapAuto && !cap_supported(static_cast<int>(cap))) {
      throw std::invalid_argument(std::string("adamw8: tuning entry ") + std::to_string(i) + ": this CPU cannot run the '" +
                                  kCapNames[cap] + "' kernels");
    }
    if (grain < 1) {
      throw std::invalid_argument("adamw8: tuning entry " + std::to_string(i) + ": grain must be >= 1, got " +
                                  std::to_string(grain));
    }
  }
  for (int i = 0; i < kTuningEntries; ++i) {
    g_cap[i].store(in[2 * i]);
    g_grain[i].store(in[2 * i + 1]);
  }
}

}  // namespace cpu
}  // namespace adamw8
