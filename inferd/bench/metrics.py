"""Per-request records -> one run's summary (plain JSON-able dict).

Definitions follow vLLM `bench serve` / genai-perf: TTFT = send -> first content event;
ITL = gaps between content events (pooled over all successful requests); TPOT =
(e2e - TTFT) / (output_tokens - 1) per request; throughputs divide successful requests' tokens by
the run's wall time; goodput = share of *all* requests that succeeded and met every SLO set.
Latencies are reported in milliseconds.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from inferd.bench.config import SLO
from inferd.bench.records import RequestRecord

PERCENTILES = (50, 90, 99)


def latency_stats(values_s: list[float]) -> dict[str, float] | None:
    """mean/std/min/max/p50/p90/p99 in ms of values given in seconds; None when empty."""
    if not values_s:
        return None
    ms = np.asarray(values_s, dtype=np.float64) * 1000.0
    stats = {
        "count": int(ms.size),
        "mean": float(ms.mean()),
        "std": float(ms.std()),
        "min": float(ms.min()),
        "max": float(ms.max()),
    }
    for p in PERCENTILES:
        stats[f"p{p}"] = float(np.percentile(ms, p))
    return stats


def meets_slo(rec: RequestRecord, slo: SLO) -> bool:
    """True when the request succeeded and met every target that is set."""
    if not rec.success:
        return False
    checks: list[tuple[float | None, float | None]] = [
        (slo.ttft_ms, rec.ttft),
        (slo.e2e_ms, rec.e2e),
        (slo.tpot_ms, rec.tpot),
    ]
    if slo.itl_ms is not None:
        itls = rec.itls
        # One-token answers have no gaps: nothing to violate.
        checks.append((slo.itl_ms, sum(itls) / len(itls) if itls else 0.0))
    for target_ms, value_s in checks:
        if target_ms is None:
            continue
        if value_s is None or value_s * 1000.0 > target_ms:
            return False
    return True


def peak_in_flight(records: list[RequestRecord]) -> int:
    """Most requests open at once, as the client saw them (send..end intervals)."""
    events: list[tuple[float, int]] = []
    for r in records:
        if r.end_time is not None:
            events += [(r.send_time, 1), (r.end_time, -1)]
    peak = cur = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):  # ends before starts at ties
        cur += delta
        peak = max(peak, cur)
    return peak


def summarize(
    records: list[RequestRecord], duration: float, slo: SLO, price_per_hour: float | None = None
) -> dict[str, Any]:
    """The run summary. `duration` is the run's wall time in seconds."""
    ok = [r for r in records if r.success]
    failed = [r for r in records if not r.success]
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    in_tokens = sum(r.prompt_tokens or 0 for r in ok)
    dur = max(duration, 1e-9)

    ttfts = [r.ttft for r in ok if r.ttft is not None]
    itls = [gap for r in ok for gap in r.itls]
    tpots = [r.tpot for r in ok if r.tpot is not None]
    e2es = [r.e2e for r in ok if r.e2e is not None]

    summary: dict[str, Any] = {
        "requests": len(records),
        "completed": len(ok),
        "failed": len(failed),
        "failure_reasons": dict(Counter(r.error_kind or "unknown" for r in failed).most_common()),
        "duration_s": duration,
        "prompt_tokens": in_tokens,
        "output_tokens": out_tokens,
        "mean_prompt_tokens": in_tokens / len(ok) if ok else None,
        "mean_output_tokens": out_tokens / len(ok) if ok else None,
        "request_throughput": len(ok) / dur,
        "output_throughput": out_tokens / dur,
        "total_token_throughput": (in_tokens + out_tokens) / dur,
        "ttft_ms": latency_stats(ttfts),
        "itl_ms": latency_stats(itls),
        "tpot_ms": latency_stats(tpots),
        "e2e_ms": latency_stats(e2es),
        "peak_in_flight": peak_in_flight(records),
        "token_sources": {
            "output": dict(Counter(r.output_token_source for r in ok if r.output_token_source)),
            "prompt": dict(Counter(r.prompt_token_source for r in ok if r.prompt_token_source)),
        },
        "slo": {k: v for k, v in vars(slo).items() if v is not None},
        "goodput": None,
        "goodput_request_throughput": None,
        "cost_per_million_output_tokens": None,
    }
    if slo.is_set and records:
        good = sum(meets_slo(r, slo) for r in records)
        summary["goodput"] = good / len(records)
        summary["goodput_request_throughput"] = good / dur
    if price_per_hour is not None and summary["output_throughput"] > 0:
        summary["price_per_hour"] = price_per_hour
        summary["cost_per_million_output_tokens"] = (
            price_per_hour / (summary["output_throughput"] * 3600.0) * 1e6
        )
    return summary
