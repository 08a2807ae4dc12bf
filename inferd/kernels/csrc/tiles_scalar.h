// The tile kernels' scalar reference: plain loops over the exact integer group sums and the
// shared epilogue. Any CPU builds it; it defines the results every vector path must equal bit
// for bit (tests compare them). Slow: where it is the best a build has (TILES_FAST false), the
// Python side keeps quantized layers on torch's kernels instead.
#pragma once

namespace inferd_quant {

constexpr bool TILES_FAST = false;
constexpr int64_t UNIT_TILES = 4;  // tiles a parallel task takes at least

// x [rows, K] bf16 -> q (X as int16 per k; per group sx, the sum of x, the sum of X).
inline void quantize_rows(const BFloat16* x, int64_t rows, int64_t k, int64_t group, QuantizedRows& q) {
  const int64_t groups = k / group;
  q.x16.resize(rows * k);
  q.scale.resize(rows * groups);
  q.sum.resize(rows * groups);
  q.isum.resize(rows * groups);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t base = r * k + g * group, at = r * groups + g;
      float m = 0.f, part[16] = {};
      bool finite = true;
      for (int64_t i = 0; i < group; ++i) {
        const float v = static_cast<float>(x[base + i]);
        finite = finite && std::fabs(v) < INFINITY;
        m = std::max(m, std::fabs(v));
        part[i % 16] += v;
      }
      // NaN or infinity poisons the group's result, as it would a float dot product.
      q.scale[at] = finite ? m / X_MAX : NAN;
      q.sum[at] = group_sum_tree(part);
      const float inv = finite && m > 0 ? X_MAX / m : 0.f;
      int32_t isum = 0;
      for (int64_t i = 0; i < group; ++i) {
        const float v = static_cast<float>(x[base + i]) * inv;  // round to nearest even, as cvtps does
        const int32_t xi = std::isfinite(v) ? static_cast<int32_t>(std::nearbyint(v)) : -X_MAX;
        const int32_t c = std::clamp(xi, -X_MAX, X_MAX);
        q.x16[base + i] = static_cast<int16_t>(c);
        isum += c;
      }
      q.isum[at] = isum;
    }
}

// Output tiles [begin, end) of x @ W.T for all `rows` rows, either layout: per group the exact
// sum of code * X, then acc = fma(s * sx, sum, acc) (int8: the +128 offset removed first;
// with mins, MIN: acc = fma(min, sum of x, acc) after), rounded once to bf16 at the end.
template <bool INT4, bool MIN = INT4>
inline void tile_range(const QuantizedRows& q, int64_t rows, const uint8_t* codes, const c10::Half* sc, int64_t k,
                       int64_t group, int64_t begin, int64_t end, BFloat16* y, int64_t n) {
  constexpr int64_t KC = INT4 ? 8 : 4;  // k values per 64-byte chunk
  const int64_t groups = k / group, chunks = k / KC;
  for (int64_t t = begin; t < end; ++t) {
    const uint8_t* tile = codes + t * chunks * 64;
    for (int64_t r = 0; r < rows; ++r) {
      const int16_t* xr = q.x16.data() + r * k;
      float acc[16] = {};
      for (int64_t g = 0; g < groups; ++g) {
        int32_t dot[16] = {};
        for (int64_t kk = g * group; kk < (g + 1) * group; ++kk) {
          const uint8_t* chunk = tile + kk / KC * 64;
          const int64_t j = kk % KC;
          for (int i = 0; i < 16; ++i) {
            const int32_t code = INT4 ? (chunk[4 * i + j % 4] >> (j < 4 ? 0 : 4)) & 0x0f : chunk[4 * i + j];
            dot[i] += code * xr[kk];
          }
        }
        const int64_t at = r * groups + g;
        const c10::Half* sg = sc + (t * groups + g) * scale_halves<MIN>();
        for (int i = 0; i < 16; ++i) {
          const int32_t d = INT4 ? dot[i] : dot[i] - 128 * q.isum[at];
          acc[i] = std::fma(static_cast<float>(sg[i]) * q.scale[at], static_cast<float>(d), acc[i]);
          if constexpr (MIN) acc[i] = std::fma(static_cast<float>(sg[16 + i]), q.sum[at], acc[i]);
        }
      }
      for (int i = 0; i < 16; ++i) y[r * n + t * 16 + i] = static_cast<BFloat16>(acc[i]);
    }
  }
}

}  // namespace inferd_quant
