"""inferd's native CPU kernels for ARM64, checked from an x86 machine: every csrc/*.cpp compiles
with each ARM level's flags (cpu_isa.ARM_LEVELS) under Debian's cross compiler, each level takes
the per-ISA headers it should, and a small torch-free harness (arm_harness/) runs the NEON tile
kernels against the scalar reference bitwise (and NEON attention against the scalar attention)
under qemu-aarch64. Skips, saying what to install, where the tools are absent."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from inferd.kernels import cpu_isa, native_kinds

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "inferd" / "kernels" / "csrc"
HARNESS = Path(__file__).resolve().parent / "arm_harness"
CROSS = "aarch64-linux-gnu-g++"
INSTALL_HINT = "apt-get install -y g++-aarch64-linux-gnu"
TIMEOUT_S = 110  # per compiler or harness run; the whole test stays under two minutes on 2 cores

LEVELS = {level.name: level for level in cpu_isa.ARM_LEVELS}


def _native_arm() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64") and platform.system() == "Linux"


def _compiler() -> str:
    """The aarch64 C++ compiler: the cross compiler, or the host's own on an ARM64 Linux host."""
    if shutil.which(CROSS):
        return CROSS
    if _native_arm() and shutil.which("g++"):
        return "g++"
    pytest.skip(f"no aarch64 C++ compiler: {CROSS} is not installed "
                f"(Debian/Ubuntu: `{INSTALL_HINT}`)")


def _march(level: cpu_isa.IsaLevel) -> list[str]:
    return list(level.cflags) or ["-march=armv8-a"]  # generic: plain ARMv8, whatever the default


def _torch_includes() -> list[str]:
    from torch.utils import cpp_extension

    return [f"-I{path}" for path in cpp_extension.include_paths()]


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, **kwargs)


def _errors(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln or "Error" in ln]
    return "\n".join(lines[:30]) or proc.stderr[-4000:]


# The headers each level must take (quant_kernels.h and attention.h pick them by preprocessor).
_PROBE = """
#include "quant_kernels.h"
#include "attention.h"
#if defined(EXPECT_NEON)
static_assert(inferd_quant::TILES_FAST, "the neon level must take tiles_neon.h");
#else
static_assert(!inferd_quant::TILES_FAST, "generic ARM (no dot products) must take tiles_scalar.h");
#endif
#if !defined(__ARM_NEON) || !defined(INFERD_ATTEND_SIMD)
#error "AArch64 always has NEON: attention.h must take attention_neon.h at every level"
#endif
int main() { return 0; }
"""


@pytest.mark.parametrize("level_name", list(LEVELS))
def test_kernels_compile_for_arm64(level_name, tmp_path):
    """Every csrc/*.cpp passes the aarch64 compiler with the level's flags, as cpu_ops.py would
    build it (C++20 as torch's cpp_extension passes, no FMA contraction, OpenMP), and the level
    picks its own tile and attention headers."""
    cxx = _compiler()
    level = LEVELS[level_name]
    flags = (["-std=c++20", "-fsyntax-only", "-fopenmp", "-ffp-contract=off", "-w"] + _march(level)
             + native_kinds.compile_defines()
             + [f"-DINFERD_OPS_NS=inferd_cpu_{level.name}", "-DTORCH_API_INCLUDE_EXTENSION_H",
                f"-I{CSRC}"]
             + _torch_includes())
    probe = tmp_path / "probe.cpp"
    probe.write_text(_PROBE)
    jobs = [[cxx, *flags, str(src)] for src in sorted(CSRC.glob("*.cpp"))]
    jobs.append([cxx, *flags, *(["-DEXPECT_NEON"] if level.name == "neon" else []), str(probe)])
    assert len(jobs) > 1, f"no sources under {CSRC}"
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        results = list(pool.map(_run, jobs))
    failed = [(job[-1], proc) for job, proc in zip(jobs, results, strict=True)
              if proc.returncode != 0]
    march = " ".join(_march(level))
    assert not failed, "\n\n".join(f"{Path(src).name} ({level.name}: {march}):\n{_errors(proc)}"
                                   for src, proc in failed)


def test_neon_kernels_match_scalar_reference_under_qemu(tmp_path):
    """arm_harness: NEON quantize_rows and int4/int8 (and int8 with mins) tile_range bitwise
    equal to tiles_scalar.h (rows 1..9, groups 16..256, NaN/inf/zero/subnormal groups), exp4 bitwise exp16's formula,
    NEON attention within rounding of the scalar one. Runs under qemu-aarch64, or natively on an
    ARM64 CPU with dot products."""
    cxx = _compiler()
    if _native_arm():
        if not cpu_isa.supported(LEVELS["neon"]):
            pytest.skip("this ARM64 CPU lacks dot products / fp16 (the neon level)")
        runner: list[str] = []
    else:
        qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
        if not qemu:
            pytest.skip("qemu-aarch64 is not installed "
                        "(Debian/Ubuntu: `apt-get install -y qemu-user`)")
        runner = [qemu, "-cpu", "max", "-L", "/usr/aarch64-linux-gnu"]
    common = ["-std=c++20", "-O3", "-ffp-contract=off", "-w", f"-I{CSRC}", f"-I{HARNESS}",
              *_torch_includes()]
    # The reference side as generic ARM (tiles_scalar.h), the NEON side as the neon level.
    builds = [[cxx, *common, *_march(LEVELS[level]), "-c", str(HARNESS / f"{side}.cpp"),
               "-o", str(tmp_path / f"{side}.o")]
              for level, side in (("generic", "ref"), ("neon", "neon"))]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_run, builds))
    for cmd, proc in zip(builds, results, strict=True):
        assert proc.returncode == 0, f"{Path(cmd[-3]).name} did not build:\n{_errors(proc)}"
    exe = tmp_path / "arm_harness"
    objects = [str(tmp_path / "ref.o"), str(tmp_path / "neon.o")]
    link = _run([cxx, "-static", *objects, "-o", str(exe)])
    if link.returncode != 0:  # no static libc for the target: dynamic, qemu's -L finds the rest
        link = _run([cxx, *objects, "-o", str(exe)])
    assert link.returncode == 0, f"the harness did not link:\n{_errors(link)}"
    run = _run([*runner, str(exe)])
    assert run.returncode == 0 and run.stdout.rstrip().endswith("OK"), (
        f"NEON kernels differ from the scalar reference (rc {run.returncode}):\n"
        f"{run.stdout}\n{run.stderr[-2000:]}")
