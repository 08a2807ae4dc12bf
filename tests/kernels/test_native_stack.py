"""The native decoder stack (csrc/decoder_stack.cpp) against the Python layer loop it replaces:
same kernels in the same order, so greedy tokens and every logprob must be bitwise equal. Llama,
Qwen2 (qkv bias), Mistral, Qwen3 (qk-norm) and Gemma 3 (sandwich (1 + w) norms, qk-norm,
tanh-gelu, per-layer windows and rope tables) layers, float and quantized; quantized bf16 decode
steps run on the thread team (its own tests: test_decode_team.py)."""

from __future__ import annotations

import pytest
import torch

from inferd import LLM, SamplingParams
from inferd.kernels.native_stack import NativeStack
from tests.kernels.conftest import needs_fast_tiles, needs_packed_bf16

CASES = [("tiny_llama", "float32", "none"), ("tiny_llama", "bfloat16", "none"),
         ("tiny_qwen2", "bfloat16", "none"),  # qkv bias
         ("tiny_mistral", "bfloat16", "int4"), ("tiny_llama", "bfloat16", "int8"),
         ("tiny_qwen2", "bfloat16", "fp8"), ("tiny_qwen2", "bfloat16", "int4"),
         ("tiny_qwen3", "float32", "none"), ("tiny_qwen3", "bfloat16", "none"), ("tiny_qwen3", "bfloat16", "int8"),
         ("tiny_qwen3", "bfloat16", "int4"),
         ("tiny_gemma3", "float32", "none"), ("tiny_gemma3", "bfloat16", "none"),
         ("tiny_gemma3", "bfloat16", "int8"), ("tiny_gemma3", "bfloat16", "int4"), ("tiny_gemma3", "bfloat16", "fp8")]


def _gguf_like_blocks(model: torch.nn.Module) -> None:
    """Swap every layer's linears for what a Q4_K_M file keeps (quant/gguf_model.py): int4 g32
    with mins (Q4_K), int8 g16 with mins (Q5_K / Q6_K widened) and symmetric int8 g32 (Q8_0)."""
    from inferd.quant.formats import Int4Weight, Int8Weight, pack_int4
    from inferd.quant.linear import Int4Linear, Int8Linear

    g = torch.Generator().manual_seed(5)
    for i, layer in enumerate(model.model.layers):
        for owner, name in ((layer.self_attn, "qkv_proj"), (layer.self_attn, "o_proj"),
                            (layer.mlp, "gate_up_proj"), (layer.mlp, "down_proj")):
            n, k = getattr(owner, name).out_features, getattr(owner, name).in_features
            pick = (i * 4 + len(name)) % 3
            if pick == 0:
                q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
                d = (torch.rand(n, k // 32, generator=g) * 0.02 + 1e-3).half().float()
                m = -(torch.rand(n, k // 32, generator=g) * 0.1 + 0.01).half().float()
                setattr(owner, name, Int4Linear(Int4Weight(pack_int4(q), d, m, 32)))
                if getattr(owner, name).native_spec() is not None:
                    continue
                pick = 1  # a shape inferd's int4 tiles do not take at this size: int8 with mins instead
            if pick:
                group = 16 if pick == 1 else 32
                lo, hi = (0, 64) if pick == 1 else (-127, 128)
                q = torch.randint(lo, hi, (n, k), generator=g, dtype=torch.int8)
                d = (torch.rand(n, k // group, generator=g) * 0.005 + 1e-4).half().float()
                m = -(torch.rand(n, k // group, generator=g) * 0.1 + 0.01).half().float() if pick == 1 else None
                setattr(owner, name, Int8Linear(Int8Weight(q, d, group, m)))


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


@pytest.mark.parametrize("model", ["tiny_gemma3", "tiny_qwen3"])
def test_native_stack_runs_gguf_like_blocks_bitwise(model, request, kernel_level):
    """The block formats the bundled Gemma 3 Q4_K_M file keeps, mixed within each layer."""
    llm = LLM(str(request.getfixturevalue(model)), dtype="bfloat16", kv_cache_memory=0.05,
              max_num_batched_tokens=64, enable_prefix_caching=False)
    target = llm.engine.runner.model
    needs_fast_tiles(kernel_level)  # the block formats run on the tile kernels only
    _gguf_like_blocks(target)
    target.native_stack = NativeStack.build(target, torch.bfloat16)
    assert target.native_stack is not None
    prompts = [list(range(5, 5 + n)) for n in (3, 17, 40, 90)]
    native = _run(llm, prompts)
    target.native_stack = None
    assert _run(llm, prompts) == native


def test_native_stack_serves_qwen3_and_gemma3_structures(tiny_qwen3, tiny_gemma3):
    """What each model hands the stack: its structure bits, per-layer windows and rope tables."""
    from inferd.kernels import native_stack as ns

    qwen = LLM(str(tiny_qwen3), dtype="float32", kv_cache_memory=0.05).engine.runner.model.native_stack
    assert qwen is not None and qwen.structure == ns.QK_NORM and qwen.rope_names == ("global",)
    gemma = LLM(str(tiny_gemma3), dtype="float32", kv_cache_memory=0.05).engine.runner.model.native_stack
    assert gemma is not None and gemma.structure == ns.QK_NORM | ns.POST_NORMS | ns.GELU_TANH
    assert gemma.windows == [8, 8, 0, 8] and gemma.rope_names == ("local", "global")
    assert gemma.layer_rope == [0, 0, 1, 0]
    assert gemma.weights[0].dtype == torch.float32, "Gemma's norms reach the kernels as 1 + w in fp32"


def test_quantized_kv_cache_keeps_the_python_path(tiny_llama):
    llm = LLM(str(tiny_llama), dtype="bfloat16", kv_cache_dtype="int8", kv_cache_memory=0.05)
    stack = llm.engine.runner.model.native_stack
    if stack is None:
        needs_packed_bf16()
    kv = llm.engine.runner.kv_caches
    assert stack is not None and not stack.serves(torch.zeros(1, 64, dtype=torch.bfloat16), kv)
    assert llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=4))[0].outputs[0].token_ids
