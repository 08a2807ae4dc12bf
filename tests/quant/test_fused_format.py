"""Parts of one fused linear in different GGUF formats stack into one exact format."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from inferd.quant import Int4Weight, Int8Weight, from_gguf_blocks, kernels, linear_from_quantized
from inferd.quant.fused_format import as_int8, concat_exact
from tests.quant.reference import reference_and_bound
from tests.quant.test_gguf_blocks import random_blocks

MIXES = {
    "Q4_K+Q4_K+Q6_K": (Q.Q4_K, Q.Q4_K, Q.Q6_K),  # Llama Q4_K_M's q, k, v
    "Q5_0+Q5_0+Q8_0": (Q.Q5_0, Q.Q5_0, Q.Q8_0),  # Gemma 3 270M's q, k, v
    "Q4_0+Q5_1": (Q.Q4_0, Q.Q5_1),
    "Q3_K+Q6_K": (Q.Q3_K, Q.Q6_K),
}


def _parts(types: tuple[Q, ...], n: int = 32, k: int = 256) -> tuple[list, np.ndarray]:
    raws = [random_blocks(t, n, k, seed=i) for i, t in enumerate(types)]
    weights = [from_gguf_blocks(r, t, (n, k)) for r, t in zip(raws, types, strict=True)]
    expected = np.concatenate([gguf.quants.dequantize(r, t) for r, t in zip(raws, types, strict=True)])
    return weights, expected


@pytest.mark.parametrize("mix", list(MIXES))
def test_mixed_parts_stack_bit_exactly(mix: str) -> None:
    weights, expected = _parts(MIXES[mix])
    fused = concat_exact(weights)
    assert fused is not None and fused.shape == expected.shape
    assert np.array_equal(fused.dequantize().numpy().view(np.uint32), expected.view(np.uint32))
    assert fused.group_size == min(w.group_size for w in weights)
    assert fused.symmetric == all(w.symmetric for w in weights)


def test_same_formats_stay_as_they_are() -> None:
    weights, _ = _parts((Q.Q4_K, Q.Q4_K))
    fused = concat_exact(weights)
    assert isinstance(fused, Int4Weight) and fused.group_size == 32 and not fused.symmetric


def test_a_symmetric_part_takes_negative_zero_mins() -> None:
    """-0.0 adds nothing to any float, so a zero weight keeps its sign of zero."""
    q = torch.tensor([[0, -1]], dtype=torch.int8).repeat(1, 8)
    part = Int8Weight(q, torch.tensor([[-2.0]]), 16)
    widened = as_int8(part, 16, with_min=True)
    assert torch.equal(widened.dequantize().view(torch.int32), part.dequantize().view(torch.int32))


def test_groups_that_do_not_nest_do_not_stack() -> None:
    a = Int8Weight(torch.zeros(1, 96, dtype=torch.int8), torch.ones(1, 2), 48)
    b = Int8Weight(torch.zeros(1, 96, dtype=torch.int8), torch.ones(1, 3), 32)
    assert concat_exact([a, b]) is None


@pytest.mark.parametrize("mix", list(MIXES))
def test_stacked_modules_match_reference(mix: str) -> None:
    weights, _ = _parts(MIXES[mix])
    fused = concat_exact(weights)
    if isinstance(fused, Int4Weight) or not fused.symmetric:
        if problem := kernels.int4_shape_problem(fused.shape[0], fused.shape[1], fused.group_size,
                                                 torch.device("cpu")):
            pytest.skip(problem)
    module = linear_from_quantized(fused)
    x = torch.randn(3, fused.shape[1], generator=torch.Generator().manual_seed(0))
    ref, bound = reference_and_bound(x, fused)
    assert ((module(x).double() - ref).abs() <= bound).all()
