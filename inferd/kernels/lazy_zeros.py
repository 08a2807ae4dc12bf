"""Zeroed CPU buffers that take no memory until written, for the KV pools.

torch.zeros writes every byte, so an idle server held its whole KV pool resident (4 GiB for the
bundled model); calloc'd pages are mapped by the kernel on first touch instead.
"""

from __future__ import annotations

import numpy as np
import torch

ALIGN = 64  # bytes, as torch's own CPU allocator aligns


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeros of this shape; on CPU resident only where written (elsewhere plain torch.zeros)."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = dtype.itemsize
    for d in shape:
        nbytes *= d
    raw = np.zeros(nbytes + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return torch.from_numpy(raw[start:start + nbytes]).view(dtype).view(shape)
