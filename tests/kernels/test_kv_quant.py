"""Quantized KV cache: round-trip error within its format's bound, twice the tokens per byte,
and an engine running on it stays close to the unquantized one."""

from __future__ import annotations

import pytest
import torch

from inferd import LLM, SamplingParams
from inferd.kernels.kv_quant import QuantizedKV
from tests.kernels.test_attention import BLOCK, build_case, reference


@pytest.mark.parametrize("kind,rel_bound", [("int8", 1 / 127), ("fp8", 1 / 16)])
def test_round_trip_error_is_within_one_step_of_the_scale(kind, rel_bound):
    store = QuantizedKV(4, BLOCK, 2, 64, kind, torch.device("cpu"), torch.float32)
    x = torch.randn(3 * BLOCK, 2, 64) * torch.logspace(-2, 2, 3 * BLOCK)[:, None, None]
    slots = torch.arange(3 * BLOCK) + BLOCK
    store.write(x, slots)
    back = store.gather(slots)
    absmax = x.abs().amax(-1, keepdim=True)
    # int8: rounding error <= scale/2 = absmax/254; fp8 e4m3: 3 mantissa bits, relative 2^-4.
    assert ((back - x).abs() <= absmax * rel_bound + 1e-6).all()


def test_quantized_attention_close_to_reference():
    q, kc, vc, meta, keys, vals, qs = build_case("cpu", torch.float32, [1, 1, 9], [30, 70, 40])
    out_ref = reference(qs, keys, vals, 0.125)
    kq = QuantizedKV(kc.shape[0], BLOCK, 2, 64, "int8", torch.device("cpu"), torch.float32)
    vq = QuantizedKV(kc.shape[0], BLOCK, 2, 64, "int8", torch.device("cpu"), torch.float32)
    all_slots = torch.arange(kc.shape[0] * BLOCK)
    kq.write(kc.view(-1, 2, 64), all_slots)
    vq.write(vc.view(-1, 2, 64), all_slots)
    from inferd.kernels.attention import paged_attention

    out = paged_attention(q, kq, vq, meta, 0.125)
    assert (out.double() - out_ref).abs().max().item() < 0.05


@pytest.mark.parametrize("kind,max_mean_delta", [("int8", 0.02), ("fp8", 0.1)])
def test_engine_with_quantized_kv_holds_more_tokens_and_stays_close(tiny_llama, kind, max_mean_delta):
    base = LLM(str(tiny_llama), dtype="float32", kv_cache_memory=0.01)
    quant = LLM(str(tiny_llama), dtype="float32", kv_cache_memory=0.01, kv_cache_dtype=kind)
    # head_dim 16 here: fp32 is 64 bytes per token-head, quantized 16 + 4.
    assert quant.engine.pool.num_blocks >= 3 * base.engine.pool.num_blocks
    # Teacher-forced comparison: the log-probability each engine gives the same next tokens
    # (greedy samples would diverge for good after one near-tie and say little).
    text = [[5 + i, 17, 300 + i, 42] * 12 for i in range(3)]
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)
    deltas = []
    for a, b, ids in zip(base.generate(text, params), quant.generate(text, params), text, strict=True):
        for pos, (ea, eb) in enumerate(zip(a.prompt_logprobs[1:], b.prompt_logprobs[1:], strict=True)):
            tok = ids[pos + 1]
            deltas.append(abs(ea[tok] - eb[tok]))
    mean = sum(deltas) / len(deltas)
    assert 0 < mean < max_mean_delta
