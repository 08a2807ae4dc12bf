"""N-gram proposer: longest match first, most recent occurrence, copying through loops."""

from __future__ import annotations

import pytest

from inferd.spec.ngram import NgramIndex, NgramProposer


def test_prefers_longest_match_then_most_recent_occurrence():
    idx = NgramIndex(1, 3)
    # "7" recurs at the end; the 3-gram [5, 6, 7] occurred once (followed by 1, 2), while the
    # 1-gram [7] occurred later followed by 9: the longer match wins.
    tokens = [5, 6, 7, 1, 2, 0, 7, 9, 3, 5, 6, 7]
    assert idx.propose(tokens, 2) == [1, 2]
    # Only a 1-gram matches: the most recent earlier occurrence of 3 is followed by 4.
    idx = NgramIndex(1, 3)
    assert idx.propose([3, 8, 8, 3, 4, 0, 3], 1) == [4]


def test_no_match_and_limits():
    idx = NgramIndex(2, 4)
    assert idx.propose([1, 2, 3, 4], 3) == []  # no 2-gram of the suffix recurs
    assert idx.propose([1, 2, 3, 4], 0) == []
    assert NgramIndex(1, 2).propose([9], 3) == []  # nothing before the suffix


def test_copy_continues_through_a_short_loop():
    # Period 2: the match ends one token before the end, so proposals continue the loop.
    assert NgramIndex(1, 4).propose([4, 1, 2, 1, 2, 1, 2], 5) == [1, 2, 1, 2, 1]


def test_index_is_incremental():
    idx = NgramIndex(1, 3)
    tokens = [1, 2, 3]
    assert idx.propose(tokens, 2) == []
    tokens += [4, 1, 2]
    assert idx.propose(tokens, 2) == [3, 4]
    tokens += [3, 9, 1, 2, 3]
    assert idx.propose(tokens, 2) == [9, 1]  # the newest occurrence of [1, 2, 3] is followed by 9


def test_proposer_validates_sizes():
    with pytest.raises(ValueError):
        NgramProposer(0, 2)
    with pytest.raises(ValueError):
        NgramProposer(3, 2)
