"""Shared fixtures: tiny random-weight checkpoints of each architecture, built and saved locally.

They reuse the bundled SmolLM2 tokenizer (saved as tokenizer.json) so that text round-trips
are real, while the model itself is small enough for fast tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(params=[True, False], ids=["fused-cpu", "torch-ops"])
def cpu_kernels(request, monkeypatch) -> bool:
    """Run a test through the fused CPU kernels and again through the plain-torch fallback
    (what runs where no compiler is available, or with INFERD_NATIVE_CPU=0)."""
    from inferd.kernels import cpu_ops

    if request.param:
        if not cpu_ops.available():
            pytest.skip("no native CPU kernels built here (no working compiler, or INFERD_NATIVE_CPU=0)")
    else:
        monkeypatch.setattr(cpu_ops, "usable", lambda *tensors: False)
    return request.param


@pytest.fixture(scope="session")
def bundled_gguf() -> Path:
    from inferd.model.registry import resolve_model_path

    return resolve_model_path("smollm2-135m")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The bundled model's tokenizer and chat template, as HF tokenizer files.

    INFERD_TEST_TOKENIZER_DIR points at a saved copy where the bundled model is not installed
    (the lent GPU machine, which cannot receive the 98 MB GGUF).
    """
    from transformers import AutoTokenizer

    from inferd.model.registry import resolve_model_path

    if os.environ.get("INFERD_TEST_TOKENIZER_DIR"):
        return Path(os.environ["INFERD_TEST_TOKENIZER_DIR"])
    bundled_gguf = resolve_model_path("smollm2-135m")
    out = tmp_path_factory.mktemp("tokenizer")
    tok = AutoTokenizer.from_pretrained(str(bundled_gguf.parent), gguf_file=bundled_gguf.name)
    tok.save_pretrained(str(out))
    return out


def make_tiny_checkpoint(out: Path, arch: str, tokenizer_dir: Path, seed: int = 0, **overrides) -> Path:
    """Save a random-weight HF checkpoint of `arch` (llama | qwen2 | mistral) into `out`."""
    import shutil

    import transformers

    common = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    common.update(overrides)
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[arch]
    torch.manual_seed(seed)
    config = cls[0](**common)
    model = cls[1](config).eval()
    with torch.no_grad():  # larger weights than the default init make logits less flat
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tokenizer_dir) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_llama"), "llama", tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory, tokenizer_dir) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen2"), "qwen2", tokenizer_dir, seed=1)


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory, tokenizer_dir) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_mistral"), "mistral", tokenizer_dir, seed=2,
                                sliding_window=None)
