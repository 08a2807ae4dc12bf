// The decoder stack of a quantized model for one small CPU step, run by one thread team.
//
// decoder_stack.cpp calls one torch op per kernel; each op is a dispatcher call, a few tensor
// allocations and an OpenMP fork/join, which a batch-1 step of the bundled model pays ~270 times:
// about 1 ms of a 4.5 ms step on a 2-core Xeon. Here the threads enter one parallel region for
// the whole stack: each computes its share of every matmul's output rows and of the attention
// heads, and the team meets at a spin barrier between dependent phases. Elementwise work on the
// few activation rows (norms, residual adds, SiLU, quantizing x) is cheaper to repeat on every
// thread than to share, so each thread keeps its own copy of the residual stream.
//
// The order of operations is decoder_layers.h's, shared with decoder_stack.cpp; the math is
// the ops' own (row_kernels.h, quant_kernels.h), and every output element is
// computed by exactly one thread in the same order as the op computes it, so the result is
// bitwise decoder_stack's (tested). Serves bf16 activations with int4 / int8 / fp8 linears and at
// most TEAM_MAX_ROWS rows; anything else stays on decoder_stack.cpp's per-op path.

#include "decode_team.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "decoder_layers.h"
#include "quant_kernels.h"
#include "row_kernels.h"
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace inferd_team {
namespace {

// A spin-wait hint to the core (lets its sibling hyperthread run, saves power).
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

using at::Tensor;
using c10::BFloat16;
using inferd_quant::QuantizedRows;

// A sense-reversing barrier that spins: a phase here lasts microseconds, far shorter than a
// futex sleep and wake-up. Spinning yields the core after a while, in case threads outnumber
// cores.
class SpinBarrier {
 public:
  void reset(int n) { n_ = n; }
  void wait() {
    if (n_ == 1) return;
    const unsigned gen = gen_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
      arrived_.store(0, std::memory_order_relaxed);
      gen_.store(gen + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < (1 << 14)) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<unsigned> gen_{0};
  alignas(64) int n_ = 1;
};

// One linear layer as raw pointers, checked once per step before the team starts.
struct Linear {
  int64_t kind = 0, group = 0, n = 0, k = 0;  // k: the kernel's reduction length (2K for planes)
  const uint8_t* codes = nullptr;
  const void* scale = nullptr;
  bool scale_bf16 = false;
  bool with_min = false;  // int8 tiles: (scale, min) pairs
  const BFloat16* bias = nullptr;
};

// A norm weight: bf16 (Llama's norm) or fp32 (Gemma's 1 + w), see row_kernels.h's rms_norm_row.
struct NormWeight {
  const BFloat16* bf16 = nullptr;
  const float* f32 = nullptr;
  void apply(const BFloat16* x, BFloat16* out, int64_t n, double eps) const {
    if (f32 != nullptr) {
      inferd_rows::rms_norm_row<BFloat16, float>(x, f32, out, n, eps);
    } else {
      inferd_rows::rms_norm_row<BFloat16, BFloat16>(x, bf16, out, n, eps);
    }
  }
  void rotate(const BFloat16* x, double eps, const BFloat16* c, const BFloat16* s, BFloat16* out, int64_t d) const {
    if (f32 != nullptr) {
      inferd_rows::norm_rope_head<BFloat16, float>(x, f32, eps, c, s, out, d);
    } else {
      inferd_rows::norm_rope_head<BFloat16, BFloat16>(x, bf16, eps, c, s, out, d);
    }
  }
};

NormWeight norm_weight(const Tensor& w, int64_t n, const char* what) {
  TORCH_CHECK(w.defined() && w.is_contiguous() && w.numel() == n &&
                  (w.scalar_type() == at::kBFloat16 || w.scalar_type() == at::kFloat),
              "decode_team: the ", what, " norm weight must be contiguous bf16 or fp32 [", n, "]");
  NormWeight nw;
  if (w.scalar_type() == at::kFloat) {
    nw.f32 = w.const_data_ptr<float>();
  } else {
    nw.bf16 = w.const_data_ptr<BFloat16>();
  }
  return nw;
}

// A thread's private working set, kept between steps so a step allocates nothing once warm.
struct Scratch {
  std::vector<BFloat16> residual, normed, act, doubled, side;
  std::vector<float> widened, attention;
  QuantizedRows quantized;
};

Scratch& scratch() {
  static thread_local Scratch s;
  return s;
}

// Work split: each thread owns a contiguous share of a phase's units and takes it front to
// back in chunks (so its weight reads are one stream that prefetching can run ahead on); a
// thread done with its share takes chunks from the front of the others' remainders. The two
// cores of a VM stream memory at uneven speeds: a fixed split left one of them waiting ~10% of
// the step at barriers. Every unit's result is the same whichever thread takes it.
class WorkQueue {
 public:
  WorkQueue(int64_t phases, int team)
      : phases_(phases), team_(team), taken_(new std::atomic<int64_t>[team * stride(phases)]()) {}
  template <typename Fn>
  void run(int64_t phase, int64_t units, int64_t chunk, int tid, Fn&& fn) {
    for (int i = 0; i < team_; ++i) {
      const int owner = (tid + i) % team_;
      const int64_t begin = units * owner / team_, end = units * (owner + 1) / team_;
      std::atomic<int64_t>& taken = taken_[owner * stride(phases_) + phase];
      for (int64_t u = begin + taken.fetch_add(chunk, std::memory_order_relaxed); u < end;
           u = begin + taken.fetch_add(chunk, std::memory_order_relaxed))
        fn(u, std::min(end, u + chunk));
    }
  }

 private:
  static int64_t stride(int64_t phases) { return (phases + 15) / 16 * 16 + 16; }  // a thread's own lines
  int64_t phases_;
  int team_;
  std::unique_ptr<std::atomic<int64_t>[]> taken_;
};

constexpr int64_t MATMUL_CHUNK = 4;  // 16-row units (64 output rows) per grab

Linear describe(int64_t kind, int64_t group, const Tensor& a, const Tensor& b, const Tensor& bias, int64_t in,
                int64_t out) {
  Linear lin;
  lin.kind = kind;
  lin.group = group;
  lin.n = out;
  TORCH_CHECK(a.is_contiguous() && a.element_size() == 1 && b.defined() && b.is_contiguous(),
              "decode_team: a quantized weight must be contiguous bytes with its scales");
  lin.codes = static_cast<const uint8_t*>(a.const_data_ptr());
  if (kind == INT4 || kind == INT8_PLANES) {
    lin.k = kind == INT8_PLANES ? 2 * in : in;
    TORCH_CHECK(group > 0 && group % 16 == 0 && lin.k % group == 0 && out % 16 == 0 && b.dim() == 4 &&
                    b.scalar_type() == at::kHalf && b.size(0) == out / 16 && b.size(1) == lin.k / group &&
                    a.dim() == 3 && a.size(0) == out / 16 && a.size(1) == lin.k / 8 && a.size(2) == 64,
                "decode_team: int4 tiles do not match a [", out, ", ", in, "] linear");
  } else if (kind == INT8_TILES) {
    lin.k = in;
    lin.with_min = b.dim() == 4 && b.size(2) == 2;
    TORCH_CHECK(group > 0 && group % 16 == 0 && group <= 128 && in % group == 0 && out % 16 == 0 &&
                    (b.dim() == 3 || lin.with_min) && b.size(-1) == 16 && b.scalar_type() == at::kHalf &&
                    b.size(0) == out / 16 && b.size(1) == in / group && a.dim() == 3 && a.size(0) == out / 16 &&
                    a.size(1) == in / 4 && a.size(2) == 64,
                "decode_team: int8 tiles do not match a [", out, ", ", in, "] linear");
  } else {
    lin.k = in;
    TORCH_CHECK(a.dim() == 2 && a.size(0) == out && a.size(1) == in && b.numel() == out &&
                    (b.scalar_type() == at::kFloat || b.scalar_type() == at::kBFloat16),
                "decode_team: row-quantized weight does not match a [", out, ", ", in, "] linear");
    lin.scale_bf16 = b.scalar_type() == at::kBFloat16;
  }
  lin.scale = b.const_data_ptr();
  if (bias.defined()) {
    TORCH_CHECK(bias.scalar_type() == at::kBFloat16 && bias.is_contiguous() && bias.numel() == out,
                "decode_team: bias must be contiguous bf16 [", out, "]");
    lin.bias = bias.const_data_ptr<BFloat16>();
  }
  return lin;
}

template <typename Decode>
void rows_share(const Linear& lin, const float* xf, int64_t rows, int64_t n0, int64_t n1, BFloat16* y) {
  if (lin.scale_bf16) {
    inferd_quant::rows_mm_range<Decode>(xf, lin.codes, static_cast<const BFloat16*>(lin.scale), rows, lin.n,
                                        lin.k, n0, n1, y);
  } else {
    inferd_quant::rows_mm_range<Decode>(xf, lin.codes, static_cast<const float*>(lin.scale), rows, lin.n, lin.k,
                                        n0, n1, y);
  }
}

// The team's y [rows, n] = x [rows, in] @ W.T (+ bias), as the linear's op computes it; this
// thread prepares x for the kernel and takes chunks of output rows from `queue`'s `phase`.
void linear_share(const Linear& lin, const BFloat16* x, int64_t rows, int64_t in, BFloat16* y, Scratch& s,
                  WorkQueue& queue, int64_t phase, int tid) {
  const bool tiles = lin.kind == INT4 || lin.kind == INT8_PLANES || lin.kind == INT8_TILES;
  if (tiles) {
    const BFloat16* xin = x;
    if (lin.kind == INT8_PLANES) {  // the op's input is [x, x]
      s.doubled.resize(rows * 2 * in);
      for (int64_t r = 0; r < rows; ++r) {
        std::copy(x + r * in, x + (r + 1) * in, s.doubled.data() + r * 2 * in);
        std::copy(x + r * in, x + (r + 1) * in, s.doubled.data() + r * 2 * in + in);
      }
      xin = s.doubled.data();
    }
    inferd_quant::quantize_rows(xin, rows, lin.k, lin.group, s.quantized);
  } else {
    inferd_quant::widen(x, rows * in, s.widened);
  }
  queue.run(phase, (lin.n + 15) / 16, MATMUL_CHUNK, tid, [&](int64_t u0, int64_t u1) {
    const int64_t n0 = u0 * 16, n1 = std::min(lin.n, u1 * 16);
    if (lin.kind == INT8_TILES) {
      inferd_quant::int8_tile_range(s.quantized, rows, lin.codes, static_cast<const c10::Half*>(lin.scale), lin.k,
                                    lin.group, u0, u1, y, lin.n, lin.with_min);
    } else if (tiles) {
      inferd_quant::int4_tile_range(s.quantized, rows, lin.codes, static_cast<const c10::Half*>(lin.scale), lin.k,
                                    lin.group, u0, u1, y, lin.n);
    } else if (lin.kind == INT8) {
      rows_share<inferd_quant::Int8Decode>(lin, s.widened.data(), rows, n0, n1, y);
    } else {
      rows_share<inferd_quant::Fp8Decode>(lin, s.widened.data(), rows, n0, n1, y);
    }
    if (lin.bias != nullptr) {  // torch's y + bias in bf16
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = n0; c < n1; ++c)
          y[r * lin.n + c] =
              static_cast<BFloat16>(static_cast<float>(y[r * lin.n + c]) + static_cast<float>(lin.bias[c]));
    }
  });
}

using Attend = void (*)(const BFloat16*, const BFloat16*, const BFloat16*, const int64_t*, int64_t, int64_t, int64_t,
                        int64_t, int64_t, int64_t, float, float*, BFloat16*);

// One query head per call: the kernel's per-head arithmetic does not depend on how many heads
// share a call, so this is bitwise the op's grouped call, and 9 heads split evenly where 3 kv
// heads did not.
Attend attend_for(int64_t d) {
  using inferd_rows::attend_heads;
  switch (d) {
    case 8: return attend_heads<BFloat16, 8, 1>;
    case 16: return attend_heads<BFloat16, 16, 1>;
    case 32: return attend_heads<BFloat16, 32, 1>;
    case 64: return attend_heads<BFloat16, 64, 1>;
    case 128: return attend_heads<BFloat16, 128, 1>;
    case 256: return attend_heads<BFloat16, 256, 1>;
    default: return nullptr;
  }
}

// decoder_layers.h's operations as one team thread runs them: its share of every shared phase
// (matmul output rows, cache writes, attention heads), then a barrier; its own copy of the
// elementwise work on the residual stream (norms, adds, the gated activation).
struct TeamExecutor {
  // The step, shared by the team (read-only here).
  const Linear* lin;
  const std::vector<NormWeight>& norms;  // per layer its NORMS_PER_LAYER slots, then the final norm
  int64_t t, rows, hidden, inter, q_width, qkv_width, num_heads, kv_heads, group, d, width, block_size;
  const int64_t* windows;
  double eps;
  float attn_scale;
  Attend attend;
  const int64_t *sp, *tp, *lp;
  const BFloat16* const* cp;  // per layer: its rope table's rows for this step
  const BFloat16* const* snp;
  BFloat16* const* kc;
  BFloat16* const* vc;
  // Shared activations: each element written by one thread in a phase, read after a barrier.
  BFloat16 *qkv, *q, *attn, *o, *gate_up, *down;
  BFloat16* x_io;
  BFloat16* out;
  SpinBarrier& barrier;
  WorkQueue& queue;
  // This thread's.
  int tid;
  Scratch& s;
  bool normed_output = false;  // norm() left O's or DOWN's normed rows in s.side for the next add
  bool qk_norm_ = false;  // this layer's rope_write_kv normed k: attention norms q alike

  BFloat16* res() { return s.residual.data(); }
  BFloat16* xn() { return s.normed.data(); }
  const NormWeight& weight(int64_t l, int slot) const { return norms[l * inferd_layers::NORMS_PER_LAYER + slot]; }
  const BFloat16* output(int from) {
    if (normed_output) {
      normed_output = false;
      return s.side.data();
    }
    return from == inferd_layers::DOWN ? down : o;
  }
  void add_norm_rows(const BFloat16* add, const NormWeight& w) {
    for (int64_t r = 0; r < t; ++r) {
      if (add != nullptr) inferd_rows::add_row(res() + r * hidden, add + r * hidden, hidden);
      w.apply(res() + r * hidden, xn() + r * hidden, hidden, eps);
    }
  }

  void first_norm() { add_norm_rows(nullptr, weight(0, inferd_layers::INPUT_NORM)); }
  void add_norm(int64_t l, int norm, int from) { add_norm_rows(output(from), weight(l, norm)); }
  void norm(int64_t l, int norm, int of) {  // this thread's copy of the normed rows, for the add that follows
    const BFloat16* x = of == inferd_layers::DOWN ? down : o;
    for (int64_t r = 0; r < t; ++r) weight(l, norm).apply(x + r * hidden, s.side.data() + r * hidden, hidden, eps);
    normed_output = true;
  }
  void linear(int64_t l, int slot) {
    using namespace inferd_layers;
    static constexpr int64_t phase_of[4] = {0, 3, 4, 5};  // qkv, kv, attention, o, gate_up, down
    const BFloat16* in = slot == O ? attn : slot == DOWN ? s.act.data() : xn();
    const int64_t in_width = slot == O ? q_width : slot == DOWN ? inter : hidden;
    BFloat16* y = slot == QKV ? qkv : slot == O ? o : slot == GATE_UP ? gate_up : down;
    linear_share(lin[4 * l + slot], in, t, in_width, y, s, queue, 6 * l + phase_of[slot], tid);
    barrier.wait();
  }
  // Keys and values into the cache (rope_write_kv's part), one (row, kv head) per task; the
  // queries are rotated by the attention tasks.
  void rope_write_kv(int64_t l, bool qk_norm) {
    queue.run(6 * l + 1, t * kv_heads, 1, tid, [&](int64_t task, int64_t) {
      const int64_t r = task / kv_heads, h = task % kv_heads;
      if (sp[r] < 0) return;
      const BFloat16* kin = qkv + r * qkv_width + q_width + h * d;
      BFloat16* kd = kc[l] + (sp[r] * kv_heads + h) * d;
      if (qk_norm) {
        weight(l, inferd_layers::K_NORM).rotate(kin, eps, cp[l] + r * d, snp[l] + r * d, kd, d);
      } else {
        inferd_rows::rope_head(kin, cp[l] + r * d, snp[l] + r * d, kd, d);
      }
      std::copy(kin + kv_heads * d, kin + kv_heads * d + d, vc[l] + (sp[r] * kv_heads + h) * d);
    });
    qk_norm_ = qk_norm;
    barrier.wait();
  }
  // One (row, query head) per task: rotate the query, then attend its prefix.
  void attention(int64_t l) {
    const int64_t window = windows[l];
    queue.run(6 * l + 2, t * num_heads, 1, tid, [&](int64_t task, int64_t) {
      const int64_t r = task / num_heads, j = task % num_heads, h = j / group;
      BFloat16* dst = attn + r * q_width + j * d;
      if (r >= rows) {  // padding rows attend nothing
        std::fill(dst, dst + d, BFloat16(0.f));
        return;
      }
      BFloat16* qj = q + r * q_width + j * d;
      const BFloat16* qin = qkv + r * qkv_width + j * d;
      if (qk_norm_) {
        weight(l, inferd_layers::Q_NORM).rotate(qin, eps, cp[l] + r * d, snp[l] + r * d, qj, d);
      } else {
        inferd_rows::rope_head(qin, cp[l] + r * d, snp[l] + r * d, qj, d);
      }
      const int64_t hi = lp[r], lo = window > 0 ? std::max<int64_t>(0, hi - window) : 0;
      s.attention.resize((hi - lo) + d);
      // The kernel indexes query and output by kv head h; shift both so that lands on head j.
      attend(qj - h * d, kc[l], vc[l], tp + r * width, block_size, kv_heads, h, h + 1, lo, hi, attn_scale,
             s.attention.data(), dst - h * d);
    });
    barrier.wait();
  }
  void gated_act(int64_t, bool gelu) {
    for (int64_t r = 0; r < t; ++r) {
      const BFloat16* g = gate_up + r * 2 * inter;
      if (gelu) {
        inferd_rows::gelu_tanh_mul_row(g, g + inter, s.act.data() + r * inter, inter);
      } else {
        inferd_rows::silu_mul_row(g, g + inter, s.act.data() + r * inter, inter);
      }
    }
  }
  void final_norm() {  // the per-op path leaves the final residual in x and returns the normed rows
    if (tid != 0) return;
    add_norm_rows(output(inferd_layers::DOWN), norms.back());
    std::copy(res(), res() + t * hidden, x_io);
    std::copy(xn(), xn() + t * hidden, out);
  }
};

}  // namespace

bool serves(const Tensor& x, at::IntArrayRef layout, int64_t max_rows) {
  if (x.scalar_type() != at::kBFloat16 || x.size(0) > std::min<int64_t>(max_rows, TEAM_MAX_ROWS)) return false;
  for (size_t i = 0; i < layout.size(); i += 2)
    if (layout[i] != INT4 && layout[i] != INT8 && layout[i] != FP8 && layout[i] != INT8_PLANES &&
        layout[i] != INT8_TILES)
      return false;  // PACKED: oneDNN's GEMMs bring their own threads
  return true;
}

Tensor decoder_stack(const Tensor& x_in, const c10::List<std::optional<Tensor>>& weights, at::IntArrayRef layout,
                     int64_t structure, double eps, double scale, int64_t num_heads, int64_t head_dim,
                     at::IntArrayRef windows, at::TensorList cos, at::TensorList sin_signed,
                     at::IntArrayRef layer_rope, at::TensorList kv_caches, const Tensor& slots, const Tensor& tables,
                     const Tensor& lens) {
  using inferd_layers::NORMS_PER_LAYER;
  using inferd_layers::PER_LAYER;
  const int64_t layers = static_cast<int64_t>(kv_caches.size()) / 2;
  const int64_t t = x_in.size(0), hidden = x_in.size(1), rows = lens.size(0);
  TORCH_CHECK(x_in.is_contiguous() && x_in.dim() == 2, "decode_team: x must be contiguous [T, hidden]");
  const Tensor& k0 = kv_caches[0];
  TORCH_CHECK(k0.dim() == 4 && k0.size(3) == head_dim, "decode_team: caches must be [blocks, bs, kv_heads, D]");
  const int64_t kv_heads = k0.size(2), block_size = k0.size(1), num_blocks = k0.size(0);
  const int64_t group = num_heads / kv_heads, q_width = num_heads * head_dim;
  const int64_t qkv_width = (num_heads + 2 * kv_heads) * head_dim;
  const Attend attend = group >= 1 && group <= 8 && group * kv_heads == num_heads ? attend_for(head_dim) : nullptr;
  TORCH_CHECK(attend != nullptr, "decode_team: ", num_heads, " heads over ", kv_heads, " kv heads of dim ", head_dim,
              " is not compiled in");
  for (const Tensor& c : kv_caches)
    TORCH_CHECK(c.is_contiguous() && c.sizes() == k0.sizes() && c.scalar_type() == at::kBFloat16,
                "decode_team: every cache must be contiguous bf16 of one shape");
  for (size_t i = 0; i < cos.size(); ++i)
    TORCH_CHECK(cos[i].is_contiguous() && sin_signed[i].is_contiguous() && cos[i].numel() == t * head_dim &&
                    sin_signed[i].numel() == t * head_dim && cos[i].scalar_type() == at::kBFloat16 &&
                    sin_signed[i].scalar_type() == at::kBFloat16,
                "decode_team: cos and sin_signed must be contiguous bf16 with one head_dim row per token");
  // Everything the per-op path would refuse is refused here, before the team starts: nothing
  // may throw inside the parallel region.
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.numel() == t,
              "decode_team: slots must be int64 [T]");
  const int64_t* sp = slots.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < t; ++r)
    TORCH_CHECK(sp[r] < num_blocks * block_size, "rope_write_kv: slot ", sp[r], " is outside the cache");
  TORCH_CHECK(tables.scalar_type() == at::kLong && tables.dim() == 2 && tables.is_contiguous() &&
                  tables.size(0) >= rows && lens.scalar_type() == at::kLong && lens.is_contiguous() && rows <= t,
              "decode_team: block_tables must be int64 [n, W] and seq_lens int64 [n], n <= T");
  const int64_t width = tables.size(1);
  const int64_t* tp = tables.const_data_ptr<int64_t>();
  const int64_t* lp = lens.const_data_ptr<int64_t>();
  for (int64_t s = 0; s < rows; ++s) {
    TORCH_CHECK(lp[s] >= 1 && lp[s] <= width * block_size, "paged_attention_rows: sequence ", s, " has length ",
                lp[s], " but its block table holds ", width * block_size, " slots");
    for (int64_t b = 0; b < (lp[s] + block_size - 1) / block_size; ++b) {
      const int64_t id = tp[s * width + b];
      TORCH_CHECK(id >= 0 && id < num_blocks, "paged_attention_rows: block id ", id, " is outside the cache");
    }
  }
  std::vector<Linear> lin;
  std::vector<NormWeight> norms;
  static const char* const norm_names[NORMS_PER_LAYER] = {"input", "mlp", "attention-out", "mlp-out", "q", "k"};
  int64_t inter = 0;
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t w0 = l * PER_LAYER;
    const int64_t* lay = layout.data() + l * 8;
    auto get = [&](int64_t i) {
      std::optional<Tensor> v = weights.get(i);
      return v.has_value() ? *v : Tensor();
    };
    for (int i = 0; i < NORMS_PER_LAYER; ++i) {  // absent slots stay empty: the structure never reads them
      const Tensor w = get(w0 + i);
      norms.push_back(w.defined() ? norm_weight(w, i >= inferd_layers::Q_NORM ? head_dim : hidden, norm_names[i])
                                  : NormWeight{});
    }
    const Tensor gate_up = get(w0 + NORMS_PER_LAYER + 3 * 2);  // [2I/16, ..] tiles or [2I, K] rows
    inter = (lay[4] == INT8 || lay[4] == FP8 ? gate_up.size(0) : gate_up.size(0) * 16) / 2;
    const int64_t in[4] = {hidden, q_width, hidden, inter}, out[4] = {qkv_width, hidden, 2 * inter, hidden};
    for (int i = 0; i < 4; ++i) {
      const int64_t base = w0 + NORMS_PER_LAYER + 3 * i;
      lin.push_back(describe(lay[2 * i], lay[2 * i + 1], get(base), get(base + 1), get(base + 2), in[i], out[i]));
    }
  }
  {
    std::optional<Tensor> f = weights.get(layers * PER_LAYER);
    norms.push_back(norm_weight(f.has_value() ? *f : Tensor(), hidden, "final"));
  }

  // Shared activations: each element written by one thread in a phase, read after a barrier.
  Tensor out = at::empty_like(x_in);
  Tensor shared = at::empty({t * (qkv_width + 2 * q_width + 2 * hidden + 2 * inter)}, x_in.options());
  BFloat16* qkv = shared.mutable_data_ptr<BFloat16>();
  BFloat16* q = qkv + t * qkv_width;
  BFloat16* attn = q + t * q_width;
  BFloat16* o = attn + t * q_width;
  BFloat16* gate_up = o + t * hidden;
  BFloat16* down = gate_up + t * 2 * inter;
  BFloat16* x_io = x_in.mutable_data_ptr<BFloat16>();
  std::vector<const BFloat16*> cp(layers), snp(layers);
  std::vector<BFloat16*> kc(layers), vc(layers);
  for (int64_t l = 0; l < layers; ++l) {
    cp[l] = cos[layer_rope[l]].const_data_ptr<BFloat16>();
    snp[l] = sin_signed[layer_rope[l]].const_data_ptr<BFloat16>();
    kc[l] = kv_caches[2 * l].mutable_data_ptr<BFloat16>();
    vc[l] = kv_caches[2 * l + 1].mutable_data_ptr<BFloat16>();
  }
  const int64_t d = head_dim;
  const float attn_scale = static_cast<float>(scale);
  SpinBarrier barrier;
  at::internal::lazy_init_num_threads();
  const int threads = at::get_num_threads();
  std::unique_ptr<WorkQueue> queue_of_team;

#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), team = omp_get_num_threads();
#pragma omp single
    {
      barrier.reset(team);
      queue_of_team = std::make_unique<WorkQueue>(layers * 6, team);  // qkv, kv, attention, o, gate_up, down
    }  // the single's implicit barrier publishes both
    Scratch& s = scratch();
    s.residual.assign(x_io, x_io + t * hidden);
    s.normed.resize(t * hidden);
    s.act.resize(t * inter);
    s.side.resize(t * hidden);
    TeamExecutor e{lin.data(), norms, t, rows, hidden, inter, q_width, qkv_width, num_heads, kv_heads, group, d,
                   width, block_size, windows.data(), eps, attn_scale, attend, sp, tp, lp, cp.data(), snp.data(),
                   kc.data(), vc.data(), qkv, q, attn, o, gate_up, down, x_io, out.mutable_data_ptr<BFloat16>(),
                   barrier, *queue_of_team, tid, s};
    inferd_layers::run_decoder_layers(e, layers, structure);
  }
  return out;
}

}  // namespace inferd_team
