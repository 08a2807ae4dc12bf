"""End-to-end engine behaviour on a tiny random-weight Llama (fast) and the bundled model.

Every test compares against a run that cannot be wrong in the same way: the same request
alone, with the cache off, or with a big pool.
"""

from __future__ import annotations

import asyncio

import pytest

from inferd import LLM, SamplingParams
from inferd.config import EngineConfig
from inferd.engine.async_engine import AsyncEngine
from inferd.llm import build_engine_config

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def prompts_for(llm: LLM, n: int, base_len: int = 20) -> list[list[int]]:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron".split()
    out = []
    for i in range(n):
        text = " ".join(words[(i + j) % len(words)] for j in range(base_len + 3 * (i % 7)))
        out.append(llm.tokenizer.encode(f"Story {i}: {text}"))
    return out


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return LLM(str(tiny_llama), dtype="float32", kv_cache_memory=0.05)


def alone(llm: LLM, prompts, params) -> list[list[int]]:
    return [llm.generate([p], params)[0].outputs[0].token_ids for p in prompts]


def test_generate_returns_one_result_per_prompt_in_order(tiny):
    prompts = prompts_for(tiny, 5)
    outs = tiny.generate(prompts, GREEDY)
    assert [o.prompt_token_ids for o in outs] == prompts
    assert all(len(o.outputs[0].token_ids) == 24 and o.outputs[0].finish_reason == "length" for o in outs)
    assert tiny.engine.pool.usage == 0.0
    tiny.engine.pool.check_integrity()


def test_string_prompts_and_chat(tiny):
    out = tiny.generate("Hello world", SamplingParams(temperature=0, max_tokens=5))[0]
    assert out.prompt == "Hello world" and len(out.outputs[0].token_ids) <= 5
    outs = tiny.chat([[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]],
                     SamplingParams(temperature=0, max_tokens=3))
    assert len(outs) == 2


def test_preemption_keeps_every_output_identical(tiny_llama, tiny):
    prompts = prompts_for(tiny, 12)
    expected = alone(tiny, prompts, GREEDY)
    # A pool of 24 blocks of 16 tokens cannot hold 12 sequences of ~50 tokens at once.
    small = LLM(str(tiny_llama), dtype="float32", kv_cache_memory=24 * 2 * 2 * 16 * 2 * 16 * 4 / 2**30)
    assert small.engine.pool.num_blocks == 24
    outs = small.generate(prompts, GREEDY)
    assert small.engine.scheduler.num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outs] == expected
    small.engine.pool.check_integrity()
    assert small.engine.pool.usage == 0.0


def test_prefix_cache_on_and_off_give_identical_outputs(tiny_llama, tiny):
    system = tiny.tokenizer.encode("You are a careful assistant. " * 12)
    prompts = [system + tiny.tokenizer.encode(f" Question {i}: what is {i} plus {i}?") for i in range(6)]
    off = LLM(str(tiny_llama), dtype="float32", kv_cache_memory=0.05, enable_prefix_caching=False)
    expected = [o.outputs[0].token_ids for o in off.generate(prompts, GREEDY)]
    on = LLM(str(tiny_llama), dtype="float32", kv_cache_memory=0.05)
    first = on.generate(prompts[:1], GREEDY)
    rest = on.generate(prompts[1:], GREEDY)
    assert [o.outputs[0].token_ids for o in first + rest] == expected
    assert on.engine.pool.hits >= 5 * (len(system) // 16) * 16
    assert all(o.num_cached_tokens > 0 for o in rest)
    assert off.engine.pool.hits == 0


def test_chunked_prefill_matches_unchunked(tiny_llama, tiny):
    prompt = prompts_for(tiny, 1, base_len=150)[0]
    expected = alone(tiny, [prompt], GREEDY)[0]
    chunked = LLM(str(tiny_llama), dtype="float32", kv_cache_memory=0.05, max_num_batched_tokens=32)
    assert chunked.generate([prompt], GREEDY)[0].outputs[0].token_ids == expected


def test_seeded_sampling_is_independent_of_batch_companions(tiny):
    prompts = prompts_for(tiny, 8)
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=16, seed=1234, ignore_eos=True)
    solo = tiny.generate([prompts[3]], params)[0].outputs[0].token_ids
    mixed = [params if i == 3 else SamplingParams(temperature=0.7, max_tokens=10 + i) for i in range(8)]
    batched = tiny.generate(prompts, mixed)[3].outputs[0].token_ids
    assert solo == batched
    other = tiny.generate([prompts[3]], SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=16,
                                                       seed=99, ignore_eos=True))[0].outputs[0].token_ids
    assert other != solo


def test_seeds_equal_modulo_2_32_sample_differently(tiny):
    """Torch's CPU generator keeps 32 bits of a seed: 5 and 2^32 + 5 gave the same text, and sample
    1 of seed 5 was sample 0 of seed 6."""
    prompt = prompts_for(tiny, 1)[0]

    def sample(seed: int, n: int = 1) -> list[list[int]]:
        params = SamplingParams(temperature=1.0, max_tokens=12, seed=seed, n=n, ignore_eos=True)
        return [o.token_ids for o in tiny.generate([prompt], params)[0].outputs]

    assert sample(5) == sample(5)  # still reproducible
    assert sample(5) != sample(5 + 2**32)
    assert sample(5) != sample(-(2**63) + 5)
    assert sample(5, n=2)[1] != sample(6)[0]


def test_overflowing_parameters_do_not_fail_the_batch(tiny):
    """repetition_penalty=5e-324 turns logits into inf, so that row has no distribution to sample:
    it must not raise inside the batch (which failed every request in flight)."""
    prompts = prompts_for(tiny, 2)
    odd = SamplingParams(temperature=1.0, repetition_penalty=5e-324, max_tokens=6, ignore_eos=True, seed=1)
    normal = SamplingParams(temperature=1.0, max_tokens=6, ignore_eos=True, seed=2)
    outs = tiny.generate(prompts, [odd, normal])
    assert [len(o.outputs[0].token_ids) for o in outs] == [6, 6]
    alone = tiny.generate([prompts[1]], normal)[0].outputs[0].token_ids
    assert outs[1].outputs[0].token_ids == alone  # the neighbour is unaffected


def test_stop_string_spanning_tokens_is_caught_and_not_emitted(tiny):
    prompt = prompts_for(tiny, 1)[0]
    full = tiny.generate([prompt], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))[0].outputs[0]
    text = full.text
    stop = text[10:16]  # a piece that most likely spans a token boundary
    out = tiny.generate([prompt], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop=[stop]))[0]
    c = out.outputs[0]
    assert c.finish_reason == "stop" and c.stop_reason == stop
    assert c.text == text[:text.index(stop)]
    assert stop not in c.text


def test_stop_token_ids_max_tokens_and_min_tokens(tiny):
    prompt = prompts_for(tiny, 1)[0]
    ref = tiny.generate([prompt], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0]
    target = ref.token_ids[5]
    out = tiny.generate([prompt], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[target]))[0]
    first = ref.token_ids.index(target)
    assert out.outputs[0].token_ids == ref.token_ids[:first + 1]
    assert out.outputs[0].stop_reason == target
    later = tiny.generate([prompt], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[target],
                                                   min_tokens=first + 2))[0].outputs[0]
    assert len(later.token_ids) > first + 1
    assert tiny.generate([prompt], SamplingParams(temperature=0, max_tokens=7))[0].outputs[0].finish_reason \
        in ("length", "stop")


def test_logprobs_with_top_alternatives(tiny):
    out = tiny.generate([prompts_for(tiny, 1)[0]],
                        SamplingParams(temperature=0, max_tokens=5, logprobs=3))[0].outputs[0]
    assert len(out.logprobs) == len(out.token_ids)
    for tok, entry in zip(out.token_ids, out.logprobs, strict=True):
        assert tok in entry and 3 <= len(entry) <= 4
        assert entry[tok] == max(entry.values())  # greedy picks the most likely token
    assert out.cumulative_logprob == pytest.approx(sum(e[t] for t, e in zip(out.token_ids, out.logprobs,
                                                                            strict=True)))


def test_n_samples_share_the_prompt_blocks(tiny):
    prompt = prompts_for(tiny, 1, base_len=80)[0]
    hits_before = tiny.engine.pool.hits
    out = tiny.generate([prompt], SamplingParams(temperature=1.0, n=4, max_tokens=8, seed=7))[0]
    assert len(out.outputs) == 4 and [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    full_blocks = (len(prompt) - 1) // 16 * 16
    assert tiny.engine.pool.hits - hits_before >= 3 * full_blocks


def test_streamed_deltas_equal_the_full_decode(tiny):
    engine = tiny.engine
    prompt = prompts_for(tiny, 1)[0]
    engine.add_request("stream", prompt, SamplingParams(temperature=0.8, seed=3, max_tokens=40))
    pieces, final = [], None
    while engine.has_unfinished():
        for out in engine.step():
            pieces.append(out.outputs[0].delta_text)
            final = out
    assert "".join(pieces) == final.outputs[0].text
    assert final.outputs[0].text == tiny.tokenizer.decode(final.outputs[0].token_ids)


def test_prompt_too_long_is_refused_clearly(tiny):
    from inferd.engine.engine import PromptTooLong

    with pytest.raises(PromptTooLong, match="maximum context length is 512"):
        tiny.generate([[5] * 500], SamplingParams(max_tokens=20))


def test_unknown_llm_keyword_is_rejected():
    with pytest.raises(TypeError, match="bogus"):
        build_engine_config("x", bogus=1)


def test_async_engine_streams_and_abort_frees_blocks(tiny_llama):
    config: EngineConfig = build_engine_config(str(tiny_llama), dtype="float32", kv_cache_memory=0.05)
    engine = AsyncEngine(config)

    async def main():
        final = await engine.generate("a", [1, 2, 3, 4, 5], SamplingParams(temperature=0, max_tokens=6))
        assert final.finished and len(final.outputs[0].token_ids) == 6
        streams = [await engine.add_request(f"s{i}", [1, 2, 3, 4, 5 + i],
                                            SamplingParams(max_tokens=400, ignore_eos=True)) for i in range(8)]
        for s in streams:
            await s.__anext__()
            await s.aclose()  # the client went away
        for _ in range(100):
            await asyncio.sleep(0.02)
            if engine.stats().num_running == 0 and engine.engine.pool.usage == 0.0:
                break
        assert engine.stats().num_running == 0 and engine.engine.pool.usage == 0.0
        engine.engine.pool.check_integrity()

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()


def test_a_request_finishing_in_its_prefill_step_still_caches_its_prompt(tiny):
    prompt = prompts_for(tiny, 1, base_len=60)[0]
    tiny.generate([prompt], SamplingParams(temperature=0, max_tokens=1))
    out = tiny.generate([prompt + [7, 8, 9]], SamplingParams(temperature=0, max_tokens=1))[0]
    assert out.num_cached_tokens >= (len(prompt) // 16) * 16
