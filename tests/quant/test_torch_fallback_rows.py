"""Quantized layers on the plain-torch fallback (no native CPU kernels: no compiler, or
INFERD_NATIVE_CPU=0) give each row the same bits whatever the number of rows in the call, so
greedy decoding stays batch-invariant there too (README "Batch invariance"), with no padding rows.

Before: int8 in rows ran torch's `_weight_int8pack_mm` below 24 rows and dequant + bf16 GEMM
from 24, int4 in torch's layout `_weight_int4pack_mm_for_cpu` below 384 rows and dequant + GEMM
from 384; the two round differently, so a decode row's result depended on its step's size.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inferd import LLM, SamplingParams
from inferd.kernels import cpu_ops
from inferd.quant import Int4Linear, Int8Linear, quantize_int4, quantize_int8

# Row counts around every switch point the CPU paths have had (4: padding, 24: int8 rows,
# 64/128: chunking, 384: tiles and torch's int4 layout) and past them.
ROWS = [2, 3, 4, 5, 8, 23, 24, 25, 32, 64, 128, 383, 384, 400]


@pytest.fixture
def torch_ops_only(monkeypatch):
    """Every caller sees no native CPU kernels, as with INFERD_NATIVE_CPU=0 in a fresh process."""
    monkeypatch.setattr(cpu_ops, "level", lambda: None)
    monkeypatch.setattr(cpu_ops, "available", lambda: False)
    monkeypatch.setattr(cpu_ops, "usable", lambda *tensors: False)


def _weight(k: int, n: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, k) * 0.05


MODULES = {
    "int8_per_channel": lambda w: Int8Linear(quantize_int8(w)),  # rows: _weight_int8pack_mm
    "int8_g32": lambda w: Int8Linear(quantize_int8(w, group_size=32)),  # two int4 planes
    "int4_g64": lambda w: Int4Linear(quantize_int4(w, 64, True)),
    "int4_g32_asym": lambda w: Int4Linear(quantize_int4(w, 32, False)),
}


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize(("k", "n"), [(256, 80), (576, 192)])  # 80: a partial block in torch's int4 layout
def test_a_row_alone_and_in_any_batch_gets_the_same_bits(torch_ops_only, kind: str, k: int, n: int) -> None:
    module = MODULES[kind](_weight(k, n))
    assert module.qweight.dim() == 2  # torch's layouts, not inferd's tiles
    g = torch.Generator().manual_seed(1)
    row = torch.randn(1, k, generator=g).to(torch.bfloat16)
    alone = module(row)[0]
    for m in ROWS:
        batch = torch.randn(m, k, generator=g).to(torch.bfloat16)
        for at in (0, m // 2, m - 1):
            batch[at] = row[0]
            assert torch.equal(module(batch)[at], alone), f"{kind}: row {at} of {m} differs from alone"
    assert module.rows_independent  # so the runner adds no padding rows


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_fallback_engine_needs_no_padding_and_greedy_is_batch_invariant(torch_ops_only, tiny_llama,
                                                                         quantization: str) -> None:
    llm = LLM(str(tiny_llama), dtype="bfloat16", quantization=quantization, kv_cache_memory=0.05,
              max_num_batched_tokens=64)
    assert not any(isinstance(m, nn.Linear) for m in llm.engine.runner.model.model.modules())
    assert llm.engine.runner.min_rows == 1
    # The short greedy prompt decodes beside the long prompts' 64-token prefill chunks.
    prompts = [list(range(100, 110)), list(range(200, 500)), list(range(600, 900))]
    params = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
              SamplingParams(temperature=0.9, max_tokens=4, seed=3)]
    batched = llm.generate(prompts, params)
    solo = llm.generate([prompts[0]], params[0])[0]
    assert solo.outputs[0].token_ids == batched[0].outputs[0].token_ids
