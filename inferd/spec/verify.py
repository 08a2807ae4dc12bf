"""Verification: the target's logits at [last token, p1..pk] -> the tokens to emit.

Lossless by construction. Greedy rows emit the target's argmax at each position up to and
including the first disagreement. Sampled rows use rejection sampling (Leviathan et al., 2023;
Chen et al., 2023), so emitted tokens follow the target's distribution exactly: with a
deterministic (one-hot) proposal that reduces to "draw from the target, accept if equal", and
with a sampled draft to min(1, q/p) acceptance and a draw from the residual. Penalties and
min_tokens are applied per position with the history that position would have, and so is a
grammar's mask (structured output): a proposal the grammar refuses is never accepted.
"""

from __future__ import annotations

import torch

from inferd.engine.sampler import apply_penalties_and_masks, filter_logits
from inferd.engine.sequence import Sequence
from inferd.structured.masks import mask_logits


class HistoryView:
    """What the sampler's penalty code reads from a Sequence, as if `extra` had been appended."""

    __slots__ = ("params", "prompt_len", "token_ids")

    def __init__(self, seq: Sequence, extra: list[int]):
        self.params = seq.params
        self.prompt_len = seq.prompt_len
        self.token_ids = seq.token_ids + extra

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len:]


def history_dependent(seq: Sequence) -> bool:
    """Whether the processed logits at a position depend on the tokens before it."""
    p = seq.params
    return bool(p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty
                or seq.num_output_tokens < p.min_tokens)


def processed_logits(logits: torch.Tensor, seq: Sequence, proposals: list[int],
                     eos_ids: frozenset[int]) -> torch.Tensor:
    """Apply bias, min_tokens and penalties to row i as if proposals[:i] had been accepted."""
    if history_dependent(seq):
        views = [HistoryView(seq, proposals[:i]) for i in range(len(proposals) + 1)]
    else:
        views = [seq] * (len(proposals) + 1)
    return apply_penalties_and_masks(logits, views, eos_ids)


def verify_proposals(seq: Sequence, proposals: list[int], logits: torch.Tensor, first_token: int,
                     eos_ids: frozenset[int], draft_probs: torch.Tensor | None = None,
                     grammar_bias: torch.Tensor | None = None) -> list[int]:
    """Accepted proposals followed by one token from the target (correction or bonus).

    logits: [k+1, V] raw target logits; row i predicts the token after proposals[:i].
    first_token: what the runner's sampler already drew from row 0 (greedy argmax or one draw
    with seq.generator); reusing it keeps the generator advancing by exactly one draw per emitted
    token, as in non-speculative decoding.
    draft_probs: [k, V] distributions the proposals were sampled from, or None for deterministic
    proposals (n-gram, greedy draft).
    grammar_bias: [k+1, V] the grammar's mask at each position (row i: after proposals[:i]) as
    0 / -inf, or None.
    """
    k = len(proposals)
    scores = processed_logits(logits, seq, proposals, eos_ids)
    if grammar_bias is not None:
        scores = mask_logits(scores, grammar_bias.to(scores.device), logits)
    if seq.params.greedy:
        targets = scores.argmax(dim=-1).tolist()
        targets[0] = first_token
        out: list[int] = []
        for i in range(k + 1):
            out.append(targets[i])
            if i == k or targets[i] != proposals[i]:
                break
        return out
    probs = filter_logits(scores, [seq] * (k + 1)).softmax(dim=-1)
    gen = seq.generator
    if draft_probs is None:
        out = []
        for i in range(k + 1):
            tok = first_token if i == 0 else _draw(probs[i], gen)
            out.append(tok)
            if i == k or tok != proposals[i]:
                break
        return out
    out = []
    for i in range(k):
        x = proposals[i]
        q, p = probs[i], draft_probs[i]
        u = float(torch.rand((), generator=gen, device=q.device))
        if u * float(p[x]) < float(q[x]):  # accept with probability min(1, q(x) / p(x))
            out.append(x)
            continue
        residual = (q - p).clamp_min(0.0)
        # residual sums to zero only when q == p (then rejection had probability 0): q is exact.
        out.append(_draw(residual if float(residual.sum()) > 0 else q, gen))
        return out
    out.append(_draw(probs[k], gen))
    return out


def _draw(weights: torch.Tensor, gen: torch.Generator | None) -> int:
    return int(torch.multinomial(weights, 1, generator=gen)[0])
