"""Sampler: logits of the rows that sample this step -> next tokens (+ logprobs).

Processing order follows vLLM: logit bias and min_tokens masking, repetition/frequency/presence
penalties, the grammar's mask (structured output), then temperature, top-k, top-p, min-p. Greedy rows take the argmax of the processed
logits. Each sequence owns a torch.Generator, so a seeded request draws the same tokens whatever
else is in the batch. Logprobs are reported from the model's raw distribution.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from inferd.engine.sequence import Sequence
from inferd.outputs import TokenLogprobs
from inferd.structured.masks import StepMasks, mask_logits


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]  # per row, when the sequence asked for logprobs
    chosen_logprobs: list[float]  # raw logprob of each chosen token


def sample_seed(seed: int, index: int) -> int:
    """The generator seed of sample `index` of a request seeded with `seed`. Torch's CPU generator
    keeps only the low 32 bits of a seed, so seeds equal modulo 2^32 (5 and 2^32 + 5) sampled the
    same text, and `seed + index` made sample 1 of seed 5 sample 0 of seed 6; a hash of both
    leaves only chance collisions."""
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def apply_penalties_and_masks(logits: torch.Tensor, seqs: list[Sequence],
                              eos_ids: frozenset[int]) -> torch.Tensor:
    """Return processed logits (a copy only when some row needs processing)."""
    vocab = logits.shape[-1]
    out = logits
    for row, seq in enumerate(seqs):
        p = seq.params
        needs_min = seq.num_output_tokens < p.min_tokens
        if not (p.logit_bias or needs_min or p.repetition_penalty != 1.0
                or p.presence_penalty or p.frequency_penalty):
            continue
        if out is logits:
            out = logits.clone()
        x = out[row]
        if p.logit_bias:
            ids = torch.tensor([int(t) for t in p.logit_bias if 0 <= int(t) < vocab], dtype=torch.long)
            vals = torch.tensor([float(v) for t, v in p.logit_bias.items() if 0 <= int(t) < vocab],
                                dtype=x.dtype)
            if len(ids):
                x.index_add_(0, ids.to(x.device), vals.to(x.device))
        if needs_min:
            banned = set(p.stop_token_ids) | (set() if p.ignore_eos else set(eos_ids))
            if banned:
                x[torch.tensor(sorted(banned), device=x.device)] = float("-inf")
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(seq.token_ids)), device=x.device, dtype=torch.long)
            vals = x[seen]
            x[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if p.presence_penalty or p.frequency_penalty:
            outs = seq.output_token_ids
            if outs:
                counts = torch.bincount(torch.tensor(outs, device=x.device), minlength=vocab)[:vocab]
                x -= p.frequency_penalty * counts.to(x.dtype)
                x -= p.presence_penalty * (counts > 0).to(x.dtype)
    return out


# Top-p rows look at this many highest logits first: a real model's nucleus almost always lies
# inside them, and topk over them costs a fraction of sorting the vocabulary (64 rows x 49k:
# 17 vs 276 ms here; Gemma's 262k vocabulary is 5x worse). A row whose nucleus is wider falls
# back to the full sort, so the result never depends on this number.
TOP_P_CANDIDATES = 256


def filter_logits(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p for the non-greedy rows; returns log-space scores.

    Top-p measures mass after top-k has cut the rest, as transformers' warpers and vLLM do.
    """
    temps = torch.tensor([max(s.params.temperature, 1e-5) for s in seqs], device=logits.device)
    x = logits / temps[:, None]
    need_cut = [i for i, s in enumerate(seqs) if s.params.top_k > 0 or s.params.top_p < 1.0]
    if need_cut:
        rows = torch.tensor(need_cut, device=x.device)
        x[rows] = _top_k_top_p(x[rows], [seqs[i].params.top_k for i in need_cut],
                               [seqs[i].params.top_p for i in need_cut])
    min_ps = [s.params.min_p for s in seqs]
    if any(min_ps):
        # probs < min_p * max_prob, in logit space: no softmax over the vocabulary.
        floor = x.max(dim=-1, keepdim=True).values + torch.tensor(min_ps, device=x.device).log()[:, None]
        x = x.masked_fill(x < floor, float("-inf"))
    return x


def _top_k_top_p(x: torch.Tensor, ks: list[int], ps: list[float],
                 candidates: int = TOP_P_CANDIDATES) -> torch.Tensor:
    """Rows of x with everything outside each row's top-k, then its top-p nucleus, set to -inf.

    ks: 0 = no top-k; ps: 1.0 = no top-p. Works on the `c` highest logits of each row (c covers
    every row's k, and `candidates` for rows with top-p alone); rows whose nucleus reaches past
    them are redone over the whole vocabulary.
    """
    vocab = x.shape[-1]
    k_eff = [k if 0 < k < vocab else vocab for k in ks]
    c = max([k for k in k_eff if k < vocab] + [candidates if vocab in k_eff else 0])
    c = min(vocab, max(c, 1))
    vals, idx = x.topk(c, dim=-1)  # sorted, highest first
    k_t = torch.tensor(k_eff, device=x.device)
    p_t = torch.tensor([p if p < 1.0 else float("inf") for p in ps], device=x.device)
    drop = torch.arange(c, device=x.device)[None, :] >= k_t[:, None]
    kept = vals.masked_fill(drop, float("-inf"))
    # Probabilities over what top-k kept: the candidates' own sum where top-k cut the row, the
    # whole vocabulary's where it did not.
    whole = (k_t >= vocab)[:, None]
    lse = torch.where(whole, x.logsumexp(dim=-1, keepdim=True), kept.logsumexp(dim=-1, keepdim=True))
    probs = (kept - lse).exp()
    mass = probs.cumsum(dim=-1)
    drop |= (mass - probs) >= p_t[:, None]  # the tokens before it already hold p of the mass
    drop[:, 0] = False  # the top token always survives
    out = torch.full_like(x, float("-inf")).scatter_(1, idx, vals.masked_fill(drop, float("-inf")))
    if c < vocab:
        wider = ((k_t >= vocab) & (p_t < float("inf")) & (mass[:, -1] < p_t)).nonzero().flatten().tolist()
        if wider:  # the nucleus reaches past the candidates: redo those rows over the vocabulary
            redo = torch.tensor(wider, device=x.device)
            out[redo] = _top_k_top_p(x[redo], [0] * len(wider), [ps[i] for i in wider], vocab)
    return out


def sample(logits: torch.Tensor, seqs: list[Sequence], eos_ids: frozenset[int],
           masks: StepMasks | None = None) -> SampleResult:
    """logits: [B, V] fp32, row i belongs to seqs[i]. masks: the grammar-constrained rows' masks,
    applied before greedy max and temperature/top-k/top-p, so both obey the grammar."""
    processed = apply_penalties_and_masks(logits, seqs, eos_ids)
    if masks is not None and masks.rows:
        bias = masks.bias.to(logits.device)
        if len(masks.rows) == len(seqs):  # every row constrained: no gather and scatter
            processed = mask_logits(processed, bias, logits)  # (a new tensor)
        else:
            rows = torch.tensor(masks.rows, device=logits.device)
            if processed is logits:
                processed = logits.clone()
            processed[rows] = mask_logits(processed[rows], bias, logits[rows])
    # max() gives the same index as argmax() (the first maximum) in a third of the time on CPU:
    # argmax's CPU kernel is scalar (70 us a 49k-token row here, against 26).
    tokens = processed.max(dim=-1).indices
    random_rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if random_rows:
        rows = torch.tensor(random_rows, device=logits.device)
        scores = filter_logits(processed[rows], [seqs[i] for i in random_rows])
        probs = scores.softmax(dim=-1)
        # A row whose parameters overflow (a repetition_penalty of 1e-300 divides logits into inf)
        # has no distribution; it takes its top token instead of failing the whole batch.
        usable = (torch.isfinite(probs).all(dim=-1) & (probs.sum(dim=-1) > 0)).tolist()
        for j, i in enumerate(random_rows):
            if usable[j]:
                tokens[i] = torch.multinomial(probs[j], 1, generator=seqs[i].generator)[0]
    token_list = tokens.tolist()
    want_lp = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
    logprobs: list[TokenLogprobs | None] = [None] * len(seqs)
    chosen: list[float] = [0.0] * len(seqs)
    if want_lp:
        rows = torch.tensor(want_lp, device=logits.device)
        lp = torch.log_softmax(logits[rows], dim=-1)
        for j, i in enumerate(want_lp):
            logprobs[i] = top_logprobs(lp[j], token_list[i], seqs[i].params.logprobs or 0)
            chosen[i] = logprobs[i][token_list[i]]
    return SampleResult(token_list, logprobs, chosen)


def top_logprobs(row_logprobs: torch.Tensor, chosen: int, k: int) -> TokenLogprobs:
    """The chosen token's logprob first, then the top-k alternatives (dict keeps that order)."""
    entry: TokenLogprobs = {chosen: float(row_logprobs[chosen])}
    if k > 0:
        vals, idx = row_logprobs.topk(k)
        for v, t in zip(vals.tolist(), idx.tolist(), strict=True):
            entry.setdefault(t, v)
    return entry
