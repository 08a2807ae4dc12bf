"""Keep a GGUF file's quantized blocks: swap the model's fused linears for inferd's INT4/INT8
modules built losslessly from the file's Q4_0/Q4_1/Q4_K/Q8_0 blocks, instead of serving the
dequantized float copy. Modules whose parts use another type (or differ) stay in float.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from gguf import GGMLQuantizationType

from inferd.model.arch import ArchConfig
from inferd.model.gguf_reader import GGUFFile
from inferd.quant.apply import QuantReport, _set_module, _tied_table
from inferd.quant.formats import Int4Weight, Int8Weight
from inferd.quant.gguf_blocks import SUPPORTED_GGUF_TYPES, from_gguf_blocks
from inferd.quant.linear import Int8Linear, linear_from_quantized

# Our fused module -> the GGUF tensors it concatenates (row-wise, in this order).
_FUSED = {
    "self_attn.qkv_proj": ("attn_q", "attn_k", "attn_v"),
    "self_attn.o_proj": ("attn_output",),
    "mlp.gate_up_proj": ("ffn_gate", "ffn_up"),
    "mlp.down_proj": ("ffn_down",),
}


def _unpermute_rows(t: torch.Tensor, n_head: int) -> torch.Tensor:
    dim = t.shape[0] // n_head // 2
    return t.reshape(n_head, dim, 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def _row_permuted(w: Int8Weight | Int4Weight, n_head: int) -> Int8Weight | Int4Weight:
    """Apply llama.cpp's q/k row un-permutation to every per-row tensor of a quantized weight."""
    if isinstance(w, Int8Weight):
        return replace(w, qweight=_unpermute_rows(w.qweight, n_head), scale=_unpermute_rows(w.scale, n_head))
    return replace(w, packed=_unpermute_rows(w.packed, n_head), scale=_unpermute_rows(w.scale, n_head),
                   min=None if w.min is None else _unpermute_rows(w.min, n_head))


def _concat(parts: list[Int8Weight | Int4Weight]) -> Int8Weight | Int4Weight | None:
    first = parts[0]
    if any(type(p) is not type(first) or p.group_size != first.group_size for p in parts):
        return None
    if isinstance(first, Int8Weight):
        return Int8Weight(torch.cat([p.qweight for p in parts]), torch.cat([p.scale for p in parts]),
                          first.group_size)
    if any((p.min is None) != (first.min is None) for p in parts):
        return None
    return Int4Weight(torch.cat([p.packed for p in parts]), torch.cat([p.scale for p in parts]),
                      None if first.min is None else torch.cat([p.min for p in parts]), first.group_size)


def keep_gguf_blocks(model: torch.nn.Module, reader: GGUFFile, arch: ArchConfig,
                     head: bool = False) -> QuantReport:
    """Replace fused linears by block-exact quantized modules where the file allows it; with
    `head`, the output head too, from the file's own `output` tensor (or, tied, `token_embd`):
    the configuration llama.cpp runs the file in."""
    tensors = {t.name: t for t in reader.tensors}
    report = QuantReport("gguf")
    supported = {int(t) for t in SUPPORTED_GGUF_TYPES}
    device = next(model.parameters()).device
    for i in range(arch.num_layers):
        for module_name, parts in _FUSED.items():
            name = f"model.layers.{i}.{module_name}"
            raw = [tensors.get(f"blk.{i}.{p}.weight") for p in parts]
            if any(t is None or t.ggml_type not in supported for t in raw):
                kinds = {GGMLQuantizationType(t.ggml_type).name for t in raw if t is not None}
                report.skipped[name] = f"GGUF type {'/'.join(sorted(kinds))} has no block-exact format"
                continue
            weights = []
            for part, t in zip(parts, raw, strict=True):
                w = from_gguf_blocks(t.data, t.ggml_type, t.shape)
                if arch.architecture in ("llama", "mistral") and part in ("attn_q", "attn_k"):
                    w = _row_permuted(w, arch.num_heads if part == "attn_q" else arch.num_kv_heads)
                weights.append(w)
            fused = _concat(weights)
            if fused is None:
                report.skipped[name] = "parts use different block formats"
                continue
            old = model.get_submodule(name)
            report.bytes_before += old.weight.numel() * old.weight.element_size()
            new = linear_from_quantized(fused, old.bias, device=device)
            report.bytes_after += fused.nbytes
            _set_module(model, name, new)
            report.quantized.append(name)
    if head:
        _keep_head_blocks(model, tensors, arch, report, device)
    return report


def _keep_head_blocks(model: torch.nn.Module, tensors: dict, arch: ArchConfig, report: QuantReport,
                      device: torch.device) -> None:
    raw = tensors.get("output.weight")
    if raw is None and arch.tie_word_embeddings:
        raw = tensors.get("token_embd.weight")
    if raw is None or raw.ggml_type not in {int(t) for t in SUPPORTED_GGUF_TYPES}:
        kind = "missing" if raw is None else GGMLQuantizationType(raw.ggml_type).name
        report.skipped["lm_head"] = f"GGUF head tensor is {kind}: no block-exact format"
        return
    weight = from_gguf_blocks(raw.data, raw.ggml_type, raw.shape)
    old = model.lm_head
    report.bytes_before += old.weight.numel() * old.weight.element_size()
    new = linear_from_quantized(weight, None, device=device)
    _set_module(model, "lm_head", new)
    report.quantized.append("lm_head")
    report.bytes_after += weight.nbytes
    if not arch.tie_word_embeddings:
        return
    if isinstance(new, Int8Linear) and new.tiles is not None:  # Q8_0 in int8 tiles: one copy
        _set_module(model, "model.embed_tokens", _tied_table(new, weight, model.model.embed_tokens))
        report.tied["lm_head"] = "model.embed_tokens shares its quantized storage"
    else:  # the embedding keeps its float table: the same values, dequantized
        report.tied["lm_head"] = "model.embed_tokens keeps the float copy of the same blocks"
