// The argument records of the CPU kernels (csrc/cpu/kernels.h), one per loop, and the table of
// entry points each instruction set's build provides.  No ATen here: the per-instruction-set
// translation units include only this, adamw8_math.h, nearest_lut.h and the c10 scalar types.
#pragma once

#include <cstdint>

#include "../adamw8_math.h"
#include "../nearest_lut.h"

namespace adamw8 {
namespace cpu {

enum class DType : int { kFloat, kDouble, kBFloat16, kHalf };

// A map and its nearest-code tables (nearest_lut.h, quant_lut_cpu.h), int32 entries so every
// lookup is a vector gather.  `steps`: the forward steps the map needs (1 for the dynamic maps).
// `thr` (null when the map does not allow it): the threshold route, code = e + (x >= thr[e]) +
// (span 2 only: x >= thr[e + 1]), e = code_entry[bucket], and the codes with a negative sign bit
// are [0, neg_count).
struct QuantTable {
  const float* qmap;     // 256 floats
  const uint16_t* halves;  // 512 words: the low 16 bits of each qmap entry, then the high (dequantize)
  bool finite;             // every qmap entry finite
  const uint8_t* planes;   // 1024 bytes: byte b of every qmap entry, b = 0..3 (the avx512vbmi dequantize)
  const int32_t* entry;  // kLutSize entries
  int steps;
  const int32_t* code_entry;  // kLutSize entries
  const float* thr;           // 257 floats
  int span;                   // 1 or 2 (1 for the dynamic maps)
  int neg_count;
  const uint32_t* packed;     // kLutSize entries, or null: the packed route (packed_code)
  // The signed map's sign fix as a clamp (the fused step's bounded route, kernels.h): a value
  // with its sign bit set takes min(code, clamp_code); -1 where the map does not allow it
  // (adamw8_math.h, sign_clamp_code).
  int clamp_code;
  // The plane route of the bounded quantizer (plane_code; null where the map does not allow it):
  // kPlaneL1 words, kPlaneCodes bytes, and the thresholds thr[0..255] as four byte planes (byte b
  // of every threshold, b = 0..3), the avx512vbmi build's register tables.
  const uint16_t* plane_l1;
  const uint8_t* plane_code;
  const uint8_t* plane_thr;
  // The plane route's quotient value / absmax by the vector divider instead of div_rn's three
  // multiply-adds (the same bits): divide_quotients(), per call.
  bool divide;
};

// The plane route: code(x) = the number of thresholds <= x (nearest_lut.h) for |x| <= 1, through
// tables small enough to live in AVX-512 registers, so that 64 values take a few byte permutes
// where the packed route gathers 16 words at a time.  x's top 16 bits (sign, exponent, 7 mantissa
// bits) pick a level-1 entry by sign and binade k = max(exponent - 96, 0) (k = 0 holds every
// |x| < 2^-30, k = 31 only 1.0); the entry gives the binade's first bucket (9 bits) and how many
// of the 7 mantissa bits split it (7 - shift, 0 to 7, the fewest that leave at most one threshold
// in a bucket; quant_lut_cpu.h measures them).  The bucket's code c0 = the number of thresholds
// <= its first value, and code = c0 + (x >= thr[c0]) (thr[255] is NaN: never).
constexpr int kPlaneBinadeLo = 96;  // biased exponents up to this one share binade 0
constexpr int kPlaneL1 = 64;        // 2 signs x 32 binades
constexpr int kPlaneCodes = 512;    // buckets, both signs
constexpr int kPlaneShift = 12;     // a level-1 entry: first bucket | shift << kPlaneShift

// x's binade and mantissa bits as one number, k << 7 | the top 7 mantissa bits (0 for every
// |x| below 2^-30; its mantissa bits are then meaningless and binade 0 is one bucket)
ADAMW8_HD uint32_t plane_offset(uint32_t top16) {
  const uint32_t mag = top16 & 0x7fffu, lo = static_cast<uint32_t>(kPlaneBinadeLo) << 7;
  return mag > lo ? mag - lo : 0u;
}

ADAMW8_HD int plane_l1_index(uint32_t top16) {
  return static_cast<int>(top16 >> 15) * 32 + static_cast<int>(plane_offset(top16) >> 7);
}

// The bucket: the level-1 entry holds the binade's first bucket less k << (7 - shift), modulo
// 512, so adding plane_offset >> shift gives first bucket + (mantissa bits >> shift).
ADAMW8_HD int plane_bucket(uint32_t l1_entry, uint32_t top16) {
  return static_cast<int>((l1_entry + (plane_offset(top16) >> (l1_entry >> kPlaneShift))) & 0x1ffu);
}

// The plane route's answer for |x| <= 1 (the vector form is avx512_lookup.h's quantize_planes).
inline int plane_code(const uint16_t* l1, const uint8_t* codes, const float* thr, float x) {
  const uint32_t top16 = float_bits(x) >> 16;
  const int c0 = codes[plane_bucket(l1[plane_l1_index(top16)], top16)];
  return c0 + static_cast<int>(x >= thr[c0]);
}

// The nearest code of x (normalised, not NaN) by the packed route (nearest_lut.h's packed_word,
// one per bucket): one lookup, an add and a shift.  The same arithmetic in every build.
ADAMW8_HD int packed_code(const uint32_t* packed, float x) { return packed_word_nearest(packed[lut_bucket(x)], x); }

struct Step32Args {
  DType dtype;
  void* p;
  const void* g;
  float *s1, *s2, *s3;  // s3: amsgrad's max(v), or null
  AdamScalars sc;
  bool has_scale;
  float grad_scale, gnorm_scale;
};

struct Step8Args {
  DType dtype;
  void* p;
  const void* g;
  uint8_t *c1, *c2, *c3;  // c3: amsgrad's max(v), or null
  float *a1, *a2, *a3;    // absmax per block (block_wise) or one per tensor
  QuantTable t1, t2;      // the signed map (m) and the unsigned one (v)
  int64_t n;
  bool block_wise;
  AdamScalars sc;
  bool has_scale;
  float grad_scale, gnorm_scale;
};

// One instruction set's build of kernels.h.
struct Kernels {
  const char* name;
  void (*step32)(const Step32Args&, int64_t begin, int64_t end);
  // blocks [cb, ce); `global`: the tensor's new absmax (block_wise=False), else unused
  void (*step8)(const Step8Args&, int64_t cb, int64_t ce, const float* global);
  // block_wise=False's first pass: folds the new maxima of blocks [cb, ce) into mx (float bits
  // as int32: non-negative floats order as their bits)
  void (*reduce8)(const Step8Args&, int64_t cb, int64_t ce, int32_t* mx);
  void (*quantize)(const QuantTable&, const float* values, int64_t len, float absmax, bool is_signed, uint8_t* out);
};

// The builds (kernels_<isa>.cpp); the x86 ones exist only on x86 with gcc (they rely on
// `#pragma GCC target`, which clang does not implement: a clang build runs the base one).
namespace base { extern const Kernels kKernels; }
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ADAMW8_CPU_X86 1
namespace avx2 { extern const Kernels kKernels; }
namespace avx512 { extern const Kernels kKernels; }
namespace avx512vbmi { extern const Kernels kKernels; }
#endif

// The build chosen for "auto": the best the CPU supports, or ADAMW8_CPU_CAPABILITY's (base,
// avx2, avx512, avx512vbmi) when set (dispatch.cpp).
const Kernels& kernels();

// Whether the plane route (avx512vbmi) divides: on a Zen 5 core (AMD family 0x1a) the divider
// takes value / absmax for 64 values while the shuffles run, and the step was 4-6% faster than
// with div_rn; elsewhere div_rn, whose multiply-adds cost less where division is slow.
// set_divide_quotients(1 or 0) forces either, -1 goes back to the CPU's default (the op
// adamw8::_cpu_divide checks the mode).
bool divide_quotients();
void set_divide_quotients(int mode);

// Capability ids in the tuning table: -1 auto, then these.
constexpr int kCapAuto = -1;
constexpr const char* kCapNames[] = {"base", "avx2", "avx512", "avx512vbmi"};
constexpr int kNumCaps = 4;
bool cap_supported(int cap);  // compiled here and run by this CPU

// The CPU kernels' tuning (adamw8/tuning.py, profiles/): for each state format (0: 32-bit,
// 1: 8-bit), parameter dtype and size bucket, which build runs and how many elements one
// parallel task takes.  The defaults: auto and 4096.
constexpr int kFormats = 2, kDTypes = 4, kSizeBuckets = 4;
constexpr int kTuningEntries = kFormats * kDTypes * kSizeBuckets;
constexpr int64_t kDefaultGrain = 4096;
// element counts below 2^14, 2^18, 2^22, and the rest
inline int size_bucket(int64_t n) { return n < (int64_t{1} << 14) ? 0 : n < (int64_t{1} << 18) ? 1 : n < (int64_t{1} << 22) ? 2 : 3; }
// The entry of (format, dtype, elements), in the order of both tables (the CPU's here, the CUDA
// glue's in csrc/cuda/fused_step_cuda.cpp) and of adamw8/tuning.py's keys.
inline int tuning_index(int format, DType dtype, int64_t n) {
  return (format * kDTypes + static_cast<int>(dtype)) * kSizeBuckets + size_bucket(n);
}

struct Launch {
  const Kernels* kernels;  // "auto" resolved
  int64_t grain;
};
Launch launch_for(int format, DType dtype, int64_t n);

// The table as 2 ints per entry (capability id, grain), format-major, then dtype, then bucket.
// set_tuning checks every entry before it changes anything (a bad one throws).
void get_tuning(int64_t* out);
void set_tuning(const int64_t* in);

}  // namespace cpu
}  // namespace adamw8
