"""The official `openai` package drives a real `inferd serve` process: sync, async, streaming,
chat and completions, logprobs, aliases and a second model behind the same endpoint."""

from __future__ import annotations

import importlib.util

import httpx
import openai
import pytest

from .helpers import API_KEY

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


@pytest.fixture()
def client(tiny_server):
    with openai.OpenAI(base_url=tiny_server.v1, api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture()
async def aclient(tiny_server):
    async with openai.AsyncOpenAI(base_url=tiny_server.v1, api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


def test_models_lists_every_name(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny", "tiny-alias", "second"]
    assert all(m.object == "model" and m.owned_by == "inferd" for m in models.data)
    assert client.models.retrieve("second").id == "second"


def test_chat_completion_sync(client, http):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "tiny"
    assert r.created > 1_600_000_000
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    # usage is exact: the prompt is the chat template's token count (as /tokenize sees it)
    expected = http.post("/tokenize", json={"model": "tiny", "messages": MESSAGES}).json()["count"]
    assert r.usage.prompt_tokens == expected
    assert 1 <= r.usage.completion_tokens <= 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # greedy decoding is deterministic, and an alias reaches the same engine
    again = client.chat.completions.create(model="tiny-alias", messages=MESSAGES, max_tokens=5, temperature=0)
    assert again.choices[0].message.content == choice.message.content
    assert again.model == "tiny-alias"


def test_content_parts_and_extras(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello."}]}]
    joined = [{"role": "user", "content": "Say\nhello."}]
    extra = {"top_k": 1, "min_p": 0.0, "repetition_penalty": 1.0, "ignore_eos": True, "min_tokens": 4,
             "skip_special_tokens": True, "include_stop_str_in_output": False}
    a = client.chat.completions.create(model="tiny", messages=parts, max_tokens=4, extra_body=extra,
                                       user="someone", seed=1)
    b = client.chat.completions.create(model="tiny", messages=joined, max_tokens=4, extra_body=extra,
                                       user="someone", seed=1)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens == 4 and a.choices[0].finish_reason == "length"


def test_chat_n_and_seed(client):
    kw = dict(model="tiny", messages=MESSAGES, max_completion_tokens=6, temperature=1.0, seed=7, n=3,
              extra_body={"ignore_eos": True})
    r1 = client.chat.completions.create(**kw)
    r2 = client.chat.completions.create(**kw)
    assert [c.index for c in r1.choices] == [0, 1, 2]
    assert [c.message.content for c in r1.choices] == [c.message.content for c in r2.choices]
    assert r1.usage.completion_tokens == 18


def test_chat_stop_and_penalties(client):
    first = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0,
                                           extra_body={"ignore_eos": True})
    text = first.choices[0].message.content
    assert len(text) > 3
    stop = text[2:4]
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0,
                                       stop=[stop], presence_penalty=0.5, frequency_penalty=0.5,
                                       logit_bias={"0": -100}, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "stop" or stop not in r.choices[0].message.content
    if r.choices[0].finish_reason == "stop":
        assert stop not in r.choices[0].message.content


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, temperature=0,
                                       logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 4
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3
        assert t.logprob <= 0 and t.bytes == list(t.token.encode())
        # greedy: the chosen token is the most likely one
        assert t.top_logprobs[0].token == t.token
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        lps = [x.logprob for x in t.top_logprobs]
        assert lps == sorted(lps, reverse=True)


def test_chat_stream_sync(client):
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(content) >= 1 and len(finish) == 1 and finish[0].choices[0].finish_reason == "length"
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == 6
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)
    full = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].delta.content for c in content) == full.choices[0].message.content


def test_stream_has_one_event_per_token(client):
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0,
                                            stream=True, logprobs=True, top_logprobs=1,
                                            extra_body={"ignore_eos": True})
    chunks = [c for c in stream if c.choices and c.choices[0].logprobs]
    assert len(chunks) == 8
    assert all(len(c.choices[0].logprobs.content) == 1 for c in chunks)


async def test_chat_async_and_stream(aclient):
    r = await aclient.chat.completions.create(model="second", messages=MESSAGES, max_tokens=3)
    assert r.model == "second" and r.usage.completion_tokens <= 3
    stream = await aclient.chat.completions.create(model="second", messages=MESSAGES, max_tokens=3,
                                                   stream=True, n=2, extra_body={"ignore_eos": True})
    text = {0: "", 1: ""}
    finished = set()
    async for chunk in stream:
        for c in chunk.choices:
            text[c.index] += c.delta.content or ""
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1}


def test_completions(client):
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5, temperature=0)
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    assert r.usage.completion_tokens <= 5 and r.usage.prompt_tokens == 4
    # list of prompts (strings, then token ids): one choice per prompt, in order
    many = client.completions.create(model="tiny", prompt=["Once upon a time", "Hello"], max_tokens=5,
                                     temperature=0)
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[0].text == r.choices[0].text
    ids = client.completions.create(model="tiny", prompt=[[9, 10, 11], [12, 13]], max_tokens=2, n=2,
                                    extra_body={"ignore_eos": True})
    assert [c.index for c in ids.choices] == [0, 1, 2, 3]
    assert ids.usage.prompt_tokens == 5 and ids.usage.completion_tokens == 8


def test_completions_stream_and_echo(client):
    stream = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=4, temperature=0,
                                       stream=True, echo=True, extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    full = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=4, temperature=0,
                                     echo=True, extra_body={"ignore_eos": True})
    assert text == full.choices[0].text and text.startswith("Once upon a time")
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completions_logprobs_no_echo(client):
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=3, temperature=0,
                                  logprobs=2, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 3
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == 0
    for tok, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert top[tok] == pytest.approx(value) and value == pytest.approx(max(top.values()))


async def test_async_completions_stream(aclient):
    stream = await aclient.completions.create(model="tiny", prompt="Hello", max_tokens=3, stream=True,
                                              stream_options={"include_usage": True},
                                              extra_body={"ignore_eos": True})
    chunks = [c async for c in stream]
    assert chunks[-1].usage.completion_tokens == 3 and chunks[-1].usage.prompt_tokens == 1


def test_root_routes(tiny_server, http):
    assert httpx.get(tiny_server.url + "/health").status_code == 200  # no key needed
    assert httpx.get(tiny_server.url + "/version").json()["version"]
    info = httpx.get(tiny_server.url + "/tokenizer_info").json()
    assert info["eos_token"] == "<|im_end|>" and "im_start" in info["chat_template"]
    assert httpx.get(tiny_server.url + "/tokenizer_info", params={"model": "second"}).json()["model"] == "second"
    tok = http.post("/tokenize", json={"prompt": "Hello world", "return_token_strs": True}).json()
    assert tok["count"] == len(tok["tokens"]) == 2 and tok["max_model_len"] == 512
    assert tok["token_strs"] == ["Hello", "Ġworld"]
    assert http.post("/detokenize", json={"tokens": tok["tokens"]}).json() == {"prompt": "Hello world"}
    metrics = httpx.get(tiny_server.url + "/metrics")  # no key needed either
    assert metrics.status_code == 200 and "inferd_num_requests_running" in metrics.text


def test_dashboard_is_served_when_present(tiny_server):
    if importlib.util.find_spec("inferd.serve.dashboard") is None:
        pytest.skip("no dashboard module in this build")
    r = httpx.get(tiny_server.url + "/dashboard")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
