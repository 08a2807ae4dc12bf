"""Llama family (Llama, SmolLM2, Mistral, Qwen2): pre-norm layers, fused q/k/v, silu-gated MLP.

The layer structure the native CPU stack serves. Mistral's sliding window is one window for every
layer; Qwen2 differs only in its q/k/v bias, which the config carries.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from inferd.model.arch import ArchConfig
from inferd.model.decoder import DecoderForCausalLM
from inferd.model.layers import Attention, MLPFactory, PreNormDecoderLayer, dense_mlp

# The per-layer GGUF tensor names llama.cpp writes for every Llama-style architecture.
LLAMA_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


class LlamaForCausalLM(DecoderForCausalLM):
    gguf_layer_names = LLAMA_GGUF_LAYER_NAMES
    gguf_permuted_qk = True  # llama.cpp's Llama/Mistral converter permutes q/k rows
    make_mlp: ClassVar[MLPFactory] = staticmethod(dense_mlp)

    def build_layers(self, cfg: ArchConfig) -> list[nn.Module]:
        return [PreNormDecoderLayer(cfg, Attention(cfg, window=cfg.layer_window(i)), self.make_mlp(cfg, i))
                for i in range(cfg.num_layers)]


class Qwen2ForCausalLM(LlamaForCausalLM):
    gguf_permuted_qk = False  # llama.cpp writes Qwen q/k rows as HF has them
