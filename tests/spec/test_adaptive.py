"""Adaptive speculation: the cost table, the acceptance tracker and the planner's choices."""

from __future__ import annotations

import pytest

from inferd.spec.adaptive import (
    AcceptanceTracker,
    Candidate,
    PlanCosts,
    StepCostModel,
    plan_speculation,
)


def test_cost_model_interpolates_and_extrapolates_pessimistically():
    m = StepCostModel()
    assert m.empty
    m.record(8, 0.08)
    m.record(32, 0.20)
    assert m.estimate(8) == pytest.approx(0.08)
    assert m.estimate(20) == pytest.approx(0.14)  # halfway between the two cells
    assert m.estimate(64) == pytest.approx(0.40)  # proportional above the largest size
    assert m.estimate(64, optimistic=True) == pytest.approx(0.20)
    assert m.estimate(4) == pytest.approx(0.04)
    assert m.is_fresh(32) and not m.is_fresh(64)
    assert m.max_tokens == 32


def test_cost_model_smooths_repeated_measurements():
    m = StepCostModel(smoothing=0.5)
    for s in (0.1, 0.3):
        m.record(16, s)
    assert m.estimate(16) == pytest.approx(0.2)  # plain mean for the first samples
    m.record(16, 0.4)
    assert 0.2 < m.estimate(16) < 0.4


def test_tracker_estimates_per_token_acceptance():
    t = AcceptanceTracker(prior=0.5)
    assert t.rate(1) == pytest.approx(0.5)
    for _ in range(20):
        t.update(1, 4, 4)  # everything accepted
        t.update(2, 4, 0)  # everything rejected
    assert t.rate(1) > 0.8
    assert t.rate(2) < 0.4
    low = t.rate(2)
    for _ in range(100):
        t.idle(2)
    assert t.rate(2) > low  # unmeasured for long: drifts back so it gets tried again
    t.release(1)
    assert t.rate(1) == pytest.approx(t.global_rate)


def flat_then_linear(fixed: float, per_token: float):
    return lambda n: fixed + per_token * n


def test_plan_speculates_when_extra_tokens_are_nearly_free():
    costs = PlanCosts(flat_then_linear(0.05, 0.0005))  # memory-bound: weights dominate
    cands = [Candidate(0, 0.8, 4), Candidate(1, 0.8, 2)]
    plan = plan_speculation(cands, base_tokens=2, base_gain=2, max_extra=64, costs=costs)
    assert plan == {0: 4, 1: 2}


def test_plan_skips_speculation_when_compute_bound_or_rejected():
    compute_bound = PlanCosts(flat_then_linear(0.0, 0.01))
    cands = [Candidate(i, 0.6, 4) for i in range(32)]
    assert plan_speculation(cands, 32, 32, 1000, compute_bound) == {}
    cheap = PlanCosts(flat_then_linear(0.05, 0.0005))
    assert plan_speculation([Candidate(0, 0.0, 4)], 1, 1, 64, cheap) == {}


def test_plan_prefers_likely_sequences_and_respects_budget():
    costs = PlanCosts(flat_then_linear(0.1, 0.01))
    cands = [Candidate(0, 0.95, 4), Candidate(1, 0.1, 4)]
    plan = plan_speculation(cands, 2, 2, 64, costs)
    assert plan.get(0, 0) == 4 and plan.get(1, 0) == 0
    assert sum(plan_speculation(cands, 2, 2, 3, costs).values()) <= 3


def test_plan_counts_draft_model_cost():
    target = flat_then_linear(0.05, 0.0005)
    cands = [Candidate(0, 0.7, 4)]
    assert plan_speculation(cands, 1, 1, 64, PlanCosts(target, draft=lambda n: 0.001))
    # A draft forward as expensive as the target never pays off at this acceptance.
    assert plan_speculation(cands, 1, 1, 64, PlanCosts(target, draft=target)) == {}


def test_probes_skip_one_time_work_a_short_request_cannot_repay():
    from inferd.spec.adaptive import PROBE_SETUP_SHARE, affordable_probe

    assert affordable_probe(Candidate(0, 0.5, 4))  # nothing to catch up: always worth a look
    long_run = Candidate(0, 0.5, 4, setup=0.001, setup_total=0.2, time_left=5.0)
    short_run = Candidate(1, 0.5, 4, setup=0.004, setup_total=0.2, time_left=0.4)
    assert affordable_probe(long_run)
    assert not affordable_probe(short_run)
    edge = Candidate(2, 0.5, 4, setup_total=PROBE_SETUP_SHARE * 2.0, time_left=2.0)
    assert affordable_probe(edge)
