"""Greedy output of the bundled model does not depend on what else is in the batch.

A request alone and the same request inside a batch of 32 mixed requests (other lengths,
sampled companions, prefill chunks mixed with decodes) must produce identical tokens, in fp32
and bf16. This holds because (a) CPU GEMMs are padded to >= 4 rows: with 1 row (bf16) or 1-3 rows (fp32)
oneDNN/MKL pick a gemv-style kernel that rounds differently, while from 4 rows on each row's
result does not depend on the row count or position; and (b) attention is computed per
sequence over its own context, with masked padding contributing exact zeros. int4 and int8
weights (and the default, a GGUF's own blocks) run inferd's own tile kernels below 384 rows (VNNI
for a few rows, AMX for more, bitwise alike; on AVX2 without native bf16 at every row count), whose
rows are independent by construction: no padding. Not covered: fp8 weights, whose CPU kernel hands
calls of more than 32 rows to dequant + GEMM (a known gap, see quant/kernels.py).
"""

from __future__ import annotations

import pytest

from inferd import LLM, SamplingParams
from inferd.quant.linear import QuantLinear

TOPICS = ["the ocean", "a city at night", "bread baking", "mountain weather", "old computers",
          "a chess opening", "rain in spring", "learning to swim"]


def mixed_batch(llm: LLM) -> tuple[list[list[int]], list[SamplingParams]]:
    prompts, params = [], []
    for i in range(32):
        topic = TOPICS[i % len(TOPICS)]
        detail = " Please be detailed and mention history, people and places." * (i % 5)
        prompts.append(llm.tokenizer.encode_chat([{"role": "user", "content": f"Tell me about {topic}.{detail}"}]))
        if i % 3 == 2:
            params.append(SamplingParams(temperature=0.9, top_p=0.95, max_tokens=8 + i, seed=i))
        else:
            params.append(SamplingParams(temperature=0, max_tokens=24 + i % 9, ignore_eos=True))
    return prompts, params


@pytest.mark.slow
@pytest.mark.parametrize("dtype,quantization", [("float32", "none"), ("bfloat16", "none"),
                                                ("bfloat16", "int4"), ("bfloat16", "int8"),
                                                ("auto", "auto")])  # auto: the machine's default
def test_greedy_tokens_alone_equal_tokens_in_a_batch_of_32(dtype, quantization):
    llm = LLM("smollm2-135m", dtype=dtype, kv_cache_memory=0.5, max_num_batched_tokens=256,
              quantization=quantization)
    # Padding rows are there exactly where a layer's kernel needs them: float GEMMs only. "auto"
    # keeps the file's blocks where native kernels run, else dequantizes (INFERD_NATIVE_CPU=0).
    quantized = any(isinstance(m, QuantLinear) for m in llm.engine.runner.model.modules())
    if quantization != "auto":
        assert quantized == (quantization != "none")
    assert llm.engine.runner.min_rows == (1 if quantized else 4)
    prompts, params = mixed_batch(llm)
    batched = llm.generate(prompts, params)
    checked = 0
    for i in (0, 4, 10, 19, 30):
        assert params[i].greedy
        solo = llm.generate([prompts[i]], params[i])[0]
        assert solo.outputs[0].token_ids == batched[i].outputs[0].token_ids, f"request {i} differs"
        checked += 1
    assert checked == 5
