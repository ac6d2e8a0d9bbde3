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

// packed_code (kernel_args.h): one gather of the packed entry, then the 16-bit comparison of x's
// low bits with the bucket's threshold, reversed for negative x, where one is inside.
inline void quantize_packed(const QuantTable& qt, const float* values, int64_t len, float absmax, bool is_signed,
                            uint8_t* out) {
  const __m512i low16 = _mm512_set1_epi32(0xffff);
  quantize16(values, len, absmax, is_signed, qt.neg_count, out, [&](__m512, __m512i bits, __m512i b, __mmask16 m) {
    const __m512i pk = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, b, qt.packed, 4);
    const __mmask16 xneg = _mm512_movepi32_mask(bits);
    const __m512i xl = _mm512_and_si512(bits, low16), tl = _mm512_and_si512(pk, low16);
    const __mmask16 ge = (_mm512_cmpge_epu32_mask(xl, tl) & static_cast<__mmask16>(~xneg)) |
                         (_mm512_cmple_epu32_mask(xl, tl) & xneg);
    const __mmask16 inside = _mm512_test_epi32_mask(pk, _mm512_set1_epi32(0x10000));
    const __m512i c = _mm512_srli_epi32(pk, 17);
    return _mm512_mask_add_epi32(c, ge & inside, c, _mm512_set1_epi32(1));
  });
}

}  // namespace lookup512
