"""Which models `inferd serve` serves, under which names and engine settings: from the flags and
an optional `--config FILE` (YAML or TOML).

The file's top-level keys are any `serve` flag (dashes or underscores) and act as defaults that
flags given on the command line override; `models` lists the models, each a name/path or a
mapping with `model`, optional `served_model_name` (a name or a list of aliases) and any engine
flag overriding the top-level value for that model alone.
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inferd.model.embedding_models import embedding_aliases
from inferd.model.registry import DEFAULT_MODEL
from inferd.model.registry import bundled_aliases as _generation_aliases


def bundled_aliases(model: str) -> list[str]:
    """A bundled model's documented other names, generation or embedding model alike."""
    return _generation_aliases(model) + embedding_aliases(model)


class ConfigError(ValueError):
    """The config file or the flags do not describe a valid set of models."""


@dataclass
class ModelSpec:
    model: str
    names: list[str]
    overrides: dict[str, Any] = field(default_factory=dict)
    # Served too but not listed: a bundled model's documented aliases, when no names were chosen.
    hidden_aliases: list[str] = field(default_factory=list)

    def engine_args(self, args: argparse.Namespace) -> argparse.Namespace:
        ns = argparse.Namespace(**vars(args))
        for key, value in self.overrides.items():
            setattr(ns, key, value)
        return ns


def load_file(path: str) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is not valid {'TOML' if p.suffix == '.toml' else 'YAML'}: "
                          f"{exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def _dest(key: str, known: set[str], where: str) -> str:
    dest = str(key).replace("-", "_")
    if dest not in known:
        raise ConfigError(f"unknown setting {key!r} in {where}")
    return dest


def _names(value: Any, model: str) -> list[str]:
    if value is None:
        return [model]
    names = [value] if isinstance(value, str) else list(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"served_model_name of {model!r} must be a name or a list of names")
    return names


def model_specs(args: argparse.Namespace, defaults: dict[str, Any]) -> list[ModelSpec]:
    """Apply args.config onto args (flags win) and list the models to serve."""
    known = set(defaults) - {"config", "model", "served_model_name"}
    entries: list[Any] | None = None
    if args.config:
        data = load_file(args.config)
        raw_models = data.pop("models", None)
        if raw_models is None and "model" in data:
            raw_models = data.pop("model")
        if raw_models is not None:
            entries = [raw_models] if isinstance(raw_models, str | dict) else list(raw_models)
        for key, value in data.items():
            dest = _dest(key, known, "the config file")
            if getattr(args, dest) == defaults[dest]:
                setattr(args, dest, value)
    if args.model and entries is not None:
        raise ConfigError("give models either with --model or in the config file, not both")
    if entries is None:
        models = args.model or [DEFAULT_MODEL]
        groups = args.served_model_name
        if groups and len(groups) != len(models):
            if len(models) != 1:
                raise ConfigError(f"--served-model-name given {len(groups)} times for {len(models)} "
                                  "models; give it once per --model, in the same order")
            groups = [[n for g in groups for n in g]]
        return [ModelSpec(m, list(groups[i])) if groups else ModelSpec(m, [m], hidden_aliases=bundled_aliases(m))
                for i, m in enumerate(models)]
    if args.served_model_name:
        raise ConfigError("with models in the config file, set served_model_name there")
    specs = []
    for entry in entries:
        if isinstance(entry, str):
            specs.append(ModelSpec(entry, [entry], hidden_aliases=bundled_aliases(entry)))
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise ConfigError(f"each entry of 'models' needs a 'model' name or path, got {entry!r}")
        entry = dict(entry)
        model = entry.pop("model")
        chosen = entry.pop("served_model_name", entry.pop("served-model-name", None))
        names = _names(chosen, model)
        overrides = {_dest(k, known, f"the entry for {model!r}"): v for k, v in entry.items()}
        specs.append(ModelSpec(model, names, overrides,
                               hidden_aliases=bundled_aliases(model) if chosen is None else []))
    if not specs:
        raise ConfigError("the config file lists no models")
    return specs


def check_unique(specs: list[ModelSpec]) -> None:
    """Names must be unique; a hidden alias another model also claims is dropped (the model that
    names it explicitly, or the first, keeps it)."""
    seen: dict[str, str] = {}
    for spec in specs:
        for name in spec.names:
            if name in seen:
                raise ConfigError(f"served model name {name!r} is used twice ({seen[name]!r} and {spec.model!r})")
            seen[name] = spec.model
    for spec in specs:
        spec.hidden_aliases = [a for a in spec.hidden_aliases if a not in seen]
        seen.update(dict.fromkeys(spec.hidden_aliases, spec.model))
