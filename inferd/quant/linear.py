"""Drop-in replacements for `nn.Linear` whose weights are INT8, INT4 or FP8.

Each module packs a format from `formats.py` once, for the device it is built on, and its forward
runs the fastest kernel that device has (`kernels.py`). Inputs may have any leading shape; the
output has the input's dtype. Build the module on its final device: the packed layouts differ
between CPU and CUDA, so moving a built module across device types is refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inferd.kernels import cpu_ops, native_stack
from inferd.kernels.cpu_linear import bf16_via_fp32, dense_linear
from inferd.kernels.native_stack import NativeLinear
from inferd.quant import kernels
from inferd.quant.formats import (
    Fp8Weight,
    Int4Weight,
    Int8Weight,
    QuantizedWeight,
    quantize_fp8,
    quantize_int4,
    quantize_int8,
)

# From this many tokens on, a CPU call dequantizes the whole weight to bf16 and runs one GEMM:
# the int8/int4 CPU kernels are GEMV-shaped (they redo the dequantization every 4 rows), so
# prefill-sized batches lose to bf16 GEMM. Measured with benchmarks/bench_quant_matmul.py
# (--crossover). The switch also ends batch invariance (a row's result then depends on whether
# its step crossed it), so inferd's tile layouts, whose kernels run batches on AMX and
# dequantize in one native pass, keep the kernel up to 384 rows: greedy output is then the same
# alone or in any batch of smaller steps (tested with 256-token steps), at ~2/3 of the GEMM's
# speed on 64-383-row prefill chunks. int8 in rows switches beside inferd's row kernel only
# while the bf16 copy stays cache-sized: on a 576x49152 head the widening pass itself is
# DRAM-bound and costs more than the kernel at 32 tokens.
# torch's own kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`: torch's int4 layout,
# and int8 rows where inferd's kernels are not built) never switch: each computes every output
# on its own over K in a fixed order, so a row's result is the same for any row count, which a
# switch to dequant + GEMM would end at every step crossing it. They are also the faster choice
# where bf16 is not native: on a Zen 3 (AVX2), one thread, SmolLM2's four GEMM shapes ran 4.4-4.6x
# faster than dequant + GEMM at 24-512 rows (int8) and 4.5x at 384-512 rows (int4).
CPU_TILES_DEQUANT_FROM = 384
CPU_INT8_DEQUANT_FROM = 24
CPU_INT8_DEQUANT_MAX_WEIGHTS = 1 << 22


def tiles_dequant_from() -> int:
    """Rows from which inferd's tile layouts run dequant + GEMM on the kernels in use. Never on
    the AVX2 kernels where bf16 is not native: there a tile is widened once per call and every
    row reuses it (tiles_avx2.h), which ran 1.3-1.6x faster than dequant + fp32 GEMM at 384 and
    512 rows on a Zen 3 (one thread, SmolLM2's GEMM shapes), and one kernel at every row count
    keeps greedy output batch-invariant for any step size."""
    if cpu_ops.level() == "avx2" and bf16_via_fp32():
        return 1 << 30
    return CPU_TILES_DEQUANT_FROM


def default_compute_dtype(device: torch.device, weight_dtype: torch.dtype) -> torch.dtype:
    """bf16, the only fast CPU (and tinygemm) dtype; on CUDA, fp8 keeps a model's fp16."""
    if device.type == "cuda" and weight_dtype in (torch.float16, torch.bfloat16):
        return weight_dtype
    return torch.bfloat16


class _QuantLinear(nn.Module):
    """Shared plumbing: shapes, bias, the device check and the input/output casts."""

    in_features: int
    out_features: int

    def __init__(self, shape: tuple[int, int], bias: torch.Tensor | None,
                 device: torch.device, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.in_features = shape
        self.compute_dtype = compute_dtype
        self.packed_for = device.type
        if bias is not None:
            bias = bias.detach().to(device)
        self.register_buffer("bias", bias)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != self.packed_for:
            raise RuntimeError(
                f"{type(self).__name__} was packed for {self.packed_for} but got input on "
                f"{x.device.type}; quantize after moving the model to its device"
            )
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected input [..., {self.in_features}], got {tuple(x.shape)}")
        # Each no-op call below still costs ~1 us of dispatch, as much as a small decode GEMV's
        # margin, so only make the calls that change something.
        if x.dim() != 2:
            x = x.reshape(-1, self.in_features)
        if x.dtype != self.compute_dtype:
            x = x.to(self.compute_dtype)
        return x if x.is_contiguous() else x.contiguous()

    def _finish(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    @property
    def rows_independent(self) -> bool:
        """Whether a small batch runs inferd's CPU kernel, whose every row comes out the same
        whatever the row count (the runner then needs no padding rows for this layer)."""
        return False

    def native_spec(self) -> NativeLinear | None:
        """How decoder_stack.cpp runs this layer, or None where it cannot (see native_stack)."""
        return None

    def _native(self, kind: int, b: torch.Tensor, *, group: int = 0, max_rows: int = 1 << 30) -> NativeLinear:
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return NativeLinear(kind, self.qweight, b, bias, group, max_rows, self.compute_dtype)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the packed weight and its scales/zeros (bias excluded)."""
        return sum(b.numel() * b.element_size() for n, b in self.named_buffers() if n != "bias")

    def _repr_base(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, compute_dtype={self.compute_dtype}")


def _target(linear: nn.Linear, device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else linear.weight.device


class Int8Linear(_QuantLinear):
    """INT8 weights, read at 8 bits/weight on every path.

    CPU with AVX-512 VNNI: inferd's int8 tile kernel (`kernels.int8_tiles_mm`, fp16 scales per
    group: GGUF Q8_0's own values exactly; per-channel scales repeated per group; AMX for
    batches), dequant + bf16 GEMM from `tiles_dequant_from()` tokens on. Other CPUs with
    per-channel scales: inferd's row kernel (`int8_mm_cpu`), dequant from CPU_INT8_DEQUANT_FROM;
    without native kernels torch's `_weight_int8pack_mm` at every row count (batch invariance).
    Group-wise scales elsewhere, and all int8 on CUDA (where torch's
    `_weight_int8pack_mm` is a naive kernel, 5-50x slower than bf16), take the "two-plane"
    path: q = 16 hi + lo splits into two int4 planes run as one tinygemm call over [x, x], hi
    with scale 16 d and lo with scale d, zero 8 d. Exact up to bf16 rounding of d.
    Asymmetric int8 (a min per group: GGUF Q5_1/Q5_K, fused parts widened to one format) runs
    on the int8 tiles with (scale, min) pairs, else as two planes with the min on the low one.
    """

    def __init__(self, weight: Int8Weight, bias: torch.Tensor | None = None, *,
                 device: torch.device | str = "cpu", compute_dtype: torch.dtype | None = None) -> None:
        device = torch.device(device)
        super().__init__(weight.shape, bias, device,
                         compute_dtype or default_compute_dtype(device, torch.float32))
        self.group_size = weight.group_size
        self.symmetric = weight.symmetric
        n, k = weight.shape
        self.tile_group = kernels.int8_tile_group(n, k, weight.group_size, weight.per_channel, weight.scale,
                                                  weight.min) \
            if device.type == "cpu" and self.compute_dtype == torch.bfloat16 else None
        if self.tile_group is not None:
            self.two_plane = False
            repeat = k // self.tile_group // weight.scale.shape[1]
            scale = weight.scale.repeat_interleave(repeat, dim=1)
            low = None if weight.min is None else weight.min.repeat_interleave(repeat, dim=1)
            tiles = kernels.pack_int8_tiles(weight.qweight, scale, self.tile_group, low)
            self.register_buffer("qweight", tiles.codes.to(device))
            self.register_buffer("scale", tiles.scales.to(device))
            return
        self.two_plane = device.type == "cuda" or not weight.per_channel or not weight.symmetric
        if not self.two_plane:
            self.register_buffer("qweight", weight.qweight.to(device))
            self.register_buffer("scale", weight.scale[:, 0].to(device, self.compute_dtype))
            return
        if self.compute_dtype != torch.bfloat16:
            raise ValueError(f"{device.type} int8 runs on the bf16 int4 kernel; "
                             f"compute_dtype {self.compute_dtype} is not supported")
        # Per-channel scales are repeated over the largest group tinygemm takes.
        plane_group = weight.group_size if not weight.per_channel else next(
            (g for g in (256, 128, 64, 32) if k % g == 0), k)
        if problem := kernels.int4_shape_problem(n, k, plane_group, device):
            raise ValueError(f"int8 here runs on the int4 kernel, which refuses: {problem}")
        self.plane_group = plane_group
        repeat = k // plane_group // weight.scale.shape[1]
        d = weight.scale.repeat_interleave(repeat, dim=1)
        q = weight.qweight.to(torch.int16)
        codes = torch.cat([(q >> 4) + 8, q & 0x0F], dim=1)  # arithmetic shift: hi in [-8, 7]
        scale = torch.cat([16 * d, d], dim=1)
        # (c - 8) 16 d and c d, plus the weight's own min (if any) on the low plane: each plane's
        # min then stays a value the weight holds (-128 d exactly), never a rounded sum.
        low_min = torch.zeros_like(d) if weight.min is None else weight.min.repeat_interleave(repeat, dim=1)
        minimum = torch.cat([-128 * d, low_min], dim=1)
        packed = kernels.pack_int4(codes, scale, minimum, device)
        self.register_buffer("qweight", packed.qweight)
        self.register_buffer("scale_zeros", packed.scale_zeros)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, device: torch.device | str | None = None,
                    compute_dtype: torch.dtype | None = None) -> Int8Linear:
        """Quantize `linear.weight` per output channel (see `quantize_int8`)."""
        return cls(quantize_int8(linear.weight), linear.bias, device=_target(linear, device),
                   compute_dtype=compute_dtype)

    @classmethod
    def from_quantized(cls, weight: Int8Weight, bias: torch.Tensor | None = None, **kwargs) -> Int8Linear:
        return cls(weight, bias, **kwargs)

    @property
    def _dequant_from(self) -> int:
        """Rows from which a CPU call on inferd's kernels runs dequant + bf16 GEMM (only while
        the bf16 copy stays cache-sized; never on torch's `_weight_int8pack_mm`)."""
        small = self.in_features * self.out_features <= CPU_INT8_DEQUANT_MAX_WEIGHTS
        if not small:
            return 1 << 30
        return tiles_dequant_from() if self.tile_group is not None else CPU_INT8_DEQUANT_FROM

    @property
    def tiles(self) -> kernels.Int8Tiles | None:
        """The weight in the int8 tile layout, where this module holds it so."""
        return None if self.tile_group is None else kernels.Int8Tiles(self.qweight, self.scale, self.tile_group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self._prepare(x)
        if self.tile_group is not None:
            if x2.shape[0] >= self._dequant_from:
                y = dense_linear(x2, kernels.int8_tiles_dequantize(self.tiles, self.compute_dtype))
            else:
                y = kernels.int8_tiles_mm(x2, self.tiles)
        elif self.two_plane:
            y = kernels.int4_mm(torch.cat([x2, x2], dim=1), self.qweight, self.plane_group,
                                self.scale_zeros)
        elif x2.shape[0] >= self._dequant_from and cpu_ops.usable(x2):
            y = F.linear(x2, self.qweight.to(self.compute_dtype)) * self.scale
        else:  # torch's kernel where inferd's is not built: at every row count, rows independent
            y = kernels.int8_mm_cpu(x2, self.qweight, self.scale)
        return self._finish(y, x)

    @property
    def rows_independent(self) -> bool:
        # Two planes on CPU run inferd's int4 tiles or torch's int4 kernel, rows either way
        # independent; rows run inferd's row kernel or torch's int8 kernel (see forward).
        return self.packed_for == "cpu"

    def native_spec(self) -> NativeLinear | None:
        if self.packed_for != "cpu":
            return None
        if self.tile_group is not None:
            return self._native(native_stack.INT8_TILES, self.scale, group=self.tile_group,
                                max_rows=self._dequant_from - 1)
        if self.two_plane:
            return self._native(native_stack.INT8_PLANES, self.scale_zeros, group=self.plane_group) \
                if kernels.native_int4_applies(self.qweight) else None
        return self._native(native_stack.INT8, self.scale, max_rows=self._dequant_from - 1)

    def extra_repr(self) -> str:
        groups = "per_channel" if self.group_size == self.in_features else f"group_size={self.group_size}"
        kernel = "int8_tiles" if self.tile_group is not None else "int4x2_tinygemm" if self.two_plane else "int8pack"
        return f"{self._repr_base()}, {groups}, symmetric={self.symmetric}, kernel={kernel}"


class Int4Linear(_QuantLinear):
    """INT4 group-wise weights: on CPU inferd's VNNI kernel (tile layout, w = q * scale + min
    with scale and min in fp16: GGUF's own fp16 values exactly, others rounded by at most 2**-12
    relative); elsewhere torch's tinygemm kernels (w = (q - 8) * scale + zero, both in bf16 as
    those kernels require: at most 2**-9 relative).
    """

    def __init__(self, weight: Int4Weight, bias: torch.Tensor | None = None, *,
                 device: torch.device | str = "cpu", compute_dtype: torch.dtype | None = None) -> None:
        device = torch.device(device)
        super().__init__(weight.shape, bias, device, torch.bfloat16)
        if compute_dtype not in (None, torch.bfloat16):
            raise ValueError(f"int4 kernels compute in bfloat16 only, got compute_dtype={compute_dtype}")
        n, k = weight.shape
        if problem := kernels.int4_shape_problem(n, k, weight.group_size, device):
            raise ValueError(problem)
        self.group_size = weight.group_size
        self.symmetric = weight.symmetric
        minimum = weight.min if weight.min is not None else -8 * weight.scale
        packed = kernels.pack_int4(weight.unpacked(), weight.scale, minimum, device)
        self._unpackable = packed.unpackable
        self.register_buffer("qweight", packed.qweight)
        self.register_buffer("scale_zeros", packed.scale_zeros)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, group_size: int = 64, symmetric: bool = True,
                    device: torch.device | str | None = None) -> Int4Linear:
        """Quantize `linear.weight` group-wise (see `quantize_int4`)."""
        weight = quantize_int4(linear.weight, group_size, symmetric)
        return cls(weight, linear.bias, device=_target(linear, device))

    @classmethod
    def from_quantized(cls, weight: Int4Weight, bias: torch.Tensor | None = None, **kwargs) -> Int4Linear:
        return cls(weight, bias, **kwargs)

    def dequantize(self) -> torch.Tensor:
        """The float32 [N, K] weight the kernel multiplies by (CPU-packed modules only)."""
        if self.packed_for != "cpu":
            raise NotImplementedError("dequantize() reads the CPU layout; keep the Int4Weight for CUDA")
        return kernels.int4_dequantize_cpu(self.qweight, self.out_features, self.in_features,
                                           self.group_size, self.scale_zeros, torch.float32)

    @property
    def _dequant_from(self) -> int:
        """Rows from which a CPU call runs dequant + bf16 GEMM: inferd's tiles only; torch's
        `_weight_int4pack_mm_for_cpu` runs every row count itself (batch invariance)."""
        return tiles_dequant_from() if kernels.native_int4_applies(self.qweight) else 1 << 30

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self._prepare(x)
        if x2.shape[0] >= self._dequant_from:
            w = kernels.int4_dequantize_cpu(self.qweight, self.out_features, self.in_features,
                                            self.group_size, self.scale_zeros, torch.bfloat16)
            y = dense_linear(x2, w)
        else:
            y = kernels.int4_mm(x2, self.qweight, self.group_size, self.scale_zeros)
        return self._finish(y, x)

    @property
    def rows_independent(self) -> bool:
        # inferd's tiles, or torch's CPU kernel at every row count (tinygemm's CUDA kernel is not).
        return self.packed_for == "cpu"

    def native_spec(self) -> NativeLinear | None:
        if not kernels.native_int4_applies(self.qweight):
            return None
        return self._native(native_stack.INT4, self.scale_zeros, group=self.group_size,
                            max_rows=self._dequant_from - 1)

    def extra_repr(self) -> str:
        return (f"{self._repr_base()}, group_size={self.group_size}, "
                f"symmetric={self.symmetric}")


class Fp8Linear(_QuantLinear):
    """FP8 e4m3 weights with per-output-channel scales.

    CUDA sm89+: `torch._scaled_mm` with activations quantized to fp8 per token (W8A8; set
    `fp8_activations=False` for weight-only). Elsewhere weight-only: the weight is widened to the
    compute dtype on every call (exact), so on CPU FP8 saves memory, not time.
    """

    def __init__(self, weight: Fp8Weight, bias: torch.Tensor | None = None, *,
                 device: torch.device | str = "cpu", compute_dtype: torch.dtype | None = None,
                 fp8_activations: bool = True) -> None:
        device = torch.device(device)
        super().__init__(weight.shape, bias, device,
                         compute_dtype or default_compute_dtype(device, torch.float32))
        n, k = weight.shape
        self.use_scaled_mm = (fp8_activations and kernels.cuda_supports_fp8_mm(device)
                              and n % 16 == 0 and k % 16 == 0)
        self.register_buffer("qweight", weight.qweight.to(device))
        if self.use_scaled_mm:
            self.register_buffer("scale", weight.scale.reshape(1, n).to(device, torch.float32))
        else:
            self.register_buffer("scale", weight.scale.reshape(n).to(device, self.compute_dtype))

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, device: torch.device | str | None = None,
                    compute_dtype: torch.dtype | None = None, fp8_activations: bool = True) -> Fp8Linear:
        """Quantize `linear.weight` per output channel (see `quantize_fp8`)."""
        device = _target(linear, device)
        return cls(quantize_fp8(linear.weight), linear.bias, device=device,
                   compute_dtype=compute_dtype or default_compute_dtype(device, linear.weight.dtype),
                   fp8_activations=fp8_activations)

    @classmethod
    def from_quantized(cls, weight: Fp8Weight, bias: torch.Tensor | None = None, **kwargs) -> Fp8Linear:
        return cls(weight, bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self._prepare(x)
        if self.use_scaled_mm:
            y = kernels.fp8_scaled_mm(x2, self.qweight, self.scale)
        elif self.packed_for == "cpu" and self.compute_dtype == torch.bfloat16:
            y = kernels.fp8_mm_cpu(x2, self.qweight, self.scale)
            if y is None:
                # torch's own fp8 -> bf16 cast is scalar on CPU; the bit-moving one is vectorised.
                y = dense_linear(x2, kernels.fp8_to_bf16(self.qweight)) * self.scale
        else:
            y = F.linear(x2, self.qweight.to(self.compute_dtype)) * self.scale
        return self._finish(y, x)

    @property
    def rows_independent(self) -> bool:
        # Without inferd's fp8 kernel every call widens the weight for torch's bf16 GEMM, which
        # may round a row alone otherwise than in a batch (gemv): padding rows then.
        return self.packed_for == "cpu" and self.compute_dtype == torch.bfloat16 and cpu_ops.available()

    def native_spec(self) -> NativeLinear | None:
        if not self.rows_independent or self.use_scaled_mm or not cpu_ops.available():
            return None
        return self._native(native_stack.FP8, self.scale, max_rows=kernels.CPU_FP8_NATIVE_MAX_ROWS)

    def extra_repr(self) -> str:
        kernel = "scaled_mm_w8a8" if self.use_scaled_mm else "weight_only"
        return f"{self._repr_base()}, kernel={kernel}"


QuantLinear = Int8Linear | Int4Linear | Fp8Linear


def linear_from_quantized(weight: QuantizedWeight, bias: torch.Tensor | None = None, *,
                          device: torch.device | str = "cpu") -> QuantLinear:
    """The module for a format object, e.g. one made by `from_gguf_blocks`."""
    if isinstance(weight, Int8Weight):
        return Int8Linear(weight, bias, device=device)
    if isinstance(weight, Int4Weight):
        return Int4Linear(weight, bias, device=device)
    if isinstance(weight, Fp8Weight):
        return Fp8Linear(weight, bias, device=device)
    raise TypeError(f"not a quantized weight: {type(weight).__name__}")
