// AVX-512 versions of the 8-bit state's map lookups (dequantize, and the threshold and packed
// routes of the nearest-code search, quant_lut_cpu.h), for the avx512 build of csrc/cpu/kernels.h.
//
// Dequantize reads a 256-entry float table from registers: the high and the low 16 bits of its
// entries as two 256-word tables (8 zmm each), each read with four vpermt2w (64 words apiece)
// and a blend tree on the code's top two bits, 32 codes at a time, then interleaved back into
// floats; the avx512vbmi build reads four byte planes with vpermi2b, 64 codes at a time
// (Planes256), and quantizes the fused step's states by the plane route (quantize_planes, a
// block's four chunks of 64 values per load of its tables) with no gather at all.  The threshold
// route still reads its thresholds as floats (Table256: 32 entries per vpermt2ps); only the
// bucket tables (3,074 entries a sign) are gathered.  Same
// operations, same order as the portable loops in kernels.h, so the same bits.
//
// Included by kernels.h inside the avx512 namespace, under its target pragma.
#pragma once

namespace lookup512 {

struct Table256 {
  __m512 r[16];
  explicit Table256(const float* t) {
    for (int k = 0; k < 16; ++k) r[k] = _mm512_loadu_ps(t + 16 * k);
  }
  // t[idx & 255] for each lane
  __m512 operator()(__m512i idx) const {
    const __m512 a0 = _mm512_permutex2var_ps(r[0], idx, r[1]);
    const __m512 a1 = _mm512_permutex2var_ps(r[2], idx, r[3]);
    const __m512 a2 = _mm512_permutex2var_ps(r[4], idx, r[5]);
    const __m512 a3 = _mm512_permutex2var_ps(r[6], idx, r[7]);
    const __m512 a4 = _mm512_permutex2var_ps(r[8], idx, r[9]);
    const __m512 a5 = _mm512_permutex2var_ps(r[10], idx, r[11]);
    const __m512 a6 = _mm512_permutex2var_ps(r[12], idx, r[13]);
    const __m512 a7 = _mm512_permutex2var_ps(r[14], idx, r[15]);
    const __mmask16 b5 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(32));
    const __mmask16 b6 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(64));
    const __mmask16 b7 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(128));
    const __m512 c0 = _mm512_mask_blend_ps(b5, a0, a1);
    const __m512 c1 = _mm512_mask_blend_ps(b5, a2, a3);
    const __m512 c2 = _mm512_mask_blend_ps(b5, a4, a5);
    const __m512 c3 = _mm512_mask_blend_ps(b5, a6, a7);
    const __m512 d0 = _mm512_mask_blend_ps(b6, c0, c1);
    const __m512 d1 = _mm512_mask_blend_ps(b6, c2, c3);
    return _mm512_mask_blend_ps(b7, d0, d1);
  }
};

// A 256-entry float table as two word tables (its entries' high and low halves), read 32 codes
// at a time.
struct Table256W {
  __m512i hi[8], lo[8];
  explicit Table256W(const uint16_t* halves) {  // QuantTable::halves: 256 low halves, then 256 high
    for (int k = 0; k < 8; ++k) {
      lo[k] = _mm512_loadu_si512(halves + 32 * k);
      hi[k] = _mm512_loadu_si512(halves + 256 + 32 * k);
    }
  }
  // r[idx & 255] for 32 word lanes, given idx's bit-6 and bit-7 masks
  static __m512i pick(const __m512i* r, __m512i idx, __mmask32 b6, __mmask32 b7) {
    const __m512i a0 = _mm512_permutex2var_epi16(r[0], idx, r[1]);
    const __m512i a1 = _mm512_permutex2var_epi16(r[2], idx, r[3]);
    const __m512i a2 = _mm512_permutex2var_epi16(r[4], idx, r[5]);
    const __m512i a3 = _mm512_permutex2var_epi16(r[6], idx, r[7]);
    const __m512i c0 = _mm512_mask_blend_epi16(b6, a0, a1);
    const __m512i c1 = _mm512_mask_blend_epi16(b6, a2, a3);
    return _mm512_mask_blend_epi16(b7, c0, c1);
  }
  // The entries of 32 codes (word lanes, in the order `order` makes): codes 0-15 to f0, 16-31 to f1.
  void operator()(__m512i idx, __m512i& f0, __m512i& f1) const {
    const __mmask32 b6 = _mm512_test_epi16_mask(idx, _mm512_set1_epi16(64));
    const __mmask32 b7 = _mm512_test_epi16_mask(idx, _mm512_set1_epi16(128));
    const __m512i h = pick(hi, idx, b6, b7), l = pick(lo, idx, b6, b7);
    f0 = _mm512_unpacklo_epi16(l, h);
    f1 = _mm512_unpackhi_epi16(l, h);
  }
  // The word order the interleave wants: unpacklo/unpackhi join words 8L + 0..3 / 8L + 4..7 of each
  // 128-bit lane L, so word 8L + i must hold code 4L + i and word 8L + 4 + i code 16 + 4L + i.
  static __m512i order() {
    alignas(64) static constexpr int16_t kOrder[32] = {0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23, 8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31};
    return _mm512_load_si512(kOrder);
  }
};

inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u); }
inline __mmask32 tail_mask32(int64_t n) { return n >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << n) - 1u); }
inline __mmask64 tail_mask64(int64_t n) { return n >= 64 ? ~__mmask64(0) : ((__mmask64(1) << n) - 1); }

// dst[j] = c10::BFloat16(src[j])'s bits for j < len: round to nearest even, NaN to 0x7FC0.
inline void to_bf16(const float* src, uint16_t* dst, int64_t len) {
  const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1), qnan = _mm512_set1_epi32(0x7fc0);
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 m = tail_mask(len - j);
    const __m512 x = _mm512_maskz_loadu_ps(m, src + j);
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(bias, lsb)), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), qnan);
    _mm256_mask_storeu_epi16(dst + j, m, _mm512_cvtepi32_epi16(r));
  }
}

// out[j] = q[codes[j]] * absmax (dequantize_value) for j < len, q given as its halves
inline void dequantize(const uint16_t* halves, const uint8_t* codes, float absmax, int64_t len, float* out) {
  const Table256W t(halves);
  const __m512i order = Table256W::order();
  const __m512 a = _mm512_set1_ps(absmax);
  for (int64_t j = 0; j < len; j += 32) {
    const __m512i idx =
        _mm512_permutexvar_epi16(order, _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(tail_mask32(len - j), codes + j)));
    __m512i f0, f1;
    t(idx, f0, f1);
    _mm512_mask_storeu_ps(out + j, tail_mask(len - j), _mm512_mul_ps(_mm512_castsi512_ps(f0), a));
    if (len - j > 16) _mm512_mask_storeu_ps(out + j + 16, tail_mask(len - j - 16), _mm512_mul_ps(_mm512_castsi512_ps(f1), a));
  }
}

#ifdef ADAMW8_CPU_VBMI
// A 256-entry table of 32-bit words as four byte planes (byte b of every entry, b = 0..3:
// QuantTable::planes, ::plane_thr), 4 zmm each, read 64 entries at a time: per plane two vpermi2b
// (128 entries apiece) and a blend on the index's top bit, then two rounds of unpacks join the
// bytes into words.  The unpacks work within 128-bit lanes, so the 64 indices must come in the
// order that makes the words come out in sequence (order(): position 16L + 4k + i holds index
// 16k + 4L + i, a transpose, so the same permutation puts bytes back in sequence).
struct Planes256 {
  __m512i pl[4][4];
  explicit Planes256(const uint8_t* planes) {
    for (int p = 0; p < 4; ++p) {
      for (int r = 0; r < 4; ++r) pl[p][r] = _mm512_loadu_si512(planes + 256 * p + 64 * r);
    }
  }
  static __m512i order() {
    alignas(64) static constexpr uint8_t kOrder[64] = {0, 1, 2, 3, 16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51, 4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39, 52, 53, 54, 55, 8, 9, 10, 11, 24, 25, 26, 27, 40, 41, 42, 43, 56, 57, 58, 59, 12, 13, 14, 15, 28, 29, 30, 31, 44, 45, 46, 47, 60, 61, 62, 63};
    return _mm512_load_si512(kOrder);
  }
  // d[k] = the entries of the indices 16k .. 16k + 15 (idx in order()'s arrangement)
  void operator()(__m512i idx, __m512i* d) const {
    const __m512i ix[1] = {idx};
    __m512i e[1][4];
    lookup([this](int p, int r) { return pl[p][r]; }, ix, e);
    for (int k = 0; k < 4; ++k) d[k] = e[0][k];
  }
  // The same for kC index registers, d[c][k] from idx[c], table-major: each plane's four
  // registers taken once (pl(p, r): from registers, or loads) for all kC of them.
  template <typename Table, int kC>
  __attribute__((always_inline)) static void lookup(Table pl, const __m512i (&idx)[kC], __m512i (&d)[kC][4]) {
    __mmask64 b7[kC];
    for (int c = 0; c < kC; ++c) b7[c] = _mm512_movepi8_mask(idx[c]);
    __m512i r[kC][4];
    for (int p = 0; p < 4; ++p) {
      const __m512i t0 = pl(p, 0), t1 = pl(p, 1), t2 = pl(p, 2), t3 = pl(p, 3);
      for (int c = 0; c < kC; ++c) {
        r[c][p] = _mm512_mask_blend_epi8(b7[c], _mm512_permutex2var_epi8(t0, idx[c], t1),
                                         _mm512_permutex2var_epi8(t2, idx[c], t3));
      }
    }
    for (int c = 0; c < kC; ++c) join(r[c], d[c]);
  }
  // The four planes' bytes of 64 entries (in order()'s arrangement) joined into their words:
  // d[k] = entries 16k .. 16k + 15.
  __attribute__((always_inline)) static void join(const __m512i* r, __m512i* d) {
    const __m512i w01l = _mm512_unpacklo_epi8(r[0], r[1]), w01h = _mm512_unpackhi_epi8(r[0], r[1]);
    const __m512i w23l = _mm512_unpacklo_epi8(r[2], r[3]), w23h = _mm512_unpackhi_epi8(r[2], r[3]);
    d[0] = _mm512_unpacklo_epi16(w01l, w23l);
    d[1] = _mm512_unpackhi_epi16(w01l, w23l);
    d[2] = _mm512_unpacklo_epi16(w01h, w23h);
    d[3] = _mm512_unpackhi_epi16(w01h, w23h);
  }
};

// dequantize for the avx512vbmi build: the map's byte planes (Planes256), 64 codes at a time.
__attribute__((always_inline)) inline void dequantize_vbmi(const uint8_t* planes, const uint8_t* codes, float absmax, int64_t len, float* out) {
  const Planes256 t(planes);
  const __m512i order = Planes256::order();
  const __m512 a = _mm512_set1_ps(absmax);
  for (int64_t j = 0; j < len; j += 64) {
    const int64_t left = len - j;
    const __mmask64 lm = tail_mask64(left);
    __m512i d[4];
    t(_mm512_permutexvar_epi8(order, _mm512_maskz_loadu_epi8(lm, codes + j)), d);
    for (int k = 0; k < 4 && left > 16 * k; ++k) {
      _mm512_mask_storeu_ps(out + j + 16 * k, tail_mask(left - 16 * k), _mm512_mul_ps(_mm512_castsi512_ps(d[k]), a));
    }
  }
}
#endif

// normalize() of 16 values: value / absmax, 0 for an absmax that is not > 0, 0 where the
// quotient is NaN.
inline __m512 normalize16(__m512 value, float absmax) {
  const __m512 x = absmax > 0.0f ? _mm512_div_ps(value, _mm512_set1_ps(absmax)) : _mm512_setzero_ps();
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, x, _CMP_ORD_Q), x);
}

// lut_bucket() of 16 normalised values, given their bits.
inline __m512i bucket16(__m512i bits) {
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i key_lo = _mm512_set1_epi32(static_cast<int>(kLutKeyLo));
  const __m512i key = _mm512_srli_epi32(_mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff)), kLutShift);
  __m512i b = _mm512_maskz_add_epi32(_mm512_cmpge_epu32_mask(key, key_lo), _mm512_sub_epi32(key, key_lo), one);
  b = _mm512_min_epi32(b, _mm512_set1_epi32(kLutHalf - 1));
  return _mm512_mask_add_epi32(b, _mm512_movepi32_mask(bits), b, _mm512_set1_epi32(kLutHalf));
}

// finish_code() of 16 nearest codes: sign_fix() for the signed map (a code whose sign differs
// from a non-NaN value's moves one step toward it), positive_floor() for the unsigned one (a
// positive value never gets code 0).
inline __m512i finish16(__m512i c, __m512 value, bool is_signed, int neg_count) {
  const __m512i one = _mm512_set1_epi32(1);
  const __m512 zero = _mm512_setzero_ps();
  const __mmask16 positive = _mm512_cmp_ps_mask(value, zero, _CMP_GT_OQ);
  if (is_signed) {
    const __mmask16 code_neg = _mm512_cmplt_epi32_mask(c, _mm512_set1_epi32(neg_count));
    const __mmask16 value_neg = _mm512_movepi32_mask(_mm512_castps_si512(value));
    const __mmask16 differs = (code_neg ^ value_neg) & _mm512_cmp_ps_mask(value, value, _CMP_ORD_Q);
    c = _mm512_mask_add_epi32(c, differs & positive, c, one);
    return _mm512_mask_sub_epi32(c, differs & static_cast<__mmask16>(~positive), c, one);
  }
  return _mm512_mask_mov_epi32(c, _mm512_cmpeq_epi32_mask(c, _mm512_setzero_si512()) & positive, one);
}

// quantize_block's vector routes for `len` values sharing one absmax: per 16 values, the
// nearest code from their normalised values and bucket (`nearest`), then finish16.
template <typename Nearest>
inline void quantize16(const float* values, int64_t len, float absmax, bool is_signed, int neg_count, uint8_t* out,
                       Nearest&& nearest) {
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 m = tail_mask(len - j);
    const __m512 value = _mm512_maskz_loadu_ps(m, values + j);
    const __m512 x = normalize16(value, absmax);
    const __m512i bits = _mm512_castps_si512(x);
    const __m512i c = finish16(nearest(x, bits, bucket16(bits), m), value, is_signed, neg_count);
    _mm_mask_storeu_epi8(out + j, m, _mm512_cvtepi32_epi8(c));
  }
}

// quantize_thresholds (kernels.h): the bucket's code, then its threshold(s) from registers.
template <int kSpan>
inline void quantize(const QuantTable& qt, const float* values, int64_t len, float absmax, bool is_signed,
                     uint8_t* out) {
  const Table256 thr(qt.thr);  // thr[256] (NaN) is handled below: an index of 256 compares false
  const __m512i one = _mm512_set1_epi32(1);
  quantize16(values, len, absmax, is_signed, qt.neg_count, out, [&](__m512 x, __m512i, __m512i b, __mmask16 m) {
    const __m512i e = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, b, qt.code_entry, 4);
    __m512i c = _mm512_mask_add_epi32(e, _mm512_cmp_ps_mask(x, thr(e), _CMP_GE_OQ), e, one);
    if constexpr (kSpan == 2) {
      const __m512i e1 = _mm512_add_epi32(e, one);
      const __mmask16 ge1 =
          _mm512_cmp_ps_mask(x, thr(e1), _CMP_GE_OQ) & _mm512_cmplt_epi32_mask(e1, _mm512_set1_epi32(256));
      c = _mm512_mask_add_epi32(c, ge1, c, one);
    }
    return c;
  });
}

// packed_code (kernel_args.h): one gather of the packed word, an add of x's adjusted low bits
// and a shift.
inline void quantize_packed(const QuantTable& qt, const float* values, int64_t len, float absmax, bool is_signed,
                            uint8_t* out) {
  const __m512i low16 = _mm512_set1_epi32(0xffff);
  quantize16(values, len, absmax, is_signed, qt.neg_count, out, [&](__m512, __m512i bits, __m512i b, __mmask16 m) {
    const __m512i pk = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, b, qt.packed, 4);
    const __m512i low = _mm512_and_si512(_mm512_xor_si512(bits, _mm512_srai_epi32(bits, 31)), low16);  // packed_low
    return _mm512_srli_epi32(_mm512_add_epi32(pk, low), 16);
  });
}

// The fused step's quantizer (kernels.h, quantize_state): the packed route for `len` finite
// values with |value| <= absmax, absmax in [2^-64, 2^64], and, for the signed map, a table whose
// sign fix is a clamp (QuantTable::clamp_code).  Per 16 values:
// - |x| = |value| / absmax by div_rn (adamw8_math.h: the division's bits down to 2^-36; below,
//   within 2^-86 of them, every value falls in bucket 0 and gets that bucket's code), its sign
//   the value's;
// - the bucket from |x| <= 1 (no upper clamp: at most kLutHalf - 1), the key's floor at 0 a
//   saturating 16-bit subtraction, and the sign; the packed word; its add and shift;
// - finish_code without a NaN to mind: a value with its sign bit set takes min(code,
//   clamp_code) (sign_fix), and code 0 becomes 1 where the value's bits are a positive int
//   (positive_floor: value > 0).
inline void quantize_bounded(const QuantTable& qt, const float* values, int64_t len, float absmax, bool is_signed,
                             uint8_t* out) {
  const __m512 A = _mm512_set1_ps(absmax), R = _mm512_set1_ps(1.0f / absmax);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), low16 = _mm512_set1_epi32(0xffff);
  const __m512i key_base = _mm512_set1_epi32(static_cast<int>(kLutKeyLo) - 1), half = _mm512_set1_epi32(kLutHalf);
  const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);
  const __m512i neg_last = _mm512_set1_epi32(qt.clamp_code);
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 m = tail_mask(len - j);
    const __m512i vb = _mm512_castps_si512(_mm512_maskz_loadu_ps(m, values + j));
    const __m512i s = _mm512_srai_epi32(vb, 31);
    const __m512 av = _mm512_castsi512_ps(_mm512_and_si512(vb, abs_mask));
    const __m512 q0 = _mm512_mul_ps(av, R);
    const __m512i xb = _mm512_castps_si512(_mm512_fmadd_ps(_mm512_fnmadd_ps(q0, A, av), R, q0));  // div_rn
    __m512i b = _mm512_subs_epu16(_mm512_srli_epi32(xb, kLutShift), key_base);  // max(key - base, 0) in the low words
    b = _mm512_add_epi32(b, _mm512_and_si512(s, half));
    const __m512i pk = _mm512_mask_i32gather_epi32(zero, m, b, qt.packed, 4);
    __m512i c = _mm512_srli_epi32(_mm512_add_epi32(pk, _mm512_and_si512(_mm512_xor_si512(xb, s), low16)), 16);
    c = is_signed ? _mm512_mask_min_epi32(c, _mm512_movepi32_mask(vb), c, neg_last)
                  : _mm512_max_epi32(c, _mm512_min_epi32(vb, one));
    _mm512_mask_cvtepi32_storeu_epi8(out + j, m, c);
  }
}

#ifdef ADAMW8_CPU_VBMI
// Four 16-lane masks as one 64-lane mask, lane 16k + i from m[k] (mask-register unpacks).
inline __mmask64 join64(const __mmask16* m) {
  return _mm512_kunpackd(_mm512_kunpackw(m[3], m[2]), _mm512_kunpackw(m[1], m[0]));
}

// quantize_bounded by the plane route (kernel_args.h, plane_code), no gather, for kC chunks of 64
// values at once (the last one may be short; `len` counts from the first chunk):
// - per 16 values: x = value / absmax, by the divider (kDivide, QuantTable::divide) or by div_rn
//   (sign-symmetric, but -0 / absmax gives +0, so the value's sign bit is or-ed back in);
// - x's top 16 bits as words (32 a register): the level-1 entry by vpermt2w (64 words), the
//   bucket by a variable word shift and an add;
// - the buckets' low bytes and high bytes (bit 8: the sign's half) packed into two byte
//   registers, in Planes256::order()'s arrangement;
// - c0 from the 512-byte code plane (four vpermi2b, blends on bits 7 and 8), thr[c0] from four
//   byte planes (Planes256::lookup);
// - code = c0 + (x >= thr[c0]) as bytes back in element order, then finish_code as in
//   quantize_bounded: min(code, clamp_code) where the value's sign bit is set (signed map), or
//   max(code, 1) where the value is > 0 (unsigned map).
// The code plane and the thresholds (24 registers) stay in memory; each of their registers is
// loaded once for all kC chunks, table-major.  Loads bound the step on a Zen 5 core: a threshold
// lookup for 64 values loads 16 registers, and one more per chunk made the whole 8-bit step 23%
// slower; four chunks per load made it 12-13% faster than one (benchmarks/RESULTS.md).
// The same preconditions as quantize_bounded.
//
// kNonNegative: the caller's values are all +0 or positive (the unsigned map's states in the
// fused step; -0 would be taken as +0, which gets the same code): the level-1 index has no sign.
template <bool kDivide, bool kNonNegative, int kC>
__attribute__((always_inline)) inline void quantize_planes_chunks(const QuantTable& qt, const float* values, int64_t len, float absmax,
                                                                  bool is_signed, uint8_t* out) {
  const __m512i order = Planes256::order();
  const __m512i pick_lo = _mm512_add_epi8(order, order);  // byte 2e of the two word registers: bucket e's low byte
  const __m512i pick_hi = _mm512_add_epi8(pick_lo, _mm512_set1_epi8(1));
  alignas(64) static constexpr int16_t kTop[32] = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43, 45, 47, 49, 51, 53, 55, 57, 59, 61, 63};
  const __m512i top = _mm512_load_si512(kTop);  // word 2i+1: dword i's top 16 bits
  const __m512 A = _mm512_set1_ps(absmax), R = _mm512_set1_ps(1.0f / absmax);
  const __m512i sign_bit = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  const __m512i binade_lo = _mm512_set1_epi16(kPlaneBinadeLo << 7), sign_half = _mm512_set1_epi16(32);
  const __m512i mag15 = _mm512_set1_epi16(0x7fff), one8 = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
  __mmask64 lm[kC];
  __m512i xs[kC][4], lo[kC];
  __mmask64 b7[kC], b8[kC];
  __mmask32 neg[kC][2];
  {
    const __m512i l1a = _mm512_loadu_si512(qt.plane_l1), l1b = _mm512_loadu_si512(qt.plane_l1 + 32);
    for (int c = 0; c < kC; ++c) {
      lm[c] = tail_mask64(len - 64 * c);
      for (int k = 0; k < 4; ++k) {
        const __m512i vb = _mm512_castps_si512(
            _mm512_maskz_loadu_ps(static_cast<__mmask16>(lm[c] >> (16 * k)), values + 64 * c + 16 * k));
        const __m512 value = _mm512_castsi512_ps(vb);
        if constexpr (kDivide) {
          xs[c][k] = _mm512_castps_si512(_mm512_div_ps(value, A));  // -0 / absmax is -0
        } else {
          const __m512 q0 = _mm512_mul_ps(value, R);
          const __m512i x = _mm512_castps_si512(_mm512_fmadd_ps(_mm512_fnmadd_ps(q0, A, value), R, q0));  // div_rn
          xs[c][k] = _mm512_ternarylogic_epi32(x, vb, sign_bit, 0xf8);  // x | the value's sign: -0 / absmax is +0 by div_rn
        }
      }
      __m512i bucket[2];
      for (int h = 0; h < 2; ++h) {
        const __m512i w = _mm512_permutex2var_epi16(xs[c][2 * h], top, xs[c][2 * h + 1]);  // values 32h .. 32h + 31
        neg[c][h] = _mm512_movepi16_mask(w);  // the values' sign bits
        const __m512i d = _mm512_subs_epu16(_mm512_and_si512(w, mag15), binade_lo);  // plane_offset: k << 7 | mantissa
        const __m512i l1i = kNonNegative ? _mm512_srli_epi16(d, 7)
                                         : _mm512_ternarylogic_epi32(_mm512_srli_epi16(d, 7), _mm512_srli_epi16(w, 10), sign_half, 0xf8);  // k | sign * 32
        const __m512i l1 = _mm512_permutex2var_epi16(l1a, l1i, l1b);
        bucket[h] = _mm512_add_epi16(l1, _mm512_srlv_epi16(d, _mm512_srli_epi16(l1, kPlaneShift)));
      }
      lo[c] = _mm512_permutex2var_epi8(bucket[0], pick_lo, bucket[1]);
      b7[c] = _mm512_movepi8_mask(lo[c]);
      b8[c] = _mm512_test_epi8_mask(_mm512_permutex2var_epi8(bucket[0], pick_hi, bucket[1]), one8);
    }
  }
  // c0: the code plane's four register pairs, each loaded once
  const uint8_t* code_plane = qt.plane_code;
  const uint8_t* thr_planes = qt.plane_thr;
  __m512i q[kC][4];
  for (int r = 0; r < 4; ++r) {
    const __m512i t0 = _mm512_loadu_si512(code_plane + 128 * r), t1 = _mm512_loadu_si512(code_plane + 128 * r + 64);
    for (int c = 0; c < kC; ++c) q[c][r] = _mm512_permutex2var_epi8(t0, lo[c], t1);
  }
  __m512i c0[kC];
  for (int c = 0; c < kC; ++c) {
    c0[c] = _mm512_mask_blend_epi8(b8[c], _mm512_mask_blend_epi8(b7[c], q[c][0], q[c][1]),
                                   _mm512_mask_blend_epi8(b7[c], q[c][2], q[c][3]));
  }
  // thr[c0]: each of the four planes' registers loaded once
  __m512i thr[kC][4];
  Planes256::lookup([thr_planes](int p, int r) { return _mm512_loadu_si512(thr_planes + 256 * p + 64 * r); }, c0, thr);
  for (int c = 0; c < kC; ++c) {
    __mmask16 ge16[4];
    for (int k = 0; k < 4; ++k) {
      ge16[k] = _mm512_cmp_ps_mask(_mm512_castsi512_ps(xs[c][k]), _mm512_castsi512_ps(thr[c][k]), _CMP_GE_OQ);
    }
    __m512i code = _mm512_permutexvar_epi8(order, c0[c]);
    code = _mm512_mask_add_epi8(code, join64(ge16), code, one8);
    if (is_signed) {
      code = _mm512_mask_min_epu8(code, _mm512_kunpackd(neg[c][1], neg[c][0]), code,
                                  _mm512_set1_epi8(static_cast<char>(qt.clamp_code)));
    } else if (const __mmask64 at_zero = _mm512_testn_epi8_mask(code, code)) {  // code 0: rare unless v is 0
      __mmask16 pos16[4];
      for (int k = 0; k < 4; ++k) {
        const __m512i vb = _mm512_maskz_loadu_epi32(static_cast<__mmask16>(lm[c] >> (16 * k)), values + 64 * c + 16 * k);
        pos16[k] = _mm512_cmpgt_epi32_mask(vb, zero);
      }
      code = _mm512_mask_mov_epi8(code, at_zero & join64(pos16), one8);
    }
    _mm512_mask_storeu_epi8(out + 64 * c, lm[c], code);
  }
}

// The plane route over `len` values: four chunks at a time (a block), then one.
template <bool kDivide, bool kNonNegative>
__attribute__((always_inline)) inline void quantize_planes_by(const QuantTable& qt, const float* values, int64_t len, float absmax,
                                                              bool is_signed, uint8_t* out) {
  int64_t j = 0;
  for (; j + kBlockSize <= len; j += kBlockSize) {
    quantize_planes_chunks<kDivide, kNonNegative, kBlockSize / 64>(qt, values + j, kBlockSize, absmax, is_signed, out + j);
  }
  for (; j < len; j += 64) quantize_planes_chunks<kDivide, kNonNegative, 1>(qt, values + j, len - j, absmax, is_signed, out + j);
}

// quantize_planes_by with the quotient as QuantTable::divide says (the same bits either way).
template <bool kNonNegative = false>
__attribute__((always_inline)) inline void quantize_planes(const QuantTable& qt, const float* values, int64_t len, float absmax, bool is_signed,
                            uint8_t* out) {
  return qt.divide ? quantize_planes_by<true, kNonNegative>(qt, values, len, absmax, is_signed, out)
                   : quantize_planes_by<false, kNonNegative>(qt, values, len, absmax, is_signed, out);
}
#endif

}  // namespace lookup512
