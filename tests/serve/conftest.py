"""Fixtures for the server tests: a real `inferd serve` process, and in-process engines that
share one loaded tiny model.

`tiny_server` (session) serves two engines of the tiny checkpoint from a YAML config, behind an
API key taken from INFERD_API_KEY, with vLLM-compatible metrics on: most HTTP tests use it.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .helpers import API_KEY, ServerProcess, make_engine, start_server


@pytest.fixture(scope="session")
def tiny_server(tiny_llama, tmp_path_factory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("tiny_server")
    config = d / "serve.yaml"
    config.write_text(
        "metrics_compat: vllm\n"
        "kv_cache_memory: 0.1\n"
        "dtype: float32\n"  # echo-logprob tests compare with the fp32 reference
        "models:\n"
        f"  - model: {tiny_llama}\n"
        "    served_model_name: [tiny, tiny-alias]\n"
        f"  - model: {tiny_llama}\n"
        "    served_model_name: second\n"
        "    kv_cache_memory: 0.02\n")
    server = start_server(["--config", str(config)], d / "server.log", env={"INFERD_API_KEY": API_KEY})
    yield server
    server.stop()


@pytest.fixture()
def http(tiny_server) -> Iterator[httpx.Client]:
    """A client for tiny_server that sends the API key."""
    with httpx.Client(base_url=tiny_server.url, headers={"Authorization": f"Bearer {API_KEY}"},
                      timeout=60) as client:
        yield client


# ---- in-process -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_loaded(tiny_llama):
    from inferd.config import ModelConfig
    from inferd.model.loader import load_model

    return load_model(ModelConfig(model=str(tiny_llama), dtype="float32"))


@pytest.fixture(scope="module")
def engine(tiny_loaded, tiny_llama):
    e = make_engine(tiny_loaded, tiny_llama)
    yield e
    e.shutdown()


