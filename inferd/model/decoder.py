"""DecoderForCausalLM: what every architecture shares around its layers.

Embedding, rope tables, the layer loop over a flat packed batch (or the native CPU stack where it
serves the layers), final norm, output head, and loading HF-named weights (fusing q/k/v and
gate/up). An architecture file subclasses it, builds its layers from `layers.py`, and declares
its GGUF tensor names. The model knows nothing of requests or scheduling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from inferd.kernels import cpu_ops
from inferd.kernels.attention import AttentionMetadata
from inferd.kernels.native_stack import NativeStack
from inferd.model.arch import ArchConfig
from inferd.model.layers import RMSNorm, window_meta
from inferd.model.rope import RotaryEmbedding

KVCaches = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (k_cache, v_cache)

# GGUF tensor names outside the layers (the same for every architecture llama.cpp writes).
GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


class Backbone(nn.Module):
    """Embedding, decoder layers, final norm and rope tables (HF's `model.*` submodule)."""

    def __init__(self, cfg: ArchConfig, layers: list[nn.Module], norm: RMSNorm,
                 rotaries: dict[str, RotaryEmbedding]):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.rotaries = nn.ModuleDict(rotaries)


class DecoderForCausalLM(nn.Module):
    """A decoder-only LM; subclasses provide `build_layers` and their GGUF tensor-name map."""

    # GGUF layer tensor suffix (after `blk.N.`) -> HF name suffix (after `model.layers.N.`).
    gguf_layer_names: ClassVar[dict[str, str]] = {}
    # llama.cpp permutes q/k rows for its interleaved rope in Llama/Mistral files only.
    gguf_permuted_qk: ClassVar[bool] = False
    # Added to `*norm.weight` tensors read from GGUF (llama.cpp stores Gemma's norms as 1 + w).
    gguf_norm_shift: ClassVar[float] = 0.0
    # The chat template to use when a file carries none (as llama.cpp does per architecture).
    default_chat_template: ClassVar[str | None] = None
    # Tokens that end a turn besides the file's EOS (found by text in the vocabulary).
    stop_tokens: ClassVar[tuple[str, ...]] = ()
    # Multiplier of the token embeddings (Gemma: sqrt(hidden)); None for none.
    embed_scale: float | None = None

    @classmethod
    def adapt_gguf_config(cls, cfg: ArchConfig, get: Callable[..., Any]) -> ArchConfig:
        """Complete a config read from GGUF metadata with what llama.cpp hard-codes for this
        architecture instead of storing it; `get(key, default)` reads the file's metadata."""
        return cfg

    def __init__(self, cfg: ArchConfig, max_positions: int | None = None):
        super().__init__()
        self.config = cfg
        max_positions = max_positions or cfg.max_position_embeddings
        self.model = Backbone(cfg, self.build_layers(cfg), self.final_norm(cfg),
                              self.build_rotaries(cfg, max_positions))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # Set by the runner once the layers are final (NativeStack.build, which refuses layers of
        # another structure than it computes): the decoder layers as one native call on CPU.
        self.native_stack: NativeStack | None = None

    def build_layers(self, cfg: ArchConfig) -> list[nn.Module]:
        raise NotImplementedError

    def final_norm(self, cfg: ArchConfig) -> RMSNorm:
        return RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def build_rotaries(self, cfg: ArchConfig, max_positions: int) -> dict[str, RotaryEmbedding]:
        """Rope tables by name (a layer's `rope` attribute picks one); one global table here."""
        return {"global": RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling,
                                          cfg.max_position_embeddings)}

    @property
    def native_stack_refusal(self) -> str | None:
        """Why the native stack cannot run this model around its layers (None: it can)."""
        if type(self.model.norm) is not RMSNorm:
            return "its final norm is not Llama's RMSNorm"
        if len(self.model.rotaries) != 1:
            return "it has more than one rope table"
        return None

    def build_tables(self, device: torch.device | str | None = None) -> None:
        """(Re)compute every rope table in fp32 (after building on the meta device or casting)."""
        for rotary in self.model.rotaries.values():
            rotary.build_tables(device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: KVCaches,
                meta: AttentionMetadata) -> torch.Tensor:
        """Return final hidden states [T, hidden] for every token of the flat batch."""
        x = self.model.embed_tokens(input_ids)
        if self.embed_scale is not None:  # fp32, then the activation dtype, as HF rounds it
            x = x * torch.tensor(self.embed_scale, dtype=torch.float32).to(x.dtype)
        # Once per step, shared by every layer.
        ropes = {name: r.tables(positions, x.dtype) for name, r in self.model.rotaries.items()}
        fused = cpu_ops.usable(x)  # the fused CPU kernels, decided once per step
        if fused and self.native_stack is not None and self.native_stack.serves(x, kv_caches, meta):
            rope = ropes["global"]
            return self.native_stack(x, rope.cos, rope.sin_signed, kv_caches, meta)
        residual = None
        metas: dict[int | None, AttentionMetadata] = {}
        for layer, kv in zip(self.model.layers, kv_caches, strict=True):
            layer_meta = window_meta(meta, layer.self_attn.window, metas)
            x, residual = layer(ropes[layer.rope], x, residual, kv, layer_meta, fused)
        return self.model.norm.add_forward(x, residual, fused)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits in fp32 for the rows the sampler needs (usually one per sequence)."""
        logits = self.lm_head(hidden).float()
        cap = self.config.final_logit_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

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
