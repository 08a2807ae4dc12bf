"""The engine's nouns: a Request (what a user asked for) and its Sequences (one per sample, n>1).

Plain Python with no tensors: the scheduler and the KV-cache manager reason about these with
integers only, which is what lets them be tested in milliseconds.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from inferd.outputs import TokenLogprobs
from inferd.sampling_params import SamplingParams


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class RequestTiming:
    """Timestamps (time.monotonic) the metrics layer turns into TTFT/ITL/e2e."""

    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None


class Sequence:
    """One generated continuation of a prompt, with the KV blocks it holds."""

    def __init__(self, seq_id: int, request: Request, index: int):
        self.seq_id = seq_id
        self.request = request
        self.index = index  # which of the request's n samples
        self.params: SamplingParams = request.params
        self.prompt_len = len(request.prompt_token_ids)
        self.token_ids: list[int] = list(request.prompt_token_ids)
        self.status = SeqStatus.WAITING
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.num_cached_tokens = 0  # of those, how many came from the prefix cache
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []  # hashes of this sequence's full blocks, in order
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.cumulative_logprob = 0.0
        self.logprobs: list[TokenLogprobs] | None = [] if self.params.logprobs is not None else None
        self.prompt_logprobs: list[TokenLogprobs | None] | None = (
            [None] if self.params.prompt_logprobs is not None else None)
        self.num_preemptions = 0
        self.num_reported = 0  # output tokens already handed out in a RequestOutput
        # Sampling state kept across steps (the generator makes seeded sampling batch-invariant).
        self.generator = None
        self.detok = None  # IncrementalDetokenizer, attached by the engine
        self.grammar = None  # GrammarState of a guided request, attached by the engine

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def is_prefill(self) -> bool:
        """True while tokens other than the newest sampled one still need computing."""
        return self.num_computed_tokens < self.num_tokens - 1

    @property
    def finished(self) -> bool:
        return self.status == SeqStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def __repr__(self) -> str:
        return (f"Sequence({self.seq_id}, {self.status.value}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={len(self.block_table)})")


class Request:
    """A user's request: one prompt, its sampling parameters, n sequences."""

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                 params: SamplingParams, cache_salt: str | None = None):
        self.request_id = request_id
        self.cache_salt = cache_salt  # prefix-cache blocks are shared only among equal salts
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.timing = RequestTiming()
        self.seqs: list[Sequence] = []
        self.aborted = False

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.seqs)
