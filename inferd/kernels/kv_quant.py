"""Quantized KV cache: keys or values of one layer stored as int8 or fp8 (e4m3), with one fp32
scale per (token, head), so one outlier token never costs its neighbours precision.

At head_dim 64 this is 68 bytes per token-head instead of 128 (bf16) or 256 (fp32): the same
memory holds about twice (or four times) the tokens. Attention dequantizes what it gathers.
"""

from __future__ import annotations

import torch

from inferd.kernels.lazy_zeros import lazy_zeros

KV_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
_QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}


class QuantizedKV:
    def __init__(self, num_blocks: int, block_size: int, kv_heads: int, head_dim: int, kind: str,
                 device: torch.device, out_dtype: torch.dtype):
        if kind not in KV_DTYPES:
            raise ValueError(f"unsupported kv-cache dtype {kind!r}; choose auto, int8 or fp8")
        self.kind = kind
        self.qdtype = KV_DTYPES[kind]
        self.out_dtype = out_dtype
        # Stored as raw bytes: CPU index_copy/index_select do not support float8 directly.
        self.store_dtype = torch.int8 if self.qdtype == torch.int8 else torch.uint8
        self.data = lazy_zeros((num_blocks, block_size, kv_heads, head_dim), self.store_dtype, device)
        self.scale = lazy_zeros((num_blocks, block_size, kv_heads), torch.float32, device)

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @staticmethod
    def bytes_per_token_head(head_dim: int) -> int:
        return head_dim + 4

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [T, Hk, D] -> (codes, scales [T, Hk])."""
        xf = x.float()
        scale = xf.abs().amax(dim=-1).clamp(min=1e-8) / _QMAX[self.qdtype]
        y = xf / scale[..., None]
        codes = y.round().clamp(-127, 127).to(torch.int8) if self.qdtype == torch.int8 else y.to(self.qdtype)
        return codes, scale

    def write(self, x: torch.Tensor, slots: torch.Tensor) -> None:
        codes, scale = self.quantize(x)
        kv_heads, head_dim = self.data.shape[-2:]
        self.data.view(-1, kv_heads, head_dim).index_copy_(0, slots, codes.view(self.store_dtype))
        self.scale.view(-1, kv_heads).index_copy_(0, slots, scale)

    def gather(self, slots: torch.Tensor) -> torch.Tensor:
        """Dequantized [len(slots), Hk, D] in the activation dtype."""
        kv_heads, head_dim = self.data.shape[-2:]
        codes = torch.index_select(self.data.view(-1, kv_heads, head_dim), 0, slots).view(self.qdtype)
        scale = torch.index_select(self.scale.view(-1, kv_heads), 0, slots)
        return (codes.float() * scale[..., None]).to(self.out_dtype)

    def gather_blocks(self, block_ids: torch.Tensor) -> torch.Tensor:
        """Whole blocks, dequantized: [len(block_ids) * block_size, Hk, D] in the activation dtype."""
        kv_heads, head_dim = self.data.shape[-2:]
        codes = torch.index_select(self.data, 0, block_ids).view(self.qdtype).view(-1, kv_heads, head_dim)
        scale = torch.index_select(self.scale, 0, block_ids).view(-1, kv_heads)
        return (codes.float() * scale[..., None]).to(self.out_dtype)
