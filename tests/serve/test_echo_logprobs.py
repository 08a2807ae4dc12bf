"""echo + logprobs, as loglikelihood harnesses (lm-eval's local-completions) use it: one logprob
per prompt token (the first null), then the generated ones, matching HF transformers' reference."""

from __future__ import annotations

import json

import pytest
import torch

PROMPT = "The quick brown fox jumps over the lazy dog because"


@pytest.fixture(scope="module")
def hf_model(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()


def reference_logprobs(model, ids: list[int]) -> torch.Tensor:
    """logprob of ids[i] given ids[:i], for i >= 1 (log_softmax of the HF logits)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    return lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]


def test_echo_logprobs_match_transformers(http, hf_model):
    ids = http.post("/tokenize", json={"model": "tiny", "prompt": PROMPT}).json()["tokens"]
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": PROMPT, "max_tokens": 2, "echo": True,
                                           "logprobs": 1, "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    n = len(ids)
    assert len(lp["token_logprobs"]) == len(lp["tokens"]) == len(lp["top_logprobs"]) == n + 2
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert choice["text"].startswith(PROMPT) and "".join(lp["tokens"]) == choice["text"]
    # text_offset indexes the returned text
    for tok, off in zip(lp["tokens"], lp["text_offset"], strict=True):
        assert choice["text"][off:off + len(tok)] == tok
    ref = reference_logprobs(hf_model, ids)
    got = torch.tensor(lp["token_logprobs"][1:n])
    assert torch.allclose(got, ref, atol=1e-3), (got - ref).abs().max()
    # greedy: each generated token is HF's argmax, with HF's logprob
    seq = list(ids)
    for k in range(2):
        with torch.no_grad():
            last = torch.log_softmax(hf_model(torch.tensor([seq])).logits[0, -1].float(), dim=-1)
        assert lp["token_logprobs"][n + k] == pytest.approx(last.max().item(), abs=1e-3)
        seq.append(int(last.argmax()))
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == n and usage["completion_tokens"] == 2


def test_lm_eval_style_batch_with_token_ids(http, hf_model):
    """lm-eval sends token-id prompts in a batch, max_tokens 1, echo, logprobs 1, and slices
    token_logprobs[ctxlen:-1] to score the continuation."""
    context = http.post("/tokenize", json={"model": "tiny", "prompt": "Paris is the capital of"}).json()["tokens"]
    conts = [[4649], [5124, 28]]
    prompts = [context + c for c in conts]
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": prompts, "max_tokens": 1, "echo": True,
                                           "logprobs": 1, "temperature": 0, "seed": 1234})
    assert r.status_code == 200, r.text
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == [0, 1]
    for ids, cont, choice in zip(prompts, conts, choices, strict=True):
        lp = choice["logprobs"]
        assert len(lp["token_logprobs"]) == len(ids) + 1
        scored = lp["token_logprobs"][len(context):-1]
        ref = reference_logprobs(hf_model, ids)[len(context) - 1:]
        assert len(scored) == len(cont)
        assert torch.allclose(torch.tensor(scored), ref, atol=1e-3)
        # lm-eval's greedy check: the token's logprob against the column's best
        for tok_lp, top in zip(lp["token_logprobs"][len(context):-1], lp["top_logprobs"][len(context):-1],
                               strict=True):
            assert max(top.values()) >= tok_lp


def test_max_tokens_zero_with_echo_returns_only_the_prompt(http, hf_model):
    ids = http.post("/tokenize", json={"model": "tiny", "prompt": PROMPT}).json()["tokens"]
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": ids, "max_tokens": 0, "echo": True,
                                           "logprobs": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    assert choice["text"] == PROMPT
    assert len(choice["logprobs"]["token_logprobs"]) == len(ids)
    ref = reference_logprobs(hf_model, ids)
    assert torch.allclose(torch.tensor(choice["logprobs"]["token_logprobs"][1:]), ref, atol=1e-3)
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids),
                             "prompt_tokens_details": {"cached_tokens": 0}}


def test_streamed_echo_logprobs(http):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 3, "echo": True, "logprobs": 1, "temperature": 0,
            "ignore_eos": True}
    full = http.post("/v1/completions", json=body).json()["choices"][0]
    tokens, values, offsets, text = [], [], [], ""
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if not line or line == "data: [DONE]":
                continue
            choice = json.loads(line[len("data: "):])["choices"][0]
            text += choice["text"]
            if choice["logprobs"]:
                tokens += choice["logprobs"]["tokens"]
                values += choice["logprobs"]["token_logprobs"]
                offsets += choice["logprobs"]["text_offset"]
    assert text == full["text"]
    assert tokens == full["logprobs"]["tokens"] and offsets == full["logprobs"]["text_offset"]
    assert values[0] is None and values[1:] == pytest.approx(full["logprobs"]["token_logprobs"][1:])
