"""The bundled SmolLM2 GGUF, loaded by our loader and run by our model, matches transformers
loading the same file (its own GGUF reader and dequantizer), logits and greedy tokens.

fp32 bound: max |Δlogit| < 2e-3 over 30 layers (logits are O(10); the residual differences are
summation order in matmuls and attention).
"""

from __future__ import annotations

import pytest
import torch

from inferd import LLM, SamplingParams
from tests.helpers import forward_logits

BOUND = 2e-3
PROMPTS = [
    "The capital of France is",
    "def add(a, b):\n    return",
    "Once upon a time, in a small village by the sea,",
]


@pytest.fixture(scope="module")
def reference(bundled_gguf):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(bundled_gguf.parent), gguf_file=bundled_gguf.name,
                                                dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def llm():
    return LLM("smollm2-135m", dtype="float32", kv_cache_memory=0.25)


@pytest.mark.slow
def test_bundled_logits_match_transformers(reference, llm):
    model = llm.engine.loaded.model
    for prompt in PROMPTS:
        ids = llm.tokenizer.encode(prompt)
        ours = forward_logits(model, ids)
        with torch.no_grad():
            theirs = reference(torch.tensor([ids])).logits[0].float()
        diff = (ours - theirs).abs().max().item()
        assert diff < BOUND, f"{prompt!r}: max |logit diff| {diff}"
        assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


@pytest.mark.slow
def test_bundled_greedy_64_tokens_match_transformers(reference, llm):
    chats = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "user", "content": "Write a short poem about the moon."}]]
    for conv in chats:
        ids = llm.tokenizer.encode_chat(conv)
        ours = llm.generate([ids], SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))[0]
        with torch.no_grad():
            theirs = reference.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False,
                                        eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        assert ours.outputs[0].token_ids == theirs


@pytest.mark.slow
def test_chat_template_comes_from_gguf(llm):
    text = llm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nhi<|im_end|>" in text
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(temperature=0, max_tokens=16))[0]
    assert "Paris" in out.outputs[0].text
