"""Lossless conversion of GGUF quantized blocks into inferd's formats (`formats.py`).

Input is what `gguf.GGUFReader` gives as `tensor.data`: raw block bytes, uint8 [rows, bytes_per_row].
The result dequantizes bit-for-bit to `gguf.quants.dequantize(raw, qtype)`. Which types convert,
and into what, is the format table's (`registry.GGUF_BLOCK_FORMATS`); the byte decoders live in
`gguf_codecs.py`. This module checks the input and dispatches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from inferd.quant.formats import Int4Weight, Int8Weight
from inferd.quant.registry import SUPPORTED_GGUF_TYPES, gguf_block_format

__all__ = ["SUPPORTED_GGUF_TYPES", "from_gguf_blocks", "from_gguf_expert_blocks"]


def _blocks(raw: np.ndarray, qtype: GGMLQuantizationType, shape: Sequence[int]) -> np.ndarray:
    """Check sizes and return the blocks as uint8 [N, K // block_size, type_size]."""
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D (out_features, in_features) shape, got {tuple(shape)}")
    n, k = (int(s) for s in shape)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if k % block_size:
        raise ValueError(f"{qtype.name}: in_features {k} is not a multiple of {block_size}")
    if raw.ndim == 2 and raw.shape[0] != n:
        # A swapped (GGUF-order) shape can hold the same byte count; the row count tells.
        raise ValueError(f"{qtype.name}: raw blocks have {raw.shape[0]} rows but shape {tuple(shape)} "
                         f"has {n}; pass shape as (out_features, in_features)")
    raw = np.ascontiguousarray(raw).view(np.uint8)
    expected = n * (k // block_size) * type_size
    if raw.size != expected:
        raise ValueError(
            f"{qtype.name}: {raw.size} bytes do not hold a {n}x{k} tensor ({expected} bytes expected)"
        )
    return raw.reshape(n, k // block_size, type_size)


def from_gguf_blocks(raw: np.ndarray, qtype: GGMLQuantizationType | int,
                     shape: Sequence[int]) -> Int8Weight | Int4Weight:
    """Convert raw GGUF blocks of a [out_features, in_features] weight, losslessly.

    `shape` is in torch order (GGUF lists dimensions the other way round: ne[0] is in_features).
    Other GGUF types raise ValueError; dequantize those with `gguf.quants.dequantize` instead.
    """
    qtype = GGMLQuantizationType(qtype)
    entry = gguf_block_format(qtype)
    if entry is None:
        names = ", ".join(t.name for t in SUPPORTED_GGUF_TYPES)
        raise ValueError(f"GGUF type {qtype.name} has no lossless inferd format; supported: {names}")
    return entry.decode(_blocks(raw, qtype, shape))


def from_gguf_expert_blocks(raw: np.ndarray, qtype: GGMLQuantizationType | int, shape: Sequence[int],
                            expert: int) -> Int8Weight | Int4Weight:
    """Convert one expert of a 3-D GGUF expert stack (`ffn_{gate,up,down}_exps`, torch-order
    `shape` [experts, out_features, in_features]), losslessly.

    Quantization blocks run along a row and never span rows, so expert e's weight is exactly the
    rows e * out .. (e + 1) * out of the stack: a view of the file, no re-quantization.
    """
    if len(shape) != 3:
        raise ValueError(f"expected a 3-D (experts, out_features, in_features) shape, got {tuple(shape)}")
    experts, n, k = (int(s) for s in shape)
    if not 0 <= expert < experts:
        raise ValueError(f"expert {expert} out of range for {experts} experts")
    rows = np.ascontiguousarray(raw).view(np.uint8).reshape(experts * n, -1)
    return from_gguf_blocks(rows[expert * n:(expert + 1) * n], qtype, (n, k))
