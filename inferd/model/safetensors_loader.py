"""HF directory loader: config.json, *.safetensors shards and tokenizer files, all local."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from inferd.model.arch import ArchConfig
from inferd.model.architectures import lookup, supported_names
from inferd.model.errors import ModelLoadError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def read_hf_config(directory: Path) -> ArchConfig:
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(str(directory), "config.json missing (expected a .gguf file or a HF model directory)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(str(cfg_path), f"unreadable config.json ({exc})") from None
    names = cfg.get("architectures") or [cfg.get("model_type", "?")]
    entry = lookup(names)
    if entry is None:
        raise ModelLoadError(str(cfg_path), f"unsupported architecture {names}; inferd implements "
                                            f"{supported_names()}")
    try:
        return ArchConfig.from_hf_config(cfg, entry.name)
    except ValueError as exc:
        raise ModelLoadError(str(cfg_path), str(exc)) from None
    except KeyError as exc:
        raise ModelLoadError(str(cfg_path), f"config.json lacks required key {exc}") from None


def read_safetensors_shards(directory: Path) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """Each *.safetensors file of `directory` with its tensors; a missing, truncated or foreign
    file is a ModelLoadError naming it. Callers decide which tensors they take."""
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(str(directory), "no *.safetensors weight files")
    for f in files:
        try:
            shard = load_file(str(f))
        except Exception as exc:  # SafetensorError, OSError: truncated or not safetensors
            raise ModelLoadError(str(f), f"corrupt or truncated safetensors file ({exc})") from None
        yield f, shard


def load_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f, shard in read_safetensors_shards(directory):
        for name, t in shard.items():
            if t.dtype not in FLOAT_DTYPES:
                raise ModelLoadError(str(f), f"tensor {name} has unsupported dtype {t.dtype}; "
                                             "inferd loads float32/float16/bfloat16 checkpoints")
            tensors[name] = t
    return tensors


def load_hf_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(str(directory), f"cannot load tokenizer files ({exc})") from None
