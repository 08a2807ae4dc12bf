"""GGUF loader: architecture, weights (dequantized, or kept in blocks) and tokenizer from one file.

llama.cpp stores Llama/Mistral q and k projections with rows permuted for its interleaved RoPE;
we undo that so one model implementation (HF's rotate-half layout) serves every file format.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inferd.model.arch import ArchConfig
from inferd.model.architectures import ARCHITECTURES, Architecture, lookup_gguf
from inferd.model.decoder import GGUF_GLOBAL_NAMES
from inferd.model.errors import ModelLoadError
from inferd.model.gguf_reader import GGUFFile
from inferd.model.moe import MoeConfig

log = logging.getLogger(__name__)

def hf_name(gguf_name: str, layer_names: dict[str, str]) -> str | None:
    """The HF name of a GGUF tensor, given its architecture's per-layer name map."""
    if gguf_name in GGUF_GLOBAL_NAMES:
        return GGUF_GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in layer_names:
        return f"model.layers.{parts[1]}.{layer_names[parts[2]]}"
    return None


def architecture_of(reader: GGUFFile, path: Path) -> Architecture:
    name = field_value(reader, "general.architecture")
    entry = lookup_gguf(name, int(field_value(reader, f"{name}.expert_count", 0) or 0))
    if entry is None:
        known = sorted(k for k in ARCHITECTURES if not k[0].isupper())
        raise ModelLoadError(str(path), f"unsupported architecture {name!r}; inferd implements {', '.join(known)}")
    return entry


def open_gguf(path: Path) -> GGUFFile:
    """Parse the header; any damage (truncated, not GGUF, corrupt) becomes a ModelLoadError."""
    try:
        return GGUFFile(path)
    except ValueError as exc:
        raise ModelLoadError(str(path), f"not a valid GGUF file: {exc}") from None


def field_value(reader: GGUFFile, key: str, default: Any = None) -> Any:
    return reader.get(key, default)


def arch_from_gguf(reader, path: Path) -> ArchConfig:
    """The file's shape from its metadata; what llama.cpp hard-codes per architecture instead of
    storing (Gemma 3's layer pattern, say) comes from the model class's `adapt_gguf_config`."""
    entry = architecture_of(reader, path)
    arch = field_value(reader, "general.architecture")  # the metadata keys' prefix

    def need(key: str) -> Any:
        value = field_value(reader, f"{arch}.{key}")
        if value is None:
            raise ModelLoadError(str(path), f"metadata key {arch}.{key} missing")
        return value

    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    tokens = reader.get("tokenizer.ggml.tokens")
    vocab = field_value(reader, f"{arch}.vocab_size") or (len(tokens) if tokens is not None else None)
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    rope_scaling = None
    scaling_type = field_value(reader, f"{arch}.rope.scaling.type")
    if scaling_type and scaling_type != "none":
        rope_scaling = {
            "rope_type": scaling_type,
            "factor": float(field_value(reader, f"{arch}.rope.scaling.factor", 1.0)),
            "original_max_position_embeddings": int(
                field_value(reader, f"{arch}.rope.scaling.original_context_length", 0) or 0
            ) or None,
        }
    eos = field_value(reader, "tokenizer.ggml.eos_token_id")

    def optional_float(key: str) -> float | None:
        value = field_value(reader, f"{arch}.{key}")
        return float(value) if value is not None else None

    window = field_value(reader, f"{arch}.attention.sliding_window")
    cfg = ArchConfig(
        architecture=arch,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_layers=int(need("block_count")),
        num_heads=heads,
        num_kv_heads=int(field_value(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(field_value(reader, f"{arch}.attention.key_length", 0) or hidden // heads),
        rms_norm_eps=float(field_value(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(field_value(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        max_position_embeddings=int(field_value(reader, f"{arch}.context_length", 2048)),
        tie_word_embeddings=not has_output,
        attention_bias=any(t.name.endswith("attn_q.bias") for t in reader.tensors),
        sliding_window=int(window) if window else None,
        attn_logit_softcap=optional_float("attn_logit_softcapping"),
        final_logit_softcap=optional_float("final_logit_softcapping"),
        bos_token_id=field_value(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=(int(eos),) if eos is not None else (),
    )
    if field_value(reader, f"{arch}.expert_count"):
        cfg = _with_experts(cfg, reader, arch, path)
    cfg = replace(cfg, architecture=entry.name)
    return entry.model_class.adapt_gguf_config(cfg, lambda key, default=None: field_value(reader, key, default))


def _with_experts(cfg: ArchConfig, reader: GGUFFile, arch: str, path: Path) -> ArchConfig:
    """Add the MoE block's shape; the sparse layers are those with a router tensor (llama.cpp
    writes no `mlp_only_layers`: a dense layer simply has ffn_gate/ffn_up/ffn_down instead)."""
    try:
        moe = MoeConfig.from_gguf_metadata(reader.fields, arch)
    except ValueError as exc:
        raise ModelLoadError(str(path), str(exc)) from None
    layers = sorted(int(t.name.split(".")[1]) for t in reader.tensors
                    if t.name.startswith("blk.") and t.name.endswith(".ffn_gate_inp.weight"))
    return replace(cfg, moe=moe, moe_layers=tuple(layers))


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (interleaved pairs -> rotate-half halves)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).transpose(2, 1).reshape(w.shape)


_CHUNK_ROWS = 8192  # rows dequantized at a time: bounds the float32 scratch of a large tensor


def _dequantize_q8_0(raw: np.ndarray) -> torch.Tensor:
    """Q8_0 rows [R, row_bytes] -> float32 [R * blocks, 32]: gguf's `d * q` in float32 (an fp16
    scale times an int8: exact), in torch, which is ~20x faster than gguf's numpy on the 262144-row
    tied embedding of Gemma 3."""
    with warnings.catch_warnings():  # the file's read-only map: only read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        blocks = torch.from_numpy(np.ascontiguousarray(raw)).view(-1, 34)
    d = blocks[:, :2].contiguous().view(torch.float16).float()
    return blocks[:, 2:].view(torch.int8) * d


def _dequantize(t, qtype, dtype: torch.dtype, norm_shift: float) -> torch.Tensor:
    """A quantized tensor dequantized as gguf does (float32), `norm_shift` added in float32,
    rounded to `dtype`: rows at a time, so no float32 copy of a large tensor is ever whole."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    rows = t.data.shape[0]
    out = torch.empty(rows, int(np.prod(t.shape)) // rows, dtype=dtype)
    for r0 in range(0, rows, _CHUNK_ROWS):
        raw = t.data[r0:r0 + _CHUNK_ROWS]
        if qtype == GGMLQuantizationType.Q8_0:
            chunk = _dequantize_q8_0(raw).view(raw.shape[0], -1)
        else:
            chunk = torch.from_numpy(np.ascontiguousarray(dequantize(raw, qtype))).view(raw.shape[0], -1)
        if norm_shift:
            chunk = chunk + np.float32(norm_shift)
        out[r0:r0 + raw.shape[0]] = chunk
    return out.view(t.shape)


def load_gguf_tensors(reader: GGUFFile, cfg: ArchConfig, path: Path,
                      dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Every tensor dequantized, HF-named and in HF layout: float tensors as float32, quantized
    ones rounded to `dtype` (the model's: what loading would round them to anyway)."""
    from gguf import GGMLQuantizationType

    model_class = ARCHITECTURES[cfg.architecture].model_class
    out: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = hf_name(t.name, model_class.gguf_layer_names)
        if name is None:
            continue
        qtype = GGMLQuantizationType(t.ggml_type)
        shift = model_class.gguf_norm_shift if t.name.endswith("norm.weight") else 0.0
        try:
            if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                w = torch.from_numpy(np.ascontiguousarray(t.data.astype(np.float32).reshape(t.shape)))
                if shift:
                    w = w + np.float32(shift)
            else:
                w = _dequantize(t, qtype, dtype, shift)
        except NotImplementedError:
            raise ModelLoadError(str(path), f"tensor {t.name}: unsupported GGUF type {qtype.name}") from None
        except Exception as exc:
            raise ModelLoadError(str(path), f"tensor {t.name} is corrupt ({exc})") from None
        if model_class.gguf_permuted_qk:  # a permutation of rows: the same before or after rounding
            if t.name.endswith("attn_q.weight"):
                w = _unpermute(w, cfg.num_heads)
            elif t.name.endswith("attn_k.weight"):
                w = _unpermute(w, cfg.num_kv_heads)
        out[name] = w.contiguous()
    return out


def load_gguf_tokenizer(reader: GGUFFile, path: Path, default_chat_template: str | None = None):
    """A HF fast tokenizer rebuilt from the file's vocabulary, merges and chat template; where the
    file has no template, `default_chat_template` (its architecture's, as llama.cpp does).

    Uses transformers' GGUF tokenizer builders directly on the metadata we already parsed
    (AutoTokenizer would re-read the whole file twice, which takes seconds).
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    def section(group: str) -> dict[str, Any]:
        out = {}
        for key, name in GGUF_TOKENIZER_MAPPING[group].items():
            value = reader.get(f"tokenizer.{key}")
            if value is not None:
                out[name] = value.tolist() if isinstance(value, np.ndarray) else value
        return out

    try:
        tokenizer_dict, config = section("tokenizer"), section("tokenizer_config")
        if "tokens" not in tokenizer_dict:
            raise ValueError("no tokenizer.ggml.tokens in metadata")
        tokens = tokenizer_dict["tokens"]
        for special, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                             ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
            token_id = reader.get(f"tokenizer.ggml.{key}")
            if token_id is not None and 0 <= int(token_id) < len(tokens):
                config[special] = tokens[int(token_id)]
        if tokenizer_dict.get("tokenizer_type") == "llama":
            config.setdefault("add_bos_token", True)
        backend, extra = convert_gguf_tokenizer(reader.get("general.architecture"), tokenizer_dict)
        config.update(extra)
        if not config.get("chat_template") and default_chat_template:
            log.info("inferd: %s carries no chat template; using %s's known template",
                     path.name, reader.get("general.architecture"))
            config["chat_template"] = default_chat_template
        return PreTrainedTokenizerFast(tokenizer_object=backend, **config)
    except Exception as exc:
        raise ModelLoadError(str(path), f"cannot build tokenizer from GGUF metadata ({exc})") from None
