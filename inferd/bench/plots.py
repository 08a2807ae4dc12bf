"""PNG charts of a benchmark result with matplotlib (Agg backend, no display needed).

Works on the JSON-able result dict, so a saved `--json` file can be plotted again later.
Writes latency percentiles and throughput against the load level (concurrency or request rate),
plus TTFT and ITL CDFs with one line per run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: benchmarks run on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LATENCY_PANELS = (
    ("TTFT", "ttft_ms"),
    ("ITL", "itl_ms"),
    ("TPOT", "tpot_ms"),
    ("E2E latency", "e2e_ms"),
)
PERCENTILE_STYLE = (("p50", "-o"), ("p90", "-s"), ("p99", "-^"), ("mean", "--x"))


def _load_axis(runs: list[dict[str, Any]]) -> tuple[list[float], str, list[str] | None]:
    """x values, axis label, and tick labels when the loads are not plain numbers."""
    modes = {r["load"].get("mode") for r in runs}
    if modes == {"concurrency"}:
        return (
            [float(r["load"]["concurrency"]) for r in runs],
            "concurrency (requests in flight)",
            None,
        )
    if modes == {"rate"}:
        rates = [r["load"]["request_rate"] for r in runs]
        if all(isinstance(x, int | float) and math.isfinite(x) for x in rates):
            return [float(x) for x in rates], "request rate (req/s, Poisson)", None
    return [float(i) for i in range(len(runs))], "run", [r["label"] for r in runs]


def _style_x(ax: Any, xs: list[float], ticks: list[str] | None) -> None:
    if ticks is not None:
        ax.set_xticks(xs, ticks, rotation=20, fontsize=8)
    else:
        if len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.grid(True, alpha=0.3)


def plot_latency(result: dict[str, Any], path: Path) -> None:
    runs = result["runs"]
    xs, xlabel, ticks = _load_axis(runs)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (title, key) in zip(axes.flat, LATENCY_PANELS, strict=True):
        for q, style in PERCENTILE_STYLE:
            ys = [((r["summary"].get(key) or {}).get(q, np.nan)) for r in runs]
            ax.plot(xs, ys, style, label=q, markersize=4)
        ax.set_title(f"{title} (ms)")
        ax.set_xlabel(xlabel)
        _style_x(ax, xs, ticks)
        ax.legend(fontsize=8)
    fig.suptitle("Latency percentiles vs load")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_throughput(result: dict[str, Any], path: Path) -> None:
    """Three panels, because prompt-heavy runs make total tok/s dwarf output tok/s on one axis."""
    runs = result["runs"]
    xs, xlabel, ticks = _load_axis(runs)
    panels = (
        ("output tokens / s", "output_throughput", "tab:blue"),
        ("total tokens / s (prompt + output)", "total_token_throughput", "tab:cyan"),
        ("requests / s", "request_throughput", "tab:orange"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
    for ax, (title, key, color) in zip(axes, panels, strict=True):
        ax.plot(xs, [r["summary"][key] for r in runs], "-o", color=color)
        if key == "request_throughput" and any(
            r["summary"].get("goodput") is not None for r in runs
        ):
            ax.plot(
                xs,
                [r["summary"].get("goodput_request_throughput") or 0.0 for r in runs],
                "--s",
                color="tab:green",
                label="goodput req/s",
            )
            ax.legend(fontsize=8)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylim(bottom=0)
        _style_x(ax, xs, ticks)
    fig.suptitle("Throughput vs load")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _record_values(run: dict[str, Any], which: str) -> list[float]:
    """Per-run samples in ms: TTFT per request, or every ITL gap, successful requests only."""
    values: list[float] = []
    for rec in run["records"]:
        if not rec.get("success"):
            continue
        if which == "ttft" and rec.get("ttft") is not None:
            values.append(rec["ttft"] * 1000.0)
        elif which == "itl":
            t = rec.get("token_times") or []
            values.extend((b - a) * 1000.0 for a, b in zip(t, t[1:], strict=False))
    return values


def plot_cdf(result: dict[str, Any], which: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in result["runs"]:
        values = np.sort(np.asarray(_record_values(run, which)))
        if values.size == 0:
            continue
        ax.step(
            values, np.arange(1, values.size + 1) / values.size, where="post", label=run["label"]
        )
    ax.set_xlabel(f"{which.upper()} (ms)")
    ax.set_ylabel("share of samples")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    ax.set_title(f"{which.upper()} CDF")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write every chart into `out_dir` (created if needed) and return the file paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "latency": out / "latency_percentiles.png",
        "throughput": out / "throughput.png",
        "ttft": out / "ttft_cdf.png",
        "itl": out / "itl_cdf.png",
    }
    plot_latency(result, paths["latency"])
    plot_throughput(result, paths["throughput"])
    plot_cdf(result, "ttft", paths["ttft"])
    plot_cdf(result, "itl", paths["itl"])
    return list(paths.values())
