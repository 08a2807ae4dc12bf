"""Formats: packing is exact, quantization error stays within its theoretical bound."""

from __future__ import annotations

import pytest
import torch

from inferd.quant import (
    pack_int4,
    quantize,
    quantize_fp8,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)
from inferd.quant.kernels import fp8_to_bf16, pack_int4_cpu, pack_int4_tiles, unpack_int4_cpu

# Slack for float32 arithmetic inside quantize/dequantize (a few ulps of the scale).
F32_SLACK = 1e-6


def _weight(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[0, :5] = torch.tensor([0.9, -0.7, 0.0, 1e-6, -1e-6])  # outliers and near-zeros
    return w


def test_pack_int4_layout_and_round_trip() -> None:
    assert pack_int4(torch.tensor([[1, 2, 3, 4]], dtype=torch.uint8)).tolist() == [[0x21, 0x43]]
    codes = torch.randint(0, 16, (37, 96), dtype=torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(codes)), codes)
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(2, 3, dtype=torch.uint8))


@pytest.mark.parametrize("n", [16, 32, 48, 64, 80, 128, 144])
def test_cpu_kernel_layout_unpacks_exactly(n: int) -> None:
    codes = torch.randint(0, 16, (n, 96), dtype=torch.uint8)
    packed, unpackable = pack_int4_cpu(codes)
    assert unpackable
    assert torch.equal(unpack_int4_cpu(packed, n, 96), codes)
    tiles = pack_int4_tiles(codes)
    assert tiles.shape == (n // 16, 12, 64)
    assert torch.equal(unpack_int4_cpu(tiles, n, 96), codes)


def test_tile_layout_puts_four_k_of_one_row_in_each_lane() -> None:
    codes = torch.randint(0, 16, (16, 8), dtype=torch.uint8)
    tiles = pack_int4_tiles(codes)[0, 0]  # the one tile's one 8-wide chunk
    for i in range(16):
        lane = tiles[4 * i:4 * i + 4]
        assert torch.equal(lane & 0x0F, codes[i, :4]) and torch.equal(lane >> 4, codes[i, 4:])


@pytest.mark.parametrize("group_size", [None, 32, 64])
def test_int8_error_within_half_step(group_size: int | None) -> None:
    w = _weight(48, 192)
    q = quantize_int8(w, group_size)
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() <= 127
    step = q.scale.repeat_interleave(q.group_size, 1)
    assert ((q.dequantize() - w).abs() <= step / 2 + F32_SLACK).all()
    assert q.per_channel == (group_size is None)


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_error_within_half_step(group_size: int, symmetric: bool) -> None:
    w = _weight(40, 256)
    q = quantize_int4(w, group_size, symmetric)
    assert q.packed.shape == (40, 128) and q.scale.shape == (40, 256 // group_size)
    assert (q.min is None) == symmetric
    step = q.scale.repeat_interleave(group_size, 1)
    assert ((q.dequantize() - w).abs() <= step / 2 + F32_SLACK).all()
    codes = q.unpacked()
    if symmetric:  # code 0 (value -8) is unused so that +-absmax are both representable
        assert codes.min() >= 1 and codes.max() <= 15


def test_int4_kernel_convention_matches_dequantize() -> None:
    for symmetric in (True, False):
        q = quantize_int4(_weight(16, 64), 32, symmetric)
        scale, zero = (t.repeat_interleave(32, 1) for t in q.kernel_scale_and_zero())
        tinygemm = (q.unpacked().float() - 8) * scale + zero
        torch.testing.assert_close(tinygemm, q.dequantize(), rtol=0, atol=1e-6)


def test_fp8_error_within_theory() -> None:
    w = _weight(32, 160)
    q = quantize_fp8(w)
    assert q.qweight.dtype == torch.float8_e4m3fn and q.scale.shape == (32, 1)
    # Half an ulp: |w| * 2**-4 in the normal range, scale * 2**-10 among e4m3 subnormals.
    bound = torch.maximum(w.abs() * 2**-4, q.scale * 2**-10)
    assert ((q.dequantize() - w).abs() <= bound * (1 + 1e-5) + 1e-9).all()
    assert q.dequantize()[0, 0] == pytest.approx(0.9, rel=1e-6)  # absmax maps to 448 exactly


def test_fp8_to_bf16_bit_trick_is_exact_for_every_code() -> None:
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn)
    finite = ~torch.isnan(codes.float())
    expected = codes.to(torch.bfloat16)[finite]
    got = fp8_to_bf16(codes)[finite]
    assert torch.equal(got.view(torch.int16), expected.view(torch.int16))


def test_all_zero_rows_and_groups_dequantize_to_zero() -> None:
    w = torch.zeros(16, 64)
    for method in ("int8", "int4", "fp8"):
        q = quantize(w, method, group_size=32)
        assert torch.equal(q.dequantize(), w)
        assert torch.isfinite(q.scale).all()


def test_nbytes_counts_codes_and_scales() -> None:
    w = _weight(64, 128)
    assert quantize_int8(w).nbytes == 64 * 128 + 64 * 4
    assert quantize_int4(w, 64, True).nbytes == 64 * 64 + 64 * 2 * 4
    assert quantize_int4(w, 64, False).nbytes == 64 * 64 + 2 * 64 * 2 * 4
    assert quantize_fp8(w).nbytes == 64 * 128 + 64 * 4


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="does not divide in_features 100"):
        quantize_int4(torch.randn(16, 100), 32)
    with pytest.raises(ValueError, match="group_size must be one of"):
        quantize_int4(torch.randn(16, 96), 48)
    with pytest.raises(ValueError, match="2-D"):
        quantize_int8(torch.randn(16))
    with pytest.raises(ValueError, match="floating-point"):
        quantize_fp8(torch.ones(4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"unknown quantization method 'int3'.*int8"):
        quantize(torch.randn(4, 32), "int3")
