"""Linear layers whose weights are packed once into oneDNN's blocked layout, for CPU inference.

torch's plain CPU `linear` runs bf16 through a generic kernel that reaches about 20 GB/s on
decode shapes here, and fp32 takes a slower kernel for a few rows than for one. Reordering the
weight once for oneDNN selects its AVX-512 (BF16) kernels: measured on the bundled model's
shapes, every GEMM of a decode step is about 1.45x faster in bf16 and 1.6-2.2x faster in fp32.
oneDNN also computes each row the same way whatever the number of rows (two or more in fp32;
pinned by tests), which batch-invariant greedy decoding relies on.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from inferd.kernels.native_stack import PACKED, NativeLinear


def packing_supported(dtype: torch.dtype, device: torch.device) -> bool:
    """True where oneDNN serves this dtype fast on this machine: fp32 always, bf16 natively or,
    on CPUs without bf16 instructions, through fp32 (see `bf16_via_fp32`)."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return dtype in (torch.float32, torch.bfloat16)


@functools.cache
def bf16_via_fp32() -> bool:
    """Whether bf16 linears run as fp32 GEMMs here: without bf16 instructions (AVX2 CPUs)
    torch emulates bf16 matmuls at a fraction of fp32's speed (46 against 166 tok/s at batch
    32 on a Zen 3). bf16 values are exact in fp32 and bf16 GEMMs accumulate in fp32 anyway;
    only the order of the sums may differ. Costs twice the float weights' memory."""
    return not torch.ops.mkldnn._is_mkldnn_bf16_supported()


def dense_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T for a weight made on the fly (a quantized layer's dequantized copy, for
    prefill-sized batches): bf16 runs as an fp32 GEMM where the CPU has no bf16 instructions
    (see `bf16_via_fp32`: torch's emulated bf16 GEMMs ran 3-4x slower on a Zen 3), else as it is."""
    if x.device.type == "cpu" and x.dtype == torch.bfloat16 and bf16_via_fp32():
        return F.linear(x.float(), weight.float()).to(torch.bfloat16)
    return F.linear(x, weight)


# oneDNN's bf16 AMX matmul may split K across threads for some row counts (on a 2-core Xeon:
# 576x1536 at 150-260 rows), which sums in another order: a row's result would then depend on
# how many rows share the call. Up to this many rows no shape measured did (inv. tests pin
# it), so longer batches run in chunks of this size, the last one overlapping the one before.
MAX_ROWS_PER_CALL = 128


class PackedLinear(nn.Module):
    """`nn.Linear` with the weight reordered for oneDNN; same results as `F.linear` (tested)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.dtype = weight.dtype
        # bf16 without bf16 instructions: fp32 weights and GEMMs, inputs and outputs cast.
        self.upcast = weight.dtype == torch.bfloat16 and bf16_via_fp32()
        if self.upcast:
            weight = weight.float()
        # The batch-size hint only steers oneDNN's choice of blocking; 1 suits decode and was
        # no slower at prefill sizes when measured.
        self.packed_weight = nn.Parameter(torch.ops.mkldnn._reorder_linear_weight(weight, 1),
                                          requires_grad=False)
        bias = None if linear.bias is None else linear.bias.detach().to(weight.dtype)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upcast:
            return self._forward(x.float()).to(self.dtype)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0] if x.dim() == 2 else -1
        if rows <= MAX_ROWS_PER_CALL:
            return self._mm(x)
        out = x.new_empty(rows, self.out_features)
        for start in range(0, rows, MAX_ROWS_PER_CALL):
            lo = min(start, rows - MAX_ROWS_PER_CALL)  # keep every chunk full-sized
            out[lo:start + MAX_ROWS_PER_CALL] = self._mm(x[lo:start + MAX_ROWS_PER_CALL])
        return out

    def native_spec(self) -> NativeLinear | None:
        """How decoder_stack.cpp runs this layer (one oneDNN call up to MAX_ROWS_PER_CALL rows);
        None for upcast bf16, whose casts the native stack does not make."""
        if self.upcast:
            return None
        return NativeLinear(PACKED, self.packed_weight, bias=self.bias, max_rows=MAX_ROWS_PER_CALL)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linears(model: nn.Module) -> int:
    """Swap every plain `nn.Linear` whose dtype oneDNN serves well for a `PackedLinear`, in place.

    Quantized layers (other module types) are left alone. A tied output head gets its own packed
    copy; the embedding keeps the original table for lookups. Returns how many were packed.
    """
    targets = [(name, m) for name, m in model.named_modules()
               if type(m) is nn.Linear and packing_supported(m.weight.dtype, m.weight.device)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, PackedLinear(linear))
    return len(targets)
