"""HTTP connection limits uvicorn lacks: a deadline for each request's headers, a cap on open
connections, and rate-limited logging of the socket errors a flood causes.

uvicorn's keep-alive timeout stops counting once any byte arrives, so a client that sends half
a request head holds its connection (and a file descriptor) forever; thousands of them exhaust
the process's descriptors and every accept then fails and logs a traceback. `guarded_h11` is
uvicorn's h11 protocol with those gaps closed; everything else is uvicorn's.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
DEFAULT_HEADER_TIMEOUT = 10.0
FDS_KEPT_FREE = 256  # for model files, logs, the engine's own descriptors


def default_max_connections() -> int:
    """Stay under the descriptor limit, so accepting never fails for want of one."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(64, soft - FDS_KEPT_FREE)


_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
         b"retry-after: 1\r\ncontent-length: %d\r\n\r\n%s")
_BUSY_BODY = (b'{"error":{"message":"too many open connections; retry later","type":"service_unavailable",'
              b'"param":null,"code":"too_many_connections"}}')


def guarded_h11(header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                max_connections: int | None = None) -> type[H11Protocol]:
    """uvicorn's h11 protocol (pass as uvicorn.Config(http=...)) that closes a connection whose
    request head is not complete `header_timeout` seconds after it opened or after its last
    response, and answers 503 and closes connections beyond `max_connections`."""

    class GuardedH11Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if max_connections is not None and len(self.connections) > max_connections:
                over_limit_log.warning("connection limit (%d) reached; refusing new connections",
                                       max_connections)
                transport.write(_BUSY % (len(_BUSY_BODY), _BUSY_BODY))
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._on_header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _on_header_timeout(self) -> None:
            self._header_timer = None
            # IDLE: the client has not finished sending a request head since the last response.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol


class RateLimitFilter(logging.Filter):
    """Lets one record per message through per `interval` seconds; the next one that passes says
    how many were dropped. For loggers a flood makes repeat themselves (accept errors: EMFILE)."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.name}:{record.msg}"
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        self._last[key] = now
        dropped = self._dropped.pop(key, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} more like this in the last {self.interval:g} s)"
        return True


over_limit_log = logging.getLogger(__name__ + ".limit")


def rate_limit_noisy_loggers(interval: float = 10.0) -> None:
    """asyncio reports each failed accept (EMFILE...) with a traceback; uvicorn warns per bad
    request; translate warns per unknown request field. Under a flood these would write megabytes
    a second."""
    for name in ("asyncio", "uvicorn.error", over_limit_log.name, "inferd.serve.translate"):
        logging.getLogger(name).addFilter(RateLimitFilter(interval))
