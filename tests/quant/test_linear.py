"""Quantized Linear modules on CPU: each matches (dequantized weight) @ x within the bf16 bound
derived in `reference.py`, on every kernel path (small-batch kernel and big-batch dequant+GEMM)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inferd.quant import (
    Fp8Linear,
    Int4Linear,
    Int8Linear,
    linear_from_quantized,
    quantize_fp8,
    quantize_int4,
    quantize_int8,
)
from inferd.quant import linear as qlinear
from tests.quant.reference import BF16_U, magnitude, reference_and_bound

# 1/3/7/33 tokens hit the kernels (AMX from 8/16 rows where the CPU has it); 64 (int8 in rows
# on inferd's row kernel) and 400 (tiles) hit the dequant+GEMM paths. torch's kernels, where
# inferd's are not built, run every row count themselves (test_torch_fallback_rows.py).
TOKENS = [1, 3, 7, 33, 64, 400]
# (in_features, out_features): N = 80 and 48 leave partial 64-row blocks in the CPU int4 layout.
SHAPES = [(128, 80), (192, 48), (256, 128)]


def _linear(k: int, n: int, bias: bool = False, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


def _check(module: nn.Module, weight, x: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    y = module(x)
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], weight.shape[0])
    ref, bound = reference_and_bound(x, weight, bias)
    if x.dtype == torch.bfloat16:  # the output itself is then bf16 as well
        bound = bound + BF16_U * ref.abs()
    err = (y.double().reshape(ref.shape) - ref).abs()
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3g}"


@pytest.mark.parametrize(("k", "n"), SHAPES)
@pytest.mark.parametrize("tokens", TOKENS)
def test_int8_per_channel(k: int, n: int, tokens: int) -> None:
    weight = quantize_int8(_linear(k, n).weight)
    _check(Int8Linear(weight), weight, torch.randn(tokens, k))


@pytest.mark.parametrize("tokens", [1, 7, 33])
def test_int8_grouped_runs_exactly_on_two_int4_planes(tokens: int) -> None:
    weight = quantize_int8(_linear(256, 64).weight, group_size=32)
    module = Int8Linear(weight)
    assert "group_size=32" in repr(module)
    _check(module, weight, torch.randn(tokens, 256))


@pytest.mark.parametrize(("k", "n"), SHAPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize(("group_size", "symmetric"), [(32, True), (64, False), (64, True)])
def test_int4(k: int, n: int, tokens: int, group_size: int, symmetric: bool) -> None:
    weight = quantize_int4(_linear(k, n).weight, group_size, symmetric)
    _check(Int4Linear(weight), weight, torch.randn(tokens, k))


def test_int4_group_128() -> None:
    weight = quantize_int4(_linear(256, 64).weight, 128, False)
    _check(Int4Linear(weight), weight, torch.randn(5, 256))


@pytest.mark.parametrize(("k", "n"), SHAPES)
@pytest.mark.parametrize("tokens", [1, 3, 7, 33])
def test_fp8(k: int, n: int, tokens: int) -> None:
    weight = quantize_fp8(_linear(k, n).weight)
    _check(Fp8Linear(weight), weight, torch.randn(tokens, k))


@pytest.mark.parametrize("cls", [Int8Linear, Int4Linear, Fp8Linear])
def test_bias_leading_dims_and_bf16_inputs(cls: type) -> None:
    linear = _linear(64, 32, bias=True)
    module = cls.from_linear(linear)
    weight = {Int8Linear: quantize_int8, Int4Linear: quantize_int4, Fp8Linear: quantize_fp8}[cls](
        linear.weight)
    x = torch.randn(2, 3, 64)
    _check(module, weight, x, linear.bias)
    _check(module, weight, x.to(torch.bfloat16), linear.bias)


def test_int4_module_dequantize_is_the_format_with_its_layouts_scales() -> None:
    weight = quantize_int4(_linear(128, 64).weight, 32, symmetric=False)
    module = Int4Linear(weight)
    err = (module.dequantize().double() - weight.dequantize().double()).abs()
    if module.scale_zeros.dtype == torch.float16:
        # inferd's tiles: scale and min rounded to fp16 (unit roundoff 2**-11) once each.
        q = weight.unpacked().double()
        scale = weight.scale.double().repeat_interleave(32, 1)
        low = weight.min.double().abs().repeat_interleave(32, 1)
        assert (err <= 2.0**-11 * ((q * scale).abs() + low) * 1.01 + 1e-9).all()
    else:  # tinygemm: scale and zero rounded to bf16 once each
        assert (err <= 2 * BF16_U * magnitude(weight) + 1e-7).all()
    assert module._unpackable
    # Inferd's tiles take dequant + GEMM from CPU_TILES_DEQUANT_FROM rows (tested by TOKENS);
    # torch's int4 kernel runs every row count itself.
    assert qlinear.CPU_TILES_DEQUANT_FROM <= max(TOKENS)


def test_weight_bytes_and_repr() -> None:
    linear = _linear(256, 64)
    int8 = Int8Linear.from_linear(linear)  # scales: one per row, or in the tile layout one per row and group
    groups = 1 if int8.tile_group is None else 256 // int8.tile_group
    assert int8.weight_bytes == 64 * 256 + 64 * groups * 2
    assert Int4Linear.from_linear(linear, group_size=64).weight_bytes == 64 * 128 + 4 * 64 * 2 * 2
    assert Fp8Linear.from_linear(linear).weight_bytes == 64 * 256 + 64 * 2
    text = repr(Int4Linear.from_linear(linear, group_size=32, symmetric=False))
    assert "in_features=256, out_features=64" in text and "group_size=32, symmetric=False" in text
    assert "per_channel" in repr(Int8Linear.from_linear(linear))


def test_linear_from_quantized_picks_the_module() -> None:
    w = _linear(64, 32).weight
    assert isinstance(linear_from_quantized(quantize_int8(w)), Int8Linear)
    assert isinstance(linear_from_quantized(quantize_int4(w, 32)), Int4Linear)
    assert isinstance(linear_from_quantized(quantize_fp8(w)), Fp8Linear)
    with pytest.raises(TypeError):
        linear_from_quantized(w)  # type: ignore[arg-type]


def test_bad_shapes_and_inputs() -> None:
    with pytest.raises(ValueError, match="out_features % 16"):
        Int4Linear.from_linear(_linear(64, 40))
    with pytest.raises(ValueError, match="does not divide in_features 96"):
        Int4Linear.from_linear(_linear(96, 32), group_size=64)
    with pytest.raises(ValueError, match="bfloat16 only"):
        Int4Linear(quantize_int4(_linear(64, 32).weight, 32), compute_dtype=torch.float32)
    module = Int8Linear.from_linear(_linear(64, 32))
    with pytest.raises(ValueError, match=r"expected input \[\.\.\., 64\]"):
        module(torch.randn(3, 65))
    module.packed_for = "cuda"  # as if built on a GPU, then handed CPU tensors
    with pytest.raises(RuntimeError, match="packed for cuda"):
        module(torch.randn(3, 64))


def test_tile_layouts_switch_to_dequant_only_where_the_gemm_is_faster(monkeypatch) -> None:
    # The AVX2 tile kernels beat dequant + fp32 GEMM at every measured row count where bf16 is
    # emulated, so they never switch; elsewhere prefill-sized calls dequantize.
    monkeypatch.setattr(qlinear.cpu_ops, "level", lambda: "avx2")
    monkeypatch.setattr(qlinear, "bf16_via_fp32", lambda: True)
    assert qlinear.tiles_dequant_from() == 1 << 30
    monkeypatch.setattr(qlinear, "bf16_via_fp32", lambda: False)
    assert qlinear.tiles_dequant_from() == qlinear.CPU_TILES_DEQUANT_FROM
    monkeypatch.setattr(qlinear.cpu_ops, "level", lambda: "avx512_vnni")
    assert qlinear.tiles_dequant_from() == qlinear.CPU_TILES_DEQUANT_FROM


@pytest.mark.parametrize("make", [lambda lin: Int4Linear.from_linear(lin, group_size=32, symmetric=False),
                                  lambda lin: Int8Linear.from_linear(lin)])
def test_rows_in_the_largest_kernel_call_equal_rows_alone(make) -> None:
    # Up to the switch (on AVX2 without native bf16: any row count) one kernel computes each row
    # on its own, so a row's result does not depend on how many rows share the call.
    module = make(_linear(256, 128))
    rows = min(512, qlinear.tiles_dequant_from() - 1)
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    together = module(x)
    for r in (0, rows // 2, rows - 1):
        assert torch.equal(together[r:r + 1], module(x[r:r + 1]))
