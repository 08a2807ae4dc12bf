"""The runner changes speculation relies on: verification rows computed exactly as decode rows,
and the decode fast path taken only by a leading run of one-token queries."""

from __future__ import annotations

from inferd.sampling_params import SamplingParams

from .conftest import make_llm


def test_one_token_prefill_after_a_longer_one(tiny_llama):
    # A 17-token prompt whose first block is cached leaves one token to prefill; admitted in the
    # same step after a 40-token prompt, that one-token chunk must not make the 40-token chunk
    # take the single-query decode path (which computed only its first row).
    short = list(range(500, 517))
    long = list(range(2000, 2040))
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    llm = make_llm(tiny_llama)
    llm.generate([short], params)  # caches short's first block
    got = llm.generate([long, short], params)
    assert got[1].num_cached_tokens == 16
    fresh = make_llm(tiny_llama, enable_prefix_caching=False)
    want = fresh.generate([long, short], params)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in want]


def test_bf16_greedy_identical(tiny_llama, noisy_draft):
    # bf16 rounds differently in the per-sequence (prefill) attention path than in the batched
    # decode path; verification rows take the decode path, so bf16 output stays identical too.
    from .test_spec_engine import PROMPTS

    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    off = make_llm(tiny_llama, dtype="bfloat16").generate(PROMPTS, params)
    for kw in (dict(speculative="ngram"), dict(speculative="draft", draft_model=str(noisy_draft))):
        on = make_llm(tiny_llama, dtype="bfloat16", num_speculative_tokens=4, adaptive=False, **kw)
        got = on.generate(PROMPTS, params)
        assert on.engine.speculator.num_accepted_tokens > 0
        assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in off]
