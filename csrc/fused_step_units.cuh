// One unit's update, for each state format: 32-bit (unit_32bit) and 8-bit blockwise or per
// tensor (unit_8bit, with the maps' tables in shared memory and the requantization).  Part of
// fused_step_kernels.cuh.
#pragma once

#include "fused_step_common.cuh"
#include "fused_step_stage.cuh"
#include "nearest_lut.h"

namespace adamw8 {
namespace cuda {

// ------------------------------------------------------------- 32-bit state
template <typename T, bool kAms>
__device__ __forceinline__ void unit_32bit(const LaunchArgs& a, const TensorArgs& ta, const TensorScalars& ts,
                                           float gscale, int64_t unit, const StageStep<T, false, kAms>& st) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t off = unit * kUnit + lane * kPerLane;
  const bool full = ta.vec && (unit + 1) * kUnit <= ta.numel;
  float* __restrict__ s1 = static_cast<float*>(ta.state1);
  float* __restrict__ s2 = static_cast<float*>(ta.state2);
  float* __restrict__ s3 = static_cast<float*>(ta.state3);
  float p[kPerLane], g[kPerLane], m[kPerLane], v[kPerLane], h[kPerLane];
  if (st.staged()) {  // a full unit
    st.wait();
    st.stage->read_pg(p, g);
    st.stage->read_state(0, m);
    st.stage->read_state(1, v);
    if constexpr (kAms) st.stage->read_state(2, h);
  } else {
    load_pg<T>(a, ta, off, full, p, g);
  }
  // the next unit's copies before this unstaged unit's state loads: the other order holds more
  // registers live, and the bf16 32-bit kernel of ADAMW8_STAGE=2 spilled (check_kernels.py)
  st.issue_next();
  if (st.staged()) {
  } else if (full) {
    Elem<float>::load8(s1 + off, m);
    Elem<float>::load8(s2 + off, v);
    if constexpr (kAms) Elem<float>::load8(s3 + off, h);
  } else {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const bool in = off + j < ta.numel;
      m[j] = in ? s1[off + j] : 0.0f;
      v[j] = in ? s2[off + j] : 0.0f;
      if constexpr (kAms) h[j] = in ? s3[off + j] : 0.0f;
    }
  }
  // one path, testing per element: one per GradPrep (as the 8-bit kernels have) took the fp32
  // kernel from 64 registers to 78, a block per SM fewer for this latency-bound kernel
  const bool scaled = a.grad_scale != nullptr;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    float vh = kAms ? h[j] : 0.0f;
    adamw_element<kAms>(ts.sc, prep_grad<kPrepAny>(scaled, gscale, ts.gnorm_scale, g[j]), p[j], m[j], v[j], vh);
    if constexpr (kAms) h[j] = vh;
  }
  store_p<T>(a, ta, off, full, p);
  if (full) {
    Elem<float>::store8(s1 + off, m);
    Elem<float>::store8(s2 + off, v);
    if constexpr (kAms) Elem<float>::store8(s3 + off, h);
  } else {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (off + j < ta.numel) {
        s1[off + j] = m[j];
        s2[off + j] = v[j];
        if constexpr (kAms) s3[off + j] = h[j];
      }
    }
  }
}

// -------------------------------------------------------------- 8-bit state
// Shared memory of the 8-bit kernels: both maps and their nearest-code tables
// (40,992 bytes, under the 48 KB of static shared memory a block may have).
struct Maps8 {
  float q1[256];
  float q2[256];
  float thr1[256];  // the thresholds (nearest_lut.h), 255 used: packed route only
  float thr2[256];
  union {
    // packed route: one packed_word per bucket (nearest_lut.h); map 1's set-sign half from
    // kLutNegBase, with the bounded route's sign clamp folded in (packed_entry_clamped); for
    // map 2 only the buckets of a clear sign bit, as the states it quantizes (v, amsgrad's max)
    // are never negative, not even -0 (b2*v + (1-b2)*g*g with a non-negative second term;
    // max(old, v) >= v)
    struct {
      uint32_t word1[kLutWords1];
      uint32_t word2[kLutHalf];
    } packed;
    struct {  // search route: the floor index of each bucket's smallest value
      uint8_t code1[kLutSize];
      uint8_t code2[kLutSize];
    } search;
  } t;
  int packed;  // 1: both maps take the packed route
  int clamp1;  // sign_clamp_code(q1): the bounded route's sign fix, or -1
};

// Every thread of the block helps.  Strictly increasing maps (the dynamic maps)
// get the packed route: one table read, an add and a shift per value.  Any other
// sorted map, or one whose thresholds the packed tables cannot hold, gets
// nearest_lut.h's table with its floor search run per lookup until it stops.
// Both are exact for every float (tests/test_emulation.py).
__device__ __forceinline__ void load_maps(const LaunchArgs& a, Maps8& s) {
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    s.q1[i] = a.qmap1[i];
    s.q2[i] = a.qmap2[i];
  }
  __syncthreads();
  int bad = 0;
  for (int k = threadIdx.x; k < 255; k += blockDim.x) bad |= !(s.q1[k] < s.q1[k + 1]) || !(s.q2[k] < s.q2[k + 1]);
  bool packed = !__syncthreads_or(bad);
  const int clamp1 = sign_clamp_code(s.q1);  // every thread: a binary descent
  if (packed) {
    for (int k = threadIdx.x; k < 255; k += blockDim.x) {
      s.thr1[k] = nearest_threshold(s.q1, k);
      s.thr2[k] = nearest_threshold(s.q2, k);
    }
    __syncthreads();
    bad = 0;
    for (int b = threadIdx.x; b < kLutSize; b += blockDim.x) {
      const PackedEntry e1 = packed_entry_clamped(s.q1, s.thr1, b, clamp1);
      s.t.packed.word1[packed_slot(b)] = packed_word(e1);
      bad |= !e1.ok;
      if (b < kLutHalf) {
        const PackedEntry e2 = packed_entry(s.q2, s.thr2, b);
        s.t.packed.word2[b] = packed_word(e2);
        bad |= !e2.ok;
      }
    }
    packed = !__syncthreads_or(bad);
  }
  if (!packed) {
    for (int b = threadIdx.x; b < kLutSize; b += blockDim.x) {
      s.t.search.code1[b] = lut_entry(s.q1, b);
      s.t.search.code2[b] = lut_entry(s.q2, b);
    }
  }
  if (threadIdx.x == 0) {
    s.packed = packed ? 1 : 0;
    s.clamp1 = clamp1;
  }
  __syncthreads();
}

// The code of value / absmax in map `which` (1 or 2) by the packed route or the search route,
// then finish_code: any value.  (The fused step's states mostly take the bounded route,
// quantize_lane_bounded.)  On the packed route map 2's x is never negative (Maps8): its bucket
// is in the clear-sign half; map 1's clamped set-sign half gives the codes finish_code would.
template <bool kPacked>
__device__ __forceinline__ uint32_t quantize_8bit(const Maps8& s, int which, float value, float absmax, bool is_signed) {
  const float* q = which == 1 ? s.q1 : s.q2;
  const float x = normalize(value, absmax);
  int nearest;
  if constexpr (kPacked) {
    nearest = packed_word_nearest(which == 1 ? s.t.packed.word1[packed_slot(lut_bucket(x))] : s.t.packed.word2[lut_bucket(x)], x);
  } else {
    nearest = lut_nearest_search(which == 1 ? s.t.search.code1 : s.t.search.code2, q, x);
  }
  return static_cast<uint32_t>(finish_code(q, nearest, value, is_signed));
}

// A lane's codes of m, v (and vh) with the unit's new absmax by the packed or the search route:
// in byte 0 of c1, c2, c3.
template <bool kPacked, bool kAms>
__device__ __forceinline__ void quantize_lane(const Maps8& s, const float (&m)[kPerLane], const float (&v)[kPerLane],
                                              const float (&h)[kPerLane], float na1, float na2, float na3,
                                              uint32_t (&c1)[kPerLane], uint32_t (&c2)[kPerLane],
                                              uint32_t (&c3)[kPerLane]) {
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    c1[j] = quantize_8bit<kPacked>(s, 1, m[j], na1, true);
    c2[j] = quantize_8bit<kPacked>(s, 2, v[j], na2, false);
    if constexpr (kAms) c3[j] = quantize_8bit<kPacked>(s, 2, h[j], na3, false);
  }
}

// The bounded route (nearest_lut.h, packed_sum_*): states that are finite, at most their absmax,
// with the absmax in [2^-64, 2^64] (div_rn_absmax) and map 1's sign fix a clamp (s.clamp1 >= 0),
// divided by div_rn (the division's bits down to quotients of 2^-36; a smaller quotient lands in
// bucket 0 either way, which holds no threshold on the packed route).  The codes in byte 2 of
// c1, c2, c3.
template <bool kAms>
__device__ __forceinline__ void quantize_lane_bounded(const Maps8& s, const float (&m)[kPerLane],
                                                      const float (&v)[kPerLane], const float (&h)[kPerLane],
                                                      float na1, float na2, float na3, uint32_t (&c1)[kPerLane],
                                                      uint32_t (&c2)[kPerLane], uint32_t (&c3)[kPerLane]) {
  const float r1 = rcp_rn(na1), r2 = rcp_rn(na2);  // once per unit and lane
  const float r3 = kAms ? rcp_rn(na3) : 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    c1[j] = packed_sum_signed(s.t.packed.word1, float_bits(m[j]), float_bits(div_rn(m[j], na1, r1)));
    c2[j] = packed_sum_unsigned(s.t.packed.word2, float_bits(v[j]), float_bits(div_rn(v[j], na2, r2)));
    if constexpr (kAms) c3[j] = packed_sum_unsigned(s.t.packed.word2, float_bits(h[j]), float_bits(div_rn(h[j], na3, r3)));
  }
}

// Requantizes a unit's new m, v (vh) with the new absmax and writes it back
// with the parameters; `kOwnAbsmax`: the unit's absmax is written too.
template <typename T, bool kAms, bool kOwnAbsmax>
__device__ __forceinline__ void write_unit_8bit(const LaunchArgs& a, const Maps8& s, const TensorArgs& ta,
                                                int64_t off, bool full, int64_t blk, const float (&p)[kPerLane],
                                                const float (&m)[kPerLane], const float (&v)[kPerLane],
                                                const float (&h)[kPerLane], float na1, float na2, float na3) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  uint8_t* __restrict__ c1p = static_cast<uint8_t*>(ta.state1);
  uint8_t* __restrict__ c2p = static_cast<uint8_t*>(ta.state2);
  uint8_t* __restrict__ c3p = static_cast<uint8_t*>(ta.state3);
  store_p<T>(a, ta, off, full, p);
  uint32_t c1[kPerLane], c2[kPerLane], c3[kPerLane];
  uint2 w1, w2, w3;
  // m, v and vh are finite (the non-finite rule; an infinite old vh makes na3 infinite) and
  // bounded by their absmax (the unit's or the tensor's maximum)
  if (s.packed && s.clamp1 >= 0 && div_rn_absmax(na1) && div_rn_absmax(na2) && (!kAms || div_rn_absmax(na3))) {
    quantize_lane_bounded<kAms>(s, m, v, h, na1, na2, na3, c1, c2, c3);  // the same for the whole warp
    w1 = pack8_codes<2>(c1);
    w2 = pack8_codes<2>(c2);
    w3 = kAms ? pack8_codes<2>(c3) : w2;
  } else {
    if (s.packed) {  // the same for the whole block
      quantize_lane<true, kAms>(s, m, v, h, na1, na2, na3, c1, c2, c3);
    } else {
      quantize_lane<false, kAms>(s, m, v, h, na1, na2, na3, c1, c2, c3);
    }
    w1 = pack8_codes<0>(c1);
    w2 = pack8_codes<0>(c2);
    w3 = kAms ? pack8_codes<0>(c3) : w2;
  }
  if (full) {
    st_u2(c1p + off, w1);
    st_u2(c2p + off, w2);
    if constexpr (kAms) st_u2(c3p + off, w3);
  } else {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (off + j < ta.numel) {
        c1p[off + j] = code_at(w1, j);
        c2p[off + j] = code_at(w2, j);
        if constexpr (kAms) c3p[off + j] = code_at(w3, j);
      }
    }
  }
  // every lane read the old absmax before the warp max; lane 0 writes after
  if (kOwnAbsmax && lane == 0) {
    ta.absmax1[blk] = na1;
    ta.absmax2[blk] = na2;
    if constexpr (kAms) ta.absmax3[blk] = na3;
  }
}

// A lane's dequantize, element update and running maxima (unit_8bit).
// kRcp (no amsgrad): the division by c2_sqrt through div_rn, and the square root by sqrt_fast,
// which clears root_ok where its result is not sqrtf's (the caller then runs the lane again
// without kRcp): no branch per element around a slow path, so the compiler interleaves the
// eight elements' arithmetic.
template <bool kAms, bool kRcp, int kPrep>
__device__ __forceinline__ void update_lane_8bit(bool scaled, const Maps8& s, const TensorScalars& ts,
                                                 float gscale, float oa1, float oa2, float oa3,
                                                 const uint32_t (&c1)[kPerLane], const uint32_t (&c2)[kPerLane],
                                                 const uint32_t (&c3)[kPerLane], float (&p)[kPerLane],
                                                 const float (&g)[kPerLane], float (&m)[kPerLane],
                                                 float (&v)[kPerLane], float (&h)[kPerLane], float& na1, float& na2,
                                                 float& na3, bool& root_ok) {
  static_assert(!(kAms && kRcp), "sqrt_fast takes a finite root; amsgrad's old max may be infinite");
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    float mj = dequantize_value(s.q1, static_cast<uint8_t>(c1[j]), oa1);
    float vj = dequantize_value(s.q2, static_cast<uint8_t>(c2[j]), oa2);
    float hj = kAms ? dequantize_value(s.q2, static_cast<uint8_t>(c3[j]), oa3) : 0.0f;
    adamw_element<kAms, kRcp, kRcp>(ts.sc, prep_grad<kPrep>(scaled, gscale, ts.gnorm_scale, g[j]), p[j], mj, vj, hj,
                                    root_ok);
    m[j] = mj;
    v[j] = vj;
    h[j] = hj;
    // fmaxf (one instruction; a compare and a select before): no operand is NaN (the
    // non-finite rule), and none is -0 (|m|; v and vh are sums with a non-negative second
    // term, or their max), so it is the larger value, as the CPU kernels take it
    na1 = fmaxf(fabsf(mj), na1);
    na2 = fmaxf(vj, na2);
    na3 = fmaxf(hj, na3);
  }
}

// kPass: 0 = update (one absmax per unit), 1 = block_wise=False pass 1 (each
// unit's new maxima into scratch, nothing else written), 2 = block_wise=False
// pass 2 (update with the tensor's new absmax from scratch).
template <typename T, bool kAms, int kPass>
__device__ __forceinline__ void unit_8bit(const LaunchArgs& a, const Maps8& s, const TensorArgs& ta,
                                          const TensorScalars& ts, float gscale, const float (&old_absmax)[3],
                                          const float (&new_absmax)[3], int64_t unit, int64_t gunit,
                                          const StageStep<T, true, kAms>& st) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t off = unit * kUnit + lane * kPerLane;
  const bool full = ta.vec && (unit + 1) * kUnit <= ta.numel;
  uint8_t* __restrict__ c1p = static_cast<uint8_t*>(ta.state1);
  uint8_t* __restrict__ c2p = static_cast<uint8_t*>(ta.state2);
  uint8_t* __restrict__ c3p = static_cast<uint8_t*>(ta.state3);
  const int64_t blk = kPass == 0 ? unit : 0;
  float oa1, oa2, oa3 = 0.0f;
  float p[kPerLane], g[kPerLane];
  uint32_t c1[kPerLane], c2[kPerLane], c3[kPerLane];
  if (st.staged()) {  // pass 0, a full unit
    st.wait();
    st.stage->read_pg(p, g);
    unpack_codes(*st.stage->d(0), c1);
    unpack_codes(*st.stage->d(1), c2);
    if constexpr (kAms) unpack_codes(*st.stage->d(2), c3);
    oa1 = *st.stage->w(0);
    oa2 = *st.stage->w(1);
    if constexpr (kAms) oa3 = *st.stage->w(2);
  } else {
    oa1 = kPass == 0 ? ta.absmax1[blk] : old_absmax[0];
    oa2 = kPass == 0 ? ta.absmax2[blk] : old_absmax[1];
    if constexpr (kAms) oa3 = kPass == 0 ? ta.absmax3[blk] : old_absmax[2];
    load_pg<T>(a, ta, off, full, p, g);
  }
  st.issue_next();  // before this unstaged unit's code loads, as in unit_32bit
  if (st.staged()) {
  } else if (full) {
    load8_codes(c1p + off, c1);
    load8_codes(c2p + off, c2);
    if constexpr (kAms) load8_codes(c3p + off, c3);
  } else {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const bool in = off + j < ta.numel;
      c1[j] = in ? c1p[off + j] : 127u;  // past the end: m = v = 0 (signed code 127 is 0)
      c2[j] = in ? c2p[off + j] : 0u;
      if constexpr (kAms) c3[j] = in ? c3p[off + j] : 0u;
    }
  }
  float m[kPerLane], v[kPerLane], h[kPerLane];
  float na1 = 0.0f, na2 = 0.0f, na3 = 0.0f;
  // the gradient's preparation (GradPrep), and adamw_element's division by c2_sqrt through
  // div_rn where it is exact (every beta2 in [0, 1); not with amsgrad, whose old max may be
  // infinite) with its root by sqrt_fast (kRcp): the same for the whole warp, one
  // instantiation of the lane update each
  const bool scaled = a.grad_scale != nullptr;
  bool root_ok = true;
  const auto update = [&](auto rcp, auto prep) {
    update_lane_8bit<kAms, decltype(rcp)::value, decltype(prep)::value>(scaled, s, ts, gscale, oa1, oa2, oa3, c1, c2,
                                                                         c3, p, g, m, v, h, na1, na2, na3, root_ok);
  };
  const auto by_prep = [&](auto rcp) {
    switch (grad_prep(a)) {
      case kPrepPlain: update(rcp, std::integral_constant<int, kPrepPlain>{}); break;
      case kPrepScaled: update(rcp, std::integral_constant<int, kPrepScaled>{}); break;
      default: update(rcp, std::integral_constant<int, kPrepAny>{}); break;
    }
  };
  if constexpr (!kAms) {
    if (ts.sc.c2_rcp_exact) by_prep(std::true_type{});
  }
  if (kAms || !ts.sc.c2_rcp_exact || !root_ok) {
    if (!root_ok) {  // a square root sqrt_fast does not take (v in (0, 2^-101)): the lane again
      load_pg<T>(a, ta, off, full, p, g);
      na1 = na2 = na3 = 0.0f;
    }
    by_prep(std::false_type{});
  }
  na1 = warp_max(na1);
  na2 = warp_max(na2);
  if constexpr (kAms) na3 = warp_max(na3);
  if constexpr (kPass == 1) {
    if (lane == 0) {
      const int64_t units = a.unit_start[a.ntensors];
      a.unit_max[gunit] = na1;
      a.unit_max[units + gunit] = na2;
      a.unit_max[2 * units + gunit] = na3;
    }
  } else {
    if constexpr (kPass == 2) {
      na1 = new_absmax[0];
      na2 = new_absmax[1];
      na3 = new_absmax[2];
    }
    write_unit_8bit<T, kAms, kPass == 0>(a, s, ta, off, full, blk, p, m, v, h, na1, na2, na3);
  }
}

}  // namespace cuda
}  // namespace adamw8
