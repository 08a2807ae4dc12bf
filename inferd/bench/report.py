"""Human and machine output: per-run text blocks, a sweep table, JSON files, and A/B comparison.

Everything here works on the JSON-able dicts (`BenchResult.to_dict()` or a loaded `--json` file),
so comparing two saved files needs no live objects.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from inferd.bench.records import BenchResult

LATENCIES = (("TTFT", "ttft_ms"), ("ITL", "itl_ms"), ("TPOT", "tpot_ms"), ("E2E", "e2e_ms"))
SOURCE_NAMES = {
    "usage": "server usage",
    "tokenizer": "local tokenizer",
    "sse-events": "SSE content events",
    "estimate": "workload estimate",
}


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _sources(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "-"
    return ", ".join(f"{SOURCE_NAMES.get(k, k)} ({v / total:.0%})" for k, v in counts.items())


def format_run(run: dict[str, Any]) -> str:
    """A readable block for one run (a `RunResult.to_dict()`)."""
    s, server = run["summary"], run.get("server") or {}
    lines = [f"=== {run['label']} === started {run['started_at']}, {s['duration_s']:.2f} s"]
    fails = ", ".join(f"{k}: {v}" for k, v in s["failure_reasons"].items())
    lines.append(
        f"Requests     {s['requests']} sent, {s['completed']} completed, {s['failed']} failed"
        + (f" ({fails})" if fails else "")
    )
    lines.append(
        f"Tokens       prompt {s['prompt_tokens']:,} (mean {_num(s['mean_prompt_tokens'], 1)}), "
        f"output {s['output_tokens']:,} (mean {_num(s['mean_output_tokens'], 1)})"
    )
    lines.append(
        f"Counted by   output: {_sources(s['token_sources']['output'])}; "
        f"prompt: {_sources(s['token_sources']['prompt'])}"
    )
    lines.append(
        f"Throughput   {_num(s['request_throughput'])} req/s, {_num(s['output_throughput'], 1)} output tok/s, "
        f"{_num(s['total_token_throughput'], 1)} total tok/s (peak in flight {s['peak_in_flight']})"
    )
    if s.get("goodput") is not None:
        targets = ", ".join(f"{k.removesuffix('_ms')}<={v:g}ms" for k, v in s["slo"].items())
        lines.append(
            f"Goodput      {_pct(s['goodput'])} of requests met {targets} "
            f"({_num(s['goodput_request_throughput'])} req/s)"
        )
    if s.get("cost_per_million_output_tokens") is not None:
        lines.append(
            f"Cost         ${s['cost_per_million_output_tokens']:,.4f} per 1M output tokens "
            f"at ${s['price_per_hour']:g}/h"
        )
    if "spec_acceptance_rate" in server:
        lines.append(
            f"Spec decode  acceptance {_pct(server['spec_acceptance_rate'])} "
            f"({server['spec_accepted_tokens']:,.0f}/{server['spec_draft_tokens']:,.0f} draft tokens)"
        )
    elif server.get("spec_draft_tokens") == 0:
        lines.append("Spec decode  no draft tokens proposed during this run")
    if "prefix_cache_hit_rate" in server:
        lines.append(
            f"Prefix cache hit rate {_pct(server['prefix_cache_hit_rate'])} (server gauge after run)"
        )
    lines.append(f"{'Latency (ms)':<14}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}")
    for name, key in LATENCIES:
        st = s.get(key)
        if st is None:
            lines.append(f"  {name:<12}{'-':>10}{'-':>10}{'-':>10}{'-':>10}{'-':>10}")
        else:
            lines.append(
                f"  {name:<12}"
                + "".join(f"{_num(st[k]):>10}" for k in ("mean", "p50", "p90", "p99", "max"))
            )
    return "\n".join(lines)


def format_sweep(runs: list[dict[str, Any]]) -> str:
    """One row per run: the figures one compares across load levels."""
    head = (
        f"{'load':<26}{'ok/fail':>10}{'req/s':>9}{'out tok/s':>11}{'TTFT p50':>10}{'TTFT p99':>10}"
        f"{'ITL p50':>9}{'ITL p99':>9}{'TPOT p50':>10}{'E2E p50':>10}{'goodput':>9}"
    )
    rows = [head, "-" * len(head)]
    for run in runs:
        s = run["summary"]

        def p(key: str, q: str, s: dict[str, Any] = s) -> str:
            return _num((s.get(key) or {}).get(q), 1)

        okfail = f"{s['completed']}/{s['failed']}"
        rows.append(
            f"{run['label']:<26}{okfail:>10}{_num(s['request_throughput']):>9}"
            f"{_num(s['output_throughput'], 1):>11}{p('ttft_ms', 'p50'):>10}{p('ttft_ms', 'p99'):>10}"
            f"{p('itl_ms', 'p50'):>9}{p('itl_ms', 'p99'):>9}{p('tpot_ms', 'p50'):>10}"
            f"{p('e2e_ms', 'p50'):>10}{_pct(s.get('goodput')):>9}"
        )
    return "\n".join(rows) + "\n(latencies in ms)"


def format_result(result: dict[str, Any]) -> str:
    parts = [format_run(r) for r in result["runs"]]
    if len(result["runs"]) > 1:
        parts.append(format_sweep(result["runs"]))
    return "\n\n".join(parts)


def write_json(result: BenchResult, path: str | Path, include_text: bool = False) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(result.to_dict(include_text), indent=1, allow_nan=False, default=str)
    )


def load_json(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "runs" not in data:
        raise ValueError(f"{path}: not an inferd bench JSON file (no 'runs')")
    return data


# (label, path into summary, higher_is_better)
COMPARE_METRICS: list[tuple[str, tuple[str, ...], bool]] = [
    ("request throughput (req/s)", ("request_throughput",), True),
    ("output throughput (tok/s)", ("output_throughput",), True),
    ("total throughput (tok/s)", ("total_token_throughput",), True),
    *[
        (f"{name} {q} (ms)", (key, q), False)
        for name, key in LATENCIES
        for q in ("mean", "p50", "p90", "p99")
    ],
    ("goodput (share)", ("goodput",), True),
    ("failed requests", ("failed",), False),
    ("cost per 1M output tokens", ("cost_per_million_output_tokens",), False),
]


def _get(summary: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = summary
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, int | float) else None


def pair_runs(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Match runs by label (same load level); fall back to position when labels differ."""
    b_by_label = {r["label"]: r for r in b["runs"]}
    if all(r["label"] in b_by_label for r in a["runs"]):
        return [(r, b_by_label[r["label"]]) for r in a["runs"]]
    return list(zip(a["runs"], b["runs"], strict=False))


def compare(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    """Side-by-side summaries with B/A ratios and which side is better for each figure."""
    out = [f"A = {name_a}\nB = {name_b}\nratio = B / A"]
    for run_a, run_b in pair_runs(a, b):
        title = (
            run_a["label"]
            if run_a["label"] == run_b["label"]
            else f"{run_a['label']} vs {run_b['label']}"
        )
        out.append(f"\n=== {title} ===")
        out.append(f"{'metric':<30}{'A':>14}{'B':>14}{'B/A':>9}  better")
        for label, path, higher in COMPARE_METRICS:
            va, vb = _get(run_a["summary"], path), _get(run_b["summary"], path)
            if va is None and vb is None:
                continue
            ratio = vb / va if va not in (None, 0) and vb is not None else None
            better = ""
            if va is not None and vb is not None and va != vb:
                better = "B" if (vb > va) == higher else "A"
            out.append(f"{label:<30}{_num(va):>14}{_num(vb):>14}{_num(ratio, 3):>9}  {better}")
    return "\n".join(out)
