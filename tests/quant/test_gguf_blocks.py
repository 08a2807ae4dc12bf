"""GGUF blocks convert losslessly: dequantization is bit-identical to `gguf.quants.dequantize`."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from inferd.quant import (
    SUPPORTED_GGUF_TYPES,
    Int4Weight,
    Int8Weight,
    from_gguf_blocks,
    kernels,
    linear_from_quantized,
)
from tests.quant.reference import reference_and_bound


def _float_weight(n: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, k)) * 0.02).astype(np.float32)


# The fp16 fields (d, and m or dmin) of each type's block, by byte offset: random bytes are a
# valid block once these hold finite values (gguf-py cannot quantize the k-quants).
F16_FIELDS = {Q.Q8_0: (0,), Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2),
              Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.Q3_K: (108,), Q.Q2_K: (80, 82)}


def random_blocks(qtype: Q, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Random valid blocks of `qtype` for an [n, k] weight, as GGUFReader's uint8 [n, bytes]."""
    rng = np.random.default_rng(seed)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    nb = k // block
    raw = rng.integers(0, 256, (n, nb, size), dtype=np.uint8)
    for offset in F16_FIELDS[qtype]:
        # Magnitudes of real files' scales (1e-3 .. 1e-2): their products with the 4-6-bit
        # sub-scales stay fp16-normal, as the tile kernels need.
        field = (rng.choice([-1, 1], (n, nb)) * rng.uniform(1e-3, 1e-2, (n, nb))).astype(np.float16)
        field[0, 0] = 0  # a dead block
        raw[..., offset:offset + 2] = field.view(np.uint8).reshape(n, nb, 2)
    return raw.reshape(n, nb * size)


def _raw(qtype: Q, n: int, k: int) -> np.ndarray:
    if qtype in (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1):
        return gguf.quants.quantize(_float_weight(n, k), qtype)
    return random_blocks(qtype, n, k)


CASES = [(Q.Q8_0, Int8Weight, 32), (Q.Q4_0, Int4Weight, 32), (Q.Q4_1, Int4Weight, 32),
         (Q.Q4_K, Int4Weight, 32), (Q.Q5_0, Int8Weight, 32), (Q.Q5_1, Int8Weight, 32),
         (Q.Q5_K, Int8Weight, 32), (Q.Q6_K, Int8Weight, 16), (Q.Q3_K, Int4Weight, 16),
         (Q.Q2_K, Int4Weight, 16)]
IDS = [c[0].name for c in CASES]


def test_every_table_entry_is_tested() -> None:
    assert {c[0] for c in CASES} == set(SUPPORTED_GGUF_TYPES)


@pytest.mark.parametrize(("qtype", "kind", "group"), CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_conversion_is_bit_exact(qtype: Q, kind: type, group: int, seed: int) -> None:
    n, k = 48, 512
    raw = _raw(qtype, n, k) if seed == 0 else random_blocks(qtype, n, k, seed)
    assert raw.dtype == np.uint8 and raw.shape[0] == n  # the GGUFReader tensor.data shape
    weight = from_gguf_blocks(raw, qtype, (n, k))
    assert isinstance(weight, kind) and weight.shape == (n, k) and weight.group_size == group
    expected = gguf.quants.dequantize(raw, qtype)
    got = weight.dequantize().numpy()
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    if qtype not in (Q.Q2_K, Q.Q3_K):  # int4 codes with g16 fp32 scales: 6 bits a weight, like fp16
        assert weight.nbytes < n * k * 2  # still smaller than fp16


def test_raw_bytes_may_arrive_flat() -> None:
    raw = _raw(Q.Q4_1, 16, 64)
    a = from_gguf_blocks(raw, Q.Q4_1, (16, 64)).dequantize()
    b = from_gguf_blocks(raw.reshape(-1), int(Q.Q4_1), [16, 64]).dequantize()
    assert torch.equal(a, b)


@pytest.mark.parametrize(("qtype", "kind", "group"), CASES, ids=IDS)
@pytest.mark.parametrize("tokens", [1, 7])
def test_modules_from_gguf_match_reference(qtype: Q, kind: type, group: int, tokens: int) -> None:
    n, k = 64, 256
    weight = from_gguf_blocks(_raw(qtype, n, k), qtype, (n, k))
    if isinstance(weight, Int4Weight) and (problem := kernels.int4_shape_problem(n, k, group, torch.device("cpu"))):
        pytest.skip(problem)
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
    with pytest.raises(ValueError, match="IQ4_NL has no lossless.*Q8_0, Q4_0, Q4_1, Q4_K, Q5_0"):
        from_gguf_blocks(raw, Q.IQ4_NL, (16, 64))
    with pytest.raises(ValueError, match="2-D"):
        from_gguf_blocks(raw, Q.Q4_0, (16, 8, 8))
