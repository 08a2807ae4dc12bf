// Decode attention on AVX2 + FMA: attend_heads_avx512's two passes eight lanes wide. AVX2 has
// sixteen vector registers, not thirty-two, so both passes work in register tiles: scores for
// all G query heads of a kv head against a few key rows at once (each key chunk widened once
// for G heads, each query chunk loaded once for those rows), and the V pass a few output
// columns of a few heads at a time. A tile only decides which sums run side by side: every
// score is the same two FMA chains over the head dimension (even and odd chunks) whatever the
// tile, every output element one FMA chain over positions in order, so a head's result does not
// depend on G, on the tile shapes or on the other heads and rows of the call (decode_team.cpp
// calls one query head at a time and is bitwise the op's grouped call). See attention.h.
#pragma once

#include <type_traits>

#include "vec_avx2.h"

namespace inferd_rows {
namespace attn_avx2 {

using inferd_vec::exp8;
using inferd_vec::hsum8;
using inferd_vec::load8;
using inferd_vec::reduce8;


// Rows are read in eight-lane chunks, c = 0 .. D/8 - 1. fp32 rows (and bf16 rows of D = 8) in
// order; bf16 rows of D a multiple of 16 as each sixteen values' even elements (chunk 2i) then
// odd elements (chunk 2i + 1): a 32-bit lane of sixteen loaded bf16 holds an even element in its
// low half and the next odd one in its high half, so one shift or one mask widens eight values
// exactly, where load8 takes a lane shuffle and a shift. Queries, keys, values and the V sums
// all use one order, so dot products pair the right elements; the output undoes it.
template <typename T, int D> constexpr bool paired() { return std::is_same_v<T, c10::BFloat16> && D % 16 == 0; }

template <typename T, int D> inline __m256 chunk(const T* row, int c) {
  if constexpr (paired<T, D>()) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + (c / 2) * 16));
    return _mm256_castsi256_ps(c % 2 == 0 ? _mm256_slli_epi32(raw, 16)
                                          : _mm256_and_si256(raw, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  } else {
    return load8(row + c * 8);
  }
}


// All-ones in the first n (0..8) lanes.
inline __m256i first_lanes(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Score tile: query heads [G0, G0 + GC) (fp32 in chunk order, D apart, from head 0 at q)
// against JC key rows at k (row_stride apart); part[g][j0 + j] gets each dot product as a
// vector of eight lane sums. Each dot product runs as two FMA chains, even chunks and odd
// chunks, added at the end (one chain where D/8 is odd); a step takes one chunk of each (for
// paired bf16 rows both come from one load), so the query's two chunks stay in registers for
// the JC rows.
template <typename T, int D, int G0, int GC, int JC>
inline void score_tile(const float* q, const T* k, int64_t row_stride, __m256 (*part)[8], int64_t j0) {
  constexpr int C = D / 8, S = C % 2 == 0 ? 2 : 1;
  __m256 acc[S][GC][JC];
  INFERD_AVX2_UNROLL
  for (int c = 0; c < C; c += S) {
    __m256 qv[S][GC];
    INFERD_AVX2_UNROLL
    for (int g = 0; g < GC; ++g)
      INFERD_AVX2_UNROLL
      for (int s = 0; s < S; ++s) qv[s][g] = _mm256_loadu_ps(q + (G0 + g) * D + (c + s) * 8);
    INFERD_AVX2_UNROLL
    for (int j = 0; j < JC; ++j) {
      __m256 kv[S];
      if constexpr (paired<T, D>()) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k + j * row_stride + c * 8));
        kv[0] = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
        kv[S - 1] = _mm256_castsi256_ps(_mm256_and_si256(raw, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
      } else {
        INFERD_AVX2_UNROLL
        for (int s = 0; s < S; ++s) kv[s] = load8(k + j * row_stride + (c + s) * 8);
      }
      INFERD_AVX2_UNROLL
      for (int g = 0; g < GC; ++g)
        INFERD_AVX2_UNROLL
        for (int s = 0; s < S; ++s)
          acc[s][g][j] = c == 0 ? _mm256_mul_ps(qv[s][g], kv[s]) : _mm256_fmadd_ps(qv[s][g], kv[s], acc[s][g][j]);
    }
  }
  INFERD_AVX2_UNROLL
  for (int g = 0; g < GC; ++g)
    INFERD_AVX2_UNROLL
    for (int j = 0; j < JC; ++j) part[G0 + g][j0 + j] = S == 2 ? _mm256_add_ps(acc[0][g][j], acc[S - 1][g][j]) : acc[0][g][j];
}

// Key rows per score tile of GC heads: 2 * GC * JC accumulators, 2 * GC query chunks and two
// key chunks in 16 registers (four heads: 18, a couple of spills, still faster than two tiles
// of two heads, which widen every key chunk twice).
template <int GC> constexpr int score_rows() { return GC == 1 ? 4 : GC == 2 ? 2 : 1; }

// Heads [G0, G0 + GC) against the n (<= 8) key rows at k.
template <typename T, int D, int G0, int GC>
inline void score_group(const float* q, const T* k, int64_t row_stride, int64_t n, __m256 (*part)[8]) {
  constexpr int JC = score_rows<GC>();
  int64_t j = 0;
  for (; j + JC <= n; j += JC) score_tile<T, D, G0, GC, JC>(q, k + j * row_stride, row_stride, part, j);
  for (; j < n; ++j) score_tile<T, D, G0, GC, 1>(q, k + j * row_stride, row_stride, part, j);
}

// All G heads of one kv head, in groups of at most four (G = 5..8: two groups).
template <typename T, int D, int G, int G0 = 0>
inline void score_heads(const float* q, const T* k, int64_t row_stride, int64_t n, __m256 (*part)[8]) {
  if constexpr (G0 < G) {
    constexpr int groups = (G + 3) / 4, per = (G + groups - 1) / groups;
    constexpr int GC = per < G - G0 ? per : G - G0;
    score_group<T, D, G0, GC>(q, k, row_stride, n, part);
    score_heads<T, D, G, G0 + GC>(q, k, row_stride, n, part);
  }
}

// Value tile: heads [G0, G0 + GB) of a kv head, chunks [C0, C0 + CB), over `count` V rows.
// p: head 0's probabilities from this block's first position (heads len apart); acc: head 0's
// running sums in chunk order (heads D apart), loaded and stored back.
template <typename T, int D, int G0, int GB, int C0, int CB>
inline void value_tile(const float* p, int64_t len, const T* v, int64_t row_stride, int64_t count, float* acc) {
  __m256 a[GB][CB];
  INFERD_AVX2_UNROLL
  for (int g = 0; g < GB; ++g)
    INFERD_AVX2_UNROLL
    for (int c = 0; c < CB; ++c) a[g][c] = _mm256_loadu_ps(acc + (G0 + g) * D + (C0 + c) * 8);
  for (int64_t j = 0; j < count; ++j, v += row_stride) {
    __m256 pb[GB];
    INFERD_AVX2_UNROLL
    for (int g = 0; g < GB; ++g) pb[g] = _mm256_broadcast_ss(p + (G0 + g) * len + j);
    INFERD_AVX2_UNROLL
    for (int c = 0; c < CB; ++c) {
      const __m256 vv = chunk<T, D>(v, C0 + c);
      INFERD_AVX2_UNROLL
      for (int g = 0; g < GB; ++g) a[g][c] = _mm256_fmadd_ps(pb[g], vv, a[g][c]);
    }
  }
  INFERD_AVX2_UNROLL
  for (int g = 0; g < GB; ++g)
    INFERD_AVX2_UNROLL
    for (int c = 0; c < CB; ++c) _mm256_storeu_ps(acc + (G0 + g) * D + (C0 + c) * 8, a[g][c]);
}

// Chunks per value tile for GB heads: GB * CB accumulators, GB broadcast probabilities and one
// V chunk in 16 registers.
template <int GB> constexpr int value_cols() { return GB == 1 ? 8 : GB == 2 ? 6 : GB == 3 ? 4 : 2; }

template <typename T, int D, int G0, int GB, int C0 = 0>
inline void value_head_group(const float* p, int64_t len, const T* v, int64_t row_stride, int64_t count, float* acc) {
  constexpr int C = D / 8;
  if constexpr (C0 < C) {
    constexpr int CB = value_cols<GB>() < C - C0 ? value_cols<GB>() : C - C0;
    value_tile<T, D, G0, GB, C0, CB>(p, len, v, row_stride, count, acc);
    value_head_group<T, D, G0, GB, C0 + CB>(p, len, v, row_stride, count, acc);
  }
}

// All G heads of one kv head, in groups of at most four (G = 5..8: two groups).
template <typename T, int D, int G, int G0 = 0>
inline void value_heads(const float* p, int64_t len, const T* v, int64_t row_stride, int64_t count, float* acc) {
  if constexpr (G0 < G) {
    constexpr int groups = (G + 3) / 4, per = (G + groups - 1) / groups;
    constexpr int GB = per < G - G0 ? per : G - G0;
    value_head_group<T, D, G0, GB>(p, len, v, row_stride, count, acc);
    value_heads<T, D, G, G0 + GB>(p, len, v, row_stride, count, acc);
  }
}

}  // namespace attn_avx2

template <typename T, int D, int G>
void attend_heads_avx2(const T* q, const T* k_cache, const T* v_cache, const PagedRows<T>& paged, int64_t h0, int64_t h1,
                       int64_t lo, int64_t hi, float scale, float* scratch, T* out) {
  static_assert(D % 8 == 0 && G >= 1 && G <= 8, "attend_heads_avx2: D a multiple of 8, at most 8 heads a group");
  using namespace attn_avx2;
  constexpr int C = D / 8;
  const int64_t len = hi - lo, rows = (h1 - h0) * G;
  const int64_t row_stride = paged.row_stride, block_size = paged.block_size;
  float* scores = scratch;            // [rows][len]
  float* acc = scratch + rows * len;  // [rows][D]: the queries in fp32 for pass 1, then V's sums
  const float* qf;
  if constexpr (std::is_same_v<T, float>) {
    qf = q + h0 * G * D;
  } else {
    for (int64_t r = 0; r < rows; ++r)
      INFERD_AVX2_UNROLL
      for (int c = 0; c < C; ++c) _mm256_storeu_ps(acc + r * D + c * 8, chunk<T, D>(q + (h0 * G + r) * D, c));
    qf = acc;
  }
  const __m256 scale_v = _mm256_set1_ps(scale);
  // Pass 1: scores, block by block, eight positions at a time within a block.
  paged.prefetch(k_cache, lo);
  for (int64_t pos = lo; pos < hi;) {
    const int64_t in_block = std::min(hi - pos, block_size - pos % block_size);
    paged.prefetch(k_cache, pos + in_block);
    const T* base = paged.row(k_cache, pos);
    for (int64_t j0 = 0; j0 < in_block; j0 += 8) {
      const int64_t n = std::min<int64_t>(in_block - j0, 8), at = (pos - lo) + j0;
      // Lanes past n land on later positions of the same row, written again in their turn;
      // only at the row's end is a masked store (slow on AMD) needed.
      const bool whole = at + 8 <= len;
      const __m256i mask = first_lanes(n);
      for (int64_t h = h0; h < h1; ++h) {
        __m256 part[G][8];
        const float* qh = qf + (h - h0) * G * D;
        const T* kh = base + j0 * row_stride + h * D;
        score_heads<T, D, G>(qh, kh, row_stride, n, part);
        INFERD_AVX2_UNROLL
        for (int g = 0; g < G; ++g) {
          for (int64_t i = n; i < 8; ++i) part[g][i] = _mm256_setzero_ps();
          const __m256 sc = _mm256_mul_ps(reduce8(part[g]), scale_v);
          float* dst = scores + ((h - h0) * G + g) * len + at;
          if (whole) {
            _mm256_storeu_ps(dst, sc);
          } else {
            _mm256_maskstore_ps(dst, mask, sc);
          }
        }
      }
    }
    pos += in_block;
  }
  // Softmax per query head, unnormalised (the sum divides the output at the end).
  for (int64_t r = 0; r < rows; ++r) {
    float* s = scores + r * len;
    __m256 mv = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(s + i));
    float m = inferd_vec::hmax8(mv);
    for (; i < len; ++i) m = std::max(m, s[i]);
    mv = _mm256_set1_ps(m);
    for (i = 0; i + 8 <= len; i += 8) _mm256_storeu_ps(s + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), mv)));
    if (i < len) {
      const __m256i mask = first_lanes(len - i);
      _mm256_maskstore_ps(s + i, mask, exp8(_mm256_sub_ps(_mm256_maskload_ps(s + i, mask), mv)));
    }
  }
  // Pass 2: probability-weighted sum of V rows, block by block.
  for (int64_t i = 0; i < rows * D; i += 8) _mm256_storeu_ps(acc + i, _mm256_setzero_ps());
  paged.prefetch(v_cache, lo);
  for (int64_t pos = lo; pos < hi;) {
    const int64_t in_block = std::min(hi - pos, block_size - pos % block_size);
    paged.prefetch(v_cache, pos + in_block);
    const T* base = paged.row(v_cache, pos);
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t r0 = (h - h0) * G;
      value_heads<T, D, G>(scores + r0 * len + (pos - lo), len, base + h * D, row_stride, in_block, acc + r0 * D);
    }
    pos += in_block;
  }
  // Each head's sums over the total of its probabilities (added in a fixed order: eight lanes
  // along the row, the tail, then hsum8's tree), back in element order.
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = scores + r * len;
    __m256 sumv = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) sumv = _mm256_add_ps(sumv, _mm256_loadu_ps(s + i));
    if (i < len) sumv = _mm256_add_ps(sumv, _mm256_maskload_ps(s + i, first_lanes(len - i)));
    const __m256 inv = _mm256_set1_ps(1.f / hsum8(sumv));
    const float* a = acc + r * D;
    T* o = out + (h0 * G + r) * D;
    if constexpr (paired<T, D>()) {  // chunk 2i: elements 16i + 2l, chunk 2i + 1: 16i + 2l + 1
      for (int c = 0; c < C; c += 2) {
        const __m256i even = _mm256_castps_si256(inferd_vec::round_bf16(_mm256_mul_ps(_mm256_loadu_ps(a + c * 8), inv)));
        const __m256i odd = _mm256_castps_si256(inferd_vec::round_bf16(_mm256_mul_ps(_mm256_loadu_ps(a + c * 8 + 8), inv)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + c * 8), _mm256_or_si256(_mm256_srli_epi32(even, 16), odd));
      }
    } else {
      for (int c = 0; c < C; ++c)
        inferd_vec::store8(o + c * 8, inferd_vec::round_as8(_mm256_mul_ps(_mm256_loadu_ps(a + c * 8), inv), T{}));
    }
  }
}


}  // namespace inferd_rows
