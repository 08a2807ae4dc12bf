"""The decode team (csrc/decode_team.cpp) against decoder_stack's per-op path, which the
native-stack tests pin to the Python layer loop: the team splits every phase across threads
differently, so equality here must be bitwise, for outputs, the residual and the KV cache."""

from __future__ import annotations

import pytest
import torch

from inferd import LLM, SamplingParams
from inferd.kernels.native_stack import NativeStack
from tests.kernels.conftest import needs_fast_tiles

BF16 = torch.bfloat16
CASES = [("tiny_llama", "int4"), ("tiny_llama", "int8"), ("tiny_qwen2", "fp8"),  # qwen2: qkv bias
         ("tiny_qwen2", "int4"), ("tiny_mistral", "int4"),
         ("tiny_qwen3", "int4"), ("tiny_gemma3", "int4"), ("tiny_gemma3", "int8")]  # qk-norm; Gemma's sandwich


def _llm(path, quantization: str) -> LLM:
    return LLM(str(path), dtype="bfloat16", quantization=quantization, quant_group_size=32,
               kv_cache_memory=0.05, enable_prefix_caching=False)


def _stack(llm: LLM, level: str | None) -> NativeStack:
    """The model's native stack; at a level without vector tile kernels int4 stays on torch's
    kernels and has none (skip, saying so)."""
    stack = llm.engine.runner.model.native_stack
    if stack is None:
        needs_fast_tiles(level)
    return stack


def _stack_call(stack: NativeStack, x, caches, cos, sin, slots, tables, lens, window: int | None, team_rows: int):
    """One step on copies; `window` for every layer (None: the layers' own), each rope table of
    the stack given `cos` / `sin` rotated by a different amount so that a mix-up shows."""
    x, caches = x.clone(), [c.clone() for c in caches]
    tables_n = len(stack.rope_names)
    cos_l = [cos.roll(i, 1).contiguous() for i in range(tables_n)]
    sin_l = [sin.roll(i, 1).contiguous() for i in range(tables_n)]
    windows = None if window is None else [window] * len(stack.windows)
    y = stack.run(x, cos_l, sin_l, caches, slots, tables, lens, team_rows, windows=windows)
    return y, x, caches


def _inputs(llm: LLM, rows: int, lens: list[int], same_sequence: bool, seed: int = 0):
    """Random activations and cache contents for one step: `lens` per real row; padding rows
    after them up to `rows`; either one sequence per row or all rows one sequence's chunk."""
    g = torch.Generator().manual_seed(seed)
    runner = llm.engine.runner
    caches = [torch.randn(c.shape, generator=g).to(BF16) for pair in runner.kv_caches for c in pair]
    num_blocks, block_size = caches[0].shape[:2]
    width = max(lens) // block_size + 1
    order = torch.randperm(num_blocks - 1, generator=g)[: width * len(lens)] + 1  # block 0: padding
    tables = order.view(len(lens), width)
    if same_sequence:
        tables = tables[:1].expand(len(lens), width).contiguous()
    slots = [int(tables[r, (n - 1) // block_size]) * block_size + (n - 1) % block_size for r, n in enumerate(lens)]
    slots += list(range(rows - len(lens)))  # the null block absorbs padding rows, as the runner does
    hidden = runner.model.config.hidden_size
    d = runner.model.config.head_dim
    x = torch.randn(rows, hidden, generator=g).to(BF16)
    angle = torch.rand(rows, d // 2, generator=g) * 6
    cos = torch.cat([angle.cos(), angle.cos()], dim=1).to(BF16)
    sin = torch.cat([-angle.sin(), angle.sin()], dim=1).to(BF16)
    return x, caches, cos, sin, torch.tensor(slots), tables, torch.tensor(lens)


@pytest.mark.parametrize("model,quantization", CASES)
def test_generation_with_the_team_is_bitwise_the_per_op_path(model, quantization, request, kernel_level):
    llm = _llm(request.getfixturevalue(model), quantization)
    stack = _stack(llm, kernel_level)
    hidden = llm.engine.runner.model.config.hidden_size
    assert stack.uses_team(torch.zeros(1, hidden, dtype=BF16)), "a quantized model's decode runs on the team"
    # Requests finishing at different steps: decode batches of 4, 3, 2 and 1 rows.
    prompts = [list(range(5, 5 + n)) for n in (3, 17, 40, 9)]
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True, logprobs=3) for m in (4, 8, 12, 16)]

    def run():
        return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in llm.generate(prompts, params)]

    team = run()
    stack.team_rows = 0
    assert not stack.uses_team(torch.zeros(1, hidden, dtype=BF16))
    assert run() == team


@pytest.mark.parametrize("rows,lens,same_sequence", [
    (1, [37], False),  # batch-1 decode
    (5, [9, 40, 17], False),  # three decodes and two padding rows
    (6, [21, 22, 23, 24, 25, 26], True),  # a chunk of one sequence: each row sees the rows before
    (8, [3, 70, 12, 5, 66, 31, 8, 49], False),  # the most rows the team takes
])
@pytest.mark.parametrize("window", [0, 10])
def test_team_step_is_bitwise_the_per_op_step(tiny_qwen2, rows, lens, same_sequence, window, kernel_level):
    llm = _llm(tiny_qwen2, "int4")
    stack = _stack(llm, kernel_level)
    args = _inputs(llm, rows, lens, same_sequence)
    assert stack.uses_team(args[0])
    per_op = _stack_call(stack, *args, window=window, team_rows=0)
    team = _stack_call(stack, *args, window=window, team_rows=8)
    assert torch.equal(team[0], per_op[0]) and torch.equal(team[1], per_op[1])
    assert all(torch.equal(a, b) for a, b in zip(team[2], per_op[2], strict=True))
    assert not torch.equal(team[2][0], args[1][0]), "the step wrote its keys into the cache"


@pytest.mark.parametrize("model,quantization", [("tiny_gemma3", "int4"), ("tiny_gemma3", "int8"),
                                                ("tiny_qwen3", "int8")])
@pytest.mark.parametrize("rows,lens,same_sequence", [(1, [37], False), (5, [9, 40, 17], False),
                                                     (6, [21, 22, 23, 24, 25, 26], True)])
def test_team_step_with_qk_norm_and_sandwich_is_bitwise_the_per_op_step(model, quantization, rows, lens,
                                                                         same_sequence, request, kernel_level):
    """Gemma 3 (fp32 1 + w norms, post-norms, gelu, per-layer windows and rope tables) and Qwen3."""
    llm = _llm(request.getfixturevalue(model), quantization)
    stack = _stack(llm, kernel_level)
    args = _inputs(llm, rows, lens, same_sequence)
    assert stack.uses_team(args[0])
    per_op = _stack_call(stack, *args, window=None, team_rows=0)
    team = _stack_call(stack, *args, window=None, team_rows=8)
    assert torch.equal(team[0], per_op[0]) and torch.equal(team[1], per_op[1])
    assert all(torch.equal(a, b) for a, b in zip(team[2], per_op[2], strict=True))


def test_team_takes_only_small_quantized_bf16_steps(tiny_llama, kernel_level):
    llm = _llm(tiny_llama, "int8")
    stack = _stack(llm, kernel_level)
    hidden = llm.engine.runner.model.config.hidden_size
    assert stack.uses_team(torch.zeros(8, hidden, dtype=BF16))
    assert not stack.uses_team(torch.zeros(9, hidden, dtype=BF16))  # prefill-sized: the per-op path
    stack.team_rows = 2
    assert not stack.uses_team(torch.zeros(3, hidden, dtype=BF16))
    float_llm = LLM(str(tiny_llama), dtype="float32", kv_cache_memory=0.05)
    float_stack = float_llm.engine.runner.model.native_stack
    assert not float_stack.uses_team(torch.zeros(1, hidden, dtype=BF16)), "oneDNN GEMMs keep their own threads"


def test_team_refuses_bad_slots_before_starting(tiny_llama, kernel_level):
    llm = _llm(tiny_llama, "int4")
    stack = _stack(llm, kernel_level)
    x, caches, cos, sin, slots, tables, lens = _inputs(llm, 2, [5, 9], False)
    slots[1] = caches[0].shape[0] * caches[0].shape[1]  # one past the last slot
    with pytest.raises(RuntimeError, match="outside the cache"):
        _stack_call(stack, x, caches, cos, sin, slots, tables, lens, window=0, team_rows=8)
    tables[0, 0] = caches[0].shape[0]
    slots[1] = 0
    with pytest.raises(RuntimeError, match="outside the cache"):
        _stack_call(stack, x, caches, cos, sin, slots, tables, lens, window=0, team_rows=8)


def test_the_team_switch_reads_the_environment(monkeypatch):
    from inferd.kernels import native_stack

    for value, rows in (("0", 0), ("off", 0), ("4", 4), (" 8 ", 8)):
        monkeypatch.setenv("INFERD_DECODE_TEAM", value)
        assert native_stack._team_rows() == rows
    monkeypatch.setenv("INFERD_DECODE_TEAM", "fast")
    with pytest.raises(ValueError, match="INFERD_DECODE_TEAM"):
        native_stack._team_rows()


def test_team_runs_int8_tiles_with_mins_bitwise(tiny_llama, kernel_level):
    """Asymmetric int8 (GGUF Q5_1/Q5_K, and fused parts widened to one format) in the int8 tiles
    with (scale, min) pairs: the team reads the mins as the op does."""
    from inferd.quant.formats import Int8Weight
    from inferd.quant.linear import Int8Linear

    llm = _llm(tiny_llama, "int8")
    model = llm.engine.runner.model
    needs_fast_tiles(kernel_level)  # the int8 tiles run only where the level has vector tile kernels
    layer = model.model.layers[0]
    g = torch.Generator().manual_seed(3)
    for owner, name in ((layer.self_attn, "o_proj"), (layer.mlp, "down_proj")):
        n, k = getattr(owner, name).out_features, getattr(owner, name).in_features
        q = torch.randint(0, 32, (n, k), generator=g, dtype=torch.int8)
        d = (torch.rand(n, k // 16, generator=g) * 0.01 + 1e-3).half().float()
        m = -(torch.rand(n, k // 16, generator=g) * 0.1 + 0.01).half().float()
        setattr(owner, name, Int8Linear(Int8Weight(q, d, 16, m)))
    stack = NativeStack.build(model, BF16)
    assert stack is not None and layer.mlp.down_proj.tiles.has_min
    args = _inputs(llm, 5, [9, 40, 17], False)
    assert stack.uses_team(args[0])
    per_op = _stack_call(stack, *args, window=0, team_rows=0)
    team = _stack_call(stack, *args, window=0, team_rows=8)
    assert torch.equal(team[0], per_op[0]) and torch.equal(team[1], per_op[1])
