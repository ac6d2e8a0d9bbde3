// The CPU kernels' nearest-code table: nearest_lut.h's table for one map, built
// once per map contents and cached (a process uses one or two maps).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "adamw8_math.h"
#include "nearest_lut.h"

namespace adamw8 {

class NearestCodeLut {
 public:
  explicit NearestCodeLut(const float* qmap) {
    std::memcpy(q_, qmap, sizeof q_);
    for (int b = 0; b < kLutSize; ++b) {
      table_[b] = lut_entry(q_, b);
      steps_ = std::max(steps_, lut_steps(q_, b));
    }
  }

  int nearest(float x) const { return lut_nearest(table_, q_, steps_, x); }
  int steps() const { return steps_; }

  bool built_for(const float* qmap) const { return std::memcmp(q_, qmap, sizeof q_) == 0; }

  // quantize_value (adamw8_math.h) for `len` values sharing one absmax.
  void quantize(const float* values, int64_t len, float absmax, bool is_signed, uint8_t* out) const {
    for (int64_t j = 0; j < len; ++j) {
      out[j] = static_cast<uint8_t>(finish_code(q_, nearest(normalize(values[j], absmax)), values[j], is_signed));
    }
  }

 private:
  float q_[256];  // its own copy: the table stays valid whatever happens to the tensor
  int steps_ = 0;
  uint8_t table_[kLutSize];
};

inline std::shared_ptr<const NearestCodeLut> lut_for(const float* qmap) {
  static std::mutex mu;
  static std::vector<std::shared_ptr<const NearestCodeLut>> cache;
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& lut : cache) {
    if (lut->built_for(qmap)) return lut;
  }
  if (cache.size() >= 8) cache.erase(cache.begin());
  cache.push_back(std::make_shared<const NearestCodeLut>(qmap));
  return cache.back();
}

}  // namespace adamw8
