"""A small, fast GGUF reader: metadata, tensor table, and zero-copy views of tensor data.

The `gguf` package's reader builds a numpy view per metadata element (seconds for a 49k-token
vocabulary); parsing the header straight from a memory map takes milliseconds. Tensor bytes are
returned as numpy views for `gguf.quants.dequantize`. Damage (bad magic, truncation, offsets out
of range) raises ValueError with the reason; the loader turns that into a ModelLoadError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
            12: "<d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # torch order (slowest dimension first)
    ggml_type: int
    data: np.ndarray  # raw bytes (quantized) or typed values, viewing the file


class GGUFFile:
    def __init__(self, path: Path):
        self.path = path
        try:
            self._blob = np.memmap(path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot map file ({exc})") from None
        # Header reads go through a memoryview: slicing a numpy memmap costs microseconds a
        # slice, which a 262144-token vocabulary (Gemma 3) paid in seconds.
        self._view = memoryview(self._blob)
        self.fields: dict[str, Any] = {}
        self.tensors: list[GGUFTensor] = []
        try:
            self._parse()
        except struct.error:
            raise ValueError("header is truncated") from None

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    # ---- parsing -------------------------------------------------------------------------
    def _string(self, pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", self._view, pos)
        pos += 8
        if pos + n > len(self._view):
            raise struct.error
        return str(self._view[pos:pos + n], "utf-8", errors="replace"), pos + n

    def _strings(self, count: int, pos: int) -> tuple[list[str], int]:
        """An array of `count` strings (a vocabulary): _string's loop without its calls."""
        view, end, unpack = self._view, len(self._view), struct.Struct("<Q").unpack_from
        items = []
        for _ in range(count):
            (n,) = unpack(view, pos)
            pos += 8
            if pos + n > end:
                raise struct.error
            items.append(str(view[pos:pos + n], "utf-8", errors="replace"))
            pos += n
        return items, pos

    def _value(self, vtype: int, pos: int) -> tuple[Any, int]:
        if vtype in _SCALARS:
            fmt = _SCALARS[vtype]
            return struct.unpack_from(fmt, self._view, pos)[0], pos + struct.calcsize(fmt)
        if vtype == _STRING:
            return self._string(pos)
        if vtype == _ARRAY:
            etype, count = struct.unpack_from("<IQ", self._view, pos)
            pos += 12
            if etype in _NUMPY:
                dt = np.dtype(_NUMPY[etype])
                end = pos + count * dt.itemsize
                if end > len(self._blob):
                    raise struct.error
                return np.frombuffer(self._blob[pos:end], dtype=dt), end
            if etype == _STRING:
                return self._strings(count, pos)
            items = []
            for _ in range(count):
                item, pos = self._value(etype, pos)
                items.append(item)
            return items, pos
        raise ValueError(f"unknown metadata value type {vtype}")

    def _parse(self) -> None:
        blob = self._blob
        if len(blob) < 24 or bytes(blob[:4]) != b"GGUF":
            raise ValueError("missing GGUF magic bytes")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", blob, 4)
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        pos = 24
        for _ in range(n_kv):
            key, pos = self._string(pos)
            (vtype,) = struct.unpack_from("<I", blob, pos)
            self.fields[key], pos = self._value(vtype, pos + 4)
        table = []
        for _ in range(n_tensors):
            name, pos = self._string(pos)
            (ndim,) = struct.unpack_from("<I", blob, pos)
            dims = struct.unpack_from(f"<{ndim}Q", blob, pos + 4)
            gtype, offset = struct.unpack_from("<IQ", blob, pos + 4 + 8 * ndim)
            pos += 4 + 8 * ndim + 12
            table.append((name, tuple(int(d) for d in reversed(dims)), gtype, offset))
        align = int(self.fields.get("general.alignment", 32))
        start = -(-pos // align) * align
        self.tensors = [self._tensor(name, shape, gtype, start + off) for name, shape, gtype, off in table]

    def _tensor(self, name: str, shape: tuple[int, ...], gtype: int, offset: int) -> GGUFTensor:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        try:
            qtype = GGMLQuantizationType(gtype)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise ValueError(f"tensor {name} has unknown GGML type {gtype}") from None
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        if shape[-1] % block:
            raise ValueError(f"tensor {name}: row length {shape[-1]} is not a multiple of block {block}")
        row_bytes = shape[-1] // block * type_size
        end = offset + rows * row_bytes
        if end > len(self._blob):
            raise ValueError(f"tensor {name} extends past the end of the file (truncated?)")
        raw = self._blob[offset:end]
        if qtype.name in ("F32", "F16"):
            data = raw.view(np.float32 if qtype.name == "F32" else np.float16).reshape(shape)
        else:
            data = raw.reshape(rows, row_bytes) if len(shape) > 1 else raw.reshape(1, row_bytes)
        return GGUFTensor(name, shape, gtype, data)
