"""/openapi.json describes what the server does: 400 (not FastAPI's 422) in OpenAI's error shape
with every status a route answers, required fields and the bounds the server enforces."""

from __future__ import annotations

import json

import httpx
import pytest

from inferd.serve.app import build_app


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
    assert sorted(schemas["ChatMessage"]["properties"]["role"]["enum"]) == ["assistant", "developer", "system", "user"]
    chat = schemas["ChatCompletionRequest"]
    stream_options, top_lp, tools = chat["allOf"]
    assert stream_options["then"]["properties"]["stream"]["const"] is True  # stream_options need stream
    assert schemas["CompletionRequest"]["allOf"] == [stream_options]
    assert top_lp["then"]["properties"]["logprobs"]["const"] is True  # top_logprobs needs logprobs
    assert tools["then"]["properties"]["tool_choice"]["const"] == "none"  # tools need tool_choice none
    assert all(b.get("type") != "object" for b in chat["properties"]["tool_choice"]["anyOf"])
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
