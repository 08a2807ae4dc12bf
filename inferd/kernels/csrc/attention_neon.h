// Decode attention on NEON (ARM64): four positions' scores at a time, reduced with one pairwise
// add tree, softmax with exp4, and the V pass in slices of the head that fit the 32 registers.
// See attention.h for the contract; D % 4 == 0.
#pragma once

#include "vec_neon.h"

namespace inferd_rows {

// A partial dot product of one query head with one key row, as a vector of lane sums.
template <int D, typename T> inline float32x4_t dot_partial4(const T* q, const T* k) {
  using inferd_vec::load4;
  float32x4_t acc = vmulq_f32(load4(q), load4(k));
  for (int c = 1; c < D / 4; ++c) acc = vfmaq_f32(acc, load4(q + c * 4), load4(k + c * 4));
  return acc;
}

template <typename T, int D, int G>
void attend_heads_neon(const T* q, const T* k_cache, const T* v_cache, const PagedRows<T>& paged, int64_t h0, int64_t h1,
                       int64_t lo, int64_t hi, float scale, float* scratch, T* out) {
  using inferd_vec::load4;
  static_assert(D % 4 == 0, "attend_heads_neon takes whole vectors of the head");
  const int64_t len = hi - lo, rows = (h1 - h0) * G;
  const int64_t row_stride = paged.row_stride, block_size = paged.block_size;
  float* scores = scratch;            // [rows][len]
  float* acc = scratch + rows * len;  // [rows][D]
  constexpr int C = D / 4;
  // Pass 1: scores, four positions at a time (never across a block boundary).
  paged.prefetch(k_cache, lo);
  for (int64_t pos = lo; pos < hi;) {
    const int64_t in_block = std::min(hi - pos, block_size - pos % block_size);
    if (pos % block_size == 0 || pos == lo) paged.prefetch(k_cache, pos + in_block);
    const int64_t n = std::min<int64_t>(in_block, 4);
    const T* base = paged.row(k_cache, pos);
    for (int64_t h = h0; h < h1; ++h) {
      for (int g = 0; g < G; ++g) {
        const T* qh = q + (h * G + g) * D;
        float32x4_t part[4];
        for (int64_t j = 0; j < n; ++j) part[j] = dot_partial4<D>(qh, base + j * row_stride + h * D);
        for (int64_t j = n; j < 4; ++j) part[j] = vdupq_n_f32(0.f);
        const float32x4_t sc = vmulq_f32(inferd_vec::reduce4(part[0], part[1], part[2], part[3]), vdupq_n_f32(scale));
        float* dst = scores + ((h - h0) * G + g) * len + (pos - lo);
        if (n == 4) {
          vst1q_f32(dst, sc);
        } else {
          float buf[4];
          vst1q_f32(buf, sc);
          for (int64_t j = 0; j < n; ++j) dst[j] = buf[j];
        }
      }
    }
    pos += n;
  }
  // Softmax per query head, normalised in place (any number of heads per task).
  for (int64_t r = 0; r < rows; ++r) {
    float* s = scores + r * len;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < len; ++i) m = std::max(m, s[i]);
    const float32x4_t mv = vdupq_n_f32(m);
    float32x4_t sumv = vdupq_n_f32(0.f);
    int64_t i = 0;
    for (; i + 4 <= len; i += 4) {
      const float32x4_t e = inferd_vec::exp4(vsubq_f32(vld1q_f32(s + i), mv));
      vst1q_f32(s + i, e);
      sumv = vaddq_f32(sumv, e);
    }
    if (i < len) {  // the tail, its missing lanes zero in the sum
      float buf[4] = {0.f, 0.f, 0.f, 0.f};
      for (int64_t j = i; j < len; ++j) buf[j - i] = s[j];
      vst1q_f32(buf, inferd_vec::exp4(vsubq_f32(vld1q_f32(buf), mv)));
      for (int64_t j = len - i; j < 4; ++j) buf[j] = 0.f;
      for (int64_t j = i; j < len; ++j) s[j] = buf[j - i];
      sumv = vaddq_f32(sumv, vld1q_f32(buf));
    }
    const float32x4_t inv = vdupq_n_f32(1.f / inferd_vec::hsum4(sumv));
    for (i = 0; i + 4 <= len; i += 4) vst1q_f32(s + i, vmulq_f32(vld1q_f32(s + i), inv));
    for (; i < len; ++i) s[i] *= vgetq_lane_f32(inv, 0);
  }
  // Pass 2: probability-weighted sum of V rows, block by block; per kv head, GB query heads and
  // S vectors of the head at a time keep their accumulators in registers across the block.
  constexpr int S = C % 8 == 0 ? 8 : C % 4 == 0 ? 4 : C % 2 == 0 ? 2 : 1;
  constexpr int GB = G % 2 == 0 ? 2 : 1;
  for (int64_t i = 0; i < rows * D; ++i) acc[i] = 0.f;
  paged.prefetch(v_cache, lo);
  for (int64_t pos = lo; pos < hi;) {
    const int64_t in_block = std::min(hi - pos, block_size - pos % block_size);
    paged.prefetch(v_cache, pos + in_block);
    const T* base = paged.row(v_cache, pos);
    for (int64_t h = h0; h < h1; ++h) {
      for (int g0 = 0; g0 < G; g0 += GB) {
        const int64_t r0 = (h - h0) * G + g0;
        const float* p0 = scores + r0 * len + (pos - lo);
        for (int d0 = 0; d0 < D; d0 += 4 * S) {
          float32x4_t a[GB][S];
          for (int g = 0; g < GB; ++g)
            for (int c = 0; c < S; ++c) a[g][c] = vld1q_f32(acc + (r0 + g) * D + d0 + c * 4);
          const T* row = base + h * D + d0;
          for (int64_t j = 0; j < in_block; ++j, row += row_stride) {
            float32x4_t vv[S];
            for (int c = 0; c < S; ++c) vv[c] = load4(row + c * 4);
            for (int g = 0; g < GB; ++g) {
              const float32x4_t p = vdupq_n_f32(p0[g * len + j]);
              for (int c = 0; c < S; ++c) a[g][c] = vfmaq_f32(a[g][c], p, vv[c]);
            }
          }
          for (int g = 0; g < GB; ++g)
            for (int c = 0; c < S; ++c) vst1q_f32(acc + (r0 + g) * D + d0 + c * 4, a[g][c]);
        }
      }
    }
    pos += in_block;
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int i = 0; i < D; ++i) out[(h0 * G + r) * D + i] = static_cast<T>(acc[r * D + i]);
}

}  // namespace inferd_rows
