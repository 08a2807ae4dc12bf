"""Move a model's quantized CPU weights into one huge-page buffer (csrc/weight_arena.cpp).

Decode reads every quantized weight once a step. Spread over hundreds of small allocations on
4 KiB pages, the walk through them costs TLB misses; on one buffer of 2 MiB pages the decoder
stack ran 4-7% faster here. Values are copied, never changed, and every module that held a
tensor (a tied embedding too, in its own shape) holds a view of the buffer afterwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import torch
from torch import nn

from inferd.kernels import cpu_ops

ALIGN = 64  # bytes: each tensor starts on a cache line, as torch's allocator places it


def _streamed(model: nn.Module) -> list[torch.Tensor]:
    """The plain CPU buffers (codes, scales, biases) of the quantized linears, once each."""
    seen: dict[int, torch.Tensor] = {}
    for module in model.modules():
        if not hasattr(module, "native_spec") or not hasattr(module, "qweight"):
            continue
        for t in module.buffers(recurse=False):
            if t.device.type == "cpu" and t.layout == torch.strided and t.is_contiguous():
                seen.setdefault(t.data_ptr(), t)
    return list(seen.values())


def move_to_hugepages(model: nn.Module) -> int:
    """Copy the quantized weights of `model` into one huge-page buffer; returns its bytes (0 when
    there is nothing to move or the native kernels are unavailable)."""
    tensors = _streamed(model)
    if not tensors or not cpu_ops.available():
        return 0
    sizes = [-(-t.nbytes // ALIGN) * ALIGN for t in tensors]
    arena = cpu_ops.ops().hugepage_buffer(sum(sizes))
    views: dict[int, torch.Tensor] = {}
    offset = 0
    for t, size in zip(tensors, sizes, strict=True):
        view = arena[offset:offset + t.nbytes].view(t.dtype).view(t.shape)
        view.copy_(t)
        views[t.data_ptr()] = view
        offset += size
    for module in model.modules():  # rebind every holder, in the shape it held
        for name, buf in list(module.named_buffers(recurse=False)):
            view = views.get(buf.data_ptr()) if buf is not None else None
            if (view is not None and buf.dtype == view.dtype and buf.numel() == view.numel()
                    and buf.is_contiguous()):
                # The same tensor object where the shape matches, so shared buffers stay shared.
                setattr(module, name, view if view.shape == buf.shape else view.view(buf.shape))
    _return_freed_memory()
    return offset


def _return_freed_memory() -> None:
    """glibc keeps freed heap pages mapped: hand them back, so that the originals (and the float
    copies loading left behind) stop counting in RSS: int4 + int8 head, 796 -> 616 MiB."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to hand back this way
