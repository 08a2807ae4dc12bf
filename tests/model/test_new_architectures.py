"""Qwen3 and Gemma 3 compute what HF transformers computes, on tiny random checkpoints; the
native CPU stack refuses their layers (they run the Python loop); quantization still applies."""

from __future__ import annotations

import logging

import pytest
import torch
import transformers

from inferd import LLM, SamplingParams
from inferd.config import ModelConfig
from inferd.kernels.native_stack import LayerStructure, refusal
from inferd.model.loader import load_model
from tests.helpers import forward_logits
from tests.model.tiny_checkpoints import make_checkpoint

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "In 1905, Einstein published four papers that",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
]
BOUND = 2e-4  # fp32, as tests/model/test_parity.py


def check_parity(path, greedy_tokens: int = 40, **ref_kwargs) -> float:
    loaded = load_model(ModelConfig(model=str(path), dtype="float32", device="cpu"))
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **ref_kwargs).eval()
    worst = 0.0
    for prompt in PROMPTS:
        ids = loaded.tokenizer.encode(prompt)
        assert len(ids) > 8, "prompts must outgrow the tiny Gemma's sliding window"
        with torch.no_grad():
            theirs = ref(torch.tensor([ids])).logits[0].float()
        worst = max(worst, (forward_logits(loaded.model, ids) - theirs).abs().max().item())
    assert worst < BOUND, f"max |logit diff| {worst} exceeds {BOUND}"
    llm = LLM(str(path), dtype="float32", device="cpu", kv_cache_memory=0.05)
    for prompt in PROMPTS:
        ids = llm.tokenizer.encode(prompt)
        ours = llm.generate([ids], SamplingParams(temperature=0, max_tokens=greedy_tokens,
                                                  ignore_eos=True))[0].outputs[0].token_ids
        with torch.no_grad():
            theirs = ref.generate(torch.tensor([ids]), max_new_tokens=greedy_tokens, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        assert ours == theirs, f"greedy continuation of {prompt!r} differs"
    return worst


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory, tokenizer_dir):
    return make_checkpoint(tmp_path_factory.mktemp("tiny_qwen3"), "qwen3", tokenizer_dir, seed=11)


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory, tokenizer_dir):
    return make_checkpoint(tmp_path_factory.mktemp("tiny_gemma3"), "gemma3", tokenizer_dir, seed=12)


def test_qwen3_matches_transformers(tiny_qwen3, cpu_kernels):
    check_parity(tiny_qwen3)


def test_gemma3_matches_transformers(tiny_gemma3, cpu_kernels):
    check_parity(tiny_gemma3)


def test_gemma3_config_reads_layer_pattern_and_rope(tiny_gemma3):
    arch = load_model(ModelConfig(model=str(tiny_gemma3), dtype="float32")).arch
    assert (arch.architecture, arch.sliding_window, arch.sliding_layers) == ("gemma3", 8, (0, 1, 3))
    assert [arch.layer_window(i) for i in range(4)] == [8, 8, None, 8]
    assert (arch.rope_theta, arch.rope_local_theta, arch.rope_scaling["rope_type"]) == (1e6, 10000.0, "linear")
    assert (arch.query_pre_attn_scalar, arch.hidden_act) == (24, "gelu_pytorch_tanh")


def test_gemma3_soft_capping_follows_transformers(tmp_path, tokenizer_dir):
    """Final logits are capped where the config says; attention scores are not, even where a
    Gemma 3 config sets attn_logit_softcapping (HF's Gemma 3 and llama.cpp ignore it)."""
    path = make_checkpoint(tmp_path / "m", "gemma3", tokenizer_dir, seed=13, attn_logit_softcapping=0.5,
                           final_logit_softcapping=3.0)
    check_parity(path, greedy_tokens=16, attn_implementation="eager")
    loaded = load_model(ModelConfig(model=str(path), dtype="float32"))
    assert forward_logits(loaded.model, [5, 6, 7]).abs().max() < 3.0


def test_softcapped_attention_matches_dense_reference():
    """The shared attention's soft-capping path (for architectures that cap scores) against the
    formula on dense tensors: causal, windowed, grouped heads, two sequences in one batch."""
    from inferd.kernels.attention import AttentionMetadata
    from inferd.model.softcap_attention import softcapped_attention

    torch.manual_seed(0)
    heads, kv_heads, dim, bs, cap, scale, window = 4, 2, 8, 4, 2.0, 0.5, 3
    lens = [6, 5]
    k_cache, v_cache = torch.randn(6, bs, kv_heads, dim), torch.randn(6, bs, kv_heads, dim)
    tables = torch.tensor([[1, 2], [3, 4]])
    q = torch.randn(sum(lens), heads, dim)
    meta = AttentionMetadata(slot_mapping=torch.zeros(0, dtype=torch.long), block_tables=tables,
                             seq_lens=lens, query_lens=lens, seq_lens_t=torch.tensor(lens),
                             query_start=[0, 6, 11], block_size=bs, max_seq_len=6, num_decodes=0,
                             sliding_window=window)
    out = softcapped_attention(q, k_cache, v_cache, meta, scale, cap)
    for s, (start, n) in enumerate(((0, 6), (6, 5))):
        k = k_cache[tables[s]].reshape(-1, kv_heads, dim)[:n].repeat_interleave(2, dim=1)
        v = v_cache[tables[s]].reshape(-1, kv_heads, dim)[:n].repeat_interleave(2, dim=1)
        for i in range(n):
            for h in range(heads):
                scores = cap * torch.tanh(k[:, h] @ q[start + i, h] * scale / cap)
                allowed = [j <= i and j > i - window for j in range(n)]
                scores[~torch.tensor(allowed)] = float("-inf")
                expected = torch.softmax(scores, 0) @ v[:, h]
                torch.testing.assert_close(out[start + i, h], expected, rtol=1e-5, atol=1e-5)


def test_native_stack_refuses_other_layer_structures(tiny_qwen3, tiny_gemma3, caplog):
    with caplog.at_level(logging.INFO, logger="inferd.kernels.native_stack"):
        for path in (tiny_qwen3, tiny_gemma3):
            llm = LLM(str(path), dtype="float32", kv_cache_memory=0.05)
            assert llm.engine.runner.model.native_stack is None
    assert "qk_norm" in caplog.text and "post_norms" in caplog.text


def test_refusal_names_what_differs():
    llama = LayerStructure(norm="rms", qk_norm=False, attention_softcap=False, mlp="silu-gated",
                           post_norms=False, rope="global", window=None, scale=0.25)
    assert refusal([llama, llama]) is None
    assert "qk_norm" in refusal([llama, LayerStructure(**{**llama.__dict__, "qk_norm": True})])
    assert "window" in refusal([llama, LayerStructure(**{**llama.__dict__, "window": 8})])
    assert "does not state" in refusal([llama, None])


def test_qwen3_runs_quantized(tiny_qwen3):
    llm = LLM(str(tiny_qwen3), quantization="int8", kv_cache_memory=0.05)
    report = llm.engine.loaded.quant_report
    for i in range(2):
        for name in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"):
            assert f"model.layers.{i}.{name}" in report.quantized
    ids = llm.tokenizer.encode(PROMPTS[0])
    out = llm.generate([ids], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0].outputs[0]
    assert len(out.token_ids) == 8
