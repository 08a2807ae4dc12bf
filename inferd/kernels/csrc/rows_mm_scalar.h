// int8 / fp8 row-major weights (one scale per output row) against a few rows of x, in plain
// C++: the reference the vector paths agree with within float rounding. See quant_kernels.h.
#pragma once

namespace inferd_quant {

struct Int8Decode {
  static inline float value(uint8_t b) { return static_cast<float>(static_cast<int8_t>(b)); }
  static constexpr float post = 1.f;
};
// e4m3's bits moved into an fp32's exponent and mantissa fields: the value times 2^-120
// (subnormals included), which the row scale's `post` undoes.
struct Fp8Decode {
  static inline float value(uint8_t b) {
    const uint32_t bits = ((static_cast<uint32_t>(b) << 20) & 0x07f00000u) | ((static_cast<uint32_t>(b) << 24) & 0x80000000u);
    float v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }
  static constexpr float post = 0x1p120f;
};

// Output rows [n0, n1) of x @ W.T for all rows of x (widened to fp32).
template <typename Decode, typename Scale>
inline void rows_mm_range(const float* xf, const uint8_t* wp, const Scale* sp, int64_t rows, int64_t n, int64_t k,
                          int64_t n0, int64_t n1, BFloat16* yp) {
  for (int64_t j = n0; j < n1; ++j) {
    const uint8_t* w = wp + j * k;
    const float s = static_cast<float>(sp[j]) * Decode::post;
    for (int64_t r = 0; r < rows; ++r) {
      const float* x = xf + r * k;
      float part[8] = {};
      for (int64_t c = 0; c < k; ++c) part[c % 8] += Decode::value(w[c]) * x[c];
      float sum = 0.f;
      for (float p : part) sum += p;
      yp[r * n + j] = static_cast<BFloat16>(sum * s);
    }
  }
}

}  // namespace inferd_quant
