"""The linear kinds decoder_stack.cpp and decode_team.cpp run, defined once for Python and C++.

A quantized module tells the native stack which kernel runs it by a kind id (`native_stack.py`);
the C++ side switches on the same ids. They are not written twice: cpu_ops.py passes every kind
to the compiler as `-DINFERD_KIND_<NAME>=<id>` (decode_team.h refuses to build without them), and
the built library reports what it was compiled with (`linear_kinds()`), which a test compares
with this table. A new kind is one entry here plus its `case` in the C++.
"""

from __future__ import annotations

from enum import IntEnum


class LinearKind(IntEnum):
    """How one linear layer's weight is laid out for the native stack."""

    PACKED = 0  # a float weight packed for oneDNN (mkldnn::_linear_pointwise)
    INT4 = 1  # int4 tiles, scale and min per group (int4_mm)
    INT8 = 2  # int8 rows, one scale per row (int8_rows_mm)
    FP8 = 3  # fp8 e4m3 rows, one scale per row (fp8_rows_mm)
    INT8_PLANES = 4  # int8 as two int4 planes (int4_mm on [x, x]); asymmetric int8 too
    INT8_TILES = 5  # int8 tiles, one scale per group (int8_tiles_mm)


def compile_defines() -> list[str]:
    """The compiler flags that hand every kind to the C++ sources."""
    return [f"-DINFERD_KIND_{kind.name}={kind.value}" for kind in LinearKind]


def parse_reported(text: str) -> dict[str, int]:
    """`linear_kinds()`'s answer, "PACKED=0,INT4=1,...", as {name: id}."""
    pairs = (item.split("=") for item in text.split(",") if item)
    return {name: int(value) for name, value in pairs}
