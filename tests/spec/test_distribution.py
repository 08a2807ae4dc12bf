"""Sampling with speculation keeps the target's distribution exactly (end to end, statistically).

A target with a 24-token vocabulary lets us compute, with HF transformers, the exact marginal
distributions of the 2nd and 3rd output tokens (the first two that speculation decides: the 1st
comes from the prefill step). Thousands of seeded requests through the engine with n-gram or draft
speculation must match them (chi-square at the 0.1% level); seeds are fixed, so the test is
deterministic.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from inferd.sampling_params import SamplingParams
from inferd.spec.ngram import NgramIndex

from .chisq import chi_square, critical, total_variation
from .conftest import TINY_VOCAB, make_llm

TEMPERATURE = 0.4  # peaked enough that proposals are often right, so both outcomes are tested
NUM_REQUESTS = 2500
WAVE = 250


@pytest.fixture(scope="module")
def hf_target(vocab_target):
    import transformers

    return transformers.LlamaForCausalLM.from_pretrained(str(vocab_target)).eval()


def next_probs(model, seqs: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor(seqs)).logits[:, -1].float()
    return torch.softmax(logits / TEMPERATURE, dim=-1)


@pytest.fixture(scope="module")
def prompt_and_exact(hf_target):
    """A prompt whose n-gram proposals are often accepted, and exact marginals of tokens 2, 3."""
    best = None
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        prompt = torch.randint(3, TINY_VOCAB, (4,), generator=g).tolist()
        for _ in range(16):  # the model's own greedy continuation: loops the n-gram can copy
            prompt.append(int(next_probs(hf_target, [prompt])[0].argmax()))
        q1 = next_probs(hf_target, [prompt])[0]
        q2 = next_probs(hf_target, [prompt + [t] for t in range(TINY_VOCAB)])
        accept = sum(float(q1[t] * q2[t, p[0]]) for t in range(TINY_VOCAB)
                     if (p := NgramIndex(1, 4).propose(prompt + [t], 1)))
        if best is None or abs(accept - 0.4) < abs(best[1] - 0.4):
            best = (prompt, accept, q1, q2)
    prompt, accept, q1, q2 = best
    assert 0.15 < accept < 0.85, accept  # both acceptance and rejection are common
    pairs = [[a, b] for a in range(TINY_VOCAB) for b in range(TINY_VOCAB)]
    q3 = next_probs(hf_target, [prompt + p for p in pairs]).view(TINY_VOCAB, TINY_VOCAB, -1)
    joint12 = q1[:, None] * q2  # P(t1, t2)
    second = joint12.sum(0)
    third = (joint12[:, :, None] * q3).sum((0, 1))
    return prompt, dict(enumerate(second.tolist())), dict(enumerate(third.tolist()))


def sample_tokens(llm, prompt: list[int]) -> tuple[Counter, Counter]:
    outs = []
    # In waves that the step's token budget admits at once: speculation never takes budget
    # from waiting prefills, so one huge queue would leave most requests unspeculated.
    for start in range(0, NUM_REQUESTS, WAVE):
        params = [SamplingParams(temperature=TEMPERATURE, max_tokens=4, ignore_eos=True, seed=i)
                  for i in range(start, min(start + WAVE, NUM_REQUESTS))]
        outs += llm.generate([prompt] * len(params), params)
    second = Counter(o.outputs[0].token_ids[1] for o in outs)
    third = Counter(o.outputs[0].token_ids[2] for o in outs)
    return second, third


@pytest.mark.parametrize("method", ["off", "ngram", "draft"])
def test_sampled_tokens_follow_the_target_distribution(vocab_target, vocab_draft, prompt_and_exact,
                                                       method):
    prompt, exact2, exact3 = prompt_and_exact
    kw = dict(enable_prefix_caching=False, max_num_seqs=WAVE, max_num_batched_tokens=8192)
    if method != "off":
        kw.update(speculative=method, num_speculative_tokens=3, adaptive=False,
                  draft_model=str(vocab_draft))
    llm = make_llm(vocab_target, **kw)
    second, third = sample_tokens(llm, prompt)
    spec = llm.engine.speculator
    if spec is not None:
        # Most requests had proposals verified (an n-gram needs a match), both outcomes common.
        assert spec.num_spec_steps > NUM_REQUESTS * 0.7
        assert 0.15 < spec.acceptance_rate < 0.9, spec.acceptance_rate
    for counts, exact in ((second, exact2), (third, exact3)):
        stat, df = chi_square(counts, exact)
        assert stat < critical(df), (method, stat, df, counts.most_common(5))
        assert total_variation(counts, exact) < 0.06
