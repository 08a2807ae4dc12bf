"""AsyncEngine: the LLMEngine driven by its own thread, with an asyncio face for the server.

Requests and aborts are handed to the engine thread through a lock-guarded inbox; outputs come
back to each request's asyncio.Queue via call_soon_threadsafe. The event loop never runs model
code, so HTTP stays responsive while the engine computes. Dropping a stream aborts its request,
and the engine frees its blocks before the next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from inferd.config import EngineConfig
from inferd.engine.engine import EngineStats, LLMEngine, PromptInput
from inferd.model.loader import LoadedModel
from inferd.outputs import RequestOutput
from inferd.sampling_params import InvalidParameter, SamplingParams

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The waiting queue is at its limit: refuse now (HTTP 429) rather than time out later."""


class EngineDead(Exception):
    """The engine thread stopped; no request can be served."""


class ShuttingDown(Exception):
    """The server is shutting down: new work is refused and, past the grace period, cut."""


@dataclass(frozen=True)
class NewRequest:
    """One request to queue, already tokenized and validated (AsyncEngine.prepare)."""

    request_id: str
    prompt: PromptInput
    params: SamplingParams
    prompt_token_ids: list[int]
    cache_salt: str | None = None  # prefix-cache isolation (a tenant, vLLM's cache_salt)


@dataclass
class _Pending:
    request_id: str
    prompt: PromptInput
    params: SamplingParams
    prompt_token_ids: list[int]
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    cache_salt: str | None = None


class AsyncEngine:
    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None,
                 engine: LLMEngine | None = None):
        self.engine = engine or LLMEngine(config, loaded)
        self.config = self.engine.config
        self.tokenizer = self.engine.tokenizer
        self.max_model_len = self.engine.max_model_len
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._inbox: list[_Pending] = []
        self._aborts: list[str] = []
        self._streams: dict[str, _Pending] = {}
        self._stop = threading.Event()
        self._accepting = True
        self._cut: BaseException | None = None  # set by cut(): fail everything in flight with it
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="inferd-engine", daemon=True)
        self._thread.start()

    # ---- public API (event-loop side) -----------------------------------------------------
    @property
    def num_pending(self) -> int:
        """Requests not yet finished (queued, waiting or running)."""
        with self._lock:
            return len(self._streams) + len(self._inbox)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def is_alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def prepare(self, prompt: PromptInput, params: SamplingParams) -> list[int]:
        """Tokenize and check length now, so bad requests fail before they queue."""
        _, ids = self.engine.tokenize_prompt(prompt)
        self.engine.validate_length(len(ids), params)
        return ids

    async def add_request(self, request_id: str, prompt: PromptInput, params: SamplingParams,
                          prompt_token_ids: list[int] | None = None) -> AsyncIterator[RequestOutput]:
        """Queue a request and return its stream of cumulative outputs (last one finished)."""
        ids = prompt_token_ids if prompt_token_ids is not None else self.prepare(prompt, params)
        (stream,) = await self.add_requests([NewRequest(request_id, prompt, params, ids)])
        return stream

    def check_size(self, num_prompts: int, n: int) -> None:
        """Refuse (400) a request larger than the waiting queue could ever hold: waiting for room
        would never help it, and admitting it would lock every other client out."""
        limit = self.config.scheduler.max_waiting_requests
        if num_prompts * n > limit:
            raise InvalidParameter("n" if n > 1 else "prompt",
                                   f"this request would queue {num_prompts * n} sequences ({num_prompts} "
                                   f"prompt(s) x n={n}); this server queues at most {limit} per request "
                                   "(--max-waiting-requests)")

    async def add_requests(self, requests: list[NewRequest]) -> list[AsyncIterator[RequestOutput]]:
        """Queue several requests (one HTTP request's prompts) all or none: the waiting queue's
        limit counts sequences (n of each), and a set that does not fit is refused whole."""
        if not self.is_alive():
            raise EngineDead("the engine has stopped")
        if not self._accepting:
            raise ShuttingDown("the server is shutting down")
        limit = self.config.scheduler.max_waiting_requests
        cost = sum(r.params.n for r in requests)
        self.check_size(len(requests), max(r.params.n for r in requests))
        loop = asyncio.get_running_loop()
        with self._lock:
            queued = self.engine.num_waiting_seqs + sum(p.params.n for p in self._inbox)
            if queued + cost > limit:
                raise QueueFull(f"{queued} sequences already waiting and this request adds {cost} "
                                f"(limit {limit}); retry later")
            known = set(self._streams) | {p.request_id for p in self._inbox}
            for r in requests:
                if r.request_id in known:
                    raise ValueError(f"duplicate request id {r.request_id!r}")
                known.add(r.request_id)
            pending = [_Pending(r.request_id, r.prompt, r.params, r.prompt_token_ids, asyncio.Queue(), loop,
                                r.cache_salt) for r in requests]
            self._inbox.extend(pending)
        self._wake.set()
        return [self._stream(p) for p in pending]

    async def _stream(self, pending: _Pending) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while True:
                item = await pending.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:
                self.abort(pending.request_id)

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._aborts.append(request_id)
        self._wake.set()

    async def generate(self, request_id: str, prompt: PromptInput, params: SamplingParams) -> RequestOutput:
        """Convenience: wait for the final output."""
        final = None
        async for out in await self.add_request(request_id, prompt, params):
            final = out
        return final

    def stop_accepting(self) -> None:
        self._accepting = False

    def cut(self, reason: BaseException) -> None:
        """End every request in flight now with `reason` as its error (the shutdown deadline):
        streams then close with an error event, waiting callers get their error response."""
        self._accepting = False
        self._cut = reason
        self._wake.set()

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    # ---- engine thread --------------------------------------------------------------------
    def _deliver(self, pending: _Pending, item) -> None:
        try:
            pending.loop.call_soon_threadsafe(pending.queue.put_nowait, item)
        except RuntimeError:  # the caller's event loop is gone: nobody is listening any more
            self.abort(pending.request_id)

    def _drain_inbox(self) -> None:
        failed = []
        # Under the lock, so admission (add_requests) never sees a request in neither place.
        with self._lock:
            inbox, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, []
            for p in inbox:
                try:
                    self.engine.add_request(p.request_id, p.prompt, p.params, p.prompt_token_ids,
                                            cache_salt=p.cache_salt)
                    self._streams[p.request_id] = p
                except Exception as exc:  # validated already; anything left is this request's alone
                    failed.append((p, exc))
        for p, exc in failed:
            self._deliver(p, exc)
        for rid in aborts:
            self.engine.abort_request(rid)
            with self._lock:
                self._streams.pop(rid, None)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain_inbox()
            if self._cut is not None:
                reason, self._cut = self._cut, None
                self._fail_all(reason)
            if not self.engine.has_unfinished():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:
                log.exception("engine step failed; failing the requests in flight")
                self._fail_all(exc)
                continue
            for out in outputs:
                with self._lock:
                    pending = self._streams.get(out.request_id)
                    if pending is not None and out.finished:
                        del self._streams[out.request_id]
                if pending is not None:
                    self._deliver(pending, out)
        self._fail_all(EngineDead("engine stopped"))

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            streams, self._streams = self._streams, {}
        for rid, pending in streams.items():
            self.engine.abort_request(rid)
            self._deliver(pending, exc)
