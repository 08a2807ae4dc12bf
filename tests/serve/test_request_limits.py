"""A huge request cannot stall other clients: bodies over --max-request-bytes get 413 while they are
read, prompts that cannot fit are refused before tokenizing, and tokenizing never runs on the event
loop (a running stream keeps flowing while a huge request is sent and refused)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from inferd.serve.app import build_app

from .helpers import ThreadedServer

CAP = 64 * 1024


def asgi_client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60)


@pytest.fixture()
def spy_encode(engine, monkeypatch):
    """Records (thread id, text length) of every encode call on the shared engine's tokenizer."""
    calls: list[tuple[int, int]] = []
    real = engine.tokenizer.encode

    def encode(text, add_special_tokens=True):
        calls.append((threading.get_ident(), len(text)))
        return real(text, add_special_tokens=add_special_tokens)

    monkeypatch.setattr(engine.tokenizer, "encode", encode)
    return calls


async def test_body_over_the_cap_is_413(engine):
    app = build_app({"tiny": engine}, max_request_bytes=CAP)
    async with asgi_client(app) as client:
        for path in ("/v1/completions", "/v1/chat/completions", "/tokenize"):
            r = await client.post(path, json={"model": "tiny", "prompt": "x" * (2 * CAP)})
            assert r.status_code == 413, r.text
            error = r.json()["error"]
            assert error["code"] == "request_too_large" and str(CAP) in error["message"]
            assert "--max-request-bytes" in error["message"]
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 1})
        assert r.status_code == 200  # a normal body still passes


async def test_tokenizer_routes_need_the_key_when_one_is_set(engine):
    app = build_app({"tiny": engine}, api_key="sk-secret")
    async with asgi_client(app) as client:
        for path, body in (("/tokenize", {"prompt": "hi"}), ("/detokenize", {"tokens": [1, 2]})):
            r = await client.post(path, json=body)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            r = await client.post(path, json=body, headers={"Authorization": "Bearer sk-secret"})
            assert r.status_code == 200, r.text
        assert (await client.get("/health")).status_code == 200


async def test_streamed_body_is_refused_at_the_cap_not_buffered(engine):
    """No Content-Length (chunked upload): the server stops reading at the cap and answers 413."""
    app = build_app({"tiny": engine}, max_request_bytes=CAP)
    chunk = b" " * 8192
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        pulled += len(chunk)
        assert pulled < 100 * CAP, "the server kept reading past the cap"
        return {"type": "http.request", "body": chunk, "more_body": True}  # never ends

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/completions", "raw_path": b"/v1/completions",
             "query_string": b"", "root_path": "", "server": ("test", 80), "client": ("c", 1),
             "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert pulled <= CAP + len(chunk)


async def test_tokenizing_runs_off_the_event_loop(engine, spy_encode):
    app = build_app({"tiny": engine})
    loop_thread = threading.get_ident()
    async with asgi_client(app) as client:
        for path, body in (("/v1/completions", {"prompt": "Hello there", "max_tokens": 1}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                     "max_tokens": 1}),
                           ("/tokenize", {"prompt": "Hello there"}),
                           ("/tokenize", {"messages": [{"role": "user", "content": "Hi"}]})):
            r = await client.post(path, json={"model": "tiny", **body})
            assert r.status_code == 200, r.text
    assert len(spy_encode) == 4
    assert all(thread != loop_thread for thread, _ in spy_encode)


async def test_prompt_that_cannot_fit_is_refused_before_tokenizing(engine, spy_encode):
    """Under the byte cap but far over the context window: 400 at once, the tokenizer never runs."""
    app = build_app({"tiny": engine})
    huge = "All work and no play makes Jack a dull boy. " * 20_000  # ~0.9 MB, ~220k tokens
    async with asgi_client(app) as client:
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": huge})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
        r = await client.post("/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": huge}]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
        assert "at least" in r.json()["error"]["message"]
    assert spy_encode == []
    # a prompt just over the window, which only tokenizing can tell, is still refused correctly
    async with asgi_client(app) as client:
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "hello " * 600})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text


class Streamer(threading.Thread):
    """Streams completions back to back until stopped, recording when each SSE event arrived."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.events: list[float] = []
        self.started = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        body = {"model": "tiny", "prompt": "Once", "max_tokens": 64, "ignore_eos": True, "stream": True}
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self.stop.is_set():
                with client.stream("POST", "/v1/completions", json=body) as r:
                    for line in r.iter_lines():
                        if line:
                            self.events.append(time.monotonic())
                            self.started.set()


def test_stream_completes_while_a_tokenization_is_stuck(engine, monkeypatch):
    """While one request's tokenizer call is held, another client's whole stream is served: with
    the tokenizer on the event loop nothing would be, until the tokenizer returned."""
    release = threading.Event()
    entered = threading.Event()
    real = engine.tokenizer.encode

    def held_encode(text, add_special_tokens=True):
        if text.startswith("HOLD"):
            entered.set()
            release.wait(60)
        return real(text, add_special_tokens=add_special_tokens)

    monkeypatch.setattr(engine.tokenizer, "encode", held_encode)
    held: list[httpx.Response] = []
    with ThreadedServer(build_app({"tiny": engine})) as server:
        stuck = threading.Thread(target=lambda: held.append(httpx.post(
            server.url + "/tokenize", json={"prompt": "HOLD this"}, timeout=120)))
        stuck.start()
        try:
            assert entered.wait(30)
            body = {"model": "tiny", "prompt": "Once", "max_tokens": 8, "ignore_eos": True, "stream": True}
            with httpx.Client(base_url=server.url, timeout=20) as client:
                r = client.post("/v1/completions", json=body)
            assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
            assert stuck.is_alive()  # ...and the held request really was still held
        finally:
            release.set()
            stuck.join(60)
    assert held and held[0].status_code == 200


def test_stream_gaps_stay_small_while_a_huge_request_is_refused(engine):
    """A running stream's longest gap between events while megabyte requests are sent and refused
    (413 over the cap, 400 for a prompt under the cap but over the window)."""
    with ThreadedServer(build_app({"tiny": engine}, max_request_bytes=2 * 2**20)) as server:
        streamer = Streamer(server.url)
        streamer.start()
        try:
            assert streamer.started.wait(60)
            with httpx.Client(base_url=server.url, timeout=120) as client:
                try:  # the server may close the connection before the client has sent it all
                    over = client.post("/v1/completions", json={"model": "tiny", "prompt": "a " * (3 * 2**20)})
                    assert over.status_code == 413
                except httpx.TransportError:
                    pass
                long = client.post("/v1/completions", json={"model": "tiny", "prompt": "word " * 300_000})
                assert long.status_code == 400, long.text
                fits = client.post("/tokenize", json={"model": "tiny", "prompt": "ab " * 20_000})
                assert fits.status_code == 200
                during = len(streamer.events)
        finally:
            streamer.stop.set()
            streamer.join(120)
    assert during > 1
    gaps = [b - a for a, b in zip(streamer.events, streamer.events[1:], strict=False)]
    assert max(gaps) < 2.0, f"the stream stalled for {max(gaps):.1f} s"


async def test_memory_freed_after_a_large_body_goes_back_to_the_os(engine, monkeypatch):
    # glibc keeps the pages a multi-megabyte body's parse and tokenization freed (RSS rose ~270 MB
    # after a few 3.5 MB prompts and stayed); the body cap's middleware trims after large bodies.
    from inferd.serve import body_limit, memory

    trims: list[int] = []
    monkeypatch.setattr(body_limit, "release_freed_memory", lambda: trims.append(1) or True)
    app = build_app({"tiny": engine})
    async with asgi_client(app) as client:
        r = await client.post("/tokenize", json={"model": "tiny", "prompt": "word " * 1000})
        assert r.status_code == 200 and trims == []  # small bodies: no trim
        r = await client.post("/tokenize", json={"model": "tiny", "prompt": "word " * (memory.TRIM_AFTER_BYTES // 4)})
        assert r.status_code == 200 and trims == [1]
    assert memory.release_freed_memory() == (memory._malloc_trim() is not None)


async def test_a_body_that_trickles_in_is_refused_at_the_deadline(engine):
    # A client sending its body a byte at a time would hold a connection and a buffer forever.
    import asyncio

    from inferd.serve.body_limit import BodyLimitMiddleware

    app = build_app({"tiny": engine})
    limited = BodyLimitMiddleware(app, max_bytes=CAP, body_deadline=0.5)
    sent: list[dict] = []
    chunks = iter([b'{"model": "tiny", ', b'"prompt": "hi"'])

    async def receive():
        chunk = next(chunks, None)
        if chunk is None:
            await asyncio.sleep(3600)  # the rest never comes
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "raw_path": b"/v1/completions",
             "query_string": b"", "headers": [(b"content-type", b"application/json")], "http_version": "1.1",
             "scheme": "http", "server": ("test", 80), "client": ("c", 1), "root_path": ""}
    start = asyncio.get_running_loop().time()
    await asyncio.wait_for(limited(scope, receive, send), 10)
    assert asyncio.get_running_loop().time() - start < 5
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 408
    error = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["error"]
    assert error["code"] == "request_timeout" and "did not arrive" in error["message"]
