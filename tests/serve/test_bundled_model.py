"""The real bundled model (SmolLM2-135M-Instruct, the default) behind `inferd serve` with no
--model flag: its chat template and a sensible greedy answer through the official client."""

from __future__ import annotations

import httpx
import openai
import pytest

from .helpers import start_server

pytestmark = pytest.mark.slow
# The default runs the GGUF's own Q4_1 blocks (as llama.cpp does), whose greedy answer to "What is
# the capital of France?" is "L'Étoile, la Marseillaise, ..." in llama.cpp too: a near tie at the
# first token. Germany's is unambiguous on every path.
QUESTION = [{"role": "user", "content": "What is the capital city of Germany?"}]


@pytest.fixture(scope="module")
def bundled_server(bundled_gguf, tmp_path_factory):
    server = start_server(["--kv-cache-memory", "0.1", "--max-model-len", "2048"],
                          tmp_path_factory.mktemp("bundled") / "server.log")
    yield server
    server.stop()


def test_default_model_answers_through_its_chat_template(bundled_server):
    client = openai.OpenAI(base_url=bundled_server.v1, api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["smollm2-135m"]
    r = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=12, temperature=0)
    answer = r.choices[0].message.content
    assert "Berlin" in answer
    assert r.choices[0].finish_reason == "stop"  # the model ended its turn with <|im_end|>
    tokens = httpx.post(bundled_server.url + "/tokenize", json={"messages": QUESTION}).json()
    assert r.usage.prompt_tokens == tokens["count"] and tokens["max_model_len"] == 2048
    # the same answer streamed, token by token
    stream = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=12,
                                            temperature=0, stream=True)
    deltas = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == answer and len(deltas) >= 5


def test_json_object_and_a_schema_with_the_real_model(bundled_server):
    """json_object (any object: only a model that knows when to stop can end one) and a schema."""
    import json

    client = openai.OpenAI(base_url=bundled_server.v1, api_key="unused", max_retries=0, timeout=120)
    ask = [{"role": "user", "content": "What is the capital city of Germany? Answer in JSON with the key "
                                       "\"capital\"."}]
    r = client.chat.completions.create(model="smollm2-135m", messages=ask, max_tokens=60, temperature=0,
                                       response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {"type": "object", "required": ["capital"], "additionalProperties": False,
              "properties": {"capital": {"type": "string"}}}
    r = client.chat.completions.create(model="smollm2-135m", messages=ask, max_tokens=60, temperature=0,
                                       response_format={"type": "json_schema", "json_schema": {
                                           "name": "answer", "schema": schema, "strict": True}})
    assert "Berlin" in json.loads(r.choices[0].message.content)["capital"]
