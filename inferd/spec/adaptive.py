"""Adaptive speculation: how many tokens to propose for each sequence in the next step.

Three small parts, all online and measured from real steps: `AcceptanceTracker` (per-sequence
acceptance rate, exponentially weighted), `StepCostModel` (seconds per forward pass vs tokens in
the batch), and `plan_speculation`, which adds proposals in order of expected gain while the
expected tokens per second of the step goes up, so speculation is used only where it pays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


class AcceptanceTracker:
    """Per-token acceptance probability per sequence (geometric model, censored at rejection).

    A step that proposed k and accepted a gives a successes in a + (a < k) trials. Counts decay,
    so the estimate follows a sequence moving in and out of copyable text; a sequence that is not
    speculated drifts back toward the global rate, which drifts toward the prior, so a rate that
    fell to zero gets measured again later instead of switching speculation off for good.
    """

    def __init__(self, prior: float = 0.5, prior_weight: float = 2.0, decay: float = 0.8,
                 idle_decay: float = 0.95, global_decay: float = 0.98):
        self.prior = prior
        self.prior_weight = prior_weight
        self.decay = decay
        self.idle_decay = idle_decay
        self.global_decay = global_decay
        self._counts: dict[int, list[float]] = {}  # seq_id -> [successes, trials]
        self._global = [prior * prior_weight, prior_weight]

    @property
    def global_rate(self) -> float:
        s, t = self._global
        return s / t

    def rate(self, seq_id: int) -> float:
        s, t = self._counts.get(seq_id, (0.0, 0.0))
        return (s + self.global_rate * self.prior_weight) / (t + self.prior_weight)

    def optimistic_rate(self, seq_id: int) -> float:
        """The rate with the prior at 1: high until evidence says otherwise (for probing)."""
        s, t = self._counts.get(seq_id, (0.0, 0.0))
        return (s + self.prior_weight) / (t + self.prior_weight)

    def evidence(self, seq_id: int) -> float:
        """Decayed number of acceptance trials observed for this sequence."""
        return self._counts.get(seq_id, (0.0, 0.0))[1]

    def update(self, seq_id: int, proposed: int, accepted: int) -> None:
        if proposed <= 0:
            return
        trials = accepted + (1 if accepted < proposed else 0)
        c = self._counts.setdefault(seq_id, [0.0, 0.0])
        c[0] = c[0] * self.decay + accepted
        c[1] = c[1] * self.decay + trials
        g = self._global
        g[0] = g[0] * self.global_decay + accepted
        g[1] = g[1] * self.global_decay + trials

    def idle(self, seq_id: int) -> None:
        """A step in which this sequence could have been speculated but was not."""
        c = self._counts.get(seq_id)
        if c is not None:
            c[0] *= self.idle_decay
            c[1] *= self.idle_decay

    def idle_global(self) -> None:
        """A step without any speculation: let the global rate relax toward the prior."""
        g = self._global
        d = self.global_decay
        g[0] = g[0] * d + (1 - d) * self.prior * self.prior_weight
        g[1] = g[1] * d + (1 - d) * self.prior_weight

    def release(self, seq_id: int) -> None:
        self._counts.pop(seq_id, None)


def _bucket(n: int) -> int:
    """Exact below 9 tokens, then four buckets per doubling (about 19% wide)."""
    return n if n <= 8 else 8 + round(4 * math.log2(n / 8))


@dataclass
class _Cell:
    tokens: float  # EWMA of the token counts that fell in this bucket
    seconds: float  # EWMA of their step times
    count: int
    last_step: int


class StepCostModel:
    """Online table of forward-pass time vs number of tokens in the batch.

    One EWMA cell per bucket of token counts; estimates interpolate linearly between measured
    cells, and outside them scale proportionally with the token count, which assumes no fixed cost
    to amortize: pessimistic for extra tokens, so an unmeasured size never looks cheap.
    """

    def __init__(self, smoothing: float = 0.25, stale_after: int = 400):
        self.smoothing = smoothing
        self.stale_after = stale_after
        self.cells: dict[int, _Cell] = {}
        self.steps = 0
        self._sorted: list[_Cell] | None = None

    def record(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        self.steps += 1
        b = _bucket(tokens)
        cell = self.cells.get(b)
        if cell is None:
            self.cells[b] = _Cell(float(tokens), seconds, 1, self.steps)
            self._sorted = None
            return
        a = max(self.smoothing, 1.0 / (cell.count + 1))  # plain mean for the first samples
        cell.tokens += a * (tokens - cell.tokens)
        cell.seconds += a * (seconds - cell.seconds)
        cell.count += 1
        cell.last_step = self.steps
        self._sorted = None

    @property
    def empty(self) -> bool:
        return not self.cells

    @property
    def max_tokens(self) -> float:
        """The largest batch size measured so far."""
        return max((c.tokens for c in self.cells.values()), default=0.0)

    def is_fresh(self, tokens: int) -> bool:
        """A recent measurement exists for this size's bucket."""
        cell = self.cells.get(_bucket(tokens))
        return cell is not None and self.steps - cell.last_step <= self.stale_after

    def estimate(self, tokens: int, optimistic: bool = False) -> float:
        """Seconds for a forward over `tokens` tokens (the table must not be empty).

        optimistic: above the largest measured size, assume the time stays flat (used only to
        choose probes, which then measure the real cost).
        """
        if self._sorted is None:
            self._sorted = sorted(self.cells.values(), key=lambda c: c.tokens)
        pts = self._sorted
        if tokens <= pts[0].tokens:
            return pts[0].seconds * tokens / pts[0].tokens
        if tokens >= pts[-1].tokens:
            return pts[-1].seconds * (1.0 if optimistic else tokens / pts[-1].tokens)
        lo = 0
        hi = len(pts) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if pts[mid].tokens <= tokens:
                lo = mid
            else:
                hi = mid
        a, b = pts[lo], pts[hi]
        w = (tokens - a.tokens) / (b.tokens - a.tokens)
        return a.seconds + w * (b.seconds - a.seconds)


@dataclass
class Candidate:
    """A decoding sequence that could carry proposals in the next step."""

    seq_id: int
    rate: float  # per-token acceptance probability
    max_k: int  # proposals available (n-gram match length, or the cap for a draft model)
    catch_up: int = 1  # tokens the draft model must consume before its first proposal
    setup: float = 0.0  # seconds per step of one-time work (a draft prefill), amortized
    setup_total: float = 0.0  # that one-time work in full, seconds
    time_left: float = math.inf  # expected seconds this sequence still decodes


# A probe may spend on one-time work (a draft catching up on a prompt) at most this share of
# the time its sequence is still expected to run: a short request never pays for a long probe.
PROBE_SETUP_SHARE = 0.2


def affordable_probe(c: Candidate) -> bool:
    """Whether exploring this candidate's acceptance is cheap next to what it could win."""
    return c.setup_total <= PROBE_SETUP_SHARE * c.time_left


@dataclass
class PlanCosts:
    """The cost side of a plan: target forward, draft forwards, per-sequence bookkeeping."""

    target: Callable[[int], float]
    draft: Callable[[int], float] | None = None
    per_seq: float = 0.0


def plan_speculation(cands: list[Candidate], base_tokens: int, base_gain: float, max_extra: int,
                     costs: PlanCosts, margin: float = 0.05) -> dict[int, int]:
    """Choose k per candidate to maximize expected emitted tokens per second of this step.

    Proposal j of a sequence with acceptance rate r is accepted (with all before it) with
    probability r**j, so increments are taken in decreasing order of that gain, each prefix is
    scored as (base_gain + gains) / cost, and the best prefix wins; k = 0 for everyone when
    nothing beats the plain step by `margin` (timings are noisy, and at 32 streams a 2% margin
    still let plans through that measured 0.94x: a near-tie is not worth the risk).
    base_tokens: tokens the step runs anyway (decodes + prefill); base_gain: tokens it emits anyway.
    """
    incs = sorted(((c.rate ** j, j, i) for i, c in enumerate(cands) for j in range(1, c.max_k + 1)
                   if c.rate > 0), key=lambda t: (-t[0], t[1], t[2]))
    base_cost = costs.target(base_tokens)
    best_tp = base_gain / base_cost * (1.0 + margin)
    best_len = 0
    gain = 0.0
    draft_depth: list[int] = []  # tokens the draft model runs at each depth
    num_seqs = 0
    setup = 0.0
    for n, (g, j, i) in enumerate(incs[:max(0, max_extra)], start=1):
        gain += g
        if j == 1:
            num_seqs += 1
            setup += cands[i].setup
            if not draft_depth:
                draft_depth.append(0)
            draft_depth[0] += cands[i].catch_up
        else:
            # Proposal j is produced by the j-th draft forward, which feeds proposal j-1.
            while len(draft_depth) < j:
                draft_depth.append(0)
            draft_depth[j - 1] += 1
        cost = costs.target(base_tokens + n) + num_seqs * costs.per_seq + setup
        if costs.draft is not None:
            cost += sum(costs.draft(t) for t in draft_depth if t)
        tp = (base_gain + gain) / cost
        if tp > best_tp:
            best_tp, best_len = tp, n
    plan: dict[int, int] = {}
    for _, j, i in incs[:best_len]:
        plan[cands[i].seq_id] = max(plan.get(cands[i].seq_id, 0), j)
    return plan
