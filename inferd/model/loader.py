"""load_model: one entry point from a model name or path to a ready model (its architecture's class,
from architectures.py) and tokenizer."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from inferd.config import ModelConfig, resolve_device, resolve_dtype
from inferd.model.arch import ArchConfig
from inferd.model.architectures import ARCHITECTURES
from inferd.model.decoder import DecoderForCausalLM
from inferd.model.defaults import Choice, describe_gguf, describe_safetensors, machine_defaults
from inferd.model.errors import ModelLoadError
from inferd.model.gguf_loader import (
    arch_from_gguf,
    load_gguf_tensors,
    load_gguf_tokenizer,
    open_gguf,
)
from inferd.model.registry import resolve_model_path
from inferd.model.safetensors_loader import load_hf_tokenizer, load_safetensors, read_hf_config
from inferd.tokenizer import Tokenizer

# Hub access is never wanted: every model is a local file or a bundled package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: DecoderForCausalLM
    arch: ArchConfig
    tokenizer: Tokenizer
    path: Path
    dtype: torch.dtype
    device: torch.device
    max_model_len: int
    load_seconds: float
    quant_report: object | None = None  # inferd.quant.QuantReport when weights were quantized
    config: ModelConfig | None = None  # the settings it was loaded with, `auto` resolved
    choice: Choice | None = None  # what the machine chose for `auto`, and why


def load_model(cfg: ModelConfig) -> LoadedModel:
    start = time.perf_counter()
    path = resolve_model_path(cfg.model)
    device = resolve_device(cfg.device)
    if cfg.dtype not in (None, "auto"):  # a bad explicit dtype fails before any file is read
        _check_dtype(resolve_dtype(cfg.dtype), device)
    reader = None
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(str(path), "unsupported file type; expected a .gguf file or a HF model directory")
        reader = open_gguf(path)
        arch = arch_from_gguf(reader, path)
        tensors = load_gguf_tensors(reader, arch, path)
        hf_tok = load_gguf_tokenizer(reader, path, ARCHITECTURES[arch.architecture].model_class.default_chat_template)
        checkpoint = describe_gguf(reader, arch.tie_word_embeddings, Path(cfg.model).name)
    else:
        arch = read_hf_config(path)
        tensors = load_safetensors(path)
        hf_tok = load_hf_tokenizer(path)
        checkpoint = describe_safetensors(tensors, Path(cfg.model).name)
    choice = machine_defaults(cfg, checkpoint, device)
    log.info("%s", choice.reason)
    auto_blocks = cfg.quantization == "auto" and choice.quantization == "gguf"
    cfg = replace(cfg, dtype=choice.dtype, quantization=choice.quantization, quant_lm_head=choice.quant_lm_head)
    dtype = resolve_dtype(cfg.dtype)
    _check_dtype(dtype, device)
    max_len = min(cfg.max_model_len or arch.max_position_embeddings, arch.max_position_embeddings) \
        if arch.rope_scaling is None else (cfg.max_model_len or arch.max_position_embeddings)
    torch.manual_seed(cfg.seed)
    model_class = ARCHITECTURES[arch.architecture].model_class
    with torch.device("meta"):
        model = model_class(arch, max_positions=max_len)
    model = model.to_empty(device="cpu")
    if arch.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    try:
        model.load_hf_state_dict(tensors)
    except ValueError as exc:
        raise ModelLoadError(str(path), str(exc)) from None
    del tensors
    model = model.to(device=device, dtype=dtype).eval()
    # One table shared by every layer; built last, in fp32, on the model's device.
    model.build_tables(device)
    try:
        report = _quantize(model, cfg, arch, reader if path.is_file() else None, path)
    except ValueError as exc:
        if not auto_blocks:
            raise
        raise ValueError(f"{exc} (inferd chose --quantization gguf for this file; "
                         "--quantization none loads its dequantized weights)") from None
    arch = _with_stop_tokens(arch, hf_tok, model_class.stop_tokens)
    model.config = arch
    tokenizer = Tokenizer(hf_tok, arch)
    return LoadedModel(model, arch, tokenizer, path, dtype, device, max_len, time.perf_counter() - start,
                       report, cfg, choice)


def _with_stop_tokens(arch: ArchConfig, hf_tok, names: tuple[str, ...]) -> ArchConfig:
    """Add the architecture's end-of-turn tokens (Gemma's <end_of_turn>) to the stop ids, where
    the vocabulary has them: a chat reply ends there, not at <eos>."""
    vocab = hf_tok.get_vocab()
    extra = tuple(vocab[n] for n in names if n in vocab and vocab[n] not in arch.eos_token_ids)
    return replace(arch, eos_token_ids=arch.eos_token_ids + extra) if extra else arch


def _check_dtype(dtype: torch.dtype, device: torch.device) -> None:
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("dtype float16 is not supported on CPU; use float32 or bfloat16")


def _quantize(model: DecoderForCausalLM, cfg: ModelConfig, arch: ArchConfig, reader, path: Path):
    """Apply --quantization at load time (after the float weights are in place)."""
    if cfg.quantization == "none":
        return None
    if cfg.quantization == "gguf":
        if reader is None:
            raise ValueError("--quantization gguf keeps a GGUF file's blocks; this model is not a .gguf file")
        from inferd.quant.gguf_model import keep_gguf_blocks

        if isinstance(cfg.quant_lm_head, str):
            raise ValueError("--quantization gguf keeps the file's own blocks; --quant-lm-head takes no "
                             "method there (give it alone to keep the head's blocks too)")
        return keep_gguf_blocks(model, reader, arch, head=bool(cfg.quant_lm_head))
    from inferd.quant.apply import quantize_model_and_head

    return quantize_model_and_head(model, cfg.quantization, cfg.quant_lm_head,
                                   group_size=cfg.quant_group_size, symmetric=cfg.quant_symmetric,
                                   skip=cfg.quant_skip)
