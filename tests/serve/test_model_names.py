"""Model names: a bundled model's documented aliases are served (hidden from /v1/models), an empty
name is a 400, an unknown one a 404 naming the served models only to callers with the key, and
/v1/models/{id} matches the id exactly."""

from __future__ import annotations

import httpx

from inferd.serve.app import build_app

from .test_config import specs_for

KEY = {"Authorization": "Bearer sk-k"}
MSG = [{"role": "user", "content": "hi"}]


def asgi_client(app, headers=None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60,
                             headers=headers)


def test_bundled_model_is_served_under_its_readme_aliases():
    _, (spec,) = specs_for(["--model", "smollm2-135m"])
    assert spec.names == ["smollm2-135m"]
    assert {"smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"} <= set(spec.hidden_aliases)
    _, (spec,) = specs_for(["--model", "smollm2"])
    assert "smollm2-135m" in spec.hidden_aliases and "smollm2" not in spec.hidden_aliases
    _, (spec,) = specs_for(["--model", "smollm2-135m", "--served-model-name", "mine"])
    assert spec.hidden_aliases == []  # names chosen explicitly: only those
    _, (spec,) = specs_for(["--model", "/some/dir"])
    assert spec.hidden_aliases == []


async def test_hidden_aliases_answer_but_are_not_listed(engine):
    app = build_app({"smollm2-135m": engine}, hidden_aliases={"smollm2": engine,
                                                              "HuggingFaceTB/SmolLM2-135M-Instruct": engine})
    async with asgi_client(app) as client:
        listed = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
        assert listed == ["smollm2-135m"]
        for alias in ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"):
            r = await client.post("/v1/chat/completions", json={"model": alias, "messages": MSG, "max_tokens": 1})
            assert r.status_code == 200 and r.json()["model"] == alias, r.text
            assert (await client.get(f"/v1/models/{alias}")).json()["id"] == alias


async def test_empty_and_unknown_names(engine):
    app = build_app({"tiny": engine, "tiny-alias": engine}, api_key="sk-k")
    async with asgi_client(app, KEY) as client:
        r = await client.post("/v1/chat/completions", json={"model": "", "messages": MSG})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text
        r = await client.post("/v1/completions", json={"model": "", "prompt": "hi"})
        assert r.status_code == 400, r.text
        r = await client.post("/v1/completions", json={"model": "gpt-17", "prompt": "hi"})
        assert r.status_code == 404
        assert "'tiny'" in r.json()["error"]["message"]  # the key holder learns what is served
    async with asgi_client(app) as anonymous:
        r = await anonymous.get("/tokenizer_info", params={"model": "gpt-17"})
        assert r.status_code == 404 and "tiny" not in r.json()["error"]["message"], r.text
        assert (await anonymous.get("/tokenizer_info", params={"model": "tiny"})).status_code == 200


async def test_model_path_lookup_is_exact(engine):
    app = build_app({"tiny": engine})
    async with asgi_client(app) as client:
        assert (await client.get("/v1/models/tiny")).status_code == 200
        for bad in ("tiny%0A", "tiny%0D%0A", "tiny%20", "tiny/", "TINY"):
            r = await client.get(f"/v1/models/{bad}")
            assert r.status_code == 404, (bad, r.text)


async def test_every_route_matches_exactly(engine):
    # Starlette's route regexes end in `$`, which also matches before a trailing newline.
    app = build_app({"tiny": engine})
    async with asgi_client(app) as client:
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 1}
        assert (await client.post("/v1/completions", json=body)).status_code == 200
        for path in ("/v1/completions%0A", "/v1/completions%0D", "/health%0A", "/v1/models%09"):
            r = await (client.post(path, json=body) if "completions" in path else client.get(path))
            assert r.status_code == 404, (path, r.text)
            assert r.json()["error"]["code"] == "not_found"
