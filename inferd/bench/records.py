"""The nouns every benchmark module shares: a request to send, what happened to it, and results.

`RequestSpec` is produced by workloads, `RequestRecord` by the client (one per request, with raw
timestamps), `RunResult` by the load generator plus the summary, and `BenchResult` is what
`run_benchmark` returns. Times are seconds on `time.perf_counter`, relative to the run's start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RequestSpec:
    """One request body to send: a prompt (completions style) or messages (chat style).

    Either may be given; the client converts to what the endpoint needs.
    `estimated_prompt_tokens` is the workload's own estimate, used only when neither the server's
    `usage` nor a tokenizer can count the prompt.
    """

    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    max_tokens: int = 128
    estimated_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("RequestSpec needs exactly one of prompt or messages")

    def as_messages(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]

    def as_prompt(self) -> str:
        """Flatten chat messages into plain text for `/v1/completions` servers."""
        if self.prompt is not None:
            return self.prompt
        lines = [
            f"{m.get('role', 'user').capitalize()}: {m.get('content', '')}"
            for m in self.messages or ()
        ]
        return "\n\n".join(lines) + "\n\nAssistant:"


@dataclass
class RequestRecord:
    """Everything observed about one request. Filled by the client, then by token counting."""

    index: int
    send_time: float
    scheduled_time: float | None = None  # open-loop runs: when the Poisson schedule wanted it sent
    first_token_time: float | None = None
    end_time: float | None = None
    token_times: list[float] = field(default_factory=list)  # one per SSE event with content
    http_status: int | None = None
    success: bool = False
    error: str | None = None  # full message
    error_kind: str | None = None  # short reason used to group failures
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    max_tokens: int | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    prompt_token_source: str | None = None  # usage | tokenizer | estimate
    output_token_source: str | None = None  # usage | tokenizer | sse-events
    output_text: str = ""

    @property
    def ttft(self) -> float | None:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.send_time

    @property
    def e2e(self) -> float | None:
        if self.end_time is None:
            return None
        return self.end_time - self.send_time

    @property
    def itls(self) -> list[float]:
        """Gaps between consecutive content events."""
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:], strict=False)]

    @property
    def tpot(self) -> float | None:
        """(e2e - TTFT) / (output_tokens - 1); None with fewer than two output tokens."""
        if (
            self.ttft is None
            or self.e2e is None
            or not self.output_tokens
            or self.output_tokens < 2
        ):
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    def to_dict(self, include_text: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not include_text:
            d.pop("output_text")
        d.update(ttft=self.ttft, e2e=self.e2e, tpot=self.tpot)
        return d


@dataclass
class RunResult:
    """One load level of a sweep: its records, the summary of them, and server-side stats."""

    label: str
    load: dict[str, Any]  # {"mode": "concurrency", "concurrency": 8} or {"mode": "rate", ...}
    started_at: str  # ISO wall-clock time, for humans lining runs up with server logs
    duration: float
    records: list[RequestRecord]
    summary: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)  # e.g. spec-decode acceptance

    def to_dict(self, include_text: bool = False) -> dict[str, Any]:
        return {
            "label": self.label,
            "load": self.load,
            "started_at": self.started_at,
            "duration": self.duration,
            "summary": self.summary,
            "server": self.server,
            "records": [r.to_dict(include_text) for r in self.records],
        }


@dataclass
class BenchResult:
    """What `run_benchmark` returns: the config (API key masked) and one result per run."""

    config: dict[str, Any]
    runs: list[RunResult]

    def to_dict(self, include_text: bool = False) -> dict[str, Any]:
        return {
            "format": "inferd-bench/1",
            "config": self.config,
            "runs": [r.to_dict(include_text) for r in self.runs],
        }
