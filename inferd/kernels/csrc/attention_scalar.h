// The reference decode attention: two passes in scalar code (scores and softmax, then the
// probability-weighted sum of V), one query head at a time. Any CPU; also the path for head
// sizes the vector kernels do not take. See attention.h for the contract.
#pragma once

namespace inferd_rows {

template <typename T> inline float to_float(T v) { return static_cast<float>(v); }

template <typename T, int D, int G>
void attend_heads_scalar(const T* q, const T* k_cache, const T* v_cache, const PagedRows<T>& paged, int64_t h0, int64_t h1,
                         int64_t lo, int64_t hi, float scale, float* scratch, T* out) {
  const int64_t len = hi - lo, rows = (h1 - h0) * G;
  float* scores = scratch;            // [rows][len]
  float* acc = scratch + rows * len;  // [rows][D]
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = h0 + r / G;
    const T* qh = q + (h0 * G + r) * D;
    float* s = scores + r * len;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t pos = lo; pos < hi; ++pos) {
      const T* krow = paged.row(k_cache, pos) + h * D;
      float dot = 0.f;
      for (int i = 0; i < D; ++i) dot += to_float(qh[i]) * to_float(krow[i]);
      s[pos - lo] = dot * scale;
      m = std::max(m, s[pos - lo]);
    }
    float sum = 0.f;
    for (int64_t i = 0; i < len; ++i) {
      s[i] = std::exp(s[i] - m);
      sum += s[i];
    }
    float* a = acc + r * D;
    for (int i = 0; i < D; ++i) a[i] = 0.f;
    for (int64_t pos = lo; pos < hi; ++pos) {
      const T* vrow = paged.row(v_cache, pos) + h * D;
      for (int i = 0; i < D; ++i) a[i] += s[pos - lo] * to_float(vrow[i]);
    }
    for (int i = 0; i < D; ++i) out[(h0 * G + r) * D + i] = static_cast<T>(a[i] / sum);
  }
}


}  // namespace inferd_rows
