"""One HTTP request's engine requests, and the plumbing that ends them when the client leaves.

`Submission` queues the engine requests an HTTP request makes (several for a list of prompts),
merges their output streams and aborts whatever is unfinished when the response ends early:
a dropped stream, a client that hung up on a non-streamed request, an error half-way. The
engine then frees their KV blocks before its next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from inferd.engine.async_engine import AsyncEngine, NewRequest
from inferd.outputs import RequestOutput

T = TypeVar("T")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = "data: [DONE]\n\n"


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


class Submission:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.request_ids: list[str] = []
        self._streams: list[AsyncIterator[RequestOutput]] = []
        self._finished: set[str] = set()

    async def add(self, requests: list[NewRequest]) -> None:
        """Queue this HTTP request's engine requests, all or none (the engine refuses a set that
        does not fit the waiting queue whole, so nothing of a refused request runs)."""
        streams = await self.engine.add_requests(requests)
        self.request_ids.extend(r.request_id for r in requests)
        self._streams.extend(streams)

    def abort_unfinished(self) -> None:
        # A stream the response never started iterating has no `finally` to run, so abort by id.
        for rid in self.request_ids:
            if rid not in self._finished:
                self.engine.abort(rid)
                self._finished.add(rid)

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, cumulative output) as they come, across every engine request."""
        async for i, out in _merge(self._streams):
            if out.finished:
                self._finished.add(out.request_id)
            yield i, out

    async def final_outputs(self) -> list[RequestOutput]:
        finals: list[RequestOutput | None] = [None] * len(self._streams)
        async for i, out in self.outputs():
            if out.finished:
                finals[i] = out
        return [f for f in finals if f is not None]


async def _merge(streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump(i: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in stream:
                queue.put_nowait((i, out))
        except Exception as exc:
            queue.put_nowait((i, exc))
        finally:
            queue.put_nowait((i, end))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is end:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()  # cancelling a pump closes its engine stream, which aborts that request


class AbortingStreamingResponse(StreamingResponse):
    """A StreamingResponse that runs `on_close` however it ends (finished, dropped, cancelled)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class ClientGone(Exception):
    """The client closed the connection before its (non-streamed) answer was ready."""


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run work, but give up (cancelling it) as soon as the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientGone()
    finally:
        for t in (task, watcher):
            t.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
