"""64 simultaneous streams against a real server: every stream well formed, and /metrics agrees
with what the clients saw (requests, generated tokens, latency observations)."""

from __future__ import annotations

import asyncio
import json

import httpx

from .helpers import API_KEY, metric_value

N = 64


async def one_stream(client: httpx.AsyncClient, i: int) -> dict:
    body = {"model": "tiny", "messages": [{"role": "user", "content": f"Count to {i}."}],
            "max_tokens": 4 + i % 8, "stream": True, "stream_options": {"include_usage": True},
            "some_unknown_field": True, "ignore_eos": i % 2 == 0}
    events = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line:
                assert line.startswith("data: "), line
                events.append(line[len("data: "):])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    first, *rest = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usage = rest.pop()
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1
    finish = rest.pop()
    assert finish["choices"][0]["delta"] == {} and finish["choices"][0]["finish_reason"] in ("stop", "length")
    for c in rest:  # everything between role and finish is a content delta
        (choice,) = c["choices"]
        assert set(choice["delta"]) == {"content"} and choice["finish_reason"] is None
    if body["ignore_eos"]:
        assert usage["usage"]["completion_tokens"] == body["max_tokens"]
    return {"usage": usage["usage"], "text": "".join(c["choices"][0]["delta"]["content"] for c in rest)}


async def test_64_concurrent_streams_and_metrics(tiny_server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=N + 4)
    async with httpx.AsyncClient(base_url=tiny_server.url, headers=headers, timeout=120, limits=limits) as client:
        before = (await client.get("/metrics")).text
        results = await asyncio.gather(*(one_stream(client, i) for i in range(N)))
        after = (await client.get("/metrics")).text
    generated = sum(r["usage"]["completion_tokens"] for r in results)
    prompt = sum(r["usage"]["prompt_tokens"] for r in results)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("inferd_requests_total", model="tiny") == N
    assert delta("inferd_generation_tokens_total", model="tiny") == generated
    assert delta("inferd_prompt_tokens_total", model="tiny") == prompt
    assert delta("inferd_time_to_first_token_seconds_count", model="tiny") == N
    assert delta("inferd_e2e_request_latency_seconds_count", model="tiny") == N
    assert delta("inferd_request_queue_time_seconds_count", model="tiny") == N
    assert delta("inferd_inter_token_latency_seconds_count", model="tiny") == generated - N
    assert delta("inferd_requests_total", model="second") == 0
    # the vLLM-named copies (--metrics-compat vllm) count the same events
    assert delta("vllm:request_success_total", model_name="tiny") == N
    assert delta("vllm:generation_tokens_total", model_name="tiny") == generated
    assert delta("vllm:time_to_first_token_seconds_count", model_name="tiny") == N
    assert metric_value(after, "inferd_num_requests_running", model="tiny") == 0
    assert metric_value(after, "vllm:num_requests_waiting", model_name="tiny") == 0
