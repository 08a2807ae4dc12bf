"""Every third-party module inferd imports is a declared runtime dependency.

The test set-up installs extras (accelerate, openai, ...) whose own dependencies can hide a
missing runtime pin: psutil was imported from the first session on and came only through
accelerate, so `bash scripts/serve.sh` failed on a fresh machine while the suite passed.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = {"triton"}  # CUDA-only, imported lazily where a GPU build of torch brings it


def _imported_top_level_modules() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "inferd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"inferd", "__future__"} - OPTIONAL


def _declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[=<>!~\[ ]", dep, maxsplit=1)[0].lower().replace("_", "-")
            for dep in project["dependencies"]}


def test_every_imported_package_is_a_runtime_dependency():
    providers = importlib.metadata.packages_distributions()
    declared = _declared_distributions()
    requirements = {d: {re.split(r"[=<>!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-")
                        for r in (importlib.metadata.requires(d) or []) if "extra ==" not in r}
                    for d in declared}
    reachable = declared | set().union(*requirements.values())  # a declared package's own deps
    missing = {}
    for module in sorted(_imported_top_level_modules()):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & reachable:
            missing[module] = sorted(dists)
    assert not missing, f"imported but not declared in pyproject.toml dependencies: {missing}"
