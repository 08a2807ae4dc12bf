"""Graceful shutdown: SIGTERM refuses new requests with 503, lets the in-flight stream finish,
then the process exits 0; the grace period bounds the wait."""

from __future__ import annotations

import json
import signal

import httpx
import uvicorn
from fastapi import FastAPI

from inferd.serve.shutdown import DrainState, GracefulServer

from .helpers import metric_value, start_server, wait_until


def test_sigterm_drains_in_flight_then_exits(tiny_llama, tmp_path):
    server = start_server(["--model", str(tiny_llama), "--kv-cache-memory", "0.02", "--served-model-name",
                           "tiny"], tmp_path / "server.log")
    try:
        body = {"model": "tiny", "prompt": "Once", "max_tokens": 300, "ignore_eos": True, "stream": True}
        with httpx.Client(base_url=server.url, timeout=60) as client:
            with client.stream("POST", "/v1/completions", json=body) as r:
                lines = r.iter_lines()
                assert next(line for line in lines if line).startswith("data: ")
                server.proc.send_signal(signal.SIGTERM)
                assert wait_until(lambda: httpx.get(server.url + "/health").status_code == 503, 10)
                refused = httpx.post(server.url + "/v1/completions", json={**body, "stream": False})
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "shutting_down"
                rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        chunks = [json.loads(line[len("data: "):]) for line in rest[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # it ran to the end
        assert len(chunks) > 50  # ...and most of it was generated after the signal
        assert server.proc.wait(30) == 0
    finally:
        server.stop()
    assert "shutting down" in (tmp_path / "server.log").read_text()


def test_requests_past_the_grace_period_end_cleanly(tiny_llama, tmp_path):
    """At the deadline a stream ends with an OpenAI error event and [DONE], a non-streamed request
    gets a JSON 503, the log says so in one line and holds no traceback, and the exit code is 0."""
    import threading

    server = start_server(["--model", str(tiny_llama), "--kv-cache-memory", "0.02", "--served-model-name",
                           "tiny", "--max-num-seqs", "1", "--shutdown-timeout", "0"], tmp_path / "server.log")
    long = {"model": "tiny", "max_tokens": 400, "ignore_eos": True}
    answers: list[httpx.Response] = []
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            # 4 x 400 tokens one sequence at a time (--max-num-seqs 1): long enough to be cut
            blocking = threading.Thread(target=lambda: answers.append(client.post(
                "/v1/completions", json={**long, "prompt": "Once", "n": 4})))
            blocking.start()
            assert wait_until(lambda: metric_value(client.get("/metrics").text,
                                                   "inferd_num_requests_running") == 1, 30)
            chat = {**long, "messages": [{"role": "user", "content": "hi"}], "stream": True}
            with client.stream("POST", "/v1/chat/completions", json=chat) as r:
                lines = r.iter_lines()
                assert next(line for line in lines if line).startswith("data: ")  # the role chunk
                server.proc.send_signal(signal.SIGTERM)
                rest = [line for line in lines if line]
            blocking.join(30)
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2][len("data: "):])["error"]
        assert error["code"] == "shutting_down" and "grace period" in error["message"]
        (answer,) = answers
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "shutting_down"
        assert server.proc.wait(30) == 0
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert log.count("grace period over") == 1
    assert "Traceback" not in log and "CancelledError" not in log


async def test_grace_period_bounds_the_wait():
    drain = DrainState()
    stopped, cut = [], []
    server = GracefulServer(uvicorn.Config(FastAPI()), drain, grace_seconds=0.0,
                            on_drain=lambda: stopped.append(True), on_deadline=lambda: cut.append(True),
                            flush_seconds=0.0)
    drain.in_flight = 1  # a request that would never finish
    assert not await server.on_tick(1)
    server.handle_exit(signal.SIGTERM, None)
    assert drain.draining and stopped == [True] and not server.should_exit
    assert not await server.on_tick(2)  # grace period (0 s) over: the requests are ended first...
    assert cut == [True]
    assert await server.on_tick(3)  # ...then the server exits, even if one never finishes
    assert cut == [True]
    again = GracefulServer(uvicorn.Config(FastAPI()), DrainState(), grace_seconds=60)
    again.drain.in_flight = 1
    again.handle_exit(signal.SIGTERM, None)
    assert not await again.on_tick(1)  # still draining
    again.handle_exit(signal.SIGINT, None)  # a second signal: now
    assert again.should_exit and again.force_exit
