"""CUDA paths: tinygemm int4, int8 weight-only, fp8 `_scaled_mm`. Skipped with a reason on CPU."""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as Q
from torch import nn

from inferd.quant import (
    Fp8Linear,
    Int4Linear,
    Int8Linear,
    from_gguf_blocks,
    linear_from_quantized,
    quantize_fp8,
    quantize_int4,
    quantize_int8,
    quantize_model,
)
from inferd.quant.kernels import cuda_supports_fp8_mm
from tests.quant.reference import BF16_U, reference_and_bound
from tests.quant.test_apply import TinyLM, _layer_names
from tests.quant.test_gguf_blocks import _raw

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU: tinygemm int4, int8 and fp8 _scaled_mm kernels"),
]
CUDA = torch.device("cuda")
# SmolLM2 shapes (K=576 takes tinygemm's innerKTiles=4 layout) and a 128-multiple one.
SHAPES = [(576, 960), (1536, 576), (256, 64)]


def _check(module: nn.Module, weight, x: torch.Tensor) -> None:
    y = module(x)
    assert y.device.type == "cuda" and y.dtype == x.dtype
    ref, bound = reference_and_bound(x.cpu(), weight)
    bound = bound + BF16_U * ref.abs()  # half-precision output
    err = (y.double().cpu().reshape(ref.shape) - ref).abs()
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3g}"


def _w(k: int, n: int) -> torch.Tensor:
    torch.manual_seed(0)
    return nn.Linear(k, n, bias=False).weight.detach()


@pytest.mark.parametrize(("k", "n"), SHAPES)
@pytest.mark.parametrize("tokens", [1, 3, 7, 33])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_int8_cuda(k: int, n: int, tokens: int, dtype: torch.dtype) -> None:
    weight = quantize_int8(_w(k, n))
    module = Int8Linear(weight, device=CUDA)  # two int4 planes on tinygemm: bf16 inside
    _check(module, weight, torch.randn(tokens, k, device=CUDA, dtype=dtype))


@pytest.mark.parametrize(("k", "n"), SHAPES)
@pytest.mark.parametrize("tokens", [1, 3, 7, 33])
@pytest.mark.parametrize(("group_size", "symmetric"), [(32, False), (64, True), (128, False)])
def test_int4_tinygemm(k: int, n: int, tokens: int, group_size: int, symmetric: bool) -> None:
    if k % group_size:
        pytest.skip(f"group {group_size} does not divide {k}")
    weight = quantize_int4(_w(k, n), group_size, symmetric)
    module = Int4Linear(weight, device=CUDA)
    for dtype in (torch.bfloat16, torch.float16):
        _check(module, weight, torch.randn(tokens, k, device=CUDA, dtype=dtype))


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K])
def test_gguf_blocks_on_cuda(qtype: Q) -> None:
    weight = from_gguf_blocks(_raw(qtype, 64, 512), qtype, (64, 512))
    module = linear_from_quantized(weight, device=CUDA)
    _check(module, weight, torch.randn(5, 512, device=CUDA, dtype=torch.bfloat16))


@pytest.mark.parametrize(("k", "n"), SHAPES)
@pytest.mark.parametrize("tokens", [1, 3, 7, 33])
def test_fp8_cuda(k: int, n: int, tokens: int) -> None:
    weight = quantize_fp8(_w(k, n))
    x = torch.randn(tokens, k, device=CUDA, dtype=torch.bfloat16)
    weight_only = Fp8Linear(weight, device=CUDA, fp8_activations=False)
    assert not weight_only.use_scaled_mm
    _check(weight_only, weight, x)
    w8a8 = Fp8Linear(weight, device=CUDA)
    assert w8a8.use_scaled_mm == cuda_supports_fp8_mm(CUDA)
    # W8A8 also rounds each activation to e4m3: half an ulp is |x| 2**-4, or s_x 2**-10 among
    # subnormals (s_x = per-token absmax / 448), on top of the bf16 roundings.
    ref, bound = reference_and_bound(x.cpu(), weight)
    x64, w64 = x.double().cpu(), weight.dequantize().double().abs()
    s_x = x64.abs().amax(dim=1, keepdim=True) / 448
    bound = bound + (x64.abs() * 2**-4 + s_x * 2**-10) @ w64.t() + BF16_U * ref.abs()
    err = (w8a8(x).double().cpu() - ref).abs()
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3g}"


def test_quantize_model_on_cuda() -> None:
    for (method, cls), dtype in zip(
            (("int8", Int8Linear), ("int4", Int4Linear), ("fp8", Fp8Linear)) * 2,
            [torch.bfloat16] * 3 + [torch.float16] * 3, strict=True):
        model = TinyLM(tied=True).to(CUDA, dtype)
        ids = torch.tensor([1, 2, 3], device=CUDA)
        before = model(ids).float()
        report = quantize_model(model, method, group_size=32, quantize_embeddings=True)
        assert all(isinstance(model.get_submodule(n), cls) for n in _layer_names())
        assert "lm_head" in report.tied
        after = model(ids).float()
        assert model(ids).dtype == dtype
        assert torch.corrcoef(torch.stack([before.flatten(), after.flatten()]))[0, 1] > 0.9


def test_cpu_packed_module_refuses_cuda_inputs() -> None:
    module = Int4Linear(quantize_int4(_w(64, 32), 32)).to(CUDA)
    with pytest.raises(RuntimeError, match="packed for cpu"):
        module(torch.randn(2, 64, device=CUDA, dtype=torch.bfloat16))
