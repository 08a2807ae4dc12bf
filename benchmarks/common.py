"""Helpers the benchmark scripts share: workload prompts, medians, machine description."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess

import torch


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), cpu)
    except (OSError, subprocess.SubprocessError):
        pass
    from inferd.kernels import cpu_isa, cpu_ops

    isa = f"ISA {cpu_isa.describe()}, inferd kernels {cpu_ops.level() or 'none (plain torch)'}"
    return f"{cpu}, {os.cpu_count()} cores, {isa}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def random_prompts(n: int, length: int, seed: int = 0, vocab: tuple[int, int] = (100, 40000)) -> list[list[int]]:
    """Token-id prompts of an exact length (fair across engines sharing a tokenizer)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(vocab[0], vocab[1], (length,), generator=g).tolist() for _ in range(n)]
