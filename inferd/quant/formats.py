"""Weight-only quantized formats: what the numbers mean, how they are packed, how to (de)quantize.

Pure tensor functions on CPU, no kernels and no modules: every format is a frozen dataclass whose
`dequantize()` is the reference the fast kernels in `linear.py` are tested against. Weights follow
`nn.Linear`: shape [N, K] = [out_features, in_features]; groups run along K.

  INT8  w[n, k] = q[n, k] * scale[n, k // G]                    q int8 in [-127, 127]
        w[n, k] = q[n, k] * scale[n, k // G] + min[n, k // G]   asymmetric (GGUF Q5_1, Q5_K)
  INT4  w[n, k] = (q[n, k] - 8) * scale[n, k // G]              symmetric, q in [0, 15]
        w[n, k] = q[n, k] * scale[n, k // G] + min[n, k // G]   asymmetric
  FP8   w[n, k] = float(q[n, k]) * scale[n]                     q float8_e4m3fn
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT4_GROUP_SIZES = (32, 64, 128)
FP8_MAX = 448.0  # largest finite float8_e4m3fn


@dataclass(frozen=True)
class Int8Weight:
    """INT8 group-wise; `group_size == K` means one scale per output channel. `min is None`
    means symmetric (what `quantize_int8` makes); a min per group holds GGUF's 5-bit
    asymmetric blocks exactly, which no symmetric int8 can (their min is not a code multiple)."""

    qweight: torch.Tensor  # int8 [N, K]
    scale: torch.Tensor  # float32 [N, K // group_size]
    group_size: int
    min: torch.Tensor | None = None  # float32 [N, K // group_size], or None when symmetric

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.qweight.shape)  # type: ignore[return-value]

    @property
    def per_channel(self) -> bool:
        return self.group_size == self.qweight.shape[1]

    @property
    def symmetric(self) -> bool:
        return self.min is None

    @property
    def nbytes(self) -> int:
        return _nbytes(self.qweight, self.scale, self.min)

    def dequantize(self) -> torch.Tensor:
        scale = self.scale.repeat_interleave(self.group_size, dim=1)
        w = self.qweight.to(torch.float32) * scale
        if self.min is None:
            return w
        return w + self.min.repeat_interleave(self.group_size, dim=1)


@dataclass(frozen=True)
class Int4Weight:
    """INT4 group-wise; `min is None` means symmetric. Two values per byte, see `pack_int4`."""

    packed: torch.Tensor  # uint8 [N, K // 2]
    scale: torch.Tensor  # float32 [N, K // group_size]
    min: torch.Tensor | None  # float32 [N, K // group_size], or None when symmetric
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.packed.shape[0], self.packed.shape[1] * 2)

    @property
    def symmetric(self) -> bool:
        return self.min is None

    @property
    def nbytes(self) -> int:
        return _nbytes(self.packed, self.scale, self.min)

    def unpacked(self) -> torch.Tensor:
        """The codes q as uint8 [N, K] in [0, 15]."""
        return unpack_int4(self.packed)

    def dequantize(self) -> torch.Tensor:
        q = self.unpacked().to(torch.float32)
        scale = self.scale.repeat_interleave(self.group_size, dim=1)
        if self.min is None:
            return (q - 8) * scale
        return q * scale + self.min.repeat_interleave(self.group_size, dim=1)

    def kernel_scale_and_zero(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero) in the tinygemm convention w = (q - 8) * scale + zero, float32 [N, G].

        Asymmetric: q * s + m == (q - 8) * s + (m + 8 s), so zero = m + 8 s, rounded at most once
        in float32 (the kernels then hold scale and zero in bf16 anyway).
        """
        if self.min is None:
            return self.scale, torch.zeros_like(self.scale)
        return self.scale, self.min + 8 * self.scale


@dataclass(frozen=True)
class Fp8Weight:
    """FP8 e4m3 with one float32 scale per output channel."""

    qweight: torch.Tensor  # float8_e4m3fn [N, K]
    scale: torch.Tensor  # float32 [N, 1]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.qweight.shape)  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return _nbytes(self.qweight, self.scale)

    def dequantize(self) -> torch.Tensor:
        return self.qweight.to(torch.float32) * self.scale


QuantizedWeight = Int8Weight | Int4Weight | Fp8Weight


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _check_weight(weight: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D [out_features, in_features] weight, got {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"expected a floating-point weight, got {weight.dtype}")
    if group_size is not None and weight.shape[1] % group_size:
        raise ValueError(
            f"group_size {group_size} does not divide in_features {weight.shape[1]}"
        )
    return weight.detach().to(torch.float32)


def _safe_scale(scale: torch.Tensor) -> torch.Tensor:
    # An all-zero row or group would give scale 0 and 0/0 = nan codes; any positive scale
    # represents zeros exactly, so use 1.
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K] codes in [0, 15] -> uint8 [N, K // 2]: column 2j in the low nibble, 2j+1 high."""
    if q.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even number of columns, got {q.shape[-1]}")
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).flatten(-2)


def quantize_int8(weight: torch.Tensor, group_size: int | None = None) -> Int8Weight:
    """Symmetric round-to-nearest: scale = absmax / 127, so |w - dequant(w)| <= scale / 2."""
    k = weight.shape[-1]
    group = k if group_size is None else group_size
    w = _check_weight(weight, group).reshape(weight.shape[0], k // group, group)
    scale = _safe_scale(w.abs().amax(dim=-1) / 127)
    q = torch.round(w / scale[..., None]).clamp_(-127, 127).to(torch.int8)
    return Int8Weight(q.reshape(weight.shape[0], k), scale, group)


def quantize_int4(weight: torch.Tensor, group_size: int = 64, symmetric: bool = True) -> Int4Weight:
    """Group-wise round-to-nearest; the error per element is at most scale / 2.

    Symmetric: scale = absmax / 7, codes q - 8 in [-7, 7] (the -8 code is left unused so the
    bound holds for both signs). Asymmetric: scale = (max - min) / 15, min = group min.
    """
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    n, k = weight.shape
    w = _check_weight(weight, group_size).reshape(n, k // group_size, group_size)
    if symmetric:
        scale = _safe_scale(w.abs().amax(dim=-1) / 7)
        q = torch.round(w / scale[..., None]).clamp_(-7, 7) + 8
        low = None
    else:
        low = w.amin(dim=-1)
        scale = _safe_scale((w.amax(dim=-1) - low) / 15)
        q = torch.round((w - low[..., None]) / scale[..., None]).clamp_(0, 15)
    return Int4Weight(pack_int4(q.reshape(n, k)), scale, low, group_size)


def quantize_fp8(weight: torch.Tensor) -> Fp8Weight:
    """Per-output-channel scale = absmax / 448, then round-to-nearest-even into e4m3.

    Error per element: at most |w| * 2**-4 (normal range, 3 mantissa bits) or scale * 2**-10
    (e4m3 subnormals, spacing 2**-9).
    """
    w = _check_weight(weight)
    scale = _safe_scale(w.abs().amax(dim=1, keepdim=True) / FP8_MAX)
    q = (w / scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return Fp8Weight(q, scale)
