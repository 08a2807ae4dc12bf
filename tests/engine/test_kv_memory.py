"""The KV pool at rest: sized by what the workload can use (max_num_seqs full-length sequences,
capped by the memory fraction), reported (log line, /metrics), and on CPU resident only as used."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from inferd.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from inferd.engine.engine import LLMEngine
from inferd.engine.runner import kv_block_bytes, plan_num_blocks


@pytest.fixture(scope="module")
def loaded(tiny_llama):
    from inferd.model.loader import load_model

    return load_model(ModelConfig(model=str(tiny_llama), dtype="float32"))


def test_pool_is_sized_by_what_can_be_used(loaded):
    free_sized = CacheConfig(kv_cache_memory_gib=None, memory_fraction=0.25, max_kv_cache_gib=4.0)
    # 2 sequences of 512 tokens (the tiny model's window) in blocks of 16, plus the null block
    assert plan_num_blocks(loaded, free_sized, torch.float32, max_num_seqs=2, max_model_len=512) == 65
    unbounded = plan_num_blocks(loaded, free_sized, torch.float32)
    assert unbounded > 65  # without the workload's bound: the fraction of free memory
    tiny_budget = replace(free_sized, max_kv_cache_gib=10 * kv_block_bytes(loaded, free_sized, torch.float32) / 2**30)
    assert plan_num_blocks(loaded, tiny_budget, torch.float32, max_num_seqs=64, max_model_len=512) == 10
    explicit = CacheConfig(kv_cache_memory_gib=0.05)  # an explicit size is taken as given
    assert plan_num_blocks(loaded, explicit, torch.float32, max_num_seqs=1, max_model_len=512) > 33


def test_engine_logs_its_pool(loaded, tiny_llama, caplog):
    config = EngineConfig(model=ModelConfig(model=str(tiny_llama), dtype="float32"),
                          cache=CacheConfig(kv_cache_memory_gib=None), scheduler=SchedulerConfig(max_num_seqs=4))
    with caplog.at_level(logging.INFO, logger="inferd.engine.engine"):
        engine = LLMEngine(config, loaded)
    assert engine.pool.num_blocks == 4 * 32 + 1
    stats = engine.stats()
    assert stats.num_blocks * stats.block_size == 129 * 16
    assert stats.kv_cache_bytes == 129 * kv_block_bytes(loaded, config.cache, torch.float32)
    assert any("2064 tokens" in r.getMessage() and "4 sequences" in r.getMessage() for r in caplog.records)


RESIDENCY_PROBE = """
import sys, psutil, torch
from inferd.kernels.lazy_zeros import lazy_zeros
rss = lambda: psutil.Process().memory_info().rss
make = {"lazy": lambda s: lazy_zeros(s, torch.float32, torch.device("cpu")), "torch": torch.zeros}[sys.argv[1]]
before = rss()
t = make((256, 16, 2, 64, 64))  # 256 MiB
grown = rss() - before
assert t.data_ptr() % 64 == 0 and float(t[255, 15].abs().sum()) == 0.0 and float(t[0, 0].abs().sum()) == 0.0
t[3] = 1.0
assert float(t[3].sum()) == 16 * 2 * 64 * 64
print(grown)
"""


def test_cpu_pool_is_not_resident_until_used():
    """In a fresh process (no other threads allocating): a 256 MiB pool is not resident right
    after allocation, where torch.zeros' is (it writes every byte); zeros, aligned, writable."""
    import subprocess
    import sys
    from pathlib import Path

    def grown(kind: str) -> int:
        out = subprocess.run([sys.executable, "-c", RESIDENCY_PROBE, kind], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[2], timeout=120)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    lazy, eager = grown("lazy"), grown("torch")
    assert lazy < 16 * 2**20, f"{lazy / 2**20:.0f} MiB resident right after allocation"
    assert eager > 4 * lazy + 64 * 2**20  # the probe can tell: torch.zeros' pages are resident


QUANTIZED_PROBE = """
import psutil, torch
from inferd.kernels.kv_quant import QuantizedKV
rss = lambda: psutil.Process().memory_info().rss
before = rss()
kv = QuantizedKV(4096, 16, 4, 1024, "int8", torch.device("cpu"), torch.bfloat16)  # 256 MiB + scales
grown = rss() - before
assert float(kv.data[4095].abs().sum()) == 0.0 and float(kv.scale.abs().sum()) == 0.0
print(grown)
"""


def test_quantized_cpu_pool_is_not_resident_until_used():
    """The int8/fp8 KV store takes no memory until written either (it was torch.zeros)."""
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", QUANTIZED_PROBE], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) < 16 * 2**20
