"""GGUF blocks convert losslessly: dequantization is bit-identical to `gguf.quants.dequantize`."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from inferd.quant import Int4Weight, Int8Weight, from_gguf_blocks, linear_from_quantized
from tests.quant.reference import reference_and_bound


def _float_weight(n: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, k)) * 0.02).astype(np.float32)


def _random_q4_k(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Random valid Q4_K super-blocks (gguf-py cannot quantize Q4_K): any byte pattern is a valid
    block once d and dmin are finite fp16 values."""
    rng = np.random.default_rng(seed)
    nb = k // 256
    raw = rng.integers(0, 256, (n, nb, 144), dtype=np.uint8)
    d = (rng.random((n, nb)) * 1e-3).astype(np.float16)
    dmin = (rng.random((n, nb)) * 1e-3).astype(np.float16)
    d[0, 0] = 0  # a dead block
    raw[..., 0:2] = d.view(np.uint8).reshape(n, nb, 2)
    raw[..., 2:4] = dmin.view(np.uint8).reshape(n, nb, 2)
    return raw.reshape(n, nb * 144)


def _raw(qtype: Q, n: int, k: int) -> np.ndarray:
    if qtype == Q.Q4_K:
        return _random_q4_k(n, k)
    return gguf.quants.quantize(_float_weight(n, k), qtype)


CASES = [(Q.Q8_0, Int8Weight), (Q.Q4_0, Int4Weight), (Q.Q4_1, Int4Weight), (Q.Q4_K, Int4Weight)]


@pytest.mark.parametrize(("qtype", "kind"), CASES, ids=[c[0].name for c in CASES])
def test_conversion_is_bit_exact(qtype: Q, kind: type) -> None:
    n, k = 48, 512
    raw = _raw(qtype, n, k)
    assert raw.dtype == np.uint8 and raw.shape[0] == n  # the GGUFReader tensor.data shape
    weight = from_gguf_blocks(raw, qtype, (n, k))
    assert isinstance(weight, kind) and weight.shape == (n, k) and weight.group_size == 32
    expected = gguf.quants.dequantize(raw, qtype)
    got = weight.dequantize().numpy()
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    assert weight.nbytes < n * k * 2  # still smaller than fp16


def test_raw_bytes_may_arrive_flat() -> None:
    raw = _raw(Q.Q4_1, 16, 64)
    a = from_gguf_blocks(raw, Q.Q4_1, (16, 64)).dequantize()
    b = from_gguf_blocks(raw.reshape(-1), int(Q.Q4_1), [16, 64]).dequantize()
    assert torch.equal(a, b)


@pytest.mark.parametrize(("qtype", "kind"), CASES, ids=[c[0].name for c in CASES])
@pytest.mark.parametrize("tokens", [1, 7])
def test_modules_from_gguf_match_reference(qtype: Q, kind: type, tokens: int) -> None:
    n, k = 64, 256
    weight = from_gguf_blocks(_raw(qtype, n, k), qtype, (n, k))
    module = linear_from_quantized(weight)
    x = torch.randn(tokens, k)
    ref, bound = reference_and_bound(x, weight)
    assert ((module(x).double() - ref).abs() <= bound).all()


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1], ids=["Q4_0", "Q4_1"])
def test_cpu_int4_module_keeps_q4_blocks_exactly(qtype: Q) -> None:
    """On inferd's CPU kernel the module multiplies by the file's values themselves: Q4_0/Q4_1
    scales and mins are fp16 and the tile layout holds them in fp16."""
    n, k = 64, 256
    weight = from_gguf_blocks(_raw(qtype, n, k), qtype, (n, k))
    module = linear_from_quantized(weight)
    if module.scale_zeros.dtype != torch.float16:
        pytest.skip("inferd's int4 kernel (AVX-512 VNNI) is not built on this CPU")
    assert torch.equal(module.dequantize(), weight.dequantize())


def test_bad_gguf_inputs() -> None:
    raw = _raw(Q.Q4_0, 16, 64)
    with pytest.raises(ValueError, match="do not hold a 16x128 tensor"):
        from_gguf_blocks(raw, Q.Q4_0, (16, 128))
    with pytest.raises(ValueError, match=r"have 16 rows but shape \(64, 32\)"):
        from_gguf_blocks(raw, Q.Q4_0, (64, 32))  # GGUF order: same bytes, wrong meaning
    with pytest.raises(ValueError, match="not a multiple of 32"):
        from_gguf_blocks(raw, Q.Q4_0, (32, 48))
    with pytest.raises(ValueError, match="Q6_K has no lossless.*Q8_0, Q4_0, Q4_1, Q4_K"):
        from_gguf_blocks(raw, Q.Q6_K, (16, 64))
    with pytest.raises(ValueError, match="2-D"):
        from_gguf_blocks(raw, Q.Q4_0, (16, 8, 8))
