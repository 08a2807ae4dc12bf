"""The sampler's greedy choice: the first of tied maxima, as torch.argmax defines it."""

from __future__ import annotations

import pytest
import torch

from inferd.engine.sampler import sample
from inferd.engine.sequence import Request, Sequence
from inferd.sampling_params import SamplingParams


def _seq(i: int) -> Sequence:
    return Sequence(i, Request(f"r{i}", None, [1, 2, 3], SamplingParams(temperature=0)), 0)


def test_greedy_rows_pick_the_first_of_tied_maxima():
    logits = torch.randn(3, 49152)
    logits[0, [7, 100]] = 40.0  # a tie: the lower index wins
    logits[1, 49151] = 40.0
    logits[2, [0, 1]] = float("inf")
    result = sample(logits, [_seq(i) for i in range(3)], frozenset())
    assert result.token_ids == [7, 49151, 0] == logits.argmax(-1).tolist()


def _cut_reference(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                   min_p: float) -> torch.Tensor:
    """transformers' warpers in its order: temperature, top-k, top-p, min-p."""
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    x = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        x = TopKLogitsWarper(top_k)(None, x)
    if top_p < 1.0:
        x = TopPLogitsWarper(top_p)(None, x)
    if min_p:
        x = MinPLogitsWarper(min_p)(None, x)
    return x


@pytest.mark.parametrize("scale", [0.5, 4.0])  # a flat distribution (wide nucleus) and a peaked one
def test_top_k_top_p_min_p_keep_what_transformers_keeps(scale):
    """Rows mixing every combination, some whose nucleus spans far more than the candidates the
    fast path looks at first: each row keeps exactly the tokens transformers' warpers keep."""
    from inferd.engine.sampler import filter_logits

    torch.manual_seed(0)
    vocab = 3000
    settings = [(1.0, 0, 0.9, 0.0), (0.7, 50, 1.0, 0.0), (1.3, 40, 0.5, 0.0), (1.0, 0, 0.3, 0.05),
                (0.9, 0, 1.0, 0.1), (1.0, 2999, 0.95, 0.0), (1.0, 1, 1.0, 0.0), (1.0, 0, 0.01, 0.0)]
    logits = torch.randn(len(settings), vocab) * scale
    seqs = [Sequence(i, Request(f"r{i}", None, [1], SamplingParams(temperature=t, top_k=k, top_p=p,
                                                                       min_p=m)), 0)
            for i, (t, k, p, m) in enumerate(settings)]
    got = filter_logits(logits, seqs)
    for row, (t, k, p, m) in enumerate(settings):
        want = _cut_reference(logits[row:row + 1], t, k, p, m)[0]
        kept, want_kept = torch.isfinite(got[row]), torch.isfinite(want)
        assert torch.equal(kept, want_kept), (settings[row], int(kept.sum()), int(want_kept.sum()))
        torch.testing.assert_close(got[row][kept], want[want_kept])


def test_top_p_is_measured_after_top_k():
    """Top-p renormalises over what top-k kept (transformers, vLLM): with probabilities
    (0.5, 0.3, 0.2), top_k=2 leaves (0.625, 0.375), and top_p=0.55 is reached by the first token
    alone; measured over the whole vocabulary (0.5 < 0.55) the second would stay too."""
    from inferd.engine.sampler import filter_logits

    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    seq = Sequence(0, Request("r", None, [1], SamplingParams(temperature=1.0, top_k=2, top_p=0.55)), 0)
    assert torch.isfinite(filter_logits(logits, [seq])[0]).tolist() == [True, False, False]
