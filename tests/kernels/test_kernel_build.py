"""How the native kernels are chosen, built and recovered (inferd/kernels/cpu_ops.py, cpu_isa.py):
a failed build is one log line and is remembered, a stale build lock is removed, a forced level
the CPU lacks is a clear error. The compiler is replaced by stand-ins: nothing is built here."""

from __future__ import annotations

import logging

import pytest

from inferd.kernels import cpu_isa, cpu_ops
from tests.kernels.conftest import needs_native

ZEN3 = frozenset({"avx2", "fma", "f16c", "sse4_2"})
XEON = ZEN3 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8",
               "amx_bf16"}


def test_levels_follow_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(cpu_isa, "is_arm", lambda: False)
    assert cpu_isa.best_level(ZEN3).name == "avx2"
    assert cpu_isa.best_level(XEON).name == "amx"
    assert cpu_isa.best_level(frozenset({"sse2"})).name == "generic"
    assert "-mavx512bf16" in cpu_isa.compile_flags(cpu_isa.level_named("avx512_vnni"), XEON)
    assert "-mavx512bf16" not in cpu_isa.compile_flags(cpu_isa.level_named("avx512_vnni"), XEON - {"avx512_bf16"})
    assert not any("avx512" in f for f in cpu_isa.compile_flags(cpu_isa.level_named("avx2"), XEON))


def test_forcing_a_level_the_cpu_lacks_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cpu_isa, "is_arm", lambda: False)
    monkeypatch.setattr(cpu_isa, "cpu_flags", lambda: ZEN3)
    monkeypatch.setenv("INFERD_CPU_ISA", "avx512_vnni")
    with pytest.raises(ValueError, match="lacks avx512"):
        cpu_isa.forced_level()
    monkeypatch.setenv("INFERD_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="choose one of generic, avx2"):
        cpu_isa.forced_level()
    monkeypatch.setenv("INFERD_CPU_ISA", "avx2")
    assert cpu_isa.forced_level().name == "avx2"


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """cpu_ops with an empty build root and a compiler stand-in that records its calls."""
    monkeypatch.setattr(cpu_ops, "_build_root", lambda: tmp_path)
    monkeypatch.setattr(cpu_ops, "_loaded", {})
    monkeypatch.setattr(cpu_ops, "_active", [])
    calls: list[str] = []

    def fake_load(name, **kwargs):
        calls.append(name)
        if "generic" not in name:
            raise RuntimeError("Error building extension\n" + "x.cpp:198:1: error: template argument invalid\n" * 137)

    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    monkeypatch.setattr(cpu_ops.torch.ops, "load_library", lambda path: None)
    return tmp_path, calls


def test_a_failed_build_is_one_line_remembered_and_the_level_below_is_used(sandbox, caplog, monkeypatch):
    needs_native()
    root, calls = sandbox
    monkeypatch.setattr(cpu_ops.torch.ops, "inferd_cpu_generic", "generic ops", raising=False)
    best = cpu_isa.best_level()
    if best.name == "generic":
        pytest.skip("this CPU has only the generic level: there is no level below to fall back to")
    with caplog.at_level(logging.INFO, logger="inferd.kernels.cpu_ops"):
        assert cpu_ops.level() == "generic"
    failures = [r for r in caplog.records if "did not build" in r.getMessage()]
    assert failures and all(len(r.getMessage().splitlines()) == 1 for r in failures)
    assert all(len(r.getMessage()) < 400 for r in caplog.records)
    logs = list(root.glob("*.failed.log"))
    assert logs and "template argument invalid" in logs[0].read_text()  # the full text is kept
    # A later start does not retry what failed for the same sources and flags.
    tried = len(calls)
    monkeypatch.setattr(cpu_ops, "_loaded", {})
    monkeypatch.setattr(cpu_ops, "_active", [])
    assert cpu_ops.level() == "generic"
    assert not any(name for name in calls[tried:] if "generic" not in name)


def test_a_stale_build_lock_is_removed_not_waited_on(tmp_path, caplog):
    build_dir = tmp_path / "inferd_cpu_avx2_deadbeef"
    build_dir.mkdir()
    (build_dir / "lock").write_text("")  # left by a process killed mid-build
    with caplog.at_level(logging.WARNING, logger="inferd.kernels.cpu_ops"), cpu_ops._build_lock(build_dir):
        assert not (build_dir / "lock").exists()
    assert any("stale build lock" in r.getMessage() for r in caplog.records)


def test_a_live_builder_is_waited_for_then_its_build_is_used(tmp_path, monkeypatch):
    """A second process holding the flock means a build is under way: wait, do not break it."""
    import fcntl
    import threading

    build_dir = tmp_path / "inferd_cpu_avx2_cafe"
    build_dir.mkdir()
    holder = open(tmp_path / f"{build_dir.name}.flock", "w")
    fcntl.flock(holder, fcntl.LOCK_EX)
    (build_dir / "lock").write_text("")  # the live builder's own torch lock
    seen: list[bool] = []

    def other():
        with cpu_ops._build_lock(build_dir):
            seen.append(True)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(1.0)
    assert thread.is_alive() and not seen and (build_dir / "lock").exists()
    (build_dir / "lock").unlink()
    fcntl.flock(holder, fcntl.LOCK_UN)
    holder.close()
    thread.join(5)
    assert seen == [True]
