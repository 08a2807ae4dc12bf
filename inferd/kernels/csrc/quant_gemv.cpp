// Weight-only quantized matmuls for decode-sized batches (a few rows of bf16 activations),
// reading the weights in the layouts inferd's quantized linears already hold, so nothing is
// stored twice:
//   int8_rows_mm  int8 [N, K] row-major, one scale (fp32 or bf16) per output row
//   fp8_rows_mm   float8_e4m3fn [N, K] row-major, one scale (fp32 or bf16) per output row
//   int4_mm       inferd's int4 tile layout ([N/16, K/8, 64] bytes, see quant_kernels.h),
//                 fp16 (scale, min) [N/16, K/group, 2, 16]: w = q s + m
//   int8_tiles_mm inferd's int8 tile layout ([N/16, K/4, 64] bytes of q + 128), fp16 scales
//                 [N/16, K/group, 16]: w = q s; or (scale, min) [N/16, K/group, 2, 16]: w = q s + m
//                 (GGUF's asymmetric Q5_1/Q5_K, and fused parts widened to one format)
// Decode is memory-bound: each weight byte is read once per call and widened in registers.
// Rows are computed independently in a fixed order, so results do not depend on how many rows
// share the call. Registered next to cpu_ops.cpp's kernels as torch.ops.inferd_cpu_<level>.*.

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "ops_namespace.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "quant_kernels.h"

namespace {

using at::Tensor;
using c10::BFloat16;
using namespace inferd_quant;

void check_x(const Tensor& x, int64_t k, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kBFloat16,
              op, ": x must be a contiguous CPU bfloat16 [M, K] tensor");
  TORCH_CHECK(x.size(1) == k, op, ": x has ", x.size(1), " columns, the weight ", k);
}

template <typename Decode, typename Scale>
void rows_mm_run(const float* xf, const uint8_t* wp, const Scale* sp, int64_t rows, int64_t n, int64_t k,
                 BFloat16* yp) {
  at::parallel_for(0, (n + 15) / 16, 4, [&](int64_t b0, int64_t b1) {
    rows_mm_range<Decode>(xf, wp, sp, rows, n, k, b0 * 16, std::min(n, b1 * 16), yp);
  });
}

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
  std::vector<float> xf;
  widen(x.const_data_ptr<BFloat16>(), x.numel(), xf);
  const uint8_t* wp = static_cast<const uint8_t*>(w.const_data_ptr());
  BFloat16* yp = y.mutable_data_ptr<BFloat16>();
  if (scale.scalar_type() == at::kFloat) {
    rows_mm_run<Decode>(xf.data(), wp, scale.const_data_ptr<float>(), rows, n, k, yp);
  } else {
    rows_mm_run<Decode>(xf.data(), wp, scale.const_data_ptr<BFloat16>(), rows, n, k, yp);
  }
  return y;
}

Tensor int8_rows_mm(const Tensor& x, const Tensor& w, const Tensor& scale) {
  TORCH_CHECK(w.scalar_type() == at::kChar, "int8_rows_mm: weight must be int8");
  return rows_mm<Int8Decode>(x, w, scale, "int8_rows_mm");
}

Tensor fp8_rows_mm(const Tensor& x, const Tensor& w, const Tensor& scale) {
  TORCH_CHECK(w.scalar_type() == at::kFloat8_e4m3fn || w.scalar_type() == at::kByte,
              "fp8_rows_mm: weight must be float8_e4m3fn (or its raw bytes)");
  return rows_mm<Fp8Decode>(x, w, scale, "fp8_rows_mm");
}


// x @ W.T for a weight in either tile layout (checked by the caller), as bf16 [M, tiles * 16].
// Each thread takes one contiguous run of tiles (an even split: whole 4-tile units left one
// thread with a quarter more work on 576-row weights).
template <bool INT4, bool MIN = INT4>
Tensor tiles_mm(const Tensor& x, const Tensor& codes, int64_t group, const Tensor& scales, int64_t tiles, int64_t k,
                const char* op) {
  const int64_t rows = x.size(0), n = tiles * 16;
  Tensor y = at::empty({rows, n}, x.options());
  QuantizedRows q;
  quantize_rows(x.const_data_ptr<BFloat16>(), rows, k, group, q);
  const uint8_t* cp = static_cast<const uint8_t*>(codes.const_data_ptr());
  const c10::Half* sp = scales.const_data_ptr<c10::Half>();
  BFloat16* yp = y.mutable_data_ptr<BFloat16>();
  at::parallel_for(0, tiles, UNIT_TILES, [&](int64_t begin, int64_t end) {
    tile_range<INT4, MIN>(q, rows, cp, sp, k, group, begin, end, yp, n);
  });
  return y;
}

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
  return tiles_mm<true>(x, codes, group, scale_zeros, tiles, k, "int4_mm");
}

// Whether int8 tile scales are (scale, min) pairs [N/16, G, 2, 16], or plain scales [N/16, G, 16].
bool int8_scales_have_min(const Tensor& scales, const char* op) {
  const bool pairs = scales.dim() == 4 && scales.size(2) == 2 && scales.size(3) == 16;
  TORCH_CHECK((pairs || (scales.dim() == 3 && scales.size(2) == 16)) && scales.is_contiguous() &&
                  scales.scalar_type() == at::kHalf,
              op, ": scales must be contiguous fp16 [N/16, K/group, 16] or (scale, min) [N/16, K/group, 2, 16]");
  return pairs;
}

// x [M, K] bf16; codes [N/16, K/4, 64] (q + 128) and scales [N/16, K/group, 16] fp16 (or with
// mins, [N/16, K/group, 2, 16]) in the int8 tile layout (quant_kernels.h). Returns x @ W.T as
// bf16 [M, N], rows independent of M.
Tensor int8_tiles_mm(const Tensor& x, const Tensor& codes, int64_t group, const Tensor& scales) {
  const bool with_min = int8_scales_have_min(scales, "int8_tiles_mm");
  TORCH_CHECK(group > 0 && group % 16 == 0 && group <= 128, "int8_tiles_mm: group must be 16..128, a multiple of 16");
  const int64_t tiles = scales.size(0), n = tiles * 16, k = scales.size(1) * group;
  check_x(x, k, "int8_tiles_mm");
  TORCH_CHECK(codes.dim() == 3 && codes.size(0) == tiles && codes.size(1) == k / 4 && codes.size(2) == 64 &&
                  codes.is_contiguous() && codes.element_size() == 1,
              "int8_tiles_mm: codes must be the [N/16, K/4, 64] tile layout of the same weight");
  if (with_min) return tiles_mm<false, true>(x, codes, group, scales, tiles, k, "int8_tiles_mm");
  return tiles_mm<false, false>(x, codes, group, scales, tiles, k, "int8_tiles_mm");
}

// ---------------------------------------------------------------- tiles back to bf16 rows
//
// Prefill-sized batches run a bf16 GEMM on the dequantized weight: the tile kernels redo their
// work per 4 rows, oneDNN's GEMM does not. Dequantizing must then cost about one pass over
// memory. Four 64-byte k chunks of a tile hold, per row i, four bytes each in dword lane i: a
// 4x16 dword transpose gives each row its sixteen consecutive bytes.

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#define INFERD_DEQUANT_AVX512 1
// Row 4L+m's four dwords [a, b, c, d] of lane (4L+m), for m = 0..3, as r[m]'s 128-bit lane L.
inline void transpose_dwords(__m512i a, __m512i b, __m512i c, __m512i d, __m512i (&r)[4]) {
  const __m512i ab0 = _mm512_unpacklo_epi32(a, b), ab1 = _mm512_unpackhi_epi32(a, b);
  const __m512i cd0 = _mm512_unpacklo_epi32(c, d), cd1 = _mm512_unpackhi_epi32(c, d);
  r[0] = _mm512_unpacklo_epi64(ab0, cd0);
  r[1] = _mm512_unpackhi_epi64(ab0, cd0);
  r[2] = _mm512_unpacklo_epi64(ab1, cd1);
  r[3] = _mm512_unpackhi_epi64(ab1, cd1);
}

template <int L>
inline __m128i lane(const __m512i (&r)[4], int m) {
  return _mm512_extracti32x4_epi32(r[m], L);
}

// Sixteen codes (as bytes) of one row, scaled (and shifted) as the Python dequantizers do:
// float32 products (and sums), rounded once to bf16.
inline void store_row(BFloat16* out, __m128i bytes, __m512 offset, float s, const float* m) {
  __m512 v = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)), offset);
  v = _mm512_mul_ps(v, _mm512_set1_ps(s));
  if (m != nullptr) v = _mm512_add_ps(v, _mm512_set1_ps(*m));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), (__m256i)_mm512_cvtneps_pbh(v));
}

// The four transposed vectors -> sixteen rows of sixteen values at column k0 of tile t.
template <typename ScaleOf>
inline void store_rows(const __m512i (&r)[4], BFloat16* out, int64_t k, int64_t k0, __m512 offset,
                       ScaleOf&& scale_of) {
  for (int m = 0; m < 4; ++m) {
    const __m128i rows[4] = {lane<0>(r, m), lane<1>(r, m), lane<2>(r, m), lane<3>(r, m)};
    for (int L = 0; L < 4; ++L) {
      const int i = 4 * L + m;
      float s, mn;
      const bool has_min = scale_of(i, s, mn);
      store_row(out + i * k + k0, rows[L], offset, s, has_min ? &mn : nullptr);
    }
  }
}
#endif

// Either tile layout -> bf16 [N, K] in plain loops (the compiler vectorises the inner one):
// w = q * s (int8, q = byte - 128) or q * s + m (int4, and int8 with mins), in float32, rounded
// once to bf16 — the vector path's formula, so the result is the same bit for bit.
template <bool INT4, bool MIN = INT4>
void dequantize_tiles(const Tensor& codes, int64_t group, const Tensor& scales, Tensor& out) {
  constexpr int64_t KC = INT4 ? 8 : 4;
  const int64_t tiles = codes.size(0), chunks = codes.size(1), k = chunks * KC, groups = k / group;
  const uint8_t* cp = static_cast<const uint8_t*>(codes.const_data_ptr());
  const c10::Half* sp = scales.const_data_ptr<c10::Half>();
  BFloat16* op = out.mutable_data_ptr<BFloat16>();
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int i = 0; i < 16; ++i) {
        BFloat16* row = op + (t * 16 + i) * k;
        for (int64_t kk = 0; kk < k; ++kk) {
          const uint8_t byte = cp[(t * chunks + kk / KC) * 64 + 4 * i + kk % 4];
          const c10::Half* sg = sp + (t * groups + kk / group) * scale_halves<MIN>();
          if constexpr (INT4) {
            const float q = static_cast<float>((byte >> (kk % 8 < 4 ? 0 : 4)) & 0x0f);
            row[kk] = static_cast<BFloat16>(q * static_cast<float>(sg[i]) + static_cast<float>(sg[16 + i]));
          } else if constexpr (MIN) {
            const float q = static_cast<float>(byte) - 128.f;
            row[kk] = static_cast<BFloat16>(q * static_cast<float>(sg[i]) + static_cast<float>(sg[16 + i]));
          } else {
            row[kk] = static_cast<BFloat16>((static_cast<float>(byte) - 128.f) * static_cast<float>(sg[i]));
          }
        }
      }
  });
}

// int8 tiles -> bf16 [N, K]: w = q * scale (+ min, with mins).
Tensor int8_tiles_dequantize(const Tensor& codes, int64_t group, const Tensor& scales) {
  const bool with_min = int8_scales_have_min(scales, "int8_tiles_dequantize");
  TORCH_CHECK(codes.dim() == 3 && codes.size(2) == 64 && codes.is_contiguous() && scales.size(0) == codes.size(0) &&
                  group % 16 == 0 && scales.size(1) * group == codes.size(1) * 4,
              "int8_tiles_dequantize: codes [N/16, K/4, 64] and fp16 scales [N/16, K/group, (2,) 16] expected");
  const int64_t tiles = codes.size(0), k = codes.size(1) * 4, groups = scales.size(1);
  Tensor out = at::empty({tiles * 16, k}, codes.options().dtype(at::kBFloat16));
  if (with_min) {  // GGUF's asymmetric types: the plain loops (prefill only, where a GEMM follows)
    dequantize_tiles<false, true>(codes, group, scales, out);
    return out;
  }
#if defined(INFERD_DEQUANT_AVX512)
  const uint8_t* cp = static_cast<const uint8_t*>(codes.const_data_ptr());
  const c10::Half* sp = scales.const_data_ptr<c10::Half>();
  BFloat16* op = out.mutable_data_ptr<BFloat16>();
  const __m512 offset = _mm512_set1_ps(128.f);
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const uint8_t* tile = cp + t * k / 4 * 64;
      for (int64_t k0 = 0; k0 < k; k0 += 16) {  // four chunks of four k values
        const uint8_t* p = tile + k0 / 4 * 64;
        __m512i r[4];
        transpose_dwords(_mm512_loadu_si512(p), _mm512_loadu_si512(p + 64), _mm512_loadu_si512(p + 128),
                         _mm512_loadu_si512(p + 192), r);
        const c10::Half* s = sp + (t * groups + k0 / group) * 16;
        store_rows(r, op + t * 16 * k, k, k0, offset, [&](int i, float& scale, float&) {
          scale = static_cast<float>(s[i]);
          return false;
        });
      }
    }
  });
#else
  dequantize_tiles<false, false>(codes, group, scales, out);
#endif
  return out;
}

// Rows `ids` of an int8 tile weight as float32 [R, K], w = q * scale (+ min): a tied embedding's
// lookup, one row or a few per decode step (a dozen torch ops took ~50 us for one row).
Tensor int8_tiles_rows(const Tensor& codes, int64_t group, const Tensor& scales, const Tensor& ids) {
  const bool with_min = int8_scales_have_min(scales, "int8_tiles_rows");
  const int64_t halves = with_min ? 32 : 16;
  TORCH_CHECK(codes.dim() == 3 && codes.size(2) == 64 && codes.is_contiguous() && scales.size(0) == codes.size(0) &&
                  group > 0 && scales.size(1) * group == codes.size(1) * 4,
              "int8_tiles_rows: codes [N/16, K/4, 64] and fp16 scales [N/16, K/group, (2,) 16] expected");
  TORCH_CHECK(ids.scalar_type() == at::kLong && ids.dim() == 1, "int8_tiles_rows: ids must be int64 [R]");
  const Tensor idx = ids.contiguous();
  const int64_t rows = idx.size(0), n = codes.size(0) * 16, chunks = codes.size(1), k = chunks * 4;
  const int64_t groups = scales.size(1);
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK(ip[r] >= 0 && ip[r] < n, "int8_tiles_rows: index ", ip[r], " is out of range for ", n, " rows");
  Tensor out = at::empty({rows, k}, codes.options().dtype(at::kFloat));
  const uint8_t* cp = static_cast<const uint8_t*>(codes.const_data_ptr());
  const c10::Half* sp = scales.const_data_ptr<c10::Half>();
  float* op = out.mutable_data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = ip[r] / 16, i = ip[r] % 16;
    for (int64_t kk = 0; kk < k; ++kk) {
      const int q = static_cast<int>(cp[(t * chunks + kk / 4) * 64 + 4 * i + kk % 4]) - 128;
      const c10::Half* sg = sp + (t * groups + kk / group) * halves;
      const float w = static_cast<float>(q) * static_cast<float>(sg[i]);
      op[r * k + kk] = with_min ? w + static_cast<float>(sg[16 + i]) : w;
    }
  }
  return out;
}

// int4 tiles -> bf16 [N, K]: w = q * scale + min.
Tensor int4_tiles_dequantize(const Tensor& codes, int64_t group, const Tensor& scale_min) {
  TORCH_CHECK(codes.dim() == 3 && codes.size(2) == 64 && codes.is_contiguous() && scale_min.dim() == 4 &&
                  scale_min.scalar_type() == at::kHalf && scale_min.is_contiguous() &&
                  scale_min.size(0) == codes.size(0) && group % 16 == 0 &&
                  scale_min.size(1) * group == codes.size(1) * 8,
              "int4_tiles_dequantize: codes [N/16, K/8, 64] and fp16 scale_min [N/16, K/group, 2, 16] expected");
  const int64_t tiles = codes.size(0), k = codes.size(1) * 8, groups = scale_min.size(1);
  Tensor out = at::empty({tiles * 16, k}, codes.options().dtype(at::kBFloat16));
#if defined(INFERD_DEQUANT_AVX512)
  const uint8_t* cp = static_cast<const uint8_t*>(codes.const_data_ptr());
  const c10::Half* sp = scale_min.const_data_ptr<c10::Half>();
  BFloat16* op = out.mutable_data_ptr<BFloat16>();
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const __m512 zero = _mm512_setzero_ps();
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const uint8_t* tile = cp + t * k / 8 * 64;
      for (int64_t k0 = 0; k0 < k; k0 += 16) {  // two chunks of eight k values: lo, hi nibbles each
        const uint8_t* p = tile + k0 / 8 * 64;
        const __m512i c0 = _mm512_loadu_si512(p), c1 = _mm512_loadu_si512(p + 64);
        __m512i r[4];
        transpose_dwords(_mm512_and_si512(c0, low4), _mm512_and_si512(_mm512_srli_epi16(c0, 4), low4),
                         _mm512_and_si512(c1, low4), _mm512_and_si512(_mm512_srli_epi16(c1, 4), low4), r);
        const c10::Half* sm = sp + (t * groups + k0 / group) * 32;
        store_rows(r, op + t * 16 * k, k, k0, zero, [&](int i, float& scale, float& minimum) {
          scale = static_cast<float>(sm[i]);
          minimum = static_cast<float>(sm[16 + i]);
          return true;
        });
      }
    }
  });
#else
  dequantize_tiles<true>(codes, group, scale_min, out);
#endif
  return out;
}

// Whether int4_mm and int8_tiles_mm run a vector kernel in this build (the scalar reference is
// correct everywhere but slower than torch's own quantized kernels).
bool int4_mm_built() { return TILES_FAST; }

// Whether the tile kernels run batches of rows on AMX here (built for it, and the OS allows it).
bool tiles_use_amx() {
#if defined(INFERD_AMX)
  return amx_usable();
#else
  return false;
#endif
}

}  // namespace

INFERD_FRAGMENT(m) {
  m.def("int8_rows_mm(Tensor x, Tensor weight, Tensor scale) -> Tensor");
  m.def("fp8_rows_mm(Tensor x, Tensor weight, Tensor scale) -> Tensor");
  m.def("int4_mm(Tensor x, Tensor codes, int group_size, Tensor scale_zeros) -> Tensor");
  m.def("int8_tiles_mm(Tensor x, Tensor codes, int group_size, Tensor scales) -> Tensor");
  m.def("int8_tiles_dequantize(Tensor codes, int group_size, Tensor scales) -> Tensor");
  m.def("int4_tiles_dequantize(Tensor codes, int group_size, Tensor scale_min) -> Tensor");
  m.def("int8_tiles_rows(Tensor codes, int group_size, Tensor scales, Tensor ids) -> Tensor");
  m.def("int4_mm_built() -> bool", int4_mm_built);
  m.def("tiles_use_amx() -> bool", tiles_use_amx);
}

INFERD_IMPL(CPU, m) {
  m.impl("int8_rows_mm", int8_rows_mm);
  m.impl("fp8_rows_mm", fp8_rows_mm);
  m.impl("int4_mm", int4_mm);
  m.impl("int8_tiles_mm", int8_tiles_mm);
  m.impl("int8_tiles_dequantize", int8_tiles_dequantize);
  m.impl("int4_tiles_dequantize", int4_tiles_dequantize);
  m.impl("int8_tiles_rows", int8_tiles_rows);
}
