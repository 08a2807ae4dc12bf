// Weight-only quantized matmuls for decode-sized batches (a few rows of bf16 activations),
// reading the weights in the layouts inferd's quantized linears already hold, so nothing is
// stored twice:
//   int8_rows_mm  int8 [N, K] row-major, one scale (fp32 or bf16) per output row
//   fp8_rows_mm   float8_e4m3fn [N, K] row-major, one scale (fp32 or bf16) per output row
//   int4_mm       inferd's int4 tile layout ([N/16, K/8, 64] bytes, see its section below),
//                 fp16 (scale, min) [N/16, K/group, 2, 16]: w = q s + m
// Decode is memory-bound: each weight byte is read once per call and widened in registers.
// Rows are computed independently in a fixed order, so results do not depend on how many rows
// share the call. Registered next to cpu_ops.cpp's kernels as torch.ops.inferd_cpu.*.

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

// Scales are read as the linear holds them (fp32, or bf16 widened exactly in registers).
inline __m512 load_scale16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load_scale16(const BFloat16* p, __mmask16 m) {
  const __m256i raw = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

template <int M, typename Decode, typename Scale>
void rows_mm_block(const float* x, const uint8_t* w, const Scale* scale, int64_t k, int64_t n0,
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

template <typename Decode, typename Scale>
void rows_mm_run(const std::vector<float>& xf, const uint8_t* wp, const Scale* sp, int64_t rows, int64_t n,
                 int64_t k, BFloat16* yp) {
  using Block = void (*)(const float*, const uint8_t*, const Scale*, int64_t, int64_t, int64_t, BFloat16*, int64_t);
  static constexpr Block by_rows[] = {
      rows_mm_block<1, Decode, Scale>, rows_mm_block<2, Decode, Scale>, rows_mm_block<3, Decode, Scale>,
      rows_mm_block<4, Decode, Scale>, rows_mm_block<5, Decode, Scale>, rows_mm_block<6, Decode, Scale>,
      rows_mm_block<7, Decode, Scale>, rows_mm_block<8, Decode, Scale>};
  for (int64_t r0 = 0; r0 < rows; r0 += MAX_ROWS) {
    const int64_t r = std::min(MAX_ROWS, rows - r0);
    const Block block = by_rows[r - 1];
    at::parallel_for(0, (n + 15) / 16, 4, [&](int64_t b0, int64_t b1) {
      block(xf.data() + r0 * k, wp, sp, k, b0 * 16, std::min(n, b1 * 16), yp + r0 * n, n);
    });
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
  BFloat16* yp = y.mutable_data_ptr<BFloat16>();
  if (scale.scalar_type() == at::kFloat) {
    rows_mm_run<Decode>(xf, wp, scale.const_data_ptr<float>(), rows, n, k, yp);
  } else {
    rows_mm_run<Decode>(xf, wp, scale.const_data_ptr<BFloat16>(), rows, n, k, yp);
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

// ---------------------------------------------------------------- int4, inferd's tile layout
//
// The weight layout (made by inferd/quant/kernels.py, pack_int4_tiles) serves vpdpbusd, which
// adds four u8 x s8 products into each int32 lane: codes [N/16, K/8, 64] uint8, tile t holding
// rows 16t..16t+15; in each 8-wide k chunk byte 4i+j has row i's code for k0+j in its low nibble
// and for k0+4+j in its high nibble. scale_min [N/16, K/group, 2, 16] fp16: per tile and group
// 16 scales s then 16 mins m, w = q s + m (fp16 holds GGUF's Q4_0/Q4_1 values exactly).
//
// Activations are held exactly enough in integers: per row and group, x = sx X + e with X an
// integer, |X| <= X_MAX and |e| <= sx / 2 = max|x| / 65278 (16 bits against the group's largest
// value; bf16 itself keeps 8), split as X = 256 h + l with h, l int8. Then per group
//   sum_k x w = s sx sum_k q X + m sum_k x,   sum_k q X = 256 sum q h + sum q l,
// both integer sums exact; one u8 x s8 instruction covers 64 weights, so batch-1 decode is
// bound by memory, not by widening codes to floats (which held this CPU at ~14 GB/s a core).

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
constexpr int32_t X_MAX = 32639;        // keeps h = round(X / 256) within [-127, 127]
constexpr int64_t PREFETCH_BYTES = 2048;  // weight bytes fetched ahead of use, per tile stream

// Per row of x: int8 digits h and l [K]; per group the scale sx and the plain sum of x.
struct QuantizedRows {
  std::vector<int8_t> hi, lo;
  std::vector<float> scale, sum;
};

QuantizedRows quantize_rows(const BFloat16* x, int64_t rows, int64_t k, int64_t group) {
  const int64_t groups = k / group;
  QuantizedRows q{std::vector<int8_t>(rows * k), std::vector<int8_t>(rows * k),
                  std::vector<float>(rows * groups), std::vector<float>(rows * groups)};
  const __m512 sign_off = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t base = r * k + g * group;
      __m512 vmax = _mm512_setzero_ps(), vsum = _mm512_setzero_ps();
      bool finite = true;
      for (int64_t i = 0; i < group; i += 16) {
        const __m512 v = inferd_vec::load16(x + base + i);
        const __m512 a = _mm512_and_ps(v, sign_off);
        finite = finite && _mm512_cmp_ps_mask(a, _mm512_set1_ps(INFINITY), _CMP_LT_OQ) == 0xffff;
        vmax = _mm512_max_ps(vmax, a);
        vsum = _mm512_add_ps(vsum, v);
      }
      const float m = _mm512_reduce_max_ps(vmax);
      // NaN or infinity poisons the group's result, as it would a float dot product.
      q.scale[r * groups + g] = finite ? m / X_MAX : NAN;
      q.sum[r * groups + g] = _mm512_reduce_add_ps(vsum);
      const __m512 inv = _mm512_set1_ps(finite && m > 0 ? X_MAX / m : 0.f);
      const __m512i lim = _mm512_set1_epi32(X_MAX);
      for (int64_t i = 0; i < group; i += 16) {
        __m512i xi = _mm512_cvtps_epi32(_mm512_mul_ps(inferd_vec::load16(x + base + i), inv));
        xi = _mm512_max_epi32(_mm512_min_epi32(xi, lim), _mm512_sub_epi32(_mm512_setzero_si512(), lim));
        const __m512i h = _mm512_srai_epi32(_mm512_add_epi32(xi, _mm512_set1_epi32(128)), 8);
        const __m512i l = _mm512_sub_epi32(xi, _mm512_slli_epi32(h, 8));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q.hi.data() + base + i), _mm512_cvtepi32_epi8(h));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q.lo.data() + base + i), _mm512_cvtepi32_epi8(l));
      }
    }
  return q;
}

inline __m512i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return _mm512_set1_epi32(v);
}

// R rows of x (from row r0) against T consecutive tiles (16 output rows each) from tile t0.
template <int R, int T>
void int4_tiles(const QuantizedRows& q, int64_t r0, const uint8_t* codes, const c10::Half* sz, int64_t k,
                int64_t group, int64_t t0, BFloat16* y, int64_t n) {
  const int64_t groups = k / group, chunks = k / 8, per_group = group / 8;
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const uint8_t* c[T];
  for (int t = 0; t < T; ++t) c[t] = codes + (t0 + t) * chunks * 64;
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i ih[R][T], il[R][T];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) ih[r][t] = il[r][t] = _mm512_setzero_si512();
    for (int64_t ch = g * per_group; ch < (g + 1) * per_group; ++ch) {
      __m512i a[T], b[T];
      for (int t = 0; t < T; ++t) {
        const uint8_t* p = c[t] + ch * 64;
        _mm_prefetch(reinterpret_cast<const char*>(p + PREFETCH_BYTES), _MM_HINT_T0);
        const __m512i v = _mm512_loadu_si512(p);
        a[t] = _mm512_and_si512(v, low4);                          // k0 .. k0+3
        b[t] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);    // k0+4 .. k0+7
      }
      for (int r = 0; r < R; ++r) {
        const int8_t* hp = q.hi.data() + (r0 + r) * k + ch * 8;
        const int8_t* lp = q.lo.data() + (r0 + r) * k + ch * 8;
        const __m512i h0 = broadcast4(hp), h1 = broadcast4(hp + 4), l0 = broadcast4(lp), l1 = broadcast4(lp + 4);
        for (int t = 0; t < T; ++t) {
          ih[r][t] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(ih[r][t], a[t], h0), b[t], h1);
          il[r][t] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(il[r][t], a[t], l0), b[t], l1);
        }
      }
    }
    for (int t = 0; t < T; ++t) {
      const c10::Half* sm = sz + ((t0 + t) * groups + g) * 32;  // 16 scales, then 16 mins
      const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sm)));
      const __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sm + 16)));
      for (int r = 0; r < R; ++r) {
        const int64_t at = (r0 + r) * groups + g;
        // 256 h-sum + l-sum stays exact in int32 for any group up to 256 (|.| < 2^27).
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(ih[r][t], 8), il[r][t]));
        acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(s, _mm512_set1_ps(q.scale[at])), dot, acc[r][t]);
        acc[r][t] = _mm512_fmadd_ps(mn, _mm512_set1_ps(q.sum[at]), acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      alignas(64) float buf[16];
      _mm512_store_ps(buf, acc[r][t]);
      BFloat16* out = y + (r0 + r) * n + (t0 + t) * 16;
      for (int i = 0; i < 16; ++i) out[i] = static_cast<BFloat16>(buf[i]);
    }
}

using TileFn = void (*)(const QuantizedRows&, int64_t, const uint8_t*, const c10::Half*, int64_t, int64_t, int64_t,
                        BFloat16*, int64_t);
constexpr int64_t UNIT_TILES = 4;  // tiles (64 output rows) a thread runs at once

// Register budget: one row of x runs four tiles at once (eight dot-product chains, enough to
// hide the instruction's latency); more rows share fewer tiles.
TileFn tile_fn(int64_t rows, int64_t tiles) {
  static constexpr TileFn one[] = {int4_tiles<1, 1>, int4_tiles<1, 2>, int4_tiles<1, 3>, int4_tiles<1, 4>};
  static constexpr TileFn two[] = {int4_tiles<2, 1>, int4_tiles<2, 2>};
  if (rows == 1) return one[tiles - 1];
  if (rows == 2) return two[tiles - 1];
  return rows == 3 ? int4_tiles<3, 1> : int4_tiles<4, 1>;
}
constexpr int64_t max_tiles(int64_t rows) { return rows == 1 ? 4 : rows == 2 ? 2 : 1; }
#endif

// x [M, K] bf16; codes [N/16, K/8, 64] and scale_min [N/16, K/group, 2, 16] fp16 in the tile
// layout above. Returns x @ W.T as bf16 [M, N]. Each row of x is computed on its own, in the same
// order whatever M is.
Tensor int4_mm(const Tensor& x, const Tensor& codes, int64_t group, const Tensor& scale_zeros) {
  TORCH_CHECK(scale_zeros.dim() == 4 && scale_zeros.size(2) == 2 && scale_zeros.size(3) == 16 &&
                  scale_zeros.is_contiguous() && scale_zeros.scalar_type() == at::kHalf,
              "int4_mm: scale_min must be contiguous fp16 [N/16, K/group, 2, 16]");
  const int64_t tiles = scale_zeros.size(0), n = tiles * 16, k = scale_zeros.size(1) * group;
  check_x(x, k, "int4_mm");
  TORCH_CHECK(group % 16 == 0 && codes.dim() == 3 && codes.size(0) == tiles && codes.size(1) == k / 8 &&
                  codes.size(2) == 64 && codes.is_contiguous() && codes.element_size() == 1,
              "int4_mm: codes must be the [N/16, K/8, 64] tile layout of the same weight, group % 16 == 0");
  const int64_t rows = x.size(0);
  Tensor y = at::empty({rows, n}, x.options());
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  const QuantizedRows q = quantize_rows(x.const_data_ptr<BFloat16>(), rows, k, group);
  const uint8_t* cp = static_cast<const uint8_t*>(codes.const_data_ptr());
  const c10::Half* szp = scale_zeros.const_data_ptr<c10::Half>();
  BFloat16* yp = y.mutable_data_ptr<BFloat16>();
  // Each thread takes one contiguous run of tiles (an even split: whole 4-tile units left one
  // thread with a quarter more work on 576-row weights) and walks it UNIT_TILES at a time.
  at::parallel_for(0, tiles, UNIT_TILES, [&](int64_t begin, int64_t end) {
    for (int64_t first = begin; first < end; first += UNIT_TILES) {
      const int64_t last = std::min(end, first + UNIT_TILES);
      // Rows in passes over the unit's tiles: after the first pass its weights are in cache.
      for (int64_t r0 = 0; r0 < rows; r0 += 4) {
        const int64_t r = std::min<int64_t>(4, rows - r0);
        for (int64_t t = first; t < last; t += max_tiles(r)) {
          const int64_t nt = std::min(max_tiles(r), last - t);
          tile_fn(r, nt)(q, r0, cp, szp, k, group, t, yp, n);
        }
      }
    }
  });
  return y;
#else
  TORCH_CHECK(false, "int4_mm: built without AVX-512 VNNI");
#endif
}

// Whether int4_mm was compiled for this CPU (it needs AVX-512 VNNI and BW).
bool int4_mm_built() {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(inferd_cpu, m) {
  m.def("int8_rows_mm(Tensor x, Tensor weight, Tensor scale) -> Tensor");
  m.def("fp8_rows_mm(Tensor x, Tensor weight, Tensor scale) -> Tensor");
  m.def("int4_mm(Tensor x, Tensor codes, int group_size, Tensor scale_zeros) -> Tensor");
  m.def("int4_mm_built() -> bool", int4_mm_built);
}

TORCH_LIBRARY_IMPL(inferd_cpu, CPU, m) {
  m.impl("int8_rows_mm", int8_rows_mm);
  m.impl("fp8_rows_mm", fp8_rows_mm);
  m.impl("int4_mm", int4_mm);
}
