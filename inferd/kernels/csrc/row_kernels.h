// Per-row CPU kernels shared by cpu_ops.cpp (one torch op each) and decode_team.cpp (the
// quantized decode stack run by one thread team): the math lives here once, so both paths
// round exactly alike and the team's results are bitwise the ops'. The ISA shows only inside a
// kernel's loop (vec_*.h helpers, attention_*.h); every path computes each row on its own.
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "vec_avx2.h"
#include "vec_avx512.h"

namespace inferd_rows {

using c10::BFloat16;

inline float to_f(float v) { return v; }
inline float to_f(BFloat16 v) { return static_cast<float>(v); }
// Round a float to the storage dtype and back: the value a torch op in that dtype would keep.
template <typename T> inline float round_as(float v) { return to_f(static_cast<T>(v)); }


// ---------------------------------------------------------------- RMSNorm

// HF's RMSNorm: y = x * rsqrt(mean(x^2) + eps) in fp32, then times the weight in the weight's
// dtype W: a weight in T (Llama's RMSNorm) multiplies y rounded to T, in T; an fp32 weight
// multiplies the fp32 y and rounds once (Gemma's norm, given 1 + w precomputed in fp32, which is
// its `(normed * (1.0 + w.float())).to(dtype)`). For T = float both are one and the same.
// Sixteen partial sums let the compiler vectorise the reduction without -ffast-math.
template <typename T, typename W = T>
inline void rms_norm_row(const T* x, const W* w, T* out, int64_t n, double eps) {
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
    out[k] = static_cast<T>(to_f(w[k]) * round_as<W>(to_f(x[k]) * r));
  }
}

// One row of silu(gate) * up, each step rounded to T as HF's separate ops do.
template <typename T>
inline void silu_mul_row(const T* g, const T* u, T* o, int64_t half) {
  int64_t i = 0;
#if defined(__AVX512F__)
  using namespace inferd_vec;
  for (; i + 16 <= half; i += 16) {
    const __m512 gv = load16(g + i);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
    const __m512 silu = round_as16(_mm512_div_ps(gv, _mm512_add_ps(e, _mm512_set1_ps(1.f))), T{});
    store16(o + i, round_as16(_mm512_mul_ps(silu, load16(u + i)), T{}));
  }
#elif defined(__AVX2__) && defined(__FMA__)
  // The AVX-512 loop's operations eight lanes at a time: bitwise alike.
  using namespace inferd_vec;
  for (; i + 8 <= half; i += 8) {
    const __m256 gv = load8(g + i);
    const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
    const __m256 silu = round_as8(_mm256_div_ps(gv, _mm256_add_ps(e, _mm256_set1_ps(1.f))), T{});
    store8(o + i, round_as8(_mm256_mul_ps(silu, load8(u + i)), T{}));
  }
#endif
  for (; i < half; ++i) {
    const float gv = to_f(g[i]);
    o[i] = static_cast<T>(round_as<T>(gv / (1.f + std::exp(-gv))) * to_f(u[i]));
  }
}

// One row of gelu_tanh(gate) * up (torch's gelu(approximate="tanh")), each step rounded to T
// as the separate torch ops do. 0.5 g (1 + tanh(z)) is computed as g / (1 + exp(-2z)), the same
// function through the exp the silu kernel uses, without the cancellation in 1 + tanh(z): it
// matches torch to one bf16 ulp except far left (gate < -4), where torch's 1 + tanh(z) is
// rounding noise and then exactly 0, and this keeps the tiny true value (tested).
constexpr float GELU_K0 = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float GELU_K1 = 0.044715f;
template <typename T>
inline void gelu_tanh_mul_row(const T* g, const T* u, T* o, int64_t half) {
  int64_t i = 0;
#if defined(__AVX512F__)
  using namespace inferd_vec;
  for (; i + 16 <= half; i += 16) {
    const __m512 gv = load16(g + i);
    const __m512 cube = _mm512_mul_ps(_mm512_mul_ps(gv, gv), gv);
    const __m512 z =
        _mm512_mul_ps(_mm512_set1_ps(GELU_K0), _mm512_add_ps(gv, _mm512_mul_ps(_mm512_set1_ps(GELU_K1), cube)));
    const __m512 e = exp16(_mm512_mul_ps(_mm512_set1_ps(-2.f), z));
    const __m512 gelu = round_as16(_mm512_div_ps(gv, _mm512_add_ps(e, _mm512_set1_ps(1.f))), T{});
    store16(o + i, round_as16(_mm512_mul_ps(gelu, load16(u + i)), T{}));
  }
#elif defined(__AVX2__) && defined(__FMA__)
  using namespace inferd_vec;  // the AVX-512 loop's operations eight lanes at a time: bitwise alike
  for (; i + 8 <= half; i += 8) {
    const __m256 gv = load8(g + i);
    const __m256 cube = _mm256_mul_ps(_mm256_mul_ps(gv, gv), gv);
    const __m256 z =
        _mm256_mul_ps(_mm256_set1_ps(GELU_K0), _mm256_add_ps(gv, _mm256_mul_ps(_mm256_set1_ps(GELU_K1), cube)));
    const __m256 e = exp8(_mm256_mul_ps(_mm256_set1_ps(-2.f), z));
    const __m256 gelu = round_as8(_mm256_div_ps(gv, _mm256_add_ps(e, _mm256_set1_ps(1.f))), T{});
    store8(o + i, round_as8(_mm256_mul_ps(gelu, load8(u + i)), T{}));
  }
#endif
  for (; i < half; ++i) {
    const float gv = to_f(g[i]);
    const float z = GELU_K0 * (gv + GELU_K1 * (gv * gv * gv));
    o[i] = static_cast<T>(round_as<T>(gv / (1.f + std::exp(-2.f * z))) * to_f(u[i]));
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
#if defined(__AVX2__) && defined(__FMA__)
  if (half % 8 == 0) {  // the loop below, eight lanes of each half at a time: bitwise alike
    using namespace inferd_vec;
    for (int64_t i = 0; i < half; i += 8) {
      const __m256 lo = load8(x + i), hi = load8(x + half + i);
      store8(out + i, round_as8(_mm256_add_ps(round_as8(_mm256_mul_ps(lo, load8(cos + i)), T{}),
                                              round_as8(_mm256_mul_ps(hi, load8(sin + i)), T{})),
                                T{}));
      store8(out + half + i,
             round_as8(_mm256_add_ps(round_as8(_mm256_mul_ps(hi, load8(cos + half + i)), T{}),
                                     round_as8(_mm256_mul_ps(lo, load8(sin + half + i)), T{})),
                       T{}));
    }
    return;
  }
#endif
  for (int64_t i = 0; i < d; ++i) {
    const float swapped = to_f(x[i < half ? i + half : i - half]);
    const float a = round_as<T>(to_f(x[i]) * to_f(cos[i]));
    const float b = round_as<T>(swapped * to_f(sin[i]));
    out[i] = static_cast<T>(a + b);
  }
}

// qk-norm then rope for one head (Qwen3, Gemma 3): the head normed over head_dim (rounded to T,
// as the norm op's output is) and then rotated, as the Python path's norm and apply_rope do.
constexpr int64_t MAX_NORMED_HEAD = 256;  // the largest head_dim compiled in (attention.h)
template <typename T, typename W>
inline void norm_rope_head(const T* x, const W* w, double eps, const T* cos, const T* sin, T* out, int64_t d) {
  T normed[MAX_NORMED_HEAD];
  rms_norm_row<T, W>(x, w, normed, d, eps);
  rope_head<T>(normed, cos, sin, out, d);
}

}  // namespace inferd_rows

#include "attention.h"
