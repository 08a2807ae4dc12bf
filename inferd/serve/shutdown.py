"""Graceful shutdown: on SIGTERM stop taking requests (503), let in-flight ones finish, then exit.

`DrainState` counts requests in flight; `DrainMiddleware` keeps that count and refuses new work
while draining; `GracefulServer` is uvicorn's server with its signal handling changed so the
first SIGTERM/SIGINT starts draining and exits once nothing is in flight or the grace period
(--shutdown-timeout) is over. At that deadline the requests still running are ended cleanly
(`on_deadline`: streams get an error event and [DONE], others a JSON 503) before the server
stops, so no client sees a cut connection. A second signal exits at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from inferd.serve.errors import APIError

log = logging.getLogger(__name__)
# Routes that neither count as work in flight nor get refused while draining (monitoring).
UNCOUNTED = frozenset({"/health", "/metrics", "/version"})


class DrainState:
    def __init__(self) -> None:
        self.in_flight = 0
        self.draining = False
        self.deadline: float | None = None

    def begin(self, grace_seconds: float) -> None:
        if not self.draining:
            self.draining = True
            self.deadline = time.monotonic() + grace_seconds

    def done(self) -> bool:
        return self.in_flight == 0 or (self.deadline is not None and time.monotonic() >= self.deadline)


class DrainMiddleware:
    def __init__(self, app: ASGIApp, state: DrainState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNCOUNTED:
            await self.app(scope, receive, send)
            return
        if self.state.draining:
            error = APIError(503, "the server is shutting down; retry on another replica",
                             code="shutting_down", headers={"Retry-After": "1", "Connection": "close"})
            await error.response()(scope, receive, send)
            return
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: DrainState, grace_seconds: float,
                 on_drain: Callable[[], None] | None = None,
                 on_deadline: Callable[[], None] | None = None, flush_seconds: float = 3.0):
        """on_deadline ends the requests still in flight; flush_seconds is how long their error
        responses may then take to go out before the server stops regardless."""
        super().__init__(config)
        self.drain = drain
        self.grace_seconds = grace_seconds
        self.on_drain = on_drain
        self.on_deadline = on_deadline
        self.flush_seconds = flush_seconds
        self._cut_at: float | None = None

    def handle_exit(self, sig, frame) -> None:
        # Not recorded in _captured_signals: uvicorn would re-raise it at exit and the process
        # would die by the signal instead of returning 0 after a clean drain.
        if self.drain.draining:
            self.should_exit = True
            self.force_exit = True
            return
        log.info("shutting down: refusing new requests, waiting up to %.0f s for %d in flight "
                 "(signal again to stop now)",
                 self.grace_seconds, self.drain.in_flight)
        self.drain.begin(self.grace_seconds)
        if self.on_drain is not None:
            self.on_drain()

    async def on_tick(self, counter: int) -> bool:
        if self.drain.draining and not self.should_exit and self.drain.done():
            if not self.drain.in_flight:
                self.should_exit = True
            elif self._cut_at is None:
                log.warning("grace period over; ending %d requests in flight with 503",
                            self.drain.in_flight)
                self._cut_at = time.monotonic()
                if self.on_deadline is not None:
                    self.on_deadline()
            elif time.monotonic() - self._cut_at >= self.flush_seconds:
                self.should_exit = True
        return await super().on_tick(counter)
