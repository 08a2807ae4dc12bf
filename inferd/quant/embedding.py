"""A quantized `nn.Embedding`: rows are looked up in a format from `formats.py`, then widened.

A lookup touches only the requested rows, so no kernel is needed: gather the codes of those
rows and dequantize them. Used by `quantize_model(..., quantize_embeddings=True)`; when the
output head is tied to the embedding, both read the same quantized values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inferd.quant.formats import Fp8Weight, Int4Weight, Int8Weight, QuantizedWeight, unpack_int4
from inferd.quant.kernels import Int8Tiles, int8_tiles_rows


class QuantizedEmbedding(nn.Module):
    """Embedding table held as INT8 (per row), INT4 (group-wise) or FP8 (per row), or in a tied
    int8 head's own tile layout (`Int8Tiles`, group-wise)."""

    def __init__(self, weight: QuantizedWeight | Int8Tiles, *, out_dtype: torch.dtype = torch.float32,
                 padding_idx: int | None = None, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.out_dtype = out_dtype
        self.padding_idx = padding_idx
        self.kind = type(weight).__name__
        if isinstance(weight, Int8Tiles):  # the head's buffers as they are: one copy
            self.num_embeddings, self.embedding_dim = weight.codes.shape[0] * 16, weight.codes.shape[1] * 4
            self.group_size = weight.group
            self.register_buffer("qweight", weight.codes)
            self.register_buffer("scale", weight.scales)
            self.register_buffer("min", None)
            return
        self.num_embeddings, self.embedding_dim = weight.shape
        self.group_size = getattr(weight, "group_size", self.embedding_dim)
        if isinstance(weight, Int8Weight) and not weight.per_channel:
            raise ValueError("QuantizedEmbedding takes per-row int8 scales only")
        codes = weight.packed if isinstance(weight, Int4Weight) else weight.qweight
        # Tensors already on `device` are kept as they are: a tied lm_head passes its own buffers.
        self.register_buffer("qweight", codes.to(device))
        self.register_buffer("scale", weight.scale.reshape(self.num_embeddings, -1).to(device))
        low = weight.min if isinstance(weight, Int4Weight) else None
        self.register_buffer("min", None if low is None else low.to(device))

    @property
    def weight_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        if self.kind == "Int8Tiles":
            rows = int8_tiles_rows(Int8Tiles(self.qweight, self.scale, self.group_size), flat)
            return rows.reshape(*ids.shape, self.embedding_dim).to(self.out_dtype)
        scale = F.embedding(flat, self.scale).float()
        if self.kind == "Int4Weight":
            q = unpack_int4(F.embedding(flat, self.qweight)).float()
            q = q.view(flat.numel(), -1, self.group_size)
            if self.min is None:
                rows = (q - 8) * scale[..., None]
            else:
                rows = q * scale[..., None] + F.embedding(flat, self.min).float()[..., None]
        else:
            # F.embedding only gathers float tables; int8 / fp8 rows are gathered by indexing.
            rows = self.qweight[flat].float() * scale
        return rows.reshape(*ids.shape, self.embedding_dim).to(self.out_dtype)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, format={self.kind}, "
                f"group_size={self.group_size}, out_dtype={self.out_dtype}")


def embedding_from_quantized(weight: Int8Weight | Int4Weight | Fp8Weight | Int8Tiles,
                             like: nn.Embedding) -> QuantizedEmbedding:
    """Replace `like` (same device, output dtype and padding index)."""
    return QuantizedEmbedding(weight, out_dtype=like.weight.dtype, padding_idx=like.padding_idx,
                              device=like.weight.device)
