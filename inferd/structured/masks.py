"""GrammarMasker: a step's token masks, computed on a worker thread while the model runs.

The masks of step t depend only on tokens emitted up to step t-1, all known before the forward
starts, so the runner starts them first and collects them after the forward: llguidance drops
the GIL while it computes, and torch's kernels do too, so the two overlap. Speculated sequences
get one mask per verified position (their proposals rolled through the grammar and back).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from inferd.engine.sequence import Sequence


@dataclass
class StepMasks:
    """Boolean allowed-token masks of one step: `rows` index the sampler's batch, `allowed`
    holds one row for each; `spec` maps seq_id -> [k+1, V] masks of its verification rows."""

    rows: list[int] = field(default_factory=list)
    allowed: torch.Tensor | None = None
    spec: dict[int, torch.Tensor] = field(default_factory=dict)


class GrammarMasker:
    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self._pool: ThreadPoolExecutor | None = None

    def start(self, seqs: list[Sequence], spec_tokens: dict[int, list[int]] | None
              ) -> Future[StepMasks] | None:
        """Begin computing the masks of the grammar-constrained rows of `seqs` (the sampler's
        rows, in order); None when no row has a grammar. spec_tokens: the proposals each
        speculated sequence verifies this step (already cut to what the scheduler ran)."""
        # (getattr: the draft model's runner samples DraftSeqs, which follow no grammar)
        rows = [i for i, s in enumerate(seqs) if getattr(s, "grammar", None) is not None]
        if not rows:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inferd-grammar")
        jobs = [(i, seqs[i], list((spec_tokens or {}).get(seqs[i].seq_id, ()))) for i in rows]
        return self._pool.submit(self._compute, jobs)

    def _compute(self, jobs: list[tuple[int, Sequence, list[int]]]) -> StepMasks:
        total = sum(1 + len(drafts) for _, _, drafts in jobs)
        bitmask = torch.empty((total, self.words), dtype=torch.int32)
        starts = []
        at = 0
        for _, seq, drafts in jobs:
            seq.grammar.fill(bitmask, at, drafts)
            starts.append(at)
            at += 1 + len(drafts)
        allowed = unpack(bitmask, self.vocab_size)
        out = StepMasks(rows=[i for i, _, _ in jobs], allowed=allowed[starts])
        for (_, seq, drafts), s in zip(jobs, starts, strict=True):
            if drafts:
                out.spec[seq.seq_id] = allowed[s:s + 1 + len(drafts)]
        return out


def unpack(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int32 bitmask [R, W] (bit t%32 of word t//32 = token t) -> bool [R, vocab_size]."""
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")
    return torch.from_numpy(bits[:, :vocab_size]).bool()


def mask_logits(scores: torch.Tensor, allowed: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """scores with disallowed tokens at -inf. A row left with nothing (min_tokens or logit_bias
    banned every token the grammar allows) takes `fallback` (raw logits) under the grammar's mask
    instead: the grammar wins, so the output still parses."""
    out = scores.masked_fill(~allowed, float("-inf"))
    empty = torch.isneginf(out).all(dim=-1)
    if bool(empty.any()):
        out[empty] = fallback[empty].masked_fill(~allowed[empty], float("-inf"))
    return out
