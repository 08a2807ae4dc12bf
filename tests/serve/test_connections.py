"""Connection limits: a client that never finishes its request head is disconnected after
--timeout-header, connections beyond --max-connections get a 503 and are closed, and the log lines
a flood repeats are rate-limited."""

from __future__ import annotations

import json
import logging
import socket

import httpx
import pytest
from fastapi import FastAPI

from inferd.serve.connections import RateLimitFilter, guarded_h11

from .helpers import ThreadedServer


@pytest.fixture()
def app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict:
        return {"ok": True}

    return app


def _recv_until_closed(sock: socket.socket, timeout: float = 20.0) -> bytes:
    """Everything the server sends until it closes (socket.timeout if it never does)."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _recv_response(sock: socket.socket) -> bytes:
    """One whole /ping response on a connection that stays open."""
    sock.settimeout(20)
    data = b""
    while not data.endswith(b'{"ok":true}'):
        data += sock.recv(65536)
    return data


def test_partial_headers_are_closed_after_the_timeout(app):
    with ThreadedServer(app, http=guarded_h11(header_timeout=0.5)) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the rest
            assert _recv_until_closed(sock) == b""
        # a keep-alive connection that starts a second request head and stalls is closed too
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _recv_response(sock).startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /ping HTTP/1.1\r\n")
            assert _recv_until_closed(sock) == b""
        # complete requests are unaffected
        assert httpx.get(server.url + "/ping").json() == {"ok": True}


def test_connections_beyond_the_cap_get_503(app):
    with ThreadedServer(app, http=guarded_h11(header_timeout=30, max_connections=2)) as server:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        try:
            # the two held connections are registered before a third is accepted
            for sock in held:
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                assert _recv_response(sock).startswith(b"HTTP/1.1 200")
            with socket.create_connection(("127.0.0.1", server.port)) as extra:
                answer = _recv_until_closed(extra)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503")
            assert json.loads(body)["error"]["code"] == "too_many_connections"
        finally:
            for sock in held:
                sock.close()


def test_repeated_log_lines_are_rate_limited():
    now = [0.0]
    flt = RateLimitFilter(interval=10.0, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)

    passed = [r for r in (record("socket.accept() out of system resource") for _ in range(1000))
              if flt.filter(r)]
    assert len(passed) == 1
    assert flt.filter(record("another message"))  # other messages are not held back
    now[0] = 10.5
    later = record("socket.accept() out of system resource")
    assert flt.filter(later) and "999 more like this" in later.getMessage()
