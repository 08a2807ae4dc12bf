"""Thin wrappers over torch's quantized matmul ops: weight layouts, their quirks, and dispatch.

Everything device-specific about a quantized matmul lives here so `linear.py` reads as policy.
CPU: inferd's own kernels (csrc/quant_gemv.cpp) where built, int4 in inferd's own tile layout;
torch's kernels and layouts as the fallback.
`_weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu` are only vectorised for bfloat16
activations (float32/float16 run a scalar loop 10-40x slower), and both want bf16 scales.
CUDA: `_weight_int4pack_mm` (tinygemm, bf16, sm80+) and `torch._scaled_mm` (fp8, sm89+); its
`_weight_int8pack_mm` exists but is a naive kernel, so int8 runs on tinygemm there too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from inferd.kernels import cpu_ops
from inferd.quant.formats import FP8_MAX

aten = torch.ops.aten

# ---- int4 --------------------------------------------------------------------------------------
# Three layouts: inferd's tiles for its own CPU kernel (csrc/quant_gemv.cpp, VNNI; w = q * scale
# + min, both fp16), torch's CPU layout for `_weight_int4pack_mm_for_cpu` where that kernel is not
# built, and tinygemm's on CUDA (both w = (q - 8) * scale + zero from bf16 pairs [G, N, 2]).
# The packed tensor's rank tells them apart: tiles [N/16, K/8, 64], torch's CPU [N, K/2].


@dataclass(frozen=True)
class Int4Packed:
    """An int4 weight in the layout of the kernel that will run it."""

    qweight: torch.Tensor
    scale_zeros: torch.Tensor  # tiles: fp16 [N/16, G, 2, 16] (scale, min); tinygemm: bf16 [G, N, 2]
    unpackable: bool  # `int4_dequantize_cpu` can recover the weight (for dequant + GEMM paths)


def pack_int4(codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor,
              device: torch.device) -> Int4Packed:
    """Codes uint8 [N, K] in [0, 15] with w = q * scale + minimum (scale, minimum float [N, G])
    -> the layout `int4_mm` runs fastest on `device`. Layouts depend on the machine: save the
    `Int4Weight`, never this."""
    codes, scale, minimum = codes.to(device), scale.to(device), minimum.to(device)
    n, k = codes.shape
    if device.type == "cpu" and tiles_apply(n, k) and fp16_holds(scale) and fp16_holds(minimum):
        return Int4Packed(pack_int4_tiles(codes), tile_scale_min(scale, minimum), True)
    if k // scale.shape[1] < 32:
        raise ValueError(f"int4 group {k // scale.shape[1]} runs on inferd's CPU tile kernel only, which "
                         "cannot take this weight here (not built, or scales outside fp16's range)")
    pairs = int4_scale_zeros(scale, minimum + 8 * scale)  # tinygemm: w = (q - 8) * scale + zero
    if device.type == "cuda":
        return Int4Packed(pack_int4_cuda(codes), pairs, False)
    packed, unpackable = pack_int4_cpu(codes)
    return Int4Packed(packed, pairs, unpackable)


def fp16_holds(t: torch.Tensor) -> bool:
    """Whether float16 keeps every value to its full 11 bits: nothing past its largest normal
    value, nothing non-zero below its smallest (GGUF's own fp16 scales always qualify)."""
    a = t.abs()
    return bool(((a <= 65504) & ((a == 0) | (a >= 2.0**-14))).all())


def int4_scale_zeros(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """[N, G] scale and zero -> the [G, N, 2] bf16 tensor both tinygemm kernels read."""
    return torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()


def tile_scale_min(scale: torch.Tensor, minimum: torch.Tensor) -> torch.Tensor:
    """[N, G] scale and min -> fp16 [N/16, G, 2, 16]: a tile's 16 scales, then its 16 mins, for
    each group in one 64-byte line. fp16 (11 bits) keeps GGUF Q4_0/Q4_1 scales exactly and
    rounds others 8x finer than bf16, at the same two bytes."""
    n, g = scale.shape
    pairs = torch.stack([scale, minimum], dim=-1).to(torch.float16)  # [N, G, 2]
    return pairs.view(n // 16, 16, g, 2).permute(0, 2, 3, 1).contiguous()


def _tile_pairs_as_tinygemm(scale_min: torch.Tensor) -> torch.Tensor:
    """Tiles' fp16 (scale, min) [N/16, G, 2, 16] -> tinygemm's bf16 (scale, zero) [G, N, 2]."""
    tiles, g = scale_min.shape[:2]
    sm = scale_min.float().permute(1, 0, 3, 2).reshape(g, tiles * 16, 2)
    return torch.stack([sm[..., 0], sm[..., 1] + 8 * sm[..., 0]], dim=-1).to(torch.bfloat16)


def int4_shape_problem(n: int, k: int, group_size: int, device: torch.device) -> str | None:
    """Why the int4 kernel for `device` cannot take an [n, k] weight, or None when it can."""
    if group_size not in (16, 32, 64, 128, 256):
        return f"the int4 kernels take group sizes 16, 32, 64, 128 or 256, not {group_size}"
    if k % group_size:
        return f"group_size {group_size} does not divide in_features {k}"
    if group_size == 16 and not (device.type == "cpu" and tiles_apply(n, k)):
        # GGUF Q2_K/Q3_K: torch's kernels (CPU and CUDA tinygemm) start at group 32.
        return "group size 16 runs on inferd's CPU tile kernel only, which is not in use here"
    if device.type == "cuda":
        if n % 8 or k % 32:
            return f"CUDA tinygemm needs out_features % 8 == 0 and in_features % 32 == 0, got {n}x{k}"
    elif n % 16:
        return f"the CPU int4 kernel needs out_features % 16 == 0, got {n}"
    return None


def tiles_apply(n: int, k: int) -> bool:
    """inferd's int4 kernel takes whole 16-row tiles and 8-wide k chunks, where it is built
    (it needs AVX-512 VNNI)."""
    return n % 16 == 0 and k % 8 == 0 and _native_int4_built()


def _native_int4_built() -> bool:
    """Whether the tile kernels run vectorised at the CPU kernels' level in use (the generic
    level's scalar reference is slower than torch's own int8/int4 kernels)."""
    level = cpu_ops.level()
    return level is not None and _tiles_fast(level)


@functools.cache
def _tiles_fast(level: str) -> bool:
    return bool(cpu_ops.ops_for(level).int4_mm_built())


def pack_int4_tiles(codes: torch.Tensor) -> torch.Tensor:
    """Codes uint8 [N, K] -> [N/16, K/8, 64]: per tile of 16 rows and 8-wide k chunk, byte
    4i + j holds row i's code for k0 + j (low nibble) and for k0 + 4 + j (high nibble)."""
    n, k = codes.shape
    c = codes.to(torch.uint8).reshape(n // 16, 16, k // 8, 2, 4)
    return (c[:, :, :, 0] | (c[:, :, :, 1] << 4)).permute(0, 2, 1, 3).reshape(n // 16, k // 8, 64)


def unpack_int4_tiles(packed: torch.Tensor) -> torch.Tensor:
    tiles, chunks = packed.shape[:2]
    b = packed.view(tiles, chunks, 16, 4)
    c = torch.stack([b & 0x0F, b >> 4], dim=3)  # [T, C, 16, 2, 4]
    return c.permute(0, 2, 1, 3, 4).reshape(tiles * 16, chunks * 8)


@functools.cache
def _cpu_layout() -> tuple[int, bool]:
    """(BLOCK_N, whether full blocks pair rows j and j + BLOCK_N/2 in one byte) for this build.

    Mirrors weight_to_int4pack_kernel in aten/src/ATen/native/cpu/int4mm_kernel.cpp: AVX512 packs
    blocks of 64 rows, AVX2 blocks of 32; other builds and partial blocks pair rows n, n + 1.
    """
    cap = torch.backends.cpu.get_cpu_capability()
    if cap.startswith("AVX512"):
        return 64, True
    if cap.startswith("AVX2"):
        return 32, True
    return 32, False


def unpack_int4_cpu(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Codes uint8 [n, k] back out of either CPU layout (inferd's tiles or torch's)."""
    if packed.dim() == 3:
        return unpack_int4_tiles(packed)
    block_n, halves = _cpu_layout()
    flat = packed.reshape(-1)
    out = torch.empty(n, k, dtype=torch.uint8, device=packed.device)
    full = n // block_n * block_n
    if full:  # [n / BLOCK_N, K, BLOCK_N / 2] bytes
        blocks = flat[: full * k // 2].view(full // block_n, k, block_n // 2)
        low, high = blocks & 0x0F, blocks >> 4
        rows = torch.cat([low, high], -1) if halves else torch.stack([low, high], -1).flatten(-2)
        out[:full] = rows.permute(0, 2, 1).reshape(full, k)
    if n > full:  # the partial last block pairs rows n, n + 1: [K, rest / 2] bytes
        tail = flat[full * k // 2:].view(k, (n - full) // 2)
        out[full:] = torch.stack([tail & 0x0F, tail >> 4], -1).flatten(-2).t()
    return out


def pack_int4_cpu(codes: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Codes uint8 [N, K] -> (torch's CPU kernel layout, whether `unpack_int4_cpu` inverts it).

    The layout depends on the CPU capability torch picked at run time, so it is never portable:
    keep the `Int4Weight` (or the GGUF file) as the thing you save.
    """
    packed = aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
    n, k = codes.shape
    return packed, torch.equal(unpack_int4_cpu(packed, n, k), codes.to(torch.uint8))


def _cuda_inner_k_tiles(k: int) -> int:
    return next(t for t in (8, 4, 2) if k % (16 * t) == 0)


def pack_int4_cuda(codes: torch.Tensor) -> torch.Tensor:
    """Codes uint8 [N, K] -> tinygemm's int32 layout. Its input pairs columns high-nibble first."""
    codes = codes.to(torch.uint8)
    pairs = (codes[:, 0::2] << 4) | codes[:, 1::2]
    return aten._convert_weight_to_int4pack(pairs.contiguous(), _cuda_inner_k_tiles(codes.shape[1]))


def native_int4_applies(packed: torch.Tensor) -> bool:
    """Whether this packed weight runs inferd's own CPU kernel (its rows are independent)."""
    return packed.device.type == "cpu" and packed.dim() == 3


def int4_mm(x: torch.Tensor, packed: torch.Tensor, group_size: int,
            scale_zeros: torch.Tensor) -> torch.Tensor:
    """x [M, K] bf16 @ dequant(packed).T -> [M, N] bf16, on the kernel the layout was made for."""
    if x.is_cuda:
        return aten._weight_int4pack_mm(x, packed, group_size, scale_zeros)
    if packed.dim() == 3:
        return cpu_ops.ops().int4_mm(x, packed, group_size, scale_zeros)
    return aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scale_zeros)


def int4_dequantize_cpu(packed: torch.Tensor, n: int, k: int, group_size: int,
                        scale_zeros: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The [n, k] weight the CPU kernel multiplies by: computed in float32 like the kernel, then
    rounded once to `dtype` (tiles to bf16 in one native pass, bitwise the same)."""
    if scale_zeros.dim() == 4 and dtype == torch.bfloat16:
        return cpu_ops.ops().int4_tiles_dequantize(packed, group_size, scale_zeros)
    q = unpack_int4_cpu(packed, n, k).view(n, k // group_size, group_size).float()
    if scale_zeros.dim() == 4:  # tiles: w = q * scale + min
        sm = scale_zeros.float().permute(0, 3, 1, 2).reshape(n, k // group_size, 2)
        scale, minimum = sm[..., 0:1], sm[..., 1:2]
    else:  # tinygemm: w = (q - 8) * scale + zero
        scale = scale_zeros[..., 0].t().unsqueeze(-1).float()
        minimum = scale_zeros[..., 1].t().unsqueeze(-1).float() - 8 * scale
    return torch.addcmul(minimum, q, scale).reshape(n, k).to(dtype)


# ---- int8 --------------------------------------------------------------------------------------
# CPU: inferd's tile layout where its VNNI kernel is built (int8_tiles_mm: q + 128 as bytes
# [N/16, K/4, 64], fp16 scales [N/16, K/group, 16], w = q * scale; with a min per group, as GGUF's
# Q5_1/Q5_K need, fp16 (scale, min) [N/16, K/group, 2, 16] like int4's, w = q * scale + min),
# else rows [N, K] with a per-channel scale (int8_rows_mm, or torch's `_weight_int8pack_mm`).
INT8_TILE_GROUPS = (128, 64, 32, 16)  # activation groups the tile kernel takes (int32-exact)


def int8_tile_group(n: int, k: int, group_size: int, per_channel: bool, scale: torch.Tensor,
                    minimum: torch.Tensor | None = None) -> int | None:
    """The group the int8 tile kernel runs an [n, k] weight with, or None where it cannot:
    the weight's own group, or for per-channel scales the largest group dividing k (the scale
    is then repeated per group); scales (and mins) must survive fp16 exactly enough (see
    `fp16_holds`)."""
    if n % 16 or k % 16 or not _native_int4_built() or not fp16_holds(scale):
        return None
    if minimum is not None and not fp16_holds(minimum):
        return None
    if per_channel:
        return next((g for g in INT8_TILE_GROUPS if k % g == 0), None)
    return group_size if group_size in INT8_TILE_GROUPS else None


@dataclass(frozen=True)
class Int8Tiles:
    """An int8 weight in inferd's tile layout: w = q * scale (+ min) per group of `group` inputs."""

    codes: torch.Tensor  # uint8 [N/16, K/4, 64]: byte 4i + j of a tile's k chunk is row i's q + 128 at k0 + j
    scales: torch.Tensor  # fp16 [N/16, K // group, 16], or with mins (scale, min) [N/16, K // group, 2, 16]
    group: int

    @property
    def has_min(self) -> bool:
        return self.scales.dim() == 4


def pack_int8_tiles(q: torch.Tensor, scale: torch.Tensor, group: int,
                    minimum: torch.Tensor | None = None) -> Int8Tiles:
    """int8 q [N, K], float scale (and min) [N, K // group] -> the tile layout."""
    n, k = q.shape
    codes = (q.to(torch.int16) + 128).to(torch.uint8).reshape(n // 16, 16, k // 4, 4)
    codes = codes.permute(0, 2, 1, 3).reshape(n // 16, k // 4, 64).contiguous()
    if minimum is not None:
        return Int8Tiles(codes, tile_scale_min(scale, minimum), group)
    scales = scale.to(torch.float16).reshape(n // 16, 16, k // group).transpose(1, 2)
    return Int8Tiles(codes, scales.contiguous(), group)


def unpack_int8_tiles(codes: torch.Tensor) -> torch.Tensor:
    """int8 q [N, K] back out of the tile layout."""
    tiles, chunks = codes.shape[:2]
    out = codes.view(tiles, chunks, 16, 4).permute(0, 2, 1, 3).reshape(tiles * 16, chunks * 4)
    return (out.to(torch.int16) - 128).to(torch.int8)


def int8_tile_scales(scales: torch.Tensor) -> torch.Tensor:
    """The tiles' fp16 scales as float32 [N, G] (either scale layout)."""
    if scales.dim() == 4:
        scales = scales[:, :, 0]
    return scales.transpose(1, 2).reshape(-1, scales.shape[1]).float()


def int8_tile_mins(scales: torch.Tensor) -> torch.Tensor | None:
    """The tiles' fp16 mins as float32 [N, G], or None where the layout has none."""
    return int8_tile_scales(scales[:, :, 1]) if scales.dim() == 4 else None


def int8_tiles_mm(x: torch.Tensor, tiles: Int8Tiles) -> torch.Tensor:
    """x [M, K] bf16 @ (q * scale).T -> [M, N] bf16."""
    return cpu_ops.ops().int8_tiles_mm(x, tiles.codes, tiles.group, tiles.scales)


def int8_tiles_rows(tiles: Int8Tiles, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Rows `rows` (int64 [R]; all when None) of the weight the tile kernel multiplies by, in
    float32 [R, K]: what a tied embedding looks up every decode step (one native gather)."""
    if rows is not None:
        return cpu_ops.ops().int8_tiles_rows(tiles.codes, tiles.group, tiles.scales, rows)
    q, scale = unpack_int8_tiles(tiles.codes).float(), int8_tile_scales(tiles.scales)
    n = q.shape[0]
    w = q.view(n, -1, tiles.group).mul_(scale.unsqueeze(-1))
    if (low := int8_tile_mins(tiles.scales)) is not None:
        w = w.add_(low.unsqueeze(-1))
    return w.view(n, -1)


def int8_tiles_dequantize(tiles: Int8Tiles, dtype: torch.dtype) -> torch.Tensor:
    """The [N, K] weight the tile kernel multiplies by, computed in float32, rounded once to
    `dtype` (bf16 in one native pass: prefill runs a GEMM on it every call)."""
    if dtype == torch.bfloat16:
        return cpu_ops.ops().int8_tiles_dequantize(tiles.codes, tiles.group, tiles.scales)
    return int8_tiles_rows(tiles).to(dtype)


def int8_mm_cpu(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] bf16 @ (qweight * scale[:, None]).T for per-channel int8; scale is bf16 [N].

    inferd's kernel prefetches the weight rows ahead; in a decode step, where every layer's
    weights come from DRAM, it took 42 us per GEMM on average against torch's 69 us.
    """
    if cpu_ops.usable(x):
        return cpu_ops.ops().int8_rows_mm(x, qweight, scale)
    return aten._weight_int8pack_mm(x, qweight, scale)


# ---- fp8 ---------------------------------------------------------------------------------------

_TWO_POW_120 = 2.0**120
# Up to this many rows inferd's fp8 kernel beats widening the weight to bf16 for one GEMM. The
# switch makes a row's result depend on whether its step crossed it (greedy fp8 output is not
# batch-invariant for steps of more rows); on a Zen 3 the kernel at 128-1024 rows took 1.2-2x the
# GEMM's time, so closing that gap needs a kernel that decodes each weight block once per call.
CPU_FP8_NATIVE_MAX_ROWS = 32


def fp8_mm_cpu(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
    """x [M, K] bf16 @ (qweight * scale[:, None]).T from the fp8 bytes directly, or None where
    the kernel does not apply (too many rows, no native kernels). scale: fp32 or bf16 [N]."""
    if x.shape[0] > CPU_FP8_NATIVE_MAX_ROWS or not cpu_ops.usable(x):
        return None
    return cpu_ops.ops().fp8_rows_mm(x, qweight, scale)


def fp8_to_bf16(qweight: torch.Tensor) -> torch.Tensor:
    """Exact float8_e4m3fn -> bfloat16 by moving bits (no NaN in weights by construction).

    e4m3 bits s.eeee.mmm shifted left 4 with the sign kept are a bf16 with the same exponent
    field, i.e. the value times 2**-120 (subnormals included); one exact multiply undoes that.
    """
    bits = qweight.view(torch.int8).to(torch.int16)
    bits = bits.bitwise_left_shift_(4).bitwise_and_(-30721)  # 0x87FF: sign + 11 low bits
    return bits.view(torch.bfloat16).mul_(_TWO_POW_120)


def cuda_supports_fp8_mm(device: torch.device) -> bool:
    """`torch._scaled_mm` with float8 operands needs compute capability 8.9 (Ada) or newer."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_scaled_mm(x: torch.Tensor, qweight: torch.Tensor, scale_row: torch.Tensor) -> torch.Tensor:
    """CUDA W8A8: per-token dynamic fp8 activations times fp8 weights, row-wise scales.

    scale_row is the weight scale as float32 [1, N]; the result is bf16 [M, N].
    """
    # Few launches on purpose: at decode sizes each one costs more than the math. |x / x_scale|
    # <= 448 (1 + 2**-23), which the cast rounds to 448, so no clamp is needed.
    amax = torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True, dtype=torch.float32)
    x_scale = amax.div_(FP8_MAX).clamp_(min=1e-12)
    x_fp8 = (x / x_scale).to(torch.float8_e4m3fn)
    return torch._scaled_mm(x_fp8, qweight.t(), scale_a=x_scale, scale_b=scale_row,
                            out_dtype=torch.bfloat16)
