"""What the engine hands back for a request: shared by `LLM.generate`, `AsyncEngine` and the server."""

from __future__ import annotations

from dataclasses import dataclass, field

# One position's log-probabilities: {token_id: logprob}, the chosen token always included.
TokenLogprobs = dict[int, float]


@dataclass
class CompletionOutput:
    """One of the n samples of a request, cumulative so far."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float = 0.0
    logprobs: list[TokenLogprobs] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop string or token id that ended it
    # What this snapshot adds to the previous one (for streaming).
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
    delta_logprobs: list[TokenLogprobs] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """A snapshot of a request: its prompt and every sample's cumulative output."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    num_cached_tokens: int = 0


@dataclass
class EmbeddingOutput:
    """One input's vector (vLLM's `EmbeddingOutput`)."""

    embedding: list[float]


@dataclass
class EmbeddingRequestOutput:
    """An embedded input: the token ids it was embedded with (after truncation) and its vector."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: EmbeddingOutput
    finished: bool = True
