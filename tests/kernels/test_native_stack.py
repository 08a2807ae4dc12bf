"""The native decoder stack (csrc/decoder_stack.cpp) against the Python layer loop it replaces:
same kernels in the same order, so greedy tokens and every logprob must be bitwise equal."""

from __future__ import annotations

import pytest
import torch

from inferd import LLM, SamplingParams
from inferd.kernels.native_stack import NativeStack
from tests.kernels.conftest import needs_fast_tiles, needs_packed_bf16

CASES = [("tiny_llama", "float32", "none"), ("tiny_llama", "bfloat16", "none"),
         ("tiny_qwen2", "bfloat16", "none"),  # qkv bias
         ("tiny_mistral", "bfloat16", "int4"), ("tiny_llama", "bfloat16", "int8"),
         ("tiny_qwen2", "bfloat16", "fp8"), ("tiny_qwen2", "bfloat16", "int4")]


def _run(llm: LLM, prompts: list[list[int]]) -> list[tuple[list[int], list[dict]]]:
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=3)
    outs = llm.generate(prompts, params)
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]


@pytest.mark.parametrize("model,dtype,quantization", CASES)
def test_native_stack_is_bitwise_the_python_loop(model, dtype, quantization, request, kernel_level):
    path = request.getfixturevalue(model)
    llm = LLM(str(path), dtype=dtype, quantization=quantization, quant_group_size=32,
              kv_cache_memory=0.05, max_num_batched_tokens=64, enable_prefix_caching=False)
    target = llm.engine.runner.model
    stack = target.native_stack
    if stack is None and quantization != "none":
        needs_fast_tiles(kernel_level)
    if stack is None and dtype == "bfloat16" and quantization == "none":
        needs_packed_bf16()
    assert isinstance(stack, NativeStack), "every layer of this model has a native kernel"
    calls = []
    original = NativeStack.__call__

    def counted(self, *args):
        calls.append(args[0].shape[0])
        return original(self, *args)

    # Prompts of several lengths: prefill chunks, decodes, and steps mixing both. (No prefix
    # cache: both runs must schedule the same steps, and int8 changes kernel at 24 rows.)
    prompts = [list(range(5, 5 + n)) for n in (3, 17, 40, 90)]
    NativeStack.__call__ = counted
    try:
        native = _run(llm, prompts)
    finally:
        NativeStack.__call__ = original
    assert calls, "the native stack ran"
    target.native_stack = None
    assert _run(llm, prompts) == native


def test_quantized_kv_cache_keeps_the_python_path(tiny_llama):
    llm = LLM(str(tiny_llama), dtype="bfloat16", kv_cache_dtype="int8", kv_cache_memory=0.05)
    stack = llm.engine.runner.model.native_stack
    if stack is None:
        needs_packed_bf16()
    kv = llm.engine.runner.kv_caches
    assert stack is not None and not stack.serves(torch.zeros(1, 64, dtype=torch.bfloat16), kv)
    assert llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=4))[0].outputs[0].token_ids
