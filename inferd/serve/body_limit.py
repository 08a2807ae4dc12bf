"""The request body cap (--max-request-bytes): a larger body is refused with 413 while it is read.

A declared Content-Length over the cap is refused before the app runs; a chunked (or lying) body
is counted as it arrives and the read fails at the cap, so no route ever buffers more than the
cap. A body must also arrive within BODY_DEADLINE_S of the request's start (408 otherwise): a
client trickling its body a byte at a time would hold a connection and a buffer forever. Own
middleware rather than FastAPI's `max_body_size`, which answers some of these cases in plain text
instead of OpenAI's error shape.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.serve.errors import APIError
from inferd.serve.memory import TRIM_AFTER_BYTES, release_freed_memory

DEFAULT_MAX_REQUEST_BYTES = 4 * 2**20  # a 128k-token prompt is ~0.5 MB of text
BODY_DEADLINE_S = 60.0  # 4 MiB at ~0.6 Mbit/s


class BodyTooLarge(HTTPException):
    """Raised from `receive` at the cap; FastAPI re-raises HTTPExceptions met reading a body."""

    def __init__(self, limit: int):
        super().__init__(413, too_large_message(limit), headers={"Connection": "close"})


def too_large_message(limit: int) -> str:
    return (f"request body is larger than this server's limit of {limit} bytes "
            "(set with --max-request-bytes)")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyTooSlow(HTTPException):
    def __init__(self, deadline: float):
        super().__init__(408, f"request body did not arrive within {deadline:g} s",
                         headers={"Connection": "close"})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, body_deadline: float = BODY_DEADLINE_S):
        self.app = app
        self.max_bytes = max_bytes
        self.body_deadline = body_deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            error = APIError(413, too_large_message(self.max_bytes), code="request_too_large",
                             headers={"Connection": "close"})
            await error.response()(scope, receive, send)
            return
        received = 0
        complete = False
        deadline = asyncio.get_running_loop().time() + self.body_deadline

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body: disconnect notices, waited for as long as a stream runs
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                raise BodyTooSlow(self.body_deadline) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            if received >= TRIM_AFTER_BYTES:  # its parsed copies are garbage now
                await asyncio.to_thread(release_freed_memory)
