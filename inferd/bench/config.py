"""Benchmark configuration: frozen dataclasses built once (by the CLI or a script) and passed down.

`BenchConfig` says what to send (workload), where (endpoint), and how (load shape); `SLO` says
which latencies count a request as "good". Parsing of the small string formats the CLI accepts
(`ttft=200ms,itl=50ms`, `1,8,32`) lives here so scripts get the same behaviour.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

WORKLOADS = ("random", "chat", "shared-prefix", "long-context", "repetitive")
ENDPOINTS = ("chat", "completions")


@dataclass(frozen=True)
class SLO:
    """Latency targets in milliseconds; a request is good when it meets every one that is set.

    `itl` is compared with the request's mean inter-token gap and `tpot` with its TPOT (both as
    genai-perf / vLLM do per request); `ttft` and `e2e` with the request's own values.
    """

    ttft_ms: float | None = None
    itl_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @property
    def is_set(self) -> bool:
        return any(v is not None for v in asdict(self).values())

    @classmethod
    def parse(cls, text: str | None) -> SLO:
        """`ttft=200ms,itl=50` (bare numbers are milliseconds; `s` and `ms` suffixes accepted)."""
        if not text:
            return cls()
        values: dict[str, float] = {}
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, raw = part.partition("=")
            key = key.strip().lower()
            if not sep or key not in ("ttft", "itl", "tpot", "e2e", "e2el"):
                raise ValueError(
                    f"bad SLO item {part!r}: expected KEY=VALUE with KEY in ttft, itl, tpot, e2e"
                )
            values[("e2e" if key == "e2el" else key) + "_ms"] = parse_duration_ms(raw)
        return cls(**values)


def parse_duration_ms(raw: str) -> float:
    """`250`, `250ms`, `0.25s` -> 250.0 (milliseconds)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s)?\s*", raw)
    if not m:
        raise ValueError(f"bad duration {raw!r}: use e.g. 200, 200ms or 0.2s")
    value = float(m.group(1))
    return value * 1000.0 if m.group(2) == "s" else value


def parse_int_list(text: str) -> tuple[int, ...]:
    """`1,8,32` -> (1, 8, 32); every value must be a positive integer."""
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or any(v < 1 for v in values):
        raise ValueError(f"expected positive integers separated by commas, got {text!r}")
    return values


def parse_rate_list(text: str) -> tuple[float, ...]:
    """`0.5,2,inf` -> (0.5, 2.0, inf); `inf` sends every request at once."""
    values = tuple(float(v) for v in text.split(",") if v.strip())
    if not values or any(not (v > 0) for v in values):
        raise ValueError(f"expected positive rates (requests/s) separated by commas, got {text!r}")
    return values


@dataclass(frozen=True)
class WorkloadConfig:
    """What the requests look like. Lengths are in tokens; None means the workload's default.

    `input_spread`/`output_spread` are relative half-widths: 0.25 draws lengths uniformly from
    [0.75 L, 1.25 L]. `prefix_len`/`num_prefixes` only matter for `shared-prefix`.
    """

    kind: str = "random"
    dataset: str | None = None
    input_len: int | None = None
    output_len: int | None = None
    input_spread: float = 0.0
    output_spread: float = 0.0
    prefix_len: int = 1024
    num_prefixes: int = 1

    def __post_init__(self) -> None:
        if self.dataset is None and self.kind not in WORKLOADS:
            raise ValueError(f"unknown workload {self.kind!r}; choose one of {WORKLOADS}")
        for name in ("input_spread", "output_spread"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        if self.num_prefixes < 1:
            raise ValueError("num_prefixes must be >= 1")


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark invocation: a sweep of runs over `concurrency` or `request_rates`.

    Load shape: when `request_rates` is non-empty, each rate is an open-loop Poisson run
    (optionally capped by `max_concurrency`); otherwise each `concurrency` level is a closed-loop
    run with that many requests in flight. A run stops after `num_requests` requests or
    `duration` seconds, whichever comes first; every request is bounded by `timeout` seconds.
    """

    base_url: str
    model: str
    api_key: str | None = None
    endpoint: str = "chat"
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    concurrency: tuple[int, ...] = (1,)
    request_rates: tuple[float, ...] = ()
    max_concurrency: int | None = None
    num_requests: int | None = 100
    duration: float | None = None
    warmup: int = 0
    seed: int = 0
    timeout: float = 300.0
    temperature: float = 0.0
    ignore_eos: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)
    slo: SLO = field(default_factory=SLO)
    tokenizer: str | None = None
    metrics_url: str | None = None
    gpu_hour_price: float | None = None
    num_gpus: int = 1
    instance_price: float | None = None
    progress: bool = False
    label: str | None = None
    save_text: bool = False

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {self.endpoint!r}")
        if self.num_requests is None and self.duration is None:
            raise ValueError("give num_requests or duration (or both) so every run is bounded")
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError("num_requests must be >= 1")
        if self.duration is not None and not (0 < self.duration < math.inf):
            raise ValueError("duration must be a positive number of seconds")
        if not (0 < self.timeout < math.inf):
            raise ValueError("timeout must be a positive number of seconds")
        if self.warmup < 0:
            raise ValueError("warmup must be >= 0")

    @property
    def api_root(self) -> str:
        """The OpenAI API root, e.g. `http://host:8000/v1` (a bare `host:port` gets `/v1`)."""
        parts = urlsplit(self.base_url.rstrip("/"))
        path = parts.path if parts.path not in ("", "/") else "/v1"
        return urlunsplit((parts.scheme, parts.netloc, path, "", ""))

    @property
    def request_url(self) -> str:
        suffix = "chat/completions" if self.endpoint == "chat" else "completions"
        return f"{self.api_root}/{suffix}"

    @property
    def resolved_metrics_url(self) -> str:
        """Prometheus endpoint: explicit, else the API root without its trailing `/v1`."""
        if self.metrics_url:
            return self.metrics_url
        root = self.api_root
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        return f"{root}/metrics"

    @property
    def price_per_hour(self) -> float | None:
        """Hourly price of what serves the endpoint: the instance, else GPUs x GPU-hour price."""
        if self.instance_price is not None:
            return self.instance_price
        if self.gpu_hour_price is not None:
            return self.gpu_hour_price * self.num_gpus
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view; the API key is never written out."""
        d = asdict(self)
        d["api_key"] = "***" if self.api_key else None
        d["request_rates"] = [r if math.isfinite(r) else "inf" for r in self.request_rates]
        d["concurrency"] = list(self.concurrency)
        return d
