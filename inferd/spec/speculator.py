"""Speculator: the engine's single object for speculative decoding, called twice per step.

`propose` chooses, for each decoding sequence, how many tokens to guess (the adaptive plan) and
gets them from the proposer (n-gram lookup or draft model); the scheduler then runs them after
the real token in the same target forward. `verify` turns the target's logits at those positions
into the tokens to emit, advances the sequence's computed K/V over the accepted ones, and records
acceptance. It never touches blocks of the target cache: rejected K/V lie beyond
`num_computed_tokens`, so they are neither hashed for prefix reuse nor read again.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from inferd.engine.runner import StepResult
from inferd.engine.sampler import top_logprobs
from inferd.engine.scheduler import SchedulerOutput
from inferd.engine.sequence import SeqStatus, Sequence
from inferd.outputs import TokenLogprobs
from inferd.spec.adaptive import (
    AcceptanceTracker,
    Candidate,
    PlanCosts,
    StepCostModel,
    affordable_probe,
    plan_speculation,
)
from inferd.spec.draft import DraftProposer
from inferd.spec.ngram import NgramProposer
from inferd.spec.verify import verify_proposals

if TYPE_CHECKING:
    from inferd.engine.engine import LLMEngine

# Steps before the first probe, and the cap of the doubling interval between probes.
PROBE_FIRST, PROBE_MAX_INTERVAL = 8, 128
PROBE_EVIDENCE = 3.0  # acceptance trials below which a sequence's rate is worth measuring
PREFILL_TOKENS = 64  # forwards at least this large tell the prefill speed
AMORTIZE_MAX_TOKENS = 512  # horizon for spreading a one-time draft prefill (no max_tokens given)


class Speculator:
    def __init__(self, engine: LLMEngine, proposer: NgramProposer | DraftProposer):
        cfg = engine.config.speculative
        self.method = cfg.method
        self.model_name = proposer.name if isinstance(proposer, DraftProposer) else "ngram"
        self.k_max = cfg.num_speculative_tokens
        self.adaptive = cfg.adaptive
        self.proposer = proposer
        self.draft = proposer if isinstance(proposer, DraftProposer) else None
        self.scheduler = engine.scheduler
        self.max_model_len = engine.max_model_len
        self.budget = engine.config.scheduler.max_num_batched_tokens
        self.eos_ids = engine.runner.eos_ids
        self.tracker = AcceptanceTracker()
        self.target_cost = StepCostModel()
        self.per_seq_overhead = 0.0  # seconds of verification work per speculated sequence
        # Counters for metrics (monotonic).
        self.num_draft_tokens = 0  # proposals verified by the target
        self.num_accepted_tokens = 0  # of those, accepted
        self.num_spec_steps = 0  # verifications (one per speculated sequence per step)
        self.last_plan: dict[int, int] = {}
        self._steps = 0
        self._next_probe = PROBE_FIRST
        self._probe_interval = PROBE_FIRST
        self._draft_probs: dict[int, torch.Tensor] = {}
        self._verify_seconds = 0.0
        self._verified = 0
        self._prefill_rate = 0.0  # target seconds per prefill token (EWMA)

    # ---- metrics ----------------------------------------------------------------------------
    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per verification (accepted proposals + the target's own token)."""
        return 1.0 + self.num_accepted_tokens / self.num_spec_steps if self.num_spec_steps else 0.0

    def stats(self) -> dict[str, float | int | str]:
        return {"method": self.method or "", "model": self.model_name,
                "num_draft_tokens": self.num_draft_tokens,
                "num_accepted_tokens": self.num_accepted_tokens,
                "num_spec_steps": self.num_spec_steps, "acceptance_rate": self.acceptance_rate,
                "mean_accepted_length": self.mean_accepted_length}

    # ---- step hooks -------------------------------------------------------------------------
    def propose(self, running: list[Sequence]) -> dict[int, list[int]]:
        """seq_id -> proposal tokens for the decoding sequences worth speculating this step."""
        self._steps += 1
        self._close_overhead()
        self._release_gone(running)
        self._draft_probs = {}
        decoding = [s for s in running
                    if s.status == SeqStatus.RUNNING and s.num_tokens - s.num_computed_tokens == 1]
        if not decoding:
            return {}
        prefill = sum(s.num_tokens - s.num_computed_tokens for s in running) - len(decoding)
        # Waiting prompts the scheduler could admit this step (it stops at max_num_seqs).
        room = self.scheduler.cfg.max_num_seqs - len(running)
        prefill += sum(s.num_tokens - s.num_computed_tokens
                       for s in itertools.islice(self.scheduler.waiting, max(0, room)))
        base_tokens = min(self.budget, len(decoding) + prefill)
        max_extra = self.budget - base_tokens  # speculation never takes budget from prefills
        if max_extra <= 0:
            return {}
        cands: list[Candidate] = []
        offers: dict[int, list[int]] = {}
        for seq in decoding:
            cap = self._cap(seq)
            if cap <= 0:
                continue
            if self.draft is None:
                props = self.proposer.propose(seq, cap)  # type: ignore[union-attr]
                if not props:
                    continue
                offers[seq.seq_id] = props
                cands.append(Candidate(seq.seq_id, self.tracker.rate(seq.seq_id), len(props)))
            else:
                cap = min(cap, self.draft.max_k(seq))
                if cap > 0:
                    rate = self.tracker.rate(seq.seq_id)
                    catch_up, setup, total = self._draft_catch_up(seq, rate, cap)
                    cands.append(Candidate(seq.seq_id, rate, cap, catch_up, setup, total,
                                           self._time_left(seq, base_tokens)))
        plan = self._plan(cands, base_tokens, len(decoding), max_extra)
        for c in cands:
            if c.seq_id not in plan:
                self.tracker.idle(c.seq_id)
        if not plan:
            self.tracker.idle_global()
        self.last_plan = plan
        if not plan:
            return {}
        if self.draft is None:
            return {sid: offers[sid][:k] for sid, k in plan.items()}
        drafted = self.draft.propose([(s, plan[s.seq_id]) for s in decoding if s.seq_id in plan])
        out: dict[int, list[int]] = {}
        for sid, (props, probs) in drafted.items():
            if props:
                out[sid] = props
                if probs is not None:
                    self._draft_probs[sid] = probs
        return out

    def observe_step(self, sched: SchedulerOutput, seconds: float) -> None:
        """Time of one target forward: decode-only steps feed the cost table, large prefill
        steps the prefill speed (a prior for the draft model's catch-up cost)."""
        if all(e.num_tokens - e.num_spec == 1 for e in sched.scheduled):
            self.target_cost.record(sched.num_tokens, seconds)
        elif sched.num_tokens >= PREFILL_TOKENS:
            rate = seconds / sched.num_tokens
            self._prefill_rate += (0.3 if self._prefill_rate else 1.0) * (rate - self._prefill_rate)

    def verify(self, seq: Sequence, proposals: list[int], result: StepResult, row: int
               ) -> tuple[list[int], list[TokenLogprobs | None]]:
        """Tokens to emit for seq (accepted proposals + one from the target) and their logprobs."""
        t0 = time.perf_counter()
        logits = result.spec_logits[seq.seq_id]
        k = logits.shape[0] - 1  # the scheduler may have cut the proposals short
        props = proposals[:k]
        draft_probs = self._draft_probs.pop(seq.seq_id, None)
        bias = result.masks.spec.get(seq.seq_id) if result.masks is not None else None
        tokens = verify_proposals(seq, props, logits, result.sampled.token_ids[row], self.eos_ids,
                                  None if draft_probs is None else draft_probs[:k], bias)
        accepted = len(tokens) - 1
        # The accepted proposals' K/V were written in this forward at the right positions.
        seq.num_computed_tokens += accepted
        lps: list[TokenLogprobs | None] = [result.sampled.logprobs[row]]
        if seq.params.logprobs is not None and len(tokens) > 1:
            rows = torch.log_softmax(logits[1:len(tokens)], dim=-1)
            n = seq.params.logprobs or 0
            lps += [top_logprobs(rows[i - 1], tokens[i], n) for i in range(1, len(tokens))]
        else:
            lps += [None] * (len(tokens) - 1)
        self.num_draft_tokens += k
        self.num_accepted_tokens += accepted
        self.num_spec_steps += 1
        self.tracker.update(seq.seq_id, k, accepted)
        self._verify_seconds += time.perf_counter() - t0
        self._verified += 1
        return tokens, lps

    # ---- internals --------------------------------------------------------------------------
    def _cap(self, seq: Sequence) -> int:
        """Most proposals worth making: the bonus token always comes, so stop one short."""
        cap = min(self.k_max, self.max_model_len - seq.num_tokens)
        if seq.params.max_tokens is not None:
            cap = min(cap, seq.params.max_tokens - seq.num_output_tokens - 1)
        return cap

    def _plan(self, cands: list[Candidate], base_tokens: int, base_gain: int,
              max_extra: int) -> dict[int, int]:
        if not cands:
            return {}
        if not self.adaptive:
            plan: dict[int, int] = {}
            for c in cands:
                if max_extra <= 0:
                    break
                plan[c.seq_id] = min(c.max_k, max_extra)
                max_extra -= plan[c.seq_id]
            return plan
        if self.target_cost.empty:
            return {}  # the first decode step measures the plain cost
        draft_cost = self._draft_cost if self.draft is not None else None
        costs = PlanCosts(self.target_cost.estimate, draft_cost, self.per_seq_overhead)
        plan = plan_speculation(cands, base_tokens, base_gain, max_extra, costs)
        if self._steps >= self._next_probe:
            probe = self._probe(cands, base_tokens, base_gain, max_extra)
            if probe:
                plan = probe
                self._probe_interval = min(2 * self._probe_interval, PROBE_MAX_INTERVAL)
                self._next_probe = self._steps + self._probe_interval
        return plan

    def _probe(self, cands: list[Candidate], base_tokens: int, base_gain: int,
               max_extra: int) -> dict[int, int]:
        """A plan that measures what the planner cannot know yet, or {} when nothing is new.

        Optimism under uncertainty: acceptance is assumed high where a sequence has little
        evidence, and step time flat beyond the largest batch measured. Each probe grows the
        measured range by at most half, and probes get rarer (interval doubling), so
        exploration costs a few percent at most where speculation does not pay.
        """
        hopeful = [replace(c, rate=self.tracker.optimistic_rate(c.seq_id)) for c in cands
                   if affordable_probe(c)]
        draft_cost = (None if self.draft is None
                      else (lambda n: self._draft_cost(n, optimistic=True)))
        costs = PlanCosts(lambda n: self.target_cost.estimate(n, optimistic=True), draft_cost,
                          self.per_seq_overhead)
        measured = max(base_tokens, int(self.target_cost.max_tokens))
        reach = max(base_tokens + self.k_max, measured + measured // 2)
        probe = plan_speculation(hopeful, base_tokens, base_gain,
                                 min(max_extra, reach - base_tokens), costs, margin=0.0)
        new_size = not self.target_cost.is_fresh(base_tokens + sum(probe.values()))
        new_rate = any(self.tracker.evidence(sid) < PROBE_EVIDENCE for sid in probe)
        return probe if probe and (new_size or new_rate) else {}

    def _draft_catch_up(self, seq: Sequence, rate: float, cap: int) -> tuple[int, float, float]:
        """Draft tokens in this step's first draft forward, the amortized cost of the rest, and
        that cost in full.

        A long catch-up (the prompt, the first time; or what accumulated while the sequence was
        not speculated) is paid once and then serves every later step, so its cost is spread over
        the steps the sequence still has to run; charged to one step it would never pay off.
        """
        c = self.draft.catch_up(seq)  # type: ignore[union-attr]
        steady = 1 + self.k_max
        if c <= steady or self.target_cost.empty:  # (no plan is made without step timings)
            return c, 0.0, 0.0
        per_step = sum(rate ** j for j in range(cap + 1))  # expected tokens per speculated step
        steps = max(1.0, min(self._tokens_left(seq), AMORTIZE_MAX_TOKENS) / per_step)
        total = self._draft_prefill_seconds(c - steady)
        return steady, total / steps, total

    def _tokens_left(self, seq: Sequence) -> int:
        p = seq.params
        return (p.max_tokens - seq.num_output_tokens if p.max_tokens is not None
                else self.max_model_len - seq.num_tokens)

    def _time_left(self, seq: Sequence, batch_tokens: int) -> float:
        """Seconds the sequence should still decode at today's step time (no speculation)."""
        if self.target_cost.empty:
            return math.inf
        left = min(self._tokens_left(seq), AMORTIZE_MAX_TOKENS)
        return left * self.target_cost.estimate(batch_tokens)

    def _draft_prefill_seconds(self, tokens: int) -> float:
        """Time for the draft to prefill this many tokens, from the best data at hand."""
        assert self.draft is not None
        if self.draft.cost.max_tokens >= PREFILL_TOKENS:  # measured draft prefills
            return self.draft.cost.estimate(tokens)
        if self._prefill_rate:  # the target's measured prefill speed, scaled
            return self._prefill_rate * tokens * self.draft.relative_size
        return self._draft_cost(tokens)

    def _draft_cost(self, tokens: int, optimistic: bool = False) -> float:
        assert self.draft is not None
        if not self.draft.cost.empty:
            return self.draft.cost.estimate(tokens, optimistic)
        return self.target_cost.estimate(tokens, optimistic) * self.draft.relative_size

    def _close_overhead(self) -> None:
        """Fold last step's verification time into the per-sequence overhead estimate."""
        if self._verified:
            sample = self._verify_seconds / self._verified
            a = 0.2 if self.per_seq_overhead else 1.0
            self.per_seq_overhead += a * (sample - self.per_seq_overhead)
        self._verify_seconds = 0.0
        self._verified = 0

    def _release_gone(self, running: list[Sequence]) -> None:
        """Drop per-sequence state (n-gram index, draft K/V) of sequences no longer running."""
        live = {s.seq_id for s in running if s.status == SeqStatus.RUNNING}
        for sid in self.proposer.tracked() - live:
            self.proposer.release(sid)
            self.tracker.release(sid)
