// The tile kernels on ARMv8.2 NEON with dot products (SDOT on the activations' two int8 digits,
// as the VNNI kernels do). The integer group sums are exact, so results are bitwise the scalar
// reference's (tiles_scalar.h). See quant_kernels.h for the layouts. Included only where
// __ARM_FEATURE_DOTPROD is defined.
#pragma once

#include <arm_neon.h>

#include "vec_neon.h"

namespace inferd_quant {

constexpr bool TILES_FAST = true;
constexpr int64_t UNIT_TILES = 4;  // tiles (64 output rows) a thread runs at once

// Fills q for rows x [rows, K] (q's buffers are reused across calls: no allocation once grown):
// the reference's X (x16, and its digits hi, lo), sx, the sum of x in group_sum_tree's sixteen
// lanes and the sum of X. group % 16 == 0 (the ops check it).
inline void quantize_rows(const BFloat16* x, int64_t rows, int64_t k, int64_t group, QuantizedRows& q) {
  const int64_t groups = k / group;
  q.x16.resize(rows * k);
  q.hi.resize(rows * k);
  q.lo.resize(rows * k);
  q.scale.resize(rows * groups);
  q.sum.resize(rows * groups);
  q.isum.resize(rows * groups);
  const float32x4_t inf = vdupq_n_f32(INFINITY);
  const int32x4_t lim = vdupq_n_s32(X_MAX), neg_lim = vdupq_n_s32(-X_MAX), half = vdupq_n_s32(128);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t base = r * k + g * group, at = r * groups + g;
      float32x4_t vmax = vdupq_n_f32(0.f), vsum[4];
      for (int c = 0; c < 4; ++c) vsum[c] = vdupq_n_f32(0.f);
      uint32x4_t finite = vdupq_n_u32(~0u);
      for (int64_t i = 0; i < group; i += 16)
        for (int c = 0; c < 4; ++c) {  // lane j of vsum[c]: the reference's part[4c + j]
          const float32x4_t v = inferd_vec::load4(x + base + i + 4 * c);
          const float32x4_t a = vabsq_f32(v);
          finite = vandq_u32(finite, vcltq_f32(a, inf));
          vmax = vmaxq_f32(vmax, a);
          vsum[c] = vaddq_f32(vsum[c], v);
        }
      const bool all_finite = vminvq_u32(finite) != 0;
      const float m = vmaxvq_f32(vmax);  // only used where every value is finite
      float part[16];
      for (int c = 0; c < 4; ++c) vst1q_f32(part + 4 * c, vsum[c]);
      // NaN or infinity poisons the group's result, as it would a float dot product.
      q.scale[at] = all_finite ? m / X_MAX : NAN;
      q.sum[at] = group_sum_tree(part);
      const float32x4_t inv = vdupq_n_f32(all_finite && m > 0 ? X_MAX / m : 0.f);
      int32x4_t isum = vdupq_n_s32(0);
      for (int64_t i = 0; i < group; i += 16) {
        int32x4_t xi[4];
        for (int c = 0; c < 4; ++c) {
          const float32x4_t v = vmulq_f32(inferd_vec::load4(x + base + i + 4 * c), inv);
          // Nearest even, as nearbyint; a non-finite product (inf or NaN times 0) is -X_MAX, as
          // the reference has it (ARM's conversion would give 0 for NaN).
          const int32x4_t n = vbslq_s32(vcltq_f32(vabsq_f32(v), inf), vcvtnq_s32_f32(v), neg_lim);
          xi[c] = vmaxq_s32(vminq_s32(n, lim), neg_lim);
          isum = vaddq_s32(isum, xi[c]);
        }
        int16x8_t x16[2], h16[2], l16[2];
        for (int c = 0; c < 2; ++c) {
          const int32x4_t x0 = xi[2 * c], x1 = xi[2 * c + 1];
          const int32x4_t h0 = vshrq_n_s32(vaddq_s32(x0, half), 8), h1 = vshrq_n_s32(vaddq_s32(x1, half), 8);
          const int32x4_t l0 = vsubq_s32(x0, vshlq_n_s32(h0, 8)), l1 = vsubq_s32(x1, vshlq_n_s32(h1, 8));
          x16[c] = vcombine_s16(vmovn_s32(x0), vmovn_s32(x1));
          h16[c] = vcombine_s16(vmovn_s32(h0), vmovn_s32(h1));
          l16[c] = vcombine_s16(vmovn_s32(l0), vmovn_s32(l1));
        }
        vst1q_s16(q.x16.data() + base + i, x16[0]);
        vst1q_s16(q.x16.data() + base + i + 8, x16[1]);
        vst1q_s8(q.hi.data() + base + i, vcombine_s8(vmovn_s16(h16[0]), vmovn_s16(h16[1])));
        vst1q_s8(q.lo.data() + base + i, vcombine_s8(vmovn_s16(l16[0]), vmovn_s16(l16[1])));
      }
      q.isum[at] = vaddvq_s32(isum);
    }
}

// The 16 fp16 values at p as four float vectors (rows 4v..4v+3 in vector v).
inline void load_halves16(const c10::Half* p, float32x4_t (&out)[4]) {
  const uint16_t* u = reinterpret_cast<const uint16_t*>(p);
  const float16x8_t a = vreinterpretq_f16_u16(vld1q_u16(u)), b = vreinterpretq_f16_u16(vld1q_u16(u + 8));
  out[0] = vcvt_f32_f16(vget_low_f16(a));
  out[1] = vcvt_high_f32_f16(a);
  out[2] = vcvt_f32_f16(vget_low_f16(b));
  out[3] = vcvt_high_f32_f16(b);
}

// One 64-byte chunk of a tile as four SDOT operands: vector v holds rows 4v..4v+3, each int32
// lane's four bytes k0..k0+3 of its row. int4: `a` the low nibbles (k0..k0+3), `b` the high
// (k0+4..k0+7), codes 0..15; int8: `a` the stored q + 128 with its top bit flipped, i.e. q.
template <bool INT4>
inline void load_chunk(const uint8_t* p, int8x16_t (&a)[4], int8x16_t (&b)[4]) {
  for (int v = 0; v < 4; ++v) {
    const uint8x16_t raw = vld1q_u8(p + 16 * v);
    if constexpr (INT4) {
      a[v] = vreinterpretq_s8_u8(vandq_u8(raw, vdupq_n_u8(0x0f)));
      b[v] = vreinterpretq_s8_u8(vshrq_n_u8(raw, 4));
    } else {
      a[v] = b[v] = vreinterpretq_s8_u8(veorq_u8(raw, vdupq_n_u8(0x80)));  // b unused
    }
  }
}

// R rows of x (from row r0) against T consecutive tiles (16 output rows each) from tile t0, in
// the int4 (INT4) or int8 tile layout. Per group: the exact sums of code * h and code * l
// (int8: q * h, q * l), then the reference's epilogue with 256 h-sum + l-sum as its integer;
// MIN: the scales come with a min per group (int4 always; int8 for GGUF's asymmetric types).
template <bool INT4, int R, int T, bool MIN = INT4>
inline void neon_tiles(const QuantizedRows& q, int64_t r0, const uint8_t* codes, const c10::Half* sc, int64_t k,
                       int64_t group, int64_t t0, BFloat16* y, int64_t n) {
  constexpr int64_t KC = INT4 ? 8 : 4;  // k values per 64-byte chunk
  const int64_t groups = k / group, chunks = k / KC;
  const uint8_t* c[T];
  for (int t = 0; t < T; ++t) c[t] = codes + (t0 + t) * chunks * 64;
  float32x4_t acc[R][T][4];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t)
      for (int v = 0; v < 4; ++v) acc[r][t][v] = vdupq_n_f32(0.f);
  for (int64_t g = 0; g < groups; ++g) {
    int32x4_t ih[R][T][4], il[R][T][4];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t)
        for (int v = 0; v < 4; ++v) ih[r][t][v] = il[r][t][v] = vdupq_n_s32(0);
    // Sixteen k values a step: one 16-byte load of each row's h and l, whose four 4-byte lanes
    // are the SDOT lanes of two int4 chunks (low nibbles lane 2c, high 2c + 1) or four int8.
    for (int64_t k0 = g * group; k0 < (g + 1) * group; k0 += 16) {
      int8x16_t hv[R], lv[R];
      for (int r = 0; r < R; ++r) {
        hv[r] = vld1q_s8(q.hi.data() + (r0 + r) * k + k0);
        lv[r] = vld1q_s8(q.lo.data() + (r0 + r) * k + k0);
      }
      // The lane of vdotq_laneq_s32 must be a constant: the steps are spelled out.
#define INFERD_SDOT_STEP(CH, LA, LB)                                                           \
  for (int t = 0; t < T; ++t) {                                                                \
    int8x16_t a[4], b[4];                                                                      \
    load_chunk<INT4>(c[t] + (k0 / KC + (CH)) * 64, a, b);                                      \
    for (int r = 0; r < R; ++r)                                                                \
      for (int v = 0; v < 4; ++v) {                                                            \
        ih[r][t][v] = vdotq_laneq_s32(ih[r][t][v], a[v], hv[r], LA);                           \
        il[r][t][v] = vdotq_laneq_s32(il[r][t][v], a[v], lv[r], LA);                           \
        if constexpr (INT4) {                                                                  \
          ih[r][t][v] = vdotq_laneq_s32(ih[r][t][v], b[v], hv[r], LB);                         \
          il[r][t][v] = vdotq_laneq_s32(il[r][t][v], b[v], lv[r], LB);                         \
        }                                                                                      \
      }                                                                                        \
  }
      if constexpr (INT4) {
        INFERD_SDOT_STEP(0, 0, 1)
        INFERD_SDOT_STEP(1, 2, 3)
      } else {
        INFERD_SDOT_STEP(0, 0, 0)
        INFERD_SDOT_STEP(1, 1, 1)
        INFERD_SDOT_STEP(2, 2, 2)
        INFERD_SDOT_STEP(3, 3, 3)
      }
#undef INFERD_SDOT_STEP
    }
    for (int t = 0; t < T; ++t) {
      const c10::Half* sg = sc + ((t0 + t) * groups + g) * scale_halves<MIN>();  // 16 scales (MIN: then 16 mins)
      float32x4_t s[4], m[4];
      load_halves16(sg, s);
      if constexpr (MIN) load_halves16(sg + 16, m);
      for (int r = 0; r < R; ++r) {
        const int64_t at = (r0 + r) * groups + g;
        const float sx = q.scale[at];
        for (int v = 0; v < 4; ++v) {
          // 256 h-sum + l-sum: the reference's integer (int8: less its 128 * isum offset), exact
          // in int32 for groups up to 128 (int8) or 256 (int4).
          const int32x4_t dot = vaddq_s32(vshlq_n_s32(ih[r][t][v], 8), il[r][t][v]);
          acc[r][t][v] = vfmaq_f32(acc[r][t][v], vmulq_f32(s[v], vdupq_n_f32(sx)), vcvtq_f32_s32(dot));
          if constexpr (MIN) acc[r][t][v] = vfmaq_f32(acc[r][t][v], m[v], vdupq_n_f32(q.sum[at]));
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      float buf[16];
      for (int v = 0; v < 4; ++v) vst1q_f32(buf + 4 * v, acc[r][t][v]);
      BFloat16* out = y + (r0 + r) * n + (t0 + t) * 16;
      for (int i = 0; i < 16; ++i) out[i] = static_cast<BFloat16>(buf[i]);  // nearest even, NaN kept
    }
}

using TileFn = void (*)(const QuantizedRows&, int64_t, const uint8_t*, const c10::Half*, int64_t, int64_t, int64_t,
                        BFloat16*, int64_t);
// Register budget (32 vectors): a (row, tile) pair holds eight int32 sums; one row of x runs two
// tiles at once, two rows share one.
constexpr int64_t max_tiles(int64_t rows) { return rows == 1 ? 2 : 1; }

template <bool INT4, bool MIN = INT4>
inline TileFn neon_tile_fn(int64_t rows, int64_t tiles) {
  if (rows == 1) return tiles == 1 ? neon_tiles<INT4, 1, 1, MIN> : neon_tiles<INT4, 1, 2, MIN>;
  return neon_tiles<INT4, 2, 1, MIN>;
}

// Output tiles [begin, end) of x @ W.T for all `rows` rows of q, in the int4 (INT4) or int8
// tile layout, UNIT_TILES tiles at a time. Each tile's result is the same whichever range
// (thread) and kernel computes it.
template <bool INT4, bool MIN = INT4>
inline void tile_range(const QuantizedRows& q, int64_t rows, const uint8_t* codes, const c10::Half* sc, int64_t k,
                       int64_t group, int64_t begin, int64_t end, BFloat16* y, int64_t n) {
  for (int64_t first = begin; first < end; first += UNIT_TILES) {
    const int64_t last = std::min(end, first + UNIT_TILES);
    // Rows in passes over the unit's tiles: after the first pass its weights are in cache.
    for (int64_t r0 = 0; r0 < rows; r0 += 2) {
      const int64_t r = std::min<int64_t>(2, rows - r0);
      for (int64_t t = first; t < last; t += max_tiles(r)) {
        const int64_t nt = std::min(max_tiles(r), last - t);
        neon_tile_fn<INT4, MIN>(r, nt)(q, r0, codes, sc, k, group, t, y, n);
      }
    }
  }
}

}  // namespace inferd_quant
