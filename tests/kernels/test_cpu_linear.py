"""oneDNN-packed linears: same results as F.linear, row results independent of batch size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inferd.kernels.cpu_linear import PackedLinear, pack_linears, packing_supported
from inferd.quant.linear import Int8Linear

CPU = torch.device("cpu")


def _dtypes() -> list:
    return [pytest.param(dt, marks=pytest.mark.skipif(not packing_supported(dt, CPU),
                                                      reason=f"oneDNN has no fast {dt} kernels here"))
            for dt in (torch.float32, torch.bfloat16)]


@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(960, 576), (576, 1536), (37, 65)])
def test_matches_plain_linear(dtype, bias, shape):
    torch.manual_seed(0)
    linear = nn.Linear(shape[1], shape[0], bias=bias).to(dtype)
    packed = PackedLinear(linear)
    x = torch.randn(7, shape[1]).to(dtype)
    ref = (x.double() @ linear.weight.double().T + (linear.bias.double() if bias else 0))
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert torch.allclose(packed(x).double(), ref, atol=tol * ref.abs().max().item(), rtol=0)
    assert torch.equal(packed.packed_weight.to_dense().to(dtype), linear.weight.detach())
    assert packed(torch.randn(2, 3, shape[1]).to(dtype)).shape == (2, 3, shape[0])


@pytest.mark.parametrize("dtype", _dtypes())
def test_row_results_do_not_depend_on_row_count(dtype):
    torch.manual_seed(1)
    packed = PackedLinear(nn.Linear(576, 3072, bias=False).to(dtype))
    x = torch.randn(96, 576).to(dtype)
    full = packed(x)
    # fp32 takes a different oneDNN kernel for a single row; the runner pads to >= 4 rows.
    for rows in (2, 3, 4, 5, 8, 17, 32, 64):
        assert torch.equal(packed(x[:rows].contiguous()), full[:rows]), rows


@pytest.mark.parametrize("dtype", _dtypes())
def test_long_batches_keep_each_rows_result(dtype):
    """On AMX Xeons oneDNN split K for 150-260 rows of a 576x1536 bf16 matmul, changing those
    rows' sums; the chunked call keeps every row equal to its result in a 4-row call."""
    torch.manual_seed(3)
    packed = PackedLinear(nn.Linear(1536, 576, bias=False).to(dtype))
    x = torch.randn(300, 1536).to(dtype)
    alone = torch.cat([packed(x[i:i + 1].expand(4, -1).contiguous())[:1] for i in range(300)])
    for rows in (129, 150, 182, 200, 256, 300):
        assert torch.equal(packed(x[:rows]), alone[:rows]), rows


@pytest.mark.skipif(not packing_supported(torch.float32, CPU), reason="oneDNN unavailable in this torch build")
def test_pack_linears_swaps_only_plain_linears_and_keeps_tied_embedding():
    torch.manual_seed(2)
    model = nn.Module()
    model.embed = nn.Embedding(50, 16)
    model.proj = nn.Linear(16, 16)
    model.quant = Int8Linear.from_linear(nn.Linear(16, 32))
    model.head = nn.Linear(16, 50, bias=False)
    model.head.weight = model.embed.weight
    table = model.embed.weight.detach().clone()
    x = torch.randn(4, 16)
    before = [model.proj(x), model.quant(x), model.head(x)]
    assert pack_linears(model) == 2
    assert isinstance(model.proj, PackedLinear) and isinstance(model.head, PackedLinear)
    assert isinstance(model.quant, Int8Linear)
    assert torch.equal(model.embed.weight, table)
    after = [model.proj(x), model.quant(x), model.head(x)]
    for a, b in zip(before, after, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert pack_linears(model) == 0  # idempotent
