// Per-row CPU kernels shared by cpu_ops.cpp (one torch op each) and decode_team.cpp (the
// quantized decode stack run by one thread team): the math lives here once, so both paths
// round exactly alike and the team's results are bitwise the ops'.
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "avx512_util.h"

namespace inferd_rows {

using c10::BFloat16;

inline float to_f(float v) { return v; }
inline float to_f(BFloat16 v) { return static_cast<float>(v); }
// Round a float to the storage dtype and back: the value a torch op in that dtype would keep.
template <typename T> inline float round_as(float v) { return to_f(static_cast<T>(v)); }

#if defined(__AVX512F__)
using inferd_vec::load16;

// exp(x) for x <= 0 (softmax after subtracting the max): 2^(x*log2 e) split into an integer
// power, applied exactly by scalef, and a degree-7 Taylor polynomial of 2^f on |f| <= 0.5
// (relative error below 2e-9, far under fp32's own rounding).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.6931471805599453f));
  __m512 p = _mm512_set1_ps(1.f / 5040.f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 720.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// Round 16 floats to bfloat16 precision (nearest even), kept as floats; inputs are finite.
inline __m512 round_bf16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i biased = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  return _mm512_castsi512_ps(_mm512_and_si512(biased, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}
inline __m512 round_as16(__m512 x, float) { return x; }
inline __m512 round_as16(__m512 x, BFloat16) { return round_bf16(x); }
inline void store16(float* p, __m512 x) { _mm512_storeu_ps(p, x); }
inline void store16(BFloat16* p, __m512 x) {  // x already holds bf16-exact values
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(x), 16)));
}
#endif

// ---------------------------------------------------------------- RMSNorm

// HF's RMSNorm: y = x * rsqrt(mean(x^2) + eps) in fp32, rounded to T, then weight * y in T.
// Sixteen partial sums let the compiler vectorise the reduction without -ffast-math.
template <typename T>
inline void rms_norm_row(const T* x, const T* w, T* out, int64_t n, double eps) {
  float part[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) {
      const float v = to_f(x[i + j]);
      part[j] += v * v;
    }
  for (; i < n; ++i) part[0] += to_f(x[i]) * to_f(x[i]);
  float sum = 0.f;
  for (float p : part) sum += p;
  const float r = 1.f / std::sqrt(sum / static_cast<float>(n) + static_cast<float>(eps));
  for (int64_t k = 0; k < n; ++k) {
    out[k] = static_cast<T>(to_f(w[k]) * round_as<T>(to_f(x[k]) * r));
  }
}

// One row of silu(gate) * up, each step rounded to T as HF's separate ops do.
template <typename T>
inline void silu_mul_row(const T* g, const T* u, T* o, int64_t half) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= half; i += 16) {
    const __m512 gv = load16(g + i);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
    const __m512 silu = round_as16(_mm512_div_ps(gv, _mm512_add_ps(e, _mm512_set1_ps(1.f))), T{});
    store16(o + i, round_as16(_mm512_mul_ps(silu, load16(u + i)), T{}));
  }
#endif
  for (; i < half; ++i) {
    const float gv = to_f(g[i]);
    o[i] = static_cast<T>(round_as<T>(gv / (1.f + std::exp(-gv))) * to_f(u[i]));
  }
}

// residual += x, rounded to T (torch's in-place add in that dtype).
template <typename T>
inline void add_row(T* residual, const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) residual[i] = static_cast<T>(to_f(residual[i]) + to_f(x[i]));
}

// Rotate-half RoPE with the sign folded into sin: y = x*cos + swap_halves(x)*sin_signed, each
// product and the sum rounded to T as HF's three separate ops do.
template <typename T>
inline void rope_head(const T* x, const T* cos, const T* sin, T* out, int64_t d) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < d; ++i) {
    const float swapped = to_f(x[i < half ? i + half : i - half]);
    const float a = round_as<T>(to_f(x[i]) * to_f(cos[i]));
    const float b = round_as<T>(swapped * to_f(sin[i]));
    out[i] = static_cast<T>(a + b);
  }
}

// ---------------------------------------------------------------- decode attention

#if defined(__AVX512F__)
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
#endif


// Decode attention for one sequence and the kv heads [h0, h1) of it. Each kv head's G query
// heads share the K/V rows they read; positions are walked block by block, so every block of
// the paged cache is read as one contiguous run while it is hot. Scores and softmax are fp32;
// `scratch` holds (h1 - h0) * G * ((hi - lo) + D) floats.
template <typename T, int D, int G>
void attend_heads(const T* q, const T* k_cache, const T* v_cache, const int64_t* table, int64_t block_size,
                  int64_t kv_heads, int64_t h0, int64_t h1, int64_t lo, int64_t hi, float scale,
                  float* scratch, T* out) {
  const int64_t len = hi - lo, rows = (h1 - h0) * G;
  const int64_t row_stride = kv_heads * D;
  float* scores = scratch;            // [rows][len]
  float* acc = scratch + rows * len;  // [rows][D]
  auto block_of = [&](const T* cache, int64_t pos) {  // row of position pos, head 0
    return cache + (table[pos / block_size] * block_size + pos % block_size) * row_stride;
  };
  // Blocks sit anywhere in the pool, so the hardware prefetcher cannot run ahead across a
  // block boundary: ask for the next block while this one is consumed.
  auto prefetch = [&](const T* cache, int64_t next) {
    if (next >= hi) return;
    const char* p = reinterpret_cast<const char*>(block_of(cache, next));
    const int64_t bytes = std::min(hi - next, block_size) * row_stride * static_cast<int64_t>(sizeof(T));
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b);
  };
#if defined(__AVX512F__)
  if constexpr (D % 16 == 0) {
    constexpr int C = D / 16;
    const __m512 scale_v = _mm512_set1_ps(scale);
    // Pass 1: scores, sixteen positions at a time (never across a block boundary).
    prefetch(k_cache, lo);
    for (int64_t pos = lo; pos < hi;) {
      const int64_t in_block = std::min(hi - pos, block_size - pos % block_size);
      if (pos % block_size == 0 || pos == lo) prefetch(k_cache, pos + in_block);
      const int64_t n = std::min<int64_t>(in_block, 16);
      const T* base = block_of(k_cache, pos);
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
    float inv_sum[8 * G];  // at most 8 kv heads per task
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
    prefetch(v_cache, lo);
    for (int64_t pos = lo; pos < hi;) {
      const int64_t in_block = std::min(hi - pos, block_size - pos % block_size);
      prefetch(v_cache, pos + in_block);
      const T* base = block_of(v_cache, pos);
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
    return;
  }
#endif
  // Portable path: the same two passes in scalar code, one query head at a time.
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = h0 + r / G;
    const T* qh = q + (h0 * G + r) * D;
    float* s = scores + r * len;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t pos = lo; pos < hi; ++pos) {
      const T* krow = block_of(k_cache, pos) + h * D;
      float dot = 0.f;
      for (int i = 0; i < D; ++i) dot += to_f(qh[i]) * to_f(krow[i]);
      s[pos - lo] = dot * scale;
      m = std::max(m, s[pos - lo]);
    }
    float sum = 0.f;
    for (int64_t i = 0; i < len; ++i) {
      s[i] = std::exp(s[i] - m);
      sum += s[i];
    }
    float* a = acc + r * D;
    for (int i = 0; i < D; ++i) a[i] = 0.f;
    for (int64_t pos = lo; pos < hi; ++pos) {
      const T* vrow = block_of(v_cache, pos) + h * D;
      for (int i = 0; i < D; ++i) a[i] += s[pos - lo] * to_f(vrow[i]);
    }
    for (int i = 0; i < D; ++i) out[(h0 * G + r) * D + i] = static_cast<T>(a[i] / sum);
  }
}

}  // namespace inferd_rows
