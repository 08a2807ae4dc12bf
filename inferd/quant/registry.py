"""The one table of quantization formats: every method a flag can name and every GGUF block type
inferd keeps as it is, read by the engine flags, quant-eval, the draft model's name suffixes,
`apply.py` and the GGUF loader. A new format is one entry here plus its kernels (and, for a
GGUF type, its byte decoder in `gguf_codecs.py`); the native kernels' kind ids have their own
table shared with C++ (`inferd/kernels/native_kinds.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q

from inferd.quant import gguf_codecs
from inferd.quant.formats import (
    INT4_GROUP_SIZES,
    Int4Weight,
    Int8Weight,
    QuantizedWeight,
    quantize_fp8,
    quantize_int4,
    quantize_int8,
)

Quantizer = Callable[[torch.Tensor, int, bool], QuantizedWeight]  # (weight, group_size, symmetric)


@dataclass(frozen=True)
class QuantMethod:
    """A `--quantization` method: how float weights become a format, or (gguf) where they come
    from instead."""

    name: str
    summary: str
    quantize: Quantizer | None  # None: the quantized weights come from the model file
    group_sizes: tuple[int, ...] = ()  # the group sizes it takes; () when it has none
    head: bool = True  # `--quant-lm-head METHOD` may name it for the head alone


@dataclass(frozen=True)
class GgufBlockFormat:
    """A GGUF block type inferd keeps (`--quantization gguf`): decoded exactly into `layout`."""

    qtype: Q
    decode: Callable[[np.ndarray], Int8Weight | Int4Weight]  # blocks [N, K // block, bytes] -> format
    layout: str  # what inferd holds it as, said in logs and reports


QUANT_METHODS: tuple[QuantMethod, ...] = (
    QuantMethod("int8", "INT8, symmetric, one scale per output channel",
                lambda w, group, sym: quantize_int8(w)),
    QuantMethod("int4", "INT4 group-wise, symmetric or with a min per group",
                lambda w, group, sym: quantize_int4(w, group, sym), group_sizes=INT4_GROUP_SIZES),
    QuantMethod("fp8", "FP8 e4m3, one scale per output channel", lambda w, group, sym: quantize_fp8(w)),
    QuantMethod("gguf", "a GGUF file's own quantized blocks, kept exactly", None, head=False),
)

GGUF_BLOCK_FORMATS: tuple[GgufBlockFormat, ...] = (
    GgufBlockFormat(Q.Q8_0, gguf_codecs.q8_0, "int8 g32"),
    GgufBlockFormat(Q.Q4_0, gguf_codecs.q4_0, "int4 g32 symmetric"),
    GgufBlockFormat(Q.Q4_1, gguf_codecs.q4_1, "int4 g32 with mins"),
    GgufBlockFormat(Q.Q4_K, gguf_codecs.q4_k, "int4 g32 with mins"),
    GgufBlockFormat(Q.Q5_0, gguf_codecs.q5_0, "int8 g32"),
    GgufBlockFormat(Q.Q5_1, gguf_codecs.q5_1, "int8 g32 with mins"),
    GgufBlockFormat(Q.Q5_K, gguf_codecs.q5_k, "int8 g32 with mins"),
    GgufBlockFormat(Q.Q6_K, gguf_codecs.q6_k, "int8 g16"),
    GgufBlockFormat(Q.Q3_K, gguf_codecs.q3_k, "int4 g16 symmetric"),
    GgufBlockFormat(Q.Q2_K, gguf_codecs.q2_k, "int4 g16 with mins"),
)

# Views of the tables, for the flags and checks that list names.
METHODS = tuple(m.name for m in QUANT_METHODS if m.quantize is not None)  # quantize float weights
LOAD_METHODS = tuple(m.name for m in QUANT_METHODS)  # what --quantization takes besides auto/none
HEAD_METHODS = tuple(m.name for m in QUANT_METHODS if m.head and m.quantize is not None)
GROUP_SIZES = tuple(sorted({g for m in QUANT_METHODS for g in m.group_sizes}))
SUPPORTED_GGUF_TYPES = tuple(f.qtype for f in GGUF_BLOCK_FORMATS)
_BY_NAME = {m.name: m for m in QUANT_METHODS}
_BY_QTYPE = {int(f.qtype): f for f in GGUF_BLOCK_FORMATS}


def quant_method(name: str) -> QuantMethod:
    """The entry for `name`; ValueError naming the choices for anything else."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown quantization method {name!r}; choose one of {METHODS}") from None


def quantize(weight: torch.Tensor, method: str, *, group_size: int = 64,
             symmetric: bool = True) -> QuantizedWeight:
    """Quantize one float weight with a method that quantizes (not gguf)."""
    entry = quant_method(method)
    if entry.quantize is None:
        raise ValueError(f"{method!r} keeps a file's blocks; it does not quantize float weights "
                         f"(choose one of {METHODS})")
    return entry.quantize(weight, group_size, symmetric)


def gguf_block_format(qtype: Q | int) -> GgufBlockFormat | None:
    """The entry for a GGUF type, or None where inferd has no exact format for it."""
    return _BY_QTYPE.get(int(qtype))
