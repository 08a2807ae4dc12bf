"""Verification on synthetic logits: greedy agreement, per-position penalties, and rejection
sampling that reproduces the target distribution exactly (with a control that it can fail)."""

from __future__ import annotations

from collections import Counter

import torch

from inferd.engine.sampler import make_generator
from inferd.engine.sequence import Request, Sequence
from inferd.sampling_params import SamplingParams
from inferd.spec.verify import verify_proposals

from .chisq import chi_square, critical

EOS = frozenset({0})


def make_seq(params: SamplingParams, prompt=(5, 6, 7), seed: int = 0) -> Sequence:
    seq = Sequence(0, Request("r", None, list(prompt), params), 0)
    seq.generator = None if params.greedy else make_generator(seed, torch.device("cpu"))
    return seq


def rows(*values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_greedy_accepts_until_first_disagreement():
    seq = make_seq(SamplingParams(temperature=0.0))
    logits = rows([0, 0, 5, 0, 0], [0, 0, 0, 5, 0], [0, 0, 0, 0, 5])
    assert verify_proposals(seq, [2, 3], logits, 2, EOS) == [2, 3, 4]  # all accepted + bonus
    assert verify_proposals(seq, [2, 1], logits, 2, EOS) == [2, 3]  # second rejected: corrected
    assert verify_proposals(seq, [1, 3], logits, 2, EOS) == [2]  # first rejected
    assert verify_proposals(seq, [], logits[:1], 2, EOS) == [2]


def test_penalties_use_the_history_each_position_would_have():
    # Row 1 prefers 3 over 4 only slightly; once proposal 3 is in the history, repetition
    # penalty 2 halves its logit, so the target's choice at row 1 is 4.
    seq = make_seq(SamplingParams(temperature=0.0, repetition_penalty=2.0), prompt=(1,))
    logits = rows([0, 0, 0, 5, 0], [0, 0, 0, 2.0, 1.9], [0, 1, 0, 0, 0])
    assert verify_proposals(seq, [3, 3], logits, 3, EOS) == [3, 4]
    # min_tokens: EOS (0) is masked while fewer than min_tokens outputs exist at that position.
    seq = make_seq(SamplingParams(temperature=0.0, min_tokens=2), prompt=(1,))
    seq.append_token(4)  # one output so far: EOS is banned at row 0, allowed from row 1
    logits = rows([5, 0, 0, 4, 0], [5, 0, 0, 4, 0])
    assert verify_proposals(seq, [3], logits, 3, EOS) == [3, 0]


def sample_many(seq_params: SamplingParams, logits: torch.Tensor, proposals: list[int],
                draft_probs: torch.Tensor | None, n: int) -> tuple[Counter, Counter]:
    """Counts of the first emitted token, and of the second given the first was proposals[0]."""
    seq = make_seq(seq_params, seed=1234)
    q0 = torch.softmax(logits[0] / seq_params.temperature, dim=-1)
    first, second = Counter(), Counter()
    for _ in range(n):
        t0 = int(torch.multinomial(q0, 1, generator=seq.generator)[0])  # the runner's draw
        out = verify_proposals(seq, proposals, logits, t0, EOS, draft_probs)
        first[out[0]] += 1
        if out[0] == proposals[0]:
            second[out[1]] += 1
    return first, second


def exact(logits_row: torch.Tensor, temperature: float) -> dict[int, float]:
    p = torch.softmax(logits_row / temperature, dim=-1).tolist()
    return dict(enumerate(p))


LOGITS = rows([1.0, 2.0, 0.5, 1.5, 0.0, -1.0], [0.2, -0.5, 2.5, 1.0, 1.0, 0.0],
              [0.0, 0.0, 1.0, 0.0, 2.0, 0.0])


def test_one_hot_proposals_keep_the_target_distribution():
    params = SamplingParams(temperature=0.8)
    first, second = sample_many(params, LOGITS, [1, 2], None, 6000)
    for counts, row in ((first, 0), (second, 1)):
        stat, df = chi_square(counts, exact(LOGITS[row], 0.8))
        assert stat < critical(df), (row, stat, df)


def test_sampled_draft_proposals_keep_the_target_distribution():
    params = SamplingParams(temperature=1.0)
    draft = torch.tensor([[0.1, 0.5, 0.1, 0.1, 0.1, 0.1], [0.3, 0.1, 0.2, 0.2, 0.1, 0.1]])
    gen = make_generator(99, torch.device("cpu"))
    seq = make_seq(params, seed=7)
    first, second = Counter(), Counter()
    accepted = 0
    for _ in range(6000):
        props = [int(torch.multinomial(draft[i], 1, generator=gen)[0]) for i in range(2)]
        out = verify_proposals(seq, props, LOGITS, -1, EOS, draft)
        accepted += len(out) - 1
        first[out[0]] += 1
        if out[0] == props[0] and len(out) > 1:
            # Row 1's logits are fixed here, so token 2 given any accepted token 0 follows row 1.
            second[out[1]] += 1
    assert 0.1 < accepted / 12000 < 0.9  # both the accept and the residual paths ran
    for counts, row in ((first, 0), (second, 1)):
        stat, df = chi_square(counts, exact(LOGITS[row], 1.0))
        assert stat < critical(df), (row, stat, df)


def test_the_check_detects_a_biased_verifier():
    # Claiming the deterministic proposal had draft probability 0.5 doubles its acceptance:
    # the output is no longer the target's distribution, and the chi-square test says so.
    params = SamplingParams(temperature=1.0)
    wrong = torch.full((2, 6), 0.1)
    wrong[0, 3] = 0.5
    first, _ = sample_many(params, LOGITS, [3, 2], wrong, 6000)
    stat, df = chi_square(first, exact(LOGITS[0], 1.0))
    assert stat > critical(df)
