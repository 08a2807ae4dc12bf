"""Our model code computes the same function as HF transformers (the reference).

fp32 bound: max |Δlogit| < 2e-4 for the tiny checkpoints (differences come only from the order
of floating-point sums: fused q/k/v and gate/up matmuls, explicit softmax attention vs SDPA).
Greedy continuations must be identical token for token.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from inferd import LLM, SamplingParams
from inferd.config import ModelConfig
from inferd.model.loader import load_model
from tests.conftest import make_tiny_checkpoint
from tests.helpers import forward_logits

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "In 1905, Einstein published four papers that",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Bonjour! Ça va? 日本語のテキストも少し。",
]
TINY_BOUND = 2e-4


def hf_logits(ref, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0].float()


def check_parity(path, bound: float, greedy_tokens: int = 64) -> float:
    loaded = load_model(ModelConfig(model=str(path), dtype="float32", device="cpu"))
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    worst = 0.0
    for prompt in PROMPTS:
        ids = loaded.tokenizer.encode(prompt)
        diff = (forward_logits(loaded.model, ids) - hf_logits(ref, ids)).abs().max().item()
        worst = max(worst, diff)
    assert worst < bound, f"max |logit diff| {worst} exceeds {bound}"
    llm = LLM(str(path), dtype="float32", device="cpu", kv_cache_memory=0.05)
    for prompt in PROMPTS[:3]:
        ids = llm.tokenizer.encode(prompt)
        ours = llm.generate([ids], SamplingParams(temperature=0, max_tokens=greedy_tokens,
                                                  ignore_eos=True))[0].outputs[0].token_ids
        theirs = ref.generate(torch.tensor([ids]), max_new_tokens=greedy_tokens, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        assert ours == theirs, f"greedy continuation of {prompt!r} differs"
    return worst


@pytest.mark.parametrize("arch_fixture", ["tiny_llama", "tiny_qwen2", "tiny_mistral"])
def test_tiny_checkpoints_match_transformers(arch_fixture, request, cpu_kernels):
    check_parity(request.getfixturevalue(arch_fixture), TINY_BOUND)


@pytest.mark.parametrize("rope_scaling", [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
])
def test_rope_scaling_variants_match_transformers(rope_scaling, tmp_path, tokenizer_dir):
    path = make_tiny_checkpoint(tmp_path / "m", "llama", tokenizer_dir, seed=3, rope_scaling=rope_scaling,
                                rope_theta=10000.0)
    check_parity(path, TINY_BOUND, greedy_tokens=24)


def test_mistral_sliding_window_matches_transformers(tmp_path, tokenizer_dir):
    path = make_tiny_checkpoint(tmp_path / "m", "mistral", tokenizer_dir, seed=4, sliding_window=8)
    check_parity(path, TINY_BOUND, greedy_tokens=24)


def test_tied_embeddings_checkpoint(tmp_path, tokenizer_dir):
    path = make_tiny_checkpoint(tmp_path / "m", "llama", tokenizer_dir, seed=5, tie_word_embeddings=True)
    check_parity(path, TINY_BOUND, greedy_tokens=16)
