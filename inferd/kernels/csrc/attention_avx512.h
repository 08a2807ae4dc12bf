// Decode attention on AVX-512: sixteen positions' scores at a time, reduced with one shuffle
// tree, and the V pass with each head's accumulators in registers. See attention.h.
#pragma once

#include <vector>

#include "vec_avx512.h"

namespace inferd_rows {

using inferd_vec::exp16;
using inferd_vec::load16;
using inferd_vec::reduce16;

// A partial dot product of one query head with one key row, as a vector of lane sums.
template <int D> inline __m512 dot_partial(const float* q, const float* k) {
  __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(k));
  for (int c = 1; c < D / 16; ++c) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + c * 16), _mm512_loadu_ps(k + c * 16), acc);
  return acc;
}
template <int D> inline __m512 dot_partial(const BFloat16* q, const BFloat16* k) {
#if defined(__AVX512BF16__)
  if constexpr (D % 32 == 0) {  // bf16 pairs straight into fp32 sums: half the instructions
    __m512 acc = _mm512_setzero_ps();
    for (int c = 0; c < D / 32; ++c)
      acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(q + c * 32), (__m512bh)_mm512_loadu_si512(k + c * 32));
    return acc;
  }
#endif
  __m512 acc = _mm512_mul_ps(load16(q), load16(k));
  for (int c = 1; c < D / 16; ++c) acc = _mm512_fmadd_ps(load16(q + c * 16), load16(k + c * 16), acc);
  return acc;
}

template <typename T, int D, int G>
void attend_heads_avx512(const T* q, const T* k_cache, const T* v_cache, const PagedRows<T>& paged, int64_t h0, int64_t h1,
                         int64_t lo, int64_t hi, float scale, float* scratch, T* out) {
  const int64_t len = hi - lo, rows = (h1 - h0) * G;
  const int64_t row_stride = paged.row_stride, block_size = paged.block_size;
  float* scores = scratch;            // [rows][len]
  float* acc = scratch + rows * len;  // [rows][D]
  constexpr int C = D / 16;
  const __m512 scale_v = _mm512_set1_ps(scale);
  // Pass 1: scores, sixteen positions at a time (never across a block boundary).
  paged.prefetch(k_cache, lo);
  for (int64_t pos = lo; pos < hi;) {
    const int64_t in_block = std::min(hi - pos, block_size - pos % block_size);
    if (pos % block_size == 0 || pos == lo) paged.prefetch(k_cache, pos + in_block);
    const int64_t n = std::min<int64_t>(in_block, 16);
    const T* base = paged.row(k_cache, pos);
    for (int64_t h = h0; h < h1; ++h) {
      for (int g = 0; g < G; ++g) {
        const T* qh = q + (h * G + g) * D;
        __m512 part[16];
        for (int64_t j = 0; j < n; ++j) part[j] = dot_partial<D>(qh, base + j * row_stride + h * D);
        for (int64_t j = n; j < 16; ++j) part[j] = _mm512_setzero_ps();
        const __m512 sc = _mm512_mul_ps(reduce16(part), scale_v);
        _mm512_mask_storeu_ps(scores + ((h - h0) * G + g) * len + (pos - lo),
                              static_cast<__mmask16>((1u << n) - 1), sc);
      }
    }
    pos += n;
  }
  // Softmax per query head (unnormalised; the sum divides the output at the end).
  // One per query head of the task: whole sequences are one task when there are many
  // sequences, so a model with more than a few kv heads needs more than the stack array.
  float inv_small[8 * G];
  std::vector<float> inv_large;
  float* inv_sum = inv_small;
  if (rows > 8 * G) {
    inv_large.resize(rows);
    inv_sum = inv_large.data();
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* s = scores + r * len;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < len; ++i) m = std::max(m, s[i]);
    const __m512 mv = _mm512_set1_ps(m);
    __m512 sumv = _mm512_setzero_ps();
    for (int64_t i = 0; i < len; i += 16) {
      const __mmask16 mask = len - i >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (len - i)) - 1);
      const __m512 e = _mm512_maskz_mov_ps(mask, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, s + i), mv)));
      _mm512_mask_storeu_ps(s + i, mask, e);
      sumv = _mm512_add_ps(sumv, e);
    }
    inv_sum[r] = 1.f / _mm512_reduce_add_ps(sumv);
  }
  // Pass 2: probability-weighted sum of V rows.
  for (int64_t i = 0; i < rows * D; ++i) acc[i] = 0.f;
  paged.prefetch(v_cache, lo);
  for (int64_t pos = lo; pos < hi;) {
    const int64_t in_block = std::min(hi - pos, block_size - pos % block_size);
    paged.prefetch(v_cache, pos + in_block);
    const T* base = paged.row(v_cache, pos);
    for (int64_t h = h0; h < h1; ++h) {  // one head's accumulators stay in registers per block
      const int64_t r0 = (h - h0) * G;
      __m512 a[G][C];
      for (int g = 0; g < G; ++g)
        for (int c = 0; c < C; ++c) a[g][c] = _mm512_loadu_ps(acc + (r0 + g) * D + c * 16);
      const T* row = base + h * D;
      const float* p0 = scores + r0 * len + (pos - lo);
      for (int64_t j = 0; j < in_block; ++j, row += row_stride) {
        __m512 vv[C];
        for (int c = 0; c < C; ++c) vv[c] = load16(row + c * 16);
        for (int g = 0; g < G; ++g) {
          const __m512 p = _mm512_set1_ps(p0[g * len + j]);
          for (int c = 0; c < C; ++c) a[g][c] = _mm512_fmadd_ps(p, vv[c], a[g][c]);
        }
      }
      for (int g = 0; g < G; ++g)
        for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc + (r0 + g) * D + c * 16, a[g][c]);
    }
    pos += in_block;
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int i = 0; i < D; ++i) out[(h0 * G + r) * D + i] = static_cast<T>(acc[r * D + i] * inv_sum[r]);
}

}  // namespace inferd_rows
