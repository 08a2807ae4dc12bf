// int8 / fp8 row-major weights (one scale per output row) against a few rows of x, on AVX-512:
// each weight byte widened in registers, sixteen lanes of partial sums per (x row, weight row),
// reduced with one shuffle tree. See quant_kernels.h for the contract.
#pragma once

#define INFERD_ROWS_MM_BLOCKS 1  // rows_mm_block<M rows, Decode, Scale> below

#include "vec_avx512.h"

namespace inferd_quant {

using inferd_vec::reduce16;

// Sixteen weights starting at p, widened to fp32. e4m3 comes out scaled by 2^-120: its bits
// moved into an fp32's exponent and mantissa fields (exact, subnormals included); the row
// scale undoes it.
struct Int8Decode {
  static inline __m512 load(const uint8_t* p, __mmask16 m) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
  }
  static constexpr float post = 1.f;
};
struct Fp8Decode {
  static inline __m512 load(const uint8_t* p, __mmask16 m) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, p));
    const __m512i mag = _mm512_and_si512(_mm512_slli_epi32(b, 20), _mm512_set1_epi32(0x07f00000));
    const __m512i sign = _mm512_and_si512(_mm512_slli_epi32(b, 24), _mm512_set1_epi32(static_cast<int>(0x80000000u)));
    return _mm512_castsi512_ps(_mm512_or_si512(mag, sign));
  }
  static constexpr float post = 0x1p120f;
};

// W weight rows (of the 16-row output block) against M rows of x: each x vector loaded once
// serves W weight rows. Leaves each (row of x, weight row) dot product as a vector of lane sums.
template <int M, int W, typename Decode>
inline void rows_dot(const float* x, const uint8_t* row, int64_t k, __m512 (&part)[M][16], int64_t j) {
  for (int i = 0; i < W; ++i) {
    const uint8_t* ahead = row + (PREFETCH_ROWS + i) * k;  // rows a few ahead: DRAM is slow to start
    for (int64_t c = 0; c < k; c += 64) _mm_prefetch(reinterpret_cast<const char*>(ahead + c), _MM_HINT_T1);
  }
  __m512 acc[W][M];
  for (int i = 0; i < W; ++i)
    for (int m = 0; m < M; ++m) acc[i][m] = _mm512_setzero_ps();
  auto step = [&](int64_t c, __mmask16 mask) {
    __m512 wv[W];
    for (int i = 0; i < W; ++i) wv[i] = Decode::load(row + i * k + c, mask);
    for (int m = 0; m < M; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + m * k + c);
      for (int i = 0; i < W; ++i) acc[i][m] = _mm512_fmadd_ps(wv[i], xv, acc[i][m]);
    }
  };
  const int64_t full = k / 16 * 16;
  for (int64_t c = 0; c < full; c += 16) step(c, __mmask16(0xffff));
  if (full < k) step(full, static_cast<__mmask16>((1u << (k - full)) - 1));
  for (int i = 0; i < W; ++i)
    for (int m = 0; m < M; ++m) part[m][j + i] = acc[i][m];
}

// Scales are read as the linear holds them (fp32, or bf16 widened exactly in registers).
inline __m512 load_scale16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load_scale16(const BFloat16* p, __mmask16 m) {
  const __m256i raw = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

template <int M, typename Decode, typename Scale>
inline void rows_mm_block(const float* x, const uint8_t* w, const Scale* scale, int64_t k, int64_t n0,
                   int64_t n1, BFloat16* y, int64_t n_total) {
  // Weight rows per pass: each (x row, weight row) pair is one FMA chain, and a single row of x
  // needs four chains to hide the FMA latency (two left batch-1 decode latency-bound).
  constexpr int W = M <= 2 ? 4 : 2;
  __m512 part[M][16];
  for (int64_t nb = n0; nb < n1; nb += 16) {
    const int64_t count = std::min<int64_t>(16, n1 - nb);
    int64_t j = 0;
    for (; j + W <= count; j += W) rows_dot<M, W, Decode>(x, w + (nb + j) * k, k, part, j);
    for (; j < count; ++j) rows_dot<M, 1, Decode>(x, w + (nb + j) * k, k, part, j);
    for (j = count; j < 16; ++j)
      for (int m = 0; m < M; ++m) part[m][j] = _mm512_setzero_ps();
    const __mmask16 out_mask = static_cast<__mmask16>((1u << count) - 1);
    const __m512 s = _mm512_mul_ps(load_scale16(scale + nb, out_mask), _mm512_set1_ps(Decode::post));
    for (int m = 0; m < M; ++m) {
      alignas(64) float buf[16];
      _mm512_store_ps(buf, _mm512_mul_ps(reduce16(part[m]), s));
      for (int64_t i = 0; i < count; ++i) y[m * n_total + nb + i] = static_cast<BFloat16>(buf[i]);
    }
  }
}

}  // namespace inferd_quant
