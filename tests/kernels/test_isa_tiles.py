"""The tile kernels of every ISA level this CPU runs against the generic level's scalar
reference (csrc/tiles_scalar.h): the group sums are exact integers and every level quantizes x
alike and shares the float epilogue, so the results must be equal bit for bit -- for int4 and
int8 tiles, one row and batches, every group size; and the one-pass dequantizers too."""

from __future__ import annotations

import pytest
import torch

from inferd.kernels import cpu_isa, cpu_ops
from inferd.quant import kernels
from tests.kernels.conftest import levels_to_test

VECTOR_LEVELS = [name for name in levels_to_test() if name != "generic"]


@pytest.fixture(scope="module")
def reference():
    ops = cpu_ops.ops_for("generic")
    if ops is None:
        pytest.skip("the generic CPU kernels did not build here (no working compiler?)")
    return ops


def _level(name: str):
    ops = cpu_ops.ops_for(name)
    if ops is None:
        pytest.skip(f"the {name} CPU kernels did not build on this machine")
    return ops


def _x(rows: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g) * torch.rand(rows, 1, generator=g) * 4
    x[0, 7] = 40.0  # an outlier: its group's digits must still agree
    return x.to(torch.bfloat16)


@pytest.mark.skipif(not VECTOR_LEVELS, reason="this CPU runs only the generic level: nothing to compare")
@pytest.mark.parametrize("level", VECTOR_LEVELS)
@pytest.mark.parametrize("rows", [1, 2, 3, 8, 9, 17])
@pytest.mark.parametrize("group", [16, 32, 64, 128])
def test_tiles_are_bitwise_the_scalar_reference(reference, level, rows, group):
    ops = _level(level)
    n, k = 96, 256
    g = torch.Generator().manual_seed(rows * 1000 + group)
    x = _x(rows, k, seed=group + rows)
    q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, k // group, generator=g) * 0.01 + 1e-3
    int8 = kernels.pack_int8_tiles(q, scale, group)
    assert torch.equal(ops.int8_tiles_mm(x, int8.codes, group, int8.scales),
                       reference.int8_tiles_mm(x, int8.codes, group, int8.scales))
    # int8 with a min per group (GGUF Q5_1/Q5_K): the scales come as (scale, min) pairs.
    minimum = -torch.rand(n, k // group, generator=g) * 0.05
    asym = kernels.pack_int8_tiles(q, scale, group, minimum)
    assert torch.equal(ops.int8_tiles_mm(x, asym.codes, group, asym.scales),
                       reference.int8_tiles_mm(x, asym.codes, group, asym.scales))
    assert torch.equal(ops.int8_tiles_dequantize(asym.codes, group, asym.scales),
                       reference.int8_tiles_dequantize(asym.codes, group, asym.scales))
    # int4 at group 16 too: GGUF Q2_K/Q3_K run there.
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    sm = kernels.tile_scale_min(torch.rand(n, k // group, generator=g) * 0.01 + 1e-3,
                                -torch.rand(n, k // group, generator=g) * 0.05)
    packed = kernels.pack_int4_tiles(codes)
    assert torch.equal(ops.int4_mm(x, packed, group, sm), reference.int4_mm(x, packed, group, sm))
    assert torch.equal(ops.int4_tiles_dequantize(packed, group, sm),
                       reference.int4_tiles_dequantize(packed, group, sm))
    assert torch.equal(ops.int8_tiles_dequantize(int8.codes, group, int8.scales),
                       reference.int8_tiles_dequantize(int8.codes, group, int8.scales))


@pytest.mark.skipif(not VECTOR_LEVELS, reason="this CPU runs only the generic level: nothing to compare")
@pytest.mark.parametrize("level", VECTOR_LEVELS)
def test_nonfinite_groups_poison_only_their_rows_on_every_level(reference, level):
    ops = _level(level)
    n, k, group = 32, 128, 32
    g = torch.Generator().manual_seed(9)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    int8 = kernels.pack_int8_tiles(q, torch.full((n, k // group), 0.01), group)
    x = _x(3, k, seed=1)
    x[1, 40] = float("inf")
    y = ops.int8_tiles_mm(x, int8.codes, group, int8.scales)
    assert not torch.isfinite(y[1]).any() and torch.isfinite(y[0]).all() and torch.isfinite(y[2]).all()
    ref = reference.int8_tiles_mm(x, int8.codes, group, int8.scales)
    assert torch.equal(y[0], ref[0]) and torch.equal(y[2], ref[2])


def test_the_best_level_is_tested_here():
    """The per-level parametrisation covers the CPU's best level, whatever the machine."""
    assert cpu_isa.best_level().name in levels_to_test()
