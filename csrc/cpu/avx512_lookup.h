// AVX-512 versions of the 8-bit state's two map lookups (dequantize and the threshold route of
// the nearest-code search, quant_lut_cpu.h), for the avx512 build of csrc/cpu/kernels.h.
//
// A 256-entry float table lives in 16 zmm registers and is read with vpermt2ps (32 entries per
// instruction) and a blend tree on the index's top three bits: on the machines measured a
// 16-lane lookup this way costs about a quarter of a vgatherdps (benchmarks/RESULTS.md).  Only
// the bucket table (3,074 entries a sign) is still gathered.  Same operations, same order as
// the portable loops in kernels.h, so the same bits.
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

inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u); }

// out[j] = q[codes[j]] * absmax (dequantize_value) for j < len
inline void dequantize(const float* q, const uint8_t* codes, float absmax, int64_t len, float* out) {
  const Table256 t(q);
  const __m512 a = _mm512_set1_ps(absmax);
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 m = tail_mask(len - j);
    const __m512i idx = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, codes + j));
    _mm512_mask_storeu_ps(out + j, m, _mm512_mul_ps(t(idx), a));
  }
}

// quantize_thresholds (kernels.h) for `len` values sharing one absmax.
template <int kSpan>
inline void quantize(const QuantTable& qt, const float* values, int64_t len, float absmax, bool is_signed,
                     uint8_t* out) {
  const Table256 thr(qt.thr);  // thr[256] (NaN) is handled below: an index of 256 compares false
  const __m512 am = _mm512_set1_ps(absmax);
  const bool pos_absmax = absmax > 0.0f;
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512i key_lo = _mm512_set1_epi32(static_cast<int>(kLutKeyLo));
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i last = _mm512_set1_epi32(kLutHalf - 1);
  const __m512i half = _mm512_set1_epi32(kLutHalf);
  const __m512i top = _mm512_set1_epi32(256);
  const __m512i neg = _mm512_set1_epi32(qt.neg_count);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 m = tail_mask(len - j);
    const __m512 value = _mm512_maskz_loadu_ps(m, values + j);
    // normalize(): value / absmax, 0 for an absmax that is not > 0, 0 where the quotient is NaN
    __m512 x = pos_absmax ? _mm512_div_ps(value, am) : zero;
    x = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, x, _CMP_ORD_Q), x);
    // lut_bucket()
    const __m512i bits = _mm512_castps_si512(x);
    const __m512i key = _mm512_srli_epi32(_mm512_and_si512(bits, abs_mask), kLutShift);
    __m512i b = _mm512_maskz_add_epi32(_mm512_cmpge_epu32_mask(key, key_lo), _mm512_sub_epi32(key, key_lo), one);
    b = _mm512_min_epi32(b, last);
    b = _mm512_mask_add_epi32(b, _mm512_movepi32_mask(bits), b, half);
    const __m512i e = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, b, qt.code_entry, 4);
    const __mmask16 ge0 = _mm512_cmp_ps_mask(x, thr(e), _CMP_GE_OQ);
    __m512i c = _mm512_mask_add_epi32(e, ge0, e, one);
    if constexpr (kSpan == 2) {
      const __m512i e1 = _mm512_add_epi32(e, one);
      const __mmask16 ge1 = _mm512_cmp_ps_mask(x, thr(e1), _CMP_GE_OQ) & _mm512_cmplt_epi32_mask(e1, top);
      c = _mm512_mask_add_epi32(c, ge1, c, one);
    }
    if (is_signed) {
      // sign_fix(): a code whose sign differs from a non-NaN value's moves one step toward it
      const __mmask16 code_neg = _mm512_cmplt_epi32_mask(c, neg);
      const __mmask16 value_neg = _mm512_movepi32_mask(_mm512_castps_si512(value));
      const __mmask16 differs = (code_neg ^ value_neg) & _mm512_cmp_ps_mask(value, value, _CMP_ORD_Q);
      const __mmask16 up = differs & _mm512_cmp_ps_mask(value, zero, _CMP_GT_OQ);
      const __mmask16 down = differs & static_cast<__mmask16>(~up);
      c = _mm512_mask_add_epi32(c, up, c, one);
      c = _mm512_mask_sub_epi32(c, down, c, one);
    } else {
      // positive_floor(): a positive value never gets code 0
      const __mmask16 lift =
          _mm512_cmpeq_epi32_mask(c, _mm512_setzero_si512()) & _mm512_cmp_ps_mask(value, zero, _CMP_GT_OQ);
      c = _mm512_mask_mov_epi32(c, lift, one);
    }
    _mm_mask_storeu_epi8(out + j, m, _mm512_cvtepi32_epi8(c));
  }
}

// quantize_packed (kernels.h) for `len` values sharing one absmax: one gather of the packed
// entry, then packed_code's 16-bit comparison and finish_code's rules.
inline void quantize_packed(const QuantTable& qt, const float* values, int64_t len, float absmax, bool is_signed,
                            uint8_t* out) {
  const __m512 am = _mm512_set1_ps(absmax);
  const bool pos_absmax = absmax > 0.0f;
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512i low16 = _mm512_set1_epi32(0xffff);
  const __m512i key_lo = _mm512_set1_epi32(static_cast<int>(kLutKeyLo));
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i last = _mm512_set1_epi32(kLutHalf - 1);
  const __m512i half = _mm512_set1_epi32(kLutHalf);
  const __m512i neg = _mm512_set1_epi32(qt.neg_count);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t j = 0; j < len; j += 16) {
    const __mmask16 m = tail_mask(len - j);
    const __m512 value = _mm512_maskz_loadu_ps(m, values + j);
    __m512 x = pos_absmax ? _mm512_div_ps(value, am) : zero;  // normalize()
    x = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, x, _CMP_ORD_Q), x);
    const __m512i bits = _mm512_castps_si512(x);
    const __m512i key = _mm512_srli_epi32(_mm512_and_si512(bits, abs_mask), kLutShift);  // lut_bucket()
    __m512i b = _mm512_maskz_add_epi32(_mm512_cmpge_epu32_mask(key, key_lo), _mm512_sub_epi32(key, key_lo), one);
    b = _mm512_min_epi32(b, last);
    const __mmask16 xneg = _mm512_movepi32_mask(bits);
    b = _mm512_mask_add_epi32(b, xneg, b, half);
    const __m512i pk = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, b, qt.packed, 4);
    // packed_code(): x >= thr as a 16-bit comparison, reversed for negative x, where inside
    const __m512i xl = _mm512_and_si512(bits, low16), tl = _mm512_and_si512(pk, low16);
    const __mmask16 ge = (_mm512_cmpge_epu32_mask(xl, tl) & static_cast<__mmask16>(~xneg)) |
                         (_mm512_cmple_epu32_mask(xl, tl) & xneg);
    const __mmask16 inside = _mm512_test_epi32_mask(pk, _mm512_set1_epi32(0x10000));
    __m512i c = _mm512_srli_epi32(pk, 17);
    c = _mm512_mask_add_epi32(c, ge & inside, c, one);
    if (is_signed) {
      const __mmask16 code_neg = _mm512_cmplt_epi32_mask(c, neg);
      const __mmask16 value_neg = _mm512_movepi32_mask(_mm512_castps_si512(value));
      const __mmask16 differs = (code_neg ^ value_neg) & _mm512_cmp_ps_mask(value, value, _CMP_ORD_Q);
      const __mmask16 up = differs & _mm512_cmp_ps_mask(value, zero, _CMP_GT_OQ);
      const __mmask16 down = differs & static_cast<__mmask16>(~up);
      c = _mm512_mask_add_epi32(c, up, c, one);
      c = _mm512_mask_sub_epi32(c, down, c, one);
    } else {
      const __mmask16 lift =
          _mm512_cmpeq_epi32_mask(c, _mm512_setzero_si512()) & _mm512_cmp_ps_mask(value, zero, _CMP_GT_OQ);
      c = _mm512_mask_mov_epi32(c, lift, one);
    }
    _mm_mask_storeu_epi8(out + j, m, _mm512_cvtepi32_epi8(c));
  }
}

}  // namespace lookup512
