"""GGUF loader: architecture, weights (dequantized, or kept in blocks) and tokenizer from one file.

llama.cpp stores Llama/Mistral q and k projections with rows permuted for its interleaved RoPE;
we undo that so one model implementation (HF's rotate-half layout) serves every file format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from inferd.model.arch import SUPPORTED_ARCHITECTURES, ArchConfig
from inferd.model.errors import ModelLoadError

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    return None


def open_gguf(path: Path):
    """Parse the header; any failure (truncated, not GGUF, corrupt) becomes a ModelLoadError."""
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except Exception as exc:  # the gguf package raises many kinds for a damaged file
        raise ModelLoadError(str(path), f"not a valid GGUF file ({type(exc).__name__}: {exc})") from None


def field_value(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
    return value


def arch_from_gguf(reader, path: Path) -> ArchConfig:
    arch = field_value(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(str(path), f"unsupported architecture {arch!r}; inferd implements llama, mistral, qwen2")

    def need(key: str) -> Any:
        value = field_value(reader, f"{arch}.{key}")
        if value is None:
            raise ModelLoadError(str(path), f"metadata key {arch}.{key} missing")
        return value

    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = field_value(reader, f"{arch}.vocab_size") or (len(tokens.data) if tokens else None)
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
    return ArchConfig(
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
        sliding_window=field_value(reader, f"{arch}.attention.sliding_window"),
        bos_token_id=field_value(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=(int(eos),) if eos is not None else (),
    )


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved pairs -> rotate-half halves)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def load_gguf_tensors(reader, cfg: ArchConfig, path: Path) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to float32, HF-named and in HF layout."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    out: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            continue
        try:
            if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                arr = np.asarray(t.data, dtype=np.float32)
            else:
                arr = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise ModelLoadError(str(path), f"tensor {t.name}: unsupported GGUF type {t.tensor_type.name}") from None
        except Exception as exc:
            raise ModelLoadError(str(path), f"tensor {t.name} is corrupt or truncated ({exc})") from None
        expected = tuple(int(d) for d in reversed(t.shape))
        if arr.size != int(np.prod(expected)):
            raise ModelLoadError(str(path), f"tensor {t.name} has {arr.size} values, expected shape {expected}")
        arr = arr.reshape(expected)
        if cfg.architecture in ("llama", "mistral"):
            if t.name.endswith("attn_q.weight"):
                arr = _unpermute(arr, cfg.num_heads)
            elif t.name.endswith("attn_k.weight"):
                arr = _unpermute(arr, cfg.num_kv_heads)
        out[name] = torch.from_numpy(np.ascontiguousarray(arr))
    return out


def load_gguf_tokenizer(path: Path):
    """A HF fast tokenizer rebuilt from the file's vocabulary, merges and chat template."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:
        raise ModelLoadError(str(path), f"cannot build tokenizer from GGUF metadata ({exc})") from None
