// The nearest-code search of the 8-bit state as a lookup table on the float's
// bits, shared by the CPU kernels and the CUDA kernels (host and device code).
//
// A normalised value x = state / absmax is looked up by its sign, its exponent
// and the top 7 bits of its mantissa: the table holds, for each such bucket, the
// exact rule's floor index (the largest i <= 254 with map[i] <= x, 0 below the
// map) of the bucket's smallest value; a few branch-free forward steps (the most
// any bucket of the map needs, measured when the table is built: 1 for both
// dynamic maps) reach the floor index of x, and the nearest of map[i] and
// map[i + 1] (ties to the lower code) finishes it.  The answer equals
// quantize_nearest (adamw8_math.h, a binary descent) for every float but NaN
// (normalize() never passes one); tests/test_emulation.py checks all 2^32 bit
// patterns for both maps.
//
// Buckets per sign: one for |x| < 2^-24 (no dynamic-map value is that small),
// 128 per binade from 2^-24 to 1, and one for |x| >= 1 (inf included).  A map
// with values in the tiny bucket still gets exact answers, with more steps.
// 6,148 bytes per map: the CUDA kernels keep both maps' tables in shared memory.
#pragma once

#include <cstdint>
#include <cstring>

#include "adamw8_math.h"

namespace adamw8 {

constexpr int kLutMantBits = 7;
constexpr int kLutShift = 23 - kLutMantBits;                 // bits below the key
constexpr uint32_t kLutKeyLo = (127u - 24u) << kLutMantBits;  // key of 2^-24
constexpr uint32_t kLutKeyOne = 127u << kLutMantBits;         // key of 1.0
constexpr int kLutHalf = static_cast<int>(kLutKeyOne - kLutKeyLo) + 2;  // buckets per sign
constexpr int kLutSize = 2 * kLutHalf;                        // 6,148

ADAMW8_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

ADAMW8_HD float bits_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

// Bucket of x: [0, kLutHalf) for a clear sign bit, [kLutHalf, kLutSize) for a set one.
ADAMW8_HD int lut_bucket(float x) {
  const uint32_t bits = float_bits(x);
  const uint32_t key = (bits & 0x7fffffffu) >> kLutShift;
  int b = key < kLutKeyLo ? 0 : static_cast<int>(key - kLutKeyLo) + 1;
  b = b < kLutHalf - 1 ? b : kLutHalf - 1;
  return (bits >> 31) ? b + kLutHalf : b;
}

// The smallest and the largest float of bucket b.
ADAMW8_HD void lut_bucket_range(int b, float& lo, float& hi) {
  const bool neg = b >= kLutHalf;
  const int k = neg ? b - kLutHalf : b;
  uint32_t mag_lo, mag_hi;
  if (k == 0) {
    mag_lo = 0u;
    mag_hi = (kLutKeyLo << kLutShift) - 1u;
  } else if (k == kLutHalf - 1) {
    mag_lo = kLutKeyOne << kLutShift;
    mag_hi = 0x7f800000u;  // inf
  } else {
    mag_lo = (kLutKeyLo + static_cast<uint32_t>(k - 1)) << kLutShift;
    mag_hi = mag_lo | ((1u << kLutShift) - 1u);
  }
  lo = neg ? -bits_float(mag_hi) : bits_float(mag_lo);
  hi = neg ? -bits_float(mag_lo) : bits_float(mag_hi);
}

// Entry b of the table: the floor index of the bucket's smallest value.
ADAMW8_HD uint8_t lut_entry(const float* qmap, int b) {
  float lo, hi;
  lut_bucket_range(b, lo, hi);
  return static_cast<uint8_t>(floor_index(qmap, lo));
}

// The forward steps bucket b needs (the CPU measures the most once per map).
ADAMW8_HD int lut_steps(const float* qmap, int b) {
  float lo, hi;
  lut_bucket_range(b, lo, hi);
  return floor_index(qmap, hi) - floor_index(qmap, lo);
}

// The nearest of map[i] and map[i + 1] (ties to the lower code), i the floor index of x.
ADAMW8_HD int nearest_from_floor(const float* qmap, int i, float x) {
  const float lo = qmap[i];
  const float hi = qmap[i + 1];
  return i + static_cast<int>((x - lo) > (hi - x));
}

// The nearest code of x from its table entry `i`, with `steps` branch-free
// forward steps: exact when `steps` is at least the map's largest lut_steps (the
// CPU measures it when it builds its table: 1 for the dynamic maps).
ADAMW8_HD int lut_finish(const float* qmap, int i, int steps, float x) {
  for (int s = 0; s < steps; ++s) i += static_cast<int>(i < 254 && qmap[i + 1] <= x);
  return nearest_from_floor(qmap, i, x);
}

// The nearest code of x through the table without a measured step count (the
// CUDA kernels, which build the table per block): the forward search runs until
// it reaches the floor index.
ADAMW8_HD int lut_nearest_search(const uint8_t* table, const float* qmap, float x) {
  int i = table[lut_bucket(x)];
  while (i < 254 && qmap[i + 1] <= x) ++i;
  return nearest_from_floor(qmap, i, x);
}

}  // namespace adamw8
