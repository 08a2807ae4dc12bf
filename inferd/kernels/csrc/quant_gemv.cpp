// Weight-only quantized matmuls for decode-sized batches (a few rows of bf16 activations),
// reading the weights in the layouts inferd's quantized linears already hold, so nothing is
// stored twice:
//   int8_rows_mm  int8 [N, K] row-major, one scale (fp32 or bf16) per output row
//   fp8_rows_mm   float8_e4m3fn [N, K] row-major, one scale (fp32 or bf16) per output row
//   int4_mm       torch's AVX-512 CPU int4 layout ([N/64, K, 32] bytes: rows j and j+32 of a
//                 block share a byte), bf16 (scale, zero) pairs [K/group, N, 2]: w = (q-8)s+z
// Decode is memory-bound: each weight byte is read once per call and widened in registers.
// Rows are computed independently in a fixed order, so results do not depend on how many rows
// share the call. Registered next to cpu_ops.cpp's kernels as torch.ops.inferd_cpu.*.

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "avx512_util.h"

namespace {

using at::Tensor;
using c10::BFloat16;

constexpr int64_t MAX_ROWS = 8;  // rows per pass; larger batches run in passes of this many
constexpr int64_t PREFETCH_ROWS = 8;  // weight rows fetched ahead of use (row-major layouts)
constexpr int64_t PREFETCH_K = 96;     // k steps fetched ahead of use (int4 layout: 32 bytes each)

void check_x(const Tensor& x, int64_t k, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kBFloat16,
              op, ": x must be a contiguous CPU bfloat16 [M, K] tensor");
  TORCH_CHECK(x.size(1) == k, op, ": x has ", x.size(1), " columns, the weight ", k);
}

// x [M, K] bf16 -> fp32 copy (widened once, read K/16 times per output row).
std::vector<float> widen(const Tensor& x) {
  std::vector<float> out(static_cast<size_t>(x.numel()));
  const BFloat16* p = x.const_data_ptr<BFloat16>();
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(p[i]);
  return out;
}

#if defined(__AVX512F__)
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
    for (int64_t c = 0; c < k; c += 64) _mm_prefetch(reinterpret_cast<const char*>(ahead + c), _MM_HINT_T0);
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

template <int M, typename Decode>
void rows_mm_block(const float* x, const uint8_t* w, const float* scale, int64_t k, int64_t n0,
                   int64_t n1, BFloat16* y, int64_t n_total) {
  __m512 part[M][16];
  for (int64_t nb = n0; nb < n1; nb += 16) {
    const int64_t count = std::min<int64_t>(16, n1 - nb);
    int64_t j = 0;
    for (; j + 2 <= count; j += 2) rows_dot<M, 2, Decode>(x, w + (nb + j) * k, k, part, j);
    if (j < count) rows_dot<M, 1, Decode>(x, w + (nb + j) * k, k, part, j);
    for (j = count; j < 16; ++j)
      for (int m = 0; m < M; ++m) part[m][j] = _mm512_setzero_ps();
    const __mmask16 out_mask = static_cast<__mmask16>((1u << count) - 1);
    const __m512 s = _mm512_mul_ps(_mm512_maskz_loadu_ps(out_mask, scale + nb), _mm512_set1_ps(Decode::post));
    for (int m = 0; m < M; ++m) {
      alignas(64) float buf[16];
      _mm512_store_ps(buf, _mm512_mul_ps(reduce16(part[m]), s));
      for (int64_t i = 0; i < count; ++i) y[m * n_total + nb + i] = static_cast<BFloat16>(buf[i]);
    }
  }
}
#endif

template <typename Decode>
Tensor rows_mm(const Tensor& x, const Tensor& w, const Tensor& scale, const char* op) {
  TORCH_CHECK(w.device().is_cpu() && w.dim() == 2 && w.is_contiguous() && w.element_size() == 1,
              op, ": weight must be a contiguous one-byte [N, K] CPU tensor");
  const int64_t n = w.size(0), k = w.size(1);
  check_x(x, k, op);
  TORCH_CHECK((scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kBFloat16) &&
                  scale.is_contiguous() && scale.numel() == n,
              op, ": scale must be contiguous float32 or bfloat16 [N]");
  const int64_t rows = x.size(0);
  Tensor y = at::empty({rows, n}, x.options());
#if defined(__AVX512F__)
  const std::vector<float> xf = widen(x);
  const uint8_t* wp = static_cast<const uint8_t*>(w.const_data_ptr());
  const Tensor scale_f32 = scale.scalar_type() == at::kFloat ? scale : scale.to(at::kFloat);
  const float* sp = scale_f32.const_data_ptr<float>();
  BFloat16* yp = y.mutable_data_ptr<BFloat16>();
  using Block = void (*)(const float*, const uint8_t*, const float*, int64_t, int64_t, int64_t, BFloat16*, int64_t);
  static constexpr Block by_rows[] = {rows_mm_block<1, Decode>, rows_mm_block<2, Decode>, rows_mm_block<3, Decode>,
                                      rows_mm_block<4, Decode>, rows_mm_block<5, Decode>, rows_mm_block<6, Decode>,
                                      rows_mm_block<7, Decode>, rows_mm_block<8, Decode>};
  for (int64_t r0 = 0; r0 < rows; r0 += MAX_ROWS) {
    const int64_t r = std::min(MAX_ROWS, rows - r0);
    const Block block = by_rows[r - 1];
    at::parallel_for(0, (n + 15) / 16, 4, [&](int64_t b0, int64_t b1) {
      block(xf.data() + r0 * k, wp, sp, k, b0 * 16, std::min(n, b1 * 16), yp + r0 * n, n);
    });
  }
  return y;
#else
  TORCH_CHECK(false, op, ": built without AVX-512");
#endif
}

Tensor int8_rows_mm(const Tensor& x, const Tensor& w, const Tensor& scale) {
  TORCH_CHECK(w.scalar_type() == at::kChar, "int8_rows_mm: weight must be int8");
#if defined(__AVX512F__)
  return rows_mm<Int8Decode>(x, w, scale, "int8_rows_mm");
#else
  TORCH_CHECK(false, "int8_rows_mm: built without AVX-512");
#endif
}

Tensor fp8_rows_mm(const Tensor& x, const Tensor& w, const Tensor& scale) {
  TORCH_CHECK(w.scalar_type() == at::kFloat8_e4m3fn || w.scalar_type() == at::kByte,
              "fp8_rows_mm: weight must be float8_e4m3fn (or its raw bytes)");
#if defined(__AVX512F__)
  return rows_mm<Fp8Decode>(x, w, scale, "fp8_rows_mm");
#else
  TORCH_CHECK(false, "fp8_rows_mm: built without AVX-512");
#endif
}

// ---------------------------------------------------------------- int4, torch's CPU layout

#if defined(__AVX512F__)
// One 64-row block of outputs over all K for R rows of x. Per k, 32 bytes hold the codes of
// the block's 64 rows (low nibbles rows 0-31, high nibbles rows 32-63): one broadcast x value
// multiplies 64 weights, so no horizontal sums are needed. Per group, the code sums fold in as
// w = (q - 8) s + z  =>  sum_k x w = s * sum_k x q + (z - 8 s) * sum_k x.
template <int R>
void int4_block(const float* x, const float* xsum, const uint8_t* codes, const BFloat16* sz, int64_t k,
                int64_t group, int64_t n, int64_t nb, BFloat16* y) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  const __m512i low4 = _mm512_set1_epi32(0x0f);
  const int64_t groups = k / group;
  for (int64_t g = 0; g < groups; ++g) {
    __m512 part[R][4];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 4; ++c) part[r][c] = _mm512_setzero_ps();
    for (int64_t kk = g * group; kk < (g + 1) * group; ++kk) {
      const uint8_t* p = codes + kk * 32;
      if (kk % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(p + 32 * PREFETCH_K), _MM_HINT_T0);
      const __m512i b0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      const __m512i b1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
      __m512 wv[4];
      wv[0] = _mm512_cvtepi32_ps(_mm512_and_si512(b0, low4));  // rows 0-15
      wv[1] = _mm512_cvtepi32_ps(_mm512_and_si512(b1, low4));  // rows 16-31
      wv[2] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b0, 4));    // rows 32-47
      wv[3] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b1, 4));    // rows 48-63
      for (int r = 0; r < R; ++r) {
        const __m512 xv = _mm512_set1_ps(x[r * k + kk]);
        for (int c = 0; c < 4; ++c) part[r][c] = _mm512_fmadd_ps(xv, wv[c], part[r][c]);
      }
    }
    // (scale, zero) pairs of this group's 64 rows: [g, nb .. nb + 64, 2] bf16.
    const BFloat16* pairs = sz + (g * n + nb) * 2;
    for (int c = 0; c < 4; ++c) {
      alignas(64) float s[16], z[16];
      for (int i = 0; i < 16; ++i) {
        s[i] = static_cast<float>(pairs[(c * 16 + i) * 2]);
        z[i] = static_cast<float>(pairs[(c * 16 + i) * 2 + 1]) - 8.f * s[i];
      }
      const __m512 sv = _mm512_load_ps(s), zv = _mm512_load_ps(z);
      for (int r = 0; r < R; ++r) {
        acc[r][c] = _mm512_fmadd_ps(part[r][c], sv, acc[r][c]);
        acc[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(xsum[r * groups + g]), zv, acc[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    alignas(64) float buf[64];
    for (int c = 0; c < 4; ++c) _mm512_store_ps(buf + c * 16, acc[r][c]);
    for (int i = 0; i < 64; ++i) y[r * n + nb + i] = static_cast<BFloat16>(buf[i]);
  }
}
#endif

// x [M, K] bf16; codes: torch's AVX-512 int4 pack of an [N, K] weight with N % 64 == 0;
// scale_zeros [K / group, N, 2] bf16. Returns x @ W.T as bf16 [M, N].
Tensor int4_mm(const Tensor& x, const Tensor& codes, int64_t group, const Tensor& scale_zeros) {
  TORCH_CHECK(scale_zeros.dim() == 3 && scale_zeros.size(2) == 2 && scale_zeros.is_contiguous() &&
                  scale_zeros.scalar_type() == at::kBFloat16,
              "int4_mm: scale_zeros must be contiguous bf16 [K/group, N, 2]");
  const int64_t n = scale_zeros.size(1), k = scale_zeros.size(0) * group;
  check_x(x, k, "int4_mm");
  TORCH_CHECK(n % 64 == 0 && group % 2 == 0 && codes.is_contiguous() && codes.nbytes() == n * k / 2,
              "int4_mm: needs N % 64 == 0 and the packed weight of an [N, K] matrix");
  const int64_t rows = x.size(0), groups = k / group;
  Tensor y = at::empty({rows, n}, x.options());
#if defined(__AVX512F__)
  const std::vector<float> xf = widen(x);
  std::vector<float> xsum(static_cast<size_t>(rows * groups), 0.f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t i = 0; i < group; ++i) xsum[r * groups + g] += xf[r * k + g * group + i];
  const uint8_t* cp = static_cast<const uint8_t*>(codes.const_data_ptr());
  const BFloat16* szp = scale_zeros.const_data_ptr<BFloat16>();
  BFloat16* yp = y.mutable_data_ptr<BFloat16>();
  using Block = void (*)(const float*, const float*, const uint8_t*, const BFloat16*, int64_t, int64_t,
                         int64_t, int64_t, BFloat16*);
  // acc and part take 8 vectors per row: four rows fill the 32 vector registers.
  static constexpr Block by_rows[] = {int4_block<1>, int4_block<2>, int4_block<3>, int4_block<4>};
  for (int64_t r0 = 0; r0 < rows; r0 += 4) {
    const int64_t r = std::min<int64_t>(4, rows - r0);
    const Block block = by_rows[r - 1];
    at::parallel_for(0, n / 64, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        block(xf.data() + r0 * k, xsum.data() + r0 * groups, cp + b * k * 32, szp, k, group, n, b * 64,
              yp + r0 * n);
    });
  }
  return y;
#else
  TORCH_CHECK(false, "int4_mm: built without AVX-512");
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(inferd_cpu, m) {
  m.def("int8_rows_mm(Tensor x, Tensor weight, Tensor scale) -> Tensor");
  m.def("fp8_rows_mm(Tensor x, Tensor weight, Tensor scale) -> Tensor");
  m.def("int4_mm(Tensor x, Tensor codes, int group_size, Tensor scale_zeros) -> Tensor");
}

TORCH_LIBRARY_IMPL(inferd_cpu, CPU, m) {
  m.impl("int8_rows_mm", int8_rows_mm);
  m.impl("fp8_rows_mm", fp8_rows_mm);
  m.impl("int4_mm", int4_mm);
}
