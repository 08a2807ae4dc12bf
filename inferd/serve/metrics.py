"""Prometheus metrics for `/metrics`: latency histograms, token and request counters, engine gauges.

Each app owns a CollectorRegistry (never the global one), so tests can build several apps.
Per-token and per-request events come from the engine thread through an `EngineObserver`;
gauges (queue depth, KV use, prefix hits, preemptions, speculative counts) are read from the
engine when scraped. `compat="vllm"` also publishes the same series under vLLM's names.
Every metric is documented in METRICS.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferd.engine.async_engine import AsyncEngine
from inferd.engine.engine import EngineObserver
from inferd.engine.sequence import Request, Sequence
from inferd.model.moe import expert_token_totals

# Bucket edges reach down to a millisecond: a small model on a GPU decodes faster than vLLM's
# default edges resolve, and a CPU run with a long queue reaches minutes.
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
               0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000)
STEP_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)  # vLLM's edges
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                   40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0)


@dataclass(frozen=True)
class Scheme:
    """How one family of names spells each series (inferd's own, or vLLM's)."""

    label: str  # the model label's name
    reason_label: str  # the finish-reason label's name on the request counter
    ttft: str
    itl: str
    tpot: str
    e2e: str
    queue: str
    prompt_tokens: str
    generation_tokens: str
    requests: str
    preemptions: str
    running: str
    waiting: str
    kv_usage: str
    prefix_hit_rate: str | None
    prefix_hits: str | None
    prefix_queries: str | None
    spec_draft: str
    spec_accepted: str
    request_prompt_tokens: str = ""
    request_generation_tokens: str = ""
    prefill_time: str = ""
    decode_time: str = ""
    iteration_tokens: str = ""
    cache_config: str = ""
    kv_capacity: str | None = None  # tokens the KV pool holds
    kv_bytes: str | None = None  # memory the KV pool takes


INFERD = Scheme(
    label="model", reason_label="finish_reason",
    ttft="inferd_time_to_first_token_seconds", itl="inferd_inter_token_latency_seconds",
    tpot="inferd_time_per_output_token_seconds", e2e="inferd_e2e_request_latency_seconds",
    queue="inferd_request_queue_time_seconds", prompt_tokens="inferd_prompt_tokens",
    generation_tokens="inferd_generation_tokens", requests="inferd_requests",
    preemptions="inferd_num_preemptions", running="inferd_num_requests_running",
    waiting="inferd_num_requests_waiting", kv_usage="inferd_kv_cache_usage_ratio",
    prefix_hit_rate="inferd_prefix_cache_hit_rate", prefix_hits="inferd_prefix_cache_hits",
    prefix_queries="inferd_prefix_cache_queries",
    spec_draft="inferd_spec_decode_num_draft_tokens", spec_accepted="inferd_spec_decode_num_accepted_tokens",
    request_prompt_tokens="inferd_request_prompt_tokens",
    request_generation_tokens="inferd_request_generation_tokens",
    prefill_time="inferd_request_prefill_time_seconds", decode_time="inferd_request_decode_time_seconds",
    iteration_tokens="inferd_iteration_tokens", cache_config="inferd_cache_config_info",
    kv_capacity="inferd_kv_cache_capacity_tokens", kv_bytes="inferd_kv_cache_memory_bytes")

VLLM = Scheme(
    label="model_name", reason_label="finished_reason",
    ttft="vllm:time_to_first_token_seconds", itl="vllm:inter_token_latency_seconds",
    tpot="vllm:time_per_output_token_seconds", e2e="vllm:e2e_request_latency_seconds",
    queue="vllm:request_queue_time_seconds", prompt_tokens="vllm:prompt_tokens",
    generation_tokens="vllm:generation_tokens", requests="vllm:request_success",
    preemptions="vllm:num_preemptions", running="vllm:num_requests_running",
    waiting="vllm:num_requests_waiting", kv_usage="vllm:kv_cache_usage_perc",
    prefix_hit_rate=None, prefix_hits="vllm:prefix_cache_hits", prefix_queries="vllm:prefix_cache_queries",
    spec_draft="vllm:spec_decode_num_draft_tokens", spec_accepted="vllm:spec_decode_num_accepted_tokens",
    request_prompt_tokens="vllm:request_prompt_tokens",
    request_generation_tokens="vllm:request_generation_tokens",
    prefill_time="vllm:request_prefill_time_seconds", decode_time="vllm:request_decode_time_seconds",
    iteration_tokens="vllm:iteration_tokens_total", cache_config="vllm:cache_config_info")

COMPAT_SCHEMES = {"vllm": VLLM}


class _Series:
    """The event-driven series (histograms, counters) of one naming scheme."""

    def __init__(self, scheme: Scheme, registry: CollectorRegistry):
        lbl = [scheme.label]
        self.scheme = scheme
        self.ttft = Histogram(scheme.ttft, "Time from arrival to the first generated token.", lbl,
                              buckets=TTFT_BUCKETS, registry=registry)
        self.itl = Histogram(scheme.itl, "Time between consecutive generated tokens of a request.",
                             lbl, buckets=ITL_BUCKETS, registry=registry)
        self.tpot = Histogram(scheme.tpot, "Mean time per output token after the first, per request.",
                              lbl, buckets=ITL_BUCKETS, registry=registry)
        self.e2e = Histogram(scheme.e2e, "Time from arrival to the end of a request.", lbl,
                             buckets=REQUEST_BUCKETS, registry=registry)
        self.queue = Histogram(scheme.queue, "Time a request waited before it was first scheduled.",
                               lbl, buckets=REQUEST_BUCKETS, registry=registry)
        self.prompt_tokens = Counter(scheme.prompt_tokens, "Prompt tokens of requests that started "
                                     "generating (prefix-cache hits included).", lbl, registry=registry)
        self.generation_tokens = Counter(scheme.generation_tokens, "Tokens generated.", lbl,
                                         registry=registry)
        self.requests = Counter(scheme.requests, "Finished requests, by finish reason.",
                                [scheme.label, scheme.reason_label], registry=registry)
        self.request_prompt = Histogram(scheme.request_prompt_tokens, "Prompt tokens per finished "
                                        "request.", lbl, buckets=TOKEN_BUCKETS, registry=registry)
        self.request_generation = Histogram(scheme.request_generation_tokens, "Generated tokens per "
                                            "finished request (all n samples).", lbl, buckets=TOKEN_BUCKETS,
                                            registry=registry)
        self.prefill = Histogram(scheme.prefill_time, "Time from a request's first scheduling to its "
                                 "first token.", lbl, buckets=REQUEST_BUCKETS, registry=registry)
        self.decode = Histogram(scheme.decode_time, "Time from a request's first token to its last.",
                                lbl, buckets=REQUEST_BUCKETS, registry=registry)
        self.iteration = Histogram(scheme.iteration_tokens, "Tokens (prompt and generated) per engine "
                                   "step.", lbl, buckets=STEP_BUCKETS, registry=registry)


class MetricsObserver(EngineObserver):
    """Turns one engine's events into observations (runs on the engine thread)."""

    def __init__(self, model: str, series: list[_Series]):
        self.model = model
        self._series = series
        self._ttft = [s.ttft.labels(model) for s in series]
        self._itl = [s.itl.labels(model) for s in series]
        self._tpot = [s.tpot.labels(model) for s in series]
        self._e2e = [s.e2e.labels(model) for s in series]
        self._queue = [s.queue.labels(model) for s in series]
        self._prompt = [s.prompt_tokens.labels(model) for s in series]
        self._gen = [s.generation_tokens.labels(model) for s in series]
        self._iteration = [s.iteration.labels(model) for s in series]

    def on_first_token(self, request: Request, now: float) -> None:
        t = request.timing
        queued = (t.first_scheduled or now) - t.arrival
        n_prompt = len(request.prompt_token_ids)
        for ttft, queue, prompt in zip(self._ttft, self._queue, self._prompt, strict=True):
            ttft.observe(now - t.arrival)
            queue.observe(queued)
            prompt.inc(n_prompt)

    def on_token(self, request: Request, seq: Sequence, gap: float) -> None:
        for itl in self._itl:
            itl.observe(gap)

    def on_step(self, prompt_tokens: int, generation_tokens: int) -> None:
        if generation_tokens:
            for gen in self._gen:
                gen.inc(generation_tokens)
        if prompt_tokens + generation_tokens:
            for iteration in self._iteration:
                iteration.observe(prompt_tokens + generation_tokens)

    def on_finished(self, request: Request, now: float) -> None:
        t = request.timing
        reason = "abort" if request.aborted else (request.seqs[0].finish_reason or "abort")
        n_out = max((s.num_output_tokens for s in request.seqs), default=0)
        for i, s in enumerate(self._series):
            self._e2e[i].observe(now - t.arrival)
            if t.first_token is not None and n_out > 1:
                self._tpot[i].observe((now - t.first_token) / (n_out - 1))
            s.requests.labels(self.model, reason).inc()
            s.request_prompt.labels(self.model).observe(len(request.prompt_token_ids))
            s.request_generation.labels(self.model).observe(sum(x.num_output_tokens for x in request.seqs))
            if t.first_token is not None:
                if t.first_scheduled is not None:
                    s.prefill.labels(self.model).observe(t.first_token - t.first_scheduled)
                s.decode.labels(self.model).observe((t.last_token or now) - t.first_token)


CACHE_INFO_LABELS = ["block_size", "num_gpu_blocks", "num_cpu_blocks", "cache_dtype",
                     "enable_prefix_caching", "gpu_memory_utilization"]  # vLLM's label names


def _cache_info(engine: AsyncEngine, stats) -> list[str]:
    """vLLM's cache_config_info labels; the pool's blocks are reported where they live."""
    cache = engine.config.cache
    on_gpu = engine.engine.loaded.device.type == "cuda"
    blocks = str(stats.num_blocks)
    return [str(stats.block_size), blocks if on_gpu else "0", "0" if on_gpu else blocks,
            cache.kv_cache_dtype, str(cache.enable_prefix_caching), str(cache.memory_fraction)]


class _EngineCollector(Collector):
    """Gauges and engine-owned counters, read from each engine at scrape time."""

    def __init__(self, schemes: list[Scheme], engines: dict[str, AsyncEngine]):
        self._schemes = schemes
        self._engines = engines

    def collect(self) -> Iterator[Metric]:
        for sc in self._schemes:
            lbl = [sc.label]
            fams = {
                "running": GaugeMetricFamily(sc.running, "Requests in the running batch.", labels=lbl),
                "waiting": GaugeMetricFamily(sc.waiting, "Requests waiting to be scheduled.", labels=lbl),
                "kv": GaugeMetricFamily(sc.kv_usage, "Fraction of KV-cache blocks held by live "
                                        "requests (0-1).", labels=lbl),
                "preempt": CounterMetricFamily(sc.preemptions, "Sequences preempted for lack of "
                                               "KV blocks.", labels=lbl),
            }
            if sc.prefix_hit_rate:
                fams["hit_rate"] = GaugeMetricFamily(sc.prefix_hit_rate, "Fraction of prompt tokens "
                                                     "served from the prefix cache since start.", labels=lbl)
            if sc.prefix_hits and sc.prefix_queries:
                fams["hits"] = CounterMetricFamily(sc.prefix_hits, "Prompt tokens served from the "
                                                   "prefix cache.", labels=lbl)
                fams["queries"] = CounterMetricFamily(sc.prefix_queries, "Prompt tokens looked up in "
                                                      "the prefix cache.", labels=lbl)
            cache_info = GaugeMetricFamily(sc.cache_config, "The KV cache's configuration (labels; "
                                           "value 1).", labels=[sc.label, *CACHE_INFO_LABELS])
            if sc.kv_capacity and sc.kv_bytes:
                fams["kv_capacity"] = GaugeMetricFamily(sc.kv_capacity, "Tokens the KV-cache pool holds "
                                                        "(blocks x block size).", labels=lbl)
                fams["kv_bytes"] = GaugeMetricFamily(sc.kv_bytes, "Bytes the KV-cache pool takes "
                                                     "(reserved; pages are touched as used).", labels=lbl)
            spec_draft = CounterMetricFamily(sc.spec_draft, "Draft tokens proposed by speculative "
                                             "decoding.", labels=lbl)
            spec_acc = CounterMetricFamily(sc.spec_accepted, "Draft tokens accepted by the target "
                                           "model.", labels=lbl)
            has_spec = False
            for model, engine in self._engines.items():
                stats = engine.stats()
                fams["running"].add_metric([model], stats.num_running)
                fams["waiting"].add_metric([model], stats.num_waiting)
                fams["kv"].add_metric([model], stats.kv_cache_usage)
                fams["preempt"].add_metric([model], stats.num_preemptions)
                cache_info.add_metric([model, *_cache_info(engine, stats)], 1)
                if "kv_capacity" in fams:
                    fams["kv_capacity"].add_metric([model], stats.num_blocks * stats.block_size)
                    fams["kv_bytes"].add_metric([model], stats.kv_cache_bytes)
                if "hit_rate" in fams:
                    fams["hit_rate"].add_metric([model], stats.prefix_cache_hit_rate)
                if "hits" in fams:
                    pool = engine.engine.pool
                    fams["hits"].add_metric([model], pool.hits)
                    fams["queries"].add_metric([model], pool.queries)
                spec = getattr(engine.engine, "speculator", None)
                drafted = getattr(spec, "num_draft_tokens", None)
                accepted = getattr(spec, "num_accepted_tokens", None)
                if drafted is not None and accepted is not None:
                    has_spec = True
                    spec_draft.add_metric([model], drafted)
                    spec_acc.add_metric([model], accepted)
            yield from fams.values()
            yield cache_info
            if has_spec:
                yield spec_draft
                yield spec_acc


class _MoeCollector(Collector):
    """`inferd_moe_expert_tokens_total{model,layer,expert}`: tokens routed to each expert of each
    MoE layer (runner padding excluded), read from the blocks' own counters at scrape time, so the
    engine does no per-step work for it. Dense models export nothing. Reading off the engine
    thread is safe enough for a counter: each count is one aligned int64 that only grows."""

    def __init__(self, engines: dict[str, AsyncEngine]):
        self._engines = engines

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("inferd_moe_expert_tokens", "Tokens routed to each expert of each "
                                     "MoE layer (a token counts once per chosen expert).",
                                     labels=["model", "layer", "expert"])
        for name, engine in self._engines.items():
            model = getattr(getattr(engine.engine, "loaded", None), "model", None)
            for layer, counts in (expert_token_totals(model) if model is not None else {}).items():
                for expert, tokens in enumerate(counts):
                    family.add_metric([name, str(layer), str(expert)], tokens)
        if family.samples:
            yield family


class ServerMetrics:
    """The app's registry; `attach` hooks one served engine under its model label."""

    def __init__(self, compat: str | None = None):
        if compat is not None and compat not in COMPAT_SCHEMES:
            raise ValueError(f"unknown metrics compatibility {compat!r}; choose from {sorted(COMPAT_SCHEMES)}")
        self.registry = CollectorRegistry()
        schemes = [INFERD] + ([COMPAT_SCHEMES[compat]] if compat else [])
        self._series = [_Series(s, self.registry) for s in schemes]
        self._engines: dict[str, AsyncEngine] = {}
        self.registry.register(_EngineCollector(schemes, self._engines))
        self.registry.register(_MoeCollector(self._engines))

    def attach(self, model: str, engine: AsyncEngine) -> None:
        engine.engine.observer = MetricsObserver(model, self._series)
        self._engines[model] = engine

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
