"""Rotary position embeddings, including the rope_scaling variants Llama-family configs use.

Computes the inverse frequencies the way HF transformers does (default, linear, llama3, yarn),
so that positions map to exactly the same angles as the reference.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _yarn_inv_freq(base: float, dim: int, sc: dict[str, Any], max_pos: int) -> tuple[torch.Tensor, float]:
    factor = float(sc["factor"])
    original = int(sc.get("original_max_position_embeddings") or max_pos)
    beta_fast = float(sc.get("beta_fast") or 32)
    beta_slow = float(sc.get("beta_slow") or 1)
    mscale = sc.get("attention_factor")
    if mscale is None:
        mscale = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

    def correction_dim(num_rot: float) -> float:
        return (dim * math.log(original / (num_rot * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
    inv_extra = 1.0 / pos_freqs
    inv_inter = 1.0 / (factor * pos_freqs)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extra_factor = 1 - ramp
    inv = inv_inter * (1 - extra_factor) + inv_extra * extra_factor
    return inv, float(mscale)


def rope_inv_freq(
    head_dim: int, base: float, scaling: dict[str, Any] | None, max_pos: int
) -> tuple[torch.Tensor, float]:
    """Return (inv_freq [head_dim/2], attention_scaling) for the configured rope type."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if not scaling:
        return inv, 1.0
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return inv / float(scaling["factor"]), 1.0
    if kind == "llama3":
        factor = float(scaling["factor"])
        low_ff = float(scaling.get("low_freq_factor", 1.0))
        high_ff = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = int(scaling["original_max_position_embeddings"])
        low_wl, high_wl = old_ctx / low_ff, old_ctx / high_ff
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old_ctx / wavelen - low_ff) / (high_ff - low_ff)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        return _yarn_inv_freq(base, head_dim, scaling, max_pos)
    raise ValueError(f"unsupported rope_scaling type {kind!r}; inferd supports {SUPPORTED_ROPE_TYPES}")


class RotaryEmbedding(torch.nn.Module):
    """Precomputed cos/sin tables indexed by absolute position (HF's rotate-half layout)."""

    def __init__(self, head_dim: int, max_positions: int, base: float, scaling: dict | None,
                 orig_max_pos: int):
        super().__init__()
        self._params = (head_dim, max_positions, base, scaling, orig_max_pos)
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin_signed", torch.empty(0), persistent=False)
        if self.cos.device.type != "meta":  # on meta, torch's decompositions take seconds: the loader builds later
            self.build_tables()

    def build_tables(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the fp32 tables, e.g. after the model was built on the meta device or cast
        to a half dtype: they stay fp32 and are cast per call, as HF does."""
        head_dim, max_positions, base, scaling, orig_max_pos = self._params
        inv_freq, attn_scale = rope_inv_freq(head_dim, base, scaling, orig_max_pos)
        freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        # rotate_half(x) * sin == swap_halves(x) * sin_signed, the first half of sin negated;
        # negation is exact, so results are bitwise those of HF's formulation.
        sign = torch.cat((-torch.ones(head_dim // 2), torch.ones(head_dim // 2)))
        self.cos = (emb.cos() * attn_scale).to(device)
        self.sin_signed = (emb.sin() * attn_scale * sign).to(device)

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> RopeTables:
        """cos and sign-folded sin rows for these positions, [T, 1, D] in the activation dtype."""
        return RopeTables(self.cos[positions].to(dtype).unsqueeze(1),
                          self.sin_signed[positions].to(dtype).unsqueeze(1))


class RopeTables(NamedTuple):
    cos: torch.Tensor  # [T, 1, D]
    sin_signed: torch.Tensor  # [T, 1, D], first half negated


def apply_rope(x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
    """Rotate x [T, H, D] (HF's rotate-half layout) by the tables' angles."""
    t, heads, dim = x.shape
    swapped = x.reshape(t, heads, 2, dim // 2).flip(2).reshape(t, heads, dim)
    return x * rope.cos + swapped * rope.sin_signed
