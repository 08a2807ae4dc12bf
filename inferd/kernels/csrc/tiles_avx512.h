// The tile kernels on AVX-512 VNNI (vpdpbusd on the activations' two int8 digits), and on AMX
// for batches of rows where the CPU has it. The integer group sums are exact, so results are
// bitwise the scalar reference's (tiles_scalar.h). See quant_kernels.h for the layouts.
#pragma once

#include "vec_avx512.h"
#if defined(__AMX_TILE__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace inferd_quant {

constexpr bool TILES_FAST = true;

// Prefetch distances, in 64-byte lines of each tile's own code and scale streams. A stream's
// prefetch runs on into the same tile of the next unit (the next T tiles, usually this thread's
// next work): a fixed byte offset instead landed in the neighbouring tile, which is already
// being read, and left the end of every tile and all the scales to demand misses. Into L2: the
// L1 fill buffers are too few for this many lines in flight.
constexpr int64_t PREFETCH_CHUNKS = 32;
constexpr int64_t PREFETCH_GROUPS = 16;

// Rows from which the tile kernels run on AMX where built (576x3072, 2 threads): int4 pays for
// unpacking its nibbles into a B tile, and is level at 8 rows; int8 reads its codes in place.
constexpr int64_t AMX_MIN_ROWS_INT8 = 8, AMX_MIN_ROWS_INT4 = 16;
constexpr int64_t AMX_MIN_ROWS = AMX_MIN_ROWS_INT8 < AMX_MIN_ROWS_INT4 ? AMX_MIN_ROWS_INT8 : AMX_MIN_ROWS_INT4;


// Fills q for rows x [rows, K] (q's buffers are reused across calls: no allocation once grown;
// for AMX's batches the digits are zero-padded to a whole number of 16-row blocks).
inline void quantize_rows(const BFloat16* x, int64_t rows, int64_t k, int64_t group, QuantizedRows& q) {
  // AMX (from AMX_MIN_ROWS rows) reads whole 16-row blocks; decode's few rows stay unpadded.
  const int64_t groups = k / group, padded = rows >= AMX_MIN_ROWS ? (rows + 15) / 16 * 16 : rows;
  q.hi.resize(padded * k);
  q.lo.resize(padded * k);
  std::fill(q.hi.begin() + rows * k, q.hi.end(), int8_t{0});
  std::fill(q.lo.begin() + rows * k, q.lo.end(), int8_t{0});
  q.scale.resize(rows * groups);
  q.sum.resize(rows * groups);
  q.isum.resize(rows * groups);
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
      __m512i isum = _mm512_setzero_si512();
      for (int64_t i = 0; i < group; i += 16) {
        __m512i xi = _mm512_cvtps_epi32(_mm512_mul_ps(inferd_vec::load16(x + base + i), inv));
        xi = _mm512_max_epi32(_mm512_min_epi32(xi, lim), _mm512_sub_epi32(_mm512_setzero_si512(), lim));
        isum = _mm512_add_epi32(isum, xi);
        const __m512i h = _mm512_srai_epi32(_mm512_add_epi32(xi, _mm512_set1_epi32(128)), 8);
        const __m512i l = _mm512_sub_epi32(xi, _mm512_slli_epi32(h, 8));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q.hi.data() + base + i), _mm512_cvtepi32_epi8(h));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q.lo.data() + base + i), _mm512_cvtepi32_epi8(l));
      }
      q.isum[r * groups + g] = _mm512_reduce_add_epi32(isum);
    }
}

inline __m512i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return _mm512_set1_epi32(v);
}

// acc[r][t] (16 output rows of tile t0 + t for row r0 + r of x) -> bf16 y.
template <int R, int T>
inline void store_tiles(const __m512 (&acc)[R][T], int64_t r0, int64_t t0, BFloat16* y, int64_t n) {
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      alignas(64) float buf[16];
      _mm512_store_ps(buf, acc[r][t]);
      BFloat16* out = y + (r0 + r) * n + (t0 + t) * 16;
      for (int i = 0; i < 16; ++i) out[i] = static_cast<BFloat16>(buf[i]);
    }
}

// One group's exact integer sums (of h and of l, 16 output rows) into the float accumulator,
// for the int4 (w = q s + m) or int8 (q + 128 stored) layout: the one epilogue the VNNI and AMX
// kernels share, so their results are bitwise alike. s (and m): the tile's 16 scales (mins, MIN).
template <bool INT4, bool MIN = INT4>
inline __m512 group_epilogue(__m512 acc, __m512i sum_h, __m512i sum_l, __m512 s, __m512 m, const QuantizedRows& q,
                             int64_t at) {
  // 256 h-sum + l-sum stays exact in int32 for any group up to 128 (int8) or 256 (int4).
  __m512i dot = _mm512_add_epi32(_mm512_slli_epi32(sum_h, 8), sum_l);
  if constexpr (!INT4) dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(128 * q.isum[at]));
  acc = _mm512_fmadd_ps(_mm512_mul_ps(s, _mm512_set1_ps(q.scale[at])), _mm512_cvtepi32_ps(dot), acc);
  if constexpr (MIN) acc = _mm512_fmadd_ps(m, _mm512_set1_ps(q.sum[at]), acc);
  return acc;
}

// A tile's fp16 scales (and, int4, mins) for one group: 32 halves a group for int4, 16 for int8.

// The int8 tile layout:
// codes [N/16, K/4, 64] uint8, tile t holding rows 16t..16t+15: in each 4-wide k chunk byte
// 4i+j is q + 128 for row i and k0+j (q int8, so the byte is unsigned, as vpdpbusd's first
// operand must be). scales [N/16, K/group, 16] fp16: w = q s (GGUF Q8_0's fp16 d exactly).
// With x held as for int4 (X = 256 h + l per group), per group
//   sum_k q X = 256 sum (q + 128) h + sum (q + 128) l - 128 sum X,
// all exact in int32 for groups up to 128. Two instructions per 64 weights, against seven for
// int4's nibbles: this kernel streams at memory speed with cycles to spare.

// R rows of x (from row r0) against T consecutive tiles (16 output rows each) from tile t0, on
// VNNI, in the int4 (INT4) or int8 tile layout, with mins (MIN) or without.
template <bool INT4, int R, int T, bool MIN = INT4>
inline void vnni_tiles(const QuantizedRows& q, int64_t r0, const uint8_t* codes, const c10::Half* sc, int64_t k,
                       int64_t group, int64_t t0, BFloat16* y, int64_t n) {
  constexpr int64_t KC = INT4 ? 8 : 4;  // k values per 64-byte chunk
  const int64_t groups = k / group, chunks = k / KC, per_group = group / KC;
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
        const int64_t ahead = ch + PREFETCH_CHUNKS;
        _mm_prefetch(reinterpret_cast<const char*>(ahead < chunks ? c[t] + ahead * 64
                                                                  : c[t] + (T * chunks + ahead - chunks) * 64),
                     _MM_HINT_T1);
        const __m512i v = _mm512_loadu_si512(c[t] + ch * 64);
        if constexpr (INT4) {
          a[t] = _mm512_and_si512(v, low4);                        // k0 .. k0+3
          b[t] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);  // k0+4 .. k0+7
        } else {
          a[t] = v;  // k0 .. k0+3, as q + 128
        }
      }
      for (int r = 0; r < R; ++r) {
        const int8_t* hp = q.hi.data() + (r0 + r) * k + ch * KC;
        const int8_t* lp = q.lo.data() + (r0 + r) * k + ch * KC;
        const __m512i h0 = broadcast4(hp), l0 = broadcast4(lp);
        if constexpr (INT4) {
          const __m512i h1 = broadcast4(hp + 4), l1 = broadcast4(lp + 4);
          for (int t = 0; t < T; ++t) {
            ih[r][t] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(ih[r][t], a[t], h0), b[t], h1);
            il[r][t] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(il[r][t], a[t], l0), b[t], l1);
          }
        } else {
          for (int t = 0; t < T; ++t) {
            ih[r][t] = _mm512_dpbusd_epi32(ih[r][t], a[t], h0);
            il[r][t] = _mm512_dpbusd_epi32(il[r][t], a[t], l0);
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
      const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sg)));
      const __m512 m = MIN ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sg + 16)))
                           : _mm512_setzero_ps();
      for (int r = 0; r < R; ++r)
        acc[r][t] = group_epilogue<INT4, MIN>(acc[r][t], ih[r][t], il[r][t], s, m, q, (r0 + r) * groups + g);
    }
  }
  store_tiles(acc, r0, t0, y, n);
}

using TileFn = void (*)(const QuantizedRows&, int64_t, const uint8_t*, const c10::Half*, int64_t, int64_t, int64_t,
                        BFloat16*, int64_t);
constexpr int64_t UNIT_TILES = 4;  // tiles (64 output rows) a thread runs at once
constexpr int64_t max_tiles(int64_t rows) { return rows == 1 ? 4 : rows == 2 ? 2 : 1; }

// ---------------------------------------------------------------- AMX for batches of rows
//
// From AMX_MIN_ROWS_* rows on, both tile layouts run on AMX where the CPU has it: the
// activation digits h and l are A tiles (16 rows x k bytes, read in place), a weight tile's
// codes are the B tile (int8 tiles already are AMX's 4-byte-interleaved layout; int4 chunks
// unpack into one, low nibbles then high), and tdpbsud forms the same exact int32 group sums
// that vpdpbusd does 64 products at a time. The per-group epilogue is the VNNI kernels' own,
// in their order, so results are bitwise theirs (tested) at a fraction of the instructions.

#if defined(__AMX_TILE__) && defined(__AMX_INT8__)
#define INFERD_AMX 1

// Linux hands AMX state out per process on request; oneDNN asks too, and asking twice is fine.
inline bool amx_usable() {
  static const bool ok = [] {
    constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  }();
  return ok;
}

// GCC's tile load/store intrinsics are asm statements that name only the address: without a
// memory fence the compiler may drop stores a tile load reads, or read a tile store's output
// before it happens.
inline void tile_memory_fence() { asm volatile("" ::: "memory"); }

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// tmm0, tmm1: the h and l sums (m x 16 int32); tmm2, tmm3: h and l (m x kb int8); tmm4: codes.
inline void amx_configure(int m, int kb) {
  TileConfig cfg;
  cfg.rows[0] = cfg.rows[1] = cfg.rows[2] = cfg.rows[3] = static_cast<uint8_t>(m);
  cfg.colsb[0] = cfg.colsb[1] = 64;
  cfg.colsb[2] = cfg.colsb[3] = static_cast<uint16_t>(kb);
  cfg.rows[4] = static_cast<uint8_t>(kb / 4);
  cfg.colsb[4] = 64;
  tile_memory_fence();
  _tile_loadconfig(&cfg);
}

// All rows of q against output tiles [begin, end), either layout. Per tile and group the B tile
// is built once and serves every 16-row block of x (q's digit rows are padded with zeros to a
// whole block, so one tile shape serves all); accumulators live in `acc` [blocks * 16][16].
template <bool INT4, bool MIN = INT4>
inline void amx_tile_range(const QuantizedRows& q, int64_t rows, const uint8_t* codes, const c10::Half* sc,
                           int64_t k, int64_t group, int64_t begin, int64_t end, BFloat16* y, int64_t n) {
  const int64_t groups = k / group, kb = std::min<int64_t>(group, 64), steps = group / kb;
  const int64_t blocks = (rows + 15) / 16;
  alignas(64) int32_t sum_h[16][16], sum_l[16][16];
  alignas(64) uint8_t unpacked[2][16 * 64];  // int4: the group's B tiles as bytes (group <= 128)
  static thread_local std::vector<float> acc_buf;
  acc_buf.resize(blocks * 16 * 16);
  float* acc = acc_buf.data();
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  amx_configure(16, static_cast<int>(kb));
  for (int64_t t = begin; t < end; ++t) {
    std::fill(acc, acc + rows * 16, 0.f);
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* b[2];
      for (int64_t s = 0; s < steps; ++s) {
        const int64_t k0 = g * group + s * kb;
        if constexpr (INT4) {  // chunk c (8 k values) -> B rows 2c (low nibbles), 2c + 1 (high)
          const uint8_t* p = codes + (t * (k / 8) + k0 / 8) * 64;
          for (int64_t ch = 0; ch < kb / 8; ++ch) {
            const __m512i v = _mm512_loadu_si512(p + ch * 64);
            _mm512_store_si512(unpacked[s] + 128 * ch, _mm512_and_si512(v, low4));
            _mm512_store_si512(unpacked[s] + 128 * ch + 64, _mm512_and_si512(_mm512_srli_epi16(v, 4), low4));
          }
          b[s] = unpacked[s];
        } else {
          b[s] = codes + (t * (k / 4) + k0 / 4) * 64;
        }
      }
      tile_memory_fence();
      const c10::Half* sg = sc + (t * groups + g) * scale_halves<MIN>();
      const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sg)));
      const __m512 mn = MIN ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sg + 16)))
                             : _mm512_setzero_ps();
      for (int64_t mb = 0; mb < blocks; ++mb) {
        _tile_zero(0);
        _tile_zero(1);
        for (int64_t st = 0; st < steps; ++st) {
          const int64_t k0 = g * group + st * kb;
          _tile_loadd(2, q.hi.data() + mb * 16 * k + k0, k);
          _tile_loadd(3, q.lo.data() + mb * 16 * k + k0, k);
          _tile_loadd(4, b[st], 64);
          _tile_dpbsud(0, 2, 4);
          _tile_dpbsud(1, 3, 4);
        }
        _tile_stored(0, sum_h, 64);
        _tile_stored(1, sum_l, 64);
        tile_memory_fence();
        const int m = static_cast<int>(std::min<int64_t>(16, rows - mb * 16));
        for (int r = 0; r < m; ++r) {
          const int64_t row = mb * 16 + r;
          _mm512_storeu_ps(acc + row * 16,
                           group_epilogue<INT4, MIN>(_mm512_loadu_ps(acc + row * 16), _mm512_load_si512(sum_h[r]),
                                                _mm512_load_si512(sum_l[r]), s, mn, q, row * groups + g));
        }
      }
    }
    for (int64_t row = 0; row < rows; ++row) {
      BFloat16* out = y + row * n + t * 16;
      for (int i = 0; i < 16; ++i) out[i] = static_cast<BFloat16>(acc[row * 16 + i]);
    }
  }
  _tile_release();
}
#endif

// ---------------------------------------------------------------- ranges of tiles, either layout

// Register budget: one row of x runs four tiles at once (eight dot-product chains, enough to
// hide the instruction's latency); more rows share fewer tiles.
template <bool INT4, bool MIN = INT4>
inline TileFn vnni_tile_fn(int64_t rows, int64_t tiles) {
  static constexpr TileFn one[] = {vnni_tiles<INT4, 1, 1, MIN>, vnni_tiles<INT4, 1, 2, MIN>,
                                   vnni_tiles<INT4, 1, 3, MIN>, vnni_tiles<INT4, 1, 4, MIN>};
  static constexpr TileFn two[] = {vnni_tiles<INT4, 2, 1, MIN>, vnni_tiles<INT4, 2, 2, MIN>};
  if (rows == 1) return one[tiles - 1];
  if (rows == 2) return two[tiles - 1];
  return rows == 3 ? vnni_tiles<INT4, 3, 1, MIN> : vnni_tiles<INT4, 4, 1, MIN>;
}

// Output tiles [begin, end) of x @ W.T for all `rows` rows of q, in the int4 (INT4) or int8
// tile layout: AMX for batches where the CPU has it, else VNNI UNIT_TILES tiles at a time. Each
// tile's result is the same whichever range (thread) and kernel computes it.
template <bool INT4, bool MIN = INT4>
inline void tile_range(const QuantizedRows& q, int64_t rows, const uint8_t* codes, const c10::Half* sc, int64_t k,
                       int64_t group, int64_t begin, int64_t end, BFloat16* y, int64_t n) {
#if defined(INFERD_AMX)
  if (rows >= (INT4 ? AMX_MIN_ROWS_INT4 : AMX_MIN_ROWS_INT8) && amx_usable())
    return amx_tile_range<INT4, MIN>(q, rows, codes, sc, k, group, begin, end, y, n);
#endif
  for (int64_t first = begin; first < end; first += UNIT_TILES) {
    const int64_t last = std::min(end, first + UNIT_TILES);
    // Rows in passes over the unit's tiles: after the first pass its weights are in cache.
    for (int64_t r0 = 0; r0 < rows; r0 += 4) {
      const int64_t r = std::min<int64_t>(4, rows - r0);
      for (int64_t t = first; t < last; t += max_tiles(r)) {
        const int64_t nt = std::min(max_tiles(r), last - t);
        vnni_tile_fn<INT4, MIN>(r, nt)(q, r0, codes, sc, k, group, t, y, n);
      }
    }
  }
}

}  // namespace inferd_quant
