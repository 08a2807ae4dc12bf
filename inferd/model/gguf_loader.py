"""GGUF loader: architecture, weights (dequantized, or kept in blocks) and tokenizer from one file.

llama.cpp stores Llama/Mistral q and k projections with rows permuted for its interleaved RoPE;
we undo that so one model implementation (HF's rotate-half layout) serves every file format.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inferd.model.arch import ArchConfig
from inferd.model.architectures import ARCHITECTURES, Architecture, lookup
from inferd.model.decoder import GGUF_GLOBAL_NAMES
from inferd.model.errors import ModelLoadError
from inferd.model.gguf_reader import GGUFFile

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
    entry = lookup([name])
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
    arch = entry.name

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
    return entry.model_class.adapt_gguf_config(cfg, lambda key, default=None: field_value(reader, key, default))


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved pairs -> rotate-half halves)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def load_gguf_tensors(reader: GGUFFile, cfg: ArchConfig, path: Path) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to float32, HF-named and in HF layout."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    model_class = ARCHITECTURES[cfg.architecture].model_class
    out: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = hf_name(t.name, model_class.gguf_layer_names)
        if name is None:
            continue
        qtype = GGMLQuantizationType(t.ggml_type)
        try:
            if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                arr = t.data.astype(np.float32)
            else:
                arr = dequantize(t.data, qtype)
        except NotImplementedError:
            raise ModelLoadError(str(path), f"tensor {t.name}: unsupported GGUF type {qtype.name}") from None
        except Exception as exc:
            raise ModelLoadError(str(path), f"tensor {t.name} is corrupt ({exc})") from None
        arr = arr.reshape(t.shape)
        if model_class.gguf_permuted_qk:
            if t.name.endswith("attn_q.weight"):
                arr = _unpermute(arr, cfg.num_heads)
            elif t.name.endswith("attn_k.weight"):
                arr = _unpermute(arr, cfg.num_kv_heads)
        if model_class.gguf_norm_shift and t.name.endswith("norm.weight"):
            arr = arr + np.float32(model_class.gguf_norm_shift)
        out[name] = torch.from_numpy(np.ascontiguousarray(arr))
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
