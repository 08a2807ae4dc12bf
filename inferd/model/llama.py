"""Our Llama-family decoder (Llama, SmolLM2, Mistral, Qwen2) over a flat, packed token batch.

The forward pass takes every scheduled token of every sequence as one [T] batch with per-token
positions, and reads/writes keys and values through the paged KV cache named in
`AttentionMetadata`. It knows nothing of requests or scheduling. Weights use HF parameter names,
with q/k/v and gate/up fused (`load_hf_state_dict` does the fusing).
"""

from __future__ import annotations

import torch
from torch import nn

from inferd.kernels import cpu_ops
from inferd.kernels.attention import AttentionMetadata, paged_attention, write_kv
from inferd.kernels.native_stack import NativeStack
from inferd.model.arch import ArchConfig
from inferd.model.rope import RopeTables, RotaryEmbedding, apply_rope

KVCaches = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (k_cache, v_cache)


class RMSNorm(nn.Module):
    """HF-exact RMSNorm: normalise in fp32, scale in the activation dtype."""

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


class Attention(nn.Module):
    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size, self.kv_size = cfg.q_size, cfg.kv_size
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.scale = self.head_dim ** -0.5

    def forward(self, rope: RopeTables, x: torch.Tensor, kv_cache: tuple[torch.Tensor, torch.Tensor],
                meta: AttentionMetadata, fused: bool = False) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        if fused and isinstance(kv_cache[0], torch.Tensor) and kv_cache[0].dtype == qkv.dtype:
            q = cpu_ops.ops().rope_write_kv(qkv, rope.cos, rope.sin_signed, kv_cache[0], kv_cache[1],
                                            meta.slot_mapping, self.num_heads)
            out = paged_attention(q, kv_cache[0], kv_cache[1], meta, self.scale)
            return self.o_proj(out.view(t, self.q_size))
        # q and k are rotated together: one set of elementwise ops instead of two.
        qk = apply_rope(qkv[:, :self.q_size + self.kv_size].view(t, self.num_heads + self.num_kv_heads,
                                                                  self.head_dim), rope)
        q, k = qk[:, :self.num_heads], qk[:, self.num_heads:]
        v = qkv[:, self.q_size + self.kv_size:].view(t, self.num_kv_heads, self.head_dim)
        write_kv(k, v, kv_cache[0], kv_cache[1], meta.slot_mapping)
        out = paged_attention(q, kv_cache[0], kv_cache[1], meta, self.scale)
        return self.o_proj(out.reshape(t, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.intermediate = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        if fused:
            return self.down_proj(cpu_ops.ops().silu_and_mul(self.gate_up_proj(x)))
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)
        return self.down_proj(nn.functional.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, rope: RopeTables, x: torch.Tensor, residual: torch.Tensor | None,
                kv_cache: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
                fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's MLP output, the residual stream before it), as vLLM's layers do, so each
        residual add happens inside the next norm; residual None means x is the embedding."""
        if residual is None:
            residual, x = x, self.input_layernorm(x, fused)
        else:
            x, residual = self.input_layernorm.add_forward(x, residual, fused)
        x = self.self_attn(rope, x, kv_cache, meta, fused)
        x, residual = self.post_attention_layernorm.add_forward(x, residual, fused)
        return self.mlp(x, fused), residual


class Backbone(nn.Module):
    """Embedding, decoder layers and final norm (HF's `model.*` submodule)."""

    def __init__(self, cfg: ArchConfig, max_positions: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.rotary = RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling,
                                      cfg.max_position_embeddings)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ArchConfig, max_positions: int | None = None):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg, max_positions or cfg.max_position_embeddings)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # Set by the runner once the layers are final (NativeStack.build): the decoder layers as
        # one native call on CPU, bitwise the same as the loop below.
        self.native_stack: NativeStack | None = None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: KVCaches,
                meta: AttentionMetadata) -> torch.Tensor:
        """Return final hidden states [T, hidden] for every token of the flat batch."""
        x = self.model.embed_tokens(input_ids)
        rope = self.model.rotary.tables(positions, x.dtype)  # once per step, shared by every layer
        fused = cpu_ops.usable(x)  # the fused CPU kernels, decided once per step
        if fused and self.native_stack is not None and self.native_stack.serves(x, kv_caches):
            return self.native_stack(x, rope.cos, rope.sin_signed, kv_caches, meta)
        residual = None
        for layer, kv in zip(self.model.layers, kv_caches, strict=True):
            x, residual = layer(rope, x, residual, kv, meta, fused)
        return self.model.norm.add_forward(x, residual, fused)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits in fp32 for the rows the sampler needs (usually one per sequence)."""
        return self.lm_head(hidden).float()

    @torch.no_grad()
    def load_hf_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy HF-named tensors in, fusing q/k/v and gate/up; every parameter must be provided."""
        own = dict(self.named_parameters())
        filled: set[str] = set()

        def put(name: str, value: torch.Tensor) -> None:
            param = own[name]
            if param.shape != value.shape:
                raise ValueError(f"tensor {name}: expected shape {tuple(param.shape)}, got {tuple(value.shape)}")
            param.copy_(value)
            filled.add(name)

        for i in range(self.config.num_layers):
            p = f"model.layers.{i}"
            for kind in ("weight", "bias"):
                parts = [tensors.pop(f"{p}.self_attn.{n}_proj.{kind}", None) for n in "qkv"]
                if all(t is not None for t in parts):
                    put(f"{p}.self_attn.qkv_proj.{kind}", torch.cat(parts, dim=0))
                parts = [tensors.pop(f"{p}.mlp.{n}_proj.{kind}", None) for n in ("gate", "up")]
                if all(t is not None for t in parts):
                    put(f"{p}.mlp.gate_up_proj.{kind}", torch.cat(parts, dim=0))
        for name, value in tensors.items():
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            if name in own:
                put(name, value)
        if self.config.tie_word_embeddings:
            filled.add("lm_head.weight")
        missing = sorted(set(own) - filled)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
