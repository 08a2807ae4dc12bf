"""Kernel tests run on every CPU path this machine has: each test of the modules below runs once
per ISA level (cpu_isa.py) with that level's build in use, so an AVX2 path is tested on an
AVX-512 machine too, and the scalar reference everywhere. By default the levels are the best
one, avx2 and generic (each build costs a minute or two on 2 cores); INFERD_TEST_ALL_ISAS=1
takes every level the CPU supports. A level that does not build here skips, saying so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inferd.kernels import cpu_isa, cpu_ops
from tests.model.tiny_checkpoints import make_checkpoint

PER_LEVEL_MODULES = {"test_cpu_ops", "test_quant_gemv", "test_decode_team", "test_native_stack"}


def levels_to_test() -> list[str]:
    supported = [lv.name for lv in cpu_isa.levels() if cpu_isa.supported(lv)]
    if os.environ.get("INFERD_TEST_ALL_ISAS") == "1":
        return supported
    wanted = {supported[-1], "avx2", "neon", "generic"}
    return [name for name in supported if name in wanted]


def pytest_generate_tests(metafunc):
    if "kernel_level" in metafunc.fixturenames and metafunc.module.__name__.rsplit(".", 1)[-1] in PER_LEVEL_MODULES:
        metafunc.parametrize("kernel_level", levels_to_test(), indirect=True)


@pytest.fixture(autouse=True)
def kernel_level(request):
    """The ISA level whose kernels the test runs on (None outside the per-level modules)."""
    name = getattr(request, "param", None)
    if name is None:
        yield None
        return
    if os.environ.get("INFERD_NATIVE_CPU") == "0":
        pytest.skip("INFERD_NATIVE_CPU=0 turns the native CPU kernels off: there is no native path to test")
    if cpu_ops.ops_for(name) is None:
        pytest.skip(f"the {name} CPU kernels did not build on this machine (see the log line)")
    with cpu_ops.use_level(name):
        yield name


def needs_fast_tiles(level: str | None) -> None:
    """Skip where the level's tile kernels are the scalar reference: quantized layers then run
    on torch's own kernels, so there is no native quantized stack to test."""
    if level is not None and not cpu_ops.ops_for(level).int4_mm_built():
        pytest.skip(f"the {level} level keeps quantized layers on torch's kernels (no vector tile kernel)")


def needs_packed_bf16() -> None:
    """Skip where the CPU has no bf16 instructions: bf16 linears then run as fp32 GEMMs with
    casts (cpu_linear.bf16_via_fp32), which the native stack does not call."""
    from inferd.kernels.cpu_linear import bf16_via_fp32

    if bf16_via_fp32():
        pytest.skip("this CPU has no native bf16: bf16 linears run as fp32 GEMMs, outside the native stack")


def needs_native() -> None:
    """Skip where INFERD_NATIVE_CPU=0 turns the native kernels off (the test is about them)."""
    if os.environ.get("INFERD_NATIVE_CPU") == "0":
        pytest.skip("INFERD_NATIVE_CPU=0 turns the native CPU kernels off: there is no native path to test")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory, tokenizer_dir) -> Path:
    """Llama's layer plus qk-norm (tests/model/tiny_checkpoints.py)."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny_qwen3"), "qwen3", tokenizer_dir, seed=11)


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory, tokenizer_dir) -> Path:
    """Gemma 3's layer: (1 + w) and sandwich norms, qk-norm, tanh-gelu, sliding layers with a
    window of 8 and their own rope table around one global layer."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny_gemma3"), "gemma3", tokenizer_dir, seed=12)
