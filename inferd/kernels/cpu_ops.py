"""inferd's native CPU kernels (csrc/*.cpp): built once per ISA level, loaded for the best one.

A small model's CPU decode step is dominated by per-op overhead and weight reads, not arithmetic:
the fused row kernels replace several torch ops each, the quantized matmuls read packed weights
at memory speed, and decoder_stack.cpp runs the whole layer stack in one call (native_stack.py).
The same sources are compiled per level of cpu_isa.py (generic, avx2, avx512, avx512_vnni, amx;
generic, neon) with that level's target flags, each into its own library whose ops live in
`torch.ops.inferd_cpu_<level>`, so several levels can be loaded side by side (the tests run every
level the CPU has). The best level the CPU runs is used unless INFERD_CPU_ISA names another;
a level that does not build is logged in one line (the compiler's output goes to a file next to
the build), remembered so later starts do not retry it, and the next level down is tried.
INFERD_NATIVE_CPU=0, or no working compiler, leaves every caller on the plain torch ops that
compute the same thing. `main` builds ahead of time (scripts/setup.sh).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import sys
import threading
import time
from pathlib import Path

import torch

from inferd.kernels import cpu_isa, native_kinds

log = logging.getLogger(__name__)

_CSRC = Path(__file__).parent / "csrc"
_SOURCES = [_CSRC / name for name in
            ("cpu_ops.cpp", "quant_gemv.cpp", "decoder_stack.cpp", "decode_team.cpp", "weight_arena.cpp")]
# No FMA contraction outside explicit intrinsics: rounding then matches torch's ops.
_BASE_CFLAGS = ["-O3", "-ffp-contract=off", "-fopenmp"]
_LOCK_WAIT_S = 900  # another live process building the same library: wait this long at most

_lock = threading.Lock()  # guards _loaded
_choice_lock = threading.Lock()  # guards _active (held while _choose takes _lock)
_loaded: dict[str, object] = {}  # level -> its op namespace, or None where it failed
_active: list[str | None] = []  # [level in use] once chosen


def _tune_flags() -> list[str]:
    return [] if cpu_isa.is_arm() else ["-mtune=native"]


def library_name(level: cpu_isa.IsaLevel) -> str:
    """`inferd_cpu_<level>_<hash>`: the hash covers every csrc file (headers too, which torch's
    own staleness check does not read), the flags and torch's version, so a stale build is never
    loaded."""
    digest = hashlib.sha256(" ".join(_cflags(level) + [torch.__version__]).encode())
    for path in sorted(_CSRC.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return f"inferd_cpu_{level.name}_{digest.hexdigest()[:8]}"


def _cflags(level: cpu_isa.IsaLevel) -> list[str]:
    return (_BASE_CFLAGS + cpu_isa.compile_flags(level) + _tune_flags() + native_kinds.compile_defines()
            + [f"-DINFERD_OPS_NS=inferd_cpu_{level.name}"])


def _build_root() -> Path:
    from torch.utils import cpp_extension

    return Path(cpp_extension._get_build_directory("inferd", verbose=False)).parent


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """One builder per library across processes. The OS drops a flock when its holder dies, so
    while we hold it a torch `lock` file in the build directory can only be stale (its owner
    was killed mid-build); torch would wait on it forever, so it is removed, with a log line."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f"{build_dir.name}.flock", "w") as handle:
        deadline = time.monotonic() + _LOCK_WAIT_S
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    log.warning("inferd: another process is building %s; waiting for it", build_dir.name)
                    announced = True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process held the build lock of {build_dir} "
                                       f"for {_LOCK_WAIT_S} s") from None
                time.sleep(0.5)
        stale = build_dir / "lock"
        if stale.exists():
            log.warning("inferd: removed a stale build lock %s (left by a process stopped mid-build)", stale)
            stale.unlink(missing_ok=True)
        yield


def _load(level: cpu_isa.IsaLevel):
    """Build (or reuse) and load one level's library; returns its op namespace or None."""
    from torch.utils import cpp_extension

    name = library_name(level)
    namespace = f"inferd_cpu_{level.name}"
    build_dir = _build_root() / name
    failed = build_dir.with_name(name + ".failed.log")
    if failed.exists():
        log.info("inferd: %s kernels did not build before (see %s); not retrying", level.name, failed)
        return None
    so = build_dir / f"{name}.so"
    try:
        if so.exists():
            torch.ops.load_library(str(so))
        else:
            with _build_lock(build_dir):
                if so.exists():  # built by the process we waited for
                    torch.ops.load_library(str(so))
                else:
                    log.info("inferd: building the %s CPU kernels (once per machine, about a minute)", level.name)
                    cpp_extension.load(name=name, sources=[str(p) for p in _SOURCES], is_python_module=False,
                                       extra_cflags=_cflags(level), extra_ldflags=["-fopenmp"],
                                       build_directory=str(build_dir), verbose=False)
    except TimeoutError as exc:  # not this build's fault: try again next start
        log.warning("inferd: %s kernels not loaded: %s", level.name, exc)
        return None
    except Exception as exc:  # no compiler, no ninja, a failed build: one line, full text to a file
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(f"{type(exc).__name__}: {exc}\n")
        first = next((ln.strip() for ln in str(exc).splitlines() if "error" in ln.lower()), str(exc).splitlines()[0]
                     if str(exc) else type(exc).__name__)
        log.warning("inferd: the %s CPU kernels did not build (%s); compiler log in %s", level.name,
                    first[:200], failed)
        return None
    return getattr(torch.ops, namespace)


def ops_for(level_name: str):
    """The op namespace of one level (built and loaded first if need be), or None where that
    level does not build; the CPU must support the level."""
    level = cpu_isa.level_named(level_name)
    if not cpu_isa.supported(level):
        raise ValueError(f"this CPU cannot run the {level_name} kernels")
    if level_name not in _loaded:
        with _lock:
            if level_name not in _loaded:
                _loaded[level_name] = _load(level)
    return _loaded[level_name]


def _choose() -> str | None:
    if os.environ.get("INFERD_NATIVE_CPU", "1") == "0":
        log.info("inferd: INFERD_NATIVE_CPU=0: plain torch ops on CPU")
        return None
    forced = cpu_isa.forced_level()
    candidates = [forced] if forced else list(reversed([lv for lv in cpu_isa.levels() if cpu_isa.supported(lv)]))
    for level in candidates:
        if ops_for(level.name) is not None:
            if level is not candidates[0]:
                log.warning("inferd: using the %s CPU kernels (%s did not build)", level.name, candidates[0].name)
            return level.name
    log.warning("inferd: no native CPU kernels could be built; using plain torch ops (about half the speed)")
    return None


def level() -> str | None:
    """The level whose kernels callers use (None: plain torch ops)."""
    if not _active:
        with _choice_lock:
            if not _active:
                _active.append(_choose())
    return _active[0]


@contextlib.contextmanager
def use_level(level_name: str):
    """Run callers on one level's kernels for a while (tests and benchmarks of each path; the
    level must build). Quantized weights are packed for the level in use when they are made."""
    namespace = ops_for(level_name)
    if namespace is None:
        raise RuntimeError(f"the {level_name} CPU kernels did not build here")
    level()  # the normal choice is made first, so it is what comes back afterwards
    saved = _active[0]
    _active[0] = level_name
    try:
        yield namespace
    finally:
        _active[0] = saved


def available() -> bool:
    """True once a level's kernels are built and registered (see `ops`)."""
    return level() is not None


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the fused kernels serve these tensors: CPU, fp32 or bf16, and built."""
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16)
               for t in tensors) and available()


def ops():
    """The active level's op namespace (built and loaded first if need be)."""
    if not available():
        raise RuntimeError("inferd's native CPU kernels are unavailable here (see the warning above)")
    return _loaded[level()]


def main(argv: list[str]) -> int:
    """Build ahead of time: the best level (or INFERD_CPU_ISA's), or every level with --all."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if "--all" in argv:
        names = [lv.name for lv in cpu_isa.levels() if cpu_isa.supported(lv)]
        built = [n for n in names if ops_for(n) is not None]
        print(f"inferd CPU kernels built: {', '.join(built) or 'none'} (CPU: {cpu_isa.describe()})")
        return 0
    chosen = level()
    print(f"inferd CPU kernels: {chosen or 'unavailable, plain torch ops'} (CPU: {cpu_isa.describe()})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
