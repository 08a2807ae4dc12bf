"""One exact format for the parts of a fused linear (q/k/v, gate/up) stored in different formats.

llama.cpp's mixes give the parts of one of our fused modules different GGUF types (Q4_K_M: Q4_K
q and k next to a Q6_K v; Gemma's Q5_0 q, k next to a Q8_0 v). Our fused module runs one kernel,
so the parts are widened to the narrowest format every one of them fits exactly: int4 codes fit
int8 codes, a scale repeats over smaller groups, and a symmetric part takes a min of -0.0, which
adds nothing to any float (x + -0.0 == x bit for bit, zeros' signs included).
"""

from __future__ import annotations

import torch

from inferd.quant.formats import Int4Weight, Int8Weight

Part = Int8Weight | Int4Weight


def _same_layout(parts: list[Part]) -> bool:
    first = parts[0]
    return all(type(p) is type(first) and p.group_size == first.group_size
               and (p.min is None) == (first.min is None) for p in parts)


def _cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if tensors[0] is None else torch.cat(tensors)  # type: ignore[arg-type]


def _regroup(t: torch.Tensor, group: int, to: int) -> torch.Tensor:
    return t.repeat_interleave(group // to, dim=1)


def as_int8(part: Part, group: int, with_min: bool) -> Int8Weight:
    """`part` as an Int8Weight with groups of `group` (which must divide the part's), with a
    min per group when `with_min`; its dequantization stays bit for bit the part's."""
    if isinstance(part, Int4Weight):
        codes = part.unpacked().to(torch.int8)
        q = codes - 8 if part.min is None else codes
    else:
        q = part.qweight
    scale = _regroup(part.scale, part.group_size, group)
    low = None
    if with_min:
        low = (_regroup(part.min, part.group_size, group) if part.min is not None
               else torch.full_like(scale, -0.0))
    return Int8Weight(q, scale, group, low)


def concat_exact(parts: list[Part]) -> Part | None:
    """The parts stacked row-wise in one format, exactly; None where no format holds them all
    (group sizes that do not divide one another)."""
    if _same_layout(parts):
        first = parts[0]
        if isinstance(first, Int8Weight):
            return Int8Weight(torch.cat([p.qweight for p in parts]), torch.cat([p.scale for p in parts]),
                              first.group_size, _cat([p.min for p in parts]))
        return Int4Weight(torch.cat([p.packed for p in parts]), torch.cat([p.scale for p in parts]),
                          _cat([p.min for p in parts]), first.group_size)
    group = min(p.group_size for p in parts)
    if any(p.group_size % group for p in parts):
        return None
    with_min = any(p.min is not None for p in parts)
    return concat_exact([as_int8(p, group, with_min) for p in parts])
