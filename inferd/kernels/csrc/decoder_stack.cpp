// The whole decoder stack of a Llama-family, Qwen3 or Gemma 3 model for one CPU step, in one call
// from Python.
//
// It runs exactly the ops the model's fused Python path runs (inferd/model/layers.py, gemma3.py), in the same
// order (decoder_layers.h, shared with decode_team.cpp) and through the same kernels (looked up once in torch's dispatcher), so its result is
// bitwise that path's; what it removes is Python between the kernels: module calls, attribute
// lookups and argument parsing, about 2 ms a step at batch 1, and the gaps they leave between
// weight reads. inferd/kernels/native_stack.py builds the arguments and decides when it applies.
//
// weights: per layer its six norm slots (decoder_layers.h's NormSlot: input, mlp, attention-out,
// mlp-out, q, k; None where the structure has none), then (a, b, bias) for qkv, o, gate_up, down;
// then the final norm. layout: per layer (kind, group) for qkv, o, gate_up, down. structure:
// decoder_layers.h's StructureBit flags, the same for every layer; windows: each layer's sliding
// window (0: none); cos / sin_signed: the step's rope tables, layer_rope: each layer's. Kinds (their ids
// come from inferd/kernels/native_kinds.py, see decode_team.h):
//   PACKED oneDNN-packed float weight a (mkldnn::_linear_pointwise, bias fused)
//   INT4 int4 tiles a with scale_zeros b (int4_mm)   INT8 int8 rows a, scale b (int8_rows_mm)
//   FP8 fp8 rows a, scale b (fp8_rows_mm)            INT8_PLANES int8 as two int4 planes (int4_mm on [x, x])
//   INT8_TILES int8 tiles a with scales b (int8_tiles_mm)

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops_namespace.h"

#include <optional>
#include <string>
#include <vector>

#include "decode_team.h"
#include "decoder_layers.h"

namespace {

using at::Tensor;
using inferd_team::FP8;
using inferd_team::INT4;
using inferd_team::INT8;
using inferd_team::INT8_PLANES;
using inferd_team::INT8_TILES;
using inferd_team::PACKED;
using inferd_layers::NORMS_PER_LAYER;
using inferd_layers::PER_LAYER;

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

struct Kernels {
  c10::TypedOperatorHandle<void(Tensor&, const Tensor&, const Tensor&, double)> rms_norm =
      op(INFERD_OP("rms_norm")).typed<void(Tensor&, const Tensor&, const Tensor&, double)>();
  c10::TypedOperatorHandle<void(Tensor&, Tensor&, const Tensor&, double)> add_rms_norm =
      op(INFERD_OP("add_rms_norm")).typed<void(Tensor&, Tensor&, const Tensor&, double)>();
  c10::TypedOperatorHandle<Tensor(const Tensor&)> silu_and_mul =
      op(INFERD_OP("silu_and_mul")).typed<Tensor(const Tensor&)>();
  c10::TypedOperatorHandle<Tensor(const Tensor&)> gelu_tanh_and_mul =
      op(INFERD_OP("gelu_tanh_and_mul")).typed<Tensor(const Tensor&)>();
  c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, const Tensor&, double, const Tensor&, const Tensor&,
                                  Tensor&, Tensor&, const Tensor&, int64_t)>
      norm_rope_write_kv = op(INFERD_OP("norm_rope_write_kv"))
                               .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, double, const Tensor&,
                                             const Tensor&, Tensor&, Tensor&, const Tensor&, int64_t)>();
  c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&, const Tensor&,
                                  int64_t)>
      rope_write_kv = op(INFERD_OP("rope_write_kv"))
                          .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&,
                                        const Tensor&, int64_t)>();
  c10::TypedOperatorHandle<void(Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                double, int64_t)>
      attention = op(INFERD_OP("paged_attention_rows"))
                      .typed<void(Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                  const Tensor&, double, int64_t)>();
  c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, int64_t, const Tensor&)> int4_mm =
      op(INFERD_OP("int4_mm")).typed<Tensor(const Tensor&, const Tensor&, int64_t, const Tensor&)>();
  c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, int64_t, const Tensor&)> int8_tiles_mm =
      op(INFERD_OP("int8_tiles_mm")).typed<Tensor(const Tensor&, const Tensor&, int64_t, const Tensor&)>();
  c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, const Tensor&)> int8_rows_mm =
      op(INFERD_OP("int8_rows_mm")).typed<Tensor(const Tensor&, const Tensor&, const Tensor&)>();
  c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, const Tensor&)> fp8_rows_mm =
      op(INFERD_OP("fp8_rows_mm")).typed<Tensor(const Tensor&, const Tensor&, const Tensor&)>();
  c10::OperatorHandle packed_linear = op("mkldnn::_linear_pointwise");
};

const Kernels& kernels() {
  static const Kernels k;
  return k;
}

Tensor weight_at(const c10::List<std::optional<Tensor>>& w, int64_t i) {
  std::optional<Tensor> t = w.get(i);
  return t.has_value() ? *t : Tensor();
}

// One linear layer, as its Python module's forward computes it for these rows.
Tensor run_linear(int64_t kind, int64_t group, const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& x) {
  const Kernels& k = kernels();
  Tensor y;
  switch (kind) {
    case PACKED: {
      std::vector<c10::IValue> stack{x, a, bias.defined() ? c10::IValue(bias) : c10::IValue(), std::string("none"),
                                     c10::List<std::optional<c10::Scalar>>(), std::optional<std::string>("")};
      k.packed_linear.callBoxed(&stack);
      return stack[0].toTensor();
    }
    case INT4: y = k.int4_mm.call(x, a, group, b); break;
    case INT8: y = k.int8_rows_mm.call(x, a, b); break;
    case FP8: y = k.fp8_rows_mm.call(x, a, b); break;
    case INT8_PLANES: y = k.int4_mm.call(at::cat({x, x}, 1), a, group, b); break;
    case INT8_TILES: y = k.int8_tiles_mm.call(x, a, group, b); break;
    default: TORCH_CHECK(false, "decoder_stack: unknown linear kind ", kind);
  }
  return bias.defined() ? y + bias : y;
}

// decoder_layers.h's operations, one torch op each, on the step's activation tensors.
struct PerOpExecutor {
  const c10::List<std::optional<Tensor>>& weights;
  at::IntArrayRef layout;
  double eps, scale;
  int64_t num_heads, head_dim;
  at::IntArrayRef windows;
  at::TensorList cos, sin_signed;
  at::IntArrayRef layer_rope;
  at::TensorList kv_caches;
  const Tensor& slots;
  const Tensor& tables;
  const Tensor& lens;
  int64_t layers;
  Tensor residual, normed, qkv, q, attn, o, gate_up, act, down;

  Tensor weight(int64_t i) const { return weight_at(weights, i); }
  Tensor& output(int from) { return from == inferd_layers::DOWN ? down : o; }

  void first_norm() {
    normed = at::empty_like(residual);
    kernels().rms_norm.call(normed, residual, weight(0), eps);
  }
  void add_norm(int64_t l, int norm, int from) {  // in place: `from` becomes the normed rows
    Tensor& x = output(from);
    kernels().add_rms_norm.call(x, residual, weight(l * PER_LAYER + norm), eps);
    normed = x;
  }
  void norm(int64_t l, int norm, int of) {  // the Python path's norm into a new tensor, here in place
    Tensor& x = output(of);
    kernels().rms_norm.call(x, x, weight(l * PER_LAYER + norm), eps);
  }
  void linear(int64_t l, int slot) {
    using namespace inferd_layers;
    const int64_t* lay = layout.data() + l * 8;
    const int64_t base = l * PER_LAYER + NORMS_PER_LAYER + 3 * slot;
    const Tensor& in = slot == QKV || slot == GATE_UP ? normed : slot == O ? attn : act;
    Tensor y = run_linear(lay[2 * slot], lay[2 * slot + 1], weight(base), weight(base + 1), weight(base + 2), in);
    (slot == QKV ? qkv : slot == O ? o : slot == GATE_UP ? gate_up : down) = y;
  }
  void rope_write_kv(int64_t l, bool qk_norm) {
    using namespace inferd_layers;
    Tensor kc = kv_caches[2 * l], vc = kv_caches[2 * l + 1];
    const Tensor &c = cos[layer_rope[l]], &s = sin_signed[layer_rope[l]];
    q = qk_norm ? kernels().norm_rope_write_kv.call(qkv, weight(l * PER_LAYER + Q_NORM),
                                                    weight(l * PER_LAYER + K_NORM), eps, c, s, kc, vc, slots,
                                                    num_heads)
                : kernels().rope_write_kv.call(qkv, c, s, kc, vc, slots, num_heads);
  }
  void attention(int64_t l) {
    const int64_t t = q.size(0), rows = lens.size(0);
    Tensor out = at::empty_like(q);
    if (rows < t) out.narrow(0, rows, t - rows).zero_();  // padding rows
    Tensor real = out.narrow(0, 0, rows);
    kernels().attention.call(real, q.narrow(0, 0, rows), kv_caches[2 * l], kv_caches[2 * l + 1], tables, lens, scale,
                             windows[l]);
    attn = out.view({t, num_heads * head_dim});
  }
  void gated_act(int64_t, bool gelu) {
    act = gelu ? kernels().gelu_tanh_and_mul.call(gate_up) : kernels().silu_and_mul.call(gate_up);
  }
  void final_norm() {
    kernels().add_rms_norm.call(down, residual, weight(layers * PER_LAYER), eps);
    normed = down;
  }
};

// x: the embeddings [T, hidden], which become the first residual (updated in place, as the
// Python path does). Returns the final-normed hidden states [T, hidden]. Steps of at most
// max_team_rows rows on quantized linears run on one thread team instead (decode_team.cpp).
Tensor decoder_stack(const Tensor& x_in, const c10::List<std::optional<Tensor>>& weights, at::IntArrayRef layout,
                     int64_t structure, double eps, double scale, int64_t num_heads, int64_t head_dim,
                     at::IntArrayRef windows, at::TensorList cos, at::TensorList sin_signed,
                     at::IntArrayRef layer_rope, at::TensorList kv_caches, const Tensor& slots, const Tensor& tables,
                     const Tensor& lens, int64_t max_team_rows) {
  const int64_t layers = static_cast<int64_t>(kv_caches.size()) / 2;
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == layers * PER_LAYER + 1 &&
                  static_cast<int64_t>(layout.size()) == layers * 8 &&
                  static_cast<int64_t>(windows.size()) == layers &&
                  static_cast<int64_t>(layer_rope.size()) == layers,
              "decoder_stack: weights/layout/windows/layer_rope do not describe ", layers, " layers");
  TORCH_CHECK((structure & ~inferd_layers::KNOWN_STRUCTURE) == 0, "decoder_stack: unknown structure bits ",
              structure);
  TORCH_CHECK(cos.size() == sin_signed.size(), "decoder_stack: one sin table per cos table");
  for (int64_t l = 0; l < layers; ++l) {
    TORCH_CHECK(layer_rope[l] >= 0 && layer_rope[l] < static_cast<int64_t>(cos.size()), "decoder_stack: layer ", l,
                " names rope table ", layer_rope[l], " of ", cos.size());
    if (structure & inferd_layers::QK_NORM)
      TORCH_CHECK(weight_at(weights, l * PER_LAYER + inferd_layers::Q_NORM).defined() &&
                      weight_at(weights, l * PER_LAYER + inferd_layers::K_NORM).defined(),
                  "decoder_stack: qk-norm without q / k norm weights in layer ", l);
    if (structure & inferd_layers::POST_NORMS)
      TORCH_CHECK(weight_at(weights, l * PER_LAYER + inferd_layers::ATTN_OUT_NORM).defined() &&
                      weight_at(weights, l * PER_LAYER + inferd_layers::MLP_OUT_NORM).defined(),
                  "decoder_stack: post-norms without their weights in layer ", l);
  }
  if (inferd_team::serves(x_in, layout, max_team_rows)) {
    return inferd_team::decoder_stack(x_in, weights, layout, structure, eps, scale, num_heads, head_dim, windows,
                                      cos, sin_signed, layer_rope, kv_caches, slots, tables, lens);
  }
  PerOpExecutor e{weights, layout, eps, scale, num_heads, head_dim, windows, cos, sin_signed, layer_rope,
                  kv_caches, slots, tables, lens, layers};
  e.residual = x_in;
  inferd_layers::run_decoder_layers(e, layers, structure);
  return e.normed;
}

}  // namespace

INFERD_FRAGMENT(m) {
  m.def("decoder_stack(Tensor(b!) x, Tensor?[] weights, int[] layout, int structure, float eps, float scale, "
        "int num_heads, int head_dim, int[] windows, Tensor[] cos, Tensor[] sin_signed, int[] layer_rope, "
        "Tensor(a!)[] kv_caches, Tensor slots, Tensor block_tables, Tensor seq_lens, int max_team_rows=8) -> Tensor");
  // The kind ids this library was compiled with, "PACKED=0,INT4=1,...": a test holds them to
  // native_kinds.py's table.
  m.def("linear_kinds() -> str", []() {
    std::string out;
#define INFERD_KIND_TEXT(name) out += std::string(out.empty() ? "" : ",") + #name "=" + std::to_string(int64_t{inferd_team::name});
    INFERD_LINEAR_KINDS(INFERD_KIND_TEXT)
#undef INFERD_KIND_TEXT
    return out;
  });
  m.def("decode_team_serves(Tensor x, int[] layout, int max_team_rows) -> bool",
        [](const Tensor& x, c10::List<int64_t> layout, int64_t max_rows) {
          const std::vector<int64_t> v(layout.begin(), layout.end());
          return inferd_team::serves(x, v, max_rows);
        });
}

INFERD_IMPL(CPU, m) { m.impl("decoder_stack", decoder_stack); }
// oneDNN-packed weights are MkldnnCPU tensors, which route the whole call to that key.
INFERD_IMPL(MkldnnCPU, m) { m.impl("decoder_stack", decoder_stack); }
