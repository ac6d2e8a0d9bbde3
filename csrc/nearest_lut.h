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

// The bucket of |x| within its sign's half, before the upper clamp (below 2^-24: 0).
ADAMW8_HD int lut_half_bucket(uint32_t bits) {
  const int b = static_cast<int>((bits & 0x7fffffffu) >> kLutShift) - static_cast<int>(kLutKeyLo) + 1;
  return b > 0 ? b : 0;
}

// Bucket of x: [0, kLutHalf) for a clear sign bit, [kLutHalf, kLutSize) for a set one.
ADAMW8_HD int lut_bucket(float x) {
  const uint32_t bits = float_bits(x);
  int b = lut_half_bucket(bits);
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

// ------------------------------------------------------------- the thresholds
// For a strictly increasing map the nearest code is a step function of x: with
// ties to the lower code, the rule (x - q[k]) > (q[k+1] - x) is monotone in x (a
// rounded difference never decreases as x grows), so code(x) is the number of
// thresholds thr[k] <= x, where thr[k] is the smallest float for which the rule
// moves past code k.  The CPU kernels' threshold and packed routes
// (quant_lut_cpu.h) and the CUDA kernels' packed route below stand on it.

// Floats in order as unsigned keys (negative ones reversed), for the threshold search.
ADAMW8_HD uint32_t order_key(float x) {
  const uint32_t b = float_bits(x);
  return (b >> 31) ? ~b : (b | 0x80000000u);
}
ADAMW8_HD float order_unkey(uint32_t k) { return bits_float((k >> 31) ? (k & 0x7fffffffu) : ~k); }

// thr[k] of a strictly increasing map, k in [0, 254]: the smallest x in (q[k], q[k+1]] with
// (x - q[k]) > (q[k+1] - x) (true at q[k+1], false at q[k]), by bisection over the keys.
ADAMW8_HD float nearest_threshold(const float* q, int k) {
  uint32_t lo = order_key(q[k]), hi = order_key(q[k + 1]);
  while (hi - lo > 1) {
    const uint32_t mid = lo + (hi - lo) / 2;
    const float x = order_unkey(mid);
    if ((x - q[k]) > (q[k + 1] - x)) hi = mid; else lo = mid;
  }
  return order_unkey(hi);
}

// ------------------------------------------------------------- the packed route
// One entry per bucket, the code and a 16-bit word (the CPU and CUDA kernels store it as one
// word, packed_word): `code` is code(the bucket's smallest value), and `low` is one less than
// the low 16 bits of a threshold inside the bucket, sign-adjusted (x ^ 0xffff for negative
// floats, so a larger x compares larger), or 0xffff for none.  A regular bucket holds the
// floats of one 16-bit prefix, so x >= thr is then the 16-bit comparison x > low; a threshold
// inside is larger than the bucket's smallest value, so its adjusted bits are at least 1 and
// `low` at most 0xfffe, and no x compares above 0xffff.  Valid for a bucket that holds at most
// one threshold, and none when it is one of the two edge buckets (which span many prefixes):
// packed_entry says so; the kernels take another route otherwise.
struct PackedEntry {
  uint8_t code;
  uint16_t low;
  bool ok;
};

ADAMW8_HD uint32_t packed_low(uint32_t bits) { return (bits ^ (0u - (bits >> 31))) & 0xffffu; }

// Entry of bucket b for a strictly increasing map q with thresholds thr[0..254].
ADAMW8_HD PackedEntry packed_entry(const float* q, const float* thr, int b) {
  float lo, hi;
  lut_bucket_range(b, lo, hi);
  const int e = quantize_nearest(q, lo);  // = the number of thresholds <= lo
  const int k = b >= kLutHalf ? b - kLutHalf : b;
  const bool edge = k == 0 || k == kLutHalf - 1;
  const bool inside = e < 255 && lut_bucket(thr[e]) == b;
  const bool second = inside && e + 1 < 255 && lut_bucket(thr[e + 1]) == b;
  PackedEntry out;
  out.code = static_cast<uint8_t>(e);
  out.low = static_cast<uint16_t>(inside ? packed_low(float_bits(thr[e])) - 1u : 0xffffu);
  out.ok = !(second || (inside && edge));
  return out;
}

// The entry as one word (a vector gather reads 32 bits a lane; one shared-memory read on the
// GPU): code << 16 plus 0xffff - low, so that adding x's adjusted low bits carries into the code
// exactly when they exceed `low`, and the nearest code is (word + packed_low(x)) >> 16: an add
// and a shift.  No carry past the code: the sum is below (code + 2) << 16.
ADAMW8_HD uint32_t packed_word(const PackedEntry& e) {
  return (static_cast<uint32_t>(e.code) << 16) + (0xffffu - e.low);
}

ADAMW8_HD int packed_word_nearest(uint32_t word, float x) {
  return static_cast<int>((word + packed_low(float_bits(x))) >> 16);
}

// ------------------------------------------------- the CUDA kernels' bounded route
// The update kernels quantize their states (finite, |value| <= absmax, absmax in [2^-64, 2^64])
// through the packed words in shared memory, with as few instructions as the words allow:
// - map 1's table keeps its set-sign half from kLutNegBase, a power of two, so a bucket's
//   byte offset takes the sign as an or (packed_slot maps lut_bucket's index there);
// - the sign fix of the bounded route (sign_clamp_code: a value with its sign bit set gets
//   min(code, clamp)) is folded into that half (packed_entry_clamped): the code of a set sign
//   bit is a step function of x still, so the clamp costs nothing per value;
// - the word is read at a byte offset from x's bits (packed_half_offset: a mask, a shifted add
//   and a max), and the code stays in bits 16..23 of word + low bits (packed_sum_*), which the
//   kernels pack into bytes with byte permutes; no shift.
constexpr int kLutNegBase = 4096;
static_assert(kLutNegBase >= kLutHalf && (kLutNegBase & (kLutNegBase - 1)) == 0, "the sign half is an or");
constexpr int kLutWords1 = kLutNegBase + kLutHalf;  // map 1's table, both halves

ADAMW8_HD int packed_slot(int b) { return b < kLutHalf ? b : b - kLutHalf + kLutNegBase; }

// packed_entry with the sign clamp folded into the set-sign half (clamp < 0: none). A bucket
// whose code reaches the clamp holds it, with no threshold inside; one below keeps its entry
// (its threshold, if any, moves it at most to the clamp).  The non-bounded route's finish_code
// leaves such codes as they are (sign_fix: a negative value with a sign-set code), so both
// routes share the table.
ADAMW8_HD PackedEntry packed_entry_clamped(const float* q, const float* thr, int b, int clamp) {
  PackedEntry e = packed_entry(q, thr, b);
  if (clamp >= 0 && b >= kLutHalf && e.code >= clamp) {
    e.code = static_cast<uint8_t>(clamp);
    e.low = 0xffffu;
    e.ok = true;
  }
  return e;
}

// Byte offset of the bucket of |x| (bits xb, |x| <= 1) in its sign's half: 4 * lut_half_bucket,
// whose upper clamp |x| <= 1 never reaches.
ADAMW8_HD uint32_t packed_half_offset(uint32_t xb) {
  const int k4 = static_cast<int>((xb & 0x7fff0000u) >> (kLutShift - 2)) - static_cast<int>((kLutKeyLo - 1u) << 2);
  return static_cast<uint32_t>(k4 > 0 ? k4 : 0);
}

ADAMW8_HD uint32_t packed_word_at(const uint32_t* words, uint32_t byte_offset) {
  return *reinterpret_cast<const uint32_t*>(reinterpret_cast<const char*>(words) + byte_offset);
}

// Map 1 (signed; word1 from packed_entry_clamped): vb the value's bits, xb those of
// div_rn(value, absmax, 1 / absmax).  The half is the value's sign: it differs from x's only for
// value -0 (div_rn gives +0), and the low bits (xb ^ s) are then those of -0, whose code (that
// of +0, clamped) is the one finish_code gives -0.  Code in bits 16..23.
ADAMW8_HD uint32_t packed_sum_signed(const uint32_t* word1, uint32_t vb, uint32_t xb) {
  const uint32_t s = static_cast<uint32_t>(static_cast<int32_t>(vb) >> 31);
  const uint32_t off = packed_half_offset(xb) | (s & static_cast<uint32_t>(4 * kLutNegBase));
  return packed_word_at(word1, off) + ((xb ^ s) & 0xffffu);
}

// Map 2 (unsigned: v and amsgrad's max, never negative, not even -0, so x's sign bit is
// clear): positive_floor as code 1 where the code is 0 and the value is not +0.  Code in bits
// 16..23.
ADAMW8_HD uint32_t packed_sum_unsigned(const uint32_t* word2, uint32_t vb, uint32_t xb) {
  const uint32_t sum = packed_word_at(word2, packed_half_offset(xb)) + (xb & 0xffffu);
  return vb != 0u && sum < 0x10000u ? 0x10000u : sum;
}

}  // namespace adamw8
