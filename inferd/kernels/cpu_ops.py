"""Fused CPU kernels (csrc/*.cpp), built on first use, with plain-torch fallbacks.

A small model's CPU decode step is dominated by per-op overhead, not arithmetic: these kernels
replace several torch ops each (see cpu_ops.cpp's header), quant_gemv.cpp reads quantized
weights at memory speed for decode-sized batches, and decoder_stack.cpp runs a model's whole
layer stack in one call (native_stack.py). They are compiled once per machine
with the system C++ compiler through torch's extension builder (about 20 s, cached under
~/.cache/torch_extensions) for the machine's own vector instructions. Where no compiler works,
or with INFERD_NATIVE_CPU=0, every caller uses the torch ops that compute the same thing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_SOURCES = [Path(__file__).parent / "csrc" / name
            for name in ("cpu_ops.cpp", "quant_gemv.cpp", "decoder_stack.cpp", "decode_team.cpp", "weight_arena.cpp")]
_lock = threading.Lock()
_state: dict[str, bool] = {}


def _build_tag() -> str:
    """A short hash of the CPU's feature flags and every file in csrc/ (headers included, which
    torch's own staleness check does not read): a build is never loaded on another CPU or after
    a source change."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = "unknown"
    digest = hashlib.sha256(flags.encode())
    for path in sorted(_SOURCES[0].parent.iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


def _build() -> bool:
    from torch.utils import cpp_extension

    try:
        cpp_extension.load(
            name=f"inferd_cpu_ops_{_build_tag()}", sources=[str(p) for p in _SOURCES], is_python_module=False,
            # No FMA contraction outside explicit intrinsics: rounding then matches torch's ops.
            extra_cflags=["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"],
            extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as exc:  # no compiler, no ninja, a failed build: fall back, loudly once
        log.warning("inferd: native CPU kernels unavailable (%s); using plain torch ops", exc)
        return False
    return True


def available() -> bool:
    """True once the kernels are built and registered as torch.ops.inferd_cpu.*."""
    if "ok" not in _state:
        with _lock:
            if "ok" not in _state:
                enabled = os.environ.get("INFERD_NATIVE_CPU", "1") != "0"
                _state["ok"] = enabled and _build()
    return _state["ok"]


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the fused kernels serve these tensors: CPU, fp32 or bf16, and built."""
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16)
               for t in tensors) and available()


def ops():
    """The kernels' op namespace (built and loaded first if need be)."""
    if not available():
        raise RuntimeError("inferd's native CPU kernels are unavailable here (see the warning above)")
    return torch.ops.inferd_cpu
