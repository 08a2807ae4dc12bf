"""Turning an encoder's per-token states into one vector per text, as the model's
sentence-transformers files say: 1_Pooling/config.json (mean/cls/max/... tokens), modules.json
(Normalize), sentence_bert_config.json (max_seq_length, do_lower_case).

Works on the packed layout the encoder uses: states [T, H] with per-sequence lengths.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from inferd.model.errors import ModelLoadError

# sentence-transformers concatenates the enabled modes in this order (Pooling.forward).
POOLING_MODES = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens",
                 "weightedmean_tokens", "lasttoken")
_ST_MODULES = "sentence_transformers.models."
_SUPPORTED_MODULES = {"Transformer", "Pooling", "Normalize"}


@dataclass(frozen=True)
class PoolingConfig:
    """How vectors are made. `modes` in sentence-transformers' concatenation order.

    A directory without sentence-transformers files gets what `SentenceTransformer(dir)` builds
    for a plain HF model: mean pooling, no normalization, the tokenizer's length limit.
    """

    modes: tuple[str, ...] = ("mean_tokens",)
    normalize: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False
    # Matryoshka: output sizes the model was trained to be cut to (config.json, as vLLM reads it:
    # `is_matryoshka` allows any size, `matryoshka_dimensions` lists the allowed ones).
    matryoshka: bool = False
    matryoshka_dimensions: tuple[int, ...] | None = None

    @classmethod
    def from_dir(cls, directory: Path) -> PoolingConfig:
        modes: tuple[str, ...] = ("mean_tokens",)
        normalize = False
        modules_path = directory / "modules.json"
        if modules_path.is_file():
            modules = _read_json(modules_path)
            kinds = [str(m.get("type", "")).removeprefix(_ST_MODULES) for m in modules]
            unknown = [k for k in kinds if k not in _SUPPORTED_MODULES]
            if unknown:  # a Dense projection etc. would change the vectors: refuse, do not guess
                raise ModelLoadError(str(modules_path), f"sentence-transformers modules {unknown} "
                                     f"are not supported (only {sorted(_SUPPORTED_MODULES)})")
            normalize = "Normalize" in kinds
            for m in modules:
                if str(m.get("type", "")).endswith(".Pooling"):
                    modes = _pooling_modes(directory / m.get("path", "1_Pooling") / "config.json")
        sbert = directory / "sentence_bert_config.json"
        st = _read_json(sbert) if sbert.is_file() else {}
        hf = _read_json(directory / "config.json") if (directory / "config.json").is_file() else {}
        dims = hf.get("matryoshka_dimensions")
        return cls(modes=modes, normalize=normalize, max_seq_length=st.get("max_seq_length"),
                   do_lower_case=bool(st.get("do_lower_case", False)),
                   matryoshka=bool(hf.get("is_matryoshka", False)) or bool(dims),
                   matryoshka_dimensions=tuple(dims) if dims else None)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(str(path), f"unreadable JSON ({exc})") from None


def _pooling_modes(path: Path) -> tuple[str, ...]:
    cfg = _read_json(path)
    if cfg.get("include_prompt", True) is False:
        raise ModelLoadError(str(path), "include_prompt=false pooling is not supported")
    modes = tuple(m for m in POOLING_MODES if cfg.get(f"pooling_mode_{m}"))
    if not modes:
        raise ModelLoadError(str(path), f"no pooling mode enabled (known: {', '.join(POOLING_MODES)})")
    return modes


def pool(states: torch.Tensor, lengths: torch.Tensor, cfg: PoolingConfig) -> torch.Tensor:
    """states [T, H] (sequences end to end), lengths [B] -> float32 [B, D], normalized when the
    model says so. Sums run in float32 whatever the encoder's dtype."""
    states = states.float()
    b = lengths.shape[0]
    seg = torch.repeat_interleave(torch.arange(b, device=states.device), lengths)
    ends = torch.cumsum(lengths, 0)
    counts = lengths.to(states.dtype)[:, None]

    def segment_sum(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(b, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, seg, x)

    parts = []
    for mode in cfg.modes:
        if mode == "cls_token":
            parts.append(states[ends - lengths])
        elif mode == "lasttoken":
            parts.append(states[ends - 1])
        elif mode == "max_tokens":
            out = torch.full((b, states.shape[1]), float("-inf"), device=states.device)
            parts.append(out.scatter_reduce(0, seg[:, None].expand_as(states), states, "amax"))
        elif mode == "mean_tokens":
            parts.append(segment_sum(states) / counts)
        elif mode == "mean_sqrt_len_tokens":
            parts.append(segment_sum(states) / counts.sqrt())
        else:  # weightedmean_tokens: token i of a sequence weighs i + 1
            pos = torch.arange(states.shape[0], device=states.device) - (ends - lengths)[seg] + 1
            w = pos.to(states.dtype)[:, None]
            parts.append(segment_sum(states * w) / segment_sum(w))
    pooled = torch.cat(parts, dim=1)
    return F.normalize(pooled, p=2, dim=1) if cfg.normalize else pooled


def check_dimensions(dimensions: int | None, cfg: PoolingConfig, full: int, model: str) -> None:
    """Refuse `dimensions` the way vLLM does: only Matryoshka-trained models may be cut, to a
    listed size where the model lists them, never to more than it has or to < 1."""
    if dimensions is None:
        return
    if not cfg.matryoshka:
        raise ValueError(f"Model {model!r} does not support matryoshka representation, "
                         "changing output dimensions will lead to poor results.")
    if cfg.matryoshka_dimensions and dimensions not in cfg.matryoshka_dimensions:
        raise ValueError(f"Model {model!r} only supports {list(cfg.matryoshka_dimensions)} "
                         "matryoshka dimensions, using other output dimensions will lead to "
                         "poor results.")
    if not 1 <= dimensions <= full:
        raise ValueError(f"dimensions must be between 1 and {full}, got {dimensions}")


def truncate_dimensions(vectors: torch.Tensor, dimensions: int | None, cfg: PoolingConfig) -> torch.Tensor:
    """Keep the first `dimensions` features and renormalize when the model normalizes
    (vLLM cuts before normalizing, so a cut vector is unit length again)."""
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]
    return F.normalize(cut, p=2, dim=1) if cfg.normalize else cut
