"""Every request field is implemented or refused: stream_options.continuous_usage_stats (usage in
every chunk, as vLLM), return_token_ids (vLLM's prompt_token_ids and token_ids), prompt_logprobs
without echo (returned as vLLM does), and undeclared fields whose meaning the server does not
implement refused with a 400 naming them."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from inferd.serve.app import build_app

MSG = [{"role": "user", "content": "Say something."}]


@pytest.fixture()
def client(engine):
    app = build_app({"tiny": engine})
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60)


async def stream(client: httpx.AsyncClient, path: str, body: dict) -> list[dict]:
    async with client.stream("POST", path, json={"model": "tiny", "stream": True, **body}) as r:
        assert r.status_code == 200, await r.aread()
        lines = [line async for line in r.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


async def test_continuous_usage_stats_put_usage_in_every_chunk(client):
    async with client:
        prompt = (await client.post("/tokenize", json={"model": "tiny", "messages": MSG})).json()["count"]
        chunks = await stream(client, "/v1/chat/completions", {
            "messages": MSG, "max_tokens": 6, "ignore_eos": True, "n": 2,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
        assert all(c["usage"] is not None for c in chunks)
        completion = [c["usage"]["completion_tokens"] for c in chunks]
        assert completion == sorted(completion) and completion[0] == 0 and completion[-1] == 12
        assert all(c["usage"]["prompt_tokens"] == prompt for c in chunks)
        assert chunks[-1]["choices"] == []  # include_usage's final chunk is still there
        chunks = await stream(client, "/v1/completions", {
            "prompt": ["one", "two"], "max_tokens": 5, "ignore_eos": True,
            "stream_options": {"continuous_usage_stats": True}})
        assert all(c["usage"] is not None for c in chunks)
        assert chunks[-1]["usage"]["completion_tokens"] == 10 and chunks[-1]["choices"]
        plain = await stream(client, "/v1/completions", {"prompt": "one", "max_tokens": 2})
        assert all("usage" not in c for c in plain)  # nothing asked, nothing added


async def test_return_token_ids(client, engine):
    tok = engine.tokenizer
    async with client:
        body = {"messages": MSG, "max_tokens": 5, "ignore_eos": True, "temperature": 0, "return_token_ids": True}
        r = (await client.post("/v1/chat/completions", json={"model": "tiny", **body})).json()
        expected_prompt = (await client.post("/tokenize", json={"model": "tiny", "messages": MSG})).json()["tokens"]
        assert r["prompt_token_ids"] == expected_prompt
        (choice,) = r["choices"]
        assert len(choice["token_ids"]) == r["usage"]["completion_tokens"] == 5
        assert tok.decode(choice["token_ids"]) == choice["message"]["content"]
        chunks = await stream(client, "/v1/chat/completions", body)
        assert chunks[0]["prompt_token_ids"] == expected_prompt
        assert "prompt_token_ids" not in chunks[1] or chunks[1]["prompt_token_ids"] is None
        streamed = [t for c in chunks for ch in c["choices"] for t in ch.get("token_ids") or []]
        assert streamed == choice["token_ids"]  # greedy: the same tokens, delivered as deltas

        body = {"prompt": ["Hello", " world"], "max_tokens": 3, "ignore_eos": True, "temperature": 0,
                "return_token_ids": True}
        r = (await client.post("/v1/completions", json={"model": "tiny", **body})).json()
        assert r["choices"][0]["prompt_token_ids"] == tok.encode("Hello")
        assert r["choices"][1]["prompt_token_ids"] == tok.encode(" world")
        assert all(len(c["token_ids"]) == 3 for c in r["choices"])
        chunks = await stream(client, "/v1/completions", body)
        firsts = {}
        for c in chunks:
            for ch in c["choices"]:
                firsts.setdefault(ch["index"], ch)
        assert firsts[1]["prompt_token_ids"] == tok.encode(" world")
        for i in (0, 1):
            ids = [t for c in chunks for ch in c["choices"] if ch["index"] == i for t in ch["token_ids"] or []]
            assert ids == r["choices"][i]["token_ids"]
        plain = (await client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})).json()
        assert "token_ids" not in plain["choices"][0] and "prompt_token_ids" not in plain["choices"][0]


async def test_prompt_logprobs_without_echo_are_returned(client):
    async with client:
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": [5, 6, 7, 8], "max_tokens": 1,
                                                       "prompt_logprobs": 2})
        assert r.status_code == 200, r.text
        entries = r.json()["choices"][0]["prompt_logprobs"]
        assert len(entries) == 4 and entries[0] is None
        for tok, entry in zip([6, 7, 8], entries[1:], strict=True):
            assert str(tok) in entry and 2 <= len(entry) <= 3
            ranks = sorted(e["rank"] for e in entry.values() if e["rank"] is not None)
            assert ranks[:2] == [1, 2]
            assert all(e["logprob"] <= 0 and isinstance(e["decoded_token"], str) for e in entry.values())


@pytest.mark.parametrize("field,value", [
    ("structured_outputs", {"json": {"type": "object"}}), ("use_beam_search", True),
    ("functions", [{"name": "f"}]),
    ("truncate_prompt_tokens", 5), ("modalities", ["text", "audio"]), ("priority", 3),
    ("chat_template", "{{ messages }}"), ("echo", True),
])
async def test_fields_with_meaning_not_implemented_are_refused(client, field, value):
    async with client:
        r = await client.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG, field: value})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == field and r.json()["error"]["code"] == "unsupported_parameter"


async def test_refused_message_and_tool_fields(client):
    async with client:
        tool_call = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
        r = await client.post("/v1/chat/completions", json={"model": "tiny", "messages": [
            *MSG, {"role": "user", "content": None, "tool_calls": tool_call}]})
        assert r.status_code == 400 and "only assistant messages" in r.json()["error"]["message"], r.text
        r = await client.post("/v1/chat/completions", json={"model": "tiny", "messages": [
            *MSG, {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}]})
        assert r.status_code == 400 and "function calling" in r.json()["error"]["message"], r.text
        r = await client.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG,
                                                            "tool_choice": "required"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice", r.text


async def test_neutral_and_unknown_fields_are_accepted_and_unknown_ones_logged(client, caplog):
    neutral = {"use_beam_search": False, "modalities": ["text"], "store": False, "metadata": {"a": "b"},
               "length_penalty": 1.0, "priority": 0, "parallel_tool_calls": True, "user": "u1",
               "messages": [{"role": "user", "content": "hi", "name": "ann", "tool_calls": []}]}
    with caplog.at_level(logging.WARNING, logger="inferd.serve.translate"):
        async with client:
            r = await client.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 1, **neutral})
            assert r.status_code == 200, r.text
            assert not caplog.records
            r = await client.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 1,
                                                                "frobnicate": 3})
            assert r.status_code == 200, r.text
    assert any("frobnicate" in rec.getMessage() for rec in caplog.records)


# ---- best_of and min_tokens: cross-field rules a JSON schema cannot state (issue 20) -----------
SAMPLED = {"prompt": "Once upon a time", "max_tokens": 6, "ignore_eos": True, "temperature": 1.0, "seed": 11}


def cumulative(choice: dict) -> float:
    return sum(choice["logprobs"]["token_logprobs"])


async def test_best_of_returns_the_candidates_with_the_best_cumulative_logprob(client):
    async with client:
        # The same seed samples the same candidates: n=3 shows all of them with their logprobs.
        r = await client.post("/v1/completions", json={"model": "tiny", **SAMPLED, "n": 3, "logprobs": 0})
        assert r.status_code == 200, r.text
        ranked = sorted(r.json()["choices"], key=cumulative, reverse=True)
        assert len({c["text"] for c in ranked}) > 1  # sampled: the candidates differ
        r = await client.post("/v1/completions", json={"model": "tiny", **SAMPLED, "best_of": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [c["text"] for c in body["choices"]] == [ranked[0]["text"]]
        assert body["choices"][0]["index"] == 0 and body["choices"][0]["logprobs"] is None
        assert body["usage"]["completion_tokens"] == 3 * 6  # every candidate's tokens count
        r = await client.post("/v1/completions", json={"model": "tiny", **SAMPLED, "best_of": 3, "n": 2,
                                                       "logprobs": 1})
        choices = r.json()["choices"]
        assert [c["text"] for c in choices] == [c["text"] for c in ranked[:2]]
        assert [c["index"] for c in choices] == [0, 1]
        assert cumulative(choices[0]) >= cumulative(choices[1])
        assert r.json()["usage"]["completion_tokens"] == 18


async def test_best_of_greedy_and_below_n(client):
    async with client:
        greedy = {"prompt": "Once upon a time", "max_tokens": 4, "ignore_eos": True, "temperature": 0}
        one = (await client.post("/v1/completions", json={"model": "tiny", **greedy})).json()
        r = await client.post("/v1/completions", json={"model": "tiny", **greedy, "best_of": 3})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == one["choices"][0]["text"]
        assert r.json()["usage"]["completion_tokens"] == 12
        # best_of below n counts as n (OpenAI refuses it; a JSON schema cannot say so).
        r = await client.post("/v1/completions", json={"model": "tiny", **greedy, "n": 2, "best_of": 1})
        assert r.status_code == 200, r.text
        assert len(r.json()["choices"]) == 2 and r.json()["usage"]["completion_tokens"] == 8


async def test_best_of_above_n_cannot_stream(client):
    async with client:
        r = await client.post("/v1/completions", json={"model": "tiny", **SAMPLED, "best_of": 2, "stream": True})
        assert r.status_code == 400 and r.json()["error"]["param"] == "best_of"
        assert r.json()["error"]["code"] == "stream_with_best_of"  # listed in the OpenAPI document
        chunks = await stream(client, "/v1/completions", {**SAMPLED, "best_of": 2, "n": 2})
        assert {c["choices"][0]["index"] for c in chunks if c["choices"]} == {0, 1}


async def test_best_of_counts_against_the_waiting_queue(tiny_loaded, tiny_llama):
    from .helpers import make_engine

    engine = make_engine(tiny_loaded, tiny_llama, max_waiting_requests=4)
    try:
        app = build_app({"tiny": engine})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            r = await c.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "best_of": 5})
            assert r.status_code == 400 and r.json()["error"]["param"] == "best_of"
            assert r.json()["error"]["code"] == "too_many_sequences"  # listed in the OpenAPI document
            r = await c.post("/v1/completions", json={"model": "tiny", "prompt": ["a", "b", "c"], "n": 2})
            assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_sequences"
            assert r.json()["error"]["param"] == "n"
            r = await c.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG, "n": 5})
            assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_sequences"
            r = await c.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "best_of": 4,
                                                      "max_tokens": 2})
            assert r.status_code == 200, r.text
    finally:
        engine.shutdown()


async def test_min_tokens_beyond_the_window_or_max_tokens_is_capped(client):
    async with client:
        window = engine_window(client)
        prompt = [1] * (window - 5)
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": None,
                                                       "min_tokens": 10**6})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 5
        r = await client.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 3,
                                                            "min_tokens": 20})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3


def engine_window(client: httpx.AsyncClient) -> int:
    engine = client._transport.app.state.models.get("tiny").engine  # noqa: SLF001
    return engine.engine.max_seq_tokens
