"""Which vector instruction sets this CPU has, and the native-kernel build level that uses them.

inferd's C++ kernels (csrc/) are compiled once per *level*: the same sources with one set of
target flags each, so one build never holds an instruction the CPU lacks, and a level that fails
to build leaves the levels below it usable. Levels, lowest first: `generic` (plain C++, any CPU),
`avx2` (AVX2 + FMA + F16C: every x86 laptop of the last decade), `avx512`, `avx512_vnni` (int8
dot products in one instruction) and `amx` (Intel's tile unit) on x86-64; `generic` and `neon`
(ARMv8.2 with dot products and fp16: Apple M, Graviton 2+) on ARM64. This module only detects and
names; cpu_ops.py builds and loads.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class IsaLevel:
    """One build of the kernels: what the CPU must have (its /proc/cpuinfo flag names) and the
    compiler flags that build for it; `optional` adds flags only where the CPU has the feature."""

    name: str
    required: frozenset[str]
    cflags: tuple[str, ...]
    optional: tuple[tuple[str, str], ...] = ()  # (cpu flag, compiler flag)


_AVX2 = ("-mavx2", "-mfma", "-mf16c", "-mpopcnt")
_AVX512 = _AVX2 + ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq")

X86_LEVELS = (
    IsaLevel("generic", frozenset(), ()),
    IsaLevel("avx2", frozenset({"avx2", "fma", "f16c"}), _AVX2),
    IsaLevel("avx512", frozenset({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"}), _AVX512),
    IsaLevel("avx512_vnni", frozenset({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                                       "avx512_vnni"}),
             _AVX512 + ("-mavx512vnni",), (("avx512_bf16", "-mavx512bf16"),)),
    IsaLevel("amx", frozenset({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                               "avx512_vnni", "amx_tile", "amx_int8"}),
             _AVX512 + ("-mavx512vnni", "-mamx-tile", "-mamx-int8"), (("avx512_bf16", "-mavx512bf16"),)),
)
ARM_LEVELS = (
    IsaLevel("generic", frozenset(), ()),
    # asimddp: SDOT/UDOT; fphp/asimdhp: fp16 arithmetic and conversions.
    IsaLevel("neon", frozenset({"asimd", "asimddp", "fphp", "asimdhp"}), ("-march=armv8.2-a+dotprod+fp16",)),
)
ALL_LEVEL_NAMES = tuple(dict.fromkeys(lv.name for lv in X86_LEVELS + ARM_LEVELS))


def is_arm() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def levels() -> tuple[IsaLevel, ...]:
    """This architecture's levels, lowest first."""
    return ARM_LEVELS if is_arm() else X86_LEVELS


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (x86 `flags`, ARM `Features`); on systems
    without /proc/cpuinfo, what torch's own capability probe reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return frozenset(value.split())
    except OSError:
        pass
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    if cap.startswith("AVX512"):
        return X86_LEVELS[2].required
    if cap.startswith("AVX2"):
        return X86_LEVELS[1].required
    if is_arm() and platform.system() == "Darwin":  # every Apple M chip has dot products and fp16
        return ARM_LEVELS[1].required
    return frozenset()


def supported(level: IsaLevel, flags: frozenset[str] | None = None) -> bool:
    return level.required <= (cpu_flags() if flags is None else flags)


def level_named(name: str) -> IsaLevel:
    for level in levels():
        if level.name == name:
            return level
    raise ValueError(f"INFERD_CPU_ISA={name!r} is not a level on this architecture "
                     f"({platform.machine()}); choose one of {', '.join(lv.name for lv in levels())}")


def best_level(flags: frozenset[str] | None = None) -> IsaLevel:
    """The highest level this CPU runs."""
    return [lv for lv in levels() if supported(lv, flags)][-1]


def compile_flags(level: IsaLevel, flags: frozenset[str] | None = None) -> list[str]:
    """The level's compiler flags, plus its optional ones this CPU has."""
    have = cpu_flags() if flags is None else flags
    return list(level.cflags) + [flag for feature, flag in level.optional if feature in have]


def forced_level() -> IsaLevel | None:
    """INFERD_CPU_ISA, checked against this CPU: a level it lacks is a clear error, not a crash
    on the first illegal instruction."""
    name = os.environ.get("INFERD_CPU_ISA", "").strip().lower()
    if not name or name == "auto":
        return None
    level = level_named(name)
    if not supported(level):
        missing = ", ".join(sorted(level.required - cpu_flags()))
        raise ValueError(f"INFERD_CPU_ISA={name}: this CPU lacks {missing}; "
                         f"it runs up to {best_level().name}")
    return level


def has_native_bf16() -> bool:
    """Whether the CPU multiplies bf16 in hardware (AVX512_BF16 or AMX-BF16). Elsewhere bf16
    compute is emulated through fp32 and is slower than fp32 itself."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags()) or (is_arm() and "bf16" in cpu_flags())


def describe() -> str:
    """One line for logs: the CPU's best level and its notable extras."""
    extras = [f for f in ("avx512_bf16", "amx_bf16", "asimddp", "bf16") if f in cpu_flags()]
    return f"{best_level().name}" + (f" (+{', '.join(extras)})" if extras else "")
