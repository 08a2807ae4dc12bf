"""Handing memory freed after a large request back to the OS.

Parsing and tokenizing a multi-megabyte body allocates hundreds of MB in short-lived Python and
tokenizer objects, in the worker threads' malloc arenas; glibc keeps the freed pages, so a
server's RSS rose by ~270 MB after a few 3.5 MB prompts and stayed there. `malloc_trim` returns
them. Where the C library has no `malloc_trim` (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

TRIM_AFTER_BYTES = 1 << 20  # bodies from this size on are worth a trim (it takes ~1 ms)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Return freed heap pages to the OS; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
