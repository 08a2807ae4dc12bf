"""Float64 references and error bounds shared by the quantization tests."""

from __future__ import annotations

import torch

from inferd.quant import Fp8Weight, Int4Weight, Int8Weight, QuantizedWeight

# Unit roundoff of bfloat16 (8 significant bits). A kernel rounds to bf16 at most five times
# along each product: the activation, the scale, the zero, the dequantized weight (dequant+GEMM
# paths) and the output; it accumulates in fp32 (K * 2**-24, negligible next to these).
BF16_U = 2.0**-9


def magnitude(weight: QuantizedWeight) -> torch.Tensor:
    """Per element, the sum of |terms| the kernel adds to form w, each rounded by <= BF16_U.

    INT8 per channel / FP8 / INT4 symmetric: |w| itself. INT4 asymmetric: w = (q - 8) s + z,
    and z = m + 8 s can be much larger than w. INT8 grouped runs as two int4 planes,
    hi * 16 d + lo * d, whose parts are at most |w| + 30 |d|.
    """
    w = weight.dequantize().double()
    if isinstance(weight, Int4Weight) and not weight.symmetric:
        scale, zero = (t.double().repeat_interleave(weight.group_size, 1)
                       for t in weight.kernel_scale_and_zero())
        return ((weight.unpacked().double() - 8) * scale).abs() + zero.abs()
    if isinstance(weight, Int8Weight) and not weight.symmetric:
        # Two planes: hi * 16 d - 128 d and lo * d + m, each term rounded on its own.
        d = weight.scale.double().abs().repeat_interleave(weight.group_size, 1)
        m = weight.min.double().abs().repeat_interleave(weight.group_size, 1)
        return (weight.qweight.double().abs() + 158) * d + m
    if isinstance(weight, Int8Weight) and not weight.per_channel:
        d = weight.scale.double().abs().repeat_interleave(weight.group_size, 1)
        return w.abs() + 30 * d
    assert isinstance(weight, Int4Weight | Int8Weight | Fp8Weight)
    return w.abs()


def reference_and_bound(x: torch.Tensor, weight: QuantizedWeight,
                        bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(dequantized weight @ x in float64, per-output error bound of a bf16-compute kernel).

    Bound: 5 roundings of relative size BF16_U over the magnitude of every product,
    |x| @ magnitude(W).T, plus a small absolute slack.
    """
    x64 = x.double().reshape(-1, x.shape[-1])
    ref = x64 @ weight.dequantize().double().t()
    if bias is not None:
        ref = ref + bias.double()
    bound = 5 * BF16_U * (x64.abs() @ magnitude(weight).t()) + 1e-6
    if bias is not None:
        bound = bound + BF16_U * bias.double().abs()
    return ref, bound
