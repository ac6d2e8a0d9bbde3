// The CPU kernels' tuning table as ops (adamw8/tuning.py reads and writes it; csrc/cpu/dispatch.cpp
// keeps it): adamw8::_cpu_tuning(int[] table) -> int[] sets the table when given one (2 ints per
// entry: capability id, grain) and returns the table in effect; adamw8::_cpu_capabilities() ->
// str[] names the builds this CPU can run, best last, and the one "auto" uses first;
// adamw8::_cpu_divide(int? mode) -> bool sets (1, 0, or -1 for the CPU's default) and returns
// whether the plane route divides (kernel_args.h, divide_quotients).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/kernel_args.h"

namespace adamw8 {
namespace {

std::vector<int64_t> cpu_tuning(c10::IntArrayRef table) {
  TORCH_CHECK(table.empty() || static_cast<int64_t>(table.size()) == 2 * cpu::kTuningEntries,
              "adamw8: the CPU tuning table has ", 2 * cpu::kTuningEntries, " ints (", cpu::kTuningEntries,
              " entries of capability id, grain), got ", table.size());
  if (!table.empty()) {
    try {
      cpu::set_tuning(table.data());
    } catch (const std::invalid_argument& e) {
      TORCH_CHECK_VALUE(false, e.what());
    }
  }
  std::vector<int64_t> out(2 * cpu::kTuningEntries);
  cpu::get_tuning(out.data());
  return out;
}

std::vector<std::string> cpu_capabilities() {
  std::vector<std::string> out{cpu::kernels().name};
  for (int c = 0; c < cpu::kNumCaps; ++c) {
    if (cpu::cap_supported(c)) out.emplace_back(cpu::kCapNames[c]);
  }
  return out;
}

bool cpu_divide(std::optional<int64_t> mode) {
  if (mode.has_value()) {
    TORCH_CHECK_VALUE(*mode >= -1 && *mode <= 1, "adamw8: the division mode must be 1 (divide), 0 (div_rn) or -1 (the "
                      "CPU's default), got ", *mode);
    cpu::set_divide_quotients(static_cast<int>(*mode));
  }
  return cpu::divide_quotients();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(adamw8, m) {
  m.def("_cpu_tuning(int[] table) -> int[]", &cpu_tuning);
  m.def("_cpu_capabilities() -> str[]", &cpu_capabilities);
  m.def("_cpu_divide(int? mode=None) -> bool", &cpu_divide);
}

}  // namespace adamw8
