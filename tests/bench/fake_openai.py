"""A fake OpenAI-compatible streaming server for bench tests, with known timing and failure modes.

Each request streams `max_tokens` content events ("tok0 ", "tok1 ", ...) after `ttft` seconds,
`itl` seconds apart, then a usage chunk and `[DONE]`. Markers in the prompt pick a failure:
FAIL500, FAIL429, CLOSE_EARLY (connection dropped mid-stream), TRUNCATE (stream ends without
finish_reason or [DONE]), HANG (never answers), NOUSAGE (no usage chunk). The server counts
requests in flight and exposes inferd-style spec-decode counters on /metrics when asked to.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse


@dataclass
class FakeServerState:
    ttft: float = 0.02
    itl: float = 0.005
    metrics: bool = True
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    draft_tokens: int = 0
    accepted_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1


def _prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return " ".join(m.get("content", "") for m in body["messages"])
    return str(body.get("prompt", ""))


def make_app(state: FakeServerState) -> FastAPI:
    app = FastAPI()

    async def handle(request: Request, chat: bool):
        body = await request.json()
        state.bodies.append(body)
        prompt = _prompt_text(body)
        n = int(body.get("max_tokens", 16))
        if "FAIL500" in prompt:
            return JSONResponse(
                {"error": {"message": "internal boom", "type": "server_error"}}, 500
            )
        if "FAIL429" in prompt:
            return JSONResponse({"error": {"message": "too many requests"}}, 429)
        state.enter()

        def chunk(piece: str | None, finish: str | None = None) -> str:
            if chat:
                choice = {
                    "index": 0,
                    "delta": {"content": piece} if piece else {},
                    "finish_reason": finish,
                }
            else:
                choice = {"index": 0, "text": piece or "", "finish_reason": finish}
            return (
                "data: " + json.dumps({"id": "x", "object": "chunk", "choices": [choice]}) + "\n\n"
            )

        async def events():
            try:
                if "HANG" in prompt:
                    await asyncio.sleep(30)
                await asyncio.sleep(state.ttft)
                if chat:  # real servers open with a role-only delta that carries no content
                    yield (
                        "data: "
                        + json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
                        + "\n\n"
                    )
                for i in range(n):
                    if i:
                        await asyncio.sleep(state.itl)
                    yield chunk(f"tok{i} ")
                    if i == 2 and "CLOSE_EARLY" in prompt:
                        raise RuntimeError("fake server drops the connection")
                    if i == 2 and "TRUNCATE" in prompt:
                        return
                yield chunk(None, "length")
                if "NOUSAGE" not in prompt:
                    usage = {
                        "prompt_tokens": len(prompt.split()),
                        "completion_tokens": n,
                        "total_tokens": len(prompt.split()) + n,
                    }
                    yield "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n"
                yield "data: [DONE]\n\n"
                with state.lock:
                    state.draft_tokens += 10
                    state.accepted_tokens += 7
            finally:
                state.leave()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.get("/metrics")
    async def metrics():
        if not state.metrics:
            return PlainTextResponse("not found", 404)
        return PlainTextResponse(
            "# TYPE inferd_spec_decode_num_draft_tokens_total counter\n"
            f'inferd_spec_decode_num_draft_tokens_total{{model="fake"}} {state.draft_tokens}\n'
            "# TYPE inferd_spec_decode_num_accepted_tokens_total counter\n"
            f'inferd_spec_decode_num_accepted_tokens_total{{model="fake"}} {state.accepted_tokens}\n'
        )

    return app


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="error", lifespan="off", timeout_graceful_shutdown=1)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("fake server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


@contextmanager
def fake_openai_server(**kwargs: Any) -> Iterator[tuple[str, FakeServerState]]:
    """(API root URL ending in /v1, state) for a fresh fake server."""
    state = FakeServerState(**kwargs)
    with serve_app(make_app(state)) as url:
        yield f"{url}/v1", state
