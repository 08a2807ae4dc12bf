"""`run_benchmark(config) -> BenchResult`: the Python entry point behind `inferd bench`.

Builds the workload, warms the server up, then runs each load level of the sweep (concurrency
levels or Poisson rates) with one shared HTTP client, scraping `/metrics` around each run, and
turns the records into summaries. Printing is left to the caller (`on_run` sees each run as it
finishes).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from inferd.bench.client import build_body, request_headers, stream_request
from inferd.bench.config import BenchConfig
from inferd.bench.loadgen import poisson_arrivals, run_closed_loop, run_open_loop
from inferd.bench.metrics import summarize
from inferd.bench.progress import ProgressBar
from inferd.bench.records import BenchResult, RequestRecord, RunResult
from inferd.bench.server_metrics import run_server_stats, scrape
from inferd.bench.tokens import LazyTokenizer, fill_token_counts
from inferd.bench.workloads import RequestSource

RunCallback = Callable[[RunResult], None]


def load_levels(cfg: BenchConfig) -> list[tuple[str, dict]]:
    """(label, load description) for each run of the sweep, in order."""
    if cfg.request_rates:
        levels = []
        for rate in cfg.request_rates:
            label = f"rate={'inf' if math.isinf(rate) else f'{rate:g}'}/s"
            if cfg.max_concurrency:
                label += f" max_conc={cfg.max_concurrency}"
            load = {
                "mode": "rate",
                "request_rate": rate if math.isfinite(rate) else "inf",
                "max_concurrency": cfg.max_concurrency,
            }
            levels.append((label, load))
        return levels
    return [
        (f"concurrency={c}", {"mode": "concurrency", "concurrency": c}) for c in cfg.concurrency
    ]


async def arun_benchmark(cfg: BenchConfig, on_run: RunCallback | None = None) -> BenchResult:
    """Async form of `run_benchmark`, for callers that already run an event loop."""
    if (
        cfg.request_rates
        and any(math.isinf(r) for r in cfg.request_rates)
        and cfg.num_requests is None
    ):
        raise ValueError("request rate 'inf' needs num_requests")
    tokenizer = LazyTokenizer(cfg.tokenizer)
    fit = tokenizer.fit if tokenizer.available else None
    source = RequestSource(cfg.workload, cfg.seed, fit)
    # Warm-up draws from its own stream so measured requests do not depend on --warmup.
    warm_source = RequestSource(cfg.workload, cfg.seed + 1_000_003, fit)
    if cfg.num_requests is not None:
        source(cfg.num_requests - 1)  # build prompts now, not between timed requests

    headers = request_headers(cfg.api_key)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(cfg.timeout, connect=min(cfg.timeout, 30.0))
    runs: list[RunResult] = []
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        def sender(src: RequestSource, t0: float):
            async def send(index: int, scheduled: float | None) -> RequestRecord:
                body = build_body(src(index), cfg)
                return await stream_request(
                    client,
                    cfg.request_url,
                    headers,
                    body,
                    index=index,
                    t0=t0,
                    timeout=cfg.timeout,
                    scheduled_time=scheduled,
                )

            return send

        if cfg.warmup:
            width = min(cfg.warmup, max(cfg.max_concurrency or 1, *cfg.concurrency))
            bar = ProgressBar("warmup", cfg.warmup, None, enabled=cfg.progress)
            t0 = time.perf_counter()
            await run_closed_loop(sender(warm_source, t0), width, t0, cfg.warmup, None, bar.update)
            bar.close()

        for label, load in load_levels(cfg):
            before = await scrape(client, cfg.resolved_metrics_url)
            bar = ProgressBar(label, cfg.num_requests, cfg.duration, enabled=cfg.progress)
            started_at = datetime.now(UTC).isoformat(timespec="seconds")
            t0 = time.perf_counter()
            if load["mode"] == "rate":
                rate = float(load["request_rate"])
                arrivals = poisson_arrivals(rate, cfg.seed, cfg.num_requests, cfg.duration)
                records = await run_open_loop(
                    sender(source, t0), arrivals, t0, cfg.max_concurrency, bar.update
                )
            else:
                records = await run_closed_loop(
                    sender(source, t0),
                    load["concurrency"],
                    t0,
                    cfg.num_requests,
                    cfg.duration,
                    bar.update,
                )
            duration = time.perf_counter() - t0
            bar.close()
            after = await scrape(client, cfg.resolved_metrics_url)

            fill_token_counts(
                records, {r.index: source(r.index) for r in records}, cfg.endpoint, tokenizer
            )
            run = RunResult(
                label=label,
                load=load,
                started_at=started_at,
                duration=duration,
                records=records,
                summary=summarize(records, duration, cfg.slo, cfg.price_per_hour),
                server=run_server_stats(before, after),
            )
            runs.append(run)
            if on_run:
                on_run(run)
    return BenchResult(config=cfg.to_dict(), runs=runs)


def run_benchmark(cfg: BenchConfig, on_run: RunCallback | None = None) -> BenchResult:
    """Run the whole sweep described by `cfg` and return every record and summary."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun_benchmark(cfg, on_run))
    raise RuntimeError(
        "run_benchmark was called inside an event loop; await arun_benchmark instead"
    )
