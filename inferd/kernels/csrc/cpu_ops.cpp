// Fused CPU kernels for the decode hot path: one call where plain torch needs several.
//
// A decode step of a small model is mostly fixed per-op cost, not arithmetic: each torch op
// from Python costs microseconds whatever its size, and a layer needed ~35 of them. These
// kernels do the same math in one pass each, row by row (so every row's result is independent
// of its batch companions), rounding to the activation dtype exactly where HF does:
//   add_rms_norm      residual += x; x = rmsnorm(residual) * weight       (in place)
//   rms_norm          out = rmsnorm(x) * weight
//                     (an fp32 weight on bf16 rows: Gemma's norm, the weight being 1 + w)
//   silu_and_mul      out = silu(gate) * up                                 from [T, 2I]
//   gelu_tanh_and_mul out = gelu_tanh(gate) * up                            from [T, 2I]
//   rope_write_kv     rotate q and k, store k and v into their paged-cache slots, return q
//   norm_rope_write_kv  the same with q and k each RMS-normed per head first (qk-norm)
//   paged_attention_rows  each query row over its own sequence prefix, K/V read in place
//                         through its block table (decode rows, and prefill rows causally)
// Registered as torch.ops.inferd_cpu_<level>.*; inferd/kernels/cpu_ops.py builds and loads this file.

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include "ops_namespace.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "row_kernels.h"

namespace {

using at::Tensor;
using c10::BFloat16;
using namespace inferd_rows;

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

// ---------------------------------------------------------------- RMSNorm (row_kernels.h)

// The norm weight's dtype picks the multiply (row_kernels.h): the rows' own dtype, or fp32.
template <typename T, typename Fn> void dispatch_weight(const Tensor& weight, const char* op, Fn&& fn) {
  if (weight.scalar_type() == c10::CppTypeToScalarType<T>::value) {
    fn(T{});
  } else {
    TORCH_CHECK(weight.scalar_type() == at::kFloat, op, ": the weight must be in the rows' dtype or float32");
    fn(float{});
  }
}

void rms_norm(Tensor& out, const Tensor& x, const Tensor& weight, double eps) {
  check_rows(x, "rms_norm");
  check_rows(out, "rms_norm");
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == x.size(1) && out.sizes() == x.sizes() &&
                  out.dtype() == x.dtype(),
              "rms_norm: shape or dtype mismatch");
  dispatch_float(x, "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    dispatch_weight<T>(weight, "rms_norm", [&](auto wtag) {
      using W = decltype(wtag);
      const int64_t n = x.size(1);
      const W* w = weight.const_data_ptr<W>();
      const T* xp = x.const_data_ptr<T>();
      T* op = out.mutable_data_ptr<T>();
      const int64_t xs = x.stride(0), os = out.stride(0);
      at::parallel_for(0, x.size(0), 16, [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) rms_norm_row<T, W>(xp + r * xs, w, op + r * os, n, eps);
      });
    });
  });
}

void add_rms_norm(Tensor& x, Tensor& residual, const Tensor& weight, double eps) {
  check_rows(x, "add_rms_norm");
  check_rows(residual, "add_rms_norm");
  TORCH_CHECK(x.sizes() == residual.sizes() && x.dtype() == residual.dtype() &&
                  weight.is_contiguous() && weight.numel() == x.size(1),
              "add_rms_norm: shape or dtype mismatch");
  dispatch_float(x, "add_rms_norm", [&](auto tag) {
    using T = decltype(tag);
    dispatch_weight<T>(weight, "add_rms_norm", [&](auto wtag) {
      using W = decltype(wtag);
      const int64_t n = x.size(1);
      const W* w = weight.const_data_ptr<W>();
      T* xp = x.mutable_data_ptr<T>();
      T* rp = residual.mutable_data_ptr<T>();
      const int64_t xs = x.stride(0), rs = residual.stride(0);
      at::parallel_for(0, x.size(0), 16, [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          T* xr = xp + r * xs;
          T* rr = rp + r * rs;
          add_row<T>(rr, xr, n);
          rms_norm_row<T, W>(rr, w, xr, n, eps);
        }
      });
    });
  });
}

// ---------------------------------------------------------------- SiLU * up

// act(gate) * up for each row of [T, 2I] (row_kernels.h's silu_mul_row or gelu_tanh_mul_row).
template <bool Gelu>
Tensor gated_act(const Tensor& gate_up, const char* name) {
  check_rows(gate_up, name);
  TORCH_CHECK(gate_up.size(1) % 2 == 0, name, ": last dimension must be even");
  const int64_t rows = gate_up.size(0), half = gate_up.size(1) / 2;
  Tensor out = at::empty({rows, half}, gate_up.options());
  dispatch_float(gate_up, name, [&](auto tag) {
    using T = decltype(tag);
    const T* in = gate_up.const_data_ptr<T>();
    T* op = out.mutable_data_ptr<T>();
    const int64_t is = gate_up.stride(0);
    at::parallel_for(0, rows, 4, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        if constexpr (Gelu) {
          gelu_tanh_mul_row<T>(in + r * is, in + r * is + half, op + r * half, half);
        } else {
          silu_mul_row<T>(in + r * is, in + r * is + half, op + r * half, half);
        }
      }
    });
  });
  return out;
}

Tensor silu_and_mul(const Tensor& gate_up) { return gated_act<false>(gate_up, "silu_and_mul"); }
Tensor gelu_tanh_and_mul(const Tensor& gate_up) { return gated_act<true>(gate_up, "gelu_tanh_and_mul"); }

// ---------------------------------------------------------------- RoPE + KV write (row_kernels.h)

// qkv [T, (Hq + 2*Hk) * D]; cos, sin_signed [T, D] (any shape of that size); caches [blocks, block_size, Hk, D];
// slots [T] int64 (negative: do not store). Returns the rotated queries [T, Hq, D]. With q_norm
// and k_norm (each [D], in qkv's dtype or fp32: see rms_norm_row), each q and k head is normed
// before it is rotated.
Tensor rope_write_kv_impl(const Tensor& qkv, const Tensor* q_norm, const Tensor* k_norm, double eps,
                          const Tensor& cos, const Tensor& sin_signed, Tensor& k_cache, Tensor& v_cache,
                          const Tensor& slots, int64_t num_heads) {
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
  if (q_norm != nullptr) {
    TORCH_CHECK(q_norm->is_contiguous() && k_norm->is_contiguous() && q_norm->numel() == d &&
                    k_norm->numel() == d && q_norm->dtype() == k_norm->dtype() && d <= MAX_NORMED_HEAD,
                "norm_rope_write_kv: q_norm and k_norm must be contiguous [head_dim] of one dtype");
  }
  Tensor q = at::empty({tokens, num_heads, d}, qkv.options());
  dispatch_float(qkv, "rope_write_kv", [&](auto tag) {
    using T = decltype(tag);
    dispatch_weight<T>(q_norm != nullptr ? *q_norm : qkv, "norm_rope_write_kv", [&](auto wtag) {
      using W = decltype(wtag);
      const W* qw = q_norm != nullptr ? q_norm->const_data_ptr<W>() : nullptr;
      const W* kw = k_norm != nullptr ? k_norm->const_data_ptr<W>() : nullptr;
      auto rotate = [&](const T* x, const W* w, const T* c, const T* s, T* out) {
        if (w != nullptr) {
          norm_rope_head<T, W>(x, w, eps, c, s, out, d);
        } else {
          rope_head<T>(x, c, s, out, d);
        }
      };
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
          for (int64_t h = 0; h < num_heads; ++h) rotate(row + h * d, qw, c, s, qp + (t * num_heads + h) * d);
          if (sp[t] < 0) continue;
          T* kd = kc + sp[t] * kv_heads * d;
          T* vd = vc + sp[t] * kv_heads * d;
          const T* kin = row + num_heads * d;
          const T* vin = kin + kv_heads * d;
          for (int64_t h = 0; h < kv_heads; ++h) rotate(kin + h * d, kw, c, s, kd + h * d);
          std::copy(vin, vin + kv_heads * d, vd);
        }
      });
    });
  });
  return q;
}

Tensor rope_write_kv(const Tensor& qkv, const Tensor& cos, const Tensor& sin_signed, Tensor& k_cache,
                     Tensor& v_cache, const Tensor& slots, int64_t num_heads) {
  return rope_write_kv_impl(qkv, nullptr, nullptr, 0.0, cos, sin_signed, k_cache, v_cache, slots, num_heads);
}

Tensor norm_rope_write_kv(const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm, double eps,
                          const Tensor& cos, const Tensor& sin_signed, Tensor& k_cache, Tensor& v_cache,
                          const Tensor& slots, int64_t num_heads) {
  return rope_write_kv_impl(qkv, &q_norm, &k_norm, eps, cos, sin_signed, k_cache, v_cache, slots, num_heads);
}

// ---------------------------------------------------------------- decode attention (row_kernels.h)

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

INFERD_LIBRARY(m) {
  m.def("rms_norm(Tensor(a!) out, Tensor x, Tensor weight, float eps) -> ()");
  m.def("add_rms_norm(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  m.def("silu_and_mul(Tensor gate_up) -> Tensor");
  m.def("gelu_tanh_and_mul(Tensor gate_up) -> Tensor");
  m.def("rope_write_kv(Tensor qkv, Tensor cos, Tensor sin_signed, Tensor(a!) k_cache, "
        "Tensor(b!) v_cache, Tensor slots, int num_heads) -> Tensor");
  m.def("norm_rope_write_kv(Tensor qkv, Tensor q_norm, Tensor k_norm, float eps, Tensor cos, Tensor sin_signed, "
        "Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots, int num_heads) -> Tensor");
  m.def("paged_attention_rows(Tensor(a!) out, Tensor q, Tensor k_cache, Tensor v_cache, "
        "Tensor block_tables, Tensor seq_lens, float scale, int sliding_window) -> ()");
}

INFERD_IMPL(CPU, m) {
  m.impl("rms_norm", rms_norm);
  m.impl("add_rms_norm", add_rms_norm);
  m.impl("silu_and_mul", silu_and_mul);
  m.impl("gelu_tanh_and_mul", gelu_tanh_and_mul);
  m.impl("rope_write_kv", rope_write_kv);
  m.impl("norm_rope_write_kv", norm_rope_write_kv);
  m.impl("paged_attention_rows", paged_attention_rows);
}
