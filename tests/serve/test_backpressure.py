"""Refusing work cleanly, at the app level: 429 when the waiting queue is over its limit (and the
queued requests are undisturbed), 503 while draining for shutdown, /health following both."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from inferd.sampling_params import SamplingParams
from inferd.serve.app import build_app
from inferd.serve.shutdown import DrainState

from .helpers import make_engine, wait_until


def asgi_client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60)


@pytest.fixture()
def small_queue_engine(tiny_loaded, tiny_llama):
    e = make_engine(tiny_loaded, tiny_llama, max_waiting_requests=1, max_num_seqs=1)
    yield e
    e.shutdown()


async def test_queue_over_limit_is_429(small_queue_engine):
    engine = small_queue_engine
    app = build_app({"tiny": engine})
    long = SamplingParams(max_tokens=400, ignore_eos=True)
    running = await engine.add_request("running", [5, 6, 7], long)
    assert await asyncio.to_thread(wait_until, lambda: engine.stats().num_running == 1)
    waiting = await engine.add_request("waiting", [5, 6, 8], SamplingParams(max_tokens=3, ignore_eos=True))
    assert await asyncio.to_thread(wait_until, lambda: engine.stats().num_waiting == 1)
    async with asgi_client(app) as client:
        for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                           ("/v1/completions", {"prompt": ["one"]})):
            r = await client.post(path, json={"model": "tiny", "max_tokens": 2, **body})
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
            assert r.headers["retry-after"] == "1"
        assert (await client.get("/health")).status_code == 200
        # the requests already queued are not disturbed by the refusals
        engine.abort("running")
        outs = [o async for o in waiting]
        assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 3
        del running
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 200


@pytest.fixture()
def queue16_engine(tiny_loaded, tiny_llama):
    e = make_engine(tiny_loaded, tiny_llama, max_waiting_requests=16, max_num_seqs=1)
    yield e
    e.shutdown()


async def _occupy(engine, waiting_n: int):
    """One long request running (max_num_seqs=1) and one of n=waiting_n waiting behind it."""
    long = SamplingParams(max_tokens=400, ignore_eos=True)
    running = await engine.add_request("running", [5, 6, 7], long)
    assert await asyncio.to_thread(wait_until, lambda: engine.stats().num_running == 1)
    waiting = await engine.add_request("waiting", [5, 6, 8], SamplingParams(n=waiting_n, max_tokens=2,
                                                                             temperature=1.0))
    return running, waiting


async def test_one_request_cannot_flood_the_queue(queue16_engine):
    """15 prompts x n=128 against a limit of 16: refused (400 naming the limit), nothing queued."""
    engine = queue16_engine
    app = build_app({"tiny": engine})
    async with asgi_client(app) as client:
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": [[1, 2, 3]] * 15, "n": 128,
                                                       "max_tokens": 4})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "n" and "16" in error["message"] and "1920" in error["message"]
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": [[1, 2, 3]] * 17,
                                                       "max_tokens": 4})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
        r = await client.post("/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 17, "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
        assert engine.num_pending == 0 and engine.stats().num_waiting == 0
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": [[1, 2, 3]] * 4, "n": 4,
                                                       "max_tokens": 2})
        assert r.status_code == 200 and len(r.json()["choices"]) == 16  # exactly the limit fits


async def test_queue_counts_sequences_and_refuses_a_request_whole(queue16_engine):
    engine = queue16_engine
    app = build_app({"tiny": engine})
    running, waiting = await _occupy(engine, waiting_n=10)
    assert await asyncio.to_thread(wait_until, lambda: engine.stats().num_waiting == 10)
    async with asgi_client(app) as client:
        # 10 waiting + 4 prompts x n=2 = 18 > 16: refused whole, with nothing of it queued
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": [[1, 2]] * 4, "n": 2,
                                                       "max_tokens": 2})
        assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
        assert set(engine.engine.requests) == {"running", "waiting"}
        assert engine.stats().num_waiting == 10
        r = await client.post("/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 7, "max_tokens": 2})
        assert r.status_code == 429, r.text
        # 10 + 3 x 2 = 16 fits: admitted whole, and served once the long request is gone
        pending = asyncio.create_task(client.post("/v1/completions", json={
            "model": "tiny", "prompt": [[1, 2]] * 3, "n": 2, "max_tokens": 2}))
        assert await asyncio.to_thread(wait_until, lambda: engine.stats().num_waiting == 16)
        engine.abort("running")
        r = await pending
        assert r.status_code == 200 and len(r.json()["choices"]) == 6
    outs = [o async for o in waiting]
    assert outs[-1].finished and len(outs[-1].outputs) == 10
    del running
    assert await asyncio.to_thread(wait_until, lambda: engine.stats().num_waiting == 0)


async def test_draining_refuses_new_requests_with_503(engine):
    drain = DrainState()
    app = build_app({"tiny": engine}, drain=drain)
    async with asgi_client(app) as client:
        assert (await client.get("/health")).status_code == 200
        drain.begin(grace_seconds=30)
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        assert (await client.get("/health")).status_code == 503
        assert (await client.get("/metrics")).status_code == 200  # monitoring keeps working
    assert drain.in_flight == 0 and drain.done()


def test_drain_state_deadline():
    drain = DrainState()
    drain.in_flight = 2
    drain.begin(grace_seconds=60)
    assert drain.draining and not drain.done()
    drain.in_flight = 0
    assert drain.done()
    late = DrainState()
    late.in_flight = 1
    late.begin(grace_seconds=0)
    assert late.done()  # the grace period is over even with work in flight


async def test_stopped_engine_is_503_and_unhealthy(tiny_loaded, tiny_llama):
    engine = make_engine(tiny_loaded, tiny_llama)
    app = build_app({"tiny": engine})
    engine.shutdown()
    async with asgi_client(app) as client:
        assert (await client.get("/health")).status_code == 503
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"


async def test_kv_capacity_is_checked_before_queueing(tiny_loaded, tiny_llama):
    """A request larger than the whole KV pool is refused up front instead of stalling the engine."""
    from dataclasses import replace

    from inferd.engine.async_engine import AsyncEngine

    base = make_engine(tiny_loaded, tiny_llama)
    base.shutdown()
    config = replace(base.config, cache=replace(base.config.cache, kv_cache_memory_gib=10 * 8192 / 2**30))
    engine = AsyncEngine(config, loaded=tiny_loaded)  # a few blocks only: fewer tokens than the window
    try:
        capacity = (engine.stats().num_blocks - 1) * engine.config.cache.block_size
        assert capacity < engine.max_model_len
        app = build_app({"tiny": engine})
        async with asgi_client(app) as client:
            r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "hi",
                                                           "max_tokens": capacity + 5})
            assert r.status_code == 400 and "KV cache" in r.json()["error"]["message"]
            # without max_tokens, a chat request is capped to what the KV cache holds
            r = await client.post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "ignore_eos": True})
            assert r.status_code == 200
            usage = r.json()["usage"]
            assert usage["prompt_tokens"] + usage["completion_tokens"] == capacity
    finally:
        engine.shutdown()
