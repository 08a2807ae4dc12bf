"""Exact routes: a path holding a control character (`/v1/completions%0A`) is a 404.

Starlette matches routes with Python regexes ending in `$`, which also matches before a trailing
newline, so `/v1/completions\\n` reached the completions route. No route name holds a control
character, so refusing them all keeps every match exact.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from inferd.serve.errors import APIError


class ExactPathMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(ord(c) < 0x20 or ord(c) == 0x7f for c in scope.get("path", "")):
            error = APIError(404, f"no route for path {scope['path']!r}", code="not_found")
            await error.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)
