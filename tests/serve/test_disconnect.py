"""A client that leaves aborts its request: 50 dropped streams and a dropped non-streamed request
all free their KV blocks, and the pool passes its integrity check (app served in-process so the
test can read the engine's pool)."""

from __future__ import annotations

import asyncio

import httpx

from inferd.serve.app import build_app

from .helpers import ThreadedServer, metric_value, wait_until

LONG = {"max_tokens": 400, "ignore_eos": True, "temperature": 0}


def pool_drained(engine) -> bool:
    stats = engine.stats()
    pool = engine.engine.pool
    return (stats.num_running == 0 and stats.num_waiting == 0 and engine.num_pending == 0
            and pool.num_free_blocks == pool.num_blocks - 1)


async def test_dropped_streams_free_their_blocks(engine):
    app = build_app({"tiny": engine})
    pool = engine.engine.pool
    assert pool_drained(engine)
    with ThreadedServer(app) as server:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            async def drop_after_three_events(i: int) -> int:
                body = {"model": "tiny", "stream": True, **LONG,
                        "messages": [{"role": "user", "content": f"Tell story number {i}."}]}
                if i % 2:
                    body = {"model": "tiny", "stream": True, **LONG, "prompt": f"Story {i}:"}
                path = "/v1/completions" if i % 2 else "/v1/chat/completions"
                events = 0
                async with client.stream("POST", path, json=body) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        events += line.startswith("data: ")
                        if events == 3:
                            break  # leaving the block closes the connection mid-stream
                return events

            counts = await asyncio.gather(*(drop_after_three_events(i) for i in range(50)))
            assert counts == [3] * 50
            assert await asyncio.to_thread(wait_until, lambda: pool_drained(engine), 20)
            pool.check_integrity()
            metrics = (await client.get("/metrics")).text
    assert metric_value(metrics, "inferd_requests_total", model="tiny", finish_reason="abort") == 50
    assert metric_value(metrics, "inferd_requests_total", model="tiny", finish_reason="length") == 0


async def test_dropped_non_streamed_request_is_aborted(engine):
    app = build_app({"tiny": engine})
    with ThreadedServer(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                               ("/v1/completions", {"prompt": ["a b c", "d e f"]})):
                task = asyncio.create_task(client.post(path, json={"model": "tiny", **LONG, **body}))
                assert await asyncio.to_thread(wait_until, lambda: engine.stats().num_running > 0, 10)
                task.cancel()  # the client gives up: its connection closes
                await asyncio.gather(task, return_exceptions=True)
                assert await asyncio.to_thread(wait_until, lambda: pool_drained(engine), 20)
            engine.engine.pool.check_integrity()
            metrics = (await client.get("/metrics")).text
            # the engine still serves others afterwards
            r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
            assert r.status_code == 200
    assert metric_value(metrics, "inferd_requests_total", model="tiny", finish_reason="abort") == 3
