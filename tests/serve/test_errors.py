"""Every error path over raw HTTP: OpenAI's error shape, the right status, the parameter named,
and the server still serving afterwards (user input never reaches a 500 or the engine)."""

from __future__ import annotations

import httpx
import pytest

from .helpers import API_KEY

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MSG = [{"role": "user", "content": "hi"}]


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def test_malformed_json(http):
    r = http.post(CHAT, content=b'{"model": "tiny", "messages": [', headers={"content-type": "application/json"})
    e = error_of(r, 400)
    assert e["type"] == "invalid_request_error" and "JSON" in e["message"]
    error_of(http.post(CHAT, content=b"[1, 2]", headers={"content-type": "application/json"}), 400)
    e = error_of(http.post(CHAT, content=b"", headers={"content-type": "application/json"}), 400)
    no_type = error_of(http.post(CHAT, content=b'{"messages": []}'), 400)
    assert "Content-Type" in no_type["message"]


@pytest.mark.parametrize("path,body,param", [
    (CHAT, {"messages": MSG, "max_tokens": "lots"}, "max_tokens"),
    (CHAT, {"messages": "hi"}, "messages"),
    (CHAT, {"messages": MSG, "temperature": "hot"}, "temperature"),
    (CHAT, {"messages": [{"content": "no role"}]}, "messages"),
    (CHAT, {"messages": MSG, "stop": 5}, "stop"),
    (CHAT, {}, "messages"),
    (COMPLETIONS, {"prompt": {"text": "hi"}}, "prompt"),
    (COMPLETIONS, {"prompt": "hi", "echo": "sometimes"}, "echo"),
])
def test_wrong_types(http, path, body, param):
    e = error_of(http.post(path, json={"model": "tiny", **body}), 400)
    assert e["param"] == param


@pytest.mark.parametrize("path,body,param", [
    (CHAT, {"messages": MSG, "max_tokens": -1}, "max_tokens"),
    (CHAT, {"messages": MSG, "max_tokens": 0}, "max_tokens"),
    (CHAT, {"messages": MSG, "max_completion_tokens": -5}, "max_completion_tokens"),
    (CHAT, {"messages": MSG, "n": 0}, "n"),
    (CHAT, {"messages": MSG, "temperature": -0.5}, "temperature"),
    (CHAT, {"messages": MSG, "top_p": 0}, "top_p"),
    (CHAT, {"messages": MSG, "presence_penalty": 3}, "presence_penalty"),
    (CHAT, {"messages": MSG, "frequency_penalty": -3}, "frequency_penalty"),
    (CHAT, {"messages": MSG, "repetition_penalty": 0}, "repetition_penalty"),
    (CHAT, {"messages": MSG, "top_k": -2}, "top_k"),
    (CHAT, {"messages": MSG, "min_p": 1.5}, "min_p"),
    (CHAT, {"messages": MSG, "logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    (CHAT, {"messages": MSG, "top_logprobs": 2}, "top_logprobs"),
    (CHAT, {"messages": MSG, "logit_bias": {"abc": 1}}, "logit_bias"),
    (CHAT, {"messages": MSG, "logit_bias": {"99999999": 1}}, "logit_bias"),
    (CHAT, {"messages": MSG, "logit_bias": {"5": 500}}, "logit_bias"),
    (CHAT, {"messages": MSG, "stream_options": {"include_usage": True}}, "stream_options"),
    (CHAT, {"messages": MSG, "response_format": {"type": "json_schema"}}, "response_format"),
    (CHAT, {"messages": MSG, "tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools"),
    (CHAT, {"messages": []}, "messages"),
    (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages"),
    (CHAT, {"messages": MSG, "min_tokens": -1}, "min_tokens"),
    (CHAT, {"messages": MSG, "seed": 2**70}, "seed"),
    (CHAT, {"messages": MSG, "stop_token_ids": [10**9], "min_tokens": 2}, "stop_token_ids"),
    (CHAT, {"messages": MSG, "stop_token_ids": [-3]}, "stop_token_ids"),
    (COMPLETIONS, {"prompt": "hi", "logprobs": 50}, "logprobs"),
    (COMPLETIONS, {"prompt": "hi", "suffix": "end"}, "suffix"),
    (COMPLETIONS, {"prompt": "hi", "best_of": 3, "stream": True}, "best_of"),
    (COMPLETIONS, {"prompt": "hi", "best_of": 129}, "best_of"),
    (COMPLETIONS, {"prompt": "hi", "n": 0, "best_of": 2}, "n"),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    (COMPLETIONS, {"prompt": [], "max_tokens": 1}, "prompt"),
    (COMPLETIONS, {"prompt": "", "max_tokens": 1}, "prompt"),
    (COMPLETIONS, {"prompt": [1, 2, 10**7]}, "prompt"),
])
def test_invalid_values(http, path, body, param):
    e = error_of(http.post(path, json={"model": "tiny", **body}), 400)
    assert e["param"] == param and e["type"] == "invalid_request_error"


@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty", "repetition_penalty"])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(http, field, value):
    raw = f'{{"model": "tiny", "messages": [{{"role": "user", "content": "hi"}}], "{field}": {value}}}'
    e = error_of(http.post(CHAT, content=raw.encode(), headers={"content-type": "application/json"}), 400)
    assert e["param"] == field


def test_extreme_but_valid_values_are_served(http):
    for extra in ({"top_k": 10**30}, {"temperature": 1e30}, {"temperature": 1e-30}, {"seed": -(2**63)},
                  {"logit_bias": {"0": 100, "1": -100}}, {"max_tokens": 1, "min_tokens": 1}):
        r = http.post(CHAT, json={"model": "tiny", "messages": MSG, "max_tokens": 2, **extra})
        assert r.status_code == 200, (extra, r.text)


def test_unknown_fields_are_ignored(http):
    r = http.post(CHAT, json={"model": "tiny", "messages": MSG, "max_tokens": 2, "frobnicate": True,
                              "metadata": {"a": 1}, "parallel_tool_calls": False})
    assert r.status_code == 200, r.text
    r = http.post(COMPLETIONS, json={"model": "tiny", "prompt": "hi", "max_tokens": 2, "what": [1]})
    assert r.status_code == 200, r.text


def test_prompt_longer_than_context(http):
    long_prompt = "hello " * 600  # the tiny model's window is 512 tokens
    e = error_of(http.post(COMPLETIONS, json={"model": "tiny", "prompt": long_prompt, "max_tokens": 5}), 400)
    assert e["code"] == "context_length_exceeded" and "512" in e["message"]
    assert "context length" in e["message"]
    e = error_of(http.post(CHAT, json={"model": "tiny", "messages": [{"role": "user", "content": long_prompt}]}), 400)
    assert e["code"] == "context_length_exceeded" and e["param"] == "prompt"
    # fits alone, but not with max_tokens: the error names max_tokens
    e = error_of(http.post(COMPLETIONS, json={"model": "tiny", "prompt": "hello " * 200, "max_tokens": 400}), 400)
    assert e["param"] == "max_tokens" and "512" in e["message"]


def test_unknown_model_is_404(http):
    e = error_of(http.post(CHAT, json={"model": "gpt-17", "messages": MSG}), 404)
    assert e["code"] == "model_not_found" and "gpt-17" in e["message"]
    error_of(http.get("/v1/models/gpt-17"), 404)
    error_of(http.post("/tokenize", json={"model": "gpt-17", "prompt": "x"}), 404)


def test_auth(tiny_server):
    url = tiny_server.url
    body = {"model": "tiny", "messages": MSG, "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY},
                    {"Authorization": f"Basic {API_KEY}"}):
        e = error_of(httpx.post(url + CHAT, json=body, headers=headers), 401)
        assert e["code"] == "invalid_api_key" and API_KEY not in e["message"]
        error_of(httpx.get(url + "/v1/models", headers=headers), 401)
    # a bad key is refused before the body is even parsed
    error_of(httpx.post(url + CHAT, content=b"{", headers={"content-type": "application/json"}), 401)
    ok = httpx.post(url + CHAT, json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert ok.status_code == 200
    # the key is never written to the server's log
    assert API_KEY not in tiny_server.log.read_text()


def test_unknown_route_and_method(http):
    e = error_of(http.get("/v1/nothing-here"), 404)
    assert e["type"] == "invalid_request_error"
    error_of(http.get(CHAT), 405)


def test_tokenizer_route_errors(http):
    error_of(http.post("/tokenize", json={}), 400)
    error_of(http.post("/tokenize", json={"prompt": "a", "messages": MSG}), 400)
    assert error_of(http.post("/detokenize", json={"tokens": [-1]}), 400)["param"] == "tokens"
    assert error_of(http.post("/detokenize", json={"tokens": "abc"}), 400)["param"] == "tokens"


def test_still_healthy_after_errors(http):
    assert http.get("/health").status_code == 200
    r = http.post(CHAT, json={"model": "tiny", "messages": MSG, "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("path,raw", [
    (COMPLETIONS, '{"model": "tiny", "prompt": "\\ud800"}'),
    (COMPLETIONS, '{"model": "tiny", "prompt": ["ok", "a\\udfffb"]}'),
    (COMPLETIONS, '{"model": "tiny", "prompt": "hi", "stop": ["\\ud800"], "max_tokens": 2}'),
    (CHAT, '{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}'),
    (CHAT, '{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}'),
    (CHAT, '{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}'),
    ("/tokenize", '{"model": "tiny", "prompt": "\\ud800"}'),
    ("/tokenize", '{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}'),
    ("/tokenize", '{"model": "\\ud800", "prompt": "hi"}'),
    ("/detokenize", '{"model": "\\ud800", "tokens": [1]}'),
])
def test_lone_surrogates_are_4xx_not_500(http, path, raw):
    """JSON may carry a lone UTF-16 surrogate ("\\ud800"); it is no text a tokenizer can encode."""
    r = http.post(path, content=raw.encode(), headers={"content-type": "application/json"})
    e = error_of(r, 400)
    assert e["code"] == "invalid_unicode" and "surrogate" in e["message"]
    assert http.post(COMPLETIONS, json={"model": "tiny", "prompt": "hi", "max_tokens": 1}).status_code == 200
