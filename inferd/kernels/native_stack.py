"""The model's decoder layers as one native call per CPU step (csrc/decoder_stack.cpp).

A decode step of a small model spends milliseconds in Python between kernels. When every
linear of every layer has a native kernel for the step's row count, the runner's model hands
the whole stack to one C++ op that calls the same kernels in the same order, so the result is
bitwise the Python path's (tested). It serves the layer structures `SERVED` lists (Llama's
pre-norm layer; qk-norm as in Qwen3; Gemma 3's (1 + w) norms, sandwich post-norms and tanh-gelu
MLP; per-layer sliding windows and rope tables), and each layer states its own with
`native_structure`: a layer outside `SERVED` (attention soft-capping, an MoE block, another
activation) keeps the Python layer loop, so a new architecture runs correctly before it runs
fast. Each linear module describes itself with `native_spec`; anything without one (or a
quantized KV cache, an unusual head layout) keeps the Python path too.
Decode steps of quantized models (at most `team_rows` rows) run on one thread team inside that
op (csrc/decode_team.cpp), bitwise alike; INFERD_DECODE_TEAM=0 turns that off.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from inferd.kernels import cpu_ops
from inferd.kernels.attention import NATIVE_HEAD_DIMS, AttentionMetadata
from inferd.kernels.native_kinds import LinearKind

if TYPE_CHECKING:
    from inferd.model.rope import RopeTables

# The linear kinds decoder_stack.cpp runs (one table for Python and C++: native_kinds.py).
PACKED, INT4, INT8, FP8, INT8_PLANES, INT8_TILES = (LinearKind.PACKED, LinearKind.INT4, LinearKind.INT8,
                                                    LinearKind.FP8, LinearKind.INT8_PLANES, LinearKind.INT8_TILES)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerStructure:
    """What one decoder layer computes, in the terms decoder_stack.cpp distinguishes.

    `rope` and `window` may differ from layer to layer (the C++ side takes each layer's); the
    other fields, `scale` included, must be the same in every layer.
    """

    norm: str  # "rms": Llama's RMSNorm (x̂ * w); "rms(1+w)": Gemma's (x̂ * (1 + w) in fp32)
    qk_norm: bool  # q and k normalised per head before rope
    attention_softcap: bool  # tanh soft-capping of attention scores
    mlp: str  # "silu-gated": down(silu(gate(x)) * up(x)); "gelu_pytorch_tanh-gated": the same with tanh-gelu
    post_norms: bool  # norms on the attention and MLP outputs too (Gemma's sandwich)
    rope: str  # which rope table the layer rotates with
    window: int | None  # sliding window (None: global attention)
    scale: float  # attention score scale


# What decoder_stack.cpp and decode_team.cpp compute, field by field (csrc/decoder_layers.h): a
# pre-norm layer with fused q/k/v (bias allowed), rotate-half rope and a gated MLP, optionally
# with qk-norm and Gemma's sandwich norms. Anything else (soft-capped attention, MoE or other
# MLPs, other norms) is refused.
SERVED: dict[str, frozenset] = {
    "norm": frozenset({"rms", "rms(1+w)"}),
    "qk_norm": frozenset({False, True}),
    "attention_softcap": frozenset({False}),
    "mlp": frozenset({"silu-gated", "gelu_pytorch_tanh-gated", "gelu_tanh-gated"}),
    "post_norms": frozenset({False, True}),
}
# decoder_layers.h's StructureBit flags.
QK_NORM, POST_NORMS, GELU_TANH = 1, 2, 4


def refusal(structures: list[LayerStructure | None]) -> str | None:
    """Why the native stack cannot run layers of these structures (None: it can)."""
    for i, s in enumerate(structures):
        if s is None:
            return f"layer {i} does not state its structure"
        wrong = {k: getattr(s, k) for k, served in SERVED.items() if getattr(s, k) not in served}
        if wrong:
            served = {k: sorted(v, key=str) for k, v in SERVED.items()}
            return f"layer {i} has {wrong}; the native stack serves {served}"
    for field in (*SERVED, "scale"):
        if len({getattr(s, field) for s in structures}) > 1:
            return f"layers differ in {field}; the native stack takes one for every layer"
    return None


def structure_bits(s: LayerStructure) -> int:
    """A served structure as decoder_stack's `structure` argument."""
    return ((QK_NORM if s.qk_norm else 0) | (POST_NORMS if s.post_norms else 0)
            | (GELU_TANH if s.mlp.startswith("gelu") else 0))


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
                 structure: int = 0, windows: list[int] | None = None, rope_names: tuple[str, ...] = ("global",),
                 layer_rope: list[int] | None = None):
        layers = len(layout) // 8
        self.weights, self.layout, self.max_rows, self.dtype = weights, layout, max_rows, dtype
        self.eps, self.scale, self.num_heads, self.head_dim = eps, scale, num_heads, head_dim
        self.structure = structure
        self.windows = windows if windows is not None else [0] * layers  # each layer's (0: none)
        self.rope_names = rope_names  # the rope tables the layers use, in decoder_stack's order
        self.layer_rope = layer_rope if layer_rope is not None else [0] * layers
        self._kv_source: list | None = None  # the runner's cache list, flattened once
        self._kv_flat: list[torch.Tensor] = []
        self.team_rows = _team_rows()

    @classmethod
    def build(cls, model: nn.Module, dtype: torch.dtype) -> NativeStack | None:
        """The stack for `model` (a decoder model on CPU), or None where some layer has a
        structure outside `SERVED` (logged once) or some part has no native kernel."""
        cfg = model.config
        layers = model.model.layers
        structures = [getattr(layer, "native_structure", lambda: None)() for layer in layers]
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
        structure = structure_bits(structures[0])
        weights: list[torch.Tensor | None] = []
        layout: list[int] = []
        max_rows = 1 << 30
        norms: list[nn.Module] = [model.model.norm]
        for layer in layers:
            attn, mlp = layer.self_attn, layer.mlp
            layer_norms = [*layer.native_norms(), attn.q_norm, attn.k_norm]
            norms += [n for n in layer_norms if n is not None]
            weights += [None if n is None else n.native_weight() for n in layer_norms]
            for module in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj):
                spec = _spec(module, dtype)
                if spec is None:
                    return None
                weights += [spec.a, spec.b, spec.bias]
                layout += [int(spec.kind), spec.group]
                max_rows = min(max_rows, spec.max_rows)
        weights.append(model.model.norm.native_weight())
        eps = model.model.norm.eps
        if any(n.eps != eps for n in norms):
            return None
        rope_names = tuple(dict.fromkeys(s.rope for s in structures))
        return cls(weights, layout, max_rows, dtype, eps, structures[0].scale, cfg.num_heads, cfg.head_dim,
                   structure, [s.window or 0 for s in structures], rope_names,
                   [rope_names.index(s.rope) for s in structures])

    def serves(self, x: torch.Tensor, kv_caches: list, meta: AttentionMetadata | None = None) -> bool:
        """Whether this step can run natively (each layer attends within its own window, as the
        Python loop's `window_meta` does, whatever the step's model-wide one)."""
        k0 = kv_caches[0][0]
        return (x.shape[0] <= self.max_rows and x.dtype == self.dtype
                and isinstance(k0, torch.Tensor) and k0.dtype == x.dtype)

    def uses_team(self, x: torch.Tensor) -> bool:
        """Whether a step with these rows runs on the thread team (decode_team.cpp)."""
        return bool(cpu_ops.ops().decode_team_serves(x, self.layout, self.team_rows))

    def __call__(self, x: torch.Tensor, ropes: dict[str, RopeTables], kv_caches: list,
                 meta: AttentionMetadata) -> torch.Tensor:
        tables, lens = meta.row_tables()
        if kv_caches is not self._kv_source:
            self._kv_source, self._kv_flat = kv_caches, [t for pair in kv_caches for t in pair]
        cos = [ropes[name].cos for name in self.rope_names]
        sin = [ropes[name].sin_signed for name in self.rope_names]
        return self.run(x, cos, sin, self._kv_flat, meta.slot_mapping, tables, lens, self.team_rows)

    def run(self, x: torch.Tensor, cos: list[torch.Tensor], sin_signed: list[torch.Tensor],
            kv_flat: list[torch.Tensor], slots: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor,
            team_rows: int, windows: list[int] | None = None) -> torch.Tensor:
        """decoder_stack on explicit step tensors (tests call it with their own; `windows`
        overrides the layers' own)."""
        return cpu_ops.ops().decoder_stack(
            x, self.weights, self.layout, self.structure, self.eps, self.scale, self.num_heads, self.head_dim,
            self.windows if windows is None else windows, cos, sin_signed, self.layer_rope, kv_flat, slots,
            tables, lens, team_rows)
