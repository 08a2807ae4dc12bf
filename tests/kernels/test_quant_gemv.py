"""inferd's CPU kernels for quantized weights (csrc/quant_gemv.cpp) against a float64 matmul of
the very weights the quantized linears hold, dequantized independently."""

from __future__ import annotations

import pytest
import torch

from inferd.kernels import cpu_ops
from inferd.kernels.native_kinds import LinearKind
from inferd.quant import kernels
from inferd.quant.formats import quantize_int8
from inferd.quant.linear import Fp8Linear, Int4Linear, Int8Linear

SHAPES = [(960, 576), (128, 1536), (64, 96)]
ROWS = [1, 3, 4, 8, 13]


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def _x(rows: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, k, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


def _linear(n: int, k: int) -> torch.nn.Linear:
    torch.manual_seed(n * k)
    return torch.nn.Linear(k, n, bias=False)


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("rows", ROWS)
def test_fp8_rows_mm_matches_float64_of_the_fp8_weight(n, k, rows):
    layer = Fp8Linear.from_linear(_linear(n, k))
    weight = layer.qweight.to(torch.float64) * layer.scale.double()[:, None]
    x = _x(rows, k)
    y = cpu_ops.ops().fp8_rows_mm(x, layer.qweight, layer.scale)
    assert y.dtype == torch.bfloat16 and y.shape == (rows, n)
    assert _rel_err(y, x.double() @ weight.T) < 8e-3  # bf16 output rounding is 2**-9


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("rows", ROWS)
def test_int8_rows_mm_matches_float64_of_the_int8_weight(n, k, rows):
    q, scale = _int8_rows(n, k)  # the row layout, as Int8Linear holds it where VNNI is missing
    weight = q.double() * scale.double()[:, None]
    x = _x(rows, k)
    y = cpu_ops.ops().int8_rows_mm(x, q, scale)
    assert _rel_err(y, x.double() @ weight.T) < 8e-3
    assert _rel_err(y, torch.ops.aten._weight_int8pack_mm(x, q, scale).double()) < 1.6e-2


def _int8_rows(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = quantize_int8(_linear(n, k).weight)
    return w.qweight, w.scale[:, 0].to(torch.bfloat16)


def _vnni(n: int, k: int) -> None:
    if not kernels.tiles_apply(n, k):
        pytest.skip("this kernel level has no vector tile kernel (int8/int4 stay on torch's kernels)")


@pytest.mark.parametrize("n,k,group", [(960, 576, None), (128, 1536, None), (64, 96, None),
                                       (960, 576, 32), (48, 256, 128), (80, 128, 16)])
@pytest.mark.parametrize("rows", ROWS)
def test_int8_tiles_mm_matches_float64_of_the_int8_weight(n, k, group, rows):
    _vnni(n, k)
    w = quantize_int8(_linear(n, k).weight, group_size=group)
    layer = Int8Linear(w)
    assert layer.tiles is not None and layer.tile_group == (group or next(g for g in (128, 64, 32, 16) if k % g == 0))
    # the tiles hold the format's codes exactly, and its scales to fp16
    assert torch.equal(kernels.unpack_int8_tiles(layer.qweight), w.qweight)
    scale = w.scale.repeat_interleave(k // layer.tile_group // w.scale.shape[1], 1)  # per-channel: per group
    assert torch.equal(kernels.int8_tile_scales(layer.scale), scale.half().float())
    weight = kernels.int8_tiles_rows(layer.tiles).double()
    x = _x(rows, k)
    y = kernels.int8_tiles_mm(x, layer.tiles)
    assert y.dtype == torch.bfloat16 and y.shape == (rows, n)
    assert _rel_err(y, x.double() @ weight.T) < 8e-3


def test_int8_tiles_keep_q8_0_blocks_exactly():
    """GGUF Q8_0: q int8 with one fp16 scale per 32 -- the tiles hold both bit for bit."""
    _vnni(64, 128)
    g = torch.Generator().manual_seed(4)
    q = torch.randint(-128, 128, (64, 128), generator=g, dtype=torch.int8)
    d = (torch.rand(64, 4, generator=g) * 0.01 + 1e-4).half().float()
    tiles = kernels.pack_int8_tiles(q, d, 32)
    assert torch.equal(kernels.unpack_int8_tiles(tiles.codes), q)
    assert torch.equal(kernels.int8_tiles_rows(tiles), q.float() * d.repeat_interleave(32, 1))
    rows = torch.tensor([0, 17, 63, 17])
    assert torch.equal(kernels.int8_tiles_rows(tiles, rows), kernels.int8_tiles_rows(tiles)[rows])


@pytest.mark.parametrize("n,k,group", [(960, 576, 32), (48, 256, 128), (80, 128, 16)])
def test_native_tile_dequantize_is_bitwise_the_float32_formula_rounded_once(n, k, group):
    """Prefill's dequant + GEMM path reads these: the one-pass native versions of both tile
    layouts must give the same bf16 weight as the float32 formulas rounded once."""
    _vnni(n, k)
    int8 = Int8Linear(quantize_int8(_linear(n, k).weight, group_size=group))
    assert torch.equal(cpu_ops.ops().int8_tiles_dequantize(int8.qweight, group, int8.scale),
                       kernels.int8_tiles_rows(int8.tiles).to(torch.bfloat16))
    int4 = Int4Linear.from_linear(_linear(n, k), group_size=max(group, 32), symmetric=False)
    g4 = int4.group_size
    assert torch.equal(cpu_ops.ops().int4_tiles_dequantize(int4.qweight, g4, int4.scale_zeros),
                       kernels.int4_dequantize_cpu(int4.qweight, n, k, g4, int4.scale_zeros, torch.float32)
                       .to(torch.bfloat16))


@pytest.mark.parametrize("n,k,group", [(960, 576, 32), (576, 1536, 128), (80, 128, 16), (48, 256, 64)])
def test_tile_kernels_give_every_row_the_same_bits_at_any_batch(n, k, group):
    """Batches of rows run on AMX where the CPU has it (from 8 rows for int8, 16 for int4), one
    row on VNNI: the integer group sums are exact either way and the epilogue is shared, so
    each row's result must be bitwise the same whichever kernel ran it."""
    _vnni(n, k)
    int8 = Int8Linear(quantize_int8(_linear(n, k).weight, group_size=group))
    int4 = Int4Linear.from_linear(_linear(n, k), group_size=max(group, 32), symmetric=False)
    calls = [lambda a: kernels.int8_tiles_mm(a, int8.tiles),
             lambda a: kernels.int4_mm(a, int4.qweight, int4.group_size, int4.scale_zeros)]
    for rows in (8, 16, 21, 40):
        x = _x(rows, k, seed=rows)
        for call in calls:
            together = call(x)
            for i in range(rows):
                assert torch.equal(call(x[i:i + 1]), together[i:i + 1]), (rows, i)


def test_amx_runs_where_the_cpu_has_it():
    flags = open("/proc/cpuinfo").read()
    if " amx_int8" not in flags:
        pytest.skip("this CPU has no AMX-INT8: the tile kernels run on VNNI or AVX2 alone")
    if cpu_ops.level() != "amx":
        pytest.skip(f"the {cpu_ops.level()} kernel level is built without AMX")
    assert cpu_ops.ops().tiles_use_amx()


@pytest.mark.parametrize("rows", [2, 16])  # VNNI, then AMX where the CPU has it
def test_int8_tiles_nonfinite_activations_propagate(rows):
    _vnni(64, 64)
    int8 = Int8Linear.from_linear(_linear(64, 64))
    int4 = Int4Linear.from_linear(_linear(64, 64), group_size=32, symmetric=True)
    x = _x(rows, 64)
    x[0, 3] = float("nan")
    for y in (kernels.int8_tiles_mm(x, int8.tiles), kernels.int4_mm(x, int4.qweight, 32, int4.scale_zeros)):
        assert not torch.isfinite(y[0]).any() and torch.isfinite(y[1:]).all()


def test_fp8_decode_is_exact_for_every_code_including_subnormals():
    codes = torch.arange(256, dtype=torch.uint8)
    codes = codes[~torch.isnan(codes.view(torch.float8_e4m3fn).float())]
    weight = codes.view(torch.float8_e4m3fn).reshape(-1, 1)  # one code per output row, K = 1
    y = cpu_ops.ops().fp8_rows_mm(torch.ones(1, 1, dtype=torch.bfloat16), weight,
                                  torch.ones(weight.shape[0]))
    assert torch.equal(y[0].float(), weight[:, 0].float().to(torch.bfloat16).float())


@pytest.mark.parametrize("n,k,group,symmetric", [(960, 576, 32, False), (960, 576, 64, True),
                                                 (128, 1536, 128, False), (64, 128, 32, True),
                                                 (80, 256, 128, False), (48, 96, 32, True)])
@pytest.mark.parametrize("rows", ROWS)
def test_int4_mm_matches_float64_of_the_packed_weight(n, k, rows, group, symmetric):
    _vnni(n, k)
    layer = Int4Linear.from_linear(_linear(n, k), group_size=group, symmetric=symmetric)
    assert kernels.native_int4_applies(layer.qweight)
    weight = kernels.int4_dequantize_cpu(layer.qweight, n, k, group, layer.scale_zeros, torch.float32)
    x = _x(rows, k)
    y = cpu_ops.ops().int4_mm(x, layer.qweight, group, layer.scale_zeros)
    assert _rel_err(y, x.double() @ weight.double().T) < 8e-3
    # and agrees with torch's own kernel on torch's packing of the same codes and pairs
    codes = kernels.unpack_int4_cpu(layer.qweight, n, k)
    torch_packed, _ = kernels.pack_int4_cpu(codes)
    pairs = kernels._tile_pairs_as_tinygemm(layer.scale_zeros)
    assert _rel_err(y, torch.ops.aten._weight_int4pack_mm_for_cpu(x, torch_packed, group, pairs).double()) < 1.6e-2


def test_int4_activation_digits_keep_16_bits_of_each_group():
    """The kernel holds x as 16-bit integers against each group's largest |x|: with a large
    outlier in one group, the other groups keep their own precision."""
    if not kernels.tiles_apply(64, 128):
        pytest.skip("this kernel level has no vector tile kernel (int8/int4 stay on torch's kernels)")
    layer = Int4Linear.from_linear(_linear(64, 128), group_size=32, symmetric=False)
    weight = kernels.int4_dequantize_cpu(layer.qweight, 64, 128, 32, layer.scale_zeros, torch.float64)
    x = _x(1, 128, seed=3) * 1e-3
    x[0, 5] = 300.0  # an outlier channel in group 0
    y = cpu_ops.ops().int4_mm(x, layer.qweight, 32, layer.scale_zeros).double()
    x64 = x.double()
    # Each group's share, exactly: groups 1-3 must not lose precision to group 0's outlier.
    rest = x64[:, 32:] @ weight[:, 32:].T
    outlier = x64[:, :32] @ weight[:, :32].T
    err = (y - rest - outlier).abs()
    assert (err <= 2**-8 * (rest.abs() + outlier.abs()) + 300 * 2**-15 * weight[:, :32].abs().sum(1)).all()


def test_int4_nonfinite_activations_propagate():
    if not kernels.tiles_apply(64, 64):
        pytest.skip("this kernel level has no vector tile kernel (int8/int4 stay on torch's kernels)")
    layer = Int4Linear.from_linear(_linear(64, 64), group_size=32, symmetric=True)
    x = _x(2, 64)
    x[0, 3] = float("inf")
    y = cpu_ops.ops().int4_mm(x, layer.qweight, 32, layer.scale_zeros)
    assert not torch.isfinite(y[0]).any() and torch.isfinite(y[1]).all()


def test_rows_do_not_depend_on_how_many_share_the_call():
    layer8 = Fp8Linear.from_linear(_linear(960, 576))
    layer4 = Int4Linear.from_linear(_linear(960, 576), group_size=32, symmetric=False)
    q, scale = _int8_rows(960, 576)
    x = _x(11, 576, seed=5)
    ops = cpu_ops.ops()
    calls = [lambda a: ops.fp8_rows_mm(a, layer8.qweight, layer8.scale),
             lambda a: ops.int8_rows_mm(a, q, scale)]
    if kernels.tiles_apply(960, 576):
        calls.append(lambda a: ops.int4_mm(a, layer4.qweight, 32, layer4.scale_zeros))
        int8 = Int8Linear.from_linear(_linear(960, 576))
        calls.append(lambda a: kernels.int8_tiles_mm(a, int8.tiles))
    for call in calls:
        together = call(x)
        for i in range(x.shape[0]):
            assert torch.equal(call(x[i:i + 1]), together[i:i + 1])


def test_fp8_linear_uses_the_kernel_for_decode_and_widening_for_prefill():
    """Both paths compute the same product; the switch is only about speed."""
    layer = Fp8Linear.from_linear(_linear(128, 256))
    x = _x(kernels.CPU_FP8_NATIVE_MAX_ROWS + 8, 256, seed=2)
    widened = layer(x)  # more rows than the kernel takes: bf16 GEMM on the widened weight
    assert kernels.fp8_mm_cpu(x, layer.qweight, layer.scale) is None
    small = layer(x[:4])
    assert _rel_err(small, widened[:4].double()) < 1.6e-2


def test_bad_shapes_are_refused_with_a_clear_error():
    layer = Fp8Linear.from_linear(_linear(64, 96))
    ops = cpu_ops.ops()
    with pytest.raises(RuntimeError, match="columns"):
        ops.fp8_rows_mm(_x(2, 95), layer.qweight, layer.scale)
    with pytest.raises(RuntimeError, match="bfloat16"):
        ops.fp8_rows_mm(_x(2, 96).float(), layer.qweight, layer.scale)
    with pytest.raises(RuntimeError, match="scale"):
        ops.fp8_rows_mm(_x(2, 96), layer.qweight, layer.scale[:10])


def test_int8_tiles_row_lookup_refuses_ids_out_of_range():
    _vnni(64, 128)
    tiles = kernels.pack_int8_tiles(torch.zeros(64, 128, dtype=torch.int8), torch.ones(64, 4), 32)
    with pytest.raises(RuntimeError, match="out of range"):
        kernels.int8_tiles_rows(tiles, torch.tensor([3, 64]))


def _asymmetric_int8(n: int, k: int, group: int, seed: int = 0):
    """An asymmetric int8 weight like GGUF Q5_K's: codes in [0, 31], fp16 scales and mins."""
    from inferd.quant.formats import Int8Weight

    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 32, (n, k), generator=g, dtype=torch.int8)
    d = (torch.rand(n, k // group, generator=g) * 0.01 + 1e-3).half().float()
    m = -(torch.rand(n, k // group, generator=g) * 0.1 + 0.01).half().float()
    return Int8Weight(q, d, group, m)


@pytest.mark.parametrize("n,k,group", [(960, 576, 32), (80, 128, 16), (48, 256, 128)])
@pytest.mark.parametrize("rows", [1, 3, 8, 13])
def test_int8_tiles_with_mins_match_float64_of_the_weight(n, k, group, rows):
    """Asymmetric int8 (GGUF Q5_1/Q5_K) runs on the int8 tiles with (scale, min) pairs: the
    tiles hold codes, scales and mins bit for bit, and every path reads them alike."""
    _vnni(n, k)
    w = _asymmetric_int8(n, k, group, seed=rows)
    layer = Int8Linear(w)
    assert layer.tiles is not None and layer.tiles.has_min and layer.tile_group == group
    assert layer.native_spec().kind == LinearKind.INT8_TILES
    assert torch.equal(kernels.int8_tiles_rows(layer.tiles), w.dequantize())  # fp16 values: exact
    x = _x(rows, k, seed=rows)
    y = layer(x)
    assert _rel_err(y, x.double() @ w.dequantize().double().T) < 8e-3
    rows_ids = torch.tensor([0, n - 1, 17 % n])
    assert torch.equal(kernels.int8_tiles_rows(layer.tiles, rows_ids), w.dequantize()[rows_ids])
    assert torch.equal(cpu_ops.ops().int8_tiles_dequantize(layer.qweight, group, layer.scale),
                       w.dequantize().to(torch.bfloat16))
    for i in range(rows):  # rows independent of the batch
        assert torch.equal(layer(x[i:i + 1]), y[i:i + 1])
