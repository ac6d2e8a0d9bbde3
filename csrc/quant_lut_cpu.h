// The CPU kernels' nearest-code search for one map, built once per map contents
// and cached (a process uses one or two maps).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include <c10/util/Exception.h>

#include "adamw8_math.h"
#include "nearest_lut.h"
#include "cpu/kernel_args.h"

namespace adamw8 {

// nearest_lut.h's table for one map, one int32 entry per bucket (24,592 bytes: the vector
// kernels gather from it, csrc/cpu/kernels.h), with the forward steps the map needs measured
// once.  Same entries, same steps as the CUDA kernels' table.
//
// For a strictly increasing map the vector kernels take a shorter route to the same answer:
// code(x) is the number of thresholds thr[k] <= x (nearest_lut.h).  A bucket's entry is then code(its smallest value), and
// `span` comparisons with thr[entry], thr[entry + 1] finish it (measured here, 1 or 2 allowed:
// 1 for both dynamic maps).  The sign fix needs no lookup: the codes with a negative sign bit are
// [0, neg_count).  Built only when all of that holds; otherwise `thr` is null and the kernels
// use the forward steps.
class NearestCodeLut {
 public:
  explicit NearestCodeLut(const float* qmap) {
    std::memcpy(q_, qmap, sizeof q_);
    for (int k = 0; k < 256; ++k) {
      halves_[k] = static_cast<uint16_t>(float_bits(q_[k]) & 0xffffu);
      halves_[256 + k] = static_cast<uint16_t>(float_bits(q_[k]) >> 16);
      finite_ = finite_ && is_finite(q_[k]);
    }
    byte_planes(q_, planes_);
    for (int b = 0; b < kLutSize; ++b) {
      entry_[b] = lut_entry(q_, b);
      steps_ = std::max(steps_, lut_steps(q_, b));
    }
    build_thresholds();
  }

  int nearest(float x) const { return lut_finish(q_, entry_[lut_bucket(x)], steps_, x); }
  int steps() const { return steps_; }

  // The threshold route's answer (kernels.h): for the tests, which compare it with the exact rule.
  int nearest_by_thresholds(float x) const {
    const int e = code_entry_[lut_bucket(x)];
    return e + static_cast<int>(x >= thr_[e]) + (span_ == 2 ? static_cast<int>(x >= thr_[e + 1]) : 0);
  }
  bool has_thresholds() const { return thresholds_ok_; }
  // The packed route's answer (cpu::packed_code), for the tests.
  int nearest_packed(float x) const { return cpu::packed_code(packed_, x); }
  bool has_packed() const { return packed_ok_; }
  // The plane route's answer (cpu::plane_code) for |x| <= 1, for the tests.
  int nearest_by_planes(float x) const { return cpu::plane_code(plane_l1_, plane_code_, thr_, x); }
  bool has_planes() const { return planes_ok_; }
  int span() const { return span_; }

  bool built_for(const float* qmap) const { return std::memcmp(q_, qmap, sizeof q_) == 0; }

  // What the kernels read (the table lives as long as this object).
  cpu::QuantTable table() const {
    return cpu::QuantTable{q_, halves_, finite_, planes_, entry_, steps_, thresholds_ok_ ? code_entry_ : nullptr, thresholds_ok_ ? thr_ : nullptr,
                           span_, neg_count_, packed_ok_ ? packed_ : nullptr, packed_ok_ ? clamp_code_ : -1,
                           planes_ok_ ? plane_l1_ : nullptr, planes_ok_ ? plane_code_ : nullptr,
                           planes_ok_ ? plane_thr_ : nullptr, cpu::divide_quotients()};
  }

 private:
  void build_thresholds() {
    for (int k = 0; k < 255; ++k) {
      if (!(q_[k] < q_[k + 1])) return;  // not strictly increasing (or NaN): forward steps only
    }
    neg_count_ = 0;
    while (neg_count_ < 256 && signbit(q_[neg_count_])) ++neg_count_;
    for (int k = neg_count_; k < 256; ++k) {
      if (signbit(q_[k])) return;  // sign bits not a prefix
    }
    for (int k = 0; k < 255; ++k) thr_[k] = nearest_threshold(q_, k);
    // the entries past the last threshold compare false (NaN): no code beyond 255
    thr_[255] = thr_[256] = std::numeric_limits<float>::quiet_NaN();
    int span = 0;
    for (int b = 0; b < kLutSize; ++b) {
      float lo, hi;
      lut_bucket_range(b, lo, hi);
      const int c_lo = count_le(lo), c_hi = count_le(hi);
      code_entry_[b] = c_lo;
      span = std::max(span, c_hi - c_lo);
    }
    span_ = span;
    thresholds_ok_ = span <= 2;
    build_packed();
  }

  // The packed route (cpu::packed_code): with one threshold per bucket, a regular bucket holds
  // the floats of one 16-bit prefix, so the threshold comparison is one on x's low 16 bits
  // (nearest_lut.h's packed_entry, the CUDA kernels' entry, stored as one word: packed_word).
  // Not built when an entry is not valid (a threshold inside an edge bucket, or two in one).
  void build_packed() {
    if (!thresholds_ok_ || span_ != 1) return;
    for (int b = 0; b < kLutSize; ++b) {
      const PackedEntry e = packed_entry(q_, thr_, b);
      if (!e.ok) return;
      packed_[b] = packed_word(e);
    }
    packed_ok_ = true;
    clamp_code_ = sign_clamp_code(q_);
    build_planes();
  }

  // The plane route (cpu::plane_code), for the maps with the packed route: per sign and binade
  // the fewest mantissa bits (0 to 7) that leave at most one threshold in each bucket, all the
  // buckets within kPlaneCodes.  Binade 0 (|x| < 2^-30, many exponents) and binade 31 (1.0, the
  // largest |x| the route is given) take one bucket each.  Not built when a binade would need
  // more bits or the buckets do not fit.
  void build_planes() {
    int next = 0;
    for (int sign = 0; sign < 2; ++sign) {
      for (int k = 0; k < 32; ++k) {
        const int exponent = cpu::kPlaneBinadeLo + k;
        int bits = 0;
        while (bits <= 7 && !plane_binade_fits(sign, k, bits)) ++bits;
        if (bits > 7 || ((k == 0 || k == 31) && bits > 0) || next + (1 << bits) > cpu::kPlaneCodes) return;
        const int first = (next - (k << bits)) & 0x1ff;  // plus plane_offset >> (7 - bits) (cpu::plane_bucket)
        plane_l1_[32 * sign + k] = static_cast<uint16_t>(first | ((7 - bits) << cpu::kPlaneShift));
        for (int j = 0; j < (1 << bits); ++j) {
          float lo, hi;
          plane_bucket_range(sign, exponent, bits, j, lo, hi);
          plane_code_[next + j] = static_cast<uint8_t>(count_le(lo));
        }
        next += 1 << bits;
      }
    }
    byte_planes(thr_, plane_thr_);
    planes_ok_ = true;
  }

  // 256 floats as four byte planes, byte b of every entry at [256 * b, 256 * b + 256): the
  // avx512vbmi build's register tables (Planes256).
  static void byte_planes(const float* t, uint8_t* out) {
    for (int c = 0; c < 256; ++c) {
      for (int b = 0; b < 4; ++b) out[256 * b + c] = static_cast<uint8_t>(float_bits(t[c]) >> (8 * b));
    }
  }

  // The smallest and largest float of bucket j (of 2^bits) of a binade: binade 0 is every |x| below
  // 2^-30, binade 31 only 1.0.
  static void plane_bucket_range(int sign, int exponent, int bits, int j, float& lo, float& hi) {
    uint32_t mag_lo, mag_hi;
    if (exponent == cpu::kPlaneBinadeLo) {
      mag_lo = 0u;
      mag_hi = ((cpu::kPlaneBinadeLo + 1u) << 23) - 1u;
    } else if (exponent == 127) {
      mag_lo = mag_hi = 127u << 23;
    } else {
      mag_lo = (static_cast<uint32_t>(exponent) << 23) | (static_cast<uint32_t>(j) << (23 - bits));
      mag_hi = mag_lo | ((1u << (23 - bits)) - 1u);
    }
    lo = sign ? -bits_float(mag_hi) : bits_float(mag_lo);
    hi = sign ? -bits_float(mag_lo) : bits_float(mag_hi);
  }

  bool plane_binade_fits(int sign, int k, int bits) const {
    for (int j = 0; j < (1 << bits); ++j) {
      float lo, hi;
      plane_bucket_range(sign, cpu::kPlaneBinadeLo + k, bits, j, lo, hi);
      if (count_le(hi) - count_le(lo) > 1) return false;
    }
    return true;
  }

  int count_le(float x) const {  // thr_[0..254] is sorted (the map is strictly increasing)
    return static_cast<int>(std::upper_bound(thr_, thr_ + 255, x) - thr_);
  }

  float q_[256];  // its own copy: the table stays valid whatever happens to the tensor
  uint16_t halves_[512];
  alignas(64) uint8_t planes_[1024];
  bool finite_ = true;
  int steps_ = 0;
  int32_t entry_[kLutSize];
  bool thresholds_ok_ = false;
  int span_ = 0;
  int neg_count_ = 0;
  int32_t code_entry_[kLutSize];
  float thr_[257];
  bool packed_ok_ = false;
  int clamp_code_ = -1;
  uint32_t packed_[kLutSize];
  bool planes_ok_ = false;
  alignas(64) uint16_t plane_l1_[cpu::kPlaneL1] = {};
  alignas(64) uint8_t plane_code_[cpu::kPlaneCodes] = {};
  alignas(64) uint8_t plane_thr_[1024] = {};
};

inline std::shared_ptr<const NearestCodeLut> lut_for(const float* qmap) {
  static std::mutex mu;
  static std::vector<std::shared_ptr<const NearestCodeLut>> cache;
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& lut : cache) {
    if (lut->built_for(qmap)) return lut;
  }
  // The nearest-code rule searches the map (SPEC 2.1): a map out of order would give codes that
  // are not the nearest, and differ between routes.  Checked here, once per map: the CPU builds
  // its tables on the host (the CUDA kernels build theirs on the device, and cannot say so).
  for (int k = 0; k < 256; ++k) {
    TORCH_CHECK(!std::isnan(qmap[k]), "adamw8: qmap must be sorted in ascending order, got qmap[", k, "] = NaN");
    TORCH_CHECK(k == 0 || qmap[k - 1] <= qmap[k], "adamw8: qmap must be sorted in ascending order, got qmap[", k - 1,
                "] = ", qmap[k - 1], " > qmap[", k, "] = ", qmap[k]);
  }
  if (cache.size() >= 8) cache.erase(cache.begin());
  cache.push_back(std::make_shared<const NearestCodeLut>(qmap));
  return cache.back();
}

}  // namespace adamw8
