"""/openapi.json describes what the server does: 400 (not FastAPI's 422) in OpenAI's error shape
with every status a route answers, required fields and the bounds the server enforces."""

from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import pytest
from fastapi.openapi.utils import get_openapi

from inferd.serve.app import build_app
from inferd.serve.openapi import (
    SEMANTIC_400,
    SEMANTIC_400_BY_ROUTE,
    SEMANTIC_CODES_KEY,
    Limits,
    shared_limits,
    truthful,
)
from inferd.serve.token_ids import id_key_pattern

from .helpers import make_engine


@pytest.fixture()
def doc(engine) -> dict:
    return build_app({"tiny": engine}, api_key="sk-k").openapi()


def test_no_422_and_errors_in_openai_shape(doc):
    text = json.dumps(doc)
    assert '"422"' not in text and "HTTPValidationError" not in text
    error = doc["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    assert set(error["properties"]["error"]["required"]) == {"message", "type", "param", "code"}
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"200", "400", "401", "404", "413", "429", "503"} <= set(chat)
    assert chat["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "text/event-stream" in chat["200"]["content"]
    assert "404" in doc["paths"]["/v1/models/{model}"]["get"]["responses"]


def test_required_fields_and_bounds(doc):
    schemas = doc["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]
    assert chat["required"] == ["messages"] and chat["properties"]["messages"]["minItems"] == 1
    n = next(b for b in chat["properties"]["n"]["anyOf"] if b["type"] == "integer")
    assert (n["minimum"], n["maximum"]) == (1, 128)
    completion = schemas["CompletionRequest"]
    assert completion["required"] == ["prompt"]
    forms = {b.get("type"): b for b in completion["properties"]["prompt"]["anyOf"]}
    assert forms["string"]["minLength"] == 1
    assert [r["required"] for r in schemas["TokenizeRequest"]["oneOf"]] == [["prompt"], ["messages"]]


async def test_the_document_is_served_and_without_key_details_when_open(engine):
    app = build_app({"tiny": engine})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        doc = (await client.get("/openapi.json")).json()
    assert "401" not in doc["paths"]["/v1/completions"]["post"]["responses"]  # no key, no 401
    # schema-valid-looking bodies the server refuses are now outside the schema
    assert doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]["messages"]["minItems"] == 1


def test_cross_checks_the_server_makes_are_in_the_document(doc):
    schemas = doc["components"]["schemas"]
    assert schemas["ContentPart"]["required"] == ["type", "text"]
    assert schemas["ContentPart"]["properties"]["type"]["enum"] == ["input_text", "text"]
    assert sorted(schemas["ChatMessage"]["properties"]["role"]["enum"]) == ["assistant", "developer", "system",
                                                                             "tool", "user"]
    assert schemas["ChatMessage"]["allOf"][0]["then"]["properties"]["role"]["const"] == "assistant"
    chat = schemas["ChatCompletionRequest"]
    stream_options, top_lp, tools = chat["allOf"]
    assert stream_options["then"]["properties"]["stream"]["const"] is True  # stream_options need stream
    assert schemas["CompletionRequest"]["allOf"][0] == stream_options
    max_tokens_0 = schemas["CompletionRequest"]["allOf"][1]  # max_tokens 0 needs echo
    assert max_tokens_0["if"]["properties"]["max_tokens"] == {"const": 0}
    assert max_tokens_0["then"] == {"required": ["echo"], "properties": {"echo": {"const": True}}}
    assert top_lp["then"]["properties"]["logprobs"]["const"] is True  # top_logprobs needs logprobs
    assert tools["then"]["required"] == ["tools"]  # a tool_choice other than none needs tools
    assert tools["if"]["properties"]["tool_choice"] == {"not": {"enum": ["none", None]}}
    named = next(b for b in chat["properties"]["tool_choice"]["anyOf"] if b.get("type") == "object")
    assert named["properties"]["function"]["required"] == ["name"]
    choices = next(b for b in chat["properties"]["tool_choice"]["anyOf"] if b.get("type") == "string")
    assert choices["enum"] == ["none", "auto", "required"]
    formats = chat["properties"]["response_format"]["anyOf"]
    assert formats[1]["properties"]["json_schema"]["required"] == ["name"]
    assert chat["properties"]["tools"]["anyOf"][0]["items"]["properties"]["type"] == {"enum": ["function"]}
    best_of = schemas["CompletionRequest"]["properties"]["best_of"]
    assert {"type": "integer", "minimum": 1, "maximum": 128} in best_of["anyOf"]
    assert "highest cumulative log-probability" in best_of["description"]
    assert "context window" in schemas["ChatCompletionRequest"]["properties"]["min_tokens"]["description"]
    ids = next(b for b in schemas["DetokenizeRequest"]["properties"]["tokens"]["items"].get("anyOf", [
        schemas["DetokenizeRequest"]["properties"]["tokens"]["items"]]) if b.get("type") == "integer")
    assert ids["minimum"] == 0 and ids["maximum"] == 49151


async def test_types_are_what_the_document_says(engine):
    """JSON true is no integer and "2" no number (pydantic's lax mode took both); 3.0 is an integer."""
    app = build_app({"tiny": engine})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        for bad in ({"n": "2"}, {"echo": 1}, {"prompt_logprobs": False}, {"temperature": "0.5"}):
            r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "x", **bad})
            assert r.status_code == 400 and r.json()["error"]["param"] == next(iter(bad)), r.text
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": [5.0, 6.0], "max_tokens": 1.0,
                                                       "temperature": 0})
        assert r.status_code == 200, r.text


# ---- limits the served models share, and the 400s no schema can foresee (issue 20 item 1) ------
def _prop(doc: dict, model: str, field: str, kind: str = "integer") -> dict:
    prop = doc["components"]["schemas"][model]["properties"][field]
    return next(b for b in prop.get("anyOf", [prop]) if b.get("type") == kind)


def test_the_document_bounds_fields_by_the_served_limits(doc, engine):
    window = engine.engine.max_seq_tokens
    for model, field in (("ChatCompletionRequest", "max_tokens"), ("ChatCompletionRequest", "max_completion_tokens"),
                         ("CompletionRequest", "max_tokens")):
        assert _prop(doc, model, field)["maximum"] == window - 1, (model, field)
    prompts = {(b["items"].get("type")): b for b in
               doc["components"]["schemas"]["CompletionRequest"]["properties"]["prompt"]["anyOf"] if "items" in b}
    assert prompts["integer"]["maxItems"] == window - 1  # one token-id prompt
    assert prompts["array"]["items"]["maxItems"] == window - 1  # each of several
    assert prompts["string"]["maxItems"] == prompts["array"]["maxItems"] == 512  # --max-waiting-requests
    assert _prop(doc, "CompletionRequest", "n")["maximum"] == 128  # 128 < 512: n's own limit
    bias = _prop(doc, "CompletionRequest", "logit_bias", "object")
    assert bias["propertyNames"]["pattern"] == id_key_pattern(engine.engine.loaded.arch.vocab_size)
    assert (bias["additionalProperties"]["minimum"], bias["additionalProperties"]["maximum"]) == (-100, 100)
    assert _prop(doc, "ChatCompletionRequest", "logit_bias", "object") == bias


async def test_a_small_waiting_queue_bounds_n_best_of_and_the_prompt_count(tiny_loaded, tiny_llama):
    engine = make_engine(tiny_loaded, tiny_llama, max_waiting_requests=4)
    try:
        doc = build_app({"tiny": engine}).openapi()
        for model, field in (("ChatCompletionRequest", "n"), ("CompletionRequest", "n"),
                             ("CompletionRequest", "best_of")):
            assert _prop(doc, model, field)["maximum"] == 4, (model, field)
        lists = [b for b in doc["components"]["schemas"]["CompletionRequest"]["properties"]["prompt"]["anyOf"]
                 if b.get("items", {}).get("type") in ("string", "array")]
        assert [b["maxItems"] for b in lists] == [4, 4]
    finally:
        engine.shutdown()


def test_limits_that_differ_between_models_bound_nothing(engine):
    def fake(vocab: int, window: int, waiting: int) -> SimpleNamespace:
        return SimpleNamespace(engine=SimpleNamespace(loaded=SimpleNamespace(arch=SimpleNamespace(vocab_size=vocab)),
                                                      max_seq_tokens=window),
                               tokenizer=SimpleNamespace(vocab_size=vocab),
                               config=SimpleNamespace(scheduler=SimpleNamespace(max_waiting_requests=waiting)))

    assert shared_limits([fake(10, 64, 8), fake(10, 64, 8)]) == Limits((10, 10), 64, 8)
    assert shared_limits([fake(10, 64, 8), fake(12, 128, 8)]) == Limits(None, None, 8)
    app = build_app({"tiny": engine})
    doc = truthful(get_openapi(title="t", version="0", routes=app.routes), api_key_required=False, limits=Limits())
    assert "maximum" not in _prop(doc, "CompletionRequest", "max_tokens")
    assert _prop(doc, "CompletionRequest", "logit_bias", "object")["propertyNames"]["pattern"] == id_key_pattern(None)


def test_the_400s_a_valid_body_can_get_are_listed_with_their_codes(doc):
    for (method, path), codes in SEMANTIC_400_BY_ROUTE.items():
        response = doc["paths"][path][method]["responses"]["400"]
        assert response[SEMANTIC_CODES_KEY] == codes
        assert all(f"{code}: " in response["description"] for code in codes)
    assert set().union(*SEMANTIC_400_BY_ROUTE.values()) == set(SEMANTIC_400)
    assert SEMANTIC_CODES_KEY not in doc["paths"]["/tokenize"]["post"]["responses"]["400"]


async def test_the_server_refuses_what_the_document_excludes_and_codes_the_rest(engine):
    """Each bound above is a 400 at the server; each listed code is what the server answers."""
    window = engine.engine.max_seq_tokens
    app = build_app({"tiny": engine})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as c:
        async def post(body: dict, path: str = "/v1/completions") -> httpx.Response:
            return await c.post(path, json={"model": "tiny", **body})

        r = await post({"prompt": [5] * (window - 1), "max_tokens": 1})
        assert r.status_code == 200, r.text  # maxItems: window - 1
        for body in ({"prompt": [5] * window, "max_tokens": 1}, {"prompt": [5], "max_tokens": window}):
            r = await post(body)
            assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
        r = await post({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": window},
                       "/v1/chat/completions")
        assert r.json()["error"]["code"] == "context_length_exceeded", r.text
        for key in ("05", "+5", " 5", "\u0663", str(engine.engine.loaded.arch.vocab_size)):
            r = await post({"prompt": "x", "logit_bias": {key: 1}, "max_tokens": 1})
            assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias", (key, r.text)
        r = await post({"prompt": "x", "logit_bias": {"5": 100.5}, "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"
        r = await post({"prompt": "x", "logit_bias": {"5": -100, "0": 100}, "max_tokens": 1})
        assert r.status_code == 200, r.text
        r = await post({"prompt": "x", "max_tokens": 0})  # the document's if/then: needs echo
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.text
        r = await post({"prompt": "x", "max_tokens": 0, "echo": True})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "x", r.text
        r = await post({"prompt": "\u0013", "max_tokens": 1})  # this tokenizer drops it: no tokens
        assert r.status_code == 400 and r.json()["error"]["code"] == "empty_prompt", r.text
        assert r.json()["error"]["param"] == "prompt"
