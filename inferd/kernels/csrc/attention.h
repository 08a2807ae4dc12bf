// Decode attention over the paged KV cache: one scalar reference (attention_scalar.h) and one
// file per ISA (attention_avx2.h, attention_avx512.h, attention_neon.h); the build's target
// picks one here. Every path computes each query row on its own from its own sequence's K/V, in
// a fixed order, so a row's result never depends on the rows beside it. Paths agree within
// float rounding (the order of a dot product's sums differs), not bitwise.
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace inferd_rows {

// A sequence's K or V rows, positions [lo, hi), as the paged cache holds them: blocks sit
// anywhere in the pool, so the hardware prefetcher cannot run ahead across a block boundary;
// `prefetch` asks for the next block while this one is consumed.
template <typename T>
struct PagedRows {
  const int64_t* table;
  int64_t block_size, row_stride, hi;

  const T* row(const T* cache, int64_t pos) const {  // position pos, head 0
    return cache + (table[pos / block_size] * block_size + pos % block_size) * row_stride;
  }
  void prefetch(const T* cache, int64_t next) const {
    if (next >= hi) return;
    const char* p = reinterpret_cast<const char*>(row(cache, next));
    const int64_t bytes = std::min(hi - next, block_size) * row_stride * static_cast<int64_t>(sizeof(T));
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b);
  }
};

}  // namespace inferd_rows

#include "attention_scalar.h"
#if defined(__AVX512F__)
#include "attention_avx512.h"
#define INFERD_ATTEND_SIMD attend_heads_avx512
#define INFERD_ATTEND_LANES 16
#elif defined(__AVX2__) && defined(__FMA__) && __has_include("attention_avx2.h")
#include "attention_avx2.h"
#define INFERD_ATTEND_SIMD attend_heads_avx2
#define INFERD_ATTEND_LANES 8
#elif defined(__ARM_NEON) && __has_include("attention_neon.h")
#include "attention_neon.h"
#define INFERD_ATTEND_SIMD attend_heads_neon
#define INFERD_ATTEND_LANES 4
#endif

namespace inferd_rows {

// Decode attention for one sequence and the kv heads [h0, h1) of it. Each kv head's G query
// heads share the K/V rows they read; positions are walked block by block, so every block of
// the paged cache is read as one contiguous run while it is hot. Scores and softmax are fp32;
// `scratch` holds (h1 - h0) * G * ((hi - lo) + D) floats.
template <typename T, int D, int G>
void attend_heads(const T* q, const T* k_cache, const T* v_cache, const int64_t* table, int64_t block_size,
                  int64_t kv_heads, int64_t h0, int64_t h1, int64_t lo, int64_t hi, float scale,
                  float* scratch, T* out) {
  const PagedRows<T> paged{table, block_size, kv_heads * D, hi};
#if defined(INFERD_ATTEND_SIMD)
  if constexpr (D % INFERD_ATTEND_LANES == 0) {
    INFERD_ATTEND_SIMD<T, D, G>(q, k_cache, v_cache, paged, h0, h1, lo, hi, scale, scratch, out);
    return;
  }
#endif
  attend_heads_scalar<T, D, G>(q, k_cache, v_cache, paged, h0, h1, lo, hi, scale, scratch, out);
}

}  // namespace inferd_rows
