"""Lossless conversion of GGUF quantized blocks into inferd's formats (`formats.py`).

Input is what `gguf.GGUFReader` gives as `tensor.data`: raw block bytes, uint8 [rows, bytes_per_row].
The result dequantizes bit-for-bit to `gguf.quants.dequantize(raw, qtype)`:
  Q8_0 -> Int8Weight, group 32        (w = q * d)
  Q4_0 -> Int4Weight symmetric, g32   (w = (q - 8) * d)
  Q4_1 -> Int4Weight asymmetric, g32  (w = q * d + m)
  Q4_K -> Int4Weight asymmetric, g32  (w = q * (d * sc) - dmin * m, 6-bit sc/m per 32 values)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from inferd.quant.formats import Int4Weight, Int8Weight, pack_int4

SUPPORTED_GGUF_TYPES = (
    GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_1,
    GGMLQuantizationType.Q4_K,
)


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


def _f16(blocks: np.ndarray, offset: int) -> torch.Tensor:
    """The fp16 field at byte `offset` of every block, as float32 [N, B] (exact)."""
    field = np.ascontiguousarray(blocks[..., offset:offset + 2]).view(np.float16)[..., 0]
    return torch.from_numpy(field.astype(np.float32))


def _halves_to_columns(qs: np.ndarray) -> torch.Tensor:
    """GGUF nibble order within a run of bytes: all low nibbles first, then all high nibbles.

    qs: uint8 [..., R, L] (R runs of L bytes) -> codes uint8 [..., R * 2L] in column order.
    """
    low, high = qs & 0x0F, qs >> 4
    codes = np.concatenate([low, high], axis=-1)
    return torch.from_numpy(np.ascontiguousarray(codes).reshape(*qs.shape[:-2], -1))


def _q8_0(blocks: np.ndarray) -> Int8Weight:
    n = blocks.shape[0]
    d = _f16(blocks, 0)
    q = torch.from_numpy(np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(n, -1))
    return Int8Weight(q, d, group_size=32)


def _q4_0(blocks: np.ndarray) -> Int4Weight:
    n = blocks.shape[0]
    codes = _halves_to_columns(blocks[..., None, 2:]).reshape(n, -1)
    return Int4Weight(pack_int4(codes), _f16(blocks, 0), None, group_size=32)


def _q4_1(blocks: np.ndarray) -> Int4Weight:
    n = blocks.shape[0]
    codes = _halves_to_columns(blocks[..., None, 4:]).reshape(n, -1)
    return Int4Weight(pack_int4(codes), _f16(blocks, 0), _f16(blocks, 2), group_size=32)


def _q4_k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 scale bytes of a Q4_K super-block -> (sc, m), each uint8 [..., 8] in [0, 63].

    Bytes 0-3 hold sc[0:4] (low 6 bits) and the top 2 bits of sc[4:8]; bytes 4-7 the same for m;
    bytes 8-11 hold the low 4 bits of sc[4:8] (low nibble) and of m[4:8] (high nibble).
    """
    a, b, c = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = np.concatenate([a & 0x3F, (c & 0x0F) | ((a >> 2) & 0x30)], axis=-1)
    m = np.concatenate([b & 0x3F, (c >> 4) | ((b >> 2) & 0x30)], axis=-1)
    return sc, m


def _q4_k(blocks: np.ndarray) -> Int4Weight:
    n, nb = blocks.shape[:2]
    d, dmin = _f16(blocks, 0)[..., None], _f16(blocks, 2)[..., None]
    sc, m = _q4_k_scales(blocks[..., 4:16])
    # Same float32 products as gguf (d * sc, dmin * m): exact, 11-bit x 6-bit mantissas.
    scale = (d * torch.from_numpy(sc.astype(np.float32))).reshape(n, nb * 8)
    low = -(dmin * torch.from_numpy(m.astype(np.float32))).reshape(n, nb * 8)
    # 128 bytes of codes: 4 runs of 32 bytes, each run = 64 values (32 low nibbles, then 32 high).
    codes = _halves_to_columns(blocks[..., 16:].reshape(n, nb, 4, 32)).reshape(n, -1)
    return Int4Weight(pack_int4(codes), scale, low, group_size=32)


_CONVERTERS = {
    GGMLQuantizationType.Q8_0: _q8_0,
    GGMLQuantizationType.Q4_0: _q4_0,
    GGMLQuantizationType.Q4_1: _q4_1,
    GGMLQuantizationType.Q4_K: _q4_k,
}


def from_gguf_blocks(raw: np.ndarray, qtype: GGMLQuantizationType | int,
                     shape: Sequence[int]) -> Int8Weight | Int4Weight:
    """Convert raw GGUF blocks of a [out_features, in_features] weight, losslessly.

    `shape` is in torch order (GGUF lists dimensions the other way round: ne[0] is in_features).
    Other GGUF types raise ValueError; dequantize those with `gguf.quants.dequantize` instead.
    """
    qtype = GGMLQuantizationType(qtype)
    convert = _CONVERTERS.get(qtype)
    if convert is None:
        names = ", ".join(t.name for t in SUPPORTED_GGUF_TYPES)
        raise ValueError(f"GGUF type {qtype.name} has no lossless inferd format; supported: {names}")
    return convert(_blocks(raw, qtype, shape))
