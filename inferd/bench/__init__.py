"""Benchmarking of OpenAI-compatible streaming endpoints (inferd's own, vLLM, llama.cpp).

Python use: build a `BenchConfig`, call `run_benchmark(config)`, read `BenchResult.runs[i].summary`.
The CLI (`inferd bench`) is a thin layer over the same call; see `inferd/bench/cli.py`.
"""

from inferd.bench.config import SLO, BenchConfig, WorkloadConfig
from inferd.bench.records import BenchResult, RequestRecord, RequestSpec, RunResult
from inferd.bench.runner import arun_benchmark, run_benchmark

__all__ = [
    "SLO",
    "BenchConfig",
    "BenchResult",
    "RequestRecord",
    "RequestSpec",
    "RunResult",
    "WorkloadConfig",
    "arun_benchmark",
    "run_benchmark",
]
