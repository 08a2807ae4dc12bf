"""Keep a GGUF file's quantized blocks: swap the model's fused linears for inferd's INT4/INT8
modules built losslessly from the file's blocks (the types in `registry.GGUF_BLOCK_FORMATS`),
instead of serving the dequantized float copy. Parts of one fused module in different formats
are widened to one they all fit exactly (`fused_format.py`); a module whose type has no exact
format, or whose kernel cannot take it here, keeps the loader's dequantized (bit-exact) float
weight, said in one log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import torch
from gguf import GGMLQuantizationType

from inferd.model.arch import ArchConfig
from inferd.model.gguf_reader import GGUFFile, GGUFTensor
from inferd.quant.apply import QuantReport, _set_module, _tied_table
from inferd.quant.formats import Int4Weight, Int8Weight
from inferd.quant.fused_format import concat_exact
from inferd.quant.gguf_blocks import from_gguf_blocks, from_gguf_expert_blocks
from inferd.quant.linear import Int8Linear, QuantLinear, linear_from_quantized
from inferd.quant.registry import SUPPORTED_GGUF_TYPES, gguf_block_format

log = logging.getLogger(__name__)

# Our fused module -> the GGUF tensors it concatenates (row-wise, in this order).
_FUSED = {
    "self_attn.qkv_proj": ("attn_q", "attn_k", "attn_v"),
    "self_attn.o_proj": ("attn_output",),
    "mlp.gate_up_proj": ("ffn_gate", "ffn_up"),
    "mlp.down_proj": ("ffn_down",),
}
# An MoE expert's modules -> its rows of the 3-D stacks; the shared expert's -> its 2-D tensors.
_EXPERT_FUSED = {"gate_up_proj": ("ffn_gate_exps", "ffn_up_exps"), "down_proj": ("ffn_down_exps",)}
_SHARED_FUSED = {"gate_up_proj": ("ffn_gate_shexp", "ffn_up_shexp"), "down_proj": ("ffn_down_shexp",)}


def _unpermute_rows(t: torch.Tensor, n_head: int) -> torch.Tensor:
    dim = t.shape[0] // n_head // 2
    return t.reshape(n_head, dim, 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def _row_permuted(w: Int8Weight | Int4Weight, n_head: int) -> Int8Weight | Int4Weight:
    """Apply llama.cpp's q/k row un-permutation to every per-row tensor of a quantized weight."""
    low = None if w.min is None else _unpermute_rows(w.min, n_head)
    if isinstance(w, Int8Weight):
        return replace(w, qweight=_unpermute_rows(w.qweight, n_head), scale=_unpermute_rows(w.scale, n_head),
                       min=low)
    return replace(w, packed=_unpermute_rows(w.packed, n_head), scale=_unpermute_rows(w.scale, n_head), min=low)


def _module(weight: Int8Weight | Int4Weight, bias: torch.Tensor | None, device: torch.device,
            name: str, report: QuantReport) -> QuantLinear | None:
    """The quantized module, or None (recorded in the report) where no kernel here takes it."""
    try:
        return linear_from_quantized(weight, bias, device=device)
    except ValueError as exc:
        report.skipped[name] = f"no kernel here for its exact format ({exc})"
        return None


def _log_kept(report: QuantReport) -> None:
    for name, why in report.skipped.items():
        log.info("inferd: %s keeps its dequantized float weight (bit-exact to the file): %s", name, why)


def keep_gguf_blocks(model: torch.nn.Module, reader: GGUFFile, arch: ArchConfig,
                     head: bool = False) -> QuantReport:
    """Replace fused linears by block-exact quantized modules where the file allows it (an MoE
    layer's experts too, one module per expert sliced from the 3-D stacks); with `head`, the
    output head too, from the file's own `output` tensor (or, tied, `token_embd`): the
    configuration llama.cpp runs the file in."""
    tensors = {t.name: t for t in reader.tensors}
    report = QuantReport("gguf")
    layouts: dict[str, set[str]] = {}  # GGUF type -> how it is held, for the log
    device = next(model.parameters()).device
    permuted = arch.architecture in ("llama", "mistral", "mixtral")
    moe_layers = set(getattr(arch, "moe_layers", ()))
    for i in range(arch.num_layers):
        for module_name, parts in _FUSED.items():
            if i in moe_layers and module_name.startswith("mlp."):
                continue

            def decode(part: str, t: GGUFTensor) -> Int8Weight | Int4Weight:
                w = from_gguf_blocks(t.data, t.ggml_type, t.shape)
                if permuted and part in ("attn_q", "attn_k"):
                    w = _row_permuted(w, arch.num_heads if part == "attn_q" else arch.num_kv_heads)
                return w

            raw = {p: tensors.get(f"blk.{i}.{p}.weight") for p in parts}
            _keep_fused(model, f"model.layers.{i}.{module_name}", raw, decode, report, layouts, device)
        if i in moe_layers:
            _keep_expert_blocks(model, tensors, i, arch, report, layouts, device)
    if head:
        _keep_head_blocks(model, tensors, arch, report, device)
    if layouts:
        log.info("inferd: GGUF blocks kept as %s",
                 ", ".join(f"{k} -> {'/'.join(sorted(v))}" for k, v in sorted(layouts.items())))
    _log_kept(report)
    return report


def _keep_expert_blocks(model: torch.nn.Module, tensors: dict[str, GGUFTensor], i: int, arch: ArchConfig,
                        report: QuantReport, layouts: dict[str, set[str]], device: torch.device) -> None:
    """Layer i's MoE block: each expert's gate_up / down from its rows of the 3-D stacks, and the
    shared expert (Qwen2-MoE) from its 2-D tensors. The router stays float (see moe.RouterLinear)."""
    prefix = f"model.layers.{i}.mlp"
    for e in range(arch.moe.num_experts):
        def expert(part: str, t: GGUFTensor, e: int = e) -> Int8Weight | Int4Weight:
            return from_gguf_expert_blocks(t.data, t.ggml_type, t.shape, e)

        for module_name, parts in _EXPERT_FUSED.items():
            raw = {p: tensors.get(f"blk.{i}.{p}.weight") for p in parts}
            _keep_fused(model, f"{prefix}.experts.{e}.{module_name}", raw, expert, report, layouts, device)
    if arch.moe.shared_expert_intermediate_size:
        for module_name, parts in _SHARED_FUSED.items():
            raw = {p: tensors.get(f"blk.{i}.{p}.weight") for p in parts}
            _keep_fused(model, f"{prefix}.shared_expert.{module_name}", raw,
                        lambda _, t: from_gguf_blocks(t.data, t.ggml_type, t.shape), report, layouts, device)


def _keep_fused(model: torch.nn.Module, name: str, raw: dict[str, GGUFTensor | None],
                decode: Callable[[str, GGUFTensor], Int8Weight | Int4Weight], report: QuantReport,
                layouts: dict[str, set[str]], device: torch.device) -> None:
    """Swap module `name` for the row-wise concatenation of `decode(part, tensor)` over `raw`'s
    parts, or record in `report` why it keeps its (bit-exact) dequantized float weight."""
    supported = {int(t) for t in SUPPORTED_GGUF_TYPES}
    if any(t is None or t.ggml_type not in supported for t in raw.values()):
        kinds = {GGMLQuantizationType(t.ggml_type).name for t in raw.values() if t is not None}
        report.skipped[name] = f"GGUF type {'/'.join(sorted(kinds))} has no block-exact format"
        return
    fused = concat_exact([decode(part, t) for part, t in raw.items()])
    if fused is None:
        report.skipped[name] = "parts use block formats no one exact format holds together"
        return
    old = model.get_submodule(name)
    new = _module(fused, old.bias, device, name, report)
    if new is None:
        return
    for t in raw.values():
        layouts.setdefault(GGMLQuantizationType(t.ggml_type).name, set()).add(gguf_block_format(t.ggml_type).layout)
    report.bytes_before += old.weight.numel() * old.weight.element_size()
    report.bytes_after += fused.nbytes
    _set_module(model, name, new)
    report.quantized.append(name)


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
    new = _module(weight, None, device, "lm_head", report)
    if new is None:
        return
    report.bytes_before += old.weight.numel() * old.weight.element_size()
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
