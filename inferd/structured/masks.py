"""GrammarMasker: a step's token masks, computed on a worker thread while the model runs.

The masks of step t depend only on tokens emitted up to step t-1, all known before the forward
starts, so the runner starts them first and collects them after the forward: llguidance drops
the GIL while it computes, and torch's kernels do too, so the two overlap. All rows are computed
in one native call (llguidance's executor), so the worker takes the GIL back once per step, not
once per sequence. Speculated sequences get one mask per verified position (their proposals
rolled through the grammar and back by llguidance).
Masks travel as additive biases (0 or -inf): adding one costs a single pass over the logits,
where torch's boolean masked_fill over a 32 x 49k batch took 30x longer on this CPU.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import llguidance
import numpy as np
import torch

if TYPE_CHECKING:
    from inferd.engine.sequence import Sequence

# Up to this many mask rows are computed inline: a row costs tens of microseconds, less than
# waking the worker thread and taking the GIL back on a busy machine.
INLINE_ROWS = 4


@dataclass
class StepMasks:
    """Grammar masks of one step as biases (0 allowed, -inf refused): `rows` index the sampler's
    batch, `bias` holds one row for each; `spec` maps seq_id -> [k+1, V] biases of its
    verification rows."""

    rows: list[int] = field(default_factory=list)
    bias: torch.Tensor | None = None
    spec: dict[int, torch.Tensor] = field(default_factory=dict)


class GrammarMasker:
    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self._pool: ThreadPoolExecutor | None = None
        self._executor: llguidance.LLExecutor | None = None

    def start(self, seqs: list[Sequence], spec_tokens: dict[int, list[int]] | None
              ) -> Future[StepMasks] | None:
        """Begin computing the masks of the grammar-constrained rows of `seqs` (the sampler's
        rows, in order); None when no row has a grammar. spec_tokens: the proposals each
        speculated sequence verifies this step (already cut to what the scheduler ran)."""
        # (getattr: the draft model's runner samples DraftSeqs, which follow no grammar)
        rows = [i for i, s in enumerate(seqs) if getattr(s, "grammar", None) is not None]
        if not rows:
            return None
        jobs = [(i, seqs[i], list((spec_tokens or {}).get(seqs[i].seq_id, ()))) for i in rows]
        if sum(1 + len(d) for _, _, d in jobs) <= INLINE_ROWS:
            done: Future[StepMasks] = Future()
            done.set_result(self._compute(jobs))
            return done
        if self._pool is None:  # threads only once a batch is worth them
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inferd-grammar")
        return self._pool.submit(self._compute, jobs)

    def _compute(self, jobs: list[tuple[int, Sequence, list[int]]]) -> StepMasks:
        total = sum(1 + len(drafts) for _, _, drafts in jobs)
        # -1 (all allowed) stays in rows past a draft the grammar refuses: verification never
        # reaches them, since the masked target cannot emit the refused draft.
        bitmask = torch.full((total, self.words), -1, dtype=torch.int32)
        starts = []
        at = 0
        for _, _, drafts in jobs:
            starts.append(at)
            at += 1 + len(drafts)
        ptr, row_bytes = bitmask.data_ptr(), self.words * 4
        placed = list(zip(jobs, starts, strict=True))
        plain = [(seq.grammar.matcher, s) for (_, seq, drafts), s in placed if not drafts]
        drafted = [(seq.grammar.matcher, s, drafts) for (_, seq, drafts), s in placed if drafts]
        if self._executor is None and (len(plain) > INLINE_ROWS or drafted):
            self._executor = llguidance.LLExecutor()
        if len(plain) <= INLINE_ROWS:  # a few rows: straight from the matchers, no pool hand-off
            for matcher, s in plain:
                matcher.unsafe_compute_mask_ptr(ptr + s * row_bytes, row_bytes)
        else:
            self._executor.unsafe_compute_mask_ptr(plain, ptr, row_bytes, total)
        if drafted:
            self._executor.unsafe_compute_mask_ptr_with_draft_token(drafted, ptr, row_bytes, total)
        bias = to_bias(bitmask, self.vocab_size)
        out = StepMasks(rows=[i for i, _, _ in jobs], bias=bias[starts] if len(starts) < total else bias)
        for (_, seq, drafts), s in zip(jobs, starts, strict=True):
            if drafts:
                out.spec[seq.seq_id] = bias[s:s + 1 + len(drafts)]
        return out


_BIAS = np.array([-np.inf, 0.0], dtype=np.float32)


def to_bias(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int32 bitmask [R, W] (bit t%32 of word t//32 = token t) -> float32 [R, vocab_size] of 0
    (allowed) and -inf. In numpy: it runs on the worker thread without torch's thread pool."""
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, count=vocab_size, bitorder="little")
    return torch.from_numpy(np.take(_BIAS, bits))


def mask_logits(scores: torch.Tensor, bias: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """scores with the grammar's refused tokens at -inf. A row left with nothing (min_tokens or
    logit_bias banned every token the grammar allows) takes `fallback` (raw logits) under the
    grammar's mask instead: the grammar wins, so the output still parses."""
    if scores.device.type == "cpu":
        # numpy, single-threaded: a [1, 49k] add through torch's thread pool waited a scheduler
        # slice (~15 ms) for the pool's second thread whenever the machine was busy.
        out_np = scores.numpy() + bias.numpy()
        empty_np = np.isneginf(out_np.max(axis=-1))
        out = torch.from_numpy(out_np)
        if empty_np.any():
            empty = torch.from_numpy(empty_np)
            out[empty] = fallback[empty] + bias[empty]
        return out
    out = scores + bias
    empty = torch.isneginf(out.amax(dim=-1))
    if bool(empty.any()):
        out[empty] = fallback[empty] + bias[empty]
    return out
