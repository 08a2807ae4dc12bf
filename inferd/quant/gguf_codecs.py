"""Byte decoders for GGUF's block formats: raw blocks -> inferd's Int8Weight / Int4Weight, exactly.

One function per GGUF type, each taking the blocks of a [N, K] weight as uint8 [N, K // block,
type_size] (`gguf_blocks.py` checks sizes) and returning a format whose `dequantize()` equals
`gguf.quants.dequantize` bit for bit: codes are small integers, and every scale or min is the
same float32 product gguf forms (an fp16 value times a <= 8-bit integer: exact in float32).
Which decoder serves which type is the format table's business (`registry.py`).
"""

from __future__ import annotations

import numpy as np
import torch

from inferd.quant.formats import Int4Weight, Int8Weight, pack_int4


def _f16(blocks: np.ndarray, offset: int) -> torch.Tensor:
    """The fp16 field at byte `offset` of every block, as float32 [N, B] (exact)."""
    field = np.ascontiguousarray(blocks[..., offset:offset + 2]).view(np.float16)[..., 0]
    return torch.from_numpy(field.astype(np.float32))


def _halves_to_columns(qs: np.ndarray) -> np.ndarray:
    """GGUF nibble order within a run of bytes: all low nibbles first, then all high nibbles.

    qs: uint8 [..., R, L] (R runs of L bytes) -> codes uint8 [..., R * 2L] in column order.
    """
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    return np.ascontiguousarray(codes).reshape(*qs.shape[:-2], -1)


def _bit_planes(bits: np.ndarray, planes: int, width: int) -> np.ndarray:
    """Fields of `width` bits: uint8 [..., L] -> [..., planes, L], plane p = (b >> width p) & mask.

    K-quants keep high bits so: value j of sub-block p takes bit(s) p of byte j.
    """
    shifts = (np.arange(planes, dtype=np.uint8) * width).reshape(planes, 1)
    return (bits[..., None, :] >> shifts) & np.uint8((1 << width) - 1)


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 scale bytes of a Q4_K/Q5_K super-block -> (sc, m), each uint8 [..., 8] in [0, 63].

    Bytes 0-3 hold sc[0:4] (low 6 bits) and the top 2 bits of sc[4:8]; bytes 4-7 the same for m;
    bytes 8-11 hold the low 4 bits of sc[4:8] (low nibble) and of m[4:8] (high nibble).
    """
    a, b, c = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = np.concatenate([a & 0x3F, (c & 0x0F) | ((a >> 2) & 0x30)], axis=-1)
    m = np.concatenate([b & 0x3F, (c >> 4) | ((b >> 2) & 0x30)], axis=-1)
    return sc, m


def _times(d: torch.Tensor, small: np.ndarray) -> torch.Tensor:
    """d [N, B, 1] * small integers [N, B, S] in float32, flattened to [N, B * S] (exact)."""
    n = d.shape[0]
    return (d * torch.from_numpy(small.astype(np.float32))).reshape(n, -1)


def _int8(codes: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(codes).astype(np.int8).reshape(codes.shape[0], -1))


def _int4(codes: np.ndarray) -> torch.Tensor:
    return pack_int4(torch.from_numpy(np.ascontiguousarray(codes).reshape(codes.shape[0], -1)))


def q8_0(blocks: np.ndarray) -> Int8Weight:
    """34 bytes per 32 values: fp16 d, 32 int8 q. w = q d."""
    return Int8Weight(_int8(blocks[..., 2:].view(np.int8)), _f16(blocks, 0), group_size=32)


def q4_0(blocks: np.ndarray) -> Int4Weight:
    """18 bytes per 32 values: fp16 d, 16 bytes of nibbles. w = (q - 8) d."""
    return Int4Weight(_int4(_halves_to_columns(blocks[..., None, 2:])), _f16(blocks, 0), None, group_size=32)


def q4_1(blocks: np.ndarray) -> Int4Weight:
    """20 bytes per 32 values: fp16 d and m, 16 bytes of nibbles. w = q d + m."""
    codes = _halves_to_columns(blocks[..., None, 4:])
    return Int4Weight(_int4(codes), _f16(blocks, 0), _f16(blocks, 2), group_size=32)


def _five_bits(blocks: np.ndarray, offset: int) -> np.ndarray:
    """Q5_0/Q5_1 codes in [0, 31]: a little-endian uint32 of high bits at `offset`, then 16
    bytes of low nibbles (values 0-15 low, 16-31 high)."""
    low = _halves_to_columns(blocks[..., None, offset + 4:])
    qh = np.ascontiguousarray(blocks[..., offset:offset + 4]).view(np.uint32)
    high = (qh >> np.arange(32, dtype=np.uint32)) & np.uint32(1)
    return low | (high.astype(np.uint8) << 4)


def q5_0(blocks: np.ndarray) -> Int8Weight:
    """22 bytes per 32 values: fp16 d, 32 high bits, 16 bytes of nibbles. w = (q - 16) d."""
    codes = _five_bits(blocks, 2).astype(np.int8) - np.int8(16)
    return Int8Weight(_int8(codes), _f16(blocks, 0), group_size=32)


def q5_1(blocks: np.ndarray) -> Int8Weight:
    """24 bytes per 32 values: fp16 d and m, 32 high bits, 16 bytes of nibbles. w = q d + m."""
    return Int8Weight(_int8(_five_bits(blocks, 4)), _f16(blocks, 0), group_size=32, min=_f16(blocks, 2))


def q4_k(blocks: np.ndarray) -> Int4Weight:
    """144 bytes per 256 values: fp16 d and dmin, 12 bytes of 6-bit (sc, m) per 32 values, then
    4 runs of 32 bytes (each 64 values: 32 low nibbles, 32 high). w = q (d sc) - dmin m."""
    n, nb = blocks.shape[:2]
    d, dmin = _f16(blocks, 0)[..., None], _f16(blocks, 2)[..., None]
    sc, m = _k_scales(blocks[..., 4:16])
    codes = _halves_to_columns(blocks[..., 16:].reshape(n, nb, 4, 32))
    return Int4Weight(_int4(codes), _times(d, sc), -_times(dmin, m), group_size=32)


def q5_k(blocks: np.ndarray) -> Int8Weight:
    """176 bytes per 256 values: Q4_K's header, 32 bytes of high bits (bit p of byte j: value j
    of sub-block p), 4 runs of 32 nibble bytes. w = q (d sc) - dmin m, q in [0, 31]."""
    n, nb = blocks.shape[:2]
    d, dmin = _f16(blocks, 0)[..., None], _f16(blocks, 2)[..., None]
    sc, m = _k_scales(blocks[..., 4:16])
    low = _halves_to_columns(blocks[..., 48:].reshape(n, nb, 4, 32)).reshape(n, nb, 8, 32)
    high = _bit_planes(blocks[..., 16:48], 8, 1)
    return Int8Weight(_int8(low | (high << 4)), _times(d, sc), group_size=32, min=-_times(dmin, m))


def q6_k(blocks: np.ndarray) -> Int8Weight:
    """210 bytes per 256 values: 128 bytes of low nibbles (2 halves of 64 bytes: 2 runs of 32
    values each), 64 bytes of 2-bit highs (2 halves of 32 bytes, 4 fields each), 16 int8 scales,
    fp16 d. w = (q - 32) (d sc), one scale per 16 values."""
    n, nb = blocks.shape[:2]
    low = _bit_planes(blocks[..., :128].reshape(n, nb, 2, 64), 2, 4).reshape(n, nb, 8, 32)
    high = _bit_planes(blocks[..., 128:192].reshape(n, nb, 2, 32), 4, 2).reshape(n, nb, 8, 32)
    codes = (low | (high << 4)).astype(np.int8) - np.int8(32)
    sc = np.ascontiguousarray(blocks[..., 192:208]).view(np.int8)
    return Int8Weight(_int8(codes), _times(_f16(blocks, 208)[..., None], sc), group_size=16)


def q3_k(blocks: np.ndarray) -> Int4Weight:
    """110 bytes per 256 values: 32 bytes of high-bit masks, 64 bytes of 2-bit lows, 12 bytes of
    6-bit scales, fp16 d. w = (q - 4 [high bit clear]) (d (sc - 32)): codes in [-4, 3], held as
    symmetric int4 (code + 8), one scale per 16 values."""
    n, nb = blocks.shape[:2]
    low = _bit_planes(blocks[..., 32:96].reshape(n, nb, 2, 32), 4, 2).reshape(n, nb, 16, 16)
    high = _bit_planes(blocks[..., :32], 8, 1).reshape(n, nb, 16, 16)
    codes = low.astype(np.int8) - ((high ^ 1) << 2).astype(np.int8) + np.int8(8)
    packed = blocks[..., 96:108]
    low_sc = _bit_planes(packed[..., 0:8], 2, 4).reshape(n, nb, 16)
    high_sc = _bit_planes(packed[..., 8:12], 4, 2).reshape(n, nb, 16)
    sc = (low_sc | (high_sc << 4)).astype(np.int8) - np.int8(32)
    return Int4Weight(_int4(codes.astype(np.uint8)), _times(_f16(blocks, 108)[..., None], sc), None, group_size=16)


def q2_k(blocks: np.ndarray) -> Int4Weight:
    """84 bytes per 256 values: 16 bytes of 4-bit (sc, m) pairs, 64 bytes of 2-bit codes, fp16 d
    and dmin. w = q (d sc) - dmin m, codes in [0, 3], one (scale, min) per 16 values."""
    n, nb = blocks.shape[:2]
    codes = _bit_planes(blocks[..., 16:80].reshape(n, nb, 2, 32), 4, 2).reshape(n, nb, 16, 16)
    sc = blocks[..., 0:16]
    d, dmin = _f16(blocks, 80)[..., None], _f16(blocks, 82)[..., None]
    return Int4Weight(_int4(codes), _times(d, sc & 0x0F), -_times(dmin, sc >> 4), group_size=16)
