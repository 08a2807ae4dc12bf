"""Qwen3: the Llama layer plus qk-norm (an RMSNorm over each head of q and k, before rope).

Dense Qwen3 only; Qwen3-MoE plugs an MoE block in as `make_mlp` (inferd/model/moe.py).
"""

from __future__ import annotations

from torch import nn

from inferd.model.arch import ArchConfig
from inferd.model.layers import Attention, PreNormDecoderLayer, RMSNorm
from inferd.model.llama import LLAMA_GGUF_LAYER_NAMES, LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    gguf_layer_names = {**LLAMA_GGUF_LAYER_NAMES,
                        "attn_q_norm.weight": "self_attn.q_norm.weight",
                        "attn_k_norm.weight": "self_attn.k_norm.weight"}
    gguf_permuted_qk = False

    def build_layers(self, cfg: ArchConfig) -> list[nn.Module]:
        return [PreNormDecoderLayer(cfg, Attention(cfg, window=cfg.layer_window(i), qk_norm=RMSNorm),
                                    self.make_mlp(cfg, i))
                for i in range(cfg.num_layers)]
