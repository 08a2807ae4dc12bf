// The tile kernels on AVX2: codes widened to 16 bits and multiplied by X (x as int16) with
// vpmaddwd, which adds two exact products per int32 lane. AVX2 has no VNNI, and its byte
// multiply (vpmaddubsw) saturates on the int8 layout's unsigned codes times X's signed digits;
// 16-bit products never saturate here (|code * X| < 2^23), and the group sums are the same
// integers the VNNI kernel forms, so results are bitwise the scalar reference's (tiles_scalar.h).
// See quant_kernels.h for the layouts. Also serves AVX-512 CPUs without VNNI (compiled wider).
#pragma once

#include "vec_avx2.h"

namespace inferd_quant {

constexpr bool TILES_FAST = true;
constexpr int64_t UNIT_TILES = 4;  // tiles (64 output rows) a thread runs at once
// Prefetch distances in 64-byte lines of each tile's own code and scale streams, running on
// into the same tile of the next unit (as tiles_avx512.h explains), into L2.
constexpr int64_t PREFETCH_CHUNKS = 32;
constexpr int64_t PREFETCH_GROUPS = 16;

// x [rows, K] bf16 -> q: X as int16 per k; per group sx, the sum of x (group_sum_tree's order:
// lanes 0-7 and 8-15 are the two halves below) and the sum of X. Bitwise tiles_scalar.h's.
inline void quantize_rows(const BFloat16* x, int64_t rows, int64_t k, int64_t group, QuantizedRows& q) {
  const int64_t groups = k / group;
  q.x16.resize(rows * k);
  q.scale.resize(rows * groups);
  q.sum.resize(rows * groups);
  q.isum.resize(rows * groups);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 inf = _mm256_set1_ps(INFINITY);
  const __m256i lim = _mm256_set1_epi32(X_MAX), neg_lim = _mm256_set1_epi32(-X_MAX);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t base = r * k + g * group, at = r * groups + g;
      __m256 vmax = _mm256_setzero_ps(), lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
      int finite = 0xff;
      for (int64_t i = 0; i < group; i += 16) {
        const __m256 a = inferd_vec::load8(x + base + i), b = inferd_vec::load8(x + base + i + 8);
        const __m256 aa = _mm256_and_ps(a, abs_mask), ab = _mm256_and_ps(b, abs_mask);
        finite &= _mm256_movemask_ps(_mm256_cmp_ps(aa, inf, _CMP_LT_OQ)) & _mm256_movemask_ps(_mm256_cmp_ps(ab, inf, _CMP_LT_OQ));
        vmax = _mm256_max_ps(vmax, _mm256_max_ps(aa, ab));
        lo = _mm256_add_ps(lo, a);
        hi = _mm256_add_ps(hi, b);
      }
      const float m = inferd_vec::hmax8(vmax);
      const bool ok = finite == 0xff;
      // NaN or infinity poisons the group's result, as it would a float dot product.
      q.scale[at] = ok ? m / X_MAX : NAN;
      const __m256 t8 = _mm256_add_ps(hi, lo);
      const __m128 t4 = _mm_add_ps(_mm256_extractf128_ps(t8, 1), _mm256_castps256_ps128(t8));
      const __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));  // lanes 0, 1: t4[0] + t4[2], t4[1] + t4[3]
      q.sum[at] = _mm_cvtss_f32(_mm_add_ss(t2, _mm_shuffle_ps(t2, t2, 1)));
      const __m256 inv = _mm256_set1_ps(ok && m > 0 ? X_MAX / m : 0.f);
      __m256i isum = _mm256_setzero_si256();
      for (int64_t i = 0; i < group; i += 16) {
        __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(inferd_vec::load8(x + base + i), inv));
        __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(inferd_vec::load8(x + base + i + 8), inv));
        a = _mm256_max_epi32(_mm256_min_epi32(a, lim), neg_lim);
        b = _mm256_max_epi32(_mm256_min_epi32(b, lim), neg_lim);
        isum = _mm256_add_epi32(isum, _mm256_add_epi32(a, b));
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q.x16.data() + base + i), packed);
      }
      const __m128i s4 = _mm_add_epi32(_mm256_extracti128_si256(isum, 1), _mm256_castsi256_si128(isum));
      const __m128i s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
      q.isum[at] = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xb1)));
    }
}

// Four int32 vectors of (row, k pair) sums, rows 4v..4v+3 two lanes each -> two vectors of the
// sixteen rows' sums (rows 0-7, 8-15).
inline void fold_pairs(const __m256i (&acc)[4], __m256i& rows0, __m256i& rows8) {
  rows0 = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[0], acc[1]), 0xd8);
  rows8 = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[2], acc[3]), 0xd8);
}

// A tile's codes widened to int16, as avx2_tiles unpacks them: per 64-byte chunk and per
// sixteen bytes v of it, the low-nibble (or, int8, the only) sixteen int16s, then for int4 the
// high-nibble sixteen. Batches of many rows widen each tile once and reuse it for every row,
// which leaves the inner loop one multiply-add and one add per sixteen products.
template <bool INT4>
constexpr int64_t wide_per_chunk() { return INT4 ? 128 : 64; }

template <bool INT4>
inline void widen_tile(const uint8_t* tile, int64_t chunks, int16_t* wide) {
  const __m128i low4 = _mm_set1_epi8(0x0f);
  for (int64_t ch = 0; ch < chunks; ++ch)
    for (int v = 0; v < 4; ++v) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tile + ch * 64 + 16 * v));
      __m256i* out = reinterpret_cast<__m256i*>(wide + ch * wide_per_chunk<INT4>()) + (INT4 ? 2 : 1) * v;
      if constexpr (INT4) {
        _mm256_storeu_si256(out, _mm256_cvtepu8_epi16(_mm_and_si128(bytes, low4)));
        _mm256_storeu_si256(out + 1, _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(bytes, 4), low4)));
      } else {
        _mm256_storeu_si256(out, _mm256_cvtepu8_epi16(bytes));
      }
    }
}

// R rows of x (from row r0) against T consecutive tiles from tile t0, either layout. WIDE: codes
// is one tile widened by widen_tile (T == 1), read instead of unpacking the bytes. MIN: the
// scales come with a min per group (int4 always; int8 for GGUF's asymmetric types).
template <bool INT4, int R, int T, bool WIDE = false, bool MIN = INT4>
inline void avx2_tiles(const QuantizedRows& q, int64_t r0, const uint8_t* codes, const c10::Half* sc, int64_t k,
                       int64_t group, int64_t t0, BFloat16* y, int64_t n, const int16_t* wide = nullptr) {
  static_assert(!WIDE || T == 1, "a widened tile is one tile");
  constexpr int64_t KC = INT4 ? 8 : 4;  // k values per 64-byte chunk
  const int64_t groups = k / group, chunks = k / KC, per_group = group / KC;
  const __m128i low4 = _mm_set1_epi8(0x0f);
  const uint8_t* c[T];
  for (int t = 0; t < T; ++t) c[t] = codes + (t0 + t) * chunks * 64;
  alignas(32) float acc[R][T][16] = {};
  for (int64_t g = 0; g < groups; ++g) {
    __m256i dot[R][T][4];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t)
        for (int v = 0; v < 4; ++v) dot[r][t][v] = _mm256_setzero_si256();
    for (int64_t ch = g * per_group; ch < (g + 1) * per_group; ++ch) {
      __m256i xb[R][INT4 ? 2 : 1];  // X at the chunk's k values, four int16s repeated
      for (int r = 0; r < R; ++r) {
        const int16_t* xp = q.x16.data() + (r0 + r) * k + ch * KC;
        int64_t lo4;
        std::memcpy(&lo4, xp, 8);
        xb[r][0] = _mm256_set1_epi64x(lo4);
        if constexpr (INT4) {
          int64_t hi4;
          std::memcpy(&hi4, xp + 4, 8);
          xb[r][1] = _mm256_set1_epi64x(hi4);
        }
      }
      for (int t = 0; t < T; ++t) {
        if constexpr (!WIDE) {
          const int64_t ahead = ch + PREFETCH_CHUNKS;
          _mm_prefetch(reinterpret_cast<const char*>(ahead < chunks ? c[t] + ahead * 64
                                                                    : c[t] + (T * chunks + ahead - chunks) * 64),
                       _MM_HINT_T1);
        }
        const uint8_t* p = c[t] + ch * 64;
        const __m256i* wp = reinterpret_cast<const __m256i*>(wide + ch * wide_per_chunk<INT4>());
        for (int v = 0; v < 4; ++v) {  // rows 4v..4v+3: sixteen bytes
          __m128i bytes = _mm_setzero_si128();
          if constexpr (!WIDE) bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * v));
          if constexpr (INT4) {
            // k0 .. k0+3 (low nibbles), k0+4 .. k0+7 (high nibbles)
            const __m256i a = WIDE ? _mm256_loadu_si256(wp + 2 * v) : _mm256_cvtepu8_epi16(_mm_and_si128(bytes, low4));
            const __m256i b = WIDE ? _mm256_loadu_si256(wp + 2 * v + 1)
                                   : _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(bytes, 4), low4));
            for (int r = 0; r < R; ++r)
              dot[r][t][v] = _mm256_add_epi32(dot[r][t][v], _mm256_add_epi32(_mm256_madd_epi16(a, xb[r][0]),
                                                                              _mm256_madd_epi16(b, xb[r][1])));
          } else {
            const __m256i a = WIDE ? _mm256_loadu_si256(wp + v) : _mm256_cvtepu8_epi16(bytes);  // q + 128, k0 .. k0+3
            for (int r = 0; r < R; ++r) dot[r][t][v] = _mm256_add_epi32(dot[r][t][v], _mm256_madd_epi16(a, xb[r][0]));
          }
        }
      }
    }
    for (int t = 0; t < T; ++t) {
      constexpr int64_t H = scale_halves<MIN>();
      const int64_t ahead = g + PREFETCH_GROUPS;
      _mm_prefetch(reinterpret_cast<const char*>(
                       sc + (ahead < groups ? (t0 + t) * groups + ahead : (t0 + t + T) * groups + ahead - groups) * H),
                   _MM_HINT_T1);
      const c10::Half* sg = sc + ((t0 + t) * groups + g) * H;  // 16 scales (then, int4, 16 mins)
      const __m256 s[2] = {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sg))),
                           _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sg + 8)))};
      for (int r = 0; r < R; ++r) {
        const int64_t at = (r0 + r) * groups + g;
        __m256i d[2];
        fold_pairs(dot[r][t], d[0], d[1]);
        const __m256 sx = _mm256_set1_ps(q.scale[at]);
        for (int h = 0; h < 2; ++h) {
          if constexpr (!INT4) d[h] = _mm256_sub_epi32(d[h], _mm256_set1_epi32(128 * q.isum[at]));
          __m256 a = _mm256_load_ps(acc[r][t] + 8 * h);
          a = _mm256_fmadd_ps(_mm256_mul_ps(s[h], sx), _mm256_cvtepi32_ps(d[h]), a);
          if constexpr (MIN) {
            const __m256 mn = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sg + 16 + 8 * h)));
            a = _mm256_fmadd_ps(mn, _mm256_set1_ps(q.sum[at]), a);
          }
          _mm256_store_ps(acc[r][t] + 8 * h, a);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      BFloat16* out = y + (r0 + r) * n + (t0 + t) * 16;
      for (int i = 0; i < 16; ++i) out[i] = static_cast<BFloat16>(acc[r][t][i]);
    }
}

// From this many rows a tile is widened once (widen_tile) and every row pair reads it: the
// unpacking then costs nothing per row. Fewer rows are bound by reading the weights.
constexpr int64_t WIDEN_FROM_ROWS = 4;

// Output tiles [begin, end) of x @ W.T for all `rows` rows of q, either layout, UNIT_TILES
// tiles at a time with the rows in passes over them (after the first pass they are in cache).
// Each tile's result is the same whichever range (thread) computes it, and the same integer
// sums in the same order whether its codes are widened first or not.
template <bool INT4, bool MIN = INT4>
inline void tile_range(const QuantizedRows& q, int64_t rows, const uint8_t* codes, const c10::Half* sc, int64_t k,
                       int64_t group, int64_t begin, int64_t end, BFloat16* y, int64_t n) {
  constexpr int64_t KC = INT4 ? 8 : 4;
  if (rows >= WIDEN_FROM_ROWS) {
    static thread_local std::vector<int16_t> wide;
    const int64_t chunks = k / KC;
    wide.resize(chunks * wide_per_chunk<INT4>());
    for (int64_t t = begin; t < end; ++t) {
      widen_tile<INT4>(codes + t * chunks * 64, chunks, wide.data());
      int64_t r0 = 0;
      for (; r0 + 2 <= rows; r0 += 2) avx2_tiles<INT4, 2, 1, true, MIN>(q, r0, codes, sc, k, group, t, y, n, wide.data());
      if (r0 < rows) avx2_tiles<INT4, 1, 1, true, MIN>(q, r0, codes, sc, k, group, t, y, n, wide.data());
    }
    return;
  }
  for (int64_t first = begin; first < end; first += UNIT_TILES) {
    const int64_t last = std::min(end, first + UNIT_TILES);
    for (int64_t r0 = 0; r0 < rows; r0 += 2) {
      if (rows - r0 >= 2) {
        for (int64_t t = first; t < last; ++t) avx2_tiles<INT4, 2, 1, false, MIN>(q, r0, codes, sc, k, group, t, y, n);
        continue;
      }
      int64_t t = first;
      for (; t + 2 <= last; t += 2) avx2_tiles<INT4, 1, 2, false, MIN>(q, r0, codes, sc, k, group, t, y, n);
      if (t < last) avx2_tiles<INT4, 1, 1, false, MIN>(q, r0, codes, sc, k, group, t, y, n);
    }
  }
}

}  // namespace inferd_quant
