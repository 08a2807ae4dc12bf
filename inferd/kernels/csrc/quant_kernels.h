// Weight-only quantized matmul kernels for decode-sized batches, shared by quant_gemv.cpp (one
// torch op each, parallel over output rows) and decode_team.cpp (the decode stack run by one
// thread team, each thread a range of output rows). Results per output row do not depend on the
// range that computes it, so both paths are bitwise alike.
//
// The ISA shows only in the files included below, one per kernel family and ISA:
//   rows_mm_{avx512,avx2,scalar}.h        int8 / fp8 row-major weights, one scale per row
//   tiles_{avx512,avx2,neon,scalar}.h     inferd's int4 and int8 tile layouts (below)
// The tile kernels form exact integer group sums, so every ISA's result is bitwise the scalar
// reference's; the row-major kernels agree within float rounding (their sums' order differs).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace inferd_quant {

using c10::BFloat16;

constexpr int64_t MAX_ROWS = 8;  // rows per pass; larger batches run in passes of this many
constexpr int64_t PREFETCH_ROWS = 8;  // weight rows fetched ahead of use (row-major layouts)

// x [M, K] bf16 -> fp32 (widened once, read K/16 times per output row), into a reused buffer.
inline void widen(const BFloat16* p, int64_t count, std::vector<float>& out) {
  out.resize(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(p[i]);
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
//
// Every ISA quantizes x alike (the same X, sx, group sums), so the integer sums, and with them
// the results, are the same bit for bit; only how the sums are formed differs (VNNI reads the
// digits h and l, AVX2 and NEON multiply 16-bit X directly, the scalar reference loops).

constexpr int32_t X_MAX = 32639;  // keeps h = round(X / 256) within [-127, 127]

// Per row of x, per k: X as int16 (x16), or as its int8 digits h and l (VNNI, AMX); per group
// the scale sx, the plain sum of x (a fixed 16-lane tree, see group_sum) and the integer sum
// of X (for the int8 tiles' code offset).
struct QuantizedRows {
  std::vector<int8_t> hi, lo;
  std::vector<int16_t> x16;
  std::vector<float> scale, sum;
  std::vector<int32_t> isum;
};

// The sum of a group of x in the order every ISA reproduces: sixteen lane sums over the group
// (lane j takes elements j, j + 16, ...), then halves added pairwise (lanes j and j + 8, then
// j + 4, j + 2, j + 1), as AVX-512's reduce_add does.
inline float group_sum_tree(const float (&part)[16]) {
  float t8[8], t4[4];
  for (int j = 0; j < 8; ++j) t8[j] = part[j + 8] + part[j];
  for (int j = 0; j < 4; ++j) t4[j] = t8[j + 4] + t8[j];
  const float a = t4[0] + t4[2], b = t4[1] + t4[3];
  return a + b;
}

// A tile's fp16 scales (and mins, where the layout has them) for one group: 32 halves a group
// with mins (int4 always; int8 holding GGUF's asymmetric Q5_1/Q5_K), 16 without.
template <bool MIN>
constexpr int64_t scale_halves() { return MIN ? 32 : 16; }

}  // namespace inferd_quant

#if defined(__AVX512F__)
#include "rows_mm_avx512.h"
#elif defined(__AVX2__) && defined(__FMA__) && __has_include("rows_mm_avx2.h")
#include "rows_mm_avx2.h"
#else
#include "rows_mm_scalar.h"
#endif

#if defined(INFERD_ROWS_MM_BLOCKS)
namespace inferd_quant {

// Output rows [n0, n1) (multiples of 16 from 0, except at n) of x @ W.T for all rows of x
// (widened to fp32), in passes of MAX_ROWS rows through the vector header's rows_mm_block.
template <typename Decode, typename Scale>
inline void rows_mm_range(const float* xf, const uint8_t* wp, const Scale* sp, int64_t rows, int64_t n, int64_t k,
                          int64_t n0, int64_t n1, BFloat16* yp) {
  using Block = void (*)(const float*, const uint8_t*, const Scale*, int64_t, int64_t, int64_t, BFloat16*, int64_t);
  static constexpr Block by_rows[] = {
      rows_mm_block<1, Decode, Scale>, rows_mm_block<2, Decode, Scale>, rows_mm_block<3, Decode, Scale>,
      rows_mm_block<4, Decode, Scale>, rows_mm_block<5, Decode, Scale>, rows_mm_block<6, Decode, Scale>,
      rows_mm_block<7, Decode, Scale>, rows_mm_block<8, Decode, Scale>};
  for (int64_t r0 = 0; r0 < rows; r0 += MAX_ROWS) {
    const int64_t r = std::min(MAX_ROWS, rows - r0);
    by_rows[r - 1](xf + r0 * k, wp, sp, k, n0, n1, yp + r0 * n, n);
  }
}

}  // namespace inferd_quant
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include "tiles_avx512.h"
#elif defined(__AVX2__) && defined(__FMA__) && __has_include("tiles_avx2.h")
#include "tiles_avx2.h"
#elif defined(__ARM_FEATURE_DOTPROD) && __has_include("tiles_neon.h")
#include "tiles_neon.h"
#else
#include "tiles_scalar.h"
#endif

namespace inferd_quant {

inline void int4_tile_range(const QuantizedRows& q, int64_t rows, const uint8_t* codes, const c10::Half* sz,
                            int64_t k, int64_t group, int64_t begin, int64_t end, BFloat16* y, int64_t n) {
  tile_range<true>(q, rows, codes, sz, k, group, begin, end, y, n);
}

// with_min: sc holds (scale, min) pairs [N/16, K/group, 2, 16], w = q s + m, as int4's do.
inline void int8_tile_range(const QuantizedRows& q, int64_t rows, const uint8_t* codes, const c10::Half* sc,
                            int64_t k, int64_t group, int64_t begin, int64_t end, BFloat16* y, int64_t n,
                            bool with_min = false) {
  if (with_min) return tile_range<false, true>(q, rows, codes, sc, k, group, begin, end, y, n);
  tile_range<false, false>(q, rows, codes, sc, k, group, begin, end, y, n);
}

}  // namespace inferd_quant
