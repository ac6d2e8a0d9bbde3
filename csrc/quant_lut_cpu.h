// The CPU's way to find the nearest code: a lookup table on the float's bits.
//
// adamw8_math.h's quantize_nearest does a binary descent (8 dependent loads);
// on the CPU, where it does not vectorise, that search dominated the 8-bit
// step.  Here the top 16 bits of the value (sign, exponent, 7 mantissa bits)
// index a table holding the descent's answer for the smallest value of that
// bucket; a fixed number of branch-free forward steps (the most any bucket
// needs, measured when the table is built: 1 for the dynamic maps) finishes
// it.  The answer is the same:
// the largest i <= 254 with map[i] <= x (0 below the map), then the nearest
// of map[i], map[i + 1] with ties to the lower code.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "adamw8_math.h"

namespace adamw8 {

class NearestCodeLut {
 public:
  explicit NearestCodeLut(const float* qmap) {
    std::memcpy(q_, qmap, sizeof q_);
    for (uint32_t k = 0; k < kBuckets; ++k) {
      const uint32_t lo_bits = k << kShift, hi_bits = lo_bits | ((1u << kShift) - 1u);
      // the bucket's smallest value: for negatives, the one of largest magnitude
      const bool neg = (k & (kBuckets >> 1)) != 0;
      const int lo = floor_index(from_bits(neg ? hi_bits : lo_bits));
      const int hi = floor_index(from_bits(neg ? lo_bits : hi_bits));
      start_[k] = static_cast<uint8_t>(lo);
      steps_ = std::max(steps_, hi - lo);
    }
  }

  int nearest(float x) const {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    int i = start_[bits >> kShift];
    if (steps_ == 1) {
      i += static_cast<int>(i < 254 && q_[i + 1] <= x);
    } else {
      for (int s = 0; s < steps_; ++s) i += static_cast<int>(i < 254 && q_[i + 1] <= x);
    }
    return i + static_cast<int>((x - q_[i]) > (q_[i + 1] - x));
  }

  bool built_for(const float* qmap) const { return std::memcmp(q_, qmap, sizeof q_) == 0; }

  // quantize_value (adamw8_math.h) for `len` values sharing one absmax.
  void quantize(const float* values, int64_t len, float absmax, bool is_signed, uint8_t* out) const {
    for (int64_t j = 0; j < len; ++j) {
      const float x = absmax > 0.0f ? values[j] / absmax : 0.0f;
      int code = nearest(x);
      if (is_signed) code = sign_fix(q_, code, values[j]);
      out[j] = static_cast<uint8_t>(code);
    }
  }

 private:
  // quantize_nearest's descent, clamped: the largest i <= 254 with map[i] <= v, else 0
  int floor_index(float v) const {
    int idx = 0;
    for (int stride = 128; stride > 0; stride >>= 1) idx += (q_[idx + stride] <= v) ? stride : 0;
    return idx < 254 ? idx : 254;
  }

  static float from_bits(uint32_t bits) {
    float v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }

  static constexpr int kShift = 16;
  static constexpr uint32_t kBuckets = 1u << 16;
  float q_[256];  // its own copy: the table stays valid whatever happens to the tensor
  int steps_ = 0;
  uint8_t start_[kBuckets];
};

// The table for a map, built once (about half a millisecond) and reused by
// later calls with the same map contents: a process uses one or two maps.
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
