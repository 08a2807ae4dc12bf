"""The loader's dequantization of GGUF tensors (gguf_loader.py) against gguf's own: the Q8_0 fast
path and the row-chunked path must give gguf's float32 values bit for bit, and rounding straight
to bf16 must give what casting those values gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

from inferd.model import gguf_loader
from inferd.model.gguf_reader import GGUFTensor

ROWS = gguf_loader._CHUNK_ROWS + 77  # more than one chunk, the last one short


def _blocks(qtype: Q, rows: int, k: int, block: int, size: int, seed: int = 0) -> np.ndarray:
    """Random blocks whose leading fp16 scale is finite (the rest random bytes)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, k // block, size), dtype=np.uint8)
    scales = rng.uniform(-0.05, 0.05, (rows, k // block)).astype(np.float16)
    raw[..., :2] = scales.view(np.uint8).reshape(rows, k // block, 2)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("qtype,block,size", [(Q.Q8_0, 32, 34), (Q.Q4_0, 32, 18), (Q.Q5_0, 32, 22)])
def test_chunked_dequantization_is_gguf_bit_for_bit(qtype, block, size):
    k = 64
    raw = _blocks(qtype, ROWS, k, block, size)
    tensor = GGUFTensor("blk.0.ffn_up.weight", (ROWS, k), int(qtype), raw)
    expected = torch.from_numpy(dequantize(raw, qtype)).view(ROWS, k)
    assert torch.equal(gguf_loader._dequantize(tensor, qtype, torch.float32, 0.0), expected)
    assert torch.equal(gguf_loader._dequantize(tensor, qtype, torch.bfloat16, 0.0), expected.bfloat16())
    shifted = gguf_loader._dequantize(tensor, qtype, torch.float32, -1.0)
    assert torch.equal(shifted, expected + np.float32(-1.0))
