// The CPU kernels' nearest-code search for one map, built once per map contents
// and cached (a process uses one or two maps).
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

// nearest_lut.h's table, expanded to one entry per top-16-bit prefix of the
// float (65,536 bytes): a bucket of the table is one such prefix, or (below
// 2^-24 and from 1 up) a run of them, so each prefix takes its bucket's entry
// and the lookup needs no bucket arithmetic.  Same entries, same steps.
class NearestCodeLut {
 public:
  explicit NearestCodeLut(const float* qmap) {
    std::memcpy(q_, qmap, sizeof q_);
    uint8_t table[kLutSize];
    for (int b = 0; b < kLutSize; ++b) {
      table[b] = lut_entry(q_, b);
      steps_ = std::max(steps_, lut_steps(q_, b));
    }
    for (uint32_t k = 0; k < 65536u; ++k) prefix_[k] = table[lut_bucket(bits_float(k << 16))];
  }

  int nearest(float x) const {
    const int i = prefix_[float_bits(x) >> 16];
    return steps_ == 1 ? lut_finish(q_, i, 1, x) : lut_finish(q_, i, steps_, x);  // 1: the dynamic maps, unrolled
  }
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
  uint8_t prefix_[65536];
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
