"""Fixtures for speculative-decoding tests: draft checkpoints that share the tiny target's
tokenizer (a noisy copy, so proposals are accepted only sometimes), a tiny-vocabulary target for
distribution tests, and small engine builders.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from inferd.llm import LLM
from tests.conftest import make_tiny_checkpoint

TINY_VOCAB = 24


def make_noisy_copy(src: Path, out: Path, noise: float, seed: int = 7) -> Path:
    """Copy a HF checkpoint with Gaussian noise on its matrices: a draft that agrees in part."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    gen = torch.Generator().manual_seed(seed)
    for f in src.glob("*.safetensors"):
        tensors = load_file(str(f))
        for name, t in tensors.items():
            if t.dim() == 2:
                tensors[name] = t + noise * t.std() * torch.randn(t.shape, generator=gen)
        save_file(tensors, str(out / f.name))
    return out


@pytest.fixture(scope="session")
def noisy_draft(tmp_path_factory, tiny_llama) -> Path:
    return make_noisy_copy(tiny_llama, tmp_path_factory.mktemp("noisy_draft"), noise=0.05)


@pytest.fixture(scope="session")
def small_draft(tmp_path_factory, tokenizer_dir) -> Path:
    """A different, one-layer model with the same tokenizer (proposals almost never accepted)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("small_draft"), "llama", tokenizer_dir,
                                seed=11, num_hidden_layers=1, hidden_size=32,
                                num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)


@pytest.fixture(scope="session")
def vocab_target(tmp_path_factory, tokenizer_dir) -> Path:
    """A target with a 24-token vocabulary, so sampled distributions can be checked exactly."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("vocab_target"), "llama", tokenizer_dir,
                                seed=3, vocab_size=TINY_VOCAB)


@pytest.fixture(scope="session")
def vocab_draft(tmp_path_factory, vocab_target) -> Path:
    return make_noisy_copy(vocab_target, tmp_path_factory.mktemp("vocab_draft"), noise=0.8, seed=4)


def make_llm(model: Path, **kwargs) -> LLM:
    kwargs.setdefault("kv_cache_memory", 0.02)
    kwargs.setdefault("dtype", "float32")
    kwargs.setdefault("device", "cpu")
    return LLM(str(model), **kwargs)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared machine an intra-op
    thread pool waiting for a busy core makes each small op orders of magnitude slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
