"""Gemma 3 (text): sandwich-normed layers, local sliding / global attention, scaled embeddings.

What differs from Llama, each as HF Gemma3ForCausalLM computes it: (1 + w) RMSNorms, also on the
attention and MLP outputs; qk-norm; a tanh-gelu MLP; sqrt(hidden) embedding scale; attention
scaled by query_pre_attn_scalar; sliding layers with their own rope base (10000) and global layers
with the file's base and rope scaling; final-logit soft-capping where the config sets it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import nn

from inferd.kernels.attention import AttentionMetadata
from inferd.kernels.native_stack import LayerStructure
from inferd.model.arch import ArchConfig
from inferd.model.decoder import DecoderForCausalLM
from inferd.model.layers import (
    Attention,
    GatedMLP,
    KVCache,
    MLPFactory,
    OffsetRMSNorm,
    RMSNorm,
    dense_mlp,
)
from inferd.model.rope import RopeTables, RotaryEmbedding

# google/gemma-3-*-it's chat template (llama.cpp's built-in `gemma` template renders the same):
# a system message is folded into the first user turn; the assistant's role is `model`.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}"
    "{{ raise_exception('Invalid content type') }}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
# Gemma's chat turns end with this token: a stop token besides <eos> (llama.cpp, vLLM do the same).
END_OF_TURN = "<end_of_turn>"


class Gemma3DecoderLayer(nn.Module):
    """x + post_attn_norm(attn(norm(x))), then + post_ffw_norm(mlp(pre_ffw_norm(.)))."""

    def __init__(self, cfg: ArchConfig, attn: Attention, mlp: nn.Module, rope: str):
        super().__init__()
        size, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = OffsetRMSNorm(size, eps)
        self.self_attn = attn
        self.post_attention_layernorm = OffsetRMSNorm(size, eps)
        self.pre_feedforward_layernorm = OffsetRMSNorm(size, eps)
        self.mlp = mlp
        self.post_feedforward_layernorm = OffsetRMSNorm(size, eps)
        self.rope = rope

    def forward(self, rope: RopeTables, x: torch.Tensor, residual: torch.Tensor | None, kv_cache: KVCache,
                meta: AttentionMetadata, fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's normed MLP output, the residual stream before it): the same contract as
        PreNormDecoderLayer, so the residual add happens inside the next layer's first norm."""
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm.add_forward(x, residual)
        x = self.post_attention_layernorm(self.self_attn(rope, x, kv_cache, meta, fused))
        x, residual = self.pre_feedforward_layernorm.add_forward(x, residual)
        return self.post_feedforward_layernorm(self.mlp(x, fused)), residual

    def native_structure(self) -> LayerStructure:
        """What this layer computes, in the native stack's terms (it serves none of it yet)."""
        attn = self.self_attn
        return LayerStructure(norm="rms(1+w)", qk_norm=True, attention_softcap=attn.softcap is not None,
                              mlp=f"{self.mlp.act_name}-gated" if isinstance(self.mlp, GatedMLP) else "other",
                              post_norms=True, rope=self.rope, window=attn.window, scale=attn.scale)


class Gemma3ForCausalLM(DecoderForCausalLM):
    gguf_layer_names = {
        "attn_norm.weight": "input_layernorm.weight",
        "post_attention_norm.weight": "post_attention_layernorm.weight",
        "ffn_norm.weight": "pre_feedforward_layernorm.weight",
        "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
        "attn_q.weight": "self_attn.q_proj.weight",
        "attn_k.weight": "self_attn.k_proj.weight",
        "attn_v.weight": "self_attn.v_proj.weight",
        "attn_q_norm.weight": "self_attn.q_norm.weight",
        "attn_k_norm.weight": "self_attn.k_norm.weight",
        "attn_output.weight": "self_attn.o_proj.weight",
        "ffn_gate.weight": "mlp.gate_proj.weight",
        "ffn_up.weight": "mlp.up_proj.weight",
        "ffn_down.weight": "mlp.down_proj.weight",
    }
    gguf_norm_shift = -1.0  # llama.cpp stores 1 + w; HF (and this model) keep w
    default_chat_template = GEMMA_CHAT_TEMPLATE
    stop_tokens: ClassVar[tuple[str, ...]] = (END_OF_TURN,)
    make_mlp: ClassVar[MLPFactory] = staticmethod(dense_mlp)

    def __init__(self, cfg: ArchConfig, max_positions: int | None = None):
        super().__init__(cfg, max_positions)
        self.embed_scale = cfg.hidden_size ** 0.5

    @classmethod
    def adapt_gguf_config(cls, cfg: ArchConfig, get: Callable[..., Any]) -> ArchConfig:
        """What llama.cpp's gemma3 model hard-codes: every 6th layer global, the others sliding
        with rope base 10000 (unscaled); attention scaled by head_dim ** -0.5; tanh-gelu MLP."""
        pattern = get("gemma3.attention.sliding_window_pattern", 6)
        if isinstance(pattern, int | float):
            sliding = tuple(i for i in range(cfg.num_layers) if (i + 1) % int(pattern))
        else:  # newer files: one flag per layer
            sliding = tuple(i for i, flag in enumerate(pattern) if flag)
        return replace(cfg, sliding_layers=sliding if cfg.sliding_window else None,
                       rope_local_theta=float(get("gemma3.rope.freq_base_swa", 10000.0)),
                       hidden_act="gelu_pytorch_tanh", query_pre_attn_scalar=float(cfg.head_dim))

    def build_layers(self, cfg: ArchConfig) -> list[nn.Module]:
        scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
        layers = []
        for i in range(cfg.num_layers):
            window = cfg.layer_window(i)
            # Gemma 3 configs carry attn_logit_softcapping, but neither HF's Gemma 3 nor llama.cpp's
            # applies it (Gemma 2 did): the reference wins, so no cap here.
            attn = Attention(cfg, window=window, scale=scale, qk_norm=OffsetRMSNorm)
            layers.append(Gemma3DecoderLayer(cfg, attn, self.make_mlp(cfg, i),
                                             "local" if window is not None else "global"))
        return layers

    def final_norm(self, cfg: ArchConfig) -> RMSNorm:
        return OffsetRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def build_rotaries(self, cfg: ArchConfig, max_positions: int) -> dict[str, RotaryEmbedding]:
        """Global layers: the file's base and rope scaling; sliding layers: their own base, unscaled."""
        tables = super().build_rotaries(cfg, max_positions)
        if cfg.sliding_window is not None:
            tables["local"] = RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_local_theta or 10000.0,
                                              None, cfg.max_position_embeddings)
        return tables
