// The order of a Llama-family decoder stack's operations, written once for both native stacks:
// decoder_stack.cpp (one torch op per operation) and decode_team.cpp (one thread team for the
// whole step) each supply an executor with the operations below, and run_decoder_layers calls
// them in the order inferd/model/llama.py's layers run theirs (the reference both are tested
// against bitwise). A new layer structure changes this function and the executors' operations;
// the kernels' ISA never shows here (it lives in row_kernels.h / quant_kernels.h).
#pragma once

#include <cstdint>

namespace inferd_layers {

// A layer's linears, in the order of decoder_stack's per-layer `weights` and `layout`.
enum LinearSlot : int { QKV = 0, O = 1, GATE_UP = 2, DOWN = 3 };
// A layer's norms: before attention (input) and before the MLP (post-attention).
enum NormSlot : int { INPUT_NORM = 0, POST_NORM = 1 };

// The executor's operations, each reading and writing the activations it names:
//   first_norm()            normed = rms_norm(residual = embeddings), layer 0's input norm
//   add_norm(l, norm, from) residual += from (DOWN of layer l - 1, or O of layer l); normed = rms_norm(residual)
//   linear(l, slot)         QKV: normed -> qkv; O: attn -> o; GATE_UP: normed -> gate_up; DOWN: act -> down
//   rope_write_kv(l)        qkv -> rotated q, and rotated k and v into layer l's paged cache
//   attention(l)            q over layer l's cache -> attn (padding rows: zeros)
//   silu_mul(l)             gate_up -> act = silu(gate) * up
//   final_norm()            residual += down; the result is rms_norm(residual)
template <typename Executor>
void run_decoder_layers(Executor& e, int64_t layers) {
  e.first_norm();
  for (int64_t l = 0; l < layers; ++l) {
    if (l > 0) e.add_norm(l, INPUT_NORM, DOWN);
    e.linear(l, QKV);
    e.rope_write_kv(l);
    e.attention(l);
    e.linear(l, O);
    e.add_norm(l, POST_NORM, O);
    e.linear(l, GATE_UP);
    e.silu_mul(l);
    e.linear(l, DOWN);
  }
  e.final_norm();
}

}  // namespace inferd_layers
