"""Speculative decoding through the whole engine: greedy output identical to speculation off
(n-gram and draft model, batch mixes, preemption, prefix caching, stops and limits cut inside a
run of accepted proposals), logprobs from the target, and no trace of rejected K/V in the cache.
"""

from __future__ import annotations

import pytest
import torch

from inferd.llm import LLM
from inferd.sampling_params import SamplingParams
from inferd.spec import IncompatibleDraftModel

from .conftest import make_llm

# Repetitive text, so n-gram lookup finds matches and the tiny model's own loops get copied.
TEXT_PROMPTS = [
    "one two three four one two three four one two three four one two",
    "The cat sat on the mat. The cat sat on the mat. The cat sat on",
    "a b c d e f a b c d e f a b c",
    "hello world",
    "Repeat after me: red green blue, red green blue, red green",
    "x",
]
ID_PROMPTS = [[7, 8, 9, 10, 7, 8, 9, 10, 7, 8], [300, 301, 302, 303, 304, 305, 306],
              [42] * 12, list(range(1000, 1030))]
PROMPTS = TEXT_PROMPTS + ID_PROMPTS
GREEDY = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)

# LLM instances are expensive to build; each test builds the few it needs.


def token_ids(llm: LLM, prompts, params=GREEDY) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]


@pytest.fixture(scope="module")
def reference(tiny_llama) -> list[list[int]]:
    """Greedy outputs with speculation off, one prompt at a time (no batching effects)."""
    llm = make_llm(tiny_llama)
    return [token_ids(llm, [p])[0] for p in PROMPTS]


@pytest.mark.parametrize("adaptive", [False, True])
def test_ngram_greedy_identical_over_batch_mixes(tiny_llama, reference, adaptive):
    llm = make_llm(tiny_llama, speculative="ngram", num_speculative_tokens=4, adaptive=adaptive)
    assert token_ids(llm, PROMPTS) == reference
    order = [9, 0, 5, 2, 7, 1]  # another mix and order, with prefix-cache hits this time
    assert token_ids(llm, [PROMPTS[i] for i in order]) == [reference[i] for i in order]
    spec = llm.engine.speculator
    if not adaptive:
        assert spec.num_accepted_tokens > 0 and spec.num_draft_tokens > spec.num_accepted_tokens
        assert spec.num_spec_steps > 0 and 0 < spec.acceptance_rate < 1
        assert spec.mean_accepted_length > 1
    llm.engine.pool.check_integrity()


@pytest.mark.parametrize("draft", ["noisy_draft", "small_draft"])
def test_draft_greedy_identical(tiny_llama, reference, draft, request):
    path = request.getfixturevalue(draft)
    llm = make_llm(tiny_llama, speculative="draft", draft_model=str(path),
                   num_speculative_tokens=3, adaptive=False)
    assert token_ids(llm, PROMPTS) == reference
    spec = llm.engine.speculator
    assert spec.num_draft_tokens > 0
    if draft == "noisy_draft":
        assert 0 < spec.num_accepted_tokens < spec.num_draft_tokens
    # Per-sequence draft state is dropped at the next step once its sequence has left.
    spec.propose([])
    assert not spec.draft.states
    assert spec.draft.pool.num_free_blocks == spec.draft.pool.num_blocks - 1


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_preemption_with_a_small_cache(tiny_llama, noisy_draft, reference, method):
    # ~20 blocks of 16 tokens for 10 sequences of up to 70 tokens: sequences get preempted and
    # recomputed (partly from the prefix cache) while others speculate.
    block_bytes = 2 * 2 * 16 * 2 * 16 * 4  # K and V, 2 layers, 16 slots, 2 kv heads, dim 16, fp32
    kw = dict(speculative=method, num_speculative_tokens=4, adaptive=False,
              kv_cache_memory=20 * block_bytes / 2**30)
    if method == "draft":
        kw["draft_model"] = str(noisy_draft)
    llm = make_llm(tiny_llama, **kw)
    assert llm.engine.pool.num_blocks == 20
    assert token_ids(llm, PROMPTS) == reference
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.speculator.num_accepted_tokens > 0
    llm.engine.pool.check_integrity()


def record_verifications(llm: LLM) -> list[tuple]:
    """Wrap verify to record (sequence, outputs before, tokens returned) for each call."""
    calls: list[tuple] = []
    spec = llm.engine.speculator
    inner = spec.verify

    def verify(seq, proposals, result, row):
        before = seq.num_output_tokens
        tokens, lps = inner(seq, proposals, result, row)
        calls.append((seq, before, len(tokens)))
        return tokens, lps

    spec.verify = verify
    return calls


def cut_verifications(calls: list[tuple]) -> list[tuple]:
    """Verifications that returned more tokens than their sequence kept (cut by a stop/limit)."""
    return [c for c in calls if c[1] + c[2] > c[0].num_output_tokens]


def assert_same(want, got) -> None:
    for w, g in zip(want, got, strict=True):
        a, b = w.outputs[0], g.outputs[0]
        assert (b.token_ids, b.text, b.finish_reason, b.stop_reason) == \
            (a.token_ids, a.text, a.finish_reason, a.stop_reason)


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_stop_tokens_and_strings_inside_accepted_runs(tiny_llama, noisy_draft, method):
    off = make_llm(tiny_llama)
    on = make_llm(tiny_llama, speculative=method, num_speculative_tokens=4, adaptive=False,
                  draft_model=str(noisy_draft))
    calls = record_verifications(on)
    free = on.generate(PROMPTS, GREEDY)
    index = {o.request_id: i for i, o in enumerate(free)}
    # Stop on a token accepted in the middle of a run that appears nowhere earlier in the
    # output, so the same run comes back with tokens after the stop that must be dropped. (An
    # accepted n-gram proposal copies an earlier token, so only the draft model yields those.)
    prompts, cases = [], []
    for seq, before, n in calls:
        i = index[seq.request.request_id]
        out = free[i].outputs[0].token_ids
        if n >= 3 and out.index(out[before + 1]) == before + 1:
            prompts.append(PROMPTS[i])
            cases.append(SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True,
                                        stop_token_ids=[out[before + 1]]))
    if method == "draft":
        assert len(cases) >= 3
    for i, out in enumerate(free):  # and stop tokens picked at fixed places
        for idx in (3, 9, 17):
            prompts.append(PROMPTS[i])
            cases.append(SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True,
                                        stop_token_ids=[out.outputs[0].token_ids[idx]]))
    for o in free:  # and stop strings from the middle of each text
        text = o.outputs[0].text
        if len(text) > 8:
            stop = text[len(text) // 2:len(text) // 2 + 3]
            for include in (False, True):
                prompts.append(PROMPTS[index[o.request_id]])
                cases.append(SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True,
                                            stop=[stop], include_stop_str_in_output=include))
    calls.clear()
    assert_same(off.generate(prompts, cases), on.generate(prompts, cases))
    if method == "draft":
        assert any(c[0].finish_reason == "stop" for c in cut_verifications(calls))
    on.engine.pool.check_integrity()


def test_max_tokens_inside_accepted_runs(tiny_llama):
    off = make_llm(tiny_llama)
    on = make_llm(tiny_llama, speculative="ngram", num_speculative_tokens=4, adaptive=False)
    spec = on.engine.speculator
    # The speculator never proposes past max_tokens; lift that so the engine's own cut is tested.
    spec._cap = lambda seq: spec.k_max
    calls = record_verifications(on)
    for m in (1, 2, 5, 11):
        params = SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True)
        got = on.generate(PROMPTS, params)
        assert_same(off.generate(PROMPTS, params), got)
        assert all(len(o.outputs[0].token_ids) == m for o in got)
    assert any(c[0].finish_reason == "length" for c in cut_verifications(calls))


def assert_same_logprobs(want, got) -> None:
    for w, g in zip(want, got, strict=True):
        a, b = w.outputs[0], g.outputs[0]
        assert a.token_ids == b.token_ids
        assert len(a.logprobs) == len(b.logprobs) == len(a.token_ids)
        for tok, la, lb in zip(a.token_ids, a.logprobs, b.logprobs, strict=True):
            assert next(iter(la)) == next(iter(lb)) == tok  # the chosen token comes first
            assert la.keys() == lb.keys()
            for t in la:
                assert la[t] == pytest.approx(lb[t], abs=1e-4)
        assert a.cumulative_logprob == pytest.approx(b.cumulative_logprob, abs=1e-3)


def test_logprobs_come_from_the_target(tiny_llama):
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, logprobs=3)
    off = make_llm(tiny_llama).generate(PROMPTS, params)
    on = make_llm(tiny_llama, speculative="ngram", num_speculative_tokens=4, adaptive=False)
    assert_same_logprobs(off, on.generate(PROMPTS, params))
    assert on.engine.speculator.num_accepted_tokens > 0


def test_logprobs_with_a_draft_model(tiny_llama, noisy_draft):
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, logprobs=2)
    off = make_llm(tiny_llama).generate(PROMPTS[:5], params)
    on = make_llm(tiny_llama, speculative="draft", draft_model=str(noisy_draft),
                  num_speculative_tokens=3, adaptive=False)
    assert_same_logprobs(off, on.generate(PROMPTS[:5], params))


def test_rejected_positions_leave_no_trace(tiny_llama, small_draft):
    # The one-layer draft is almost always wrong: nearly every step writes K/V for rejected
    # positions. Cached blocks must hold exactly the K/V a plain run computes for those tokens,
    # and continuing from the outputs (through the prefix cache) must match a fresh engine.
    on = make_llm(tiny_llama, speculative="draft", draft_model=str(small_draft),
                  num_speculative_tokens=4, adaptive=False)
    off = make_llm(tiny_llama)
    outs = token_ids(on, PROMPTS)
    assert outs == token_ids(off, PROMPTS)
    spec = on.engine.speculator
    assert spec.num_draft_tokens - spec.num_accepted_tokens > 100
    shared = set(on.engine.pool.hash_to_block) & set(off.engine.pool.hash_to_block)
    assert len(shared) > 10
    for h in shared:
        b_on = on.engine.pool.hash_to_block[h].block_id
        b_off = off.engine.pool.hash_to_block[h].block_id
        for (k1, v1), (k2, v2) in zip(on.engine.runner.kv_caches, off.engine.runner.kv_caches,
                                      strict=True):
            torch.testing.assert_close(k1[b_on], k2[b_off], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v1[b_on], v2[b_off], atol=1e-5, rtol=1e-5)
    follow = [on.tokenizer.encode(p) + o[:25] if isinstance(p, str) else p + o[:25]
              for p, o in zip(PROMPTS, outs, strict=True)]
    params = SamplingParams(temperature=0.0, max_tokens=15, ignore_eos=True)
    again = on.generate(follow, params)
    assert sum(o.num_cached_tokens for o in again) > 0
    fresh = make_llm(tiny_llama, enable_prefix_caching=False)
    assert [o.outputs[0].token_ids for o in again] == token_ids(fresh, follow, params)


def test_penalties_and_min_tokens_stay_identical(tiny_llama):
    cases = [SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True,
                            repetition_penalty=1.3),
             SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, frequency_penalty=0.5,
                            presence_penalty=0.3),
             SamplingParams(temperature=0.0, max_tokens=30, min_tokens=10,
                            logit_bias={100: 2.0, 7: -1.0})]
    off = make_llm(tiny_llama)
    on = make_llm(tiny_llama, speculative="ngram", num_speculative_tokens=4, adaptive=False)
    for params in cases:
        assert token_ids(on, PROMPTS, params) == token_ids(off, PROMPTS, params)


def test_streaming_deltas_and_n_siblings(tiny_llama):
    on = make_llm(tiny_llama, speculative="ngram", num_speculative_tokens=4, adaptive=False)
    off = make_llm(tiny_llama)
    params = SamplingParams(temperature=0.0, max_tokens=25, ignore_eos=True, n=2)
    want = off.generate(PROMPTS[:4], params)
    eng = on.engine
    for i, p in enumerate(PROMPTS[:4]):
        eng.add_request(str(i), p, params)
    deltas: dict[tuple[str, int], list[int]] = {}
    texts: dict[tuple[str, int], str] = {}
    while eng.has_unfinished():
        for out in eng.step():
            for c in out.outputs:
                key = (out.request_id, c.index)
                deltas.setdefault(key, []).extend(c.delta_token_ids)
                texts[key] = texts.get(key, "") + c.delta_text
    for i, w in enumerate(want):
        for c in w.outputs:
            assert deltas[(str(i), c.index)] == c.token_ids
            assert texts[(str(i), c.index)] == c.text
    assert eng.speculator.num_accepted_tokens > 0


def test_incompatible_draft_model_is_refused(tiny_llama, vocab_target):
    with pytest.raises(IncompatibleDraftModel, match="vocabulary"):
        make_llm(tiny_llama, speculative="draft", draft_model=str(vocab_target))
    with pytest.raises(ValueError, match="draft model"):
        make_llm(tiny_llama, speculative="draft")
