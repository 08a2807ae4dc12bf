// The order of a decoder stack's operations, written once for both native stacks:
// decoder_stack.cpp (one torch op per operation) and decode_team.cpp (one thread team for the
// whole step) each supply an executor with the operations below, and run_decoder_layers calls
// them in the order inferd/model/layers.py's and gemma3.py's layers run theirs (the reference
// both are tested against bitwise). A new layer structure changes this function and the
// executors' operations; the kernels' ISA never shows here (it lives in row_kernels.h /
// quant_kernels.h).
#pragma once

#include <cstdint>

namespace inferd_layers {

// A layer's linears, in the order of decoder_stack's per-layer `weights` and `layout`.
enum LinearSlot : int { QKV = 0, O = 1, GATE_UP = 2, DOWN = 3 };
// A layer's norm weights, first in its `weights`: before attention (input), before the MLP
// (Llama's post_attention_layernorm, Gemma's pre_feedforward_layernorm), on the attention and
// MLP outputs (Gemma's post_attention / post_feedforward norms), and the per-head q and k
// norms. Absent ones are None. A norm weight in fp32 on bf16 rows is Gemma's 1 + w.
enum NormSlot : int { INPUT_NORM = 0, MLP_NORM = 1, ATTN_OUT_NORM = 2, MLP_OUT_NORM = 3, Q_NORM = 4, K_NORM = 5 };
constexpr int64_t NORMS_PER_LAYER = 6;
constexpr int64_t PER_LAYER = NORMS_PER_LAYER + 4 * 3;  // then (a, b, bias) per linear

// What every layer of the stack computes besides Llama's pre-norm layer, as decoder_stack's
// `structure` bits (inferd/kernels/native_stack.py builds them from the layers' own statements).
enum StructureBit : int64_t {
  QK_NORM = 1,     // q and k RMS-normed per head before rope (Qwen3, Gemma 3)
  POST_NORMS = 2,  // the attention and MLP outputs normed before their residual add (Gemma's sandwich)
  GELU_TANH = 4,   // gelu_tanh(gate) * up instead of silu(gate) * up
};
constexpr int64_t KNOWN_STRUCTURE = QK_NORM | POST_NORMS | GELU_TANH;

// The executor's operations, each reading and writing the activations it names:
//   first_norm()            normed = rms_norm(residual = embeddings), layer 0's input norm
//   add_norm(l, norm, from) residual += from (DOWN of layer l - 1, or O of layer l); normed = rms_norm(residual)
//   norm(l, norm, of)       of = rms_norm(of) (O or DOWN: the sandwich's output norms)
//   linear(l, slot)         QKV: normed -> qkv; O: attn -> o; GATE_UP: normed -> gate_up; DOWN: act -> down
//   rope_write_kv(l, qk)    qkv -> rotated q, and rotated k and v into layer l's paged cache; with
//                           qk, each q and k head normed first (its Q_NORM / K_NORM)
//   attention(l)            q over layer l's cache, within layer l's window -> attn (padding rows: zeros)
//   gated_act(l, gelu)      gate_up -> act = silu(gate) * up, or gelu_tanh(gate) * up
//   final_norm()            residual += down; the result is rms_norm(residual)
template <typename Executor>
void run_decoder_layers(Executor& e, int64_t layers, int64_t structure) {
  const bool qk = structure & QK_NORM, post = structure & POST_NORMS, gelu = structure & GELU_TANH;
  e.first_norm();
  for (int64_t l = 0; l < layers; ++l) {
    if (l > 0) e.add_norm(l, INPUT_NORM, DOWN);
    e.linear(l, QKV);
    e.rope_write_kv(l, qk);
    e.attention(l);
    e.linear(l, O);
    if (post) e.norm(l, ATTN_OUT_NORM, O);
    e.add_norm(l, MLP_NORM, O);
    e.linear(l, GATE_UP);
    e.gated_act(l, gelu);
    e.linear(l, DOWN);
    if (post) e.norm(l, MLP_OUT_NORM, DOWN);
  }
  e.final_norm();
}

}  // namespace inferd_layers
