"""Optional server-side figures read from the endpoint's Prometheus `/metrics`.

Before and after each run the bench scrapes `/metrics`; counter deltas give, for inferd, the
speculative-decoding acceptance rate of exactly that run. Any trouble (no such endpoint, other
server, garbage) yields None: the benchmark never fails because of this.
"""

from __future__ import annotations

import math
import re

import httpx

DRAFT = "inferd_spec_decode_num_draft_tokens_total"
ACCEPTED = "inferd_spec_decode_num_accepted_tokens_total"
PREFIX_HIT_RATE = "inferd_prefix_cache_hit_rate"
PREEMPTIONS = "inferd_num_preemptions_total"

_RATIO_GAUGES = {PREFIX_HIT_RATE, "inferd_kv_cache_usage_ratio"}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, float]:
    """Per metric name, the sum over label sets (all models together); ratio gauges are averaged."""
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        if math.isnan(value):
            continue
        totals[m.group(1)] = totals.get(m.group(1), 0.0) + value
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    for name in _RATIO_GAUGES & totals.keys():
        totals[name] /= counts[name]
    return totals


async def scrape(
    client: httpx.AsyncClient, url: str, timeout: float = 5.0
) -> dict[str, float] | None:
    """Metric name -> summed value, or None when the server has no readable /metrics."""
    try:
        resp = await client.get(url, timeout=timeout)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    values = parse_prometheus(resp.text)
    return values or None


def run_server_stats(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> dict[str, float]:
    """What the server did during one run, from two scrapes; empty when nothing is known."""
    if not after:
        return {}
    stats: dict[str, float] = {}
    if before is not None and DRAFT in after and ACCEPTED in after:
        drafted = after[DRAFT] - before.get(DRAFT, 0.0)
        accepted = after[ACCEPTED] - before.get(ACCEPTED, 0.0)
        stats["spec_draft_tokens"] = drafted
        stats["spec_accepted_tokens"] = accepted
        if drafted > 0:
            stats["spec_acceptance_rate"] = accepted / drafted
    if before is not None and PREEMPTIONS in after:
        stats["preemptions"] = after[PREEMPTIONS] - before.get(PREEMPTIONS, 0.0)
    if PREFIX_HIT_RATE in after:
        stats["prefix_cache_hit_rate"] = after[PREFIX_HIT_RATE]
    return stats
