// Fused CPU kernels for the decode hot path: one call where plain torch needs several.
//
// A decode step of a small model is mostly fixed per-op cost, not arithmetic: each torch op
// from Python costs microseconds whatever its size, and a layer needed ~35 of them. These
// kernels do the same math in one pass each, row by row (so every row's result is independent
// of its batch companions), rounding to the activation dtype exactly where HF does:
//   add_rms_norm      residual += x; x = rmsnorm(residual) * weight       (in place)
//   rms_norm          out = rmsnorm(x) * weight
//   silu_and_mul      out = silu(gate) * up                                 from [T, 2I]
//   rope_write_kv     rotate q and k, store k and v into their paged-cache slots, return q
//   paged_attention_rows  each query row over its own sequence prefix, K/V read in place
//                         through its block table (decode rows, and prefill rows causally)
// Registered as torch.ops.inferd_cpu.*; inferd/kernels/cpu_ops.py builds and loads this file.

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "avx512_util.h"

namespace {

using at::Tensor;
using c10::BFloat16;

inline float to_f(float v) { return v; }
inline float to_f(BFloat16 v) { return static_cast<float>(v); }
// Round a float to the storage dtype and back: the value a torch op in that dtype would keep.
template <typename T> inline float round_as(float v) { return to_f(static_cast<T>(v)); }

template <typename Fn> void dispatch_float(const Tensor& t, const char* op, Fn&& fn) {
  if (t.scalar_type() == at::kFloat) {
    fn(float{});
  } else if (t.scalar_type() == at::kBFloat16) {
    fn(BFloat16{});
  } else {
    TORCH_CHECK(false, op, ": only float32 and bfloat16 are supported, got ", t.scalar_type());
  }
}

void check_rows(const Tensor& t, const char* op) {
  TORCH_CHECK(t.device().is_cpu(), op, ": expects CPU tensors");
  TORCH_CHECK(t.dim() == 2 && t.stride(1) == 1, op, ": expects a 2-D tensor with contiguous rows");
}

#if defined(__AVX512F__)
using inferd_vec::load16;

// exp(x) for x <= 0 (softmax after subtracting the max): 2^(x*log2 e) split into an integer
// power, applied exactly by scalef, and a degree-7 Taylor polynomial of 2^f on |f| <= 0.5
// (relative error below 2e-9, far under fp32's own rounding).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.6931471805599453f));
  __m512 p = _mm512_set1_ps(1.f / 5040.f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 720.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// Round 16 floats to bfloat16 precision (nearest even), kept as floats; inputs are finite.
inline __m512 round_bf16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i biased = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  return _mm512_castsi512_ps(_mm512_and_si512(biased, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}
inline __m512 round_as16(__m512 x, float) { return x; }
inline __m512 round_as16(__m512 x, BFloat16) { return round_bf16(x); }
inline void store16(float* p, __m512 x) { _mm512_storeu_ps(p, x); }
inline void store16(BFloat16* p, __m512 x) {  // x already holds bf16-exact values
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(x), 16)));
}
#endif

// ---------------------------------------------------------------- RMSNorm

// HF's RMSNorm: y = x * rsqrt(mean(x^2) + eps) in fp32, rounded to T, then weight * y in T.
// Sixteen partial sums let the compiler vectorise the reduction without -ffast-math.
template <typename T>
inline void rms_norm_row(const T* x, const T* w, T* out, int64_t n, double eps) {
  float part[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) {
      const float v = to_f(x[i + j]);
      part[j] += v * v;
    }
  for (; i < n; ++i) part[0] += to_f(x[i]) * to_f(x[i]);
  float sum = 0.f;
  for (float p : part) sum += p;
  const float r = 1.f / std::sqrt(sum / static_cast<float>(n) + static_cast<float>(eps));
  for (int64_t k = 0; k < n; ++k) {
    out[k] = static_cast<T>(to_f(w[k]) * round_as<T>(to_f(x[k]) * r));
  }
}

void rms_norm(Tensor& out, const Tensor& x, const Tensor& weight, double eps) {
  check_rows(x, "rms_norm");
  check_rows(out, "rms_norm");
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == x.size(1) && weight.dtype() == x.dtype() &&
                  out.sizes() == x.sizes() && out.dtype() == x.dtype(),
              "rms_norm: shape or dtype mismatch");
  dispatch_float(x, "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = x.size(1);
    const T* w = weight.const_data_ptr<T>();
    const T* xp = x.const_data_ptr<T>();
    T* op = out.mutable_data_ptr<T>();
    const int64_t xs = x.stride(0), os = out.stride(0);
    at::parallel_for(0, x.size(0), 16, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) rms_norm_row<T>(xp + r * xs, w, op + r * os, n, eps);
    });
  });
}

void add_rms_norm(Tensor& x, Tensor& residual, const Tensor& weight, double eps) {
  check_rows(x, "add_rms_norm");
  check_rows(residual, "add_rms_norm");
  TORCH_CHECK(x.sizes() == residual.sizes() && x.dtype() == residual.dtype() &&
                  weight.is_contiguous() && weight.numel() == x.size(1) && weight.dtype() == x.dtype(),
              "add_rms_norm: shape or dtype mismatch");
  dispatch_float(x, "add_rms_norm", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = x.size(1);
    const T* w = weight.const_data_ptr<T>();
    T* xp = x.mutable_data_ptr<T>();
    T* rp = residual.mutable_data_ptr<T>();
    const int64_t xs = x.stride(0), rs = residual.stride(0);
    at::parallel_for(0, x.size(0), 16, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        T* xr = xp + r * xs;
        T* rr = rp + r * rs;
        for (int64_t i = 0; i < n; ++i) rr[i] = static_cast<T>(to_f(rr[i]) + to_f(xr[i]));
        rms_norm_row<T>(rr, w, xr, n, eps);
      }
    });
  });
}

// ---------------------------------------------------------------- SiLU * up

Tensor silu_and_mul(const Tensor& gate_up) {
  check_rows(gate_up, "silu_and_mul");
  TORCH_CHECK(gate_up.size(1) % 2 == 0, "silu_and_mul: last dimension must be even");
  const int64_t rows = gate_up.size(0), half = gate_up.size(1) / 2;
  Tensor out = at::empty({rows, half}, gate_up.options());
  dispatch_float(gate_up, "silu_and_mul", [&](auto tag) {
    using T = decltype(tag);
    const T* in = gate_up.const_data_ptr<T>();
    T* op = out.mutable_data_ptr<T>();
    const int64_t is = gate_up.stride(0);
    at::parallel_for(0, rows, 4, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const T* g = in + r * is;
        const T* u = g + half;
        T* o = op + r * half;
        int64_t i = 0;
#if defined(__AVX512F__)
        for (; i + 16 <= half; i += 16) {
          const __m512 gv = load16(g + i);
          const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
          const __m512 silu = round_as16(_mm512_div_ps(gv, _mm512_add_ps(e, _mm512_set1_ps(1.f))), tag);
          store16(o + i, round_as16(_mm512_mul_ps(silu, load16(u + i)), tag));
        }
#endif
        for (; i < half; ++i) {
          const float gv = to_f(g[i]);
          o[i] = static_cast<T>(round_as<T>(gv / (1.f + std::exp(-gv))) * to_f(u[i]));
        }
      }
    });
  });
  return out;
}

// ---------------------------------------------------------------- RoPE + KV write

// Rotate-half RoPE with the sign folded into sin: y = x*cos + swap_halves(x)*sin_signed, each
// product and the sum rounded to T as HF's three separate ops do.
template <typename T>
inline void rope_head(const T* x, const T* cos, const T* sin, T* out, int64_t d) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < d; ++i) {
    const float swapped = to_f(x[i < half ? i + half : i - half]);
    const float a = round_as<T>(to_f(x[i]) * to_f(cos[i]));
    const float b = round_as<T>(swapped * to_f(sin[i]));
    out[i] = static_cast<T>(a + b);
  }
}

// qkv [T, (Hq + 2*Hk) * D]; cos, sin_signed [T, D] (any shape of that size); caches [blocks, block_size, Hk, D];
// slots [T] int64 (negative: do not store). Returns the rotated queries [T, Hq, D].
Tensor rope_write_kv(const Tensor& qkv, const Tensor& cos, const Tensor& sin_signed, Tensor& k_cache,
                     Tensor& v_cache, const Tensor& slots, int64_t num_heads) {
  check_rows(qkv, "rope_write_kv");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.sizes() == v_cache.sizes(),
              "rope_write_kv: caches must be contiguous [blocks, block_size, kv_heads, head_dim]");
  const int64_t tokens = qkv.size(0), kv_heads = k_cache.size(2), d = k_cache.size(3);
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  TORCH_CHECK(qkv.size(1) == (num_heads + 2 * kv_heads) * d, "rope_write_kv: qkv holds ", qkv.size(1),
              " values a row, not (", num_heads, " + 2 * ", kv_heads, ") * ", d);
  TORCH_CHECK(cos.is_contiguous() && sin_signed.is_contiguous() && cos.numel() == tokens * d &&
                  sin_signed.numel() == tokens * d,
              "rope_write_kv: cos and sin_signed must be contiguous with one head_dim row per token");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.numel() == tokens,
              "rope_write_kv: slots must be int64 [T]");
  TORCH_CHECK(qkv.dtype() == cos.dtype() && qkv.dtype() == sin_signed.dtype() &&
                  qkv.dtype() == k_cache.dtype() && qkv.dtype() == v_cache.dtype(),
              "rope_write_kv: every tensor must share one dtype");
  Tensor q = at::empty({tokens, num_heads, d}, qkv.options());
  dispatch_float(qkv, "rope_write_kv", [&](auto tag) {
    using T = decltype(tag);
    const int64_t* sp = slots.const_data_ptr<int64_t>();
    for (int64_t t = 0; t < tokens; ++t) {
      TORCH_CHECK(sp[t] < num_slots, "rope_write_kv: slot ", sp[t], " is outside the cache");
    }
    const T* in = qkv.const_data_ptr<T>();
    const T* cp = cos.const_data_ptr<T>();
    const T* snp = sin_signed.const_data_ptr<T>();
    T* qp = q.mutable_data_ptr<T>();
    T* kc = k_cache.mutable_data_ptr<T>();
    T* vc = v_cache.mutable_data_ptr<T>();
    const int64_t is = qkv.stride(0), cs = d, ss = d;
    at::parallel_for(0, tokens, 8, [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t) {
        const T* row = in + t * is;
        const T* c = cp + t * cs;
        const T* s = snp + t * ss;
        for (int64_t h = 0; h < num_heads; ++h) rope_head<T>(row + h * d, c, s, qp + (t * num_heads + h) * d, d);
        if (sp[t] < 0) continue;
        T* kd = kc + sp[t] * kv_heads * d;
        T* vd = vc + sp[t] * kv_heads * d;
        const T* kin = row + num_heads * d;
        const T* vin = kin + kv_heads * d;
        for (int64_t h = 0; h < kv_heads; ++h) rope_head<T>(kin + h * d, c, s, kd + h * d, d);
        std::copy(vin, vin + kv_heads * d, vd);
      }
    });
  });
  return q;
}

// ---------------------------------------------------------------- decode attention

#if defined(__AVX512F__)
using inferd_vec::reduce16;

// A partial dot product of one query head with one key row, as a vector of lane sums.
template <int D> inline __m512 dot_partial(const float* q, const float* k) {
  __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(k));
  for (int c = 1; c < D / 16; ++c) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + c * 16), _mm512_loadu_ps(k + c * 16), acc);
  return acc;
}
template <int D> inline __m512 dot_partial(const BFloat16* q, const BFloat16* k) {
#if defined(__AVX512BF16__)
  if constexpr (D % 32 == 0) {  // bf16 pairs straight into fp32 sums: half the instructions
    __m512 acc = _mm512_setzero_ps();
    for (int c = 0; c < D / 32; ++c)
      acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(q + c * 32), (__m512bh)_mm512_loadu_si512(k + c * 32));
    return acc;
  }
#endif
  __m512 acc = _mm512_mul_ps(load16(q), load16(k));
  for (int c = 1; c < D / 16; ++c) acc = _mm512_fmadd_ps(load16(q + c * 16), load16(k + c * 16), acc);
  return acc;
}
#endif

// Decode attention for one sequence and the kv heads [h0, h1) of it. Each kv head's G query
// heads share the K/V rows they read; positions are walked block by block, so every block of
// the paged cache is read as one contiguous run while it is hot. Scores and softmax are fp32;
// `scratch` holds (h1 - h0) * G * ((hi - lo) + D) floats.
template <typename T, int D, int G>
void attend_heads(const T* q, const T* k_cache, const T* v_cache, const int64_t* table, int64_t block_size,
                  int64_t kv_heads, int64_t h0, int64_t h1, int64_t lo, int64_t hi, float scale,
                  float* scratch, T* out) {
  const int64_t len = hi - lo, rows = (h1 - h0) * G;
  const int64_t row_stride = kv_heads * D;
  float* scores = scratch;            // [rows][len]
  float* acc = scratch + rows * len;  // [rows][D]
  auto block_of = [&](const T* cache, int64_t pos) {  // row of position pos, head 0
    return cache + (table[pos / block_size] * block_size + pos % block_size) * row_stride;
  };
  // Blocks sit anywhere in the pool, so the hardware prefetcher cannot run ahead across a
  // block boundary: ask for the next block while this one is consumed.
  auto prefetch = [&](const T* cache, int64_t next) {
    if (next >= hi) return;
    const char* p = reinterpret_cast<const char*>(block_of(cache, next));
    const int64_t bytes = std::min(hi - next, block_size) * row_stride * static_cast<int64_t>(sizeof(T));
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b);
  };
#if defined(__AVX512F__)
  if constexpr (D % 16 == 0) {
    constexpr int C = D / 16;
    const __m512 scale_v = _mm512_set1_ps(scale);
    // Pass 1: scores, sixteen positions at a time (never across a block boundary).
    prefetch(k_cache, lo);
    for (int64_t pos = lo; pos < hi;) {
      const int64_t in_block = std::min(hi - pos, block_size - pos % block_size);
      if (pos % block_size == 0 || pos == lo) prefetch(k_cache, pos + in_block);
      const int64_t n = std::min<int64_t>(in_block, 16);
      const T* base = block_of(k_cache, pos);
      for (int64_t h = h0; h < h1; ++h) {
        for (int g = 0; g < G; ++g) {
          const T* qh = q + (h * G + g) * D;
          __m512 part[16];
          for (int64_t j = 0; j < n; ++j) part[j] = dot_partial<D>(qh, base + j * row_stride + h * D);
          for (int64_t j = n; j < 16; ++j) part[j] = _mm512_setzero_ps();
          const __m512 sc = _mm512_mul_ps(reduce16(part), scale_v);
          _mm512_mask_storeu_ps(scores + ((h - h0) * G + g) * len + (pos - lo),
                                static_cast<__mmask16>((1u << n) - 1), sc);
        }
      }
      pos += n;
    }
    // Softmax per query head (unnormalised; the sum divides the output at the end).
    float inv_sum[8 * G];  // at most 8 kv heads per task
    for (int64_t r = 0; r < rows; ++r) {
      float* s = scores + r * len;
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t i = 0; i < len; ++i) m = std::max(m, s[i]);
      const __m512 mv = _mm512_set1_ps(m);
      __m512 sumv = _mm512_setzero_ps();
      for (int64_t i = 0; i < len; i += 16) {
        const __mmask16 mask = len - i >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (len - i)) - 1);
        const __m512 e = _mm512_maskz_mov_ps(mask, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, s + i), mv)));
        _mm512_mask_storeu_ps(s + i, mask, e);
        sumv = _mm512_add_ps(sumv, e);
      }
      inv_sum[r] = 1.f / _mm512_reduce_add_ps(sumv);
    }
    // Pass 2: probability-weighted sum of V rows.
    for (int64_t i = 0; i < rows * D; ++i) acc[i] = 0.f;
    prefetch(v_cache, lo);
    for (int64_t pos = lo; pos < hi;) {
      const int64_t in_block = std::min(hi - pos, block_size - pos % block_size);
      prefetch(v_cache, pos + in_block);
      const T* base = block_of(v_cache, pos);
      for (int64_t h = h0; h < h1; ++h) {  // one head's accumulators stay in registers per block
        const int64_t r0 = (h - h0) * G;
        __m512 a[G][C];
        for (int g = 0; g < G; ++g)
          for (int c = 0; c < C; ++c) a[g][c] = _mm512_loadu_ps(acc + (r0 + g) * D + c * 16);
        const T* row = base + h * D;
        const float* p0 = scores + r0 * len + (pos - lo);
        for (int64_t j = 0; j < in_block; ++j, row += row_stride) {
          __m512 vv[C];
          for (int c = 0; c < C; ++c) vv[c] = load16(row + c * 16);
          for (int g = 0; g < G; ++g) {
            const __m512 p = _mm512_set1_ps(p0[g * len + j]);
            for (int c = 0; c < C; ++c) a[g][c] = _mm512_fmadd_ps(p, vv[c], a[g][c]);
          }
        }
        for (int g = 0; g < G; ++g)
          for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc + (r0 + g) * D + c * 16, a[g][c]);
      }
      pos += in_block;
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int i = 0; i < D; ++i) out[(h0 * G + r) * D + i] = static_cast<T>(acc[r * D + i] * inv_sum[r]);
    return;
  }
#endif
  // Portable path: the same two passes in scalar code, one query head at a time.
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = h0 + r / G;
    const T* qh = q + (h0 * G + r) * D;
    float* s = scores + r * len;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t pos = lo; pos < hi; ++pos) {
      const T* krow = block_of(k_cache, pos) + h * D;
      float dot = 0.f;
      for (int i = 0; i < D; ++i) dot += to_f(qh[i]) * to_f(krow[i]);
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
      const T* vrow = block_of(v_cache, pos) + h * D;
      for (int i = 0; i < D; ++i) a[i] += s[pos - lo] * to_f(vrow[i]);
    }
    for (int i = 0; i < D; ++i) out[(h0 * G + r) * D + i] = static_cast<T>(a[i] / sum);
  }
}

template <typename T, int D>
void paged_attention_rows_impl(Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                           const Tensor& block_tables, const Tensor& seq_lens, double scale,
                           int64_t sliding_window) {
  const int64_t n = q.size(0), heads = q.size(1), kv_heads = k_cache.size(2);
  const int64_t group = heads / kv_heads, block_size = k_cache.size(1);
  const int64_t width = block_tables.size(1), num_blocks = k_cache.size(0);
  const int64_t* tables = block_tables.const_data_ptr<int64_t>();
  const int64_t* lens = seq_lens.const_data_ptr<int64_t>();
  for (int64_t s = 0; s < n; ++s) {
    TORCH_CHECK(lens[s] >= 1 && lens[s] <= width * block_size, "paged_attention_rows: sequence ", s,
                " has length ", lens[s], " but its block table holds ", width * block_size, " slots");
    const int64_t used = (lens[s] + block_size - 1) / block_size;
    for (int64_t b = 0; b < used; ++b) {
      const int64_t id = tables[s * width + b];
      TORCH_CHECK(id >= 0 && id < num_blocks, "paged_attention_rows: block id ", id, " is outside the cache");
    }
  }
  using Attend = void (*)(const T*, const T*, const T*, const int64_t*, int64_t, int64_t, int64_t,
                          int64_t, int64_t, int64_t, float, float*, T*);
  static constexpr Attend by_group[] = {attend_heads<T, D, 1>, attend_heads<T, D, 2>, attend_heads<T, D, 3>,
                                        attend_heads<T, D, 4>, attend_heads<T, D, 5>, attend_heads<T, D, 6>,
                                        attend_heads<T, D, 7>, attend_heads<T, D, 8>};
  TORCH_CHECK(group >= 1 && group <= 8 && group * kv_heads == heads, "paged_attention_rows: ", heads,
              " query heads over ", kv_heads, " kv heads is not supported");
  const Attend attend = by_group[group - 1];
  // Whole sequences per task (each block read once, contiguously) when there are enough of
  // them to keep every thread busy; otherwise one task per (sequence, run of kv heads).
  const int64_t span = n >= 2 * at::get_num_threads() ? kv_heads : 1;
  const int64_t per_seq = kv_heads / span;
  const T* qp = q.const_data_ptr<T>();
  const T* kc = k_cache.const_data_ptr<T>();
  const T* vc = v_cache.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  const int64_t qs = q.stride(0), os = out.stride(0);
  at::parallel_for(0, n * per_seq, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / per_seq, h0 = (task % per_seq) * span;
      const int64_t hi = lens[s];
      const int64_t lo = sliding_window > 0 ? std::max<int64_t>(0, hi - sliding_window) : 0;
      scratch.resize(static_cast<size_t>(span * group * ((hi - lo) + D)));
      attend(qp + s * qs, kc, vc, tables + s * width, block_size, kv_heads, h0, h0 + span, lo, hi,
             static_cast<float>(scale), scratch.data(), op + s * os);
    }
  });
}

// q [n, Hq, D], one query row each (a decode token, or a prefill token whose len is its
// position + 1: causal masking is implied); caches [blocks, bs, Hk, D]; block_tables [n, W]
// int64 and seq_lens [n] int64 per row: row r attends positions [max(0, len - window), len)
// of the sequence its table names. Writes out [n, Hq, D].
void paged_attention_rows(Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& block_tables, const Tensor& seq_lens, double scale,
                      int64_t sliding_window) {
  TORCH_CHECK(q.device().is_cpu() && q.dim() == 3 && q.stride(2) == 1 && q.stride(1) == q.size(2),
              "paged_attention_rows: q must be a CPU [n, heads, head_dim] tensor with contiguous rows");
  TORCH_CHECK(out.sizes() == q.sizes() && out.dtype() == q.dtype() && out.stride(2) == 1 &&
                  out.stride(1) == out.size(2),
              "paged_attention_rows: out must match q");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.sizes() == v_cache.sizes() && k_cache.dtype() == q.dtype() &&
                  v_cache.dtype() == q.dtype() && k_cache.size(3) == q.size(2),
              "paged_attention_rows: caches must be contiguous [blocks, block_size, kv_heads, head_dim] "
              "in q's dtype");
  TORCH_CHECK(q.size(1) % k_cache.size(2) == 0, "paged_attention_rows: heads must be a multiple of kv heads");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && block_tables.dim() == 2 &&
                  block_tables.is_contiguous() && block_tables.size(0) >= q.size(0),
              "paged_attention_rows: block_tables must be contiguous int64 [n, W]");
  TORCH_CHECK(seq_lens.scalar_type() == at::kLong && seq_lens.is_contiguous() &&
                  seq_lens.numel() >= q.size(0),
              "paged_attention_rows: seq_lens must be contiguous int64 [n]");
  dispatch_float(q, "paged_attention_rows", [&](auto tag) {
    using T = decltype(tag);
    switch (q.size(2)) {
      case 64: return paged_attention_rows_impl<T, 64>(out, q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window);
      case 128: return paged_attention_rows_impl<T, 128>(out, q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window);
      case 32: return paged_attention_rows_impl<T, 32>(out, q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window);
      case 16: return paged_attention_rows_impl<T, 16>(out, q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window);
      case 8: return paged_attention_rows_impl<T, 8>(out, q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window);
      case 256: return paged_attention_rows_impl<T, 256>(out, q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window);
      default: TORCH_CHECK(false, "paged_attention_rows: head_dim ", q.size(2), " is not compiled in");
    }
  });
}

}  // namespace

TORCH_LIBRARY(inferd_cpu, m) {
  m.def("rms_norm(Tensor(a!) out, Tensor x, Tensor weight, float eps) -> ()");
  m.def("add_rms_norm(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  m.def("silu_and_mul(Tensor gate_up) -> Tensor");
  m.def("rope_write_kv(Tensor qkv, Tensor cos, Tensor sin_signed, Tensor(a!) k_cache, "
        "Tensor(b!) v_cache, Tensor slots, int num_heads) -> Tensor");
  m.def("paged_attention_rows(Tensor(a!) out, Tensor q, Tensor k_cache, Tensor v_cache, "
        "Tensor block_tables, Tensor seq_lens, float scale, int sliding_window) -> ()");
}

TORCH_LIBRARY_IMPL(inferd_cpu, CPU, m) {
  m.impl("rms_norm", rms_norm);
  m.impl("add_rms_norm", add_rms_norm);
  m.impl("silu_and_mul", silu_and_mul);
  m.impl("rope_write_kv", rope_write_kv);
  m.impl("paged_attention_rows", paged_attention_rows);
}
