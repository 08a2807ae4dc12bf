"""Summaries computed from hand-made records: metric definitions, percentiles, goodput, parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inferd.bench.config import SLO, parse_duration_ms, parse_int_list, parse_rate_list
from inferd.bench.loadgen import poisson_arrivals
from inferd.bench.metrics import meets_slo, peak_in_flight, summarize
from inferd.bench.records import RequestRecord
from inferd.bench.server_metrics import parse_prometheus, run_server_stats


def rec(
    index: int, send: float, times: list[float], end: float, ok: bool = True, **kw
) -> RequestRecord:
    r = RequestRecord(
        index=index,
        send_time=send,
        first_token_time=times[0] if times else None,
        token_times=times,
        end_time=end,
        success=ok,
        **kw,
    )
    if ok:
        r.output_tokens, r.prompt_tokens = len(times), 10
        r.output_token_source, r.prompt_token_source = "usage", "usage"
    return r


def test_definitions_on_one_request() -> None:
    r = rec(0, send=1.0, times=[1.2, 1.25, 1.35, 1.40], end=1.5)
    assert r.ttft == pytest.approx(0.2)
    assert r.e2e == pytest.approx(0.5)
    assert r.itls == pytest.approx([0.05, 0.10, 0.05])
    assert r.tpot == pytest.approx((0.5 - 0.2) / 3)


def test_tpot_needs_two_tokens() -> None:
    assert rec(0, 0.0, [0.1], 0.2).tpot is None


def test_summary_figures() -> None:
    records = [
        rec(0, 0.0, [0.1, 0.2, 0.3], 0.3),
        rec(1, 0.0, [0.3, 0.4], 0.5),
        rec(2, 0.5, [], 0.6, ok=False, error_kind="HTTP 500", error="HTTP 500: boom"),
        rec(3, 0.6, [], 0.7, ok=False, error_kind="HTTP 500", error="HTTP 500: boom"),
        rec(4, 0.7, [], 1.0, ok=False, error_kind="timeout", error="timeout"),
    ]
    s = summarize(records, duration=2.0, slo=SLO(), price_per_hour=3.6)
    assert (s["requests"], s["completed"], s["failed"]) == (5, 2, 3)
    assert s["failure_reasons"] == {"HTTP 500": 2, "timeout": 1}
    assert s["output_tokens"] == 5 and s["prompt_tokens"] == 20
    assert s["output_throughput"] == pytest.approx(2.5)
    assert s["total_token_throughput"] == pytest.approx(12.5)
    assert s["request_throughput"] == pytest.approx(1.0)
    assert s["ttft_ms"]["mean"] == pytest.approx(200.0)
    assert s["ttft_ms"]["count"] == 2
    assert s["itl_ms"]["count"] == 3  # (3-1) + (2-1) gaps, pooled
    assert s["itl_ms"]["p50"] == pytest.approx(100.0)
    assert s["e2e_ms"]["max"] == pytest.approx(500.0)
    assert s["goodput"] is None
    # $3.60/h at 2.5 tok/s = 9000 tok/h -> $400 per million
    assert s["cost_per_million_output_tokens"] == pytest.approx(400.0)
    assert s["token_sources"]["output"] == {"usage": 2}


def test_percentiles_match_numpy() -> None:
    rng = np.random.default_rng(0)
    ttfts = rng.uniform(0.01, 1.0, 200)
    records = [
        rec(i, 0.0, [float(t), float(t) + 0.01], float(t) + 0.02) for i, t in enumerate(ttfts)
    ]
    s = summarize(records, 1.0, SLO())
    for p in (50, 90, 99):
        assert s["ttft_ms"][f"p{p}"] == pytest.approx(np.percentile(ttfts * 1000, p))


def test_goodput_counts_all_requests() -> None:
    fast = rec(0, 0.0, [0.05, 0.06, 0.07], 0.07)
    slow_first = rec(1, 0.0, [0.5, 0.51], 0.51)
    slow_gaps = rec(2, 0.0, [0.05, 0.25, 0.45], 0.45)
    failed = rec(3, 0.0, [], 0.1, ok=False, error_kind="HTTP 429")
    slo = SLO.parse("ttft=100ms,itl=0.05s")
    assert [meets_slo(r, slo) for r in (fast, slow_first, slow_gaps, failed)] == [
        True,
        False,
        False,
        False,
    ]
    s = summarize([fast, slow_first, slow_gaps, failed], 2.0, slo)
    assert s["goodput"] == pytest.approx(0.25)
    assert s["goodput_request_throughput"] == pytest.approx(0.5)
    assert s["slo"] == {"ttft_ms": 100.0, "itl_ms": 50.0}


def test_peak_in_flight() -> None:
    records = [
        rec(0, 0.0, [0.1], 1.0),
        rec(1, 0.5, [0.6], 1.5),
        rec(2, 1.0, [1.1], 2.0),
        rec(3, 1.2, [1.3], 1.4),
    ]
    assert peak_in_flight(records) == 3  # at t=1.0 one ends as another starts: not counted twice


def test_slo_and_list_parsing() -> None:
    assert SLO.parse("ttft=200,itl=50ms,tpot=0.03s,e2el=2s") == SLO(200.0, 50.0, 30.0, 2000.0)
    assert not SLO.parse(None).is_set
    assert parse_duration_ms("1.5s") == 1500.0
    with pytest.raises(ValueError):
        SLO.parse("latency=3")
    with pytest.raises(ValueError):
        SLO.parse("ttft=fast")
    assert parse_int_list("1,8,32") == (1, 8, 32)
    with pytest.raises(ValueError):
        parse_int_list("0,4")
    assert parse_rate_list("0.5,inf") == (0.5, math.inf)


def test_poisson_arrivals_are_seeded() -> None:
    a = poisson_arrivals(10.0, seed=5, num_requests=500)
    assert a == poisson_arrivals(10.0, seed=5, num_requests=500)
    assert a != poisson_arrivals(10.0, seed=6, num_requests=500)
    assert a[0] == 0.0 and all(x < y for x, y in zip(a, a[1:], strict=False))
    gaps = np.diff(a)
    assert 0.08 < gaps.mean() < 0.12  # mean 1/rate
    assert np.std(gaps) == pytest.approx(gaps.mean(), rel=0.2)  # exponential: std == mean
    timed = poisson_arrivals(10.0, seed=5, duration=3.0)
    assert timed == [t for t in a if t < 3.0]
    assert poisson_arrivals(math.inf, seed=0, num_requests=3) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        poisson_arrivals(math.inf, seed=0, duration=1.0)


PROM = """# HELP inferd_spec_decode_num_draft_tokens_total drafts
# TYPE inferd_spec_decode_num_draft_tokens_total counter
inferd_spec_decode_num_draft_tokens_total{model="a"} 100.0
inferd_spec_decode_num_draft_tokens_total{model="b"} 50.0
inferd_spec_decode_num_accepted_tokens_total{model="a",note="x,y=\\"z\\""} 60
inferd_spec_decode_num_draft_tokens_created{model="a"} 1.7e9
inferd_prefix_cache_hit_rate{model="a"} 0.5
inferd_prefix_cache_hit_rate{model="b"} 0.7
inferd_num_preemptions_total 2
"""


def test_prometheus_parsing_and_run_delta() -> None:
    before = parse_prometheus(PROM)
    assert before["inferd_spec_decode_num_draft_tokens_total"] == 150.0
    assert before["inferd_prefix_cache_hit_rate"] == pytest.approx(0.6)  # ratio gauges averaged
    after = dict(before)
    after["inferd_spec_decode_num_draft_tokens_total"] += 40
    after["inferd_spec_decode_num_accepted_tokens_total"] += 30
    stats = run_server_stats(before, after)
    assert stats["spec_acceptance_rate"] == pytest.approx(0.75)
    assert stats["preemptions"] == 0
    assert run_server_stats(None, None) == {}
    assert "spec_acceptance_rate" not in run_server_stats(before, before)
