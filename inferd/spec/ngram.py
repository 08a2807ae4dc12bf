"""N-gram (prompt-lookup) proposer: guesses a sequence's next tokens by copying what followed the
most recent earlier occurrence of its own last n tokens, trying n from ngram_max down to ngram_min.

Each sequence keeps an index from n-gram to the end of its most recent occurrence, extended as
tokens arrive, so a lookup costs O(ngram_max) whatever the sequence length. Plain Python, no model.
"""

from __future__ import annotations

from inferd.engine.sequence import Sequence


class NgramIndex:
    """Most recent occurrence of every n-gram (ngram_min <= n <= ngram_max) of one token list."""

    def __init__(self, ngram_min: int, ngram_max: int):
        self.ngram_min = ngram_min
        self.ngram_max = ngram_max
        # n-gram -> end (exclusive) of its latest occurrence that has a following token.
        self.last_end: dict[tuple[int, ...], int] = {}
        self.indexed_to = 0  # n-grams ending at or before this position are in last_end

    def _extend(self, tokens: list[int]) -> None:
        # Only occurrences ending before the last token are indexed: each then has at least one
        # token after it to propose, and the current suffix never matches itself.
        limit = len(tokens) - 1
        lo, hi = self.ngram_min, self.ngram_max
        for end in range(self.indexed_to + 1, limit + 1):
            for n in range(lo, min(hi, end) + 1):
                self.last_end[tuple(tokens[end - n:end])] = end
        self.indexed_to = max(self.indexed_to, limit)

    def propose(self, tokens: list[int], k: int) -> list[int]:
        """Up to k tokens continuing `tokens` (empty when no n-gram of the suffix recurs)."""
        if k <= 0:
            return []
        self._extend(tokens)
        size = len(tokens)
        for n in range(min(self.ngram_max, size), self.ngram_min - 1, -1):
            end = self.last_end.get(tuple(tokens[size - n:]))
            if end is None:
                continue
            out: list[int] = []
            for j in range(k):
                # Past the end of the known text the copy continues into its own proposals,
                # which is what a repeating loop (period shorter than k) does next.
                src = end + j
                out.append(tokens[src] if src < size else out[src - size])
            return out
        return []


class NgramProposer:
    """Per-sequence n-gram indexes; the speculator asks for proposals and releases finished ones."""

    def __init__(self, ngram_min: int, ngram_max: int):
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {ngram_min}..{ngram_max}")
        self.ngram_min = ngram_min
        self.ngram_max = ngram_max
        self._indexes: dict[int, NgramIndex] = {}

    def propose(self, seq: Sequence, k: int) -> list[int]:
        index = self._indexes.get(seq.seq_id)
        if index is None:
            index = self._indexes[seq.seq_id] = NgramIndex(self.ngram_min, self.ngram_max)
        return index.propose(seq.token_ids, k)

    def release(self, seq_id: int) -> None:
        self._indexes.pop(seq_id, None)

    def tracked(self) -> set[int]:
        return set(self._indexes)
