"""AsyncEmbedder: the embedding model's scheduler. Concurrent requests queue here and one worker
thread runs their sequences together in token-budgeted batches through `Embedder`.

Embedding requests are prefill-only sequences with no KV cache to keep, so they skip the
generation scheduler; what they share with it is admission (a bounded queue: `QueueFull`, the
server's 429) and one thread owning the model, so the event loop never waits on a forward pass.
Tokenizing and validation happen before queueing (`Embedder.tokenize`), in the caller's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field

import torch

from inferd.embedder import Embedder
from inferd.engine.async_engine import EngineDead, QueueFull, ShuttingDown

DEFAULT_MAX_WAITING_INPUTS = 4096


@dataclass
class _Job:
    """One request's sequences, waiting or running; `future` gets their vectors [N, D]."""

    seqs: list[list[int]]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = sum(len(s) for s in self.seqs)

    def settle(self, result: torch.Tensor | BaseException) -> None:
        def done() -> None:
            if self.future.done():  # the caller went away (cancelled)
                return
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)
        try:
            self.loop.call_soon_threadsafe(done)
        except RuntimeError:  # the loop closed: nobody is waiting any more
            pass


@dataclass(frozen=True)
class EmbedderStats:
    """Counters since start (Prometheus reads them at scrape time) and the queue's depth now."""

    requests: int
    inputs: int
    tokens: int
    batches: int
    waiting_inputs: int


class AsyncEmbedder:
    """Queue + worker over one `Embedder`. `embed` awaits the vectors of one request's sequences.

    max_waiting_inputs bounds the sequences queued but not yet running (beyond it: QueueFull);
    step_tokens is how many tokens the worker takes from the queue per step at most (whole
    requests; one larger request runs alone) — the Embedder then splits them into padded
    batches of its own max_batch_tokens.
    """

    def __init__(self, embedder: Embedder, max_waiting_inputs: int = DEFAULT_MAX_WAITING_INPUTS,
                 step_tokens: int | None = None):
        self.embedder = embedder
        self.max_waiting_inputs = max_waiting_inputs
        self.step_tokens = step_tokens or embedder.max_batch_tokens
        self._queue: deque[_Job] = deque()
        self._waiting_inputs = 0
        self._cond = threading.Condition()
        self._accepting = True
        self._stopped = False
        self.error: BaseException | None = None
        self._counts = {"requests": 0, "inputs": 0, "tokens": 0, "batches": 0}
        self._thread = threading.Thread(target=self._run, name=f"embedder-{embedder.name}", daemon=True)
        self._thread.start()

    # ---- callers (event loop) -----------------------------------------------------------------
    async def embed(self, seqs: list[list[int]]) -> torch.Tensor:
        """Vectors [len(seqs), D] (full size). Raises QueueFull, ShuttingDown or EngineDead."""
        loop = asyncio.get_running_loop()
        job = _Job(seqs, loop.create_future(), loop)
        with self._cond:
            if not self.is_alive():
                raise EngineDead(f"the embedding worker stopped: {self.error or 'shut down'}")
            if not self._accepting:
                raise ShuttingDown("the server is shutting down")
            if self._waiting_inputs + len(seqs) > self.max_waiting_inputs:
                raise QueueFull(f"{self._waiting_inputs} inputs are waiting to be embedded "
                                f"(limit {self.max_waiting_inputs})")
            self._queue.append(job)
            self._waiting_inputs += len(seqs)
            self._cond.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._withdraw(job)
            raise

    def _withdraw(self, job: _Job) -> None:
        """A caller gone before its job ran: drop it (a running job just finishes unread)."""
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return
            self._waiting_inputs -= len(job.seqs)

    def stats(self) -> EmbedderStats:
        with self._cond:
            return EmbedderStats(waiting_inputs=self._waiting_inputs, **self._counts)

    def is_alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def stop_accepting(self) -> None:
        with self._cond:
            self._accepting = False

    def cut(self, reason: BaseException) -> None:
        """Fail every queued job with `reason` (the shutdown deadline); a running step finishes."""
        with self._cond:
            self._accepting = False
            jobs, self._queue = list(self._queue), deque()
            self._waiting_inputs = 0
        for job in jobs:
            job.settle(reason)

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self.cut(ShuttingDown("the embedding model was shut down"))
        self._thread.join(timeout)

    # ---- worker thread ------------------------------------------------------------------------
    def _take_step(self) -> list[_Job]:
        """Whole jobs from the queue's head up to step_tokens (at least one). Holds the lock."""
        jobs, tokens = [], 0
        while self._queue and (not jobs or tokens + self._queue[0].tokens <= self.step_tokens):
            job = self._queue.popleft()
            self._waiting_inputs -= len(job.seqs)
            jobs.append(job)
            tokens += job.tokens
        return jobs

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                jobs = self._take_step()
            seqs = [s for job in jobs for s in job.seqs]
            try:
                vectors = self.embedder.embed_tokens(seqs)
            except Exception as exc:  # a bug or out of memory: fail these, keep serving others
                for job in jobs:
                    job.settle(exc)
                continue
            start = 0
            for job in jobs:
                job.settle(vectors[start:start + len(job.seqs)])
                start += len(job.seqs)
            with self._cond:
                self._counts["requests"] += len(jobs)
                self._counts["inputs"] += len(seqs)
                self._counts["tokens"] += sum(job.tokens for job in jobs)
                self._counts["batches"] += 1
