"""The sampler's greedy choice: the first of tied maxima, as torch.argmax defines it."""

from __future__ import annotations

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
