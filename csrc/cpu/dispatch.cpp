// Which build of the CPU kernels runs (kernel_args.h): the tuning table's choice per format,
// dtype and size; "auto" is the best instruction set the CPU has, or the one
// ADAMW8_CPU_CAPABILITY names (base, avx2, avx512), as ATen's ATEN_CPU_CAPABILITY.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernel_args.h"

namespace adamw8 {
namespace cpu {
namespace {

bool supported(const char* name) {
  if (std::strcmp(name, "base") == 0) return true;
#ifdef ADAMW8_CPU_X86
  __builtin_cpu_init();
  if (std::strcmp(name, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
                                             __builtin_cpu_supports("bmi2");
  if (std::strcmp(name, "avx512") == 0) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2");
  }
#endif
  return false;
}

const Kernels* by_name(const char* name) {
  if (std::strcmp(name, "base") == 0) return &base::kKernels;
#ifdef ADAMW8_CPU_X86
  if (std::strcmp(name, "avx2") == 0) return &avx2::kKernels;
  if (std::strcmp(name, "avx512") == 0) return &avx512::kKernels;
#endif
  return nullptr;
}

const Kernels* initial() {
  const char* env = std::getenv("ADAMW8_CPU_CAPABILITY");
  if (env != nullptr && *env != '\0') {
    // a bad value must not kill the import: the best build runs (adamw8.tuning warns)
    if (by_name(env) != nullptr && supported(env)) return by_name(env);
  }
  for (const char* name : {"avx512", "avx2"}) {
    if (by_name(name) != nullptr && supported(name)) return by_name(name);
  }
  return &base::kKernels;
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

}  // namespace

const Kernels& kernels() {
  static const Kernels* const k = initial();
  return *k;
}

bool cap_supported(int cap) { return cap >= 0 && cap < kNumCaps && supported(kCapNames[cap]); }

const Kernels* cap_kernels(int cap) { return cap_supported(cap) ? by_name(kCapNames[cap]) : nullptr; }

Launch launch_for(int format, DType dtype, int64_t n) {
  const int i = (format * kDTypes + static_cast<int>(dtype)) * kSizeBuckets + size_bucket(n);
  const int cap = static_cast<int>(g_cap[i].load(std::memory_order_relaxed));
  const int64_t grain = g_grain[i].load(std::memory_order_relaxed);
  if (cap == kCapAuto) {
    const Kernels& k = kernels();
    int id = 0;
    for (int c = 0; c < kNumCaps; ++c) {
      if (std::strcmp(kCapNames[c], k.name) == 0) id = c;
    }
    return Launch{&k, id, grain};
  }
  return Launch{cap_kernels(cap), cap, grain};  // set_tuning admits only supported ids
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
                                  std::to_string(cap) + " (expected -1 for auto, 0 base, 1 avx2, 2 avx512)");
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
