// int8 / fp8 row-major weights (one scale per output row) against a few rows of x, on AVX2 +
// FMA: rows_mm_avx512.h eight lanes wide. Each weight byte is widened in registers, each (x row,
// weight row) pair keeps one vector of eight partial sums (one FMA chain along k, in order, the
// tail of k % 8 last), and blocks of eight output rows are reduced with one shuffle tree. The
// chain does not depend on how many rows of x or of weights share a pass, so a row's result is
// the same alone or in a batch. See quant_kernels.h for the contract.
#pragma once

#define INFERD_ROWS_MM_BLOCKS 1  // rows_mm_block<M rows, Decode, Scale> below

#include "vec_avx2.h"

namespace inferd_quant {

// Eight weights starting at p, widened to fp32. e4m3 comes out scaled by 2^-120: its bits
// moved into an fp32's exponent and mantissa fields (exact, subnormals included); the row
// scale undoes it.
struct Int8Decode {
  static inline __m256 load(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static constexpr float post = 1.f;
};
struct Fp8Decode {
  // Sign-extended, a byte s eeee mmm shifted left by 20 puts eeee mmm at bits 20-26 and copies
  // of s at 27-31: one mask keeps the magnitude and bit 31 (the scalar reference's two fields).
  static inline __m256 load(const uint8_t* p) {
    const __m256i b = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(
        _mm256_and_si256(_mm256_slli_epi32(b, 20), _mm256_set1_epi32(static_cast<int>(0x87f00000u))));
  }
  static constexpr float post = 0x1p120f;
};

namespace rows_avx2 {

using inferd_vec::reduce8;

// Weight rows per pass for M rows of x: W * M accumulators plus W decoded weight vectors (or M
// x vectors, whichever loop order keeps fewer live). One row of x needs several chains to hide
// the FMA latency, so batch-1 decode takes a whole block of eight weight rows (1.2 cycles per
// eight int8 weights on Zen 3, where widening and the FMA alone take 1.0). From three rows of
// x on, two weight rows: for 7-8 rows that spills a few accumulators, yet measured faster than
// one weight row, which reads every x vector once per weight row.
template <int M> constexpr int weight_rows() { return M == 1 ? 8 : M == 2 ? 4 : 2; }

// W weight rows (of the 8-row output block) against M rows of x: each x vector loaded once
// serves W weight rows. Leaves each (row of x, weight row) dot product as a vector of lane sums.
template <int M, int W, typename Decode>
inline void rows_dot(const float* x, const uint8_t* row, int64_t k, __m256 (&part)[M][8], int64_t j) {
  INFERD_AVX2_UNROLL
  for (int i = 0; i < W; ++i) {
    const uint8_t* ahead = row + (PREFETCH_ROWS + i) * k;  // rows a few ahead: DRAM is slow to start
    for (int64_t c = 0; c < k; c += 64) _mm_prefetch(reinterpret_cast<const char*>(ahead + c), _MM_HINT_T1);
  }
  __m256 acc[W][M];
  INFERD_AVX2_UNROLL
  for (int i = 0; i < W; ++i)
    INFERD_AVX2_UNROLL
    for (int m = 0; m < M; ++m) acc[i][m] = _mm256_setzero_ps();
  auto step = [&](const uint8_t* w, int64_t wstride, const float* xs, int64_t xstride) {
    if constexpr (W > M) {  // x stays in registers, each weight vector is used as decoded
      __m256 xv[M];
      INFERD_AVX2_UNROLL
      for (int m = 0; m < M; ++m) xv[m] = _mm256_loadu_ps(xs + m * xstride);
      INFERD_AVX2_UNROLL
      for (int i = 0; i < W; ++i) {
        const __m256 wv = Decode::load(w + i * wstride);
        INFERD_AVX2_UNROLL
        for (int m = 0; m < M; ++m) acc[i][m] = _mm256_fmadd_ps(wv, xv[m], acc[i][m]);
      }
    } else {  // the weights stay in registers, each x vector is used as loaded
      __m256 wv[W];
      INFERD_AVX2_UNROLL
      for (int i = 0; i < W; ++i) wv[i] = Decode::load(w + i * wstride);
      INFERD_AVX2_UNROLL
      for (int m = 0; m < M; ++m) {
        const __m256 xv = _mm256_loadu_ps(xs + m * xstride);
        INFERD_AVX2_UNROLL
        for (int i = 0; i < W; ++i) acc[i][m] = _mm256_fmadd_ps(wv[i], xv, acc[i][m]);
      }
    }
  };
  const int64_t full = k / 8 * 8;
  for (int64_t c = 0; c < full; c += 8) step(row + c, k, x + c, k);
  if (full < k) {  // the last k % 8: zero-padded copies (a weight byte 0 decodes to 0.0)
    const int64_t rest = k - full;
    alignas(32) uint8_t wt[W][8] = {};
    alignas(32) float xt[M][8] = {};
    for (int i = 0; i < W; ++i)
      for (int64_t t = 0; t < rest; ++t) wt[i][t] = row[i * k + full + t];
    for (int m = 0; m < M; ++m)
      for (int64_t t = 0; t < rest; ++t) xt[m][t] = x[m * k + full + t];
    step(&wt[0][0], 8, &xt[0][0], 8);
  }
  INFERD_AVX2_UNROLL
  for (int i = 0; i < W; ++i)
    INFERD_AVX2_UNROLL
    for (int m = 0; m < M; ++m) part[m][j + i] = acc[i][m];
}

inline float scale_value(float s) { return s; }
inline float scale_value(BFloat16 s) { return static_cast<float>(s); }  // exact

template <int M, typename Decode, typename Scale>
inline void rows_mm_block(const float* x, const uint8_t* w, const Scale* scale, int64_t k, int64_t n0, int64_t n1,
                          BFloat16* y, int64_t n_total) {
  constexpr int W = weight_rows<M>();
  __m256 part[M][8];
  for (int64_t nb = n0; nb < n1; nb += 8) {
    const int64_t count = std::min<int64_t>(8, n1 - nb);
    int64_t j = 0;
    for (; j + W <= count; j += W) rows_dot<M, W, Decode>(x, w + (nb + j) * k, k, part, j);
    for (; j < count; ++j) rows_dot<M, 1, Decode>(x, w + (nb + j) * k, k, part, j);
    for (j = count; j < 8; ++j)
      for (int m = 0; m < M; ++m) part[m][j] = _mm256_setzero_ps();
    alignas(32) float sbuf[8] = {};
    for (int64_t i = 0; i < count; ++i) sbuf[i] = scale_value(scale[nb + i]);
    const __m256 s = _mm256_mul_ps(_mm256_load_ps(sbuf), _mm256_set1_ps(Decode::post));
    for (int m = 0; m < M; ++m) {
      alignas(32) float buf[8];
      _mm256_store_ps(buf, _mm256_mul_ps(reduce8(part[m]), s));
      for (int64_t i = 0; i < count; ++i) y[m * n_total + nb + i] = static_cast<BFloat16>(buf[i]);
    }
  }
}


}  // namespace rows_avx2

using rows_avx2::rows_mm_block;  // rows_mm_range (quant_kernels.h) runs it in passes

}  // namespace inferd_quant
