"""The model's decoder layers as one native call per CPU step (csrc/decoder_stack.cpp).

A decode step of a small model spends milliseconds in Python between kernels. When every
linear of every layer has a native kernel for the step's row count, the runner's model hands
the whole stack to one C++ op that calls the same kernels in the same order, so the result is
bitwise the Python path's (tested). It serves one layer structure, `SERVED_LAYER` (Llama's), and
each layer states its own with `native_structure`: a model whose layers differ in any way (qk-norm,
Gemma's norms, per-layer windows or rope tables, soft-capping, another MLP) keeps the Python layer
loop, so a new architecture runs correctly before it runs fast. Each linear module describes
itself with `native_spec`; anything without one (or a quantized KV cache, an unusual head layout)
keeps the Python path too.
Decode steps of quantized models (at most `team_rows` rows) run on one thread team inside that
op (csrc/decode_team.cpp), bitwise alike; INFERD_DECODE_TEAM=0 turns that off.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from inferd.kernels import cpu_ops
from inferd.kernels.attention import NATIVE_HEAD_DIMS, AttentionMetadata
from inferd.kernels.native_kinds import LinearKind

# The linear kinds decoder_stack.cpp runs (one table for Python and C++: native_kinds.py).
PACKED, INT4, INT8, FP8, INT8_PLANES, INT8_TILES = (LinearKind.PACKED, LinearKind.INT4, LinearKind.INT8,
                                                    LinearKind.FP8, LinearKind.INT8_PLANES, LinearKind.INT8_TILES)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerStructure:
    """What one decoder layer computes, in the terms decoder_stack.cpp distinguishes.

    `rope`, `window` and `scale` may take any value but must be the same in every layer (the C++
    side takes one rope table, one window and one scale for the whole stack).
    """

    norm: str  # "rms": Llama's RMSNorm (x̂ * w), before attention and before the MLP
    qk_norm: bool  # q and k normalised per head before rope
    attention_softcap: bool  # tanh soft-capping of attention scores
    mlp: str  # "silu-gated": down(silu(gate(x)) * up(x))
    post_norms: bool  # norms on the attention and MLP outputs too (Gemma's sandwich)
    rope: str  # which rope table the layer rotates with
    window: int | None  # sliding window (None: global attention)
    scale: float  # attention score scale


# The one structure decoder_stack.cpp and decode_team.cpp compute: a pre-norm Llama layer with
# fused q/k/v (bias allowed), rotate-half rope, no qk-norm, no soft-cap, a silu-gated MLP.
SERVED_LAYER = dict(norm="rms", qk_norm=False, attention_softcap=False, mlp="silu-gated", post_norms=False)


def refusal(structures: list[LayerStructure | None]) -> str | None:
    """Why the native stack cannot run layers of these structures (None: it can)."""
    for i, s in enumerate(structures):
        if s is None:
            return f"layer {i} does not state its structure"
        wrong = {k: getattr(s, k) for k, v in SERVED_LAYER.items() if getattr(s, k) != v}
        if wrong:
            return f"layer {i} has {wrong}; the native stack serves {SERVED_LAYER}"
    for field in ("rope", "window", "scale"):
        if len({getattr(s, field) for s in structures}) > 1:
            return f"layers differ in {field}; the native stack takes one for every layer"
    return None


@dataclass(frozen=True)
class NativeLinear:
    """How decoder_stack.cpp runs one linear: its kind, tensors, and the largest row count for
    which that is what the module's own forward would run."""

    kind: int
    a: torch.Tensor
    b: torch.Tensor | None = None
    bias: torch.Tensor | None = None  # already in the activation dtype
    group: int = 0
    max_rows: int = 1 << 30
    activation_dtype: torch.dtype | None = None  # None: any float dtype; else only this one


def _team_rows() -> int:
    """Most rows a step may have to run on the thread team: INFERD_DECODE_TEAM=0 (or off) turns
    the team off, a number sets the limit (the C++ side caps it at 8)."""
    value = os.environ.get("INFERD_DECODE_TEAM", "8").strip().lower()
    if value in ("0", "off", "false", "no"):
        return 0
    if not value.isdigit():
        raise ValueError(f"INFERD_DECODE_TEAM must be a row count or 0/off, not {value!r}")
    return int(value)


def _spec(module: nn.Module, dtype: torch.dtype) -> NativeLinear | None:
    spec_of = getattr(module, "native_spec", None)
    spec = spec_of() if spec_of is not None else None
    if spec is None or spec.activation_dtype not in (None, dtype):
        return None
    return spec


class NativeStack:
    """One model's layers as decoder_stack's arguments, built once (rebuild after swapping
    modules: the stack holds the tensors it was built from)."""

    def __init__(self, weights: list[torch.Tensor | None], layout: list[int], max_rows: int,
                 dtype: torch.dtype, eps: float, scale: float, num_heads: int, head_dim: int,
                 window: int | None = None):
        self.weights, self.layout, self.max_rows, self.dtype = weights, layout, max_rows, dtype
        self.eps, self.scale, self.num_heads, self.head_dim = eps, scale, num_heads, head_dim
        self.window = window  # every layer's sliding window; a step with another one is refused
        self._kv_source: list | None = None  # the runner's cache list, flattened once
        self._kv_flat: list[torch.Tensor] = []
        self.team_rows = _team_rows()

    @classmethod
    def build(cls, model: nn.Module, dtype: torch.dtype) -> NativeStack | None:
        """The stack for `model` (a decoder model on CPU), or None where some layer has another
        structure than `SERVED_LAYER` (logged once) or some part has no native kernel."""
        cfg = model.config
        structures = [getattr(layer, "native_structure", lambda: None)() for layer in model.model.layers]
        reason = refusal(structures)
        if reason is None and getattr(model, "native_stack_refusal", None):
            reason = model.native_stack_refusal
        if reason is not None:
            log.info("native CPU stack: not running %s (%s); its layers run in Python",
                     cfg.architecture, reason)
            return None
        if (dtype not in (torch.float32, torch.bfloat16) or not cpu_ops.available()
                or cfg.head_dim not in NATIVE_HEAD_DIMS or not 1 <= cfg.num_heads // cfg.num_kv_heads <= 8):
            return None
        weights: list[torch.Tensor | None] = []
        layout: list[int] = []
        max_rows = 1 << 30
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            weights += [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
            for module in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj):
                spec = _spec(module, dtype)
                if spec is None:
                    return None
                weights += [spec.a, spec.b, spec.bias]
                layout += [int(spec.kind), spec.group]
                max_rows = min(max_rows, spec.max_rows)
        weights.append(model.model.norm.weight)
        eps = model.model.norm.eps
        if any(m.eps != eps for layer in model.model.layers
               for m in (layer.input_layernorm, layer.post_attention_layernorm)):
            return None
        return cls(weights, layout, max_rows, dtype, eps, structures[0].scale, cfg.num_heads, cfg.head_dim,
                   structures[0].window)

    def serves(self, x: torch.Tensor, kv_caches: list, meta: AttentionMetadata | None = None) -> bool:
        """Whether this step can run natively (`meta`: its window must be the layers' own)."""
        k0 = kv_caches[0][0]
        return (x.shape[0] <= self.max_rows and x.dtype == self.dtype
                and isinstance(k0, torch.Tensor) and k0.dtype == x.dtype
                and (meta is None or meta.sliding_window == self.window))

    def uses_team(self, x: torch.Tensor) -> bool:
        """Whether a step with these rows runs on the thread team (decode_team.cpp)."""
        return bool(cpu_ops.ops().decode_team_serves(x, self.layout, self.team_rows))

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor, kv_caches: list,
                 meta: AttentionMetadata) -> torch.Tensor:
        tables, lens = meta.row_tables()
        if kv_caches is not self._kv_source:
            self._kv_source, self._kv_flat = kv_caches, [t for pair in kv_caches for t in pair]
        return cpu_ops.ops().decoder_stack(
            x, self.weights, self.layout, self.eps, self.scale, self.num_heads, self.head_dim,
            meta.sliding_window or 0, cos, sin_signed, self._kv_flat, meta.slot_mapping, tables, lens,
            self.team_rows)
