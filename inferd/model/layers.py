"""Building blocks every architecture composes: norms, attention, gated MLP, the pre-norm layer.

Each block computes what the HF reference computes for its variant (Llama's RMSNorm or Gemma's
(1 + w) one, qk-norm, per-layer sliding window, soft-capping, silu or tanh-gelu MLP) and uses the
fused CPU kernels only where their math is the same; anything else runs on torch ops. A block
that the native CPU stack can run says so through `native_structure` (see native_stack.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from inferd.kernels import cpu_ops
from inferd.kernels.attention import AttentionMetadata, paged_attention, write_kv
from inferd.kernels.native_stack import LayerStructure
from inferd.model.arch import ArchConfig
from inferd.model.rope import RopeTables, apply_rope
from inferd.model.softcap_attention import softcapped_attention

KVCache = tuple[torch.Tensor, torch.Tensor]  # one layer's (k_cache, v_cache)


class RMSNorm(nn.Module):
    """HF-exact Llama RMSNorm: normalise in fp32, scale by `weight` in the activation dtype."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        if fused:
            out = torch.empty_like(x)
            cpu_ops.ops().rms_norm(out, x, self.weight, self.eps)
            return out
        if x.dtype == torch.float32:  # one fused op; same math as the half path without casts
            return torch.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.weight * torch.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor, fused: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual): the residual add and the next norm in one pass.

        The fused kernel works in place (x and residual are this step's own activations).
        """
        if fused:
            cpu_ops.ops().add_rms_norm(x, residual, self.weight, self.eps)
            return x, residual
        residual = residual + x
        return self(residual), residual


class OffsetRMSNorm(RMSNorm):
    """Gemma's RMSNorm: scale by (1 + weight), in fp32, then cast (HF Gemma3RMSNorm).

    The weight is stored as HF stores it (centred on 0). The fused kernel scales by `weight` after
    casting, which is other math, so this norm always runs on torch ops.
    """

    def __init__(self, size: int, eps: float):
        super().__init__(size, eps)
        nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        normed = torch.rms_norm(x.float(), self.weight.shape, eps=self.eps)
        return (normed * (1.0 + self.weight.float())).to(x.dtype)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor, fused: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        residual = residual + x
        return self(residual), residual


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.gelu(x, approximate="tanh")


# HF `hidden_act` / `hidden_activation` names -> the gate's activation.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": nn.functional.silu,
    "swish": nn.functional.silu,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_tanh": _gelu_tanh,
}


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) with gate and up fused into one matmul (`gate_up_proj`)."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported MLP activation {cfg.hidden_act!r}; inferd has {sorted(ACTIVATIONS)}")
        self.act_name = cfg.hidden_act
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.intermediate = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    @property
    def is_silu(self) -> bool:
        return self.act is nn.functional.silu

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        if fused and self.is_silu:
            return self.down_proj(cpu_ops.ops().silu_and_mul(self.gate_up_proj(x)))
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)
        return self.down_proj(self.act(gate) * up)


# What builds a layer's MLP: GatedMLP for dense models; an MoE block (inferd/model/moe.py) plugs
# in here, chosen per layer by the architecture file.
MLPFactory = Callable[[ArchConfig, int], nn.Module]


def dense_mlp(cfg: ArchConfig, layer_index: int) -> nn.Module:
    return GatedMLP(cfg)


class Attention(nn.Module):
    """Self-attention over the paged KV cache with fused q/k/v (`qkv_proj`).

    Options, each as its architecture's config sets it: `qk_norm` (a norm class applied per head
    to q and k before rope: Qwen3, Gemma 3), `window` (this layer's sliding window; None: global),
    `scale` (Gemma's query_pre_attn_scalar), `softcap` (tanh soft-capping of the scores).
    """

    def __init__(self, cfg: ArchConfig, window: int | None = None, scale: float | None = None,
                 qk_norm: type[RMSNorm] | None = None, softcap: float | None = None):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size, self.kv_size = cfg.q_size, cfg.kv_size
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.scale = scale if scale is not None else self.head_dim ** -0.5
        self.window = window
        self.softcap = softcap
        self.q_norm = qk_norm(self.head_dim, cfg.rms_norm_eps) if qk_norm else None
        self.k_norm = qk_norm(self.head_dim, cfg.rms_norm_eps) if qk_norm else None

    def forward(self, rope: RopeTables, x: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata,
                fused: bool = False) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        plain = self.q_norm is None and self.softcap is None
        if plain and fused and isinstance(kv_cache[0], torch.Tensor) and kv_cache[0].dtype == qkv.dtype:
            q = cpu_ops.ops().rope_write_kv(qkv, rope.cos, rope.sin_signed, kv_cache[0], kv_cache[1],
                                            meta.slot_mapping, self.num_heads)
            out = paged_attention(q, kv_cache[0], kv_cache[1], meta, self.scale)
            return self.o_proj(out.view(t, self.q_size))
        qk = qkv[:, :self.q_size + self.kv_size].view(t, self.num_heads + self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            qk = torch.cat((self.q_norm(qk[:, :self.num_heads]), self.k_norm(qk[:, self.num_heads:])), dim=1)
        # q and k are rotated together: one set of elementwise ops instead of two.
        qk = apply_rope(qk, rope)
        q, k = qk[:, :self.num_heads], qk[:, self.num_heads:]
        v = qkv[:, self.q_size + self.kv_size:].view(t, self.num_kv_heads, self.head_dim)
        write_kv(k, v, kv_cache[0], kv_cache[1], meta.slot_mapping)
        if self.softcap is not None:
            out = softcapped_attention(q, kv_cache[0], kv_cache[1], meta, self.scale, self.softcap)
        else:
            out = paged_attention(q, kv_cache[0], kv_cache[1], meta, self.scale)
        return self.o_proj(out.reshape(t, self.q_size))


class PreNormDecoderLayer(nn.Module):
    """Llama-style layer: x + attn(norm(x)), then + mlp(norm(.)); `rope` names its rope table."""

    def __init__(self, cfg: ArchConfig, attn: Attention, mlp: nn.Module, norm: type[RMSNorm] = RMSNorm,
                 rope: str = "global"):
        super().__init__()
        self.input_layernorm = norm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = attn
        self.post_attention_layernorm = norm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = mlp
        self.rope = rope

    def forward(self, rope: RopeTables, x: torch.Tensor, residual: torch.Tensor | None, kv_cache: KVCache,
                meta: AttentionMetadata, fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's MLP output, the residual stream before it), as vLLM's layers do, so each
        residual add happens inside the next norm; residual None means x is the embedding."""
        if residual is None:
            residual, x = x, self.input_layernorm(x, fused)
        else:
            x, residual = self.input_layernorm.add_forward(x, residual, fused)
        x = self.self_attn(rope, x, kv_cache, meta, fused)
        x, residual = self.post_attention_layernorm.add_forward(x, residual, fused)
        return self.mlp(x, fused), residual

    def native_structure(self) -> LayerStructure:
        """What this layer computes, in the terms the native CPU stack checks."""
        attn, mlp = self.self_attn, self.mlp
        norms = {type(self.input_layernorm), type(self.post_attention_layernorm)}
        return LayerStructure(
            norm="rms" if norms == {RMSNorm} else "other",
            qk_norm=attn.q_norm is not None,
            attention_softcap=attn.softcap is not None,
            mlp="silu-gated" if type(mlp) is GatedMLP and mlp.is_silu else "other",
            post_norms=False,
            rope=self.rope,
            window=attn.window,
            scale=attn.scale,
        )


def window_meta(meta: AttentionMetadata, window: int | None,
                cache: dict[int | None, AttentionMetadata]) -> AttentionMetadata:
    """The step's metadata with this layer's sliding window, made once per step and window.

    The runner fills in the model-wide window; a model with per-layer windows (Gemma 3) asks here
    for a copy with its own decode plan (the plan bakes the window's mask in).
    """
    if window == meta.sliding_window:
        return meta
    if window not in cache:
        cache[window] = replace(meta, sliding_window=window, _decode_groups=None, _row_tables=meta._row_tables)
    return cache[window]
